//! Physical plans of earlier statements, run again when the same SQL comes back.
//!
//! Dashboards and services send the same statements over and over, and planning
//! one (parse, analyze, optimize, plan, distribute into fragments) costs about as
//! much as a needle query takes to run. A plan is reused only while nothing it was
//! made from has changed:
//!
//! ```text
//!  key    SQL text, options, parameter values, which dead letters the caller
//!         may read (`_dlq` is planned with a filter for callers who may read
//!         only some)
//!  valid  the catalog's collection specs are the ones it was planned against, and
//!         each collection it reads still has the very fields it was planned with
//!         (the Arc the fields cache holds: fresh fields from the leaves, or a leaf
//!         refusing a fragment, make a new one and the plan is dropped)
//! ```
//!
//! A statement's plan is also kept for its *shape* (its SQL without the values
//! it compares, [`super::shapes`]), so the next statement that differs only in
//! those values runs it with its own.
//!
//! Only deterministic statements are kept: one calling a function that is not
//! immutable (`now()`, `random()`) is planned every time, because the optimizer
//! folds such values into the plan. Each run starts from DataFusion's
//! [`reset_plan_states`], which gives stateful operators (join build sides, top-k
//! heaps, fragment metrics) a fresh state; dynamic filters, which it cannot reset,
//! are off on the aggregator (see `base_state`).

use std::sync::{Arc, Mutex};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::ExecutionPlan;

use altdb_common::collection::CollectionSpec;
use altdb_common::lru::{plan_weight, LruMap};

use super::fields::FieldsCache;
use super::remote::RemoteFragmentExec;
use super::shapes::{Shape, Template};
use crate::access::DlqScope;
use crate::cluster::CollectionFields;

/// Plans kept at most; a full cache drops the plan used least recently (a
/// burst of one-off statements must not grow it without bound) ...
const MAX_PLANS: usize = 512;
/// ... and their estimated bytes at most (a statement may be megabytes of SQL).
const MAX_PLAN_BYTES: usize = 64 << 20;

/// What a statement's plan is looked up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlanKey {
    sql: String,
    /// `sql` is a statement's shape ([`super::shapes`]), not its text.
    shaped: bool,
    use_index: bool,
    dead_letters: String,
    /// The values of its parameters, which the plan holds as literals.
    params: String,
}

impl PlanKey {
    pub fn new(sql: &str, use_index: bool, dead_letters: DlqScope, params: String) -> Self {
        Self {
            sql: sql.to_string(),
            shaped: false,
            use_index,
            dead_letters: dead_letters.fingerprint(),
            params,
        }
    }

    /// The key of the statements of this one's shape.
    pub fn shaped(&self, shape: &Shape) -> Self {
        Self {
            sql: shape.key.clone(),
            shaped: true,
            ..self.clone()
        }
    }
}

/// A kept plan, fresh to run, and the collections it reads.
pub type Kept = (Arc<dyn ExecutionPlan>, Vec<String>);

/// A kept plan, the catalog it was planned against and the fields of each
/// collection it reads.
#[derive(Debug)]
struct CachedPlan {
    plan: Arc<dyn ExecutionPlan>,
    specs: Vec<CollectionSpec>,
    fields: Vec<(String, Arc<CollectionFields>)>,
    /// Where the values of a shape's plan go.
    template: Option<Template>,
}

/// Plans of deterministic statements planned with remembered fields.
#[derive(Debug)]
pub struct PlanCache {
    entries: Mutex<LruMap<PlanKey, CachedPlan>>,
}

impl Default for PlanCache {
    fn default() -> Self {
        Self {
            entries: Mutex::new(LruMap::with_max_weight(MAX_PLANS, MAX_PLAN_BYTES)),
        }
    }
}

impl PlanCache {
    /// A fresh copy of the plan kept for `key`, with the collections it reads, if
    /// the catalog is still `specs` and their fields are still the remembered ones
    /// it was planned with.
    pub fn get(
        &self,
        key: &PlanKey,
        specs: &[CollectionSpec],
        fields: &FieldsCache,
    ) -> Option<Kept> {
        self.get_with(key, specs, fields).map(|(kept, _)| kept)
    }

    /// [`Self::get`] for the shape of a statement: the plan kept for its shape
    /// with the statement's `values` in it.
    pub fn get_shaped(
        &self,
        key: &PlanKey,
        specs: &[CollectionSpec],
        fields: &FieldsCache,
        values: &[String],
    ) -> Option<Kept> {
        let ((plan, collections), template) = self.get_with(key, specs, fields)?;
        let plan = template?.bind(plan, values)?;
        Some((plan, collections))
    }

    fn get_with(
        &self,
        key: &PlanKey,
        specs: &[CollectionSpec],
        fields: &FieldsCache,
    ) -> Option<(Kept, Option<Template>)> {
        let mut entries = self.lock();
        let cached = entries.get(key)?;
        let current = cached.specs == specs
            && cached.fields.iter().all(|(collection, planned)| {
                fields
                    .get(collection)
                    .is_some_and(|now| Arc::ptr_eq(&now, planned))
            });
        let plan = if current {
            reset_plan_states(cached.plan.clone()).ok()
        } else {
            None
        };
        let Some(plan) = plan else {
            entries.remove(key);
            return None;
        };
        let collections = cached.fields.iter().map(|(c, _)| c.clone()).collect();
        Some(((plan, collections), cached.template.clone()))
    }

    /// Keeps `plan` of a statement whose logical plan was `logical`, if it can be
    /// run again: deterministic, and every collection planned with remembered fields.
    pub fn put(
        &self,
        key: PlanKey,
        specs: &[CollectionSpec],
        logical: &LogicalPlan,
        plan: &Arc<dyn ExecutionPlan>,
    ) {
        self.put_with(key, specs, logical, plan, None);
    }

    /// Keeps `plan` for the statements of its shape (`key` from
    /// [`PlanKey::shaped`]) if its values can be put back into it ([`Template`]).
    pub fn put_shaped(
        &self,
        key: PlanKey,
        specs: &[CollectionSpec],
        logical: &LogicalPlan,
        plan: &Arc<dyn ExecutionPlan>,
        shape: &Shape,
    ) {
        if let Some(template) = Template::find(plan, shape) {
            self.put_with(key, specs, logical, plan, Some(template));
        }
    }

    fn put_with(
        &self,
        key: PlanKey,
        specs: &[CollectionSpec],
        logical: &LogicalPlan,
        plan: &Arc<dyn ExecutionPlan>,
        template: Option<Template>,
    ) {
        if !is_deterministic(logical) {
            return;
        }
        let Some(fields) = planned_fields(plan) else {
            return;
        };
        let weight = plan_weight(key.sql.len());
        self.lock().insert_weighted(
            key,
            CachedPlan {
                plan: plan.clone(),
                specs: specs.to_vec(),
                fields,
                template,
            },
            weight,
        );
    }

    /// Drops the plan of `key` (it failed).
    pub fn forget(&self, key: &PlanKey) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruMap<PlanKey, CachedPlan>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether every function the statement calls gives the same result for the same
/// arguments whenever it runs.
pub fn is_deterministic(plan: &LogicalPlan) -> bool {
    let mut deterministic = true;
    let walked: DfResult<TreeNodeRecursion> = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let varies = match e {
                    Expr::ScalarFunction(f) => {
                        f.func.signature().volatility != Volatility::Immutable
                    }
                    Expr::ScalarVariable(..) | Expr::Placeholder(_) => true,
                    _ => false,
                };
                if varies {
                    deterministic = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    walked.is_ok() && deterministic
}

/// The fields each collection of `plan` was planned with; `None` if one was
/// planned with fields just fetched (not remembered, so not checked by leaves).
fn planned_fields(plan: &Arc<dyn ExecutionPlan>) -> Option<Vec<(String, Arc<CollectionFields>)>> {
    let mut fields = Vec::new();
    let mut remembered = true;
    let _ = plan.apply(|node| {
        if let Some(remote) = node.downcast_ref::<RemoteFragmentExec>() {
            match &remote.target.remembered {
                Some(planned) => {
                    fields.push((remote.target.collection.name.clone(), planned.clone()))
                }
                None => {
                    remembered = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    remembered.then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn logical(sql: &str) -> LogicalPlan {
        let context = SessionContext::new();
        context
            .sql("CREATE TABLE t (a BIGINT, b VARCHAR) AS VALUES (1, 'x')")
            .await
            .unwrap();
        context.sql(sql).await.unwrap().logical_plan().clone()
    }

    #[tokio::test]
    async fn statements_calling_varying_functions_are_not_deterministic() {
        for sql in [
            "SELECT a + 1, upper(b) FROM t WHERE a IN (1, 2) ORDER BY a LIMIT 3",
            "SELECT COUNT(*) FROM t WHERE b LIKE 'x%' AND a > (SELECT MIN(a) FROM t)",
        ] {
            assert!(is_deterministic(&logical(sql).await), "{sql}");
        }
        for sql in [
            "SELECT a FROM t WHERE to_timestamp(a) > now() - INTERVAL '1 hour'",
            "SELECT current_date",
            "SELECT random() FROM t",
            "SELECT a FROM t WHERE a IN (SELECT a FROM t WHERE random() < 0.5)",
        ] {
            assert!(!is_deterministic(&logical(sql).await), "{sql}");
        }
    }
}
