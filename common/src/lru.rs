//! A map of bounded size that drops its least recently used entry: what the
//! aggregator's kept plans and the leaves' kept fragments are held in.

use std::collections::HashMap;
use std::hash::Hash;

/// At most `capacity` entries weighing at most `max_weight` together; inserting
/// into a full map first drops the entries used least recently (`get` and
/// `insert` are uses).
#[derive(Debug)]
pub struct LruMap<K, V> {
    /// Value, the clock at its last use, its weight.
    entries: HashMap<K, (V, u64, usize)>,
    capacity: usize,
    max_weight: usize,
    weight: usize,
    /// Counts uses; an entry remembers the count at its last use.
    clock: u64,
}

impl<K: Eq + Hash, V> LruMap<K, V> {
    /// A map bounded by its number of entries only (each weighs 1).
    pub fn new(capacity: usize) -> Self {
        Self::with_max_weight(capacity, usize::MAX)
    }

    /// A map bounded by its number of entries and their total weight (e.g. bytes).
    pub fn with_max_weight(capacity: usize, max_weight: usize) -> Self {
        assert!(capacity > 0, "an LruMap holds at least one entry");
        Self {
            entries: HashMap::new(),
            capacity,
            max_weight,
            weight: 0,
            clock: 0,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(key).map(|(value, used, _)| {
            *used = now;
            &*value
        })
    }

    /// Inserts or replaces an entry of weight 1.
    pub fn insert(&mut self, key: K, value: V) {
        self.insert_weighted(key, value, 1);
    }

    /// Inserts or replaces; the entries used least recently make room first (a
    /// linear pass each, as maps are small and full ones rarely insert). An entry
    /// heavier than the whole map may be is not kept; returns whether it was.
    pub fn insert_weighted(&mut self, key: K, value: V, weight: usize) -> bool {
        self.remove(&key);
        if weight > self.max_weight {
            return false;
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= self.capacity || self.weight + weight > self.max_weight)
        {
            if let Some(oldest) = self.entries.values().map(|(_, used, _)| *used).min() {
                let mut freed = 0;
                self.entries.retain(|_, (_, used, weight)| {
                    let keep = *used != oldest;
                    if !keep {
                        freed += *weight;
                    }
                    keep
                });
                self.weight -= freed;
            }
        }
        self.clock += 1;
        self.weight += weight;
        self.entries.insert(key, (value, self.clock, weight));
        true
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(value, _, weight)| {
            self.weight -= weight;
            value
        })
    }

    /// Keeps only the entries whose key passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let mut freed = 0;
        self.entries.retain(|key, (_, _, weight)| {
            let kept = keep(key);
            if !kept {
                freed += *weight;
            }
            kept
        });
        self.weight -= freed;
    }

    /// The total weight of the entries.
    pub fn weight(&self) -> usize {
        self.weight
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// About the memory a kept plan holds, from the size of what it was made of (SQL
/// text, an encoded fragment): a floor for any plan's operators, and a few times
/// its source (the source itself, expressions and literals decoded from it).
pub fn plan_weight(source_bytes: usize) -> usize {
    (16 << 10) + source_bytes.saturating_mul(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_drops_the_entry_used_least_recently() {
        let mut map = LruMap::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        assert_eq!(map.get(&"a"), Some(&1));
        map.insert("c", 3);
        assert_eq!(map.get(&"b"), None);
        assert_eq!(map.get(&"a"), Some(&1));
        assert_eq!(map.get(&"c"), Some(&3));
        // Replacing a key of a full map drops nothing.
        map.insert("c", 4);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&"c"), Some(&4));
        map.insert("d", 5);
        assert_eq!(map.get(&"a"), None);
        map.retain(|key| *key != "d");
        assert_eq!(map.remove(&"c"), Some(4));
        assert!(map.is_empty());
    }

    #[test]
    fn a_heavy_map_drops_entries_until_the_new_one_fits() {
        let mut map = LruMap::with_max_weight(10, 100);
        map.insert_weighted("a", 1, 40);
        map.insert_weighted("b", 2, 40);
        assert_eq!(map.get(&"a"), Some(&1));
        assert!(map.insert_weighted("c", 3, 50));
        assert_eq!(map.get(&"b"), None, "the least recently used made room");
        assert_eq!(map.weight(), 90);
        assert!(!map.insert_weighted("huge", 4, 101), "heavier than the map");
        assert_eq!(map.get(&"huge"), None);
        assert!(map.insert_weighted("c", 5, 10));
        assert_eq!(map.weight(), 50);
        map.retain(|key| *key != "a");
        assert_eq!(map.weight(), 10);
    }
}
