//! Plans kept across literals: a dashboard asks `WHERE "WatchID" = 123`, then
//! `= 124`, and planning each from scratch costs more than running it.
//!
//! A statement's *shape* is its SQL with the literals that are compared in it
//! (`<column> = 123`, `> 'abc'`: a number or a string right after a comparison
//! operator) taken out; statements of one shape differ only in those values.
//! The first of a shape is planned as usual; if each of its compared values
//! shows up exactly once in the physical plan, as a literal in a filter (on
//! the aggregator or in a leaf fragment), the plan is kept as a [`Template`]
//! of the shape. The next statement of that shape takes the kept plan with its
//! values put where the first one's were, cast to the types the planner gave
//! them, and each fragment rebuilt (so a `_id` filter is routed to its new
//! shards). Anything else — a value folded into another by the optimizer, a
//! value the planner turned into another type (a timestamp), one used twice,
//! one that does not cast (`'abc'` where a number was) — is planned from
//! scratch, as before.
//!
//! What the other literals of a statement (`LIMIT 10`, `date_trunc('hour',
//! ..)`, `IN (..)` lists) hold stays in its shape: they often decide the plan.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::remote::RemoteFragmentExec;

/// Compared values a shape takes out at most (more: the statement is its own
/// shape, planned every time it changes).
const MAX_VALUES: usize = 32;

/// A statement taken apart into its shape and its compared values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The SQL with each compared value replaced by `?n` (a number) or `?s`
    /// (a string).
    pub key: String,
    /// The values, in order, as written (a string without its quotes).
    pub values: Vec<String>,
}

impl Shape {
    /// The shape of `sql`, if it compares values (else it has none to reuse).
    pub fn of(sql: &str) -> Option<Self> {
        let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize().ok()?;
        let mut key = String::with_capacity(sql.len());
        let mut values = Vec::new();
        let mut previous: Option<&Token> = None;
        for token in &tokens {
            let compared = previous.is_some_and(is_comparison);
            match token {
                Token::Number(text, false) if compared && values.len() < MAX_VALUES => {
                    key.push_str("?n");
                    values.push(text.clone());
                }
                Token::SingleQuotedString(text) if compared && values.len() < MAX_VALUES => {
                    key.push_str("?s");
                    values.push(text.clone());
                }
                other => key.push_str(&other.to_string()),
            }
            if !matches!(token, Token::Whitespace(_)) {
                previous = Some(token);
            }
        }
        (!values.is_empty()).then_some(Self { key, values })
    }
}

fn is_comparison(token: &Token) -> bool {
    matches!(
        token,
        Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
    )
}

/// A kept plan of a shape: where the planned statement's values went.
#[derive(Debug, Clone)]
pub struct Template {
    /// The values the plan was made with, as [`Literal::value`]s show them.
    planned: Vec<String>,
    /// The type the planner gave each value.
    types: Vec<DataType>,
}

impl Template {
    /// The template of `plan`, planned from a statement with `values`: each
    /// must be found exactly once, as a literal of a filter's predicate, and
    /// no two may be equal.
    pub fn find(plan: &Arc<dyn ExecutionPlan>, values: &[String]) -> Option<Self> {
        let mut sorted: Vec<&String> = values.iter().collect();
        sorted.sort_unstable();
        if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
            return None;
        }
        let mut found: Vec<Vec<(DataType, bool)>> = vec![Vec::new(); values.len()];
        visit_literals(plan, &mut |literal, in_filter| {
            if let Some(text) = canonical(literal.value()) {
                if let Some(slot) = values.iter().position(|v| *v == text) {
                    found[slot].push((literal.value().data_type(), in_filter));
                }
            }
        });
        let mut types = Vec::with_capacity(values.len());
        for places in found {
            match places.as_slice() {
                [(data_type, true)] => types.push(data_type.clone()),
                _ => return None,
            }
        }
        Some(Self {
            planned: values.to_vec(),
            types,
        })
    }

    /// The kept plan with `values` where the planned ones were; `None` if one
    /// does not cast to the type its place has (plan the statement instead).
    pub fn bind(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        values: &[String],
    ) -> Option<Arc<dyn ExecutionPlan>> {
        if values.len() != self.planned.len() {
            return None;
        }
        let mut replacements = Vec::with_capacity(values.len());
        for (value, data_type) in values.iter().zip(&self.types) {
            let scalar = ScalarValue::try_from_string(value.clone(), data_type).ok()?;
            // A cast that changes the value (a fraction to an integer) would
            // run another statement than the one asked.
            if canonical(&scalar).as_deref() != Some(value.as_str()) {
                return None;
            }
            replacements.push(scalar);
        }
        bind_plan(plan, &self.planned, &replacements).ok()
    }
}

/// How a literal's value reads in SQL, for integers and strings (other types
/// are not matched: their text is not what the statement wrote).
fn canonical(value: &ScalarValue) -> Option<String> {
    if value.is_null() {
        return None;
    }
    match value.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => Some(value.to_string()),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
            value.try_as_str().flatten().map(str::to_string)
        }
        _ => None,
    }
}

/// Calls `f` with every literal of every operator's expressions, fragments'
/// included, and whether that operator is a filter.
fn visit_literals(plan: &Arc<dyn ExecutionPlan>, f: &mut dyn FnMut(&Literal, bool)) {
    let _ = plan.apply(|node| {
        if let Some(remote) = node.downcast_ref::<RemoteFragmentExec>() {
            visit_literals(&remote.fragment, f);
        }
        let in_filter = node.is::<FilterExec>();
        node.apply_expressions(&mut |expr| {
            expr.apply(|e| {
                if let Some(literal) = e.downcast_ref::<Literal>() {
                    f(literal, in_filter);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(TreeNodeRecursion::Continue)
    });
}

/// `plan` with each filter literal whose value reads as `planned[i]` replaced
/// by `values[i]`, and each fragment rebuilt around its new filters.
fn bind_plan(
    plan: Arc<dyn ExecutionPlan>,
    planned: &[String],
    values: &[ScalarValue],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if let Some(remote) = node.downcast_ref::<RemoteFragmentExec>() {
            let fragment = bind_plan(remote.fragment.clone(), planned, values)?;
            let rebuilt = remote.with_values(fragment)?;
            return Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>));
        }
        let Some(filter) = node.downcast_ref::<FilterExec>() else {
            return Ok(Transformed::no(node));
        };
        let predicate = filter.predicate().clone().transform_up(|e| {
            let replacement = e
                .downcast_ref::<Literal>()
                .and_then(|literal| canonical(literal.value()))
                .and_then(|text| planned.iter().position(|p| *p == text));
            Ok(match replacement {
                Some(slot) => Transformed::yes(
                    Arc::new(Literal::new(values[slot].clone())) as Arc<dyn PhysicalExpr>
                ),
                None => Transformed::no(e),
            })
        })?;
        if !predicate.transformed {
            return Ok(Transformed::no(node));
        }
        let rebuilt = FilterExecBuilder::from(filter)
            .with_predicate(predicate.data)
            .build()?;
        Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn context() -> SessionContext {
        let context = SessionContext::new();
        context
            .sql(
                "CREATE TABLE t (a BIGINT, b VARCHAR, c DOUBLE) AS VALUES \
                 (1, 'x', 0.5), (2, 'y', 1.5), (3, 'x', 2.5), (4, 'z', 3.5)",
            )
            .await
            .unwrap();
        context
    }

    async fn plan(context: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        context
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap()
    }

    async fn run(context: &SessionContext, plan: Arc<dyn ExecutionPlan>) -> String {
        let batches = collect(plan, context.task_ctx()).await.unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    #[tokio::test]
    async fn a_kept_plan_with_new_values_answers_like_a_plan_of_them() {
        let context = context().await;
        let first = "SELECT a, b FROM t WHERE a >= 2 AND b = 'x' ORDER BY a";
        let shape = Shape::of(first).unwrap();
        let kept = plan(&context, first).await;
        let template = Template::find(&kept, &shape.values).unwrap();
        for next in [
            "SELECT a, b FROM t WHERE a >= 1 AND b = 'x' ORDER BY a",
            "SELECT a, b FROM t WHERE a >= 3 AND b = 'y' ORDER BY a",
            "SELECT a, b FROM t WHERE a >= 2 AND b = '2' ORDER BY a",
        ] {
            let values = Shape::of(next).unwrap();
            assert_eq!(values.key, shape.key);
            let bound = template.bind(kept.clone(), &values.values).unwrap();
            assert_eq!(
                run(&context, bound).await,
                run(&context, plan(&context, next).await).await,
                "{next}"
            );
        }
        // A value that is not of its place's type is planned instead.
        assert!(template
            .bind(kept.clone(), &["1.5".to_string(), "x".to_string()])
            .is_none());
        assert!(template
            .bind(kept.clone(), &["007".to_string(), "x".to_string()])
            .is_none());
    }

    #[tokio::test]
    async fn values_the_plan_does_not_hold_once_in_a_filter_make_no_template() {
        let context = context().await;
        for sql in [
            // Both values equal: which is which cannot be told.
            "SELECT a FROM t WHERE a = 2 OR a = 2",
            "SELECT a FROM t WHERE a = 2 AND b <> '2'",
            // Folded by the optimizer into another value.
            "SELECT a FROM t WHERE a = 1 + 2",
            // Turned into another type.
            "SELECT a FROM t WHERE c > 1",
            // Also outside the filter.
            "SELECT a, a = 2 AS two FROM t WHERE a = 2",
        ] {
            let shape = Shape::of(sql).unwrap();
            let kept = plan(&context, sql).await;
            assert!(Template::find(&kept, &shape.values).is_none(), "{sql}");
        }
    }

    #[test]
    fn a_shape_takes_out_compared_values_only() {
        let shape = Shape::of(
            "SELECT \"URL\", 'x' FROM hits WHERE \"WatchID\" = 123 AND b <> 'it''s' AND c>=-5 \
             AND d IN (1, 2) AND e LIKE 'a%' ORDER BY 1 LIMIT 10",
        )
        .unwrap();
        assert_eq!(shape.values, ["123", "it's"]);
        assert_eq!(
            shape.key,
            "SELECT \"URL\", 'x' FROM hits WHERE \"WatchID\" = ?n AND b <> ?s AND c>=-5 \
             AND d IN (1, 2) AND e LIKE 'a%' ORDER BY 1 LIMIT 10"
        );
        // The same shape whatever the values; another with other kinds of values.
        let other = Shape::of(
            "SELECT \"URL\", 'x' FROM hits WHERE \"WatchID\" = 9 AND b <> 'y' AND c>=-5 \
             AND d IN (1, 2) AND e LIKE 'a%' ORDER BY 1 LIMIT 10",
        )
        .unwrap();
        assert_eq!(other.key, shape.key);
        let strings = Shape::of("SELECT 1 FROM t WHERE a = '123'").unwrap();
        assert_ne!(
            strings.key,
            Shape::of("SELECT 1 FROM t WHERE a = 123").unwrap().key
        );
        assert_eq!(Shape::of("SELECT COUNT(*) FROM hits LIMIT 5"), None);
    }
}
