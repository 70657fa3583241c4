//! The fields statements are planned with, remembered between statements.
//!
//! Planning needs a collection's schema: the fields every leaf has seen. Asking
//! every leaf before each statement costs a round trip that is a large share of a
//! needle query, so the aggregator remembers the last answer. It stays correct
//! because each fragment carries the fingerprint of its shard's fields as planned,
//! and a leaf whose shard has other fields by now refuses to run it; the statement
//! is then planned again with fields fresh from the leaves.
//!
//! While a collection's fields keep changing (documents with new keys arrive all
//! the time), remembering them would make most statements plan twice; for a while
//! after a refusal the collection's fields are asked for every statement instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::CollectionFields;

/// How long after a refusal a collection's fields are not remembered.
const CHURN_PAUSE: Duration = Duration::from_secs(1);

/// Remembered fields per collection.
#[derive(Debug, Default)]
pub struct FieldsCache {
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
enum Entry {
    Known(Arc<CollectionFields>),
    /// Fields changed under a plan at this instant: do not remember them yet.
    Changing(Instant),
}

impl FieldsCache {
    /// The remembered fields of `collection`.
    pub fn get(&self, collection: &str) -> Option<Arc<CollectionFields>> {
        match self.lock().get(collection)? {
            Entry::Known(fields) => Some(fields.clone()),
            Entry::Changing(_) => None,
        }
    }

    /// Remembers fields just reported by the leaves, unless the collection's fields
    /// were found changing a moment ago.
    pub fn put(&self, collection: &str, fields: Arc<CollectionFields>) {
        let mut entries = self.lock();
        if let Some(Entry::Changing(at)) = entries.get(collection) {
            if at.elapsed() < CHURN_PAUSE {
                return;
            }
        }
        entries.insert(collection.to_string(), Entry::Known(fields));
    }

    /// Forgets `collection`'s fields; `changing`: a leaf refused a plan made with
    /// them, so do not remember new ones for a while.
    pub fn forget(&self, collection: &str, changing: bool) {
        let mut entries = self.lock();
        if changing {
            entries.insert(collection.to_string(), Entry::Changing(Instant::now()));
        } else {
            entries.remove(collection);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use altdb_common::schema::FieldSet;

    fn fields() -> Arc<CollectionFields> {
        Arc::new(CollectionFields {
            fields: FieldSet::default(),
            fingerprints: HashMap::new(),
        })
    }

    #[test]
    fn changing_collections_are_not_remembered_for_a_while() {
        let cache = FieldsCache::default();
        assert!(cache.get("a").is_none());
        cache.put("a", fields());
        assert!(cache.get("a").is_some());

        cache.forget("a", false);
        assert!(cache.get("a").is_none());
        cache.put("a", fields());
        assert!(cache.get("a").is_some());

        cache.forget("a", true);
        cache.put("a", fields());
        assert!(cache.get("a").is_none(), "remembered right after a refusal");
        cache.lock().insert(
            "a".into(),
            Entry::Changing(Instant::now() - CHURN_PAUSE - Duration::from_millis(1)),
        );
        cache.put("a", fields());
        assert!(cache.get("a").is_some());
    }
}
