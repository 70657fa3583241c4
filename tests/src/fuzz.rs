//! A mutation fuzzer that runs on the stable toolchain (cargo-fuzz needs nightly).
//!
//! Each target starts from a corpus of valid inputs (seeds) and runs mutated
//! copies — bit flips, random and "interesting" bytes, deleted, duplicated and
//! spliced spans, tokens from a dictionary, numbers swapped for edge values —
//! through the code under test for a time budget. There is no coverage
//! instrumentation; as a cheap stand-in, an input whose outcome is new (a result
//! or an error message not seen before) joins the corpus, so mutations build on
//! inputs that reached new code.
//!
//! A crash is a panic (also one inside a task the target spawned, which the code
//! under test reports as "panicked") or a time-out of a single input; crashing
//! inputs are written to `target/debug/fuzz-crashes/<target>/` to replay; once
//! fixed, a crashing input goes to `tests/fuzz/<target>/`, which every run
//! starts from.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use altdb_common::random::SplitMix64;

/// What one input did.
pub enum Outcome {
    /// The input was handled (accepted or refused with an error); the string
    /// classifies the outcome (new classes grow the corpus).
    Handled(String),
    /// A panic below the code under test that it caught and turned into an
    /// error (as a leaf does for a fragment's operators): not a crash, but
    /// reported, by kind.
    Contained(String),
    /// The code under test failed in a way it must not (e.g. reported a panic of
    /// a task, or an input ran past its time).
    Crash(String),
}

/// The result of fuzzing one target.
#[derive(Debug)]
pub struct Report {
    pub target: String,
    pub runs: u64,
    pub elapsed: Duration,
    pub corpus: usize,
    /// Messages of crashes, with the file holding each crashing input.
    pub crashes: Vec<(String, PathBuf)>,
    /// Kinds of panics the code under test caught, and how many inputs caused one.
    pub contained: (Vec<String>, u64),
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz {}: {} runs in {:.0} s ({:.0}/s), corpus {}, {} crashes, {} contained panics \
             of {} kinds",
            self.target,
            self.runs,
            self.elapsed.as_secs_f64(),
            self.runs as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.corpus,
            self.crashes.len(),
            self.contained.1,
            self.contained.0.len()
        )?;
        for kind in &self.contained.0 {
            write!(f, "\n  contained: {kind}")?;
        }
        for (message, file) in &self.crashes {
            write!(f, "\n  {message} (input: {})", file.display())?;
        }
        Ok(())
    }
}

/// Seconds each target runs: `ALTDB_FUZZ_SECONDS` (default 10).
pub fn budget() -> Duration {
    let seconds = std::env::var("ALTDB_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    Duration::from_secs_f64(seconds)
}

/// The seed of the mutations: `ALTDB_FUZZ_SEED`, else the clock (printed, to replay).
pub fn seed() -> u64 {
    std::env::var("ALTDB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Panics while fuzzing are recorded, not printed: a panic is a finding, and the
/// report lists it.
fn quiet_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZING.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                let message = format!("{info}");
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(message));
            } else {
                default(info);
            }
        }));
    });
}

/// Fuzz runs under way: panics on any thread (a task's of the code under test)
/// are not printed meanwhile.
static FUZZING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Fuzzes `target` from `seeds` for `budget`.
pub fn run(
    name: &str,
    seeds: Vec<Vec<u8>>,
    dictionary: &[&[u8]],
    budget: Duration,
    mut target: impl FnMut(&[u8]) -> Outcome,
) -> Report {
    quiet_panics();
    let seed = seed();
    eprintln!("fuzz {name}: seed {seed} (ALTDB_FUZZ_SEED replays), {budget:?}");
    let mut rng = SplitMix64::new(seed);
    let mut corpus: Vec<Vec<u8>> = seeds;
    // Inputs that crashed once stay seeds for good (`tests/fuzz/<target>/`).
    let kept = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(name);
    if let Ok(entries) = std::fs::read_dir(&kept) {
        for entry in entries.flatten() {
            if let Ok(input) = std::fs::read(entry.path()) {
                corpus.push(input);
            }
        }
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut crashes = Vec::new();
    let mut crash_kinds: HashSet<String> = HashSet::new();
    let mut contained: (Vec<String>, u64) = (Vec::new(), 0);
    let started = Instant::now();
    let mut runs = 0u64;
    // Seeds run unchanged first.
    let mut pending: Vec<Vec<u8>> = corpus.clone();
    while started.elapsed() < budget {
        let input = pending.pop().unwrap_or_else(|| {
            let base = &corpus[rng.below(corpus.len() as u64) as usize];
            mutate(base, &corpus, dictionary, &mut rng)
        });
        runs += 1;
        FUZZING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
        FUZZING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let crash = match outcome {
            Ok(Outcome::Handled(class)) => {
                if corpus.len() < 4096 && seen.insert(class) {
                    corpus.push(input);
                }
                continue;
            }
            Ok(Outcome::Contained(message)) => {
                contained.1 += 1;
                let kind = class_of(&message);
                if !contained.0.contains(&kind) {
                    contained.0.push(kind);
                }
                continue;
            }
            Ok(Outcome::Crash(message)) => message,
            Err(_) => LAST_PANIC
                .with(|last| last.borrow_mut().take())
                .unwrap_or_else(|| "panic".to_string()),
        };
        // One file per kind of crash (its first line without line numbers).
        let kind: String = crash
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(120)
            .collect();
        if crash_kinds.insert(kind) {
            let file = save_crash(name, &input);
            crashes.push((crash, file));
        }
    }
    Report {
        target: name.to_string(),
        runs,
        elapsed: started.elapsed(),
        corpus: corpus.len(),
        crashes,
        contained,
    }
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = crate::bin_dir().join("fuzz-crashes").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(input)));
    let _ = std::fs::write(&file, input);
    file
}

/// Numbers that break code: bounds of integer types, zero, negatives, huge.
const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1",
    b"127",
    b"255",
    b"256",
    b"32767",
    b"65535",
    b"2147483647",
    b"-2147483648",
    b"4294967295",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551615",
    b"1e308",
    b"-1e400",
    b"NaN",
    b"0.0000001",
    b"99999999999999999999999999999",
];

/// One to four random mutations of `base`.
fn mutate(base: &[u8], corpus: &[Vec<u8>], dictionary: &[&[u8]], rng: &mut SplitMix64) -> Vec<u8> {
    let mut data = base.to_vec();
    for _ in 0..=rng.below(4) {
        let len = data.len() as u64;
        let at = |rng: &mut SplitMix64| rng.below(len + 1) as usize;
        match rng.below(10) {
            0 if !data.is_empty() => {
                let i = rng.below(len) as usize;
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(len) as usize;
                data[i] = rng.next_u64() as u8;
            }
            2 => {
                let i = at(rng);
                data.insert(i, rng.next_u64() as u8);
            }
            3 if !data.is_empty() => {
                let start = rng.below(len) as usize;
                let end = (start + 1 + rng.below(16) as usize).min(data.len());
                data.drain(start..end);
            }
            4 if !data.is_empty() => {
                let start = rng.below(len) as usize;
                let end = (start + 1 + rng.below(32) as usize).min(data.len());
                let span = data[start..end].to_vec();
                let i = at(rng);
                data.splice(i..i, span);
            }
            5 | 6 if !dictionary.is_empty() => {
                let token = dictionary[rng.below(dictionary.len() as u64) as usize];
                let i = at(rng);
                data.splice(i..i, token.iter().copied());
            }
            7 => {
                // A run of digits becomes an interesting number.
                let digits: Vec<usize> = (0..data.len())
                    .filter(|&i| data[i].is_ascii_digit())
                    .collect();
                if let Some(&i) = digits.get(rng.below(digits.len().max(1) as u64) as usize) {
                    let end = (i..data.len())
                        .find(|&j| !data[j].is_ascii_digit())
                        .unwrap_or(data.len());
                    let number = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                    data.splice(i..end, number.iter().copied());
                }
            }
            8 => {
                // Splice: the head of this input, the tail of another.
                let other = &corpus[rng.below(corpus.len() as u64) as usize];
                let cut = at(rng);
                let from = rng.below(other.len() as u64 + 1) as usize;
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ if !data.is_empty() => {
                // Repeat a span many times (deep nesting, long strings).
                let start = rng.below(len) as usize;
                let end = (start + 1 + rng.below(4) as usize).min(data.len());
                let span = data[start..end].to_vec();
                let times = 1 + rng.below(200) as usize;
                let i = at(rng);
                data.splice(i..i, span.iter().copied().cycle().take(span.len() * times));
            }
            _ => data.push(rng.next_u64() as u8),
        }
    }
    data.truncate(1 << 20);
    data
}

/// Classifies an error message as an outcome: its text up to the first digit or
/// quote, so that messages differing only in values count as one.
pub fn class_of(message: &str) -> String {
    message
        .chars()
        .take_while(|c| !c.is_ascii_digit() && *c != '`' && *c != '"' && *c != '\'')
        .take(80)
        .collect()
}
