//! Read-your-writes fences: what a write reached, as a token a query can wait
//! for.
//!
//! A write's answer carries a [`Fence`] naming, for each shard it wrote, the
//! version its documents were stored with (a copy keeps the highest version
//! it stored as its [`VERSION_MARK`] watermark), and the placement's revision
//! in the metastore once every copy that missed the write was marked behind.
//! A query given the fence waits until its aggregator's view of the
//! placement is at least that recent — so it reads no copy that missed the
//! write — and every copy it may read holds the versions, then answers. A
//! fence may also name source positions (a Kafka partition's offset, under
//! the name of its source: `kafka:<collection>:<topic>:<partition>`): every
//! shard's copies must have stored the source through that position.
//!
//! The token is `f1.` and the fence's JSON in URL-safe base64: opaque to
//! clients, who pass it back as they got it.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The watermark a copy of a shard keeps of the highest document version it
/// stored (`PutHeader::version`; kept like a source's watermark, copied on a
/// catch-up).
pub const VERSION_MARK: &str = "_version";

/// Most shards and source positions one fence may name.
pub const MAX_FENCE_ENTRIES: usize = 10_000;

const PREFIX: &str = "f1.";

/// What a write (or a stream's flush) reached in one collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fence {
    pub collection: String,
    /// The collection's incarnation written (a fence of a dropped collection
    /// is never reached); a fence a client makes may leave it out: the
    /// collection as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
    /// The metastore revision of the placement the writer saw after marking
    /// behind every copy that missed the write (0 without a metastore).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: i64,
    /// Per shard, the version its documents were stored with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<u32, u64>,
    /// Per source (by name), the position every shard must have stored through.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub positions: BTreeMap<String, u64>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Fence {
    /// The token clients get and pass back.
    pub fn token(&self) -> String {
        let json = serde_json::to_vec(self).expect("a fence serializes");
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// A fence from its token, checked (a token is client input).
    pub fn from_token(token: &str) -> Result<Self, String> {
        let bad = |why: String| {
            format!("`{token:.40}` is not a fence token as write answers give them ({why})")
        };
        let body = token
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad(format!("a token starts with `{PREFIX}`")))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| bad(e.to_string()))?;
        let fence: Fence = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
        fence.checked()
    }

    /// The fence, if it names a collection and not too much.
    pub fn checked(self) -> Result<Self, String> {
        if self.collection.is_empty() {
            return Err("a fence names its collection".into());
        }
        if self.versions.len() + self.positions.len() > MAX_FENCE_ENTRIES {
            return Err(format!(
                "a fence names at most {MAX_FENCE_ENTRIES} shards and source positions"
            ));
        }
        if self.revision < 0 {
            return Err("a fence's revision is not negative".into());
        }
        Ok(self)
    }

    /// Raises this fence to cover `other` too (the same collection).
    pub fn merge(&mut self, other: &Fence) {
        self.revision = self.revision.max(other.revision);
        for (&shard, &version) in &other.versions {
            let held = self.versions.entry(shard).or_default();
            *held = (*held).max(version);
        }
        for (source, &position) in &other.positions {
            let held = self.positions.entry(source.clone()).or_default();
            *held = (*held).max(position);
        }
    }

    /// Whether a copy of `shard` with these watermarks (by source name, the
    /// [`VERSION_MARK`] among them) holds what the fence names of it; if not,
    /// what it lacks, in words.
    pub fn unmet_on(&self, shard: u32, marks: &BTreeMap<String, u64>) -> Option<String> {
        let held = |name: &str| marks.get(name).copied();
        if let Some(&version) = self.versions.get(&shard) {
            if held(VERSION_MARK).is_none_or(|h| h < version) {
                return Some(format!(
                    "holds versions through {}, the write's is {version}",
                    held(VERSION_MARK).map_or_else(|| "none".to_string(), |h| h.to_string())
                ));
            }
        }
        for (source, &position) in &self.positions {
            if held(source).is_none_or(|h| h < position) {
                return Some(format!(
                    "stored `{source}` through {}, the fence names {position}",
                    held(source).map_or_else(|| "nothing".to_string(), |h| h.to_string())
                ));
            }
        }
        None
    }

    /// The shards the fence names something of (`None`: every shard, for
    /// source positions).
    pub fn shards(&self) -> Option<Vec<u32>> {
        self.positions
            .is_empty()
            .then(|| self.versions.keys().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_hostile_ones_are_refused_with_the_reason() {
        let fence = Fence {
            collection: "users".into(),
            incarnation: Some(3),
            revision: 42,
            versions: BTreeMap::from([(0, 7), (3, 9)]),
            positions: BTreeMap::from([("kafka:c:t:0".into(), 100)]),
        };
        let token = fence.token();
        assert!(token.starts_with("f1."), "{token}");
        assert_eq!(Fence::from_token(&token).unwrap(), fence);
        for (token, why) in [
            ("users", "starts with `f1.`"),
            ("f1.!!", "Invalid"),
            ("f1.e30", "missing field `collection`"),
        ] {
            let error = Fence::from_token(token).unwrap_err();
            assert!(error.contains(why), "{token}: {error}");
        }
        let too_many = Fence {
            collection: "c".into(),
            versions: (0..=MAX_FENCE_ENTRIES as u32).map(|s| (s, 1)).collect(),
            ..Fence::default()
        };
        assert!(Fence::from_token(&too_many.token())
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn a_copy_meets_a_fence_once_it_holds_the_version_and_positions() {
        let fence = Fence {
            collection: "c".into(),
            versions: BTreeMap::from([(1, 10)]),
            positions: BTreeMap::from([("p".into(), 5)]),
            ..Fence::default()
        };
        let marks =
            |v: u64, p: u64| BTreeMap::from([(VERSION_MARK.to_string(), v), ("p".into(), p)]);
        assert!(fence
            .unmet_on(1, &marks(9, 5))
            .unwrap()
            .contains("the write's is 10"));
        assert!(fence
            .unmet_on(1, &marks(10, 4))
            .unwrap()
            .contains("through 4"));
        assert_eq!(fence.unmet_on(1, &marks(11, 5)), None);
        // Shard 0 was not written: only the positions matter there.
        assert_eq!(fence.unmet_on(0, &BTreeMap::from([("p".into(), 5)])), None);
        assert_eq!(fence.shards(), None);
        let mut merged = Fence {
            positions: BTreeMap::new(),
            ..fence.clone()
        };
        assert_eq!(merged.shards(), Some(vec![1]));
        merged.merge(&Fence {
            collection: "c".into(),
            revision: 4,
            versions: BTreeMap::from([(1, 3), (2, 8)]),
            ..Fence::default()
        });
        assert_eq!(merged.versions, BTreeMap::from([(1, 10), (2, 8)]));
        assert_eq!(merged.revision, 4);
    }
}
