//! The worker threads every hot kernel runs on: one pool per process, sized by
//! [`set_num_threads`] (the CLI's `--threads`), by default one thread per physical core.
//!
//! Kernels split their work with rayon inside this pool. Callers that run many small kernels
//! in a row (a decode step) should wrap the whole step in [`install`], so each kernel's split
//! is a cheap fork inside the pool instead of a hand-off from a foreign thread.

use std::sync::{Arc, RwLock};

use candle_core::Result;
use rayon::{ThreadPool, ThreadPoolBuilder};

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

/// Physical cores (hyper-threads share one core's units; the kernels are bound by them).
pub fn default_num_threads() -> usize {
    num_cpus::get_physical().max(1)
}

fn build(threads: usize) -> Result<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("ft-worker-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| candle_core::Error::Msg(format!("cannot start {threads} worker threads: {e}")))
}

/// Sets the number of threads the kernels use (0 = the default, physical cores). Replaces the
/// pool; work already running finishes on the old one. Also sets `RAYON_NUM_THREADS` for
/// candle's own ops, so call it at start-up, before other threads read the environment.
pub fn set_num_threads(threads: usize) -> Result<()> {
    let threads = if threads == 0 {
        default_num_threads()
    } else {
        threads
    };
    let pool = build(threads)?;
    // candle's f32 matmul sizes its split from RAYON_NUM_THREADS, and without it reads
    // /proc/cpuinfo on every call. Set here, before the caller starts other threads.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(pool);
    Ok(())
}

/// The pool, started with the default size on first use.
pub fn pool() -> Arc<ThreadPool> {
    if let Some(pool) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return pool.clone();
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = slot.as_ref() {
        return pool.clone();
    }
    let threads = default_num_threads();
    let pool = match build(threads) {
        Ok(pool) => pool,
        // A pool of one thread cannot fail for lack of threads to spawn beyond the first.
        Err(_) => build(1).expect("a one-thread pool starts"),
    };
    *slot = Some(pool.clone());
    pool
}

/// Threads in the pool.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Runs `f` on the pool (directly when already on one of its threads).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    pool().install(f)
}
