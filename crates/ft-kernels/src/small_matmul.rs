//! f32 products of a few activation rows with a frozen row-major weight, without packing it:
//! `x·Wᵀ` as dot products along `W`'s rows (contiguous), and `dY·W` as rows of `W` scaled and
//! added. gemm packs the whole weight on every call, which for a short sequence (the seed
//! demo's 60 tokens, the LM head's 49,152 rows) costs as much as the product, and splits it
//! over rayon, whose hand-offs cost as much again at these sizes.
//!
//! AVX-512 kernels, split over the worker threads; `None` where the CPU lacks AVX-512 (callers
//! keep gemm). Sums are f32 in another order than gemm's; the tests bound the difference
//! against a plain loop.

use candle_core::{Result, Tensor};

use crate::host::{with_f32, SharedOut};

/// Most activation rows for which these kernels beat gemm (measured on SmolLM2's shapes).
pub const MAX_ROWS: usize = 64;

/// Whether this CPU runs the kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Weight rows per task of [`x_wt`].
const ROWS_PER_TASK: usize = 64;
/// Output columns per task of [`x_w`]: two vectors.
const COLS_PER_TASK: usize = 32;

/// `x: (m, k)` · `Wᵀ` for `w: (n, k)`, both row-major → `(m, n)`; `None` without AVX-512.
pub fn x_wt(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Option<Vec<f32>> {
    if !available() || x.len() != m * k || w.len() != n * k {
        return None;
    }
    let mut y = vec![0f32; m * n];
    let out = SharedOut(y.as_mut_ptr());
    crate::threads::parallel_for(n.div_ceil(ROWS_PER_TASK), &|t| {
        let rows = t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n);
        // SAFETY: AVX-512 is available; this task writes columns `rows` of y only.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::x_wt(x, m, w, k, rows, out.at(0), n)
        };
    });
    Some(y)
}

/// `dy: (m, n)` · `w: (n, k)`, row-major → `(m, k)`; `None` without AVX-512.
pub fn x_w(dy: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Option<Vec<f32>> {
    if !available() || dy.len() != m * n || w.len() != n * k {
        return None;
    }
    let mut y = vec![0f32; m * k];
    let out = SharedOut(y.as_mut_ptr());
    crate::threads::parallel_for(k.div_ceil(COLS_PER_TASK), &|t| {
        let cols = t * COLS_PER_TASK..((t + 1) * COLS_PER_TASK).min(k);
        // SAFETY: AVX-512 is available; this task writes columns `cols` of y only.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::x_w(dy, m, w, n, k, cols, out.at(0))
        };
    });
    Some(y)
}

/// `x: (m, k)` · `wᵀ` for `w: (n, k)` (f32, CPU) when `m ≤ MAX_ROWS` and the kernels run here;
/// `None` otherwise (the caller multiplies with gemm).
pub fn x_wt_tensor(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let ((m, k), (n, kw)) = (x.dims2()?, w.dims2()?);
    if m > MAX_ROWS || k != kw || !usable(x) || !usable(w) {
        return Ok(None);
    }
    let y = with_f32(x, "x_wt", |xs| {
        with_f32(w, "x_wt", |ws| Ok(x_wt(xs, m, ws, n, k)))
    })?;
    y.map(|y| Tensor::from_vec(y, (m, n), x.device()))
        .transpose()
}

/// `dy: (m, n)` · `w: (n, k)` (f32, CPU) when `m ≤ MAX_ROWS` and the kernels run here; `None`
/// otherwise.
pub fn x_w_tensor(dy: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let ((m, n), (nw, k)) = (dy.dims2()?, w.dims2()?);
    if m > MAX_ROWS || n != nw || !usable(dy) || !usable(w) {
        return Ok(None);
    }
    let y = with_f32(dy, "x_w", |ds| {
        with_f32(w, "x_w", |ws| Ok(x_w(ds, m, ws, n, k)))
    })?;
    y.map(|y| Tensor::from_vec(y, (m, k), dy.device()))
        .transpose()
}

fn usable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && available()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #![allow(unsafe_op_in_unsafe_fn)]
    // Register tiles indexed by (activation row, weight row): plain index loops read clearest.
    #![allow(clippy::needless_range_loop)]
    use std::arch::x86_64::*;

    /// Lanes of the last, partial vector of a length-`k` row.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tail_mask(k: usize) -> __mmask16 {
        let rem = k % 16;
        if rem == 0 {
            0xffff
        } else {
            ((1u32 << rem) - 1) as __mmask16
        }
    }

    /// Columns `rows` of `y = x·Wᵀ`: four weight rows by four activation rows at a time, each
    /// output a dot product along k reduced once at the end.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn x_wt(
        x: &[f32],
        m: usize,
        w: &[f32],
        k: usize,
        rows: std::ops::Range<usize>,
        y: *mut f32,
        n: usize,
    ) {
        let steps = k.div_ceil(16);
        let last = tail_mask(k);
        let mut r = rows.start;
        while r < rows.end {
            let nr = 4.min(rows.end - r);
            let wp: [*const f32; 4] =
                std::array::from_fn(|j| w.as_ptr().add((r + j.min(nr - 1)) * k));
            let mut i = 0;
            while i < m {
                let ni = 4.min(m - i);
                let xp: [*const f32; 4] =
                    std::array::from_fn(|a| x.as_ptr().add((i + a.min(ni - 1)) * k));
                let mut acc = [[_mm512_setzero_ps(); 4]; 4];
                for s in 0..steps {
                    let mask = if s + 1 == steps { last } else { 0xffff };
                    let ws: [__m512; 4] =
                        std::array::from_fn(|j| _mm512_maskz_loadu_ps(mask, wp[j].add(16 * s)));
                    for a in 0..4 {
                        let xv = _mm512_maskz_loadu_ps(mask, xp[a].add(16 * s));
                        for j in 0..4 {
                            acc[a][j] = _mm512_fmadd_ps(xv, ws[j], acc[a][j]);
                        }
                    }
                }
                for a in 0..ni {
                    for j in 0..nr {
                        *y.add((i + a) * n + r + j) = _mm512_reduce_add_ps(acc[a][j]);
                    }
                }
                i += ni;
            }
            r += nr;
        }
    }

    /// Columns `cols` (at most 32) of `y = dY·W`: four activation rows at a time, the rows of
    /// W scaled by dY and added, in order of n.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn x_w(
        dy: &[f32],
        m: usize,
        w: &[f32],
        n: usize,
        k: usize,
        cols: std::ops::Range<usize>,
        y: *mut f32,
    ) {
        let width = cols.end - cols.start;
        let mask_of = |from: usize| -> __mmask16 {
            let lanes = width.saturating_sub(from).min(16);
            if lanes == 16 {
                0xffff
            } else {
                ((1u32 << lanes) - 1) as __mmask16
            }
        };
        let (m0, m1) = (mask_of(0), mask_of(16));
        let mut i = 0;
        while i < m {
            let ni = 4.min(m - i);
            let mut acc = [[_mm512_setzero_ps(); 2]; 4];
            for row in 0..n {
                let wr = w.as_ptr().add(row * k + cols.start);
                let w0 = _mm512_maskz_loadu_ps(m0, wr);
                let w1 = _mm512_maskz_loadu_ps(m1, wr.add(16));
                for a in 0..4 {
                    let d = _mm512_set1_ps(*dy.as_ptr().add((i + a.min(ni - 1)) * n + row));
                    acc[a][0] = _mm512_fmadd_ps(d, w0, acc[a][0]);
                    acc[a][1] = _mm512_fmadd_ps(d, w1, acc[a][1]);
                }
            }
            for a in 0..ni {
                let out = y.add((i + a) * k + cols.start);
                _mm512_mask_storeu_ps(out, m0, acc[a][0]);
                _mm512_mask_storeu_ps(out.add(16), m1, acc[a][1]);
            }
            i += ni;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    #[test]
    fn both_products_equal_plain_loops_for_ragged_shapes() {
        if !available() {
            assert!(x_wt(&[0.0; 4], 1, &[0.0; 4], 1, 4).is_none());
            return;
        }
        for (n, k) in [
            (576, 576),
            (192, 576),
            (1536, 576),
            (576, 1536),
            (37, 45),
            (5, 3),
        ] {
            let w = values(n * k, (n + k) as u32);
            for m in [1, 3, 4, 7, 60] {
                let x = values(m * k, m as u32);
                let y = x_wt(&x, m, &w, n, k).expect("available");
                for i in 0..m {
                    for r in 0..n {
                        let terms = (0..k).map(|c| x[i * k + c] * w[r * k + c]);
                        let (want, scale) =
                            terms.fold((0f32, 0f32), |(s, a), t| (s + t, a + t.abs()));
                        let got = y[i * n + r];
                        assert!(
                            (got - want).abs() <= 1e-5 * scale.max(1e-3),
                            "x_wt {n}x{k} m {m}: {got} vs {want}"
                        );
                    }
                }
                let dy = values(m * n, m as u32 + 99);
                let dx = x_w(&dy, m, &w, n, k).expect("available");
                for i in 0..m {
                    for c in 0..k {
                        let terms = (0..n).map(|r| dy[i * n + r] * w[r * k + c]);
                        let (want, scale) =
                            terms.fold((0f32, 0f32), |(s, a), t| (s + t, a + t.abs()));
                        let got = dx[i * k + c];
                        assert!(
                            (got - want).abs() <= 1e-5 * scale.max(1e-3),
                            "x_w {n}x{k} m {m}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
