//! CPU priority of work that can wait.
//!
//! Queries are what a user waits on; sealing, merging, repairs and (on the
//! tailer and the leaves' write path) ingest can take their turn. Such work runs
//! on the threads of a [`Lowered`] pool, whose threads have a higher *nice*
//! value than the rest of the process. When both kinds want a core, the Linux
//! scheduler (CFS) shares it by weight: nice 0 weighs 1024, nice 5 335,
//! nice 10 110, so a query thread gets ~75 % (nice 5) or ~90 % (nice 10) of a
//! contended core. An idle core still goes to lowered work at full speed:
//! nothing is throttled when no query runs.
//!
//! ```text
//!  query threads (nice 0) ──┐
//!                           ├─► CFS shares contended cores 1024 : weight(nice)
//!  Lowered pool (nice n) ───┘
//! ```
//!
//! Priorities are per thread on Linux (`setpriority(PRIO_PROCESS, tid)`); raising
//! a nice value needs no privilege. Elsewhere the pool runs at normal priority.

use std::io;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// The highest nice value (lowest priority) Linux has.
pub const MAX_NICE: i32 = 19;

/// A pool of threads at `nice` for blocking work.
pub struct Lowered {
    name: String,
    nice: i32,
    /// `None` once dropped (see `Drop`).
    runtime: Option<Runtime>,
    handle: Handle,
}

impl std::fmt::Debug for Lowered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lowered")
            .field("name", &self.name)
            .field("nice", &self.nice)
            .finish()
    }
}

impl Lowered {
    /// A pool whose threads are named `name` and run at `nice` (0..=19; 0 is
    /// the process's own priority). `max_threads` bounds the blocking threads.
    pub fn new(name: &str, nice: i32, max_threads: usize) -> io::Result<Self> {
        if !(0..=MAX_NICE).contains(&nice) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("nice of `{name}` must be 0..={MAX_NICE}, not {nice}"),
            ));
        }
        let thread_name = name.to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(max_threads.max(1))
            .thread_name(thread_name)
            .on_thread_start(move || lower_current_thread(nice))
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self {
            name: name.to_string(),
            nice,
            runtime: Some(runtime),
            handle,
        })
    }

    /// The nice value of the pool's threads.
    pub fn nice(&self) -> i32 {
        self.nice
    }

    /// Runs `work` on one of the pool's threads.
    pub fn spawn_blocking<F, R>(&self, work: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.handle.spawn_blocking(work)
    }
}

impl Drop for Lowered {
    fn drop(&mut self) {
        // Dropping a runtime blocks on its threads, which an async context
        // forbids; whatever still runs is dropped with the process.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Gives the calling thread nice value `nice` (best effort: a failure is
/// logged and the thread keeps its priority).
pub fn lower_current_thread(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{set_thread_priority_and_policy, thread_native_id};
        let Some(priority) = priority_for_nice(nice) else {
            return;
        };
        if let Err(error) = set_thread_priority_and_policy(thread_native_id(), priority, normal()) {
            tracing::warn!(%nice, ?error, "could not lower this thread's CPU priority");
        }
    }
}

#[cfg(target_os = "linux")]
fn normal() -> thread_priority::ThreadSchedulePolicy {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
    ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
}

/// thread_priority maps its 0..=99 onto nice 19..=-20: the value whose nice is
/// closest to `nice`.
#[cfg(target_os = "linux")]
fn priority_for_nice(nice: i32) -> Option<thread_priority::ThreadPriority> {
    use thread_priority::ThreadPriority;
    (0u8..=99)
        .filter_map(|value| {
            let priority = ThreadPriority::Crossplatform(value.try_into().ok()?);
            let mapped = priority.to_posix(normal()).ok()?;
            Some(((mapped - nice).abs(), priority))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, priority)| priority)
}

/// The calling thread's nice value (Linux; 0 elsewhere or if unreadable).
pub fn current_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // Field 19 of /proc/thread-self/stat is the nice value; the command
        // name (field 2) is in parentheses and may hold spaces.
        if let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") {
            if let Some((_, rest)) = stat.rsplit_once(')') {
                if let Some(nice) = rest.split_whitespace().nth(16) {
                    return nice.parse().unwrap_or(0);
                }
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lowered_threads_run_at_their_nice_value_and_others_do_not() {
        // The tests may themselves run niced (a CI runner): lowering never raises.
        let base = current_nice();
        let pool = Lowered::new("test-lowered", 10, 2).unwrap();
        let inside = pool.spawn_blocking(current_nice).await.unwrap();
        assert_eq!(inside, base.max(10));
        let outside = tokio::task::spawn_blocking(current_nice).await.unwrap();
        assert_eq!(outside, base);
        // Dropped inside an async context without panicking.
        drop(pool);
    }

    #[test]
    fn threads_inherit_the_nice_value_of_the_thread_that_starts_them() {
        let base = current_nice();
        let grandchild = std::thread::spawn(|| {
            lower_current_thread(7);
            std::thread::spawn(current_nice).join().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(grandchild, base.max(7));
        assert_eq!(current_nice(), base, "the caller keeps its own");
    }

    #[test]
    fn nice_values_outside_the_range_are_refused() {
        let error = Lowered::new("bad", 20, 1).unwrap_err();
        assert!(error.to_string().contains("0..=19"), "{error}");
        assert!(Lowered::new("bad", -1, 1).is_err());
        // 0 is allowed: the pool then runs at the process's priority.
        let pool = Lowered::new("same", 0, 1).unwrap();
        assert_eq!(pool.nice(), 0);
    }
}
