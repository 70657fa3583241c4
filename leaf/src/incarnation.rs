//! Incarnations of collections on a leaf: which creation of a name the leaf's
//! data belongs to, which of its shards were placed here, and which were deleted.
//!
//! A collection name can be deleted and created again while sources still push,
//! a leaf is down, or a leaf comes back on an empty volume. Every call names the
//! incarnation it is for (the catalog gives each creation a larger one), and the
//! leaf answers by this table:
//!
//! | call for incarnation `i`, leaf holds `held` | answer |
//! |---|---|
//! | `i` ≤ `dropped_through` (`i` > 0) | refused: the collection was deleted |
//! | `i` < `held` | refused: the collection was created again since |
//! | `i` = `held`, shard placed here | served |
//! | `i` = `held`, shard not placed here, or `i` > `held` | refused as unavailable: the leaf does not hold that shard (never placed here, or its data was lost); readers fail over to another copy |
//! | creation of `i` > `held` | older data dropped, the shards placed here recorded |
//! | `i` = 0 (created before incarnations; system collections) | served as before: any shard, created on first write |
//!
//! Stats and watermarks of another incarnation are empty (a source of a new
//! incarnation starts afresh, never at a deleted one's positions).

use std::collections::BTreeSet;

use altdb_common::collection::MAX_SHARDS;
use serde::{Deserialize, Serialize};

use crate::error::LeafError;

/// What the leaf knows of one collection name (persisted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectionState {
    /// The incarnation the leaf's data of this name belongs to.
    pub held: u64,
    /// Incarnations up to this one were deleted.
    #[serde(default)]
    pub dropped_through: u64,
    /// The shards of `held` placed on this leaf (`None`: any, incarnation 0).
    #[serde(default)]
    pub placed: Option<BTreeSet<u32>>,
}

/// What a creation does to the leaf's data.
#[derive(Debug, PartialEq)]
pub enum Creation {
    /// Drop the data of older incarnations, then record the new state.
    Replace(CollectionState),
    /// The same incarnation again: record the placement (idempotent).
    Update(CollectionState),
}

impl CollectionState {
    /// Whether a call for `incarnation` on `shard` may use the data held.
    pub fn serve(&self, collection: &str, incarnation: u64, shard: u32) -> Result<(), LeafError> {
        if incarnation == 0 && self.held == 0 {
            return Ok(());
        }
        self.current(collection, incarnation)?;
        let placed = incarnation == self.held
            && self
                .placed
                .as_ref()
                .is_none_or(|shards| shards.contains(&shard));
        if placed {
            Ok(())
        } else {
            Err(LeafError::NotHeld(format!(
                "this leaf does not hold shard {shard} of `{collection}` (incarnation \
                 {incarnation}): it was never placed here, or this leaf lost its data \
                 (restarted on an empty volume); check that every process lists the same \
                 leaves in the same order"
            )))
        }
    }

    /// Refuses calls for a deleted or a replaced incarnation.
    pub fn current(&self, collection: &str, incarnation: u64) -> Result<(), LeafError> {
        if incarnation > 0 && incarnation <= self.dropped_through {
            return Err(LeafError::Gone(format!(
                "collection `{collection}` (incarnation {incarnation}) was deleted"
            )));
        }
        if incarnation < self.held {
            return Err(LeafError::Gone(format!(
                "collection `{collection}` was created again since (incarnation {} replaces \
                 {incarnation}); read its spec again",
                self.held
            )));
        }
        Ok(())
    }

    /// Whether data of this leaf answers reads of `incarnation` (else they are empty).
    pub fn holds(&self, incarnation: u64) -> bool {
        incarnation == self.held
    }

    /// A new incarnation (or the same one again) placing `shards` here.
    pub fn create(
        &self,
        collection: &str,
        incarnation: u64,
        shards: &[u32],
    ) -> Result<Creation, LeafError> {
        if incarnation == 0 {
            return Err(LeafError::InvalidRequest(
                "a created collection has an incarnation above 0".into(),
            ));
        }
        if shards.len() > MAX_SHARDS as usize || shards.iter().any(|&s| s >= MAX_SHARDS) {
            return Err(LeafError::InvalidRequest(format!(
                "a collection has at most {MAX_SHARDS} shards, numbered from 0"
            )));
        }
        self.current(collection, incarnation)?;
        let state = CollectionState {
            held: incarnation,
            dropped_through: self.dropped_through,
            placed: Some(shards.iter().copied().collect()),
        };
        Ok(if incarnation > self.held {
            Creation::Replace(state)
        } else {
            Creation::Update(state)
        })
    }

    /// The state after dropping `incarnation`; whether the data held goes with it.
    pub fn dropped(&self, incarnation: u64) -> (CollectionState, bool) {
        let drops_data = incarnation >= self.held;
        let state = CollectionState {
            held: self.held,
            dropped_through: self.dropped_through.max(incarnation),
            placed: if drops_data {
                Some(BTreeSet::new())
            } else {
                self.placed.clone()
            },
        };
        (state, drops_data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_answered_by_incarnation() {
        let legacy = CollectionState::default();
        assert!(legacy.serve("c", 0, 7).is_ok(), "as before incarnations");
        assert!(matches!(
            legacy.serve("c", 5, 0),
            Err(LeafError::NotHeld(_))
        ));

        let Creation::Replace(created) = legacy.create("c", 5, &[0, 2]).unwrap() else {
            panic!("a newer incarnation replaces the data");
        };
        assert!(created.serve("c", 5, 2).is_ok());
        assert!(matches!(
            created.serve("c", 5, 1),
            Err(LeafError::NotHeld(_))
        ));
        assert!(matches!(created.serve("c", 0, 0), Err(LeafError::Gone(_))));
        assert!(matches!(
            created.serve("c", 9, 0),
            Err(LeafError::NotHeld(_))
        ));
        assert!(matches!(
            created.create("c", 5, &[0, 2]),
            Ok(Creation::Update(_))
        ));

        let (deleted, drops_data) = created.dropped(5);
        assert!(drops_data);
        assert!(matches!(deleted.serve("c", 5, 0), Err(LeafError::Gone(_))));
        assert!(matches!(
            deleted.create("c", 5, &[0]),
            Err(LeafError::Gone(_))
        ));
        assert!(matches!(
            deleted.create("c", 6, &[1]),
            Ok(Creation::Replace(_))
        ));

        // A late drop of an older incarnation keeps the newer one's data.
        let Creation::Replace(newer) = created.create("c", 8, &[1]).unwrap() else {
            panic!()
        };
        let (after, drops_data) = newer.dropped(5);
        assert!(!drops_data);
        assert!(after.serve("c", 8, 1).is_ok());
    }
}
