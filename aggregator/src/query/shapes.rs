//! Plans kept across literals: a dashboard asks `WHERE "WatchID" = 123`, then
//! `= 124`, and planning each from scratch costs more than running it.
//!
//! A statement's *shape* is its SQL with the literals that are compared in it
//! (`<column> = 123`, `> 'abc'`: a number or a string right after a comparison
//! operator) taken out; statements of one shape differ only in those values.
//! The first of a shape is planned as usual; if each of its compared values
//! shows up exactly once in the physical plan, as a literal in a filter (on
//! the aggregator or in a leaf fragment) whose value is the written value cast
//! to the literal's type (`'2026-12-01'` compared with a timestamp is a
//! timestamp literal), the plan is kept as a [`Template`] of the shape. The
//! next statement of that shape takes the kept plan with its values cast the
//! same way and put where the first one's were, and each fragment rebuilt (so
//! a `_id` filter is routed to its new shards). Anything else — a value folded
//! into another by the optimizer, one used twice, one that does not cast
//! (`'abc'` or `2.5` where an integer was) — is planned from scratch, as
//! before.
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
    /// Whether each value was written as a number (else as a string).
    pub numbers: Vec<bool>,
}

impl Shape {
    /// The shape of `sql`, if it compares values (else it has none to reuse).
    pub fn of(sql: &str) -> Option<Self> {
        let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize().ok()?;
        let mut key = String::with_capacity(sql.len());
        let mut values = Vec::new();
        let mut numbers = Vec::new();
        let mut previous: Option<&Token> = None;
        for token in &tokens {
            let compared = previous.is_some_and(is_comparison);
            match token {
                Token::Number(text, false) if compared && values.len() < MAX_VALUES => {
                    key.push_str("?n");
                    values.push(text.clone());
                    numbers.push(true);
                }
                Token::SingleQuotedString(text) if compared && values.len() < MAX_VALUES => {
                    key.push_str("?s");
                    values.push(text.clone());
                    numbers.push(false);
                }
                other => key.push_str(&other.to_string()),
            }
            if !matches!(token, Token::Whitespace(_)) {
                previous = Some(token);
            }
        }
        (!values.is_empty()).then_some(Self {
            key,
            values,
            numbers,
        })
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
    /// The literals the plan was made with, one per compared value.
    planned: Vec<ScalarValue>,
}

impl Template {
    /// The template of `plan`, planned from a statement of `shape`: each
    /// compared value must be found exactly once, as a literal of a filter's
    /// predicate (the literal whose value is the written value cast to the
    /// literal's type, as the planner cast it), and no two may be equal.
    pub fn find(plan: &Arc<dyn ExecutionPlan>, shape: &Shape) -> Option<Self> {
        let values = &shape.values;
        let mut sorted: Vec<&String> = values.iter().collect();
        sorted.sort_unstable();
        if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
            return None;
        }
        let mut found: Vec<Vec<(ScalarValue, bool)>> = vec![Vec::new(); values.len()];
        visit_literals(plan, &mut |literal, in_filter| {
            let value = literal.value();
            if value.is_null() {
                return;
            }
            for (slot, text) in values.iter().enumerate() {
                if cast(text, &value.data_type()).as_ref() == Some(value) {
                    found[slot].push((value.clone(), in_filter));
                }
            }
        });
        let mut planned = Vec::with_capacity(values.len());
        for (slot, places) in found.into_iter().enumerate() {
            match places.as_slice() {
                // A number the planner made a string (compared with a string
                // column) was parsed as a number first: `05` is `'5'` there,
                // which a cast of the text `05` would not be.
                [(value, true)] if !(shape.numbers[slot] && is_string(&value.data_type())) => {
                    planned.push(value.clone())
                }
                _ => return None,
            }
        }
        Some(Self { planned })
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
        for (text, planned) in values.iter().zip(&self.planned) {
            replacements.push(cast(text, &planned.data_type())?);
        }
        bind_plan(plan, &self.planned, &replacements).ok()
    }
}

/// A written value as the planner makes it a literal of `data_type` (the cast
/// its type coercion inserts, folded). A cast that would lose what was
/// written — a fraction into an integer, an integer out of range, text that
/// is no date — fails: Arrow's cast is checked.
fn cast(text: &str, data_type: &DataType) -> Option<ScalarValue> {
    ScalarValue::try_from_string(text.to_string(), data_type)
        .ok()
        .filter(|value| !value.is_null())
}

fn is_string(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    )
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

/// `plan` with each filter literal whose value is `planned[i]` replaced
/// by `values[i]`, and each fragment rebuilt around its new filters.
fn bind_plan(
    plan: Arc<dyn ExecutionPlan>,
    planned: &[ScalarValue],
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
                .and_then(|literal| planned.iter().position(|p| p == literal.value()));
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
        let template = Template::find(&kept, &shape).unwrap();
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
            .bind(kept.clone(), &["many".to_string(), "x".to_string()])
            .is_none());
    }

    #[tokio::test]
    async fn floats_and_timestamps_written_as_strings_are_kept_too() {
        let context = context().await;
        context
            .sql(
                "CREATE TABLE u (a BIGINT, ts TIMESTAMP) AS VALUES \
                 (1, CAST('2026-12-01T10:00:00' AS TIMESTAMP)), \
                 (2, CAST('2026-12-02T10:00:00' AS TIMESTAMP)), \
                 (3, CAST('2026-12-03T10:00:00' AS TIMESTAMP))",
            )
            .await
            .unwrap();
        for (first, nexts) in [
            (
                "SELECT a FROM t WHERE c > 1 ORDER BY a",
                vec![
                    "SELECT a FROM t WHERE c > 2.5 ORDER BY a",
                    "SELECT a FROM t WHERE c > 0 ORDER BY a",
                ],
            ),
            (
                "SELECT a FROM u WHERE ts >= '2026-12-02' ORDER BY a",
                vec![
                    "SELECT a FROM u WHERE ts >= '2026-12-01T12:00:00' ORDER BY a",
                    "SELECT a FROM u WHERE ts >= '2026-12-04' ORDER BY a",
                ],
            ),
        ] {
            let shape = Shape::of(first).unwrap();
            let kept = plan(&context, first).await;
            let template = Template::find(&kept, &shape).expect(first);
            for next in nexts {
                let values = Shape::of(next).unwrap();
                let bound = template.bind(kept.clone(), &values.values).unwrap();
                assert_eq!(
                    run(&context, bound).await,
                    run(&context, plan(&context, next).await).await,
                    "{next}"
                );
            }
            let nonsense = vec!["not a value".to_string()];
            assert!(template.bind(kept.clone(), &nonsense).is_none(), "{first}");
        }
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
            // Also outside the filter.
            "SELECT a, a = 2 AS two FROM t WHERE a = 2",
        ] {
            let shape = Shape::of(sql).unwrap();
            let kept = plan(&context, sql).await;
            assert!(Template::find(&kept, &shape).is_none(), "{sql}");
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
