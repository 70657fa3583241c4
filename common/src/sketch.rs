//! Sketches: a rollup's `COUNT(DISTINCT x)` and `QUANTILES(x)` measures, and
//! the SQL functions that read them.
//!
//! A distinct count or a quantile cannot be merged from per-group counts, so
//! a rollup keeps, per group, a sketch of the values its records brought:
//! a HyperLogLog (Apache DataSketches, 2^12 registers: about 1.6 % relative
//! error) for distinct counts and a t-digest (k = 100) for quantiles. A sketch
//! is stored in the group's document as a string, its kind's prefix followed
//! by the DataSketches serialization in base64 (`hll:AgEHDAMI..`,
//! `tdigest:..`), so copies, catch-up and snapshots carry it like any value.
//!
//! Only the leaf makes sketches: the tailers send each record's raw value
//! and the leaf adds it to the group's sketch ([`add`]), so a record's field
//! can never pose as a sketch. Queries merge them with two aggregates,
//! across buckets and dimensions at will:
//!
//! ```sql
//! SELECT kind, sketch_distinct(users), sketch_quantile(latency, 0.99)
//! FROM clicks_per_minute WHERE _event_time > now() - INTERVAL '1 hour' GROUP BY kind
//! ```
//!
//! Their partial states are serialized sketches, so each leaf merges its own
//! groups and the aggregator merges the leaves'.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use datasketches::hll::{HllSketch, HllType, HllUnion};
use datasketches::tdigest::TDigestMut;
use serde_json::Value;

/// Registers of a distinct-count sketch: 2^12 (relative error about 1.6 %).
const HLL_LG_K: u8 = 12;
/// The t-digest's compression: about 200 centroids at most.
const TDIGEST_K: u16 = 100;

/// What a sketch measure estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SketchKind {
    /// `COUNT(DISTINCT x)`: a HyperLogLog.
    Distinct,
    /// `QUANTILES(x)`: a t-digest.
    Quantiles,
}

impl SketchKind {
    /// The prefix a stored sketch of this kind starts with.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Distinct => "hll:",
            Self::Quantiles => "tdigest:",
        }
    }

    /// The measure that makes this kind of sketch, for messages.
    fn measure(self) -> &'static str {
        match self {
            Self::Distinct => "COUNT(DISTINCT ..)",
            Self::Quantiles => "QUANTILES(..)",
        }
    }
}

/// A group's sketch, decoded: records' values are added to it and it is
/// encoded once for storing ([`Sketch::encode`]).
#[derive(Debug)]
pub enum Sketch {
    Distinct(HllSketch),
    Quantiles(TDigestMut),
}

impl Sketch {
    /// An empty sketch of `kind`.
    pub fn new(kind: SketchKind) -> Self {
        match kind {
            SketchKind::Distinct => {
                Self::Distinct(HllSketch::new(HLL_LG_K, HllType::Hll4).expect("a valid lg_k"))
            }
            SketchKind::Quantiles => {
                Self::Quantiles(TDigestMut::new(TDIGEST_K).expect("a valid k"))
            }
        }
    }

    /// The sketch a group's document holds, if `held` is one of this kind (a
    /// patch may have put something else there: the sketch starts over).
    pub fn held(kind: SketchKind, held: Option<&Value>) -> Option<Self> {
        decode(kind, held?.as_str()?).ok()
    }

    /// Whether `value` adds to a sketch of `kind`: nulls do not, nor do
    /// values that are not finite numbers to a quantile sketch.
    pub fn takes(kind: SketchKind, value: &Value) -> bool {
        match kind {
            SketchKind::Distinct => !value.is_null(),
            SketchKind::Quantiles => value.as_f64().is_some_and(f64::is_finite),
        }
    }

    /// Adds a record's value: a distinct-count sketch takes strings by their
    /// text and other values by their JSON (so `"1"` and `1` are two values).
    pub fn add(&mut self, value: &Value) {
        match (self, value) {
            (_, Value::Null) => {}
            (Self::Distinct(hll), Value::String(s)) => hll.update(s.as_str()),
            (Self::Distinct(hll), other) => hll.update((0xA1u8, other.to_string())),
            (Self::Quantiles(digest), value) => {
                if let Some(number) = value.as_f64() {
                    digest.update(number);
                }
            }
        }
    }

    /// The sketch as it is stored: its kind's prefix and its serialization
    /// in base64.
    pub fn encode(&mut self) -> String {
        let (kind, bytes) = match self {
            Self::Distinct(hll) => (SketchKind::Distinct, hll.serialize()),
            Self::Quantiles(digest) => (SketchKind::Quantiles, digest.serialize()),
        };
        let mut text = String::from(kind.prefix());
        STANDARD.encode_string(bytes, &mut text);
        text
    }
}

/// Reads a stored sketch of `kind`, or says why it is not one. Sketches are
/// read from query input (any string column may be handed to the SQL
/// functions), so a malformed one is an error, never a panic.
fn decode(kind: SketchKind, text: &str) -> Result<Sketch, String> {
    let not_one = || {
        let preview: String = text.chars().take(24).collect();
        format!(
            "`{preview}{}` is not a sketch a rollup's {} measure stored",
            if text.chars().count() > 24 { "…" } else { "" },
            kind.measure()
        )
    };
    let bytes = text
        .strip_prefix(kind.prefix())
        .and_then(|b64| STANDARD.decode(b64).ok())
        .ok_or_else(not_one)?;
    // The library checks what it reads; a panic on a crafted image would take
    // the query's thread with it, so it is caught as well.
    let decoded = std::panic::catch_unwind(|| match kind {
        SketchKind::Distinct => HllSketch::deserialize(&bytes).map(Sketch::Distinct),
        SketchKind::Quantiles => TDigestMut::deserialize(&bytes).map(Sketch::Quantiles),
    });
    match decoded {
        Ok(Ok(decoded)) => Ok(decoded),
        _ => Err(not_one()),
    }
}

/// `sketch_distinct(x)`: the number of distinct values in the
/// `COUNT(DISTINCT ..)` sketches of the rows aggregated.
pub fn distinct_udaf() -> AggregateUDF {
    AggregateUDF::new_from_impl(SketchFunction::new(SketchKind::Distinct))
}

/// `sketch_quantile(x, q)`: the `q` quantile (0 to 1) of the values in the
/// `QUANTILES(..)` sketches of the rows aggregated.
pub fn quantile_udaf() -> AggregateUDF {
    AggregateUDF::new_from_impl(SketchFunction::new(SketchKind::Quantiles))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SketchFunction {
    kind: SketchKind,
    signature: Signature,
}

impl SketchFunction {
    fn new(kind: SketchKind) -> Self {
        let arguments = match kind {
            SketchKind::Distinct => 1,
            SketchKind::Quantiles => 2,
        };
        Self {
            kind,
            signature: Signature::any(arguments, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for SketchFunction {
    fn name(&self) -> &str {
        match self.kind {
            SketchKind::Distinct => "sketch_distinct",
            SketchKind::Quantiles => "sketch_quantile",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        let stringy = |t: &DataType| {
            matches!(
                t,
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
            ) || matches!(t, DataType::Dictionary(_, v) if v.as_ref() == &DataType::Utf8)
        };
        if !arg_types.first().is_some_and(stringy) {
            return plan_err!(
                "{}(x) reads a rollup's {} measure (a string column), not {}",
                self.name(),
                self.kind.measure(),
                arg_types
                    .first()
                    .map_or("nothing".to_string(), |t| t.to_string())
            );
        }
        Ok(match self.kind {
            SketchKind::Distinct => DataType::Int64,
            SketchKind::Quantiles => DataType::Float64,
        })
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[sketch]", args.name),
            DataType::Binary,
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> DfResult<Box<dyn Accumulator>> {
        Ok(match self.kind {
            SketchKind::Distinct => Box::new(DistinctAccumulator {
                union: HllUnion::new(HLL_LG_K).expect("a valid lg_k"),
            }),
            SketchKind::Quantiles => {
                let quantile = args
                    .exprs
                    .get(1)
                    .and_then(|e| e.downcast_ref::<Literal>())
                    .and_then(|l| l.value().cast_to(&DataType::Float64).ok())
                    .and_then(|v| match v {
                        ScalarValue::Float64(Some(q)) => Some(q),
                        _ => None,
                    });
                let Some(quantile) = quantile.filter(|q| (0.0..=1.0).contains(q)) else {
                    return plan_err!(
                        "sketch_quantile(x, q): q is a number from 0 to 1 written in the \
                         query (0.5 for the median, 0.99 for the 99th percentile)"
                    );
                };
                Box::new(QuantileAccumulator {
                    digest: TDigestMut::new(TDIGEST_K).expect("a valid k"),
                    quantile,
                })
            }
        })
    }
}

/// The stored sketches of one argument column, nulls skipped.
fn sketches(kind: SketchKind, column: &ArrayRef) -> DfResult<Vec<Sketch>> {
    let strings = datafusion::arrow::compute::cast(column, &DataType::Utf8)?;
    let mut decoded = Vec::new();
    for text in strings.as_string::<i32>().iter().flatten() {
        match decode(kind, text) {
            Ok(sketch) => decoded.push(sketch),
            Err(why) => return exec_err!("{why}"),
        }
    }
    Ok(decoded)
}

/// Partial states: serialized sketches without the text prefix.
fn states(column: &ArrayRef) -> DfResult<impl Iterator<Item = &[u8]>> {
    let Some(binary) = column.as_any().downcast_ref::<BinaryArray>() else {
        return exec_err!("a sketch's partial state is binary");
    };
    Ok(binary.iter().flatten())
}

#[derive(Debug)]
struct DistinctAccumulator {
    union: HllUnion,
}

impl Accumulator for DistinctAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        for sketch in sketches(SketchKind::Distinct, &values[0])? {
            if let Sketch::Distinct(hll) = sketch {
                self.union.update(&hll);
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states_: &[ArrayRef]) -> DfResult<()> {
        for bytes in states(&states_[0])? {
            match std::panic::catch_unwind(|| HllSketch::deserialize(bytes)) {
                Ok(Ok(hll)) => self.union.update(&hll),
                _ => return exec_err!("a distinct-count sketch's partial state is malformed"),
            }
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let bytes = self.union.to_sketch(HllType::Hll8).serialize();
        Ok(vec![ScalarValue::Binary(Some(bytes))])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Int64(Some(
            self.union.estimate().round() as i64
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.union.estimated_size()
    }
}

#[derive(Debug)]
struct QuantileAccumulator {
    digest: TDigestMut,
    quantile: f64,
}

impl Accumulator for QuantileAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        for sketch in sketches(SketchKind::Quantiles, &values[0])? {
            if let Sketch::Quantiles(digest) = sketch {
                self.digest.merge(&digest);
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states_: &[ArrayRef]) -> DfResult<()> {
        for bytes in states(&states_[0])? {
            match std::panic::catch_unwind(|| TDigestMut::deserialize(bytes)) {
                Ok(Ok(digest)) => self.digest.merge(&digest),
                _ => return exec_err!("a quantile sketch's partial state is malformed"),
            }
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.digest.serialize()))])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Float64(self.digest.quantile(self.quantile)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.digest.estimated_size()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::StringArray;
    use datafusion::prelude::SessionContext;
    use serde_json::json;

    use super::*;

    /// What a group's measure holds after `values` (`None`: nothing taken).
    fn fold(kind: SketchKind, values: impl IntoIterator<Item = Value>) -> Option<Value> {
        let mut sketch: Option<Sketch> = None;
        for value in values {
            if Sketch::takes(kind, &value) {
                sketch.get_or_insert_with(|| Sketch::new(kind)).add(&value);
            }
        }
        sketch.map(|mut s| Value::String(s.encode()))
    }

    fn estimate(held: &Value) -> f64 {
        match decode(SketchKind::Distinct, held.as_str().unwrap()).unwrap() {
            Sketch::Distinct(hll) => hll.estimate(),
            Sketch::Quantiles(_) => unreachable!(),
        }
    }

    #[test]
    fn a_distinct_sketch_counts_values_once_within_its_error() {
        let small = fold(
            SketchKind::Distinct,
            ["a", "b", "a", "c"].map(Value::from).into_iter().chain([
                Value::Null,
                json!(1),
                json!("1"),
            ]),
        )
        .unwrap();
        assert!(small.as_str().unwrap().starts_with("hll:"));
        assert_eq!(estimate(&small).round(), 5.0);
        let big = fold(
            SketchKind::Distinct,
            (0..200_000).map(|i| Value::from(format!("user-{}", i % 50_000))),
        )
        .unwrap();
        let error = (estimate(&big) - 50_000.0).abs() / 50_000.0;
        assert!(error < 0.05, "{}", estimate(&big));
        // A dense sketch stays a few kilobytes.
        assert!(
            big.as_str().unwrap().len() < 4_000,
            "{}",
            big.as_str().unwrap().len()
        );
    }

    #[test]
    fn what_a_sketch_takes_and_what_is_not_one() {
        assert!(!Sketch::takes(SketchKind::Distinct, &Value::Null));
        assert!(Sketch::takes(SketchKind::Distinct, &json!({"a": 1})));
        assert!(!Sketch::takes(SketchKind::Quantiles, &json!("fast")));
        assert!(Sketch::takes(SketchKind::Quantiles, &json!(2.5)));
        let digest = fold(SketchKind::Quantiles, [json!(3)]).unwrap();
        assert!(Sketch::held(SketchKind::Quantiles, Some(&digest)).is_some());
        // A value a patch put where the sketch was is not one, nor is a
        // sketch of the other kind.
        assert!(Sketch::held(SketchKind::Quantiles, Some(&json!("patched"))).is_none());
        let hll = fold(SketchKind::Distinct, [json!(3)]).unwrap();
        assert!(Sketch::held(SketchKind::Quantiles, Some(&hll)).is_none());
        assert!(Sketch::held(SketchKind::Distinct, Some(&json!(7))).is_none());
    }

    #[test]
    fn hostile_sketch_text_is_an_error_not_a_panic() {
        let good = fold(SketchKind::Distinct, (0..5000).map(Value::from)).unwrap();
        let good = STANDARD.decode(&good.as_str().unwrap()[4..]).unwrap();
        let digest = fold(SketchKind::Quantiles, (0..5000).map(Value::from)).unwrap();
        let digest = STANDARD.decode(&digest.as_str().unwrap()[8..]).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (kind, image) in [
            (SketchKind::Distinct, &good),
            (SketchKind::Quantiles, &digest),
        ] {
            for _ in 0..2000 {
                let mut bytes = image.clone();
                match next() % 3 {
                    0 => bytes.truncate((next() as usize) % image.len()),
                    1 => {
                        for _ in 0..1 + next() % 8 {
                            let at = (next() as usize) % bytes.len();
                            bytes[at] = next() as u8;
                        }
                    }
                    _ => bytes = (0..next() % 64).map(|_| next() as u8).collect(),
                }
                let text = format!("{}{}", kind.prefix(), STANDARD.encode(&bytes));
                // Decoding either works or says why; estimating what decoded works.
                if let Ok(Sketch::Distinct(hll)) = decode(kind, &text) {
                    let _ = hll.estimate();
                }
            }
        }
        assert!(decode(SketchKind::Distinct, "hll:!!!")
            .unwrap_err()
            .contains("is not a sketch"));
        assert!(decode(SketchKind::Distinct, "user-1")
            .unwrap_err()
            .contains("COUNT(DISTINCT"));
    }

    #[tokio::test]
    async fn sql_merges_sketches_across_rows_and_partial_states() {
        let context = SessionContext::new();
        context.register_udaf(distinct_udaf());
        context.register_udaf(quantile_udaf());
        // Three groups' sketches: users 0..600, 400..1000 and 900..1200;
        // latencies 1..=100 spread over them.
        let users = [
            fold(SketchKind::Distinct, (0..600).map(Value::from)),
            fold(SketchKind::Distinct, (400..1000).map(Value::from)),
            fold(SketchKind::Distinct, (900..1200).map(Value::from)),
        ];
        let latency = [
            fold(SketchKind::Quantiles, (1..=30).map(Value::from)),
            fold(SketchKind::Quantiles, (31..=80).map(Value::from)),
            fold(SketchKind::Quantiles, (81..=100).map(Value::from)),
        ];
        let text = |v: &[Option<Value>; 3]| -> ArrayRef {
            Arc::new(StringArray::from_iter(v.iter().map(|v| {
                v.as_ref().and_then(|v| v.as_str()).map(str::to_string)
            })))
        };
        let batch = datafusion::arrow::record_batch::RecordBatch::try_from_iter([
            ("users", text(&users)),
            ("latency", text(&latency)),
        ])
        .unwrap();
        // Two partitions, so partial states are merged as well.
        let table = datafusion::datasource::MemTable::try_new(
            batch.schema(),
            vec![vec![batch.slice(0, 2)], vec![batch.slice(2, 1)]],
        )
        .unwrap();
        context.register_table("r", Arc::new(table)).unwrap();
        let rows = context
            .sql(
                "SELECT sketch_distinct(users) AS u, sketch_quantile(latency, 0.5) AS p50, \
                 sketch_quantile(latency, 1) AS top FROM r",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let distinct = rows[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0);
        assert!((1180..=1220).contains(&distinct), "{distinct}");
        let p50 = rows[0]
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
            .value(0);
        assert!((49.0..=52.0).contains(&p50), "{p50}");
        let top = rows[0]
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
            .value(0);
        assert_eq!(top, 100.0);

        for (sql, why) in [
            ("SELECT sketch_distinct(latency) FROM r", "COUNT(DISTINCT"),
            ("SELECT sketch_quantile(latency, 2) FROM r", "from 0 to 1"),
            (
                "SELECT sketch_quantile(latency, users) FROM r",
                "from 0 to 1",
            ),
            ("SELECT sketch_distinct(1) FROM r", "a string column"),
        ] {
            let error = match context.sql(sql).await {
                Ok(frame) => frame.collect().await.unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(error.contains(why), "{sql}: {error}");
        }
    }
}
