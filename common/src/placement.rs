//! Where the copies of each shard live in a cluster with a shared metastore,
//! and how the placement controller changes that.
//!
//! Each collection has one [`Placement`] under `placements/<collection>`: per
//! shard, its copies (a leaf id and whether the copy is [`CopyState::Ready`] —
//! complete, serving reads and writes — or [`CopyState::Joining`] — taking
//! writes while it copies the shard from a ready copy). Every change of a
//! shard's copies gives the shard and the placement a larger *epoch*.
//!
//! Writers (tailers) send each put to every copy with the placement epoch they
//! know; a leaf refuses a put whose epoch is older than the last change of that
//! shard's copies ("not owner": the writer refreshes and retries), so once a
//! leaf knows a copy is joining, every write it accepts also goes to the
//! joining copy. Readers (aggregators) ask ready copies only.
//!
//! A move is three placement writes, each a transaction guarded by the
//! placement's revision: the controller adds a joining copy
//! ([`plan_step`]); the joining leaf copies the shard and marks its copy ready
//! ([`Placement::mark_ready`]); the controller removes the surplus copy, whose
//! leaf drops the data after a grace period. Each state is in the metastore, so
//! a controller that dies mid-move leaves nothing the next one cannot finish.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// Where placements live, by collection name.
pub const PLACEMENTS: &str = "placements/";
/// Leaves being drained, by leaf id (their copies move away).
pub const DRAINS: &str = "drains/";
/// The elected placement controller (a leased key).
pub const CONTROLLER: &str = "controller";

/// The copies of every shard of one collection incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub incarnation: u64,
    /// Grows with every change of any shard's copies.
    pub epoch: u64,
    pub shards: Vec<ShardPlacement>,
}

/// The copies of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// The placement epoch of the last change of these copies: a writer must
    /// know at least this one.
    pub epoch: u64,
    pub copies: Vec<ShardCopy>,
}

/// One copy of a shard on one leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCopy {
    pub leaf: String,
    pub state: CopyState,
    /// A joining copy that is copying now: the shard epoch its copy began at
    /// ([`Placement::begin_sync`]). A write this copy missed since resets it
    /// ([`Placement::mark_behind`]), so the copy cannot turn ready without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syncing: Option<u64>,
    /// When (Unix milliseconds) this copy first missed an acknowledged write
    /// since it was last ready: how long it has been behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind_since_ms: Option<u64>,
}

impl ShardCopy {
    pub fn new(leaf: String, state: CopyState) -> Self {
        Self {
            leaf,
            state,
            syncing: None,
            behind_since_ms: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Complete: serves reads, takes writes.
    Ready,
    /// Takes writes while it copies the rest from a ready copy; no reads.
    Joining,
}

impl Placement {
    /// The first placement of a new collection: each shard where [`assign`]
    /// puts it.
    pub fn initial(
        collection: &str,
        incarnation: u64,
        num_shards: u32,
        replication: u32,
        leaves: &[String],
    ) -> Self {
        Self {
            incarnation,
            epoch: 1,
            shards: assign(collection, num_shards, replication, leaves)
                .into_iter()
                .map(|belongs| ShardPlacement {
                    epoch: 1,
                    copies: belongs
                        .into_iter()
                        .map(|leaf| ShardCopy::new(leaf, CopyState::Ready))
                        .collect(),
                })
                .collect(),
        }
    }

    /// The leaves whose copies of `shard` serve reads.
    pub fn readers(&self, shard: u32) -> Vec<&str> {
        self.copies(shard)
            .filter(|c| c.state == CopyState::Ready)
            .map(|c| c.leaf.as_str())
            .collect()
    }

    /// The leaves whose copies of `shard` take writes (ready and joining).
    pub fn writers(&self, shard: u32) -> Vec<&str> {
        self.copies(shard).map(|c| c.leaf.as_str()).collect()
    }

    fn copies(&self, shard: u32) -> impl Iterator<Item = &ShardCopy> {
        self.shards
            .get(shard as usize)
            .into_iter()
            .flat_map(|s| s.copies.iter())
    }

    /// The state of `leaf`'s copy of `shard`, if it has one.
    pub fn copy_on(&self, shard: u32, leaf: &str) -> Option<CopyState> {
        self.copies(shard).find(|c| c.leaf == leaf).map(|c| c.state)
    }

    /// The shards with a copy on `leaf`, and its state.
    pub fn shards_on(&self, leaf: &str) -> BTreeMap<u32, CopyState> {
        (0..self.shards.len() as u32)
            .filter_map(|shard| Some((shard, self.copy_on(shard, leaf)?)))
            .collect()
    }

    /// Every leaf holding a copy of some shard.
    pub fn leaves(&self) -> BTreeSet<&str> {
        self.shards
            .iter()
            .flat_map(|s| s.copies.iter().map(|c| c.leaf.as_str()))
            .collect()
    }

    /// The copy of `shard` on `leaf`, to change: the shard's epoch and the
    /// placement's grow when `change` says it changed the copy.
    fn change_copy(
        &mut self,
        shard: u32,
        leaf: &str,
        change: impl FnOnce(&mut ShardCopy, u64) -> bool,
    ) -> bool {
        let epoch = self.epoch + 1;
        let Some(placement) = self.shards.get_mut(shard as usize) else {
            return false;
        };
        let Some(copy) = placement.copies.iter_mut().find(|c| c.leaf == leaf) else {
            return false;
        };
        if !change(copy, epoch) {
            return false;
        }
        placement.epoch = epoch;
        self.epoch = epoch;
        true
    }

    /// `leaf`'s joining copy of `shard` begins copying: the epoch it is
    /// copying at (also the shard's new epoch, so every write accepted from
    /// now on was made knowing it), or `None` if the copy is not joining.
    pub fn begin_sync(&mut self, shard: u32, leaf: &str) -> Option<u64> {
        let mut began = None;
        self.change_copy(shard, leaf, |copy, epoch| {
            if copy.state != CopyState::Joining {
                return false;
            }
            copy.syncing = Some(epoch);
            began = Some(epoch);
            true
        });
        began
    }

    /// Marks `leaf`'s joining copy of `shard` ready if it is still copying
    /// since `since` (no write it missed was acknowledged meanwhile); false
    /// otherwise.
    pub fn mark_ready(&mut self, shard: u32, leaf: &str, since: u64) -> bool {
        self.change_copy(shard, leaf, |copy, _| {
            if copy.state != CopyState::Joining || copy.syncing != Some(since) {
                return false;
            }
            copy.state = CopyState::Ready;
            copy.syncing = None;
            copy.behind_since_ms = None;
            true
        })
    }

    /// A write was acknowledged without `leaf`'s copy of `shard`: the copy
    /// serves no reads until it has copied what it missed from a ready copy
    /// (a copy in progress starts over); `now_ms`: the time (Unix ms). False
    /// if there was nothing to change (no such copy, or joining and not
    /// copying: it will copy the write).
    pub fn mark_behind(&mut self, shard: u32, leaf: &str, now_ms: u64) -> bool {
        self.change_copy(shard, leaf, |copy, _| {
            if copy.state == CopyState::Joining && copy.syncing.is_none() {
                return false;
            }
            copy.state = CopyState::Joining;
            copy.syncing = None;
            copy.behind_since_ms.get_or_insert(now_ms);
            true
        })
    }

    /// Copies that missed acknowledged writes and have not caught up yet:
    /// `(shard, leaf, behind since, Unix ms)`.
    pub fn behind(&self) -> Vec<(u32, &str, u64)> {
        self.shards
            .iter()
            .enumerate()
            .flat_map(|(shard, s)| {
                s.copies
                    .iter()
                    .filter_map(move |c| Some((shard as u32, c.leaf.as_str(), c.behind_since_ms?)))
            })
            .collect()
    }
}

/// Where each shard of `collection` belongs: its `replication` leaves that
/// rank highest for it ([`rendezvous`]), then evened out — while one leaf holds
/// two copies more than another, the most loaded leaf hands the least loaded
/// one the copy that leaf ranks highest for. The ranking keeps moves few (a
/// joining leaf takes about 1/N of the copies); the evening keeps leaves level
/// where hashing a few shards would not.
pub fn assign(
    collection: &str,
    num_shards: u32,
    replication: u32,
    leaves: &[String],
) -> Vec<Vec<String>> {
    let copies = (replication.max(1) as usize).min(leaves.len());
    let mut chosen: Vec<Vec<String>> = (0..num_shards)
        .map(|shard| rendezvous(collection, shard, leaves, copies))
        .collect();
    loop {
        let mut load: BTreeMap<&String, usize> = leaves.iter().map(|l| (l, 0)).collect();
        for leaf in chosen.iter().flatten() {
            *load.entry(leaf).or_default() += 1;
        }
        let (Some((&most, &high)), Some((&least, &low))) = (
            load.iter()
                .max_by_key(|(l, n)| (**n, std::cmp::Reverse(*l))),
            load.iter().min_by_key(|(l, n)| (**n, *l)),
        ) else {
            return chosen;
        };
        if high <= low + 1 {
            return chosen;
        }
        let (most, least) = (most.clone(), least.clone());
        let handed = (0..chosen.len())
            .filter(|&s| chosen[s].contains(&most) && !chosen[s].contains(&least))
            .max_by_key(|&s| weight(collection, s as u32, &least));
        let Some(shard) = handed else {
            return chosen;
        };
        for leaf in &mut chosen[shard] {
            if *leaf == most {
                *leaf = least.clone();
            }
        }
    }
}

fn weight(collection: &str, shard: u32, leaf: &str) -> u64 {
    xxh3_64(format!("{collection}\0{shard}\0{leaf}").as_bytes())
}

/// Every leaf ranked for `shard` of `collection` (highest random weight
/// first), the first `n` of them.
pub fn rendezvous(collection: &str, shard: u32, leaves: &[String], n: usize) -> Vec<String> {
    let mut ranked: Vec<(u64, &String)> = leaves
        .iter()
        .map(|leaf| (weight(collection, shard, leaf), leaf))
        .collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked
        .into_iter()
        .take(n)
        .map(|(_, leaf)| leaf.clone())
        .collect()
}

/// What the controller knows of the leaves when it plans.
#[derive(Debug, Default)]
pub struct LeafView {
    /// Registered now.
    pub live: BTreeSet<String>,
    /// Registered lately (within the replacement delay), live ones included: a
    /// leaf restarting keeps its shards.
    pub known: BTreeSet<String>,
    /// Being drained: their copies move away and they get no new ones.
    pub draining: BTreeSet<String>,
}

impl LeafView {
    /// Leaves that may hold copies.
    fn eligible(&self) -> Vec<String> {
        self.known.difference(&self.draining).cloned().collect()
    }
}

/// The next placement of `collection` towards where its shards belong, or
/// `None` when nothing is to change now. Per shard, one change at a time:
///
/// 1. a joining copy on a leaf that is gone for good (not known) or draining
///    is removed — one whose leaf is down for now (a copy that missed writes
///    while it was) waits for it, as a ready copy would;
/// 2. while a copy joins, nothing else changes;
/// 3. a leaf where the shard belongs ([`assign`] over the eligible leaves)
///    that is live and lacks a copy gets a joining
///    one, if a ready copy is live to copy from and `joins` allows;
/// 4. with more ready copies than `replication`, one that does not belong
///    (gone first, then draining) is removed.
pub fn plan_step(
    collection: &str,
    placement: &Placement,
    replication: u32,
    view: &LeafView,
    joins: &mut usize,
) -> Option<Placement> {
    let eligible = view.eligible();
    let wanted = replication.max(1) as usize;
    let assigned = assign(
        collection,
        placement.shards.len() as u32,
        replication,
        &eligible,
    );
    let epoch = placement.epoch + 1;
    let mut next = placement.clone();
    let mut changed = false;
    for (shard, copies) in next.shards.iter_mut().enumerate() {
        let before = copies.copies.clone();
        copies.copies.retain(|c| {
            c.state == CopyState::Ready
                || (view.known.contains(&c.leaf) && !view.draining.contains(&c.leaf))
        });
        let joining = copies.copies.iter().any(|c| c.state == CopyState::Joining);
        let belongs = &assigned[shard];
        let has_source = copies
            .copies
            .iter()
            .any(|c| c.state == CopyState::Ready && view.live.contains(&c.leaf));
        if !joining {
            let target = belongs.iter().find(|leaf| {
                view.live.contains(*leaf) && !copies.copies.iter().any(|c| &c.leaf == *leaf)
            });
            if let (Some(target), true, true) = (target, has_source, *joins > 0) {
                *joins -= 1;
                copies
                    .copies
                    .push(ShardCopy::new(target.clone(), CopyState::Joining));
            } else {
                let ready = copies
                    .copies
                    .iter()
                    .filter(|c| c.state == CopyState::Ready)
                    .count();
                let surplus = copies
                    .copies
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !belongs.contains(&c.leaf))
                    .min_by_key(|(_, c)| {
                        (
                            view.live.contains(&c.leaf),
                            !view.draining.contains(&c.leaf),
                        )
                    })
                    .map(|(i, _)| i);
                if let (true, Some(index)) = (ready > wanted, surplus) {
                    copies.copies.remove(index);
                }
            }
        }
        if copies.copies != before {
            copies.epoch = epoch;
            changed = true;
        }
    }
    changed.then(|| {
        next.epoch = epoch;
        next
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("leaf-{i}")).collect()
    }

    fn view(live: &[String], draining: &[&str]) -> LeafView {
        LeafView {
            live: live.iter().cloned().collect(),
            known: live.iter().cloned().collect(),
            draining: draining.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Marks every joining copy ready, as the joining leaves would.
    fn all_ready(placement: &mut Placement) {
        for shard in 0..placement.shards.len() as u32 {
            let joining: Vec<String> = placement
                .writers(shard)
                .into_iter()
                .map(str::to_string)
                .collect();
            for leaf in joining {
                if let Some(since) = placement.begin_sync(shard, &leaf) {
                    assert!(placement.mark_ready(shard, &leaf, since));
                }
            }
        }
    }

    /// Runs the controller and marks every joining copy ready, until stable.
    fn settle(placement: &mut Placement, replication: u32, view: &LeafView) -> usize {
        let mut steps = 0;
        loop {
            let mut joins = 4;
            let Some(next) = plan_step("c", placement, replication, view, &mut joins) else {
                return steps;
            };
            *placement = next;
            steps += 1;
            all_ready(placement);
            assert!(steps < 100, "the controller does not settle");
        }
    }

    #[test]
    fn assignment_is_even_and_moves_about_one_nth_when_a_leaf_joins() {
        for shards in [8, 16, 1000] {
            let (three, four) = (
                assign("c", shards, 2, &leaves(3)),
                assign("c", shards, 2, &leaves(4)),
            );
            let mut load: BTreeMap<&str, u32> = BTreeMap::new();
            for copies in &four {
                assert_eq!(copies.len(), 2);
                assert_ne!(copies[0], copies[1]);
                for leaf in copies {
                    *load.entry(leaf).or_default() += 1;
                }
            }
            let (least, most) = (load.values().min().unwrap(), load.values().max().unwrap());
            assert!(most - least <= 1, "{shards} shards: {load:?}");
            // Copies that change hands: a quarter would be ideal.
            let moved: usize = three
                .iter()
                .zip(&four)
                .map(|(a, b)| b.iter().filter(|leaf| !a.contains(leaf)).count())
                .sum();
            let ideal = shards as usize * 2 / 4;
            assert!(
                moved <= ideal * 3 / 2 + 1,
                "{shards} shards: {moved} copies moved, ideal {ideal}"
            );
        }
    }

    #[test]
    fn a_new_leaf_gets_its_share_through_joining_copies() {
        let mut placement = Placement::initial("c", 7, 16, 2, &leaves(3));
        assert_eq!(
            plan_step("c", &placement, 2, &view(&leaves(3), &[]), &mut 4),
            None
        );
        let four = view(&leaves(4), &[]);
        let mut joins = 100;
        let next = plan_step("c", &placement, 2, &four, &mut joins).unwrap();
        // Copies join; nothing is removed yet.
        for shard in 0..16 {
            let joining = next.shards[shard as usize]
                .copies
                .iter()
                .any(|c| c.state == CopyState::Joining);
            assert_eq!(next.readers(shard), placement.readers(shard));
            if joining {
                assert_eq!(next.shards[shard as usize].epoch, next.epoch);
            }
        }
        settle(&mut placement, 2, &four);
        let on_new = placement.shards_on("leaf-4").len();
        assert!(
            (4..=12).contains(&on_new),
            "{on_new} of 32 copies on the new leaf"
        );
        for shard in 0..16 {
            assert_eq!(placement.readers(shard).len(), 2);
            assert_eq!(placement.writers(shard).len(), 2);
        }
    }

    #[test]
    fn a_drained_leaf_ends_with_no_copies_and_readers_never_drop() {
        let mut placement = Placement::initial("c", 1, 8, 2, &leaves(3));
        let draining = view(&leaves(3), &["leaf-2"]);
        let mut steps = 0;
        while let Some(next) = plan_step("c", &placement, 2, &draining, &mut 8) {
            placement = next;
            for shard in 0..8 {
                assert!(placement.readers(shard).len() >= 2, "a shard lost a copy");
            }
            all_ready(&mut placement);
            steps += 1;
            assert!(steps < 50);
        }
        assert!(placement.shards_on("leaf-2").is_empty());
    }

    #[test]
    fn a_gone_leaf_is_replaced_from_the_surviving_copy_only_once_it_is_forgotten() {
        let mut placement = Placement::initial("c", 1, 8, 2, &leaves(3));
        let mut gone = view(&leaves(3), &[]);
        gone.live.remove("leaf-3");
        // Still known: its copies wait for it.
        assert_eq!(plan_step("c", &placement, 2, &gone, &mut 8), None);
        gone.known.remove("leaf-3");
        settle(&mut placement, 2, &gone);
        assert!(placement.shards_on("leaf-3").is_empty());
        for shard in 0..8 {
            assert_eq!(placement.readers(shard).len(), 2);
        }
        // One copy and its leaf gone for good: nothing to copy from, it waits.
        let mut single = Placement::initial("c", 1, 8, 1, &leaves(2));
        let mut lost = view(&leaves(2), &[]);
        lost.live.remove("leaf-1");
        lost.known.remove("leaf-1");
        settle(&mut single, 1, &lost);
        assert!(single.shards.iter().all(|s| s.copies.len() == 1));
    }

    #[test]
    fn a_copy_that_missed_a_write_serves_again_only_after_a_copy_that_missed_none() {
        let mut placement = Placement::initial("c", 1, 2, 3, &leaves(3));
        let epoch = placement.shards[0].epoch;
        // A write acknowledged without leaf-3: it reads no more.
        assert!(placement.mark_behind(0, "leaf-3", 1000));
        assert!(placement.shards[0].epoch > epoch);
        let mut readers = placement.readers(0);
        readers.sort();
        assert_eq!(readers, vec!["leaf-1", "leaf-2"]);
        assert_eq!(placement.writers(0).len(), 3);
        // Down, it misses more writes: nothing more to record.
        assert!(!placement.mark_behind(0, "leaf-3", 1000));
        // It copies; a write it misses meanwhile makes it start over.
        let first = placement.begin_sync(0, "leaf-3").unwrap();
        assert_eq!(placement.shards[0].epoch, first);
        assert!(placement.mark_behind(0, "leaf-3", 1000));
        assert!(!placement.mark_ready(0, "leaf-3", first));
        let second = placement.begin_sync(0, "leaf-3").unwrap();
        assert!(second > first);
        assert_eq!(placement.behind(), vec![(0, "leaf-3", 1000)]);
        assert!(placement.mark_ready(0, "leaf-3", second));
        assert!(placement.behind().is_empty());
        assert_eq!(placement.readers(0).len(), 3);
        // A ready copy does not begin a copy; the other shard never changed.
        assert_eq!(placement.begin_sync(0, "leaf-3"), None);
        assert_eq!(placement.shards[1].epoch, epoch);
        // Down for now, its joining copy waits for it; gone for good, it goes.
        assert!(placement.mark_behind(0, "leaf-3", 1000));
        let mut down = view(&leaves(3), &[]);
        down.live.remove("leaf-3");
        assert_eq!(plan_step("c", &placement, 3, &down, &mut 4), None);
        down.known.remove("leaf-3");
        let next = plan_step("c", &placement, 3, &down, &mut 4).unwrap();
        assert!(next.shards_on("leaf-3").keys().all(|&shard| shard == 1));
    }

    #[test]
    fn a_joining_copy_on_a_lost_leaf_is_abandoned() {
        let placement = Placement::initial("c", 1, 4, 1, &leaves(1));
        let two = view(&leaves(2), &[]);
        let next = plan_step("c", &placement, 1, &two, &mut 8).unwrap();
        assert!(next
            .shards_on("leaf-2")
            .values()
            .all(|s| *s == CopyState::Joining));
        let one = view(&leaves(1), &[]);
        let back = plan_step("c", &next, 1, &one, &mut 8).unwrap();
        assert!(back.shards_on("leaf-2").is_empty());
        assert!(back.epoch > next.epoch);
    }
}
