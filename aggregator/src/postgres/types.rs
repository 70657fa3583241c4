//! Arrow values as Postgres values: type OIDs for result columns, rows in text
//! or binary format, and parameters decoded from either.
//!
//! | Arrow | Postgres |
//! |---|---|
//! | Boolean | `bool` |
//! | Int8, Int16, UInt8 | `int2` |
//! | Int32, UInt16 | `int4` |
//! | Int64, UInt32, UInt64 | `int8` (a UInt64 past `int8` is an error) |
//! | Float16, Float32 / Float64 | `float4` / `float8` |
//! | Decimal128 | `numeric` |
//! | Utf8, LargeUtf8, Utf8View | `text` (altdb's `json` fields are JSON text) |
//! | Binary kinds | `bytea` |
//! | Timestamp with a time zone / without | `timestamptz` / `timestamp` |
//! | Date32, Date64 | `date` |
//! | List of one of bool, integers, floats, text, timestamps | its array type |
//! | anything else (structs, maps, other lists, intervals) | `json` (the value as JSON) |

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType,
};
use datafusion::common::ScalarValue;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldInfo};
use pgwire::api::Type;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use rust_decimal::Decimal;

use super::user_error;
use crate::query::json;

/// The Postgres type of an Arrow column.
pub fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Decimal128(_, _) => Type::NUMERIC,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => Type::TEXT,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::List(element) | DataType::LargeList(element) => {
            match element_type(element.data_type()) {
                Some(Type::BOOL) => Type::BOOL_ARRAY,
                Some(Type::INT8) => Type::INT8_ARRAY,
                Some(Type::FLOAT8) => Type::FLOAT8_ARRAY,
                Some(Type::TEXT) => Type::TEXT_ARRAY,
                Some(Type::TIMESTAMPTZ) => Type::TIMESTAMPTZ_ARRAY,
                _ => Type::JSON,
            }
        }
        _ => Type::JSON,
    }
}

/// The Postgres type of an array's elements, where altdb sends it as an array.
fn element_type(data_type: &DataType) -> Option<Type> {
    match data_type {
        DataType::Boolean => Some(Type::BOOL),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Some(Type::INT8),
        DataType::Float32 | DataType::Float64 => Some(Type::FLOAT8),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
            Some(Type::TEXT)
        }
        DataType::Timestamp(_, Some(_)) => Some(Type::TIMESTAMPTZ),
        _ => None,
    }
}

/// The row description of a result: one field per column, in `format`.
pub fn fields(schema: &datafusion::arrow::datatypes::Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            FieldInfo::new(
                field.name().clone(),
                None,
                None,
                pg_type(field.data_type()),
                format.format_for(i),
            )
        })
        .collect()
}

/// The rows of a batch as `DataRow`s of `fields`.
pub fn encode_batch(
    batch: &RecordBatch,
    fields: &Arc<Vec<FieldInfo>>,
) -> Vec<PgWireResult<DataRow>> {
    let columns: Vec<Column> = match batch
        .columns()
        .iter()
        .zip(fields.iter())
        .map(|(array, field)| Column::new(array, field.datatype()))
        .collect::<PgWireResult<_>>()
    {
        Ok(columns) => columns,
        Err(error) => return vec![Err(error)],
    };
    let mut encoder = DataRowEncoder::new(fields.clone());
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut failed = None;
        for column in &columns {
            if let Err(error) = column.encode(&mut encoder, row) {
                failed = Some(error);
                break;
            }
        }
        match failed {
            Some(error) => {
                rows.push(Err(error));
                return rows;
            }
            None => rows.push(Ok(encoder.take_row())),
        }
    }
    rows
}

/// A column, cast once per batch to what its Postgres type is encoded from.
enum Column {
    Bool(ArrayRef),
    Int2(ArrayRef),
    Int4(ArrayRef),
    Int8(ArrayRef),
    Float4(ArrayRef),
    Float8(ArrayRef),
    Numeric(ArrayRef, u32),
    Text(ArrayRef),
    Bytes(ArrayRef),
    TimestampTz(ArrayRef),
    Timestamp(ArrayRef),
    Date(ArrayRef),
    Array(ArrayRef, Type),
    Json(ArrayRef),
}

impl Column {
    fn new(array: &ArrayRef, pg: &Type) -> PgWireResult<Self> {
        let to = |data_type: DataType| {
            cast(array, &data_type).map_err(|e| {
                user_error(
                    "XX000",
                    format!("cannot send a {} column: {e}", array.data_type()),
                )
            })
        };
        Ok(match *pg {
            Type::BOOL => Column::Bool(array.clone()),
            Type::INT2 => Column::Int2(to(DataType::Int16)?),
            Type::INT4 => Column::Int4(to(DataType::Int32)?),
            Type::INT8 => Column::Int8(to(DataType::Int64)?),
            Type::FLOAT4 => Column::Float4(to(DataType::Float32)?),
            Type::FLOAT8 => Column::Float8(to(DataType::Float64)?),
            Type::NUMERIC => match array.data_type() {
                DataType::Decimal128(_, scale) if *scale >= 0 => {
                    Column::Numeric(array.clone(), *scale as u32)
                }
                _ => Column::Float8(to(DataType::Float64)?),
            },
            Type::TEXT => Column::Text(to(DataType::Utf8)?),
            Type::BYTEA => Column::Bytes(to(DataType::Binary)?),
            Type::TIMESTAMPTZ => Column::TimestampTz(to(DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into()),
            ))?),
            Type::TIMESTAMP => {
                Column::Timestamp(to(DataType::Timestamp(TimeUnit::Microsecond, None))?)
            }
            Type::DATE => Column::Date(to(DataType::Date32)?),
            Type::BOOL_ARRAY
            | Type::INT8_ARRAY
            | Type::FLOAT8_ARRAY
            | Type::TEXT_ARRAY
            | Type::TIMESTAMPTZ_ARRAY => Column::Array(array.clone(), pg.clone()),
            _ => Column::Json(array.clone()),
        })
    }

    fn encode(&self, encoder: &mut DataRowEncoder, row: usize) -> PgWireResult<()> {
        match self {
            Column::Bool(a) => encoder.encode_field(&value(a, row, |a, i| a.as_boolean().value(i))),
            Column::Int2(a) => encoder.encode_field(&value(a, row, |a, i| {
                a.as_primitive::<Int16Type>().value(i)
            })),
            Column::Int4(a) => encoder.encode_field(&value(a, row, |a, i| {
                a.as_primitive::<Int32Type>().value(i)
            })),
            Column::Int8(a) => encoder.encode_field(&value(a, row, |a, i| {
                a.as_primitive::<Int64Type>().value(i)
            })),
            Column::Float4(a) => encoder.encode_field(&value(a, row, |a, i| {
                a.as_primitive::<Float32Type>().value(i)
            })),
            Column::Float8(a) => encoder.encode_field(&value(a, row, |a, i| {
                a.as_primitive::<Float64Type>().value(i)
            })),
            Column::Numeric(a, scale) => {
                let decimal = match a.is_null(row) {
                    true => None,
                    false => {
                        let raw = a.as_primitive::<Decimal128Type>().value(row);
                        Some(Decimal::try_from_i128_with_scale(raw, *scale).map_err(|e| {
                            user_error(
                                "22003",
                                format!("a decimal value does not fit numeric: {e}"),
                            )
                        })?)
                    }
                };
                encoder.encode_field(&decimal)
            }
            Column::Text(a) => {
                let text = a.as_string::<i32>();
                encoder.encode_field(&(!text.is_null(row)).then(|| text.value(row)))
            }
            Column::Bytes(a) => encoder.encode_field(&value(a, row, |a, i| {
                a.as_binary::<i32>().value(i).to_vec()
            })),
            Column::TimestampTz(a) => encoder.encode_field(&value(a, row, |a, i| {
                utc(a.as_primitive::<TimestampMicrosecondType>().value(i))
            })),
            Column::Timestamp(a) => encoder.encode_field(&value(a, row, |a, i| {
                utc(a.as_primitive::<TimestampMicrosecondType>().value(i)).naive_utc()
            })),
            Column::Date(a) => encoder.encode_field(&value(a, row, |a, i| {
                date(a.as_primitive::<Date32Type>().value(i))
            })),
            Column::Array(a, pg) => encode_array(encoder, a, row, pg),
            Column::Json(a) => {
                let json = match a.is_null(row) {
                    true => None,
                    false => Some(json::cell(a, row)),
                };
                encoder.encode_field(&json)
            }
        }
    }
}

fn value<T>(array: &ArrayRef, row: usize, get: impl Fn(&ArrayRef, usize) -> T) -> Option<T> {
    (!array.is_null(row)).then(|| get(array, row))
}

fn utc(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn date(days: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date") + chrono::Duration::days(days as i64)
}

/// A list value as a Postgres array of its element type.
fn encode_array(
    encoder: &mut DataRowEncoder,
    array: &ArrayRef,
    row: usize,
    pg: &Type,
) -> PgWireResult<()> {
    if array.is_null(row) {
        return encoder.encode_field(&None::<Vec<Option<String>>>);
    }
    let values = match array.data_type() {
        DataType::LargeList(_) => array.as_list::<i64>().value(row),
        _ => array.as_list::<i32>().value(row),
    };
    let element = |data_type: DataType| {
        cast(&values, &data_type)
            .map_err(|e| user_error("XX000", format!("cannot send an array: {e}")))
    };
    let n = values.len();
    match *pg {
        Type::BOOL_ARRAY => {
            let a = element(DataType::Boolean)?;
            let v: Vec<Option<bool>> = (0..n)
                .map(|i| value(&a, i, |a, i| a.as_boolean().value(i)))
                .collect();
            encoder.encode_field(&v)
        }
        Type::INT8_ARRAY => {
            let a = element(DataType::Int64)?;
            let v: Vec<Option<i64>> = (0..n)
                .map(|i| value(&a, i, |a, i| a.as_primitive::<Int64Type>().value(i)))
                .collect();
            encoder.encode_field(&v)
        }
        Type::FLOAT8_ARRAY => {
            let a = element(DataType::Float64)?;
            let v: Vec<Option<f64>> = (0..n)
                .map(|i| value(&a, i, |a, i| a.as_primitive::<Float64Type>().value(i)))
                .collect();
            encoder.encode_field(&v)
        }
        Type::TIMESTAMPTZ_ARRAY => {
            let a = element(DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into()),
            ))?;
            let v: Vec<Option<DateTime<Utc>>> = (0..n)
                .map(|i| {
                    value(&a, i, |a, i| {
                        utc(a.as_primitive::<TimestampMicrosecondType>().value(i))
                    })
                })
                .collect();
            encoder.encode_field(&v)
        }
        _ => {
            let a = element(DataType::Utf8)?;
            let v: Vec<Option<String>> = (0..n)
                .map(|i| value(&a, i, |a, i| a.as_string::<i32>().value(i).to_string()))
                .collect();
            encoder.encode_field(&v)
        }
    }
}

/// The Postgres type a parameter is decoded as: the client's, else what its
/// use implies, else text.
pub fn parameter_type(client: Option<&Type>, inferred: Option<&DataType>) -> Type {
    match client {
        Some(t) if *t != Type::UNKNOWN => t.clone(),
        _ => inferred.map(pg_type).unwrap_or(Type::TEXT),
    }
}

/// One parameter of a portal as a value of `inferred` (its use's type) when
/// known: decoded as `pg` (text or binary), then cast.
pub fn parameter_value(
    portal: &pgwire::api::portal::Portal<super::PgStatement>,
    index: usize,
    pg: &Type,
    inferred: Option<&DataType>,
) -> PgWireResult<ScalarValue> {
    let bad = |e: PgWireError| {
        user_error(
            "22P02",
            format!("parameter ${} is not a valid {}: {e}", index + 1, pg.name()),
        )
    };
    let scalar = match *pg {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(index, pg).map_err(bad)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(index, pg).map_err(bad)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(index, pg).map_err(bad)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(index, pg).map_err(bad)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(index, pg).map_err(bad)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(index, pg).map_err(bad)?),
        Type::NUMERIC => {
            let decimal = portal.parameter::<Decimal>(index, pg).map_err(bad)?;
            ScalarValue::Float64(decimal.map(|d| {
                use rust_decimal::prelude::ToPrimitive;
                d.to_f64().unwrap_or(f64::NAN)
            }))
        }
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<DateTime<chrono::FixedOffset>>(index, pg)
                .map_err(bad)?
                .map(|t| t.timestamp_micros()),
            Some("UTC".into()),
        ),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<NaiveDateTime>(index, pg)
                .map_err(bad)?
                .map(|t| t.and_utc().timestamp_micros()),
            None,
        ),
        Type::DATE => ScalarValue::Date32(
            portal
                .parameter::<NaiveDate>(index, pg)
                .map_err(bad)?
                .map(|d| (d - date(0)).num_days() as i32),
        ),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            ScalarValue::Utf8(portal.parameter::<String>(index, pg).map_err(bad)?)
        }
        Type::JSON | Type::JSONB => ScalarValue::Utf8(
            portal
                .parameter::<serde_json::Value>(index, pg)
                .map_err(bad)?
                .map(|v| v.to_string()),
        ),
        _ => {
            return Err(user_error(
                "0A000",
                format!(
                    "parameter ${} has type {}, which altdb does not take; send it as text",
                    index + 1,
                    pg.name()
                ),
            ))
        }
    };
    match inferred {
        Some(data_type) if *data_type != scalar.data_type() && !scalar.is_null() => {
            scalar.cast_to(data_type).map_err(|e| {
                user_error(
                    "22P02",
                    format!(
                        "parameter ${} ({scalar}) is not a valid {}: {}",
                        index + 1,
                        json::sql_type_name(data_type),
                        e.strip_backtrace()
                    ),
                )
            })
        }
        Some(data_type) if scalar.is_null() => {
            ScalarValue::try_from(data_type).map_err(|e| user_error("22P02", e.strip_backtrace()))
        }
        _ => Ok(scalar),
    }
}

/// The format every result column of a simple query has.
pub const TEXT: Format = Format::UnifiedText;
