//! Full-text search in SQL: `search(column, 'tantivy query')` and its BM25 score.
//!
//! Leaves answer `search` from the tantivy index of sealed segments (for columns
//! in the collection's `text_fields`). Anywhere else — the mutable segment, a
//! column that is not a text field, a re-check above the scan — the function
//! indexes the values of the batch in memory with the same tokenizer and query
//! parser, so every path agrees on what matches.
//!
//! Query syntax (tantivy's): `word` (any of several words matches), `+must`,
//! `-must_not`, `a AND b`, `a OR b`, `NOT a`, `"a phrase"`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::datatypes::{DataType, Field as ArrowField, FieldRef};
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use tantivy::query::{EnableScoring, Query, QueryParser};
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST};
use tantivy::{Index, TantivyDocument};

/// The SQL name of the search predicate.
pub const SEARCH_FUNCTION: &str = "search";

const HEAP_BYTES: usize = 15_000_000;

/// The options of a tokenized text field; segment indexes use the same.
pub fn text_field_options() -> TextOptions {
    TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    )
}

/// Parses `query` for the text field `field` of `index`, with a clear error.
pub fn parse_query(index: &Index, field: Field, query: &str) -> Result<Box<dyn Query>, String> {
    QueryParser::for_index(index, vec![field])
        .parse_query(query)
        .map_err(|e| format!("search(): cannot parse the query `{query}`: {e}"))
}

/// BM25 scores of `query` over `values` (strings, in memory); `None` where a
/// value does not match.
pub fn text_scores(values: &ArrayRef, query: &str) -> Result<Vec<Option<f32>>, String> {
    let strings = values
        .as_string_opt::<i32>()
        .ok_or_else(|| format!("search() needs a text column, got {}", values.data_type()))?;
    let mut builder = Schema::builder();
    let text = builder.add_text_field("text", text_field_options());
    let row = builder.add_u64_field("row", FAST);
    let index = Index::create_in_ram(builder.build());
    let query = parse_query(&index, text, query)?;
    let mut scores = vec![None; strings.len()];
    if strings.null_count() == strings.len() {
        return Ok(scores);
    }
    let error = |e: tantivy::TantivyError| format!("search(): {e}");
    let mut writer = index
        .writer_with_num_threads::<TantivyDocument>(1, HEAP_BYTES)
        .map_err(error)?;
    for (i, value) in strings.iter().enumerate() {
        if let Some(value) = value {
            let mut doc = TantivyDocument::new();
            doc.add_text(text, value);
            doc.add_u64(row, i as u64);
            writer.add_document(doc).map_err(error)?;
        }
    }
    writer.commit().map_err(error)?;
    let searcher = index.reader().map_err(error)?.searcher();
    let weight = query
        .weight(EnableScoring::enabled_from_searcher(&searcher))
        .map_err(error)?;
    for reader in searcher.segment_readers() {
        let rows = reader.fast_fields().u64("row").map_err(error)?;
        weight
            .for_each(reader, &mut |doc, score| {
                if let Some(i) = rows.first(doc) {
                    scores[i as usize] = Some(score);
                }
            })
            .map_err(error)?;
    }
    Ok(scores)
}

/// `search(column, query)`: true where the column's text matches the query.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SearchFunction {
    signature: Signature,
}

impl Default for SearchFunction {
    fn default() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8],
                Volatility::Immutable,
            ),
        }
    }
}

/// The `search` function, to register in every session that plans or runs SQL.
pub fn search_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(SearchFunction::default()))
}

impl ScalarUDFImpl for SearchFunction {
    fn name(&self) -> &str {
        SEARCH_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    /// Checks the query when the statement is planned, so a bad one is a clear
    /// planning error rather than a failure on every leaf.
    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        match args.scalar_arguments.get(1) {
            Some(Some(ScalarValue::Utf8(Some(query)))) => {
                let mut builder = Schema::builder();
                let text = builder.add_text_field("text", text_field_options());
                let index = Index::create_in_ram(builder.build());
                if let Err(error) = parse_query(&index, text, query) {
                    return plan_err!("{error}");
                }
            }
            _ => {
                return plan_err!(
                    "search(column, 'query'): the query must be a string literal, \
                     e.g. search(body, 'quick AND fox')"
                )
            }
        }
        Ok(Arc::new(ArrowField::new(
            SEARCH_FUNCTION,
            DataType::Boolean,
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [values, query] = args.args.as_slice() else {
            return plan_err!("search(column, 'query') takes two arguments");
        };
        let ColumnarValue::Scalar(ScalarValue::Utf8(Some(query))) = query else {
            return plan_err!("search(column, 'query'): the query must be a string literal");
        };
        let values = values.to_array(args.number_rows)?;
        // NULL text gives NULL, as any comparison would: `NOT search(..)` keeps
        // only rows that have the field.
        match text_scores(&values, query) {
            Ok(scores) => Ok(ColumnarValue::Array(Arc::new(
                scores
                    .iter()
                    .enumerate()
                    .map(|(i, s)| values.is_valid(i).then_some(s.is_some()))
                    .collect::<BooleanArray>(),
            ))),
            Err(error) => exec_err!("{error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    #[test]
    fn scores_follow_tantivy_query_syntax() {
        let values: ArrayRef = Arc::new(StringArray::from(vec![
            Some("the quick brown fox"),
            None,
            Some("quick checkout"),
            Some("slow and steady"),
        ]));
        let matched = |q: &str| -> Vec<usize> {
            text_scores(&values, q)
                .unwrap()
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|_| i))
                .collect()
        };
        assert_eq!(matched("quick"), vec![0, 2]);
        assert_eq!(matched("quick AND fox"), vec![0]);
        assert_eq!(matched("\"brown fox\""), vec![0]);
        assert_eq!(matched("quick -fox"), vec![2]);
        assert_eq!(matched("Steady OR fox"), vec![0, 3]);
        let scores = text_scores(&values, "quick").unwrap();
        assert!(
            scores[2].unwrap() > scores[0].unwrap(),
            "shorter text scores higher"
        );
        assert!(text_scores(&values, "\"unclosed").is_err());
    }
}
