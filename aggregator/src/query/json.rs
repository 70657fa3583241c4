//! Query results as JSON rows.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::Value;

/// SQL name of an Arrow type, as shown in result columns.
pub fn sql_type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            "bigint unsigned".into()
        }
        DataType::Float32 | DataType::Float64 => "double".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "varchar".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Null => "null".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("{}[]", sql_type_name(f.data_type())),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        other => other.to_string().to_lowercase(),
    }
}

fn float(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

/// Formats microseconds since the epoch as RFC 3339 UTC (`2024-03-01T12:00:00Z`).
pub fn format_timestamp_us(micros: i64) -> Value {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        None => Value::Null,
    }
}

/// One value of a column as JSON.
pub fn cell(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Timestamp(unit, _) => {
            let cast = arrow::compute::cast(
                &array.slice(row, 1),
                &DataType::Timestamp(TimeUnit::Microsecond, None),
            );
            match cast {
                Ok(micros) => format_timestamp_us(
                    micros
                        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .value(0),
                ),
                Err(_) => Value::String(format!("{unit:?}")),
            }
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            Value::Array((0..list.len()).map(|i| cell(&list, i)).collect())
        }
        DataType::Decimal128(_, _) => formatted(array, row)
            .parse::<f64>()
            .map(float)
            .unwrap_or(Value::Null),
        _ => Value::String(formatted(array, row)),
    }
}

fn formatted(array: &ArrayRef, row: usize) -> String {
    ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
        .map(|f| f.value(row).to_string())
        .unwrap_or_default()
}

/// Appends the rows of `batch` (up to `max_rows` in total) to `rows`.
/// The rows of an answer as JSON, cut at a number of rows or of bytes.
#[derive(Debug)]
pub struct Rows {
    rows: Vec<Vec<Value>>,
    bytes: usize,
    max_rows: usize,
    max_bytes: usize,
    truncated: bool,
}

impl Rows {
    pub fn new(max_rows: usize, max_bytes: usize) -> Self {
        Self {
            rows: Vec::new(),
            bytes: 0,
            max_rows,
            max_bytes,
            truncated: false,
        }
    }

    /// Adds a batch's rows while the answer has room; false once it is full (the
    /// rest of the result would be cut).
    pub fn append(&mut self, batch: &RecordBatch) -> bool {
        for row in 0..batch.num_rows() {
            if self.rows.len() >= self.max_rows || self.bytes >= self.max_bytes {
                self.truncated = true;
                return false;
            }
            let values: Vec<Value> = batch.columns().iter().map(|c| cell(c, row)).collect();
            self.bytes += values.iter().map(json_len).sum::<usize>() + values.len() + 1;
            self.rows.push(values);
        }
        true
    }

    /// The rows, and whether some were cut.
    pub fn finish(self) -> (Vec<Vec<Value>>, bool) {
        (self.rows, self.truncated)
    }
}

/// About how many bytes `value` takes as JSON text (numbers are counted as 8).
fn json_len(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| json_len(v) + 1).sum::<usize>(),
        Value::Object(fields) => {
            2 + fields
                .iter()
                .map(|(k, v)| k.len() + 4 + json_len(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn values_render_as_json() {
        let batch = RecordBatch::try_from_iter([
            (
                "n",
                Arc::new(arrow::array::Int64Array::from(vec![Some(1), None])) as ArrayRef,
            ),
            (
                "f",
                Arc::new(arrow::array::Float64Array::from(vec![0.5, f64::NAN])) as ArrayRef,
            ),
            (
                "t",
                Arc::new(
                    arrow::array::TimestampMicrosecondArray::from(vec![1_000_000, 1_500_000])
                        .with_timezone("UTC"),
                ) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut rows = Rows::new(10, 1 << 20);
        assert!(rows.append(&batch));
        let (rows, truncated) = rows.finish();
        assert!(!truncated);
        assert_eq!(
            rows,
            vec![
                vec![
                    Value::from(1),
                    Value::from(0.5),
                    Value::from("1970-01-01T00:00:01Z")
                ],
                vec![
                    Value::Null,
                    Value::Null,
                    Value::from("1970-01-01T00:00:01.500Z")
                ],
            ]
        );
    }

    #[test]
    fn answers_are_cut_at_rows_or_bytes_and_say_so() {
        let text: Vec<String> = (0..100).map(|i| format!("{i:0>100}")).collect();
        let batch = RecordBatch::try_from_iter([(
            "s",
            Arc::new(arrow::array::StringArray::from(text)) as ArrayRef,
        )])
        .unwrap();
        let mut by_bytes = Rows::new(1000, 1000);
        assert!(!by_bytes.append(&batch));
        let (rows, truncated) = by_bytes.finish();
        assert!(truncated);
        assert_eq!(rows.len(), 10, "10 rows of ~105 bytes reach 1000 bytes");

        // Exactly as many rows as allowed: nothing was cut.
        let mut exact = Rows::new(100, 1 << 20);
        assert!(exact.append(&batch));
        assert!(exact.append(&batch.slice(0, 0)));
        let (rows, truncated) = exact.finish();
        assert_eq!((rows.len(), truncated), (100, false));
        let mut by_rows = Rows::new(100, 1 << 20);
        assert!(by_rows.append(&batch));
        assert!(!by_rows.append(&batch));
        let (rows, truncated) = by_rows.finish();
        assert_eq!((rows.len(), truncated), (100, true));
    }
}
