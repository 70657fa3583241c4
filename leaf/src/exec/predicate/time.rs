//! `_event_time` windows: pruning segments by their time range and finding
//! a window in a sealed segment's page index.

use std::ops::{Bound, RangeInclusive};

use altdb_common::columns::EVENT_TIME_COLUMN;

use super::{IndexPredicate, Scalar, TimeSplit};

impl IndexPredicate {
    /// The `_event_time` window (microseconds, inclusive) every matching row
    /// lies in, and what else must hold (`None`: nothing), when the predicate
    /// is a condition on `_event_time` or an AND with one.
    pub fn split_time(&self) -> Option<TimeSplit> {
        if let Some(window) = self.time_window() {
            return Some((window, None));
        }
        let IndexPredicate::And(children) = self else {
            return None;
        };
        let mut window: Option<RangeInclusive<i64>> = None;
        let mut rest = Vec::new();
        for child in children {
            match (child.time_window(), &window) {
                (Some(w), Some(both)) => {
                    window = Some(*both.start().max(w.start())..=*both.end().min(w.end()));
                }
                (Some(w), None) => window = Some(w),
                (None, _) => rest.push(child.clone()),
            }
        }
        let rest = match rest.len() {
            0 => None,
            1 => rest.pop(),
            _ => Some(IndexPredicate::And(rest)),
        };
        Some((window?, rest))
    }

    /// The window of a condition on `_event_time` alone.
    fn time_window(&self) -> Option<RangeInclusive<i64>> {
        match self {
            IndexPredicate::Eq(column, Scalar::I64(v)) if column == EVENT_TIME_COLUMN => {
                Some(*v..=*v)
            }
            IndexPredicate::In(column, values) if column == EVENT_TIME_COLUMN => {
                let values: Option<Vec<i64>> = values
                    .iter()
                    .map(|v| match v {
                        Scalar::I64(v) => Some(*v),
                        _ => None,
                    })
                    .collect();
                let values = values?;
                Some(*values.iter().min()?..=*values.iter().max()?)
            }
            IndexPredicate::Range {
                column,
                lower,
                upper,
            } if column == EVENT_TIME_COLUMN => {
                let start = match lower {
                    Bound::Included(Scalar::I64(v)) => *v,
                    Bound::Excluded(Scalar::I64(v)) => v.checked_add(1)?,
                    Bound::Unbounded => i64::MIN,
                    _ => return None,
                };
                let end = match upper {
                    Bound::Included(Scalar::I64(v)) => *v,
                    Bound::Excluded(Scalar::I64(v)) => v.checked_sub(1)?,
                    Bound::Unbounded => i64::MAX,
                    _ => return None,
                };
                Some(start..=end)
            }
            _ => None,
        }
    }

    /// Whether rows with `_event_time` in `[min, max]` may match.
    pub fn may_match_time(&self, min: i64, max: i64) -> bool {
        match self {
            // Each value on its own: no segment between two of them can match.
            IndexPredicate::In(column, values) if column == EVENT_TIME_COLUMN => values
                .iter()
                .any(|value| matches!(value, Scalar::I64(v) if (min..=max).contains(v))),
            IndexPredicate::And(children) => children.iter().all(|c| c.may_match_time(min, max)),
            IndexPredicate::Or(children) => children.iter().any(|c| c.may_match_time(min, max)),
            other => other
                .time_window()
                .is_none_or(|window| *window.start() <= max && *window.end() >= min),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_time_bounds_prune() {
        let window = IndexPredicate::Range {
            column: EVENT_TIME_COLUMN.into(),
            lower: Bound::Included(Scalar::I64(100)),
            upper: Bound::Excluded(Scalar::I64(200)),
        };
        assert!(window.may_match_time(150, 400));
        assert!(window.may_match_time(0, 100));
        assert!(!window.may_match_time(200, 300));
        assert!(!window.may_match_time(0, 99));
        let either = IndexPredicate::Or(vec![window.clone(), IndexPredicate::Opaque]);
        assert!(either.may_match_time(500, 600));
    }

    #[test]
    fn event_time_windows_split_off() {
        let time = |lower, upper| IndexPredicate::Range {
            column: EVENT_TIME_COLUMN.into(),
            lower,
            upper,
        };
        let window = time(
            Bound::Included(Scalar::I64(100)),
            Bound::Excluded(Scalar::I64(200)),
        );
        assert_eq!(window.split_time(), Some((100..=199, None)));
        let user = IndexPredicate::Eq("user".into(), Scalar::Str("u1".into()));
        let both = IndexPredicate::And(vec![
            window.clone(),
            user.clone(),
            time(Bound::Excluded(Scalar::I64(150)), Bound::Unbounded),
        ]);
        assert_eq!(both.split_time(), Some((151..=199, Some(user.clone()))));
        let at = IndexPredicate::In(
            EVENT_TIME_COLUMN.into(),
            vec![Scalar::I64(7), Scalar::I64(3)],
        );
        assert_eq!(at.split_time(), Some((3..=7, None)));
        assert_eq!(user.split_time(), None);
        assert_eq!(IndexPredicate::Or(vec![window, user]).split_time(), None);
    }
}
