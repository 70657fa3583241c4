//! Query parameters: values bound to placeholders, never spliced into SQL text.
//!
//! A statement names its parameters `:name` (the HTTP API, Query Lambdas, the
//! Rockset-compatible API) or numbers them `$1`, `$2` (the Postgres wire
//! protocol, Flight SQL). DataFusion plans the statement with its placeholders,
//! infers their types from where they are used (`user_id = $1` takes
//! `user_id`'s type), and the values replace them in the logical plan as
//! literals ([`Params::bind`]): a value is data, whatever characters it holds.
//!
//! ```text
//!  {"name": "since", "type": "timestamp", "value": "2024-03-01T00:00:00Z"}
//!        │ Parameter::to_scalar (the declared type decides; a value that does
//!        ▼                       not fit it is a 400 naming the parameter)
//!  ScalarValue::TimestampMicrosecond(1709251200000000, "UTC")
//!        │ LogicalPlan::with_param_values
//!        ▼
//!  ... WHERE _event_time > TIMESTAMP '2024-03-01T00:00:00Z'
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{AggregatorError, Result};

/// Parameters of one statement.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Params {
    /// The statement has no placeholders.
    #[default]
    None,
    /// `:name` placeholders, by name (without the colon).
    Named(BTreeMap<String, ScalarValue>),
    /// `$1`, `$2`, .. placeholders, in order.
    Positional(Vec<ScalarValue>),
}

impl Params {
    /// A stable text of the values, for the plan cache's key: a kept plan holds
    /// its parameters' values as literals.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        match self {
            Params::None => {}
            Params::Named(values) => {
                for (name, value) in values {
                    let _ = write!(text, "{name}={value:?};");
                }
            }
            Params::Positional(values) => {
                for value in values {
                    let _ = write!(text, "{value:?};");
                }
            }
        }
        text
    }

    /// Replaces the placeholders of `plan` with the values: every placeholder
    /// needs a value, and every value a placeholder (a misspelt name would
    /// otherwise be ignored silently).
    pub fn bind(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let wanted = placeholders(&plan)?;
        match self {
            Params::None if wanted.is_empty() => return Ok(plan),
            Params::None => {
                return Err(AggregatorError::InvalidParameter(format!(
                    "the statement has parameters ({}) but the request gives no values; \
                     send them in \"parameters\": [{{\"name\", \"type\", \"value\"}}, ..]",
                    names(wanted.keys())
                )))
            }
            Params::Named(values) => {
                for id in wanted.keys() {
                    let name = id.trim_start_matches([':', '$']);
                    if !values.contains_key(name) {
                        return Err(AggregatorError::InvalidParameter(format!(
                            "parameter `{name}` is used by the statement but has no value"
                        )));
                    }
                }
                for name in values.keys() {
                    if !wanted.contains_key(&format!(":{name}"))
                        && !wanted.contains_key(&format!("${name}"))
                    {
                        return Err(AggregatorError::InvalidParameter(format!(
                            "parameter `{name}` is not used by the statement (it uses {})",
                            names(wanted.keys())
                        )));
                    }
                }
            }
            Params::Positional(values) => {
                for id in wanted.keys() {
                    let Some(index) = positional_index(id) else {
                        return Err(AggregatorError::InvalidParameter(format!(
                            "placeholder `{id}` is named, but the values are positional \
                             ($1, $2, ..)"
                        )));
                    };
                    if index >= values.len() {
                        return Err(AggregatorError::InvalidParameter(format!(
                            "placeholder `{id}` has no value: {} given",
                            values.len()
                        )));
                    }
                }
            }
        }
        let values = match self {
            Params::None => return Ok(plan),
            Params::Named(values) => ParamValues::from(
                values
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect::<Vec<_>>(),
            ),
            Params::Positional(values) => ParamValues::from(values.clone()),
        };
        plan.with_param_values(values)
            .map_err(|e| AggregatorError::InvalidParameter(e.strip_backtrace()))
    }
}

/// The placeholders of a plan with the types DataFusion inferred for them
/// (`None` where their use does not say).
pub fn placeholders(plan: &LogicalPlan) -> Result<BTreeMap<String, Option<DataType>>> {
    let types: HashMap<String, Option<DataType>> = plan
        .get_parameter_types()
        .map_err(|e| AggregatorError::InvalidParameter(e.strip_backtrace()))?;
    Ok(types.into_iter().collect())
}

/// `$3` → 2.
pub fn positional_index(id: &str) -> Option<usize> {
    id.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)
}

fn names<'a>(ids: impl Iterator<Item = &'a String>) -> String {
    ids.map(|id| format!("`{}`", id.trim_start_matches([':', '$'])))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One parameter as the HTTP API takes it (Rockset's shape).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    pub name: String,
    /// `string`, `int`, `float`, `bool`, `timestamp`, `date` (see [`Self::to_scalar`]).
    #[serde(rename = "type")]
    pub kind: String,
    pub value: Value,
}

impl Parameter {
    /// The value as the declared type says; a value that does not fit is an
    /// error naming the parameter.
    pub fn to_scalar(&self) -> Result<ScalarValue> {
        let mistyped = |expected: &str| {
            AggregatorError::InvalidParameter(format!(
                "parameter `{}` is declared `{}` but its value {} is not {expected}",
                self.name, self.kind, self.value
            ))
        };
        let kind = self.kind.to_ascii_lowercase();
        if self.value.is_null() {
            return Ok(match kind.as_str() {
                "int" | "integer" | "bigint" | "int64" => ScalarValue::Int64(None),
                "float" | "double" | "float64" => ScalarValue::Float64(None),
                "bool" | "boolean" => ScalarValue::Boolean(None),
                "timestamp" | "datetime" => timestamp(None),
                "date" => ScalarValue::Date32(None),
                _ => ScalarValue::Utf8(None),
            });
        }
        // Rockset sends every value as a string ("value": "42"); JSON numbers
        // and booleans are taken too.
        let text = match &self.value {
            Value::String(text) => Some(text.as_str()),
            _ => None,
        };
        match kind.as_str() {
            "string" | "text" | "varchar" => match &self.value {
                Value::String(text) => Ok(ScalarValue::Utf8(Some(text.clone()))),
                _ => Err(mistyped("a string")),
            },
            "int" | "integer" | "bigint" | "int64" => {
                let value = match (&self.value, text) {
                    (Value::Number(n), _) => n.as_i64(),
                    (_, Some(text)) => text.trim().parse::<i64>().ok(),
                    _ => None,
                };
                value
                    .map(|v| ScalarValue::Int64(Some(v)))
                    .ok_or_else(|| mistyped("a 64-bit integer"))
            }
            "float" | "double" | "float64" => {
                let value = match (&self.value, text) {
                    (Value::Number(n), _) => n.as_f64(),
                    (_, Some(text)) => text.trim().parse::<f64>().ok(),
                    _ => None,
                };
                value
                    .map(|v| ScalarValue::Float64(Some(v)))
                    .ok_or_else(|| mistyped("a number"))
            }
            "bool" | "boolean" => {
                let value = match (&self.value, text) {
                    (Value::Bool(b), _) => Some(*b),
                    (_, Some(text)) => match text.trim().to_ascii_lowercase().as_str() {
                        "true" => Some(true),
                        "false" => Some(false),
                        _ => None,
                    },
                    _ => None,
                };
                value
                    .map(|v| ScalarValue::Boolean(Some(v)))
                    .ok_or_else(|| mistyped("true or false"))
            }
            "timestamp" | "datetime" => text
                .and_then(parse_timestamp_us)
                .map(|us| timestamp(Some(us)))
                .ok_or_else(|| mistyped("an RFC 3339 timestamp (2024-03-01T12:00:00Z)")),
            "date" => text
                .and_then(|t| chrono::NaiveDate::parse_from_str(t.trim(), "%Y-%m-%d").ok())
                .map(|date| {
                    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
                    ScalarValue::Date32(Some((date - epoch).num_days() as i32))
                })
                .ok_or_else(|| mistyped("a date (2024-03-01)")),
            other => Err(AggregatorError::InvalidParameter(format!(
                "parameter `{}` has type `{other}`; the types are string, int, float, bool, \
                 timestamp and date",
                self.name
            ))),
        }
    }
}

/// Named parameters from the HTTP form; a name given twice is an error.
pub fn named(parameters: &[Parameter]) -> Result<Params> {
    if parameters.is_empty() {
        return Ok(Params::None);
    }
    let mut values = BTreeMap::new();
    for parameter in parameters {
        let name = parameter.name.trim_start_matches([':', '$']);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(AggregatorError::InvalidParameter(format!(
                "parameter name `{}` is not valid: letters, digits and `_`",
                parameter.name
            )));
        }
        if values
            .insert(name.to_string(), parameter.to_scalar()?)
            .is_some()
        {
            return Err(AggregatorError::InvalidParameter(format!(
                "parameter `{name}` is given twice"
            )));
        }
    }
    Ok(Params::Named(values))
}

fn timestamp(micros: Option<i64>) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(micros, Some("UTC".into()))
}

/// RFC 3339 (`2024-03-01T12:00:00Z`, `+02:00`), or a date and time without an
/// offset taken as UTC (`2024-03-01 12:00:00`).
pub fn parse_timestamp_us(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(kind: &str, value: Value) -> Parameter {
        Parameter {
            name: "p".into(),
            kind: kind.into(),
            value,
        }
    }

    #[test]
    fn values_take_their_declared_type() {
        assert_eq!(
            parameter("int", Value::from(42)).to_scalar().unwrap(),
            ScalarValue::Int64(Some(42))
        );
        assert_eq!(
            parameter("int", Value::from("42")).to_scalar().unwrap(),
            ScalarValue::Int64(Some(42))
        );
        assert_eq!(
            parameter("string", Value::from("it's"))
                .to_scalar()
                .unwrap(),
            ScalarValue::Utf8(Some("it's".into()))
        );
        assert_eq!(
            parameter("timestamp", Value::from("2024-03-01T00:00:00Z"))
                .to_scalar()
                .unwrap(),
            timestamp(Some(1_709_251_200_000_000))
        );
        assert_eq!(
            parameter("date", Value::from("1970-01-03"))
                .to_scalar()
                .unwrap(),
            ScalarValue::Date32(Some(2))
        );
        assert_eq!(
            parameter("bool", Value::from("TRUE")).to_scalar().unwrap(),
            ScalarValue::Boolean(Some(true))
        );
    }

    #[test]
    fn a_value_that_does_not_fit_names_the_parameter() {
        let error = parameter("int", Value::from("4x2"))
            .to_scalar()
            .unwrap_err();
        assert!(error.to_string().contains("parameter `p`"), "{error}");
        let error = parameter("uuid", Value::from("x")).to_scalar().unwrap_err();
        assert!(error.to_string().contains("the types are"), "{error}");
        let error = named(&[
            parameter("int", Value::from(1)),
            parameter("int", Value::from(2)),
        ])
        .unwrap_err();
        assert!(error.to_string().contains("given twice"), "{error}");
    }
}
