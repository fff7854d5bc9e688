//! Which backward the training ops record: their fused CPU kernels with a hand-written
//! backward (the default), or the composition of candle primitives that candle's autograd
//! differentiates (the old path, kept as the reference the fused one is tested against).
//!
//! The choice is per thread, because an op is chosen when the forward runs on the caller's
//! thread, and tests comparing the two paths run side by side.

use std::cell::Cell;

thread_local! {
    static COMPOSED: Cell<bool> = const { Cell::new(false) };
}

/// Whether ops on this thread record the composed (candle autograd) backward.
pub fn composed() -> bool {
    COMPOSED.with(Cell::get)
}

/// Runs `f` with the composed backward on this thread, then restores the previous choice.
pub fn with_composed<R>(f: impl FnOnce() -> R) -> R {
    let before = COMPOSED.with(|c| c.replace(true));
    let out = f();
    COMPOSED.with(|c| c.set(before));
    out
}
