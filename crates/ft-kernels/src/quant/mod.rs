//! Matrix products with a frozen weight kept in its GGUF block type (Q4_0 … Q6_K), as ggml
//! does: activations quantized to 8 bits per block, integer dot products, runtime dispatch to
//! AVX512-VNNI / AVX-VNNI / AVX2, and a plain reference ([`reference`]) that every SIMD kernel
//! is tested against.

mod activation;
mod dequant;
mod dispatch;
mod format;
mod matmul;
pub mod reference;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use activation::{QuantizedRows, XRow};
pub use dispatch::{isa, Isa};
pub use format::QuantMatrix;
pub use format::QuantType;
pub use matmul::{
    dequantized_gemm, dequantized_gemm_backward_tensor, matmul, matmul_many, matmul_many_with,
    matmul_with, quantized_linear, GEMM_MIN_ROWS,
};

/// `Σ w·x` of weight row `r` of `w` and activation row `xr` of `x`, with the kernel of `isa`.
///
/// # Errors
/// When `x` does not match `w`'s row length and block type, or `isa` is not available.
pub fn vec_dot(
    isa: Isa,
    w: &QuantMatrix,
    r: usize,
    x: &QuantizedRows,
    xr: usize,
) -> candle_core::Result<f32> {
    let ty = w.quant_type();
    if x.cols != w.cols()
        || x.block_len != ty.block_len()
        || r >= w.rows()
        || (xr + 1) * x.cols > x.qs.len()
    {
        candle_core::bail!(
            "vec_dot: activations do not match a {ty:?} row of {}",
            w.cols()
        );
    }
    if !Isa::available().contains(&isa) {
        candle_core::bail!("vec_dot: {isa:?} is not supported by this CPU");
    }
    Ok(dispatch::kernel_for(isa, ty)(w.row(r), x.row(xr)))
}
