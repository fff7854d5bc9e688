//! Borrowing the f32 data of CPU tensors and storages inside custom ops.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// The contiguous f32 elements `layout` describes in `storage`.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expected f32 data, got {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input is not contiguous"),
    }
}

/// Runs `f` on the contiguous f32 elements of the CPU tensor `t`.
pub(crate) fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op}: the tensor is not on the CPU");
    };
    f(f32_slice(cpu, layout, op)?)
}

/// Whether a fused CPU op with a hand-written backward applies: f32 on the CPU, with a
/// gradient to compute. Elsewhere the callers keep the composition of candle primitives.
pub(crate) fn fused_backward_applies(x: &Tensor) -> bool {
    x.track_op() && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}
