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

fn cell(array: &ArrayRef, row: usize) -> Value {
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
pub fn append_rows(batch: &RecordBatch, rows: &mut Vec<Vec<Value>>, max_rows: usize) {
    let take = batch.num_rows().min(max_rows.saturating_sub(rows.len()));
    for row in 0..take {
        rows.push(batch.columns().iter().map(|c| cell(c, row)).collect());
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
        let mut rows = Vec::new();
        append_rows(&batch, &mut rows, 10);
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
}
