//! The SQL types of schemaless fields and their Arrow form.
//!
//! Every field gets the widest type seen (README, "Schemaless types"):
//!
//! ```text
//!   null < bool < int64 < float64 < utf8        scalars
//!   list<e1> + list<e2> = list<widen(e1, e2)>   arrays of scalars
//!   list + scalar, arrays of objects = json     (JSON text, an Arrow Utf8)
//! ```
//!
//! A leaf converts its rows with its *local* schema ([`rows_to_batch`]) and then
//! widens the batch to the collection-wide schema the aggregator planned with
//! ([`align_batch`]), so mutable and sealed segments, shards and leaves all agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListArray,
    ListBuilder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::columns::{is_reserved_column, EVENT_TIME_COLUMN, ID_COLUMN, SEQ_COLUMN};
use crate::Result;

/// The SQL type of a field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Only nulls or empty arrays seen so far.
    Null,
    Bool,
    Int64,
    Float64,
    Utf8,
    /// Microseconds since the epoch, UTC (`_event_time`).
    Timestamp,
    /// An array of scalars.
    List(Box<FieldType>),
    /// Mixed shapes, kept as JSON text.
    Json,
}

impl FieldType {
    /// The type of one JSON value (objects are flattened before this is asked).
    pub fn of(value: &Value) -> FieldType {
        match value {
            Value::Null => FieldType::Null,
            Value::Bool(_) => FieldType::Bool,
            Value::Number(n) if n.is_i64() => FieldType::Int64,
            Value::Number(_) => FieldType::Float64,
            Value::String(_) => FieldType::Utf8,
            Value::Array(items) => {
                let mut element = FieldType::Null;
                for item in items {
                    match item {
                        Value::Array(_) | Value::Object(_) => return FieldType::Json,
                        scalar => element = element.widen(&FieldType::of(scalar)),
                    }
                }
                FieldType::List(Box::new(element))
            }
            Value::Object(_) => FieldType::Json,
        }
    }

    fn scalar_rank(&self) -> Option<u8> {
        match self {
            FieldType::Null => Some(0),
            FieldType::Bool => Some(1),
            FieldType::Int64 => Some(2),
            FieldType::Float64 => Some(3),
            FieldType::Utf8 => Some(4),
            _ => None,
        }
    }

    /// The narrowest type that holds values of both `self` and `other`.
    pub fn widen(&self, other: &FieldType) -> FieldType {
        if self == other {
            return self.clone();
        }
        match (self, other) {
            (FieldType::Null, t) | (t, FieldType::Null) => t.clone(),
            (FieldType::List(a), FieldType::List(b)) => FieldType::List(Box::new(a.widen(b))),
            (FieldType::Timestamp, _) | (_, FieldType::Timestamp) => FieldType::Utf8,
            (a, b) => match (a.scalar_rank(), b.scalar_rank()) {
                (Some(ra), Some(rb)) => {
                    if ra >= rb {
                        a.clone()
                    } else {
                        b.clone()
                    }
                }
                _ => FieldType::Json,
            },
        }
    }

    /// The Arrow type the field is stored and queried as.
    pub fn arrow_type(&self) -> DataType {
        match self {
            FieldType::Null => DataType::Null,
            FieldType::Bool => DataType::Boolean,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Utf8 | FieldType::Json => DataType::Utf8,
            FieldType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            FieldType::List(element) => {
                let element = match element.as_ref() {
                    FieldType::Null => DataType::Utf8,
                    other => other.arrow_type(),
                };
                DataType::List(Arc::new(Field::new_list_field(element, true)))
            }
        }
    }

    /// The type's name as shown in schemas.
    pub fn sql_name(&self) -> String {
        match self {
            FieldType::Null => "null".into(),
            FieldType::Bool => "boolean".into(),
            FieldType::Int64 => "bigint".into(),
            FieldType::Float64 => "double".into(),
            FieldType::Utf8 => "varchar".into(),
            FieldType::Timestamp => "timestamp".into(),
            FieldType::Json => "json".into(),
            FieldType::List(element) => format!("{}[]", element.sql_name()),
        }
    }
}

/// The fields of a collection (or a shard of it) with their widest types, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldSet {
    pub fields: BTreeMap<String, FieldType>,
}

impl FieldSet {
    /// Records a field's type; returns whether the set changed.
    pub fn observe(&mut self, name: &str, field_type: FieldType) -> bool {
        match self.fields.get_mut(name) {
            Some(existing) if *existing == field_type => false,
            Some(existing) => {
                let widened = existing.widen(&field_type);
                if widened != *existing {
                    *existing = widened;
                    true
                } else {
                    false
                }
            }
            None => {
                self.fields.insert(name.to_string(), field_type);
                true
            }
        }
    }

    /// Widens `self` with the fields of a row (sorted by name, as [`FlatRow`]'s
    /// are): one walk alongside the known fields, a lookup only for what changes.
    pub fn observe_row(&mut self, fields: &[(String, Value)]) -> bool {
        let mut changes = Vec::new();
        let mut known = self.fields.iter().peekable();
        for (name, value) in fields {
            while known.next_if(|(k, _)| k.as_str() < name.as_str()).is_some() {}
            let field_type = FieldType::of(value);
            match known.next_if(|(k, _)| *k == name) {
                Some((_, existing)) if *existing == field_type => {}
                _ => changes.push((name, field_type)),
            }
        }
        let mut changed = false;
        for (name, field_type) in changes {
            changed |= self.observe(name, field_type);
        }
        changed
    }

    /// Identifies the set: equal sets have equal fingerprints, so a plan made with
    /// one set of fields can tell whether a shard still has exactly those.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        self.fields.hash(&mut hasher);
        hasher.finish()
    }

    /// Widens `self` with every field of `other`.
    pub fn merge(&mut self, other: &FieldSet) {
        for (name, field_type) in &other.fields {
            self.observe(name, field_type.clone());
        }
    }

    /// The SQL-visible Arrow schema: `_id`, `_event_time`, then the fields by name.
    pub fn to_arrow_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = vec![
            Field::new(ID_COLUMN, DataType::Utf8, false),
            Field::new(EVENT_TIME_COLUMN, FieldType::Timestamp.arrow_type(), false),
        ];
        fields.extend(
            self.fields
                .iter()
                .filter(|(name, _)| !is_reserved_column(name))
                .map(|(name, t)| Field::new(name, t.arrow_type(), true)),
        );
        Arc::new(Schema::new(fields))
    }
}

/// A stored row as the leaf keeps it in memory: identity plus flattened fields.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatRow {
    pub id: String,
    pub event_time_us: i64,
    pub seq: u64,
    /// Flattened fields sorted by path (see [`crate::document::flatten`]).
    pub fields: Vec<(String, Value)>,
}

impl FlatRow {
    pub fn get(&self, path: &str) -> Option<&Value> {
        self.fields
            .binary_search_by(|(name, _)| name.as_str().cmp(path))
            .ok()
            .map(|i| &self.fields[i].1)
    }
}

/// Builds an Arrow batch with exactly `schema`'s columns from `rows`.
///
/// `schema` must hold each field at a type at least as wide as any value in `rows`
/// (the shard's local schema guarantees that); `_id`, `_event_time` and `_seq` are
/// filled from the row's identity.
pub fn rows_to_batch(schema: &SchemaRef, rows: &[&FlatRow]) -> Result<RecordBatch> {
    // Rows are transposed in one pass: each row's sorted fields are walked
    // alongside the sorted column names, instead of a lookup per row and column.
    let mut by_name: Vec<(&str, usize)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !is_reserved_column(f.name()))
        .map(|(i, f)| (f.name().as_str(), i))
        .collect();
    by_name.sort_unstable();
    let mut values: Vec<Vec<Option<&Value>>> = (0..schema.fields().len())
        .map(|i| {
            if is_reserved_column(schema.field(i).name()) {
                Vec::new()
            } else {
                Vec::with_capacity(rows.len())
            }
        })
        .collect();
    for row in rows {
        let mut fields = row.fields.iter().peekable();
        for &(name, column) in &by_name {
            while fields.next_if(|(field, _)| field.as_str() < name).is_some() {}
            let value = fields.next_if(|(field, _)| field == name).map(|(_, v)| v);
            values[column].push(value);
        }
    }
    let columns = schema
        .fields()
        .iter()
        .zip(values)
        .map(|(field, values)| match field.name().as_str() {
            name if is_reserved_column(name) => build_column(field, rows),
            _ => values_to_array(field.data_type(), &values),
        })
        .collect::<Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// One column of `rows` as an Arrow array of `field`'s type.
pub fn build_column(field: &FieldRef, rows: &[&FlatRow]) -> Result<ArrayRef> {
    let name = field.name().as_str();
    let array: ArrayRef = match (name, field.data_type()) {
        (ID_COLUMN, _) => {
            let mut builder = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
            rows.iter().for_each(|r| builder.append_value(&r.id));
            Arc::new(builder.finish())
        }
        (EVENT_TIME_COLUMN, _) => {
            let mut builder =
                TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
            rows.iter()
                .for_each(|r| builder.append_value(r.event_time_us));
            Arc::new(builder.finish())
        }
        (SEQ_COLUMN, _) => {
            let mut builder = UInt64Builder::with_capacity(rows.len());
            rows.iter().for_each(|r| builder.append_value(r.seq));
            Arc::new(builder.finish())
        }
        (_, data_type) => {
            let values: Vec<Option<&Value>> = rows.iter().map(|r| r.get(name)).collect();
            values_to_array(data_type, &values)?
        }
    };
    Ok(array)
}

/// Converts JSON values into an Arrow array of `data_type`, widening on the way.
pub fn values_to_array(data_type: &DataType, values: &[Option<&Value>]) -> Result<ArrayRef> {
    let array: ArrayRef = match data_type {
        DataType::Null => new_null_array(&DataType::Null, values.len()),
        DataType::Boolean => {
            let mut builder = BooleanBuilder::with_capacity(values.len());
            values
                .iter()
                .for_each(|v| builder.append_option(v.and_then(Value::as_bool)));
            Arc::new(builder.finish())
        }
        DataType::Int64 => {
            let mut builder = Int64Builder::with_capacity(values.len());
            values
                .iter()
                .for_each(|v| builder.append_option(v.and_then(as_i64)));
            Arc::new(builder.finish())
        }
        DataType::Float64 => {
            let mut builder = Float64Builder::with_capacity(values.len());
            values
                .iter()
                .for_each(|v| builder.append_option(v.and_then(as_f64)));
            Arc::new(builder.finish())
        }
        DataType::Utf8 => {
            let mut builder = StringBuilder::with_capacity(values.len(), values.len() * 8);
            for value in values {
                match value {
                    Some(Value::String(s)) => builder.append_value(s),
                    Some(Value::Null) | None => builder.append_null(),
                    Some(other) => builder.append_value(other.to_string()),
                }
            }
            Arc::new(builder.finish())
        }
        DataType::List(element) => list_array(element.data_type(), values)?,
        other => {
            return Err(crate::Error::Protocol(format!(
                "no conversion from JSON to {other}"
            )))
        }
    };
    Ok(array)
}

fn list_array(element: &DataType, values: &[Option<&Value>]) -> Result<ArrayRef> {
    macro_rules! build_list {
        ($builder:expr, $convert:expr) => {{
            let mut builder = ListBuilder::new($builder);
            for value in values {
                match value {
                    Some(Value::Array(items)) => {
                        for item in items {
                            builder.values().append_option($convert(item));
                        }
                        builder.append(true);
                    }
                    _ => builder.append(false),
                }
            }
            Arc::new(builder.finish()) as ArrayRef
        }};
    }
    Ok(match element {
        DataType::Boolean => build_list!(BooleanBuilder::new(), Value::as_bool),
        DataType::Int64 => build_list!(Int64Builder::new(), as_i64),
        DataType::Float64 => build_list!(Float64Builder::new(), as_f64),
        _ => build_list!(StringBuilder::new(), |v: &Value| Some(text_of(v))),
    })
}

fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// The text form of a value in a varchar or json column.
pub fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Widens `batch` to `target`: casts columns whose type is narrower, fills NULL for
/// columns the batch lacks, and drops columns `target` does not name.
pub fn align_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let source = batch.schema();
    let columns = target
        .fields()
        .iter()
        .map(|field| match source.index_of(field.name()) {
            Ok(i) => widen_array(batch.column(i), field.data_type()),
            Err(_) => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &options,
    )?)
}

fn widen_array(array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    if array.data_type() == &DataType::Null {
        return Ok(new_null_array(to, array.len()));
    }
    if let (DataType::List(_), DataType::Utf8) = (array.data_type(), to) {
        return list_to_json_text(array);
    }
    Ok(arrow::compute::cast(array, to)?)
}

/// Lists widened to json become their JSON text, as a mutable-segment row would.
fn list_to_json_text(array: &ArrayRef) -> Result<ArrayRef> {
    let list = array
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or_else(|| crate::Error::Protocol("expected a list array".into()))?;
    let mut builder = StringBuilder::with_capacity(list.len(), list.len() * 16);
    for i in 0..list.len() {
        if list.is_null(i) {
            builder.append_null();
            continue;
        }
        let values = list.value(i);
        let items: Vec<Value> = (0..values.len())
            .map(|j| scalar_to_json(&values, j))
            .collect();
        builder.append_value(Value::Array(items).to_string());
    }
    Ok(Arc::new(builder.finish()))
}

fn scalar_to_json(array: &ArrayRef, i: usize) -> Value {
    use arrow::array::{AsArray, BooleanArray};
    use arrow::datatypes::{Float64Type, Int64Type};
    if array.is_null(i) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(
            array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .is_some_and(|a| a.value(i)),
        ),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(i)),
        DataType::Float64 => Value::from(array.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(i).to_string()),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::{Float64Type, Int64Type};
    use serde_json::json;

    #[test]
    fn fingerprints_tell_field_sets_apart() {
        let mut a = FieldSet::default();
        a.observe("x", FieldType::Int64);
        a.observe("y", FieldType::Utf8);
        let mut b = FieldSet::default();
        b.observe("y", FieldType::Utf8);
        b.observe("x", FieldType::Int64);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), FieldSet::default().fingerprint());

        let before = a.fingerprint();
        a.observe("x", FieldType::Float64); // widened
        assert_ne!(a.fingerprint(), before);
        let widened = a.fingerprint();
        a.observe("z", FieldType::Null); // added
        assert_ne!(a.fingerprint(), widened);
    }

    #[test]
    fn widening_follows_the_lattice() {
        use FieldType::*;
        assert_eq!(Bool.widen(&Int64), Int64);
        assert_eq!(Int64.widen(&Float64), Float64);
        assert_eq!(Float64.widen(&Utf8), Utf8);
        assert_eq!(Null.widen(&Bool), Bool);
        assert_eq!(
            List(Box::new(Int64)).widen(&List(Box::new(Float64))),
            List(Box::new(Float64))
        );
        assert_eq!(List(Box::new(Int64)).widen(&Utf8), Json);
        assert_eq!(Json.widen(&Int64), Json);
        assert_eq!(FieldType::of(&json!([1, 2.5])), List(Box::new(Float64)));
        assert_eq!(FieldType::of(&json!([{"a":1}])), Json);
        assert_eq!(FieldType::of(&json!(u64::MAX)), Float64);
    }

    #[test]
    fn widening_is_commutative_and_associative() {
        use FieldType::*;
        let types = [
            Null,
            Bool,
            Int64,
            Float64,
            Utf8,
            Json,
            List(Box::new(Int64)),
            List(Box::new(Utf8)),
        ];
        for a in &types {
            for b in &types {
                assert_eq!(a.widen(b), b.widen(a), "{a:?} {b:?}");
                for c in &types {
                    assert_eq!(a.widen(b).widen(c), a.widen(&b.widen(c)));
                }
            }
        }
    }

    fn row(seq: u64, fields: Value) -> FlatRow {
        let Value::Object(body) = fields else {
            unreachable!()
        };
        FlatRow {
            id: format!("id{seq}"),
            event_time_us: seq as i64,
            seq,
            fields: crate::document::flatten(&body),
        }
    }

    #[test]
    fn rows_become_columns_and_widen_consistently() {
        let a = row(1, json!({"n": 1, "m": true, "tags": [1, 2]}));
        let b = row(2, json!({"n": 2.5, "m": "x", "user": {"city": "Oslo"}}));
        let mut local = FieldSet::default();
        for r in [&a, &b] {
            for (name, t) in crate::document::field_types(&r.fields) {
                local.observe(name, t);
            }
        }
        let schema = local.to_arrow_schema();
        let batch = rows_to_batch(&schema, &[&a, &b]).unwrap();
        let n = batch
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!(n.values(), &[1.0, 2.5]);
        let m = batch.column_by_name("m").unwrap().as_string::<i32>();
        assert_eq!(m.value(0), "true");
        assert_eq!(m.value(1), "x");
        assert!(batch.column_by_name("user.city").unwrap().is_null(0));

        // A sealed segment holding only `a` widens to the same answer.
        let mut narrow = FieldSet::default();
        for (name, t) in crate::document::field_types(&a.fields) {
            narrow.observe(name, t);
        }
        let old = rows_to_batch(&narrow.to_arrow_schema(), &[&a]).unwrap();
        assert_eq!(
            old.column_by_name("n")
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            1
        );
        let mut wide = narrow.clone();
        wide.observe("tags", FieldType::Utf8);
        wide.merge(&local);
        let aligned = align_batch(&old, &wide.to_arrow_schema()).unwrap();
        let tags = aligned.column_by_name("tags").unwrap().as_string::<i32>();
        assert_eq!(tags.value(0), "[1,2]");
        let m = aligned.column_by_name("m").unwrap().as_string::<i32>();
        assert_eq!(m.value(0), "true");
        assert!(aligned
            .column_by_name("user.city")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .is_null(0));
    }
}
