//! Ingest transforms: `SELECT ... FROM _input [WHERE ...]`, evaluated by the tailer
//! with DataFusion on every batch of documents before they are stored (docs/architecture.md).
//!
//! ```text
//!  JSON docs ─flatten─► Arrow batch `_input` (+ hidden row number) ─SQL─► Arrow batch
//!            ◄─unflatten (dotted names nest again, JSON columns parse again)─┘
//! ```
//!
//! A transform maps each record to at most one document: it may rename, cast, derive,
//! drop and filter, but not aggregate, join, sort or window (those would lose which
//! record a document came from, and with it exactly-once ingest). Nested fields are
//! `_input` columns named by their dotted path, referred to in double quotes
//! (`"geo.city"`), as in queries.
//!
//! Documents are schemaless, so a transform is planned per batch against the batch's
//! columns; a column it names that no document of the batch has reads as NULL. At
//! create time it is planned against an input whose columns are unknown: syntax,
//! unknown functions, wrong arity and a wrong shape are rejected then.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, SchemaError};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{col, Expr, LogicalPlan, Projection};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::{Map, Value};

use crate::columns::{EVENT_TIME_COLUMN, ID_COLUMN};
use crate::document::flatten;
use crate::schema::{values_to_array, FieldSet, FieldType};
use crate::{Error, Result};

/// A JSON document's top-level object.
pub type Document = Map<String, Value>;

/// The table a transform reads from.
pub const INPUT_TABLE: &str = "_input";
/// Hidden input column: the record's index in the batch, carried to the output.
const ROW_COLUMN: &str = "__altdb_row";
/// Most distinct columns a transform may name.
const MAX_COLUMNS: usize = 1000;

/// Why a transform cannot be compiled, or failed on a batch; the message says what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    #[error("transform is empty; write `SELECT ... FROM {INPUT_TABLE}`")]
    Empty,
    /// Parsing it would take too long ([`crate::sql_guard`]).
    #[error("{0}")]
    TooComplex(String),
    /// It names a column no input can have (at create time) or the batch lacks.
    #[error(
        "transform names column `{0}`, which cannot come from `{INPUT_TABLE}`; refer to nested \
         fields by their dotted path in double quotes, e.g. \"geo.city\""
    )]
    UnknownColumn(String),
    /// Its plan would not map each record to at most one document.
    #[error(
        "transform cannot use {0}: a transform maps each record to at most one document; \
         write `SELECT <expressions> FROM {INPUT_TABLE} [WHERE <condition>]`"
    )]
    NotPerRecord(&'static str),
    #[error(
        "transform must select from `{INPUT_TABLE}` directly: write `SELECT <expressions> FROM \
         {INPUT_TABLE} [WHERE <condition>]`"
    )]
    NotDirect,
    /// DataFusion refused to plan it: syntax, an unknown function, types.
    #[error("transform {0}")]
    Plan(String),
    /// It failed while running over a batch (a cast of a bad value, ...).
    #[error("transform failed: {0}")]
    Execution(String),
    /// The batch could not be turned into its input, or its output into documents.
    #[error("transform output: {0}")]
    Convert(String),
}

impl From<TransformError> for Error {
    fn from(error: TransformError) -> Self {
        Error::InvalidConfig(error.to_string())
    }
}

/// A checked ingest transform.
#[derive(Debug, Clone)]
pub struct IngestTransform {
    sql: String,
    /// Input columns the SQL names; those a batch lacks are added as NULL.
    columns: Arc<BTreeSet<String>>,
}

impl IngestTransform {
    /// Parses and plans `sql`, or says what is wrong with it.
    pub fn compile(sql: &str) -> Result<Self, TransformError> {
        let sql = sql.trim().trim_end_matches(';').to_string();
        if sql.is_empty() {
            return Err(TransformError::Empty);
        }
        crate::sql_guard::check_parse_cost(&sql).map_err(TransformError::TooComplex)?;
        // The columns are unknown until documents arrive: plan against NULL-typed
        // columns, adding each column the planner asks for.
        let mut columns = BTreeSet::new();
        loop {
            let fields: Vec<(String, DataType)> = columns
                .iter()
                .map(|c: &String| (c.clone(), DataType::Null))
                .collect();
            let batch = empty_input(&fields);
            let outcome = futures::executor::block_on(plan(&session(), &sql, batch));
            match outcome {
                Ok(_) => {
                    return Ok(Self {
                        sql,
                        columns: Arc::new(columns),
                    })
                }
                Err(PlanError::MissingColumn(column)) => {
                    if columns.contains(&column.name) || columns.len() >= MAX_COLUMNS {
                        return Err(TransformError::UnknownColumn(column.to_string()));
                    }
                    columns.insert(column.name);
                }
                Err(PlanError::Invalid(error)) => return Err(error),
            }
        }
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Applies the transform to `docs`: per input document, its output document, or
    /// `None` if the transform filtered it out. An error fails the whole batch (the
    /// caller can retry documents one by one to find the bad ones).
    pub async fn apply(
        &self,
        docs: &[&Map<String, Value>],
    ) -> Result<Vec<Option<Map<String, Value>>>, TransformError> {
        let (batch, json_columns) = self
            .input_batch(docs)
            .map_err(|e| TransformError::Convert(e.to_string()))?;
        let failed = |e| TransformError::Execution(describe(e));
        let output = match plan(&session(), &self.sql, batch).await {
            Ok((context, plan)) => context
                .execute_logical_plan(plan)
                .await
                .map_err(failed)?
                .collect()
                .await
                .map_err(failed)?,
            Err(PlanError::MissingColumn(column)) => {
                return Err(TransformError::UnknownColumn(column.to_string()))
            }
            Err(PlanError::Invalid(error)) => return Err(error),
        };
        let mut out: Vec<Option<Map<String, Value>>> = vec![None; docs.len()];
        for batch in &output {
            for (row, doc) in documents(batch, &json_columns)? {
                let slot = out.get_mut(row as usize).ok_or_else(|| {
                    TransformError::Convert(format!("row {row} is not one of the input's"))
                })?;
                *slot = Some(doc);
            }
        }
        Ok(out)
    }

    /// `_input` for `docs`: their flattened fields at their widest types, the columns
    /// the SQL names that none of them has (as NULL), and the row numbers.
    fn input_batch(&self, docs: &[&Map<String, Value>]) -> Result<(RecordBatch, BTreeSet<String>)> {
        let mut flat = Vec::with_capacity(docs.len());
        let mut fields = FieldSet::default();
        for doc in docs {
            let mut pairs = flatten(doc);
            for reserved in [ID_COLUMN, EVENT_TIME_COLUMN] {
                if let Some(value) = doc.get(reserved).filter(|v| !v.is_null()) {
                    pairs.push((reserved.to_string(), value.clone()));
                }
            }
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, value) in &pairs {
                fields.observe(name, FieldType::of(value));
            }
            flat.push(pairs);
        }
        // A named column no document has reads as NULL; one that matches a field
        // whatever its case reads that field (names.rs).
        for column in self.columns.iter() {
            let present = fields
                .fields
                .keys()
                .any(|field| field.eq_ignore_ascii_case(column));
            if !present {
                fields.observe(column, FieldType::Null);
            }
        }
        let mut schema_fields = Vec::with_capacity(fields.fields.len() + 1);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(fields.fields.len() + 1);
        let mut json_columns = BTreeSet::new();
        for (name, field_type) in &fields.fields {
            if *field_type == FieldType::Json {
                json_columns.insert(name.clone());
            }
            let data_type = field_type.arrow_type();
            let values: Vec<Option<&Value>> = flat
                .iter()
                .map(|pairs| {
                    pairs
                        .binary_search_by(|(n, _)| n.as_str().cmp(name))
                        .ok()
                        .map(|i| &pairs[i].1)
                })
                .collect();
            arrays.push(values_to_array(&data_type, &values)?);
            schema_fields.push(Field::new(name, data_type, true));
        }
        schema_fields.push(Field::new(ROW_COLUMN, DataType::UInt64, false));
        arrays.push(Arc::new(UInt64Array::from_iter_values(
            0..docs.len() as u64,
        )));
        let options = RecordBatchOptions::new().with_row_count(Some(docs.len()));
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(schema_fields)),
            arrays,
            &options,
        )?;
        Ok((batch, json_columns))
    }
}

fn session() -> SessionContext {
    let context = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    crate::register_functions(&context);
    context
}

fn empty_input(fields: &[(String, DataType)]) -> RecordBatch {
    let mut schema: Vec<Field> = fields
        .iter()
        .map(|(name, data_type)| Field::new(name, data_type.clone(), true))
        .collect();
    schema.push(Field::new(ROW_COLUMN, DataType::UInt64, false));
    RecordBatch::new_empty(SchemaRef::new(Schema::new(schema)))
}

enum PlanError {
    /// The SQL names a column `_input` does not have.
    MissingColumn(Column),
    Invalid(TransformError),
}

/// Plans `sql` over `input` registered as `_input`, checks it maps each record to at
/// most one row, and makes it carry the row number to its output.
async fn plan(
    context: &SessionContext,
    sql: &str,
    input: RecordBatch,
) -> std::result::Result<(SessionContext, LogicalPlan), PlanError> {
    let invalid = |e| PlanError::Invalid(TransformError::Plan(describe(e)));
    // Names resolve against the batch's columns as in queries (names.rs).
    let fields: BTreeSet<String> = input
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|name| name != ROW_COLUMN)
        .collect();
    context
        .register_batch(INPUT_TABLE, input)
        .map_err(invalid)?;
    let state = context.state();
    let dialect = state.config().options().sql_parser.dialect;
    let mut statement = state.sql_to_statement(sql, &dialect).map_err(invalid)?;
    if let datafusion::sql::parser::Statement::Statement(inner) = &mut statement {
        crate::names::resolve_identifiers(inner, &fields)
            .map_err(|e| PlanError::Invalid(TransformError::Plan(e.to_string())))?;
    }
    let plan = match state.statement_to_plan(statement).await {
        Ok(plan) => plan,
        Err(error) => {
            return Err(match missing_column(&error) {
                Some(column) => PlanError::MissingColumn(column),
                None => PlanError::Invalid(TransformError::Plan(describe(error))),
            })
        }
    };
    check_shape(&plan).map_err(PlanError::Invalid)?;
    let plan = with_row_column(plan).map_err(PlanError::Invalid)?;
    Ok((context.clone(), plan))
}

fn missing_column(error: &DataFusionError) -> Option<Column> {
    match error.find_root() {
        DataFusionError::SchemaError(schema_error, _) => match schema_error.as_ref() {
            SchemaError::FieldNotFound { field, .. } => Some(field.as_ref().clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Only per-record plans: projections and filters over `_input`.
fn check_shape(plan: &LogicalPlan) -> Result<(), TransformError> {
    let mut problem = None;
    // Subqueries too: `(SELECT max(a) FROM _input)` would make a document depend
    // on the other records of its batch, and batches differ between replays.
    let _ = plan.apply_with_subqueries(|node| {
        let what = match node {
            LogicalPlan::Subquery(_) => Some("subqueries"),
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::TableScan(_)
            | LogicalPlan::SubqueryAlias(_) => None,
            LogicalPlan::Aggregate(_) => Some("aggregates (GROUP BY, COUNT, ..)"),
            LogicalPlan::Join(_) => Some("joins"),
            LogicalPlan::Window(_) => Some("window functions"),
            LogicalPlan::Sort(_) => Some("ORDER BY"),
            LogicalPlan::Limit(_) => Some("LIMIT"),
            LogicalPlan::Distinct(_) => Some("DISTINCT"),
            LogicalPlan::Union(_) => Some("UNION"),
            LogicalPlan::Unnest(_) => Some("UNNEST"),
            _ => Some("statements other than SELECT"),
        };
        match what {
            Some(what) => {
                problem = Some(what);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    });
    match problem {
        None => Ok(()),
        Some(what) => Err(TransformError::NotPerRecord(what)),
    }
}

/// Adds the hidden row number to the plan's output if the SELECT list dropped it.
fn with_row_column(plan: LogicalPlan) -> Result<LogicalPlan, TransformError> {
    let has_row = |plan: &LogicalPlan| {
        plan.schema()
            .fields()
            .iter()
            .any(|f| f.name() == ROW_COLUMN)
    };
    if has_row(&plan) {
        return Ok(plan);
    }
    let LogicalPlan::Projection(projection) = plan else {
        return Err(TransformError::NotDirect);
    };
    let Ok((qualifier, _)) = projection
        .input
        .schema()
        .qualified_field_with_unqualified_name(ROW_COLUMN)
    else {
        return Err(TransformError::NotDirect);
    };
    let row = match qualifier {
        Some(qualifier) => Expr::Column(Column::new(Some(qualifier.clone()), ROW_COLUMN)),
        None => col(ROW_COLUMN),
    };
    let mut exprs = projection.expr.clone();
    exprs.push(row);
    Projection::try_new(exprs, projection.input.clone())
        .map(LogicalPlan::Projection)
        .map_err(|e| TransformError::Plan(describe(e)))
}

/// One line, without DataFusion's internal prefixes where they add nothing.
fn describe(error: DataFusionError) -> String {
    let text = error.find_root().to_string();
    text.lines().next().unwrap_or_default().to_string()
}

/// The output rows of a transform as documents, keyed by input row number.
fn documents(
    batch: &RecordBatch,
    json_columns: &BTreeSet<String>,
) -> Result<Vec<(u64, Document)>, TransformError> {
    let convert = |e: &dyn std::fmt::Display| TransformError::Convert(e.to_string());
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write_batches(&[batch]).map_err(|e| convert(&e))?;
    writer.finish().map_err(|e| convert(&e))?;
    let bytes = writer.into_inner();
    let rows: Vec<Map<String, Value>> = if bytes.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| convert(&e))?
    };
    rows.into_iter()
        .map(|flat| {
            let mut row = None;
            let mut doc = Map::new();
            for (name, value) in flat {
                if name == ROW_COLUMN {
                    row = value.as_u64();
                    continue;
                }
                let value = match value {
                    Value::String(text) if json_columns.contains(&name) => {
                        serde_json::from_str(&text).unwrap_or(Value::String(text))
                    }
                    other => other,
                };
                insert_path(&mut doc, &name, value);
            }
            row.map(|row| (row, doc))
                .ok_or_else(|| TransformError::Convert("a row lost its row number".into()))
        })
        .collect()
}

/// Inserts `value` at a dotted path, nesting objects (`geo.city` → `{"geo":{"city":..}}`);
/// where a non-object is in the way the dotted name is kept as a key.
fn insert_path(doc: &mut Map<String, Value>, path: &str, value: Value) {
    if let Err(value) = insert_nested(doc, path, value) {
        doc.insert(path.to_string(), value);
    }
}

/// Nests `value` at `path`; gives it back if a non-object is in the way.
fn insert_nested(doc: &mut Map<String, Value>, path: &str, value: Value) -> Result<(), Value> {
    match path.split_once('.') {
        Some((head, rest)) if !head.is_empty() && !rest.is_empty() => {
            match doc
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
            {
                Value::Object(inner) => insert_nested(inner, rest, value),
                _ => Err(value),
            }
        }
        _ => {
            doc.insert(path.to_string(), value);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn apply(sql: &str, docs: Vec<Value>) -> Vec<Option<Value>> {
        let transform = IngestTransform::compile(sql).unwrap();
        let maps: Vec<Map<String, Value>> = docs
            .into_iter()
            .map(|d| d.as_object().unwrap().clone())
            .collect();
        let refs: Vec<&Map<String, Value>> = maps.iter().collect();
        futures::executor::block_on(transform.apply(&refs))
            .unwrap()
            .into_iter()
            .map(|d| d.map(Value::Object))
            .collect()
    }

    #[test]
    fn renames_casts_derives_drops_and_filters() {
        let out = apply(
            r#"SELECT "user.name" AS who, CAST(amount AS DOUBLE) AS amount,
                      lower(country) AS country, amount * 2 AS doubled, "geo.city"
               FROM _input WHERE kind <> 'test'"#,
            vec![
                json!({"user": {"name": "Ann"}, "amount": 3, "country": "NO", "kind": "real",
                       "geo": {"city": "Oslo"}, "dropped": 1}),
                json!({"user": {"name": "Bob"}, "amount": 4, "country": "DE", "kind": "test"}),
                json!({"amount": 5, "country": "FR", "kind": "real"}),
            ],
        );
        assert_eq!(
            out[0],
            Some(
                json!({"who": "Ann", "amount": 3.0, "country": "no", "doubled": 6,
                        "geo": {"city": "Oslo"}})
            )
        );
        assert_eq!(out[1], None);
        assert_eq!(
            out[2],
            Some(json!({"amount": 5.0, "country": "fr", "doubled": 10}))
        );
    }

    #[test]
    fn select_star_keeps_nested_and_mixed_shapes() {
        let doc = json!({"_id": "a1", "items": [{"sku": "x"}, {"sku": "y"}], "tags": ["p", "q"],
                         "n": {"deep": {"er": 1}}});
        let out = apply("SELECT * FROM _input", vec![doc.clone()]);
        assert_eq!(out[0], Some(doc));
    }

    #[test]
    fn camel_case_fields_are_found_whatever_the_case_written() {
        let out = apply(
            "SELECT userId, upper(username) AS userName, \"geo.City\" AS city FROM _input",
            vec![json!({"userId": 1, "userName": "ada", "geo": {"City": "Oslo"}})],
        );
        assert_eq!(
            out[0],
            Some(json!({"userId": 1, "userName": "ADA", "city": "Oslo"}))
        );
        let twins = IngestTransform::compile("SELECT Url FROM _input").unwrap();
        let doc = json!({"URL": "a", "url": "b"});
        let error =
            futures::executor::block_on(twins.apply(&[doc.as_object().unwrap()])).unwrap_err();
        assert!(error.to_string().contains("ambiguous"), "{error}");
    }

    #[test]
    fn columns_no_document_has_read_as_null() {
        let out = apply(
            "SELECT coalesce(missing, 'none') AS m, a FROM _input",
            vec![json!({"a": 1})],
        );
        assert_eq!(out[0], Some(json!({"m": "none", "a": 1})));
    }

    #[test]
    fn bad_transforms_are_rejected_with_the_reason() {
        let err = |sql: &str| IngestTransform::compile(sql).unwrap_err();
        let plan_error = |sql: &str| match err(sql) {
            TransformError::Plan(reason) => reason,
            other => panic!("{sql}: {other:?}"),
        };
        assert!(err("SELEC a FROM _input").to_string().contains("transform"));
        assert!(plan_error("SELECT lowerr(a) FROM _input").contains("lowerr"));
        assert!(plan_error("SELECT a FROM other").contains("other"));
        use TransformError::*;
        assert_eq!(
            err("SELECT count(*) FROM _input"),
            NotPerRecord("aggregates (GROUP BY, COUNT, ..)")
        );
        assert_eq!(
            err("SELECT a FROM _input ORDER BY a"),
            NotPerRecord("ORDER BY")
        );
        assert_eq!(
            err("SELECT a, row_number() OVER () FROM _input"),
            NotPerRecord("window functions")
        );
        assert_eq!(
            err("SELECT geo.city FROM _input"),
            UnknownColumn("geo.city".into())
        );
        assert!(err("SELECT geo.city FROM _input")
            .to_string()
            .contains("double quotes"));
        assert!(err("DROP TABLE _input").to_string().contains("SELECT"));
        assert_eq!(err(""), Empty);
        assert_eq!(
            err("SELECT a, (SELECT max(a) FROM _input) AS m FROM _input"),
            NotPerRecord("subqueries")
        );
        assert_eq!(
            err("SELECT a FROM _input WHERE a IN (SELECT a FROM _input WHERE a > 1)"),
            NotPerRecord("subqueries")
        );
    }

    #[test]
    fn a_failing_cast_fails_the_batch() {
        let transform = IngestTransform::compile("SELECT CAST(a AS INT) AS a FROM _input").unwrap();
        let doc = json!({"a": "not a number"});
        let docs = [doc.as_object().unwrap()];
        let err = futures::executor::block_on(transform.apply(&docs)).unwrap_err();
        let TransformError::Execution(reason) = &err else {
            panic!("{err:?}")
        };
        assert!(reason.contains("not a number"), "{err}");
        assert!(err.to_string().starts_with("transform failed: "), "{err}");
    }
}
