//! Helpers for altdb's own DataFusion plan nodes.

/// The [`ExecutionPlan`](datafusion::physical_plan::ExecutionPlan) methods all
/// altdb nodes share: `name`, `properties` (from a `properties:
/// Arc<PlanProperties>` field) and `apply_expressions` (they have none).
#[doc(hidden)]
#[macro_export]
macro_rules! plan_basics {
    ($name:literal) => {
        fn name(&self) -> &str {
            $name
        }

        fn properties(&self) -> &::std::sync::Arc<::datafusion::physical_plan::PlanProperties> {
            &self.properties
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &::std::sync::Arc<dyn ::datafusion::physical_expr::PhysicalExpr>,
            ) -> ::datafusion::error::Result<
                ::datafusion::common::tree_node::TreeNodeRecursion,
            >,
        ) -> ::datafusion::error::Result<::datafusion::common::tree_node::TreeNodeRecursion> {
            Ok(::datafusion::common::tree_node::TreeNodeRecursion::Continue)
        }
    };
}

/// Implements the [`ExecutionPlan`](datafusion::physical_plan::ExecutionPlan)
/// methods every childless altdb node shares: those of [`plan_basics`],
/// `children` and `with_new_children`. Use inside the `impl ExecutionPlan for ..`
/// block.
#[macro_export]
macro_rules! childless_plan_methods {
    ($name:literal) => {
        $crate::plan_basics!($name);

        fn children(
            &self,
        ) -> Vec<&::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>> {
            vec![]
        }

        fn with_new_children(
            self: ::std::sync::Arc<Self>,
            _children: Vec<::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>>,
        ) -> ::datafusion::error::Result<
            ::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>,
        > {
            Ok(self)
        }
    };
}

/// Implements the [`ExecutionPlan`](datafusion::physical_plan::ExecutionPlan)
/// methods every altdb node over one input shares: those of [`plan_basics`] and
/// `children` (from an `input: Arc<dyn ExecutionPlan>` field).
#[macro_export]
macro_rules! single_input_plan_methods {
    ($name:literal) => {
        $crate::plan_basics!($name);

        fn children(
            &self,
        ) -> Vec<&::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>> {
            vec![&self.input]
        }
    };
}

/// The context to run an already-built physical plan in: `config` (with the
/// run's extensions) and `runtime`, without the function registry, which only
/// planning and decoding look functions up in (copying it costs more than a
/// needle query takes to run).
pub fn execution_context(
    session_id: String,
    config: datafusion::prelude::SessionConfig,
    runtime: std::sync::Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> datafusion::execution::TaskContext {
    use std::collections::HashMap;
    datafusion::execution::TaskContext::new(
        None,
        session_id,
        config,
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        runtime,
    )
}
