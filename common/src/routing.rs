//! Shard routing and placement of shards on leaves.

use crate::columns::ID_COLUMN;
use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, InListExpr, Literal};
use datafusion::physical_expr::PhysicalExpr;
use xxhash_rust::xxh3::xxh3_64;

/// The shard that owns a document: `hash(_id) % num_shards`.
///
/// xxh3 is stable across versions and platforms, so a document keeps its shard
/// forever; changing the hash would silently duplicate upserted documents.
pub fn shard_for_id(id: &str, num_shards: u32) -> u32 {
    debug_assert!(num_shards > 0);
    (xxh3_64(id.as_bytes()) % u64::from(num_shards)) as u32
}

/// The shards that can hold rows passing `filter`, when it pins `_id` down
/// (`_id = 'a'`, `_id IN (..)`, OR-ed and AND-ed with anything); `None` when
/// every shard may hold some.
pub fn shards_for_filter(filter: &Arc<dyn PhysicalExpr>, num_shards: u32) -> Option<BTreeSet<u32>> {
    let ids = ids_in_filter(filter)?;
    Some(ids.iter().map(|id| shard_for_id(id, num_shards)).collect())
}

/// The `_id`s `filter` restricts rows to, if it does.
fn ids_in_filter(filter: &Arc<dyn PhysicalExpr>) -> Option<Vec<String>> {
    let is_id = |expr: &Arc<dyn PhysicalExpr>| {
        expr.downcast_ref::<Column>()
            .is_some_and(|c| c.name() == ID_COLUMN)
    };
    let text = |expr: &Arc<dyn PhysicalExpr>| match expr.downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        _ => None,
    };
    if let Some(binary) = filter.downcast_ref::<BinaryExpr>() {
        let (left, right) = (binary.left(), binary.right());
        return match binary.op() {
            Operator::And => ids_in_filter(left).or_else(|| ids_in_filter(right)),
            Operator::Or => {
                let mut ids = ids_in_filter(left)?;
                ids.extend(ids_in_filter(right)?);
                Some(ids)
            }
            Operator::Eq if is_id(left) => Some(vec![text(right)?]),
            Operator::Eq if is_id(right) => Some(vec![text(left)?]),
            _ => None,
        };
    }
    let list = filter.downcast_ref::<InListExpr>()?;
    if list.negated() || !is_id(list.expr()) {
        return None;
    }
    list.list().iter().map(text).collect()
}

/// The leaves (indexes into the cluster's leaf list) holding copies of `shard`.
///
/// Shard `s` lives on leaf `s % n` and its further replicas on the following
/// leaves, so shards spread evenly and replicas never share a leaf.
pub fn replicas_for_shard(shard: u32, num_leaves: usize, replication: u32) -> Vec<usize> {
    let copies = (replication as usize).clamp(1, num_leaves.max(1));
    (0..copies)
        .map(|i| (shard as usize + i) % num_leaves)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_stable_and_in_range() {
        assert_eq!(shard_for_id("user-1", 8), shard_for_id("user-1", 8));
        for i in 0..1000 {
            assert!(shard_for_id(&format!("doc{i}"), 7) < 7);
        }
    }

    #[test]
    fn shards_spread_evenly() {
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            counts[shard_for_id(&format!("doc{i}"), 4) as usize] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn id_filters_name_their_shards() {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::physical_expr::expressions::{binary, col, in_list, lit};

        let schema = Schema::new(vec![
            Field::new(ID_COLUMN, DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]);
        let id = || col(ID_COLUMN, &schema).unwrap();
        let n = || col("n", &schema).unwrap();
        let eq = |l, r| binary(l, Operator::Eq, r, &schema).unwrap();
        let shard = |id: &str| shard_for_id(id, 16);
        let shards = |filter| shards_for_filter(&filter, 16);

        assert_eq!(
            shards(eq(id(), lit("a"))),
            Some(BTreeSet::from([shard("a")]))
        );
        assert_eq!(
            shards(eq(lit("a"), id())),
            Some(BTreeSet::from([shard("a")]))
        );
        let listed = in_list(id(), vec![lit("a"), lit("b"), lit("c")], &false, &schema).unwrap();
        let expected: BTreeSet<u32> = ["a", "b", "c"].map(shard).into();
        assert_eq!(shards(listed.clone()), Some(expected.clone()));
        let and = binary(eq(n(), lit(1i64)), Operator::And, listed.clone(), &schema).unwrap();
        assert_eq!(shards(and), Some(expected));
        let or = binary(
            eq(id(), lit("a")),
            Operator::Or,
            eq(id(), lit("d")),
            &schema,
        )
        .unwrap();
        assert_eq!(shards(or), Some(BTreeSet::from([shard("a"), shard("d")])));

        // Anything that does not pin `_id` down may match on every shard.
        let not_in = in_list(id(), vec![lit("a")], &true, &schema).unwrap();
        assert_eq!(shards(not_in), None);
        let or_other = binary(
            eq(id(), lit("a")),
            Operator::Or,
            eq(n(), lit(1i64)),
            &schema,
        )
        .unwrap();
        assert_eq!(shards(or_other), None);
        assert_eq!(shards(eq(n(), lit(1i64))), None);
        let range = binary(id(), Operator::Gt, lit("a"), &schema).unwrap();
        assert_eq!(shards(range), None);
    }

    #[test]
    fn replicas_never_share_a_leaf() {
        assert_eq!(replicas_for_shard(3, 2, 1), vec![1]);
        assert_eq!(replicas_for_shard(3, 3, 2), vec![0, 1]);
        assert_eq!(replicas_for_shard(0, 2, 5), vec![0, 1]);
    }
}
