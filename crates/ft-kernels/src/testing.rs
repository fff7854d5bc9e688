//! Comparisons shared by the kernels' unit tests.

use candle_core::{Result, Tensor};

/// Fails unless `max |actual − expected| <= tol · max |expected|` (relative to the tensor's
/// scale, so near-zero elements do not dominate).
pub(crate) fn assert_close(actual: &Tensor, expected: &Tensor, tol: f32) -> Result<()> {
    assert_eq!(actual.dims(), expected.dims(), "shapes differ");
    let diff = (actual - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-12);
    assert!(
        diff <= tol * scale,
        "differ by {diff} (relative {}) > {tol}",
        diff / scale
    );
    assert!(diff.is_finite(), "not finite");
    Ok(())
}

/// The gradient of `sum(y · upstream)` with respect to `x`.
pub(crate) fn grad_of(y: &Tensor, upstream: &Tensor, x: &Tensor) -> Result<Tensor> {
    let grads = (y * upstream)?.sum_all()?.backward()?;
    match grads.get(x) {
        Some(g) => Ok(g.clone()),
        None => candle_core::bail!("no gradient reached the input"),
    }
}

/// `n` deterministic pseudo-random values in [-1, 1] (xorshift from `seed`).
pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 20001) as f32 / 10000.0 - 1.0
        })
        .collect()
}
