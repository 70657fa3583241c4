//! Top-k bounds: a scan under a top-k skips the row groups that cannot hold
//! one of its rows.
//!
//! ```text
//!   SortExec(k) ◄ [FilterExec ◄] LocalScanExec
//!        │                            ▲
//!        └── dynamic filter ──────────┘   once k rows are kept:
//!            key < worst kept (or > when descending, later keys break ties)
//! ```
//!
//! The scan visits sealed row groups in the order of the leading sort key's
//! statistics (smallest minimum first, or largest maximum when descending), so
//! the first row groups fill the top-k, and checks each next row group's
//! min/max/NULL counts against the sort's current bound before reading it.
//! "The latest 10 events" then reads one row group per shard, not the shard.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, UInt64Array};
use arrow::datatypes::SchemaRef;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column as ColumnRef, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::physical_expr::{
    snapshot_generation, snapshot_physical_expr,
};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::ExecutionPlan;

use altdb_common::schema::is_reserved_column;

use crate::error::Result;
use crate::materialize::rebind;
use crate::scan::LocalScanExec;
use crate::segment::sealed::ColumnStatistics;
use crate::segment::SealedSegment;

/// Hands the bound of each `SortExec(fetch) ◄ [FilterExec ◄] LocalScanExec` to
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

/// A top-k sort's bound on the rows that can still enter it.
#[derive(Debug)]
pub struct TopKBound {
    /// The sort's dynamic filter (`true` until k rows are kept), bound to `sort_input`.
    filter: Arc<dyn PhysicalExpr>,
    sort_input: SchemaRef,
    /// The leading sort key when it is a column, and whether it is descending.
    leading: Option<(String, bool)>,
    /// The columns the bound reads.
    columns: Vec<String>,
}

impl TopKBound {
    fn of(sort: &SortExec) -> Option<Self> {
        sort.fetch()?;
        let filter = sort.dynamic_expressions_produced().into_iter().next()?;
        let sort_input = sort.input().schema();
        let name = |column: &Column| sort_input.field(column.index()).name().clone();
        let mut columns: Vec<String> = Vec::new();
        for expr in sort.expr().iter() {
            for column in collect_columns(&expr.expr) {
                let name = name(&column);
                if !columns.contains(&name) {
                    columns.push(name);
                }
            }
        }
        let first = sort.expr().first();
        let leading = first
            .expr
            .downcast_ref::<Column>()
            .map(|column| (name(column), first.options.descending));
        Some(Self {
            filter,
            sort_input,
            leading,
            columns,
        })
    }

    /// The statistics the bound needs from `segment`, in `target`'s types; a
    /// column stored with another type than `target`'s has none (its min/max
    /// may not order the same once converted).
    pub fn statistics(&self, segment: &SealedSegment, target: &SchemaRef) -> Result<RowGroupStats> {
        let groups = segment.row_groups()?;
        let rows = UInt64Array::from_iter_values(groups.iter().map(|g| g.len() as u64));
        let mut columns = HashMap::new();
        for name in &self.columns {
            let Ok(field) = target.field_with_name(name) else {
                continue;
            };
            let stats = if segment.meta.fields.fields.contains_key(name) || is_reserved_column(name)
            {
                segment.column_statistics(name)?.filter(|stats| {
                    stats.mins.data_type() == field.data_type()
                        && stats.maxes.data_type() == field.data_type()
                })
            } else {
                // Never seen by this segment: NULL in every row.
                let nulls = new_null_array(field.data_type(), groups.len());
                Some(ColumnStatistics {
                    mins: nulls.clone(),
                    maxes: nulls,
                    null_counts: rows.clone(),
                })
            };
            if let Some(stats) = stats {
                columns.insert(name.clone(), stats);
            }
        }
        Ok(RowGroupStats {
            rows,
            columns: Arc::new(columns),
            group: 0,
        })
    }

    /// The order key of row group `stats.group`: the leading key's minimum
    /// (ascending) or maximum (descending); `None` when unknown.
    pub fn order_key(&self, stats: &RowGroupStats) -> Option<ScalarValue> {
        let (name, descending) = self.leading.as_ref()?;
        let column = stats.columns.get(name)?;
        let values = if *descending {
            &column.maxes
        } else {
            &column.mins
        };
        ScalarValue::try_from_array(values, stats.group)
            .ok()
            .filter(|v| !v.is_null())
    }

    /// Whether the leading key sorts descending.
    pub fn descending(&self) -> bool {
        self.leading.as_ref().is_some_and(|(_, d)| *d)
    }

    /// The bound as it is now, over the scan's `target` schema; `None` while it
    /// admits every row (or cannot be checked against statistics).
    pub fn current(&self, target: &SchemaRef) -> Option<CurrentBound> {
        let generation = snapshot_generation(&self.filter);
        let expr = snapshot_physical_expr(self.filter.clone()).ok()?;
        let expr = rebind(&expr, &self.sort_input, target).ok()?;
        let predicate = PruningPredicateBuilder::new()
            .with_file_schema(target.clone())
            .build(expr)?;
        Some(CurrentBound {
            generation,
            predicate,
        })
    }

    /// Whether the bound changed since `current` was taken.
    pub fn changed_since(&self, current: Option<&CurrentBound>) -> bool {
        current.is_none_or(|c| c.generation != snapshot_generation(&self.filter))
    }
}

/// The bound at one moment.
pub struct CurrentBound {
    generation: u64,
    predicate: Arc<PruningPredicate>,
}

impl CurrentBound {
    /// Whether row group `stats.group` may hold a row within the bound.
    pub fn may_match(&self, stats: &RowGroupStats) -> bool {
        self.predicate
            .prune(stats)
            .map_or(true, |keep| keep.first().copied().unwrap_or(true))
    }
}

/// Statistics of the columns a bound reads, per row group of one segment;
/// as [`PruningStatistics`] they describe row group `group` alone.
#[derive(Debug, Clone)]
pub struct RowGroupStats {
    rows: UInt64Array,
    columns: Arc<HashMap<String, ColumnStatistics>>,
    pub group: usize,
}

impl RowGroupStats {
    /// The same statistics describing row group `group`.
    pub fn of_group(&self, group: usize) -> Self {
        Self {
            group,
            ..self.clone()
        }
    }

    fn one(&self, array: &ArrayRef) -> ArrayRef {
        array.slice(self.group, 1)
    }
}

impl PruningStatistics for RowGroupStats {
    fn min_values(&self, column: &ColumnRef) -> Option<ArrayRef> {
        Some(self.one(&self.columns.get(column.name())?.mins))
    }

    fn max_values(&self, column: &ColumnRef) -> Option<ArrayRef> {
        Some(self.one(&self.columns.get(column.name())?.maxes))
    }

    fn num_containers(&self) -> usize {
        1
    }

    fn null_counts(&self, column: &ColumnRef) -> Option<ArrayRef> {
        let counts: ArrayRef = Arc::new(self.columns.get(column.name())?.null_counts.clone());
        Some(self.one(&counts))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        let rows: ArrayRef = Arc::new(self.rows.clone());
        Some(self.one(&rows))
    }

    fn contained(
        &self,
        _column: &ColumnRef,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<arrow::array::BooleanArray> {
        None
    }
}
