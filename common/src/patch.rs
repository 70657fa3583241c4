//! Partial updates of one document: JSON Patch (RFC 6902) and Rockset's
//! `increment`.
//!
//! A patch is a list of operations applied in order to a copy of the
//! document; the document changes only if every operation applies (a failed
//! `test`, a path that does not exist, ..), so a patch is atomic per document.
//! The leaf that holds the document applies it ([`apply`]); the tailer checks
//! that a patch parses before sending it ([`parse`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::columns::{EVENT_TIME_COLUMN, ID_COLUMN};
use crate::document::json_kind;

/// Most operations one document's patch may hold.
pub const MAX_PATCH_OPS: usize = 1_000;

/// One operation of a patch. `op` is matched without regard to case
/// (`"add"` and Rockset's `"ADD"` alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum PatchOp {
    #[serde(alias = "ADD", alias = "Add")]
    Add { path: String, value: Value },
    #[serde(alias = "REMOVE", alias = "Remove")]
    Remove { path: String },
    #[serde(alias = "REPLACE", alias = "Replace")]
    Replace { path: String, value: Value },
    #[serde(alias = "MOVE", alias = "Move")]
    Move { from: String, path: String },
    #[serde(alias = "COPY", alias = "Copy")]
    Copy { from: String, path: String },
    #[serde(alias = "TEST", alias = "Test")]
    Test { path: String, value: Value },
    /// Adds `value` (a number) to the number at `path`, or sets it to `value`
    /// where there is none yet.
    #[serde(alias = "INCREMENT", alias = "Increment")]
    Increment { path: String, value: Value },
}

impl PatchOp {
    fn name(&self) -> &'static str {
        match self {
            Self::Add { .. } => "add",
            Self::Remove { .. } => "remove",
            Self::Replace { .. } => "replace",
            Self::Move { .. } => "move",
            Self::Copy { .. } => "copy",
            Self::Test { .. } => "test",
            Self::Increment { .. } => "increment",
        }
    }

    fn path(&self) -> &str {
        match self {
            Self::Add { path, .. }
            | Self::Remove { path }
            | Self::Replace { path, .. }
            | Self::Move { path, .. }
            | Self::Copy { path, .. }
            | Self::Test { path, .. }
            | Self::Increment { path, .. } => path,
        }
    }
}

/// Why a patch does not apply to a document: the operation (by position) and
/// what is wrong, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError(pub String);

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatchError {}

/// The operations of a patch sent as JSON (an array of operations), checked
/// for what can be checked without the document: the number of operations,
/// well-formed paths, numbers to increment by, no change of `_id` or
/// `_event_time`.
pub fn parse(patch: &Value) -> Result<Vec<PatchOp>, PatchError> {
    let Value::Array(items) = patch else {
        return Err(PatchError(
            "a patch is an array of operations, like [{\"op\": \"replace\", \"path\": \"/a\", \
             \"value\": 1}]"
                .into(),
        ));
    };
    if items.len() > MAX_PATCH_OPS {
        return Err(PatchError(format!(
            "{} operations in one patch; a document's patch may hold at most {MAX_PATCH_OPS}",
            items.len()
        )));
    }
    let ops = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_value::<PatchOp>(item.clone()).map_err(|e| {
                PatchError(format!(
                    "operation {i} is not an operation of add, remove, replace, move, copy, \
                     test or increment with its `path` (and `value` or `from`): {e}"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    check(&ops)?;
    Ok(ops)
}

/// What [`parse`] checks of operations without the document.
pub fn check(ops: &[PatchOp]) -> Result<(), PatchError> {
    for (i, op) in ops.iter().enumerate() {
        let mut paths = vec![op.path()];
        if let PatchOp::Move { from, .. } | PatchOp::Copy { from, .. } = op {
            paths.push(from);
        }
        for path in paths {
            let tokens = pointer(path).map_err(|e| at(i, op, e))?;
            if tokens.is_empty() && !matches!(op, PatchOp::Test { .. }) {
                return Err(at(
                    i,
                    op,
                    "the path \"\" is the whole document, which a patch does not replace: \
                     write the document instead"
                        .into(),
                ));
            }
            let top = tokens.first().map(String::as_str);
            if matches!(top, Some(ID_COLUMN | EVENT_TIME_COLUMN))
                && !matches!(op, PatchOp::Test { .. })
            {
                return Err(at(
                    i,
                    op,
                    format!(
                        "`{}` cannot be patched: a patch keeps the document's identity and \
                         event time (delete it and write a new document to change them)",
                        top.unwrap_or_default()
                    ),
                ));
            }
        }
        if let PatchOp::Increment { value, .. } = op {
            if !value.is_number() {
                return Err(at(
                    i,
                    op,
                    format!("increment takes a number as `value`, not {value}"),
                ));
            }
        }
    }
    Ok(())
}

/// Applies `ops` to `doc`, all or nothing: on an error `doc` is unchanged.
pub fn apply(doc: &mut Map<String, Value>, ops: &[PatchOp]) -> Result<(), PatchError> {
    check(ops)?;
    let mut patched = Value::Object(std::mem::take(doc));
    let original = patched.clone();
    let result = ops
        .iter()
        .enumerate()
        .try_for_each(|(i, op)| apply_one(&mut patched, op).map_err(|e| at(i, op, e)));
    let Value::Object(map) = (if result.is_ok() { patched } else { original }) else {
        unreachable!("patches never replace the whole document");
    };
    *doc = map;
    result
}

fn at(index: usize, op: &PatchOp, error: String) -> PatchError {
    PatchError(format!(
        "operation {index} ({} at \"{}\"): {error}",
        op.name(),
        op.path()
    ))
}

fn apply_one(doc: &mut Value, op: &PatchOp) -> Result<(), String> {
    match op {
        PatchOp::Add { path, value } => add(doc, &pointer(path)?, value.clone()),
        PatchOp::Remove { path } => remove(doc, &pointer(path)?).map(drop),
        PatchOp::Replace { path, value } => {
            *target(doc, &pointer(path)?)? = value.clone();
            Ok(())
        }
        PatchOp::Move { from, path } => {
            let (from, to) = (pointer(from)?, pointer(path)?);
            if to.len() > from.len() && to.starts_with(&from) {
                return Err("a value cannot move into itself".into());
            }
            let value = remove(doc, &from)?;
            add(doc, &to, value)
        }
        PatchOp::Copy { from, path } => {
            let value = target(doc, &pointer(from)?)?.clone();
            add(doc, &pointer(path)?, value)
        }
        PatchOp::Test { path, value } => {
            let held = target(doc, &pointer(path)?)?;
            if json_equal(held, value) {
                Ok(())
            } else {
                Err(format!("the value is {held}, not {value}: test failed"))
            }
        }
        PatchOp::Increment { path, value } => {
            let tokens = pointer(path)?;
            let (parent, last) = tokens.split_at(tokens.len() - 1);
            let parent = target(doc, parent)?;
            match parent_slot(parent, &last[0], false)? {
                Some(held) => {
                    *held = increment(held, value)?;
                    Ok(())
                }
                None => add(doc, &tokens, value.clone()),
            }
        }
    }
}

/// `held + by`: integers stay integers unless they overflow.
fn increment(held: &Value, by: &Value) -> Result<Value, String> {
    let (Value::Number(a), Value::Number(b)) = (held, by) else {
        return Err(format!("the value is {held}, not a number to increment"));
    };
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        if let Some(sum) = a.checked_add(b) {
            return Ok(Value::from(sum));
        }
    }
    let sum = a.as_f64().unwrap_or(f64::NAN) + b.as_f64().unwrap_or(f64::NAN);
    serde_json::Number::from_f64(sum)
        .map(Value::Number)
        .ok_or_else(|| format!("{held} + {by} is not a finite number"))
}

/// JSON equality with numbers compared by value (`1` equals `1.0`).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// The reference tokens of a JSON Pointer (RFC 6901): `""` is the whole
/// document, `/a/0/b~1c` is `a`, `0`, `b/c`.
fn pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!(
            "\"{path}\" is not a JSON Pointer: it starts with '/' (\"/a/b\" is field b of field a)"
        ));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => {
                        return Err(format!(
                            "\"{path}\" has a '~' not followed by 0 or 1 (write ~0 for '~', ~1 \
                             for '/')"
                        ))
                    }
                }
            }
            Ok(out)
        })
        .collect()
}

/// The value at `tokens`, which must exist.
fn target<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut at = doc;
    for (depth, token) in tokens.iter().enumerate() {
        at = parent_slot(at, token, false)?
            .ok_or_else(|| format!("there is no value at \"/{}\"", tokens[..=depth].join("/")))?;
    }
    Ok(at)
}

/// The member `token` of `parent` (an object's field or an array's index);
/// `None` when the object has no such field. `append`: `-` names the place
/// after an array's last element.
fn parent_slot<'a>(
    parent: &'a mut Value,
    token: &str,
    append: bool,
) -> Result<Option<&'a mut Value>, String> {
    match parent {
        Value::Object(map) => Ok(map.get_mut(token)),
        Value::Array(items) => {
            let len = items.len();
            if append && token == "-" {
                return Ok(None);
            }
            let index = array_index(token, len)?;
            items
                .get_mut(index)
                .map(Some)
                .ok_or_else(|| format!("index {index} is past the end of an array of {len}"))
        }
        other => Err(format!(
            "\"{token}\" names a member of {}, which has none",
            json_kind(other)
        )),
    }
}

fn array_index(token: &str, len: usize) -> Result<usize, String> {
    if token == "-" {
        return Ok(len);
    }
    if token.len() > 1 && token.starts_with('0') || token.is_empty() {
        return Err(format!("\"{token}\" is not an array index"));
    }
    token
        .parse::<usize>()
        .map_err(|_| format!("\"{token}\" is not an array index (an array's members are 0, 1, ..)"))
}

/// RFC 6902 `add`: sets an object's field, or inserts into an array (`-`
/// appends); the parent must exist.
fn add(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    let (parent, last) = tokens.split_at(tokens.len() - 1);
    let last = &last[0];
    match target(doc, parent)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            let index = array_index(last, items.len())?;
            if index > items.len() {
                return Err(format!(
                    "index {index} is past the end of an array of {}",
                    items.len()
                ));
            }
            items.insert(index, value);
            Ok(())
        }
        other => Err(format!(
            "\"{last}\" cannot be added to {}, which has no members",
            json_kind(other)
        )),
    }
}

/// RFC 6902 `remove`: the value at `tokens`, which must exist, taken out.
fn remove(doc: &mut Value, tokens: &[String]) -> Result<Value, String> {
    let (parent, last) = tokens.split_at(tokens.len() - 1);
    let last = &last[0];
    match target(doc, parent)? {
        Value::Object(map) => map
            .remove(last)
            .ok_or_else(|| format!("there is no value at \"/{}\"", tokens.join("/"))),
        Value::Array(items) => {
            let index = array_index(last, items.len())?;
            if index >= items.len() {
                return Err(format!(
                    "index {index} is past the end of an array of {}",
                    items.len()
                ));
            }
            Ok(items.remove(index))
        }
        other => Err(format!(
            "\"{last}\" names a member of {}, which has none",
            json_kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patched(doc: Value, patch: Value) -> Result<Value, String> {
        let ops = parse(&patch).map_err(|e| e.0)?;
        let Value::Object(mut map) = doc else {
            panic!("a document is an object")
        };
        let result = apply(&mut map, &ops).map_err(|e| e.0);
        result.map(|()| Value::Object(map))
    }

    #[test]
    fn operations_follow_rfc_6902() {
        let doc = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        assert_eq!(
            patched(
                doc.clone(),
                json!([
                    {"op": "add", "path": "/a/e", "value": true},
                    {"op": "add", "path": "/a/c/-", "value": 3},
                    {"op": "add", "path": "/a/c/0", "value": 0},
                    {"op": "remove", "path": "/d"},
                    {"op": "replace", "path": "/a/b", "value": {"z": null}},
                    {"op": "copy", "from": "/a/c", "path": "/f"},
                    {"op": "move", "from": "/a/e", "path": "/g"},
                    {"op": "test", "path": "/f/3", "value": 3.0},
                ])
            )
            .unwrap(),
            json!({"a": {"b": {"z": null}, "c": [0, 1, 2, 3]}, "f": [0, 1, 2, 3], "g": true})
        );
        // Escapes: ~1 is '/', ~0 is '~'.
        assert_eq!(
            patched(
                json!({"a/b": 1, "m~n": 2}),
                json!([
                    {"op": "replace", "path": "/a~1b", "value": 5},
                    {"op": "remove", "path": "/m~0n"},
                ])
            )
            .unwrap(),
            json!({"a/b": 5})
        );
    }

    #[test]
    fn increment_adds_or_sets_and_keeps_integers() {
        let doc = json!({"n": 41, "f": 1.5, "s": "x", "o": {}});
        assert_eq!(
            patched(
                doc.clone(),
                json!([
                    {"op": "INCREMENT", "path": "/n", "value": 1},
                    {"op": "increment", "path": "/f", "value": 1},
                    {"op": "increment", "path": "/o/new", "value": -2},
                ])
            )
            .unwrap(),
            json!({"n": 42, "f": 2.5, "s": "x", "o": {"new": -2}})
        );
        let error = patched(
            doc.clone(),
            json!([{"op": "increment", "path": "/s", "value": 1}]),
        )
        .unwrap_err();
        assert!(error.contains("not a number to increment"), "{error}");
        let error = patched(
            doc,
            json!([{"op": "increment", "path": "/n", "value": "1"}]),
        )
        .unwrap_err();
        assert!(error.contains("takes a number"), "{error}");
        assert_eq!(
            patched(
                json!({"n": i64::MAX}),
                json!([{"op": "increment", "path": "/n", "value": 1}])
            )
            .unwrap(),
            json!({"n": i64::MAX as f64 + 1.0})
        );
    }

    #[test]
    fn a_failing_operation_leaves_the_document_unchanged_and_says_why() {
        let doc = json!({"a": 1, "b": [1]});
        let Value::Object(mut map) = doc.clone() else {
            unreachable!()
        };
        let ops = parse(&json!([
            {"op": "replace", "path": "/a", "value": 2},
            {"op": "test", "path": "/a", "value": 3},
        ]))
        .unwrap();
        let error = apply(&mut map, &ops).unwrap_err();
        assert_eq!(
            error.0,
            "operation 1 (test at \"/a\"): the value is 2, not 3: test failed"
        );
        assert_eq!(Value::Object(map), doc);
        for (patch, expected) in [
            (
                json!([{"op": "remove", "path": "/x"}]),
                "there is no value at \"/x\"",
            ),
            (
                json!([{"op": "replace", "path": "/x/y", "value": 1}]),
                "there is no value at \"/x\"",
            ),
            (
                json!([{"op": "add", "path": "/b/5", "value": 1}]),
                "past the end",
            ),
            (
                json!([{"op": "add", "path": "/a/q", "value": 1}]),
                "a number, which has no members",
            ),
            (
                json!([{"op": "move", "from": "/b", "path": "/b/0"}]),
                "into itself",
            ),
            (
                json!([{"op": "add", "path": "/b/01", "value": 1}]),
                "not an array index",
            ),
        ] {
            let error = patched(doc.clone(), patch.clone()).unwrap_err();
            assert!(error.contains(expected), "{patch}: {error}");
        }
    }

    #[test]
    fn malformed_patches_are_refused_before_any_document_is_read() {
        for (patch, expected) in [
            (json!({"op": "add"}), "an array of operations"),
            (
                json!([{"op": "merge", "path": "/a"}]),
                "operation 0 is not an operation",
            ),
            (
                json!([{"op": "add", "path": "/a"}]),
                "operation 0 is not an operation",
            ),
            (
                json!([{"op": "add", "path": "a", "value": 1}]),
                "not a JSON Pointer",
            ),
            (
                json!([{"op": "add", "path": "/a~2", "value": 1}]),
                "'~' not followed",
            ),
            (
                json!([{"op": "replace", "path": "", "value": {}}]),
                "the whole document",
            ),
            (
                json!([{"op": "replace", "path": "/_id", "value": "b"}]),
                "`_id` cannot be patched",
            ),
            (
                json!([{"op": "move", "from": "/_event_time", "path": "/t"}]),
                "`_event_time` cannot",
            ),
        ] {
            let error = parse(&patch).unwrap_err().0;
            assert!(error.contains(expected), "{patch}: {error}");
        }
        // Operations made without `parse` are checked as well.
        let mut doc = Map::new();
        let whole = [PatchOp::Replace {
            path: String::new(),
            value: json!(1),
        }];
        assert!(apply(&mut doc, &whole)
            .unwrap_err()
            .0
            .contains("the whole document"));
        let many = Value::Array(vec![
            json!({"op": "test", "path": "/a", "value": 1});
            MAX_PATCH_OPS + 1
        ]);
        assert!(parse(&many).unwrap_err().0.contains("at most 1000"));
    }
}
