//! Chaos: a steady Kafka stream (malformed records mixed in) into 2 tailers and 2
//! leaves while, at seeded random moments, tailers and leaves are killed with
//! SIGKILL and restarted — during group joins, both tailers at once, in crash
//! loops. Afterwards every event is stored exactly once, `_dlq` holds exactly the
//! malformed records, and the lag is 0 on every partition.
//!
//! `ALTDB_CHAOS_SECONDS` (default 120) sets how long the chaos lasts and
//! `ALTDB_CHAOS_SEED` replays a run (the seed is printed); README gives the hour
//! long soak command.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use altdb_common::random::SplitMix64;
use altdb_tests::kafka::{events_cluster, Produced, TrackingProducer};
use altdb_tests::ClusterOptions;

const TOPIC: &str = "events";
const PARTITIONS: i32 = 8;
/// Records produced per second.
const RATE: u64 = 1_500;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the chaos does next.
#[derive(Debug, Clone, Copy)]
enum Blow {
    /// Kill a tailer, restart it after the pause.
    Tailer(usize),
    /// Kill a tailer, restart it, kill it again shortly after (while it joins the
    /// group), restart it.
    CrashLoop(usize),
    /// Kill both tailers at once.
    BothTailers,
    /// Kill a leaf, restart it after the pause.
    Leaf(usize),
    /// Kill a leaf and a tailer together.
    LeafAndTailer(usize, usize),
}

fn pick(rng: &mut SplitMix64) -> Blow {
    let i = rng.below(2) as usize;
    match rng.below(10) {
        0..=2 => Blow::Tailer(i),
        3..=4 => Blow::CrashLoop(i),
        5..=6 => Blow::BothTailers,
        7..=8 => Blow::Leaf(i),
        _ => Blow::LeafAndTailer(i, rng.below(2) as usize),
    }
}

fn pause(rng: &mut SplitMix64, from_ms: u64, to_ms: u64) {
    std::thread::sleep(Duration::from_millis(from_ms + rng.below(to_ms - from_ms)));
}

#[test]
fn every_event_exactly_once_through_seeded_kills_of_tailers_and_leaves() {
    let seconds = env_u64("ALTDB_CHAOS_SECONDS", 120);
    let seed = env_u64("ALTDB_CHAOS_SEED", 20_261_206);
    eprintln!("chaos: {seconds} s, seed {seed} (ALTDB_CHAOS_SEED={seed} replays it)");
    let (mut cluster, broker) = events_cluster(
        ClusterOptions {
            leaves: 2,
            tailers: 2,
            seal_rows: 50_000,
            ..ClusterOptions::default()
        },
        TOPIC,
        PARTITIONS,
    )
    .expect("cluster starts");

    // The stream: RATE records a second until told to stop.
    let producer = Arc::new(TrackingProducer::new(&broker).expect("producer"));
    let produced = Arc::new(Mutex::new(Produced::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (producer, produced, stop) = (producer.clone(), produced.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = 0;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let due = started.elapsed().as_millis() as u64 * RATE / 1000;
                if due > next {
                    let mut local = Produced::default();
                    producer
                        .produce(TOPIC, next..due, &mut local)
                        .expect("produce");
                    let mut all = produced.lock().unwrap();
                    all.good += local.good;
                    all.good_seq_sum += local.good_seq_sum;
                    all.bad.extend(local.bad);
                    next = due;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let mut rng = SplitMix64::new(seed);
    let started = Instant::now();
    let mut kills = 0;
    // At least 10 kills in a run of a minute or more, however the dice fall.
    let at_least = if seconds >= 60 { 10 } else { 0 };
    while started.elapsed() < Duration::from_secs(seconds) || kills < at_least {
        pause(&mut rng, 3_000, 9_000);
        let blow = pick(&mut rng);
        eprintln!("chaos at {:?}: {blow:?}", started.elapsed());
        match blow {
            Blow::Tailer(i) => {
                cluster.tailers[i].kill9();
                pause(&mut rng, 200, 6_000);
                cluster.tailers[i].restart().expect("tailer restarts");
                kills += 1;
            }
            Blow::CrashLoop(i) => {
                cluster.tailers[i].kill9();
                pause(&mut rng, 200, 2_000);
                cluster.tailers[i].restart().expect("tailer restarts");
                // Killed again while it joins the group and positions its partitions.
                pause(&mut rng, 2_000, 6_000);
                cluster.tailers[i].kill9();
                pause(&mut rng, 200, 3_000);
                cluster.tailers[i].restart().expect("tailer restarts");
                kills += 2;
            }
            Blow::BothTailers => {
                cluster.tailers[0].kill9();
                cluster.tailers[1].kill9();
                pause(&mut rng, 200, 4_000);
                cluster.tailers[0].restart().expect("tailer restarts");
                cluster.tailers[1].restart().expect("tailer restarts");
                kills += 2;
            }
            Blow::Leaf(i) => {
                cluster.leaves[i].kill9();
                pause(&mut rng, 500, 5_000);
                cluster.leaves[i].restart().expect("leaf restarts");
                kills += 1;
            }
            Blow::LeafAndTailer(leaf, tailer) => {
                cluster.leaves[leaf].kill9();
                cluster.tailers[tailer].kill9();
                pause(&mut rng, 500, 4_000);
                cluster.tailers[tailer].restart().expect("tailer restarts");
                pause(&mut rng, 200, 3_000);
                cluster.leaves[leaf].restart().expect("leaf restarts");
                kills += 2;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    stream.join().expect("the stream ends");
    let last_restart = Instant::now();
    let produced = produced.lock().unwrap().clone();
    let good = produced.good as i64;
    eprintln!(
        "chaos: {kills} kills in {:?}; {good} events and {} malformed records produced",
        started.elapsed(),
        produced.bad.len()
    );

    let count = cluster.wait_until(
        "SELECT COUNT(*) FROM events",
        Duration::from_secs(300),
        |v| v == good,
    );
    let converged = last_restart.elapsed();
    assert_eq!(
        count,
        good,
        "every event once, 300 s after the last restart\ntailer 0:\n{}\ntailer 1:\n{}",
        cluster.tailers[0].log_tail(),
        cluster.tailers[1].log_tail()
    );
    eprintln!("chaos: converged {converged:?} after the last restart");
    let rows = cluster
        .rows("SELECT COUNT(DISTINCT seq), SUM(seq) FROM events")
        .expect("query");
    assert_eq!(
        rows[0],
        vec![json!(good), json!(produced.good_seq_sum)],
        "no event twice, none missing"
    );
    let bad = produced.bad.len() as i64;
    let dead = cluster.wait_until(
        "SELECT COUNT(*) FROM _dlq WHERE collection = 'events'",
        Duration::from_secs(60),
        |v| v == bad,
    );
    assert_eq!(dead, bad, "exactly the malformed records are dead letters");
    let started = Instant::now();
    let status = loop {
        let answer = cluster.get("/v1/collections/events").expect("status");
        let source = answer.body["sources"][0].clone();
        if source["lag"] == json!(0) || started.elapsed() > Duration::from_secs(60) {
            break source;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(status["lag"], json!(0), "{status}");
}
