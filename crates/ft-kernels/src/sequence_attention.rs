//! Grouped-query attention over whole sequences (training, prompt processing), with a
//! hand-written backward that recomputes the probabilities instead of keeping them.
//!
//! candle's autograd of the composed attention keeps every `(heads, seq, seq)` intermediate
//! of every layer until backward: the scores, the biased scores and each step of the
//! differentiable softmax. For batch 4 × 400 tokens that is ~160 MB per layer. The fused op
//! keeps only `q`, `k`, `v` and the output (which the graph holds anyway) and recomputes the
//! probabilities in backward: one more `q·kᵀ`, a few percent of a step.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, IndexOp, Layout, Result, Shape, Tensor, D};

use crate::masked_softmax::{MaskedSoftmax, MASKED};

use crate::host::fused_backward_applies;

/// Softmax over the last dimension: candle's fused kernel when no gradient flows, the
/// differentiable composition otherwise.
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// Scaled dot-product attention of `q: (b, heads, t, d)` over `k, v: (b, kv_heads, total, d)`,
/// with an additive `bias: (b, 1, 1, t, total)` (none: every key is visible) → `(b, heads, t, d)`.
///
/// Query heads that share a kv head are grouped instead of copying k/v per query head. With a
/// gradient on the CPU (and not [`crate::backward_path::with_composed`]), the fused op.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let cpu_f32 = [q, k, v].iter().any(|t| fused_backward_applies(t));
    if tracked && cpu_f32 && !crate::backward_path::composed() {
        let out = attention_forward(&q.detach(), &k.detach(), &v.detach(), bias)?;
        let op = AttentionWithBackward {
            out: Mutex::new(Some(out)),
            bias: bias.cloned(),
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    if tracked {
        return attention_composed(q, k, v, bias);
    }
    attention_forward(q, k, v, bias)
}

/// Whether the per-group CPU path applies: f32 on the CPU, no gradient recorded.
fn grouped_cpu_path(q: &Tensor, bias: Option<&Tensor>) -> bool {
    q.device().is_cpu()
        && q.dtype() == DType::F32
        && !q.track_op()
        && bias.is_none_or(|b| b.dtype() == DType::F32)
}

/// [`attention_composed`] outside the graph, one kv-head group and up to [`QUERY_CHUNK`]
/// queries at a time on the CPU: each chunk's scores stay under glibc's mmap threshold (reused,
/// not faulted in fresh), are softmaxed in place by [`MaskedSoftmax`], and cover only the keys
/// some query of the chunk may see (causally, half of a long sequence's products are skipped).
/// Elsewhere, the composition.
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    if !grouped_cpu_path(q, bias) {
        return attention_composed(q, k, v, bias);
    }
    Chunked::new(q, k, v, bias, QUERY_CHUNK)?.forward()
}

/// Queries per chunk of [`attention_forward`] and [`attention_backward`] on the CPU.
const QUERY_CHUNK: usize = 256;

/// One attention call split by batch row, kv-head group and query chunk.
struct Chunked {
    /// `(b, kv_heads, n_rep, t, d)`.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Per batch row, its query chunks.
    chunks: Vec<Vec<QueryChunk>>,
    dims: (usize, usize, usize, usize, usize),
}

/// Queries `start..start + len` of one batch row, which see only keys `0..keys`.
struct QueryChunk {
    start: usize,
    len: usize,
    keys: usize,
    /// `(len, keys)`: the bias of those queries and keys, cut once for every kv-head group
    /// and for backward.
    bias: Tensor,
}

impl Chunked {
    fn new(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        chunk: usize,
    ) -> Result<Self> {
        let (b, h, t, d) = q.dims4()?;
        let (kvh, total) = (k.dim(1)?, k.dim(2)?);
        if kvh == 0 || h % kvh != 0 {
            candle_core::bail!("attention: {h} query heads over {kvh} kv heads");
        }
        let mut chunks = Vec::with_capacity(b);
        for row in 0..b {
            let row_bias = match bias {
                Some(bias) => bias.i(row)?.reshape((t, total))?.contiguous()?,
                None => Tensor::zeros((t, total), DType::F32, q.device())?,
            };
            let ranges = crate::host::with_f32(&row_bias, "attention", |visible| {
                let mut row_chunks = Vec::new();
                for start in (0..t).step_by(chunk.max(1)) {
                    let len = chunk.min(t - start);
                    // One past the last key any query of the chunk may see; all keys when a
                    // query sees none (it gets the composed path's uniform distribution).
                    let last_seen = (start..start + len).map(|query| {
                        let keys = &visible[query * total..(query + 1) * total];
                        keys.iter().rposition(|&b| b > MASKED)
                    });
                    let keys = last_seen
                        .map(|last| last.map_or(total, |k| k + 1))
                        .max()
                        .unwrap_or(total);
                    row_chunks.push((start, len, keys));
                }
                Ok(row_chunks)
            })?;
            let row_chunks = ranges
                .into_iter()
                .map(|(start, len, keys)| {
                    let bias = row_bias.narrow(0, start, len)?.narrow(1, 0, keys)?;
                    Ok(QueryChunk {
                        start,
                        len,
                        keys,
                        bias: bias.contiguous()?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            chunks.push(row_chunks);
        }
        Ok(Self {
            q: q.reshape((b, kvh, h / kvh, t, d))?,
            k: k.clone(),
            v: v.clone(),
            chunks,
            dims: (b, h, kvh, t, d),
        })
    }

    fn scale(&self) -> f64 {
        1.0 / (self.dims.4 as f64).sqrt()
    }

    /// `(n_rep·len, d)` queries of a chunk, `(keys, d)` keys and values, and the probabilities.
    fn chunk(
        &self,
        row: usize,
        group: usize,
        chunk: &QueryChunk,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let (start, len, keys) = (chunk.start, chunk.len, chunk.keys);
        let d = self.dims.4;
        let q = self
            .q
            .i((row, group))?
            .narrow(1, start, len)?
            .contiguous()?;
        let q = q.reshape(((), d))?;
        let k = self.k.i((row, group))?.narrow(0, 0, keys)?;
        let v = self.v.i((row, group))?.narrow(0, 0, keys)?;
        let scores = q.matmul(&k.t()?)?.contiguous()?;
        let op = MaskedSoftmax {
            t: len,
            scale: self.scale() as f32,
        };
        scores.inplace_op2(&chunk.bias, &op)?;
        Ok((q, k, v, scores))
    }

    /// `(b, h, t, d)` from per-row, per-group lists of `(n_rep, len, d)` chunk results.
    fn assemble(&self, rows: Vec<Vec<Vec<Tensor>>>) -> Result<Tensor> {
        let (b, h, _, t, d) = self.dims;
        let rows = rows
            .into_iter()
            .map(|groups| {
                let groups = groups
                    .into_iter()
                    .map(|chunks| Tensor::cat(&chunks, 1))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::stack(&groups, 0)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)?.reshape((b, h, t, d))
    }

    fn forward(&self) -> Result<Tensor> {
        let (b, h, kvh, _, d) = self.dims;
        let n_rep = h / kvh;
        let mut rows = Vec::with_capacity(b);
        for row in 0..b {
            let mut groups = Vec::with_capacity(kvh);
            for group in 0..kvh {
                let mut chunks = Vec::new();
                for chunk in &self.chunks[row] {
                    let (_, _, v, probs) = self.chunk(row, group, chunk)?;
                    chunks.push(probs.matmul(&v)?.reshape((n_rep, chunk.len, d))?);
                }
                groups.push(chunks);
            }
            rows.push(groups);
        }
        self.assemble(rows)
    }

    /// `(dQ, dK, dV)` given the output and its gradient, both `(b, h, t, d)`.
    fn backward(&self, out: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, h, kvh, t, d) = self.dims;
        let (n_rep, total) = (h / kvh, self.k.dim(2)?);
        let out = out.contiguous()?.reshape((b, kvh, n_rep, t, d))?;
        let grad = grad.contiguous()?.reshape((b, kvh, n_rep, t, d))?;
        let scale = self.scale();
        let (mut d_q_rows, mut d_k_rows, mut d_v_rows) = (Vec::new(), Vec::new(), Vec::new());
        for row in 0..b {
            let (mut d_q_groups, mut d_k_groups, mut d_v_groups) =
                (Vec::new(), Vec::new(), Vec::new());
            for group in 0..kvh {
                let mut d_q_chunks = Vec::new();
                let mut d_k = Tensor::zeros((total, d), DType::F32, self.k.device())?;
                let mut d_v = d_k.clone();
                for chunk in &self.chunks[row] {
                    let (start, len, keys) = (chunk.start, chunk.len, chunk.keys);
                    let (q, k, v, probs) = self.chunk(row, group, chunk)?;
                    let rows_of = |x: &Tensor| -> Result<Tensor> {
                        x.i((row, group))?
                            .narrow(1, start, len)?
                            .contiguous()?
                            .reshape(((), d))
                    };
                    let (d_out, out) = (rows_of(&grad)?, rows_of(&out)?);
                    let pad = |x: Tensor| x.pad_with_zeros(0, 0, total - keys);
                    d_v = (d_v + pad(probs.t()?.matmul(&d_out)?)?)?;
                    let d_probs = d_out.matmul(&v.t()?)?;
                    let row_dot = (&d_out * &out)?.sum_keepdim(D::Minus1)?;
                    let d_scores = (probs * d_probs.broadcast_sub(&row_dot)?)?;
                    let d_q = (d_scores.matmul(&k)? * scale)?;
                    d_q_chunks.push(d_q.reshape((n_rep, len, d))?);
                    d_k = (d_k + pad((d_scores.t()?.matmul(&q)? * scale)?)?)?;
                }
                d_q_groups.push(d_q_chunks);
                d_k_groups.push(d_k);
                d_v_groups.push(d_v);
            }
            d_q_rows.push(d_q_groups);
            d_k_rows.push(Tensor::stack(&d_k_groups, 0)?);
            d_v_rows.push(Tensor::stack(&d_v_groups, 0)?);
        }
        let d_q = self.assemble(d_q_rows)?;
        Ok((
            d_q,
            Tensor::stack(&d_k_rows, 0)?,
            Tensor::stack(&d_v_rows, 0)?,
        ))
    }
}

/// The probabilities `softmax(q·kᵀ/√d + bias)` with the query heads grouped by kv head:
/// `q: (b, kv_heads, n_rep·t, d)` → `(b, kv_heads, n_rep·t, total)`.
fn probabilities(
    grouped_q: &Tensor,
    k: &Tensor,
    bias: Option<&Tensor>,
    t: usize,
) -> Result<Tensor> {
    let (b, kvh, rows, d) = grouped_q.dims4()?;
    let total = k.dim(2)?;
    let n_rep = rows / t.max(1);
    let scores = (grouped_q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let scores = match bias {
        Some(bias) => scores
            .reshape((b, kvh, n_rep, t, total))?
            .broadcast_add(bias)?
            .reshape((b, kvh, rows, total))?,
        None => scores,
    };
    softmax_last_dim(&scores)
}

/// The composition of candle ops: inference's path, and the reference for the fused op.
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    if kvh == 0 || h % kvh != 0 {
        candle_core::bail!("attention: {h} query heads over {kvh} kv heads");
    }
    let q = q.reshape((b, kvh, (h / kvh) * t, d))?;
    let probs = probabilities(&q, k, bias, t)?;
    probs.matmul(v)?.reshape((b, h, t, d))
}

/// The gradients of [`attention`] with respect to `q`, `k` and `v`, given the output `out` and
/// its gradient `grad`; the probabilities are recomputed. With `P` the probabilities (per kv-head
/// group): `dV = Pᵀ·dO`, `dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))`, `dQ = dS·K/√d`, `dK = dSᵀ·Q/√d`.
/// candle ops only: the same code on every device.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    grad: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    if grouped_cpu_path(&q.detach(), bias) {
        let chunked = Chunked::new(&q.detach(), &k.detach(), &v.detach(), bias, QUERY_CHUNK)?;
        return chunked.backward(&out.detach(), &grad.detach());
    }
    let (q, k, v, out, grad) = (
        q.detach(),
        k.detach(),
        v.detach(),
        out.detach(),
        grad.detach(),
    );
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let grouped = (b, kvh, (h / kvh) * t, d);
    let q = q.reshape(grouped)?;
    let probs = probabilities(&q, &k, bias, t)?;
    let d_out = grad.contiguous()?.reshape(grouped)?;
    let out = out.reshape(grouped)?;
    let d_v = probs.t()?.matmul(&d_out)?;
    let d_probs = d_out.matmul(&v.t()?)?;
    let row_dot = (&d_out * &out)?.sum_keepdim(D::Minus1)?;
    let d_scores = (probs * d_probs.broadcast_sub(&row_dot)?)?;
    let scale = 1.0 / (d as f64).sqrt();
    let d_q = (d_scores.matmul(&k)? * scale)?.reshape((b, h, t, d))?;
    let d_k = (d_scores.t()?.matmul(&q)? * scale)?;
    Ok((d_q, d_k, d_v))
}

/// The output computed by [`attention_forward`] outside the graph, handed to the graph once,
/// with the backward below.
struct AttentionWithBackward {
    out: Mutex<Option<Tensor>>,
    bias: Option<Tensor>,
}

impl CustomOp3 for AttentionWithBackward {
    fn name(&self) -> &'static str {
        "ft-attention"
    }

    fn cpu_fwd(
        &self,
        _q: &CpuStorage,
        _q_layout: &Layout,
        _k: &CpuStorage,
        _k_layout: &Layout,
        _v: &CpuStorage,
        _v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        crate::host::hand_over_output(&self.out, self.name())
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (d_q, d_k, d_v) = attention_backward(q, k, v, out, grad, self.bias.as_ref())?;
        Ok((Some(d_q), Some(d_k), Some(d_v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_of};
    use candle_core::{Device, Var};

    /// A causal bias with the last `padding` keys of row 1 masked, and the first two keys of
    /// row 0 (left padding: queries 0 and 1 see no key at all).
    fn causal_bias(b: usize, t: usize, padding: usize, device: &Device) -> Result<Tensor> {
        let mut bias = vec![0f32; b * t * t];
        for row in 0..b {
            for query in 0..t {
                for key in 0..t {
                    let padded = (row == 1 && key >= t - padding) || (row == 0 && key < 2);
                    if key > query || padded {
                        bias[(row * t + query) * t + key] = -1e30;
                    }
                }
            }
        }
        Tensor::from_vec(bias, (b, 1, 1, t, t), device)
    }

    #[test]
    fn fused_gradients_equal_autograd_of_the_composition() -> Result<()> {
        let device = Device::Cpu;
        // SmolLM2's grouping (9 query heads over 3 kv heads), 64-wide heads, padding in row 1.
        let (b, h, kvh, t, d) = (2, 9, 3, 13, 64);
        let q = Var::randn(0f32, 1., (b, h, t, d), &device)?;
        let k = Var::randn(0f32, 1., (b, kvh, t, d), &device)?;
        let v = Var::randn(0f32, 1., (b, kvh, t, d), &device)?;
        let bias = causal_bias(b, t, 4, &device)?;
        let upstream = Tensor::randn(0f32, 1., (b, h, t, d), &device)?;
        let (q, k, v) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let fused = attention(q, k, v, Some(&bias))?;
        let composed = crate::backward_path::with_composed(|| attention(q, k, v, Some(&bias)))?;
        assert_close(&fused, &composed, 1e-5)?;
        let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
        let inference = attention_forward(&qd, &kd, &vd, Some(&bias))?;
        assert_close(
            &inference,
            &attention_composed(&qd, &kd, &vd, Some(&bias))?,
            1e-5,
        )?;
        let unmasked = attention_forward(&qd, &kd, &vd, None)?;
        assert_close(&unmasked, &attention_composed(&qd, &kd, &vd, None)?, 1e-5)?;
        // Chunks of 4 queries: several chunks per row, each seeing fewer keys than the row.
        let chunked = Chunked::new(&qd, &kd, &vd, Some(&bias), 4)?;
        assert_close(&chunked.forward()?, &inference, 1e-5)?;
        let (d_q, d_k, d_v) = chunked.backward(&inference, &upstream)?;
        let whole = attention_backward(&qd, &kd, &vd, &inference, &upstream, Some(&bias))?;
        assert_close(&d_q, &whole.0, 1e-5)?;
        assert_close(&d_k, &whole.1, 1e-5)?;
        assert_close(&d_v, &whole.2, 1e-5)?;
        for input in [q, k, v] {
            let g_fused = grad_of(&fused, &upstream, input)?;
            let g_composed = grad_of(&composed, &upstream, input)?;
            assert_close(&g_fused, &g_composed, 1e-5)?;
        }
        Ok(())
    }
}
