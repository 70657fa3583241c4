//! Rollups: a collection kept as `GROUP BY` over what its sources send.
//!
//! A rollup is declared with SQL over `_input` that groups by a time bucket
//! (output as `_event_time`) and dimensions and computes `COUNT`, `SUM`, `MIN`
//! and `MAX` measures, and sketches: `COUNT(DISTINCT x)` (or
//! `APPROX_DISTINCT(x)`) and `QUANTILES(x)` ([`crate::sketch`]):
//!
//! ```sql
//! SELECT date_trunc('minute', _event_time) AS _event_time, kind,
//!        COUNT(*) AS n, SUM(amount) AS total, MAX(amount) AS top,
//!        COUNT(DISTINCT user) AS users, QUANTILES(latency_ms) AS latency
//! FROM _input GROUP BY 1, 2
//! ```
//!
//! [`Rollup::parse`] splits it into a per-record projection the tailers run
//! like an ingest transform (`... 1 AS n, amount AS total, amount AS top FROM
//! _input`: one document per record, which keeps its source position and so
//! exactly-once ingest), the dimensions (a document's `_id` is a hash of
//! their values: one per group) and the measures, which the leaf holding a
//! group's document merges each arriving document into ([`Group`]).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use datafusion::sql::sqlparser::ast::{
    DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    SelectItem, SetExpr, Statement, Value as SqlValue,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::columns::EVENT_TIME_COLUMN;
use crate::sketch::{Sketch, SketchKind};

/// How a measure combines the values of a group's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeasureKind {
    /// Records counted (each record contributes 1, or 0 for `COUNT(x)` with
    /// `x` null).
    Count,
    Sum,
    Min,
    Max,
    /// `COUNT(DISTINCT x)`: a distinct-count sketch of the values.
    Distinct,
    /// `QUANTILES(x)`: a quantile sketch of the (numeric) values.
    Quantiles,
}

impl MeasureKind {
    /// The sketch this measure keeps, if it keeps one.
    pub fn sketch(self) -> Option<SketchKind> {
        match self {
            Self::Distinct => Some(SketchKind::Distinct),
            Self::Quantiles => Some(SketchKind::Quantiles),
            Self::Count | Self::Sum | Self::Min | Self::Max => None,
        }
    }
}

/// One measure of a rollup: an output column and how it combines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measure {
    pub name: String,
    pub kind: MeasureKind,
}

/// A rollup's SQL taken apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    /// The per-record projection the tailers run as the collection's transform.
    pub per_record: String,
    /// The output columns that form a group, `_event_time` among them.
    pub dimensions: Vec<String>,
    pub measures: Vec<Measure>,
}

impl Rollup {
    /// Takes a rollup's SQL apart, or says what to fix.
    pub fn parse(sql: &str) -> Result<Self, String> {
        let usage = "a rollup is `SELECT <time bucket> AS _event_time, <dimensions>, \
                     COUNT(*)|SUM(x)|MIN(x)|MAX(x)|COUNT(DISTINCT x)|QUANTILES(x) AS <name>, .. \
                     FROM _input GROUP BY <the bucket and dimensions>`";
        crate::sql_guard::check_parse_cost(sql)?;
        let mut statements = Parser::parse_sql(&GenericDialect {}, sql)
            .map_err(|e| format!("the rollup does not parse: {e}"))?;
        if statements.len() != 1 {
            return Err(format!("{usage}: one statement"));
        }
        let Statement::Query(mut query) = statements.remove(0) else {
            return Err(format!("{usage}: a SELECT"));
        };
        if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() {
            return Err(format!("{usage}: without WITH, ORDER BY or LIMIT"));
        }
        let SetExpr::Select(select) = query.body.as_mut() else {
            return Err(format!("{usage}: a single SELECT"));
        };
        if select.having.is_some() || select.distinct.is_some() {
            return Err(format!(
                "{usage}: without HAVING or DISTINCT (filter the rollup's rows when querying it)"
            ));
        }
        let grouped = match &select.group_by {
            GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs.len(),
            _ => 0,
        };
        let mut dimensions = Vec::new();
        let mut measures = Vec::new();
        for item in select.projection.iter_mut() {
            let (expr, alias) = match item {
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
                SelectItem::UnnamedExpr(expr) => (expr, None),
                _ => return Err(format!("{usage}: no `*` in a rollup")),
            };
            match measure(expr)? {
                Some((kind, per_record)) => {
                    let name = alias.ok_or_else(|| {
                        format!("measure `{expr}` needs a name: `{expr} AS <name>`")
                    })?;
                    *expr = per_record;
                    measures.push(Measure { name, kind });
                }
                None => {
                    let name = match (alias, &*expr) {
                        (Some(alias), _) => alias,
                        (None, Expr::Identifier(ident)) => ident.value.clone(),
                        (None, other) => {
                            return Err(format!(
                                "dimension `{other}` needs a name: `{other} AS <name>`"
                            ))
                        }
                    };
                    dimensions.push(name);
                }
            }
        }
        if measures.is_empty() {
            return Err(format!("{usage}: at least one measure"));
        }
        if grouped != dimensions.len() {
            return Err(format!(
                "{usage}: GROUP BY names each of the {} dimension(s) ({}) once",
                dimensions.len(),
                dimensions.join(", ")
            ));
        }
        if !dimensions.iter().any(|d| d == EVENT_TIME_COLUMN) {
            return Err(format!(
                "{usage}: one dimension is the time bucket, named `{EVENT_TIME_COLUMN}` (e.g. \
                 `date_trunc('minute', _event_time) AS _event_time`)"
            ));
        }
        let mut names: Vec<&str> = dimensions
            .iter()
            .map(String::as_str)
            .chain(measures.iter().map(|m| m.name.as_str()))
            .collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("`{}` names two columns of the rollup", twice[0]));
        }
        select.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
        Ok(Self {
            per_record: query.to_string(),
            dimensions,
            measures,
        })
    }
}

/// The measure `expr` computes, if it is one, and what each record
/// contributes to it.
fn measure(expr: &Expr) -> Result<Option<(MeasureKind, Expr)>, String> {
    let Expr::Function(function) = expr else {
        return Ok(None);
    };
    let distinct = matches!(
        &function.args,
        FunctionArguments::List(list)
            if list.duplicate_treatment == Some(DuplicateTreatment::Distinct)
    );
    let kind = match function.name.to_string().to_ascii_lowercase().as_str() {
        "count" if distinct => MeasureKind::Distinct,
        "count" => MeasureKind::Count,
        "approx_distinct" => MeasureKind::Distinct,
        "quantiles" => MeasureKind::Quantiles,
        "sum" => MeasureKind::Sum,
        "min" => MeasureKind::Min,
        "max" => MeasureKind::Max,
        "avg" | "mean" => {
            return Err(format!(
                "`{expr}`: keep `SUM(..)` and `COUNT(..)` as measures and divide them when \
                 querying the rollup (an average of averages is not the average)"
            ))
        }
        "median" | "approx_median" | "approx_percentile_cont" | "percentile_cont" => {
            return Err(format!(
                "`{expr}`: keep `QUANTILES(x) AS <name>` as the measure and ask any quantile \
                 when querying the rollup: `sketch_quantile(<name>, 0.5)`"
            ))
        }
        "stddev" | "variance" | "array_agg" | "string_agg" | "first_value" | "last_value" => {
            return Err(format!(
                "`{expr}` is not a rollup measure: COUNT, SUM, MIN, MAX, COUNT(DISTINCT) and \
                 QUANTILES are"
            ))
        }
        _ => return Ok(None),
    };
    if (distinct && kind != MeasureKind::Distinct)
        || function.filter.is_some()
        || function.over.is_some()
    {
        return Err(format!(
            "`{expr}`: DISTINCT (but in COUNT), FILTER and OVER are not rollup measures"
        ));
    }
    let FunctionArguments::List(list) = &function.args else {
        return Err(format!("`{expr}`: one argument"));
    };
    let [FunctionArg::Unnamed(arg)] = list.args.as_slice() else {
        return Err(format!("`{expr}`: one argument"));
    };
    let per_record = match (kind, arg) {
        (MeasureKind::Count, FunctionArgExpr::Wildcard) => {
            Expr::value(SqlValue::Number("1".into(), false))
        }
        (MeasureKind::Count, FunctionArgExpr::Expr(value)) => {
            let sql = format!("CASE WHEN ({value}) IS NULL THEN 0 ELSE 1 END");
            Parser::new(&GenericDialect {})
                .try_with_sql(&sql)
                .and_then(|mut p| p.parse_expr())
                .map_err(|e| format!("`{expr}`: {e}"))?
        }
        (_, FunctionArgExpr::Expr(value)) => value.clone(),
        _ => return Err(format!("`{expr}`: one argument that is not `*`")),
    };
    Ok(Some((kind, per_record)))
}

/// A group's document while records merge into it: counts and sums add,
/// mins and maxes keep the extreme, sketches take the record's value in (kept
/// decoded until [`Group::into_doc`], so a batch that updates a group a
/// thousand times decodes and encodes its sketches once); a measure missing
/// or null on one side takes the other's.
#[derive(Debug)]
pub struct Group {
    doc: Map<String, Value>,
    sketches: HashMap<String, Sketch>,
}

impl Group {
    /// A group as stored.
    pub fn stored(doc: Map<String, Value>) -> Self {
        Self {
            doc,
            sketches: HashMap::new(),
        }
    }

    /// A group before its first record merges in: the record's dimensions
    /// (and other fields) without its measures.
    pub fn start(incoming: &Map<String, Value>, measures: &[Measure]) -> Self {
        let mut doc = incoming.clone();
        for measure in measures {
            doc.remove(&measure.name);
        }
        Self::stored(doc)
    }

    /// Merges what `incoming`, one record's document, contributes.
    pub fn merge(&mut self, incoming: &Map<String, Value>, measures: &[Measure]) {
        for Measure { name, kind } in measures {
            let Some(new) = incoming.get(name).filter(|v| !v.is_null()) else {
                continue;
            };
            if let Some(kind) = kind.sketch() {
                let sketch = match self.sketches.entry(name.clone()) {
                    Entry::Occupied(held) => held.into_mut(),
                    Entry::Vacant(slot) => match Sketch::held(kind, self.doc.get(name)) {
                        Some(held) => slot.insert(held),
                        None if Sketch::takes(kind, new) => slot.insert(Sketch::new(kind)),
                        None => continue,
                    },
                };
                sketch.add(new);
                continue;
            }
            let merged = match self.doc.get(name).filter(|v| !v.is_null()) {
                None => new.clone(),
                Some(old) => combine(*kind, old, new),
            };
            self.doc.insert(name.clone(), merged);
        }
    }

    /// The group's document, its sketches encoded.
    pub fn into_doc(mut self) -> Map<String, Value> {
        for (name, mut sketch) in self.sketches {
            self.doc.insert(name, Value::String(sketch.encode()));
        }
        self.doc
    }
}

fn combine(kind: MeasureKind, old: &Value, new: &Value) -> Value {
    let (Value::Number(a), Value::Number(b)) = (old, new) else {
        // Not numbers: MIN/MAX of strings compare as text; sums keep the
        // newer value (a measure over a field that is not numeric).
        return match (kind, old, new) {
            (MeasureKind::Min, Value::String(a), Value::String(b)) => {
                Value::String(a.min(b).clone())
            }
            (MeasureKind::Max, Value::String(a), Value::String(b)) => {
                Value::String(a.max(b).clone())
            }
            _ => new.clone(),
        };
    };
    match kind {
        MeasureKind::Count | MeasureKind::Sum => match (a.as_i64(), b.as_i64()) {
            (Some(x), Some(y)) if x.checked_add(y).is_some() => Value::from(x + y),
            _ => {
                serde_json::Number::from_f64(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0))
                    .map_or(Value::Null, Value::Number)
            }
        },
        // Sketches merge in `Group::merge`, never here.
        MeasureKind::Distinct | MeasureKind::Quantiles => new.clone(),
        MeasureKind::Min | MeasureKind::Max => {
            let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            let keep_new = if kind == MeasureKind::Min {
                y < x
            } else {
                y > x
            };
            if keep_new {
                new.clone()
            } else {
                old.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_rollup_becomes_a_per_record_projection_with_its_dimensions_and_measures() {
        let rollup = Rollup::parse(
            "SELECT date_trunc('minute', _event_time) AS _event_time, kind, \"geo.city\" AS city, \
             COUNT(*) AS n, count(amount) AS priced, SUM(amount) AS total, MIN(amount) AS low, \
             max(amount) AS top FROM _input WHERE kind <> 'test' GROUP BY 1, 2, 3",
        )
        .unwrap();
        assert_eq!(rollup.dimensions, ["_event_time", "kind", "city"]);
        let kinds: Vec<(&str, MeasureKind)> = rollup
            .measures
            .iter()
            .map(|m| (m.name.as_str(), m.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("n", MeasureKind::Count),
                ("priced", MeasureKind::Count),
                ("total", MeasureKind::Sum),
                ("low", MeasureKind::Min),
                ("top", MeasureKind::Max),
            ]
        );
        assert_eq!(
            rollup.per_record,
            "SELECT date_trunc('minute', _event_time) AS _event_time, kind, \"geo.city\" AS city, \
             1 AS n, CASE WHEN (amount) IS NULL THEN 0 ELSE 1 END AS priced, amount AS total, \
             amount AS low, amount AS top FROM _input WHERE kind <> 'test'"
        );
        // The per-record projection is a valid ingest transform.
        crate::transform::IngestTransform::compile(&rollup.per_record).unwrap();
    }

    #[test]
    fn what_is_not_a_rollup_is_refused_saying_what_to_fix() {
        for (sql, why) in [
            (
                "SELECT kind, COUNT(*) AS n FROM _input GROUP BY 1",
                "named `_event_time`",
            ),
            (
                "SELECT _event_time, kind, COUNT(*) AS n FROM _input GROUP BY 1",
                "GROUP BY names each",
            ),
            (
                "SELECT _event_time, COUNT(*) FROM _input GROUP BY 1",
                "needs a name",
            ),
            (
                "SELECT _event_time, kind FROM _input GROUP BY 1, 2",
                "at least one measure",
            ),
            (
                "SELECT _event_time, SUM(DISTINCT u) AS n FROM _input GROUP BY 1",
                "DISTINCT (but in COUNT)",
            ),
            (
                "SELECT _event_time, approx_percentile_cont(a, 0.9) AS n FROM _input GROUP BY 1",
                "sketch_quantile(<name>, 0.5)",
            ),
            (
                "SELECT _event_time, AVG(a) AS n FROM _input GROUP BY 1",
                "divide them when querying",
            ),
            (
                "SELECT _event_time, stddev(a) AS n FROM _input GROUP BY 1",
                "not a rollup measure",
            ),
            (
                "SELECT _event_time, SUM(a) AS n FROM _input GROUP BY 1 HAVING SUM(a) > 1",
                "HAVING",
            ),
            (
                "SELECT _event_time, SUM(a) AS n FROM _input GROUP BY 1 ORDER BY 1",
                "ORDER BY",
            ),
            (
                "SELECT _event_time, SUM(a) AS _event_time FROM _input GROUP BY 1",
                "two columns",
            ),
            ("DELETE FROM _input", "a SELECT"),
            ("SELECT (", "does not parse"),
            (
                &format!("SELECT {}1{} AS n", "(".repeat(500), ")".repeat(500)),
                "recursion limit",
            ),
        ] {
            let error = Rollup::parse(sql).unwrap_err();
            assert!(error.contains(why), "{sql}: {error}");
        }
    }

    #[test]
    fn sketch_measures_keep_each_records_value_and_merge_into_sketches() {
        let rollup = Rollup::parse(
            "SELECT _event_time, COUNT(DISTINCT user) AS users, approx_distinct(ip) AS ips, \
             quantiles(latency_ms) AS latency, COUNT(ALL user) AS n FROM _input GROUP BY 1",
        )
        .unwrap();
        let kinds: Vec<MeasureKind> = rollup.measures.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [
                MeasureKind::Distinct,
                MeasureKind::Distinct,
                MeasureKind::Quantiles,
                MeasureKind::Count
            ]
        );
        assert_eq!(
            rollup.per_record,
            "SELECT _event_time, user AS users, ip AS ips, latency_ms AS latency, \
             CASE WHEN (user) IS NULL THEN 0 ELSE 1 END AS n FROM _input"
        );
        let records = [
            json!({"_event_time": "t", "users": "ann", "ips": "1.2.3.4", "latency": 10, "n": 1}),
            json!({"_event_time": "t", "users": "bob", "ips": "1.2.3.4", "latency": 30, "n": 1}),
            json!({"_event_time": "t", "users": "ann", "ips": null, "latency": "slow", "n": 1}),
        ];
        let mut group: Option<Group> = None;
        for record in &records {
            let Value::Object(record) = record else {
                unreachable!()
            };
            let held = group.get_or_insert_with(|| Group::start(record, &rollup.measures));
            held.merge(record, &rollup.measures);
        }
        let group = group.unwrap().into_doc();
        // Stored and merged into again, it is read back.
        let mut again = Group::stored(group.clone());
        let Value::Object(fourth) = json!({"users": "cy", "latency": 20, "n": 1}) else {
            unreachable!()
        };
        again.merge(&fourth, &rollup.measures);
        let again = again.into_doc();
        assert_eq!(again["n"], 4);
        assert_ne!(again["users"], group["users"]);
        assert_eq!(group["_event_time"], "t");
        assert_eq!(group["n"], 3);
        for (name, prefix) in [("users", "hll:"), ("ips", "hll:"), ("latency", "tdigest:")] {
            assert!(
                group[name].as_str().unwrap().starts_with(prefix),
                "{group:?}"
            );
        }
    }

    #[test]
    fn merging_counts_sums_and_keeps_extremes_whatever_the_order() {
        let measures = Rollup::parse(
            "SELECT _event_time, COUNT(*) AS n, SUM(a) AS s, MIN(a) AS lo, MAX(a) AS hi \
             FROM _input GROUP BY 1",
        )
        .unwrap()
        .measures;
        let record = |a: Value| -> Map<String, Value> {
            let Value::Object(map) = json!({"n": 1, "s": a, "lo": a, "hi": a}) else {
                unreachable!()
            };
            map
        };
        let values = [json!(5), json!(-2), json!(7.5), Value::Null, json!(3)];
        let mut forward = Group::stored(Map::new());
        for v in &values {
            forward.merge(&record(v.clone()), &measures);
        }
        let mut backward = Group::stored(Map::new());
        for v in values.iter().rev() {
            backward.merge(&record(v.clone()), &measures);
        }
        let (forward, backward) = (forward.into_doc(), backward.into_doc());
        assert_eq!(forward, backward);
        assert_eq!(
            Value::Object(forward),
            json!({"n": 5, "s": 13.5, "lo": -2, "hi": 7.5})
        );
    }
}
