//! The rewrites that fit a decoded fragment to the shard it runs on, in the
//! order [`fit_to_shard`] applies them:
//!
//! ```text
//!  1. push_filters_into_scans  the filter right above a scan, translated into an
//!                              IndexPredicate, narrows what the scan reads (the
//!                              filter stays: the scan may return non-matches)
//!  2. materialize_late         SortExec(k) over a wide scan: a narrow top-k on the
//!                              filter and sort columns + FetchByIdExec for the k rows
//!  3. bound_top_k_scans        each scan under a top-k gets its sort's bound and
//!                              skips the row groups it rules out
//!  4. absorb_filters           the filter over an index-using scan moves into the
//!                              scan, which skips it for rows an index chose exactly
//! ```
//!
//! Each takes a plan and returns it rewritten; none needs the leaf, only the
//! shards the scans were decoded against.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result as DfResult;
use datafusion::physical_expr::expressions::{lit, Column};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::ExecutionPlan;

use altdb_common::columns::{ID_COLUMN, SCORE_COLUMN};
use altdb_common::plan::rebind;
use altdb_common::schema::FieldType;

use crate::exec::fetch::FetchByIdExec;
use crate::exec::predicate::IndexPredicate;
use crate::exec::scan::topk::TopKBound;
use crate::exec::scan::LocalScanExec;

/// The leaf's rewrites of a decoded fragment, in their order (see the module).
pub fn fit_to_shard(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    let plan = push_filters_into_scans(plan)?;
    let plan = materialize_late(plan)?;
    let plan = bound_top_k_scans(plan)?;
    absorb_filters(plan)
}

/// Hides the rows a collection's retention expired: every scan's rows with
/// `_event_time` before `min_event_time_us` are dropped right above it (the
/// scan reads `_event_time` for that if the fragment did not). Applied to
/// each run of a fragment, kept or not: the cutoff moves with the clock.
pub fn hide_expired(
    plan: Arc<dyn ExecutionPlan>,
    min_event_time_us: i64,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::BinaryExpr;
    plan.transform_up(|node| {
        let Some(scan) = node.downcast_ref::<LocalScanExec>() else {
            return Ok(Transformed::no(node));
        };
        let columns = scan.schema().fields().len();
        let (scan, at) = scan.with_event_time();
        let scan: Arc<dyn ExecutionPlan> = Arc::new(scan);
        let time_type = scan.schema().field(at).data_type().clone();
        let tz = match &time_type {
            arrow::datatypes::DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        let kept: Arc<dyn datafusion::physical_expr::PhysicalExpr> = Arc::new(BinaryExpr::new(
            Arc::new(Column::new(altdb_common::columns::EVENT_TIME_COLUMN, at)),
            Operator::GtEq,
            lit(ScalarValue::TimestampMicrosecond(
                Some(min_event_time_us),
                tz,
            )),
        ));
        let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(kept, scan)?);
        if filtered.schema().fields().len() == columns {
            return Ok(Transformed::yes(filtered));
        }
        // Back to the columns the plan above reads.
        let schema = filtered.schema();
        let projection: Vec<ProjectionExpr> = (0..columns)
            .map(|i| {
                let name = schema.field(i).name().clone();
                ProjectionExpr::new(Arc::new(Column::new(&name, i)), name)
            })
            .collect();
        Ok(Transformed::yes(Arc::new(ProjectionExec::try_new(
            projection, filtered,
        )?)))
    })
    .map(|t| t.data)
}

/// Rewrites each `FilterExec` right above a `LocalScanExec` with `rewrite`
/// (`None` keeps it).
fn rewrite_filtered_scans(
    plan: Arc<dyn ExecutionPlan>,
    rewrite: impl Fn(&FilterExec, &LocalScanExec) -> DfResult<Option<Arc<dyn ExecutionPlan>>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let rewritten = match node.downcast_ref::<FilterExec>() {
            Some(filter) => match filter.input().downcast_ref::<LocalScanExec>() {
                Some(scan) => rewrite(filter, scan)?,
                None => None,
            },
            None => None,
        };
        Ok(match rewritten {
            Some(plan) => Transformed::yes(plan),
            None => Transformed::no(node),
        })
    })
    .map(|t| t.data)
}

/// Step 1: hands the filter right above each scan to the scan, which uses it to
/// read fewer rows (the filter stays and keeps the answer exact).
fn push_filters_into_scans(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    rewrite_filtered_scans(plan, |filter, scan| {
        if !scan.uses_index() {
            return Ok(None);
        }
        let predicate = IndexPredicate::from_physical(filter.predicate());
        if predicate.is_opaque() {
            return Ok(None);
        }
        let scan: Arc<dyn ExecutionPlan> = Arc::new(scan.with_predicate(predicate));
        let filter = FilterExecBuilder::from(filter).with_input(scan).build()?;
        Ok(Some(Arc::new(filter)))
    })
}

/// Top-k queries up to this k are materialized late.
pub const LATE_MAX_ROWS: usize = 1024;

/// Step 2: rewrites `SortExec(fetch k) ◄ [FilterExec ◄] LocalScanExec` into a narrow
/// top-k plus [`FetchByIdExec`] where that reads fewer columns.
pub fn materialize_late(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| match narrow_top_k(&node)? {
        Some(rewritten) => Ok(Transformed::yes(rewritten)),
        None => Ok(Transformed::no(node)),
    })
    .map(|t| t.data)
}

fn narrow_top_k(node: &Arc<dyn ExecutionPlan>) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let Some(sort) = node.downcast_ref::<SortExec>() else {
        return Ok(None);
    };
    if sort.fetch().is_none_or(|k| k > LATE_MAX_ROWS) {
        return Ok(None);
    }
    let (filter, scan) = match sort.input().downcast_ref::<FilterExec>() {
        Some(filter) => (Some(filter), filter.input()),
        None => (None, sort.input()),
    };
    let Some(scan) = scan.downcast_ref::<LocalScanExec>() else {
        return Ok(None);
    };
    let Some(shard) = scan.shard().cloned() else {
        return Ok(None);
    };
    let columns = &scan.spec().columns;
    if scan.filters()
        || scan.spec().limit.is_some()
        || columns.iter().any(|(name, _)| name == SCORE_COLUMN)
    {
        return Ok(None);
    }
    // Columns the filter and the sort read, by name.
    let mut needed: HashSet<String> = HashSet::new();
    if let Some(filter) = filter {
        needed.extend(
            collect_columns(filter.predicate())
                .into_iter()
                .map(|c| c.name().to_string()),
        );
    }
    let sort_input = sort.input().schema();
    for sort_expr in sort.expr().iter() {
        for column in collect_columns(&sort_expr.expr) {
            needed.insert(sort_input.field(column.index()).name().clone());
        }
    }
    needed.insert(ID_COLUMN.to_string());
    let narrow: Vec<(String, FieldType)> = columns
        .iter()
        .filter(|(name, _)| needed.contains(name))
        .cloned()
        .chain(
            (!columns.iter().any(|(name, _)| name == ID_COLUMN))
                .then(|| (ID_COLUMN.to_string(), FieldType::Utf8)),
        )
        .collect();
    if narrow.len() >= columns.len() {
        return Ok(None);
    }
    let narrow_scan: Arc<dyn ExecutionPlan> = Arc::new(scan.with_columns(narrow));
    let narrow_schema = narrow_scan.schema();
    let mut narrow_plan = narrow_scan;
    if let Some(filter) = filter {
        let predicate = rebind(filter.predicate(), &filter.input().schema(), &narrow_schema)?;
        narrow_plan = Arc::new(FilterExec::try_new(predicate, narrow_plan)?);
    }
    let ordering: Vec<PhysicalSortExpr> = sort
        .expr()
        .iter()
        .map(|e| {
            Ok(PhysicalSortExpr::new(
                rebind(&e.expr, &sort_input, &narrow_schema)?,
                e.options,
            ))
        })
        .collect::<DfResult<_>>()?;
    let Some(ordering) = LexOrdering::new(ordering) else {
        return Ok(None);
    };
    let narrow_sort = SortExec::new(ordering, narrow_plan)
        .with_fetch(sort.fetch())
        .with_preserve_partitioning(sort.preserve_partitioning());
    Ok(Some(Arc::new(FetchByIdExec::new(
        Arc::new(narrow_sort),
        node.clone(),
        shard,
    ))))
}

/// Step 3: hands the bound of each `SortExec(fetch) ◄ [FilterExec ◄] LocalScanExec` to
/// its scan.
pub fn bound_top_k_scans(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(sort) = node.downcast_ref::<SortExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(bound) = TopKBound::of(sort) else {
            return Ok(Transformed::no(node));
        };
        let filter = sort.input().downcast_ref::<FilterExec>();
        let scan_node = filter.map_or(sort.input(), |f| f.input());
        let Some(scan) = scan_node.downcast_ref::<LocalScanExec>() else {
            return Ok(Transformed::no(node));
        };
        if scan.shard().is_none() {
            return Ok(Transformed::no(node));
        }
        let replace = |node: Arc<dyn ExecutionPlan>, child: Arc<dyn ExecutionPlan>| {
            node.replace_children(
                vec![child],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
            )
        };
        let mut input: Arc<dyn ExecutionPlan> = Arc::new(scan.with_top_k(Arc::new(bound)));
        if filter.is_some() {
            input = replace(sort.input().clone(), input)?;
        }
        // The sort keeps its dynamic filter across new children, so the scan sees
        // every bound the sort publishes.
        Ok(Transformed::yes(replace(node.clone(), input)?))
    })
    .map(|t| t.data)
}

/// Step 4: moves the filter right above an index-using scan into the scan, which skips
/// it for rows a segment index selected exactly and applies it to the rest. What
/// stays above is the filter's projection: a filter on `true`, which gathers
/// the scan's batches into full ones, or, over a lookup of a few `_id`s, a plain
/// projection (a full batch's buffers cost more than such a lookup).
fn absorb_filters(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    rewrite_filtered_scans(plan, |filter, scan| {
        if scan.filters() || !scan.has_index_predicate() {
            return Ok(None);
        }
        let key_lookup = scan.is_key_lookup() && filter.fetch().is_none();
        let scan: Arc<dyn ExecutionPlan> = Arc::new(scan.with_filter(filter.predicate().clone()));
        if key_lookup {
            return Ok(Some(match filter.projection() {
                Some(columns) => project(scan, columns)?,
                None => scan,
            }));
        }
        // Same projection, fetch and batch size; the predicate is now the scan's.
        let kept = FilterExecBuilder::from(filter)
            .with_predicate(lit(true))
            .with_input(scan)
            .build()?;
        Ok(Some(Arc::new(kept)))
    })
}

/// `input`'s columns at `indices`, under their names.
fn project(input: Arc<dyn ExecutionPlan>, indices: &[usize]) -> DfResult<Arc<dyn ExecutionPlan>> {
    let schema = input.schema();
    let columns = indices.iter().map(|&index| {
        let name = schema.field(index).name();
        ProjectionExpr::new(Arc::new(Column::new(name, index)), name.clone())
    });
    Ok(Arc::new(ProjectionExec::try_new(columns, input)?))
}
