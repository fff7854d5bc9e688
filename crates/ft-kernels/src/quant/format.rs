//! GGUF block formats of the frozen weights: sizes, validation, and a quantized matrix.
//!
//! Blocks are read from their bytes at fixed offsets (little-endian, as ggml writes them), so
//! a matrix is the GGUF tensor's bytes unchanged: no struct casts, no alignment assumptions.

use candle_core::quantized::GgmlDType;
use candle_core::{bail, Result};

/// The weight block types the quantized kernels multiply directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 32 weights: f16 scale, 4-bit values minus 8.
    Q4_0,
    /// 32 weights: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// 32 weights: f16 scale, 5-bit values minus 16.
    Q5_0,
    /// 32 weights: f16 scale and minimum, 5-bit values.
    Q5_1,
    /// 32 weights: f16 scale, 8-bit values.
    Q8_0,
    /// 256 weights: f16 super-scales, 8 sub-blocks with 6-bit scales and minimums, 4-bit values.
    Q4K,
    /// 256 weights: as Q4K with a fifth bit per value.
    Q5K,
    /// 256 weights: f16 scale, 16 sub-blocks with 8-bit scales, 6-bit values minus 32.
    Q6K,
}

impl QuantType {
    /// Every type, for tests and error messages.
    pub const ALL: [QuantType; 8] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// The type of a GGUF tensor, when the kernels cover it.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q5_1 => Self::Q5_1,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q4K => Self::Q4K,
            GgmlDType::Q5K => Self::Q5K,
            GgmlDType::Q6K => Self::Q6K,
            _ => return None,
        })
    }

    /// The matching candle type (to quantize with candle in tests and at load).
    pub fn to_ggml(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
        }
    }

    /// Weights per block.
    pub fn block_len(self) -> usize {
        if self.is_k_quant() {
            256
        } else {
            32
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Whether the activations pair with this type in 256-wide blocks (`Q8K`) rather than
    /// 32-wide ones (`Q8`).
    pub fn is_k_quant(self) -> bool {
        matches!(self, Self::Q4K | Self::Q5K | Self::Q6K)
    }
}

/// A frozen `(rows, cols)` weight matrix in a GGUF block type, row-major: row `r` is
/// `cols / block_len` consecutive blocks. `rows` is the output dimension (HF's `out_features`).
#[derive(Clone)]
pub struct QuantMatrix {
    ty: QuantType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantMatrix({:?}, {}x{})", self.ty, self.rows, self.cols)
    }
}

impl QuantMatrix {
    /// Wraps the bytes of a GGUF tensor, checking that they hold exactly `rows x cols` weights.
    pub fn new(ty: QuantType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        if cols == 0 || !cols.is_multiple_of(ty.block_len()) {
            bail!(
                "a {ty:?} matrix needs a row length that is a multiple of {}, got {cols}",
                ty.block_len()
            );
        }
        let expected = rows * (cols / ty.block_len()) * ty.block_bytes();
        if data.len() != expected {
            bail!(
                "a {ty:?} matrix of {rows}x{cols} takes {expected} bytes, got {}",
                data.len()
            );
        }
        Ok(Self {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// The block type.
    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_len() * self.ty.block_bytes()
    }

    /// The bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// The whole payload.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The same matrix with its rows reordered: row `i` of the result is row `order[i]`.
    /// (The GGUF loader uses it to undo llama.cpp's q/k permutation without dequantizing.)
    pub fn permute_rows(&self, order: &[usize]) -> Result<Self> {
        if order.len() != self.rows || order.iter().any(|&r| r >= self.rows) {
            bail!(
                "row order of {} entries for {} rows",
                order.len(),
                self.rows
            );
        }
        let mut data = Vec::with_capacity(self.data.len());
        for &r in order {
            data.extend_from_slice(self.row(r));
        }
        Self::new(self.ty, self.rows, self.cols, data)
    }

    /// Row `r` as f32 (the same values as [`crate::quant::reference::dequantize_row`]).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        crate::quant::dequant::dequantize_row(self.ty, self.row(r), out);
    }

    /// The whole matrix as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, chunk) in out.chunks_mut(self.cols).enumerate() {
            self.dequantize_row(r, chunk);
        }
        out
    }
}

/// Reads the little-endian f16 at `bytes[at..at + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}
