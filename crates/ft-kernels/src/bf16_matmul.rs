//! `y = x·Wᵀ` with a frozen `W` in bf16 and f32 accumulation, for training on CPUs with
//! AVX512_BF16 (`vdpbf16ps`: sixteen lanes of two bf16 products each, twice the multiply-adds
//! of an f32 FMA per instruction).
//!
//! `W` is packed once, at the first product: panels of [`PANEL`] output columns in which each
//! pair of inputs sits side by side per column, the order `vdpbf16ps` reads. Packing once is
//! also what makes short sequences cheap: gemm re-packs an f32 weight on every call, which at
//! 60 tokens costs as much as the product. The activations are rounded to bf16 per call (to
//! nearest even, as the instruction's inputs), the products are exact in f32, and the sums
//! are f32 in input order; [`Bf16Matrix::matmul_reference`] is the same arithmetic in plain
//! code, which the kernel is tested against.

use candle_core::Result;

use crate::host::SharedOut;

/// Output columns per panel: two 16-lane f32 vectors.
pub const PANEL: usize = 32;
/// Activation rows per kernel call.
const ROWS: usize = 8;

/// f32 → bf16 bits, rounded to nearest even (NaN stays NaN).
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// bf16 bits → f32 (exact).
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A frozen `(rows, cols)` matrix in bf16, packed for `x·Wᵀ`.
#[derive(Debug, Clone)]
pub struct Bf16Matrix {
    rows: usize,
    cols: usize,
    /// Input pairs (`cols` rounded up to even, halved).
    pairs: usize,
    /// `[panel][pair][column of the panel][2]`.
    data: Vec<u16>,
}

impl Bf16Matrix {
    /// Packs the `(rows, cols)` matrix whose element `(r, c)` is `at(r, c)`.
    pub fn pack(rows: usize, cols: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let pairs = cols.div_ceil(2);
        let panels = rows.div_ceil(PANEL);
        let mut data = vec![0u16; panels * pairs * PANEL * 2];
        for panel in 0..panels {
            for q in 0..pairs {
                let base = (panel * pairs + q) * PANEL * 2;
                for j in 0..PANEL {
                    let r = panel * PANEL + j;
                    if r >= rows {
                        break;
                    }
                    for t in 0..2 {
                        let c = 2 * q + t;
                        if c < cols {
                            data[base + 2 * j + t] = to_bf16(at(r, c));
                        }
                    }
                }
            }
        }
        Self {
            rows,
            cols,
            pairs,
            data,
        }
    }

    /// `W` from a row-major `(rows, cols)` f32 slice.
    pub fn from_rows(w: &[f32], rows: usize, cols: usize) -> Self {
        Self::pack(rows, cols, |r, c| w[r * cols + c])
    }

    /// `Wᵀ` of a row-major `(rows, cols)` f32 slice: a `(cols, rows)` matrix, for `dY·W`.
    pub fn from_rows_transposed(w: &[f32], rows: usize, cols: usize) -> Self {
        Self::pack(cols, rows, |r, c| w[c * cols + r])
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    fn weight(&self, r: usize, c: usize) -> u16 {
        let (panel, j) = (r / PANEL, r % PANEL);
        self.data[((panel * self.pairs + c / 2) * PANEL + j) * 2 + c % 2]
    }

    /// The activations as bf16 pairs, `(m, pairs · 2)`, odd widths padded with zero.
    fn round_activations(&self, x: &[f32], m: usize) -> Vec<u16> {
        let width = self.pairs * 2;
        let mut out = vec![0u16; m * width];
        for (row, values) in out.chunks_exact_mut(width).zip(x.chunks_exact(self.cols)) {
            for (o, &v) in row.iter_mut().zip(values) {
                *o = to_bf16(v);
            }
        }
        out
    }

    fn check(&self, x: &[f32], m: usize) -> Result<()> {
        if x.len() != m * self.cols {
            candle_core::bail!(
                "bf16 matmul: {} inputs for {m} rows of {}",
                x.len(),
                self.cols
            );
        }
        Ok(())
    }

    /// `x: (m, cols)` row-major → `(m, rows)`: the plain code, in the kernel's order (pairs
    /// summed in f32, pair by pair).
    pub fn matmul_reference(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        self.check(x, m)?;
        let a = self.round_activations(x, m);
        let width = self.pairs * 2;
        let mut y = vec![0f32; m * self.rows];
        for i in 0..m {
            for r in 0..self.rows {
                let mut acc = 0f32;
                for q in 0..self.pairs {
                    let (c0, c1) = (2 * q, 2 * q + 1);
                    let w1 = if c1 < self.cols {
                        self.weight(r, c1)
                    } else {
                        0
                    };
                    let p0 = from_bf16(a[i * width + c0]) * from_bf16(self.weight(r, c0));
                    let p1 = from_bf16(a[i * width + c1]) * from_bf16(w1);
                    acc += p0 + p1;
                }
                y[i * self.rows + r] = acc;
            }
        }
        Ok(y)
    }

    /// `x: (m, cols)` row-major → `(m, rows)`, panels split over the worker threads, with the
    /// AVX512_BF16 kernel (the reference where the CPU lacks it).
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        if !available() {
            return self.matmul_reference(x, m);
        }
        self.check(x, m)?;
        let a = self.round_activations(x, m);
        let mut y = vec![0f32; m * self.rows];
        let out = SharedOut(y.as_mut_ptr());
        let panels = self.rows.div_ceil(PANEL);
        crate::threads::parallel_for(panels, &|panel| {
            let columns = PANEL.min(self.rows - panel * PANEL);
            let weights = &self.data[panel * self.pairs * PANEL * 2..][..self.pairs * PANEL * 2];
            for first in (0..m).step_by(ROWS) {
                let n = ROWS.min(m - first);
                let tile = Tile {
                    a: &a[first * self.pairs * 2..(first + n) * self.pairs * 2],
                    weights,
                    pairs: self.pairs,
                    out: out.at(first * self.rows + panel * PANEL),
                    out_stride: self.rows,
                    columns,
                };
                // SAFETY: `available()` found the features; the tile writes rows
                // first..first + n, columns of this panel only, inside `y`.
                unsafe { tile.run(n) };
            }
        });
        Ok(y)
    }
}

/// `x: (.., cols)` f32 (CPU) → `x·Wᵀ: (.., rows)`, outside any graph (the training block's
/// hand-written backward calls it for its frozen products).
pub fn bf16_linear(x: &candle_core::Tensor, w: &Bf16Matrix) -> Result<candle_core::Tensor> {
    let mut dims = x.dims().to_vec();
    match dims.last_mut() {
        Some(last) if *last == w.cols() => *last = w.rows(),
        _ => candle_core::bail!(
            "bf16 linear: input {:?} for a weight of {} inputs",
            x.dims(),
            w.cols()
        ),
    }
    let m = x.elem_count() / w.cols().max(1);
    let y = crate::host::with_f32(x, "bf16 linear", |values| w.matmul(values, m))?;
    candle_core::Tensor::from_vec(y, dims, x.device())
}

/// Whether this CPU runs the AVX512_BF16 kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Up to [`ROWS`] activation rows against one panel.
struct Tile<'a> {
    a: &'a [u16],
    weights: &'a [u16],
    pairs: usize,
    out: *mut f32,
    out_stride: usize,
    columns: usize,
}

impl Tile<'_> {
    /// # Safety
    /// AVX512F and AVX512_BF16 are available; `out` has `n` rows of `out_stride` with
    /// `columns` writable values each.
    unsafe fn run(&self, n: usize) {
        #[cfg(target_arch = "x86_64")]
        match n {
            1 => x86::tile::<1>(self),
            2 => x86::tile::<2>(self),
            3 => x86::tile::<3>(self),
            4 => x86::tile::<4>(self),
            5 => x86::tile::<5>(self),
            6 => x86::tile::<6>(self),
            7 => x86::tile::<7>(self),
            _ => x86::tile::<8>(self),
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = n;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #![allow(unsafe_op_in_unsafe_fn)]
    use std::arch::x86_64::*;

    use super::{Tile, PANEL};

    /// `R` rows × one panel: per input pair, two panel vectors and one broadcast pair per row.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile<const R: usize>(t: &Tile) {
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        let width = t.pairs * 2;
        let a = t.a.as_ptr();
        let w = t.weights.as_ptr();
        for q in 0..t.pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(q * PANEL * 2).cast()));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(w.add(q * PANEL * 2 + 32).cast()));
            for r in 0..R {
                let pair = (a.add(r * width + 2 * q) as *const i32).read_unaligned();
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc0[r] = _mm512_dpbf16_ps(acc0[r], x, b0);
                acc1[r] = _mm512_dpbf16_ps(acc1[r], x, b1);
            }
        }
        let (low, high) = if t.columns >= PANEL {
            (0xffffu16, 0xffffu16)
        } else if t.columns >= 16 {
            (0xffff, ((1u32 << (t.columns - 16)) - 1) as u16)
        } else {
            (((1u32 << t.columns) - 1) as u16, 0)
        };
        for r in 0..R {
            let out = t.out.add(r * t.out_stride);
            _mm512_mask_storeu_ps(out, low, acc0[r]);
            _mm512_mask_storeu_ps(out.add(16), high, acc1[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
    }

    #[test]
    fn kernel_equals_the_reference_for_ragged_shapes() -> Result<()> {
        // Widths that are not multiples of the panel, an odd input width, 1 to 17 rows.
        for (rows, cols) in [(576, 576), (192, 576), (1536, 576), (576, 1536), (45, 33)] {
            let w = values(rows * cols, rows as u32);
            let packed = Bf16Matrix::from_rows(&w, rows, cols);
            for m in [1, 3, 8, 9, 17] {
                let x = values(m * cols, m as u32 + 7);
                let want = packed.matmul_reference(&x, m)?;
                let got = packed.matmul(&x, m)?;
                for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                    let (b, o) = (i / rows, i % rows);
                    let scale: f32 = (0..cols)
                        .map(|c| (x[b * cols + c] * w[o * cols + c]).abs())
                        .sum();
                    assert!(
                        (g - r).abs() <= 1e-5 * scale.max(1e-3),
                        "{rows}x{cols} m {m} at {i}: {g} vs {r}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn reference_is_the_f32_product_within_bf16_rounding() -> Result<()> {
        let (rows, cols, m) = (40, 70, 3);
        let w = values(rows * cols, 3);
        let x = values(m * cols, 4);
        let packed = Bf16Matrix::from_rows(&w, rows, cols);
        let transposed = Bf16Matrix::from_rows_transposed(&w, rows, cols);
        let y = packed.matmul_reference(&x, m)?;
        for b in 0..m {
            for o in 0..rows {
                let exact: f32 = (0..cols).map(|c| x[b * cols + c] * w[o * cols + c]).sum();
                let scale: f32 = (0..cols)
                    .map(|c| (x[b * cols + c] * w[o * cols + c]).abs())
                    .sum();
                // Two roundings of 2^-9 each per product.
                assert!((y[b * rows + o] - exact).abs() <= 2.0 * 2f32.powi(-8) * scale);
            }
        }
        // The transposed packing computes dY·W.
        let dy = values(m * rows, 5);
        let dx = transposed.matmul_reference(&dy, m)?;
        for b in 0..m {
            for c in 0..cols {
                let exact: f32 = (0..rows).map(|o| dy[b * rows + o] * w[o * cols + c]).sum();
                let scale: f32 = (0..rows)
                    .map(|o| (dy[b * rows + o] * w[o * cols + c]).abs())
                    .sum();
                assert!((dx[b * cols + c] - exact).abs() <= 2.0 * 2f32.powi(-8) * scale);
            }
        }
        Ok(())
    }
}
