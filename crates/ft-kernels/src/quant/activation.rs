//! Activations quantized to 16 bits per value, in blocks matching the weight type: 32 values
//! for the 32-wide types, 256 for the K-quants (the block shapes of ggml's Q8_1 and Q8_K).
//!
//! Why 16 bits where ggml uses 8: with 8-bit activations the SmolLM2 GGUF's mean NLL moved by
//! up to 0.076 nats from the f32 path and all four greedy parity answers changed (measured);
//! with 16 bits the activations' rounding is 256 times smaller, and the kernels take one more
//! widening step per block (`vpmaddwd`/`vpdpwssd` on 16-bit pairs instead of `vpmaddubsw`/
//! `vpdpbusd` on bytes). Scales are f32: ours, never written to a file.

/// Rows of activations, each quantized symmetrically per block: `x ≈ scale · q`,
/// `q ∈ [-32767, 32767]`.
#[derive(Debug, Clone, Default)]
pub struct QuantizedRows {
    /// Values per block: 32 or 256.
    pub block_len: usize,
    /// Values per row.
    pub cols: usize,
    /// `rows · cols` quantized values.
    pub qs: Vec<i16>,
    /// One scale per block.
    pub scales: Vec<f32>,
    /// Per 32-block: `scale · Σ q` (folds a weight block's minimum through the activations).
    /// Empty for 256-blocks.
    pub sums: Vec<f32>,
    /// Per 16 values of a 256-block: `Σ q` (for K-quant minimums and offsets). Empty for
    /// 32-blocks.
    pub bsums: Vec<i32>,
}

impl QuantizedRows {
    /// Quantizes `rows` rows of `cols` values from `x` (row-major) in blocks of `block_len`
    /// (32 or 256; `cols` must be a multiple of it).
    pub fn quantize(x: &[f32], rows: usize, cols: usize, block_len: usize) -> Self {
        let mut out = Self::default();
        out.quantize_into(x, rows, cols, block_len);
        out
    }

    /// As [`QuantizedRows::quantize`], reusing this value's buffers.
    pub fn quantize_into(&mut self, x: &[f32], rows: usize, cols: usize, block_len: usize) {
        debug_assert!(cols.is_multiple_of(block_len) && x.len() >= rows * cols);
        let blocks = rows * cols / block_len;
        self.block_len = block_len;
        self.cols = cols;
        self.qs.resize(rows * cols, 0);
        self.scales.resize(blocks, 0.0);
        if block_len == 32 {
            self.sums.resize(blocks, 0.0);
            self.bsums.clear();
        } else {
            self.sums.clear();
            self.bsums.resize(rows * cols / 16, 0);
        }
        quantize_blocks_dispatch(self, &x[..rows * cols]);
    }

    /// Blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols / self.block_len
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> XRow<'_> {
        let blocks = self.blocks_per_row();
        let sub = |v: usize| r * v..(r + 1) * v;
        XRow {
            qs: &self.qs[sub(self.cols)],
            scales: &self.scales[sub(blocks)],
            sums: if self.sums.is_empty() {
                &[]
            } else {
                &self.sums[sub(blocks)]
            },
            bsums: if self.bsums.is_empty() {
                &[]
            } else {
                &self.bsums[sub(self.cols / 16)]
            },
        }
    }
}

/// One row of [`QuantizedRows`].
#[derive(Debug, Clone, Copy)]
pub struct XRow<'a> {
    /// The quantized values.
    pub qs: &'a [i16],
    /// One scale per block.
    pub scales: &'a [f32],
    /// Per 32-block `scale · Σ q` (empty for 256-blocks).
    pub sums: &'a [f32],
    /// Per 16 values `Σ q` (empty for 32-blocks).
    pub bsums: &'a [i32],
}

/// The largest quantized magnitude (symmetric, so negation never overflows).
const Q_MAX: f32 = 32767.0;

fn quantize_blocks_dispatch(out: &mut QuantizedRows, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::dispatch::isa() != crate::quant::dispatch::Isa::Scalar {
        // SAFETY: the dispatcher only reports AVX2 when the CPU has it.
        unsafe { quantize_blocks_avx2(out, x) };
        return;
    }
    quantize_blocks(out, x);
}

/// The same loop compiled with AVX2 enabled, so that LLVM vectorizes it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_blocks_avx2(out: &mut QuantizedRows, x: &[f32]) {
    quantize_blocks(out, x);
}

/// The plain loop (the reference, and the body the AVX2 copy is compiled from).
#[inline(always)]
fn quantize_blocks(out: &mut QuantizedRows, x: &[f32]) {
    let n = out.block_len;
    for (b, (values, qs)) in x
        .chunks_exact(n)
        .zip(out.qs.chunks_exact_mut(n))
        .enumerate()
    {
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / Q_MAX;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (q, v) in qs.iter_mut().zip(values) {
            *q = (v * inverse).round().clamp(-Q_MAX, Q_MAX) as i16;
        }
        out.scales[b] = scale;
        if n == 32 {
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            out.sums[b] = scale * sum as f32;
        } else {
            for (j, group) in qs.chunks_exact(16).enumerate() {
                out.bsums[b * 16 + j] = group.iter().map(|&q| q as i32).sum();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for block_len in [32, 256] {
            let q = QuantizedRows::quantize(&x, 2, 256, block_len);
            for (i, v) in x.iter().enumerate() {
                let scale = q.scales[i / block_len];
                let back = scale * q.qs[i] as f32;
                assert!((back - v).abs() <= scale * 0.5 + 1e-6, "{i}: {v} -> {back}");
            }
        }
    }
}
