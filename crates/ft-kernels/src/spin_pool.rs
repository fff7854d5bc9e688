//! A spinning worker pool for the many tiny parallel regions of a decode step, as ggml's CPU
//! backend has: one decoded token runs ~200 matrix products of 20-60 µs each, and a pool whose
//! idle threads sleep (rayon's) spends a good part of that waking them. Here idle workers spin
//! for a short while, then yield, then park; a region hands out task indices through one
//! atomic counter and the caller works too.
//!
//! One region runs at a time. A region started while another runs (from another thread, or
//! from inside a task) runs serially on its caller instead of waiting: never a deadlock.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins, then yields, before it parks.
const SPIN: Duration = Duration::from_micros(100);
const YIELD: Duration = Duration::from_micros(300);

type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped to publish a region; workers wait for it to change.
    epoch: AtomicU64,
    /// The region's task function and task count, written before `epoch` is bumped.
    job: UnsafeCell<Option<(*const Task, usize)>>,
    /// The next task index to hand out.
    next: AtomicUsize,
    /// Workers that have not yet finished the current region.
    busy: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the one caller holding `running`, before the Release bump
// of `epoch`, and read by workers after an Acquire load of `epoch`; the caller does not return
// (so the closure outlives every read) until `busy` is zero.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// The pool: `workers` threads beside the caller.
pub struct SpinPool {
    shared: Arc<Shared>,
    running: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

impl SpinPool {
    /// A pool of `threads` in all (the caller included): `threads - 1` workers.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = Self {
            shared: shared.clone(),
            running: Mutex::new(()),
            workers: Vec::new(),
        };
        for i in 1..threads.max(1) {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ft-spin-{i}"))
                .spawn(move || worker(&shared))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads in all, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0) … f(tasks - 1)` over the workers and the caller; returns when all are done.
    ///
    /// # Panics
    /// When a task panicked (after every task has finished).
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.running.try_lock() {
            Ok(guard) if !self.workers.is_empty() && tasks > 1 => guard,
            _ => {
                (0..tasks).for_each(f);
                return;
            }
        };
        let shared = &*self.shared;
        // SAFETY: see `Shared`; the lifetime is erased only until `busy` reaches zero below.
        let erased: *const Task =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(f) };
        unsafe { *shared.job.get() = Some((erased, tasks)) };
        shared.next.store(0, Ordering::Relaxed);
        shared.busy.store(self.workers.len(), Ordering::Relaxed);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.parked.load(Ordering::SeqCst) > 0 {
            let _lock = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        let result = catch_unwind(AssertUnwindSafe(|| claim_tasks(shared, f, tasks)));
        // A worker still on a task may have lost its core (more runnable threads than
        // cores): after a short spin, yield it the core instead of burning it.
        let mut spins = 0u32;
        while shared.busy.load(Ordering::Acquire) != 0 {
            spins = spins.saturating_add(1);
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        unsafe { *shared.job.get() = None };
        drop(guard);
        if result.is_err() || shared.panicked.swap(false, Ordering::SeqCst) {
            panic!("a kernel task panicked");
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _lock = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

fn claim_tasks(shared: &Shared, f: &(dyn Fn(usize) + Sync), tasks: usize) {
    loop {
        let task = shared.next.fetch_add(1, Ordering::Relaxed);
        if task >= tasks {
            return;
        }
        f(task);
    }
}

fn worker(shared: &Shared) {
    // Not a fresh load: a region may be published before this thread first runs.
    let mut seen = 0;
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            let now = shared.epoch.load(Ordering::Acquire);
            if now != seen {
                seen = now;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let idle = idle_since.elapsed();
            if idle < SPIN {
                std::hint::spin_loop();
            } else if idle < YIELD {
                std::thread::yield_now();
            } else {
                let mut lock = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.parked.fetch_add(1, Ordering::SeqCst);
                while shared.epoch.load(Ordering::SeqCst) == seen {
                    lock = shared.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
                }
                shared.parked.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the epoch changed, so `job` holds the current region until `busy` is zero.
        if let Some((f, tasks)) = unsafe { *shared.job.get() } {
            let f = unsafe { &*f };
            if catch_unwind(AssertUnwindSafe(|| claim_tasks(shared, f, tasks))).is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        shared.busy.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_regions() {
        let pool = SpinPool::new(3).expect("threads start");
        for tasks in [0usize, 1, 2, 7, 100] {
            for _ in 0..50 {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(tasks, &|t| {
                    counts[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn a_region_inside_a_task_runs_serially() {
        let pool = SpinPool::new(2).expect("threads start");
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn workers_park_and_wake() {
        let pool = SpinPool::new(2).expect("threads start");
        std::thread::sleep(YIELD * 3);
        let total = AtomicUsize::new(0);
        pool.run(10, &|_| {
            total.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 10);
    }
}
