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

/// The storage a custom op's `cpu_fwd` returns when its output was computed before the op was
/// built (outside the graph, with candle ops): the tensor in `slot`, taken once and copied.
/// This is how a hand-written backward is attached to a forward made of candle ops.
pub fn hand_over_output(
    slot: &std::sync::Mutex<Option<Tensor>>,
    op: &str,
) -> Result<(CpuStorage, candle_core::Shape)> {
    let out = slot.lock().ok().and_then(|mut out| out.take());
    let Some(out) = out else {
        candle_core::bail!("{op}: the op ran twice");
    };
    with_f32(&out, op, |data| Ok(CpuStorage::F32(data.to_vec())))
        .map(|storage| (storage, out.shape().clone()))
}

/// An output buffer that the tasks of one parallel region write in disjoint parts.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: tasks write disjoint elements of one buffer that outlives the region.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `offset` places in (a method, so closures capture the whole `Send` value).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
