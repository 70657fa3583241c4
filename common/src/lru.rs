//! A map of bounded size that drops its least recently used entry: what the
//! aggregator's kept plans and the leaves' kept fragments are held in.

use std::collections::HashMap;
use std::hash::Hash;

/// At most `capacity` entries; inserting a new key into a full map drops the
/// entry used least recently (`get` and `insert` are uses).
#[derive(Debug)]
pub struct LruMap<K, V> {
    entries: HashMap<K, (V, u64)>,
    capacity: usize,
    /// Counts uses; an entry remembers the count at its last use.
    clock: u64,
}

impl<K: Eq + Hash, V> LruMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "an LruMap holds at least one entry");
        Self {
            entries: HashMap::new(),
            capacity,
            clock: 0,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(key).map(|(value, used)| {
            *used = now;
            &*value
        })
    }

    /// Inserts or replaces; a full map first drops its least recently used
    /// entry (a linear pass, as maps are small and full ones rarely insert).
    pub fn insert(&mut self, key: K, value: V) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            if let Some(oldest) = self.entries.values().map(|(_, used)| *used).min() {
                self.entries.retain(|_, (_, used)| *used != oldest);
            }
        }
        self.clock += 1;
        self.entries.insert(key, (value, self.clock));
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(value, _)| value)
    }

    /// Keeps only the entries whose key passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|key, _| keep(key));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
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
}
