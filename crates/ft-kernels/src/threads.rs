//! The worker threads every hot kernel runs on: one pool per process, sized by
//! [`set_num_threads`] (the CLI's `--threads`), by default one thread per physical core. The
//! thread that calls a kernel is one of them; see [`crate::spin_pool`] for why the others spin.

use std::sync::{Arc, RwLock};

use candle_core::Result;

use crate::spin_pool::SpinPool;

static POOL: RwLock<Option<Arc<SpinPool>>> = RwLock::new(None);

thread_local! {
    /// A pool of this thread's own, set by [`use_own_threads`]: kernels called from this thread
    /// run on it instead of the process pool.
    static OWN_POOL: std::cell::RefCell<Option<Arc<SpinPool>>> = const { std::cell::RefCell::new(None) };
}

/// Makes the kernels called from the current thread run on `threads` threads of its own (this
/// one included; 1 = this thread alone) instead of the process pool. `ft serve` trains on such a
/// thread, so that a fine-tuning job takes `--train-threads` cores and leaves the rest of the
/// pool to the requests.
pub fn use_own_threads(threads: usize) -> Result<()> {
    let pool = start(threads.max(1))?;
    OWN_POOL.with(|own| *own.borrow_mut() = Some(pool));
    Ok(())
}

/// Physical cores (hyper-threads share one core's units; the kernels are bound by them).
pub fn default_num_threads() -> usize {
    num_cpus::get_physical().max(1)
}

fn start(threads: usize) -> Result<Arc<SpinPool>> {
    SpinPool::new(threads)
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
    // candle's f32 matmul sizes its split from RAYON_NUM_THREADS, and without it reads
    // /proc/cpuinfo on every call.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // candle's elementwise pool spins 25 000 rounds (about a millisecond) after every op: on
    // two cores that spinning thread takes the core gemm's next split needs (a training step
    // ran ~7 % faster with 1 000). A user's own setting wins.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
    let pool = start(threads)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(pool);
    Ok(())
}

fn pool() -> Arc<SpinPool> {
    if let Some(own) = OWN_POOL.with(|own| own.borrow().clone()) {
        return own;
    }
    if let Some(pool) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return pool.clone();
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = slot.as_ref() {
        return pool.clone();
    }
    // Without threads to spare, the caller runs every task itself.
    let pool = start(default_num_threads())
        .or_else(|_| start(1))
        .expect("a pool without workers starts no thread");
    *slot = Some(pool.clone());
    pool
}

/// Threads the kernels use, the caller included.
pub fn num_threads() -> usize {
    pool().threads()
}

/// Runs `f(0) … f(tasks - 1)` on every kernel thread (the caller included) and returns when
/// all have run.
pub fn parallel_for(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    pool().run(tasks, f);
}
