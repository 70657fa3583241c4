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
//! [`crate::exec::rewrite`] links each scan under a top-k to its sort's bound.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, UInt64Array};
use arrow::datatypes::SchemaRef;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column as ColumnRef, ScalarValue};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::physical_expr::{
    snapshot_generation, snapshot_physical_expr,
};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::ExecutionPlan;

use altdb_common::columns::is_reserved_column;
use altdb_common::plan::rebind;

use crate::error::Result;
use crate::shard::SealedEntry;

use super::access::Selected;
use crate::segment::sealed::ColumnStatistics;
use crate::segment::SealedSegment;

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
    /// The bound of a sort with a fetch (a top-k), if it publishes one.
    pub fn of(sort: &SortExec) -> Option<Self> {
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

/// One row group of a sealed segment, read under a top-k.
pub(super) struct RowGroupPart<'a> {
    pub entry: &'a SealedEntry,
    /// The leading sort key's minimum (or maximum when descending).
    pub order: Option<ScalarValue>,
    /// The segment's rows its index selected (all rows if `None`).
    pub selected: Option<Arc<Selected>>,
    pub group: usize,
    pub rows: std::ops::Range<usize>,
    pub stats: RowGroupStats,
}

/// The row groups of a segment, each with its statistics and its share of
/// the index's selection.
pub(super) fn row_group_parts<'a>(
    bound: &TopKBound,
    entry: &'a SealedEntry,
    selected: Option<Selected>,
    groups: Vec<std::ops::Range<usize>>,
    stats: RowGroupStats,
) -> Vec<RowGroupPart<'a>> {
    let selected = selected.map(Arc::new);
    groups
        .into_iter()
        .enumerate()
        .map(|(group, rows)| {
            let stats = stats.of_group(group);
            RowGroupPart {
                entry,
                order: bound.order_key(&stats),
                selected: selected.clone(),
                group,
                rows,
                stats,
            }
        })
        .collect()
}

/// Puts row groups in the order of the top-k's leading key: the ones most
/// likely to hold its rows first, unknown keys last in either direction.
pub(super) fn best_first(bound: &TopKBound, parts: &mut [RowGroupPart<'_>]) {
    parts.sort_by(|a, b| match (&a.order, &b.order) {
        (Some(x), Some(y)) => {
            let order = x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal);
            if bound.descending() {
                order.reverse()
            } else {
                order
            }
        }
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
}
