//! Single-query attention over a KV cache, fused: one pass per KV head that scores the keys for
//! every query head sharing it (GQA reads each key and value once), softmax, and the weighted
//! sum of values. No attention-bias tensor: masked keys are skipped.
//!
//! [`decode_attention_reference`] is the plain per-head loop the fused kernel is tested
//! against; candle's composed ops (in `ft-model`) are the reference for both.

use candle_core::{bail, Result, Storage, Tensor};

/// The shape of one decode-attention call.
#[derive(Debug, Clone, Copy)]
pub struct DecodeShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple of it).
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Cached keys to attend to.
    pub len: usize,
    /// Slots per KV head in the cache buffer (`>= len`).
    pub capacity: usize,
}

impl DecodeShape {
    fn check(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[u8]>,
        out: &[f32],
    ) -> Result<()> {
        let DecodeShape {
            heads,
            kv_heads,
            head_dim,
            len,
            capacity,
        } = *self;
        let cache = kv_heads * capacity * head_dim;
        if kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || len > capacity
            || q.len() != heads * head_dim
            || out.len() != heads * head_dim
            || k.len() < cache
            || v.len() < cache
            || mask.is_some_and(|m| m.len() != len)
        {
            bail!("decode attention: inconsistent shapes {self:?}");
        }
        Ok(())
    }
}

/// `out[h] = Σ_t softmax_t(scale · q[h]·k[g, t]) · v[g, t]` with `g = h / (heads / kv_heads)`;
/// `q: (heads, head_dim)`, `k, v: (kv_heads, capacity, head_dim)`, `mask[t] == 0` hides key `t`.
/// A query that sees no key gets zeros.
pub fn decode_attention(
    shape: DecodeShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[u8]>,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    shape.check(q, k, v, mask, out)?;
    let DecodeShape {
        heads,
        kv_heads,
        head_dim: d,
        len,
        capacity,
    } = shape;
    let group = heads / kv_heads;
    let out_ptr = OutPtr(out.as_mut_ptr());
    // One task per KV head: its query heads read each key and value once. Short caches run
    // on the caller alone (a parallel region costs more than it saves there).
    let one_head = |g: usize| {
        let kv = KvGroup {
            queries: &q[g * group * d..(g + 1) * group * d],
            keys: &k[g * capacity * d..],
            values: &v[g * capacity * d..],
            mask,
            len,
            head_dim: d,
            scale,
        };
        // SAFETY: task `g` writes only query heads g·group .. (g + 1)·group of `out`.
        attend_group_dispatch(&kv, unsafe { out_ptr.heads(g * group * d, group * d) });
    };
    if len * heads >= PARALLEL_MIN_WORK {
        crate::threads::parallel_for(kv_heads, &one_head);
    } else {
        (0..kv_heads).for_each(one_head);
    }
    Ok(())
}

/// `len · heads` from which decode attention splits over the threads.
const PARALLEL_MIN_WORK: usize = 1024;

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint ranges of one buffer that outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `start..start + n` is inside the buffer and no other task touches it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn heads(&self, start: usize, n: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(start), n)
    }
}

/// The query heads that share one KV head, and what they attend over.
struct KvGroup<'a> {
    /// `(group, head_dim)`.
    queries: &'a [f32],
    /// `(len.., head_dim)` each.
    keys: &'a [f32],
    values: &'a [f32],
    mask: Option<&'a [u8]>,
    len: usize,
    head_dim: usize,
    scale: f32,
}

/// [`attend_group`] compiled for AVX2 + FMA where the CPU has them (the default x86-64 target
/// vectorizes its loops 4 wide, without FMA).
fn attend_group_dispatch(kv: &KvGroup, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::isa() != crate::quant::Isa::Scalar {
        // SAFETY: the dispatcher reports a SIMD instruction set only when AVX2 and FMA are there.
        unsafe { attend_group_avx2(kv, out) };
        return;
    }
    attend_group(kv, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_group_avx2(kv: &KvGroup, out: &mut [f32]) {
    attend_group(kv, out);
}

/// Softmax attention of `kv`'s query heads → `out: (group, head_dim)`.
#[inline(always)]
fn attend_group(kv: &KvGroup, out: &mut [f32]) {
    let KvGroup {
        queries,
        keys,
        values,
        mask,
        len,
        head_dim: d,
        scale,
    } = *kv;
    let mut scores = vec![f32::NEG_INFINITY; queries.len() / d * len];
    let group = queries.len() / d;
    let visible = |t: usize| mask.is_none_or(|m| m[t] != 0);
    // Scores of every query head in the group, reading each key once.
    for t in (0..len).filter(|&t| visible(t)) {
        let key = &keys[t * d..(t + 1) * d];
        for (j, query) in queries.chunks_exact(d).enumerate() {
            scores[j * len + t] = scale * dot(query, key);
        }
    }
    for j in 0..group {
        let row = &mut scores[j * len..(j + 1) * len];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let o = &mut out[j * d..(j + 1) * d];
        o.fill(0.0);
        if max == f32::NEG_INFINITY {
            continue;
        }
        let mut total = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        for (t, &p) in row.iter().enumerate() {
            if p != 0.0 {
                axpy(p, &values[t * d..(t + 1) * d], o);
            }
        }
        let inv = 1.0 / total;
        o.iter_mut().for_each(|x| *x *= inv);
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: vectorizes, and matches a SIMD reduction's accuracy.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// The plain reference: each query head on its own, softmax in f64.
pub fn decode_attention_reference(
    shape: DecodeShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[u8]>,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    shape.check(q, k, v, mask, out)?;
    let DecodeShape {
        heads,
        kv_heads,
        head_dim: d,
        len,
        capacity,
    } = shape;
    for h in 0..heads {
        let g = h / (heads / kv_heads);
        let query = &q[h * d..(h + 1) * d];
        let scores: Vec<Option<f64>> = (0..len)
            .map(|t| {
                let visible = mask.is_none_or(|m| m[t] != 0);
                let key = &k[(g * capacity + t) * d..(g * capacity + t + 1) * d];
                visible.then(|| {
                    scale as f64
                        * query
                            .iter()
                            .zip(key)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                })
            })
            .collect();
        let max = scores
            .iter()
            .flatten()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let o = &mut out[h * d..(h + 1) * d];
        o.fill(0.0);
        if max == f64::NEG_INFINITY {
            continue;
        }
        let weights: Vec<f64> = scores
            .iter()
            .map(|s| s.map_or(0.0, |s| (s - max).exp()))
            .collect();
        let total: f64 = weights.iter().sum();
        for (i, value) in o.iter_mut().enumerate() {
            let sum: f64 = (0..len)
                .map(|t| weights[t] * v[(g * capacity + t) * d + i] as f64)
                .sum();
            *value = (sum / total) as f32;
        }
    }
    Ok(())
}

/// The f32 CPU data of a contiguous tensor.
fn cpu_data(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1()
}

/// [`decode_attention`] on tensors: `q: (1, heads, 1, d)`, and row `row` of `k_buf, v_buf:
/// (batch, kv_heads, capacity, d)` (a cache's buffers, the first `len` slots used) →
/// `(1, heads, 1, d)`.
pub fn decode_attention_tensors(
    q: &Tensor,
    k_buf: &Tensor,
    v_buf: &Tensor,
    row: usize,
    len: usize,
    mask: Option<&[u8]>,
) -> Result<Tensor> {
    let (_, heads, _, d) = q.dims4()?;
    let (batch, kv_heads, capacity, _) = k_buf.dims4()?;
    if row >= batch {
        bail!("decode attention: row {row} of a cache of {batch} rows");
    }
    let row_len = kv_heads * capacity * d;
    let shape = DecodeShape {
        heads,
        kv_heads,
        head_dim: d,
        len,
        capacity,
    };
    let q = cpu_data(q)?;
    let mut out = vec![0f32; heads * d];
    let scale = 1.0 / (d as f32).sqrt();
    {
        let (k_storage, k_layout) = k_buf.storage_and_layout();
        let (v_storage, v_layout) = v_buf.storage_and_layout();
        let (Storage::Cpu(k), Storage::Cpu(v)) = (&*k_storage, &*v_storage) else {
            bail!("decode attention runs on the CPU");
        };
        let (Some((k0, k1)), Some((v0, v1))) =
            (k_layout.contiguous_offsets(), v_layout.contiguous_offsets())
        else {
            bail!("decode attention takes contiguous cache buffers");
        };
        let (k, v) = (&k.as_slice::<f32>()?[k0..k1], &v.as_slice::<f32>()?[v0..v1]);
        let at = row * row_len..(row + 1) * row_len;
        let (k, v) = (&k[at.clone()], &v[at]);
        decode_attention(shape, &q, k, v, mask, scale, &mut out)?;
    }
    Tensor::from_vec(out, (1, heads, 1, d), k_buf.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_equals_reference_with_gqa_and_masks() -> Result<()> {
        let (heads, kv_heads, d, capacity) = (9, 3, 64, 80);
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0)
                .collect()
        };
        let (q, k, v) = (
            values(heads * d, 1),
            values(kv_heads * capacity * d, 2),
            values(kv_heads * capacity * d, 3),
        );
        for len in [1, 17, 80] {
            for masked in [false, true] {
                let mask: Vec<u8> = (0..len).map(|t| u8::from(!masked || t % 3 != 0)).collect();
                let mask = masked.then_some(mask.as_slice());
                let shape = DecodeShape {
                    heads,
                    kv_heads,
                    head_dim: d,
                    len,
                    capacity,
                };
                let (mut fused, mut plain) = (vec![0f32; heads * d], vec![0f32; heads * d]);
                decode_attention(shape, &q, &k, &v, mask, 0.125, &mut fused)?;
                decode_attention_reference(shape, &q, &k, &v, mask, 0.125, &mut plain)?;
                for (a, b) in fused.iter().zip(&plain) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "len {len} masked {masked}: {a} vs {b}"
                    );
                }
            }
        }
        Ok(())
    }
}
