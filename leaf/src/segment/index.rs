//! The inverted index of a sealed segment (tantivy).
//!
//! Every field of every row is indexed as exact terms in one JSON field (`fields`),
//! so `=`, `IN` and ranges on any field can be answered from the index; fields the
//! collection names in `text_fields` are also tokenized into `text` for full-text
//! search with BM25. `_row` maps an index document back to its row in the segment's
//! columnar file.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tantivy::schema::{
    Field, IndexRecordOption, JsonObjectOptions, OwnedValue, Schema, TextFieldIndexing, FAST,
    INDEXED, STORED,
};
use tantivy::{Index, TantivyDocument};

use crate::error::Result;

/// Name of the JSON field holding every field as exact terms.
pub const FIELDS: &str = "fields";
/// Name of the JSON field holding tokenized text fields.
pub const TEXT: &str = "text";
/// Name of the field holding the row number in the segment.
pub const ROW: &str = "_row";

const WRITER_HEAP_BYTES: usize = 64 << 20;

struct IndexFields {
    fields: Field,
    text: Field,
    row: Field,
}

fn schema() -> (Schema, IndexFields) {
    let mut builder = Schema::builder();
    let exact = JsonObjectOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic),
        )
        .set_expand_dots_enabled();
    let text = JsonObjectOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_expand_dots_enabled();
    let fields = IndexFields {
        fields: builder.add_json_field(FIELDS, exact),
        text: builder.add_json_field(TEXT, text),
        row: builder.add_u64_field(ROW, INDEXED | FAST | STORED),
    };
    (builder.build(), fields)
}

/// Builds the index of a segment in `dir` from its rows (row number, flattened fields).
pub fn build<'a>(
    dir: &Path,
    rows: impl Iterator<Item = (u64, &'a [(String, Value)])>,
    text_fields: &[String],
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let (schema, fields) = schema();
    let index = Index::create_in_dir(dir, schema)?;
    let mut writer = index.writer_with_num_threads::<TantivyDocument>(1, WRITER_HEAP_BYTES)?;
    for (row, values) in rows {
        let mut doc = TantivyDocument::new();
        let mut exact = BTreeMap::new();
        let mut text = BTreeMap::new();
        for (name, value) in values {
            exact.insert(name.clone(), OwnedValue::from(value.clone()));
            if text_fields.iter().any(|f| f == name) {
                text.insert(name.clone(), OwnedValue::from(value.clone()));
            }
        }
        doc.add_object(fields.fields, exact);
        if !text.is_empty() {
            doc.add_object(fields.text, text);
        }
        doc.add_u64(fields.row, row);
        writer.add_document(doc)?;
    }
    writer.commit()?;
    writer.wait_merging_threads()?;
    Ok(())
}

/// Whether `dir` holds a committed index.
pub fn exists(dir: &Path) -> bool {
    dir.join("meta.json").exists()
}

/// Number of documents in the index at `dir`.
pub fn num_docs(dir: &Path) -> Result<u64> {
    let index = Index::open_in_dir(dir)?;
    let reader = index.reader()?;
    Ok(reader.searcher().num_docs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tantivy::collector::Count;
    use tantivy::query::QueryParser;

    #[test]
    fn every_field_is_searchable_as_exact_terms_and_text_is_tokenized() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            vec![
                ("user.city".to_string(), json!("Oslo")),
                ("title".to_string(), json!("Fast analytics engine")),
            ],
            vec![
                ("user.city".to_string(), json!("Bergen")),
                ("title".to_string(), json!("Slow engine")),
            ],
        ];
        build(
            dir.path(),
            rows.iter()
                .enumerate()
                .map(|(i, r)| (i as u64, r.as_slice())),
            &["title".to_string()],
        )
        .unwrap();
        assert!(exists(dir.path()));
        let index = Index::open_in_dir(dir.path()).unwrap();
        let searcher = index.reader().unwrap().searcher();
        let (_, fields) = schema();
        let parser = QueryParser::for_index(&index, vec![fields.fields, fields.text]);
        let count = |q: &str| {
            searcher
                .search(&parser.parse_query(q).unwrap(), &Count)
                .unwrap()
        };
        assert_eq!(count("fields.user.city:Oslo"), 1);
        assert_eq!(count("text.title:engine"), 2);
        assert_eq!(count("text.title:analytics"), 1);
    }
}
