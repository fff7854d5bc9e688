//! The decode step of a quantized base with no adapter, on plain `f32` buffers: the same
//! arithmetic as [`Transformer::forward_hidden`] and [`Transformer::decode_rows`] (RMSNorm,
//! the quantized kernels, RoPE, the fused decode attention, SwiGLU), without building ~25
//! candle tensors per layer per token: measured, those small ops took about a fifth of a
//! decoded token's time. The general path stays the reference; a test bounds the difference
//! (`tests/quantized_smollm2.rs`), and [`Transformer::set_fused_decode`] turns this path off.

use std::sync::Arc;

use candle_core::{Result, Storage, Tensor};
use ft_kernels::attention::{decode_attention, DecodeShape};
use ft_kernels::quant::{matmul_many, QuantMatrix};

use crate::cache::LayerCache;
use crate::linear::{Linear, Weight};
use crate::model::Transformer;

/// Host copies of the small dense weights the fused step reads every token.
#[derive(Debug)]
pub(crate) struct HostWeights {
    layers: Vec<HostLayer>,
    norm: Vec<f32>,
    /// `(max_positions, head_dim / 2)` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

#[derive(Debug)]
struct HostLayer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    /// q, k, v, o, gate, up, down.
    linears: [HostLinear; 7],
}

/// A quantized linear and its bias, as the fused step reads them.
type HostLinear = (Arc<QuantMatrix>, Option<Vec<f32>>);

fn quantized(linear: &Linear) -> Result<Option<HostLinear>> {
    let Weight::Quantized(q) = linear.weight() else {
        return Ok(None);
    };
    let bias = linear.bias().map(|b| b.to_vec1::<f32>()).transpose()?;
    Ok(Some((q.clone(), bias)))
}

impl HostWeights {
    /// `None` when some linear is dense (the fused step covers fully quantized bases only).
    pub(crate) fn build(model: &Transformer) -> Result<Option<Self>> {
        let mut layers = Vec::new();
        for block in model.blocks() {
            let (attn, mlp) = (block.attention().linears(), block.mlp().linears());
            let mut linears = Vec::with_capacity(7);
            for linear in attn.into_iter().chain(mlp) {
                match quantized(linear)? {
                    Some(l) => linears.push(l),
                    None => return Ok(None),
                }
            }
            let Ok(linears) = <[_; 7]>::try_from(linears) else {
                return Ok(None);
            };
            let (input, post) = block.norms();
            layers.push(HostLayer {
                input_norm: input.to_vec1()?,
                post_norm: post.to_vec1()?,
                linears,
            });
        }
        if !matches!(model.lm_head(), Weight::Quantized(_)) {
            return Ok(None);
        }
        let (cos, sin) = model.rope_tables().host()?;
        Ok(Some(Self {
            layers,
            norm: model.final_norm().to_vec1()?,
            cos,
            sin,
        }))
    }
}

/// Whether the fused step may run (enabled, the plain llama block, CPU f32, every frozen
/// weight quantized).
pub(crate) fn usable(model: &Transformer) -> bool {
    model.fused_decode_enabled()
        && model.config().is_plain_llama_block()
        && model.host_weights().is_some()
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    for (row, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / h as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(w) {
            *o = v * inv * w;
        }
    }
}

/// HF's rotate-half RoPE on every head of one row, in place.
fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos[i] - b * sin[i];
            head[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

/// The products of several linears with one input, in one parallel region when their
/// weights share a block type (q/k/v, gate/up), biases added.
fn linears<const N: usize>(ls: [&HostLinear; N], x: &[f32], rows: usize) -> Result<[Vec<f32>; N]> {
    let same_type = ls.iter().all(|l| l.0.quant_type() == ls[0].0.quant_type());
    let mut ys: Vec<Vec<f32>> = if same_type {
        let ws: Vec<&QuantMatrix> = ls.iter().map(|l| l.0.as_ref()).collect();
        matmul_many(&ws, x, rows)?
    } else {
        ls.iter()
            .map(|l| matmul_many(&[l.0.as_ref()], x, rows).map(|mut y| y.remove(0)))
            .collect::<Result<_>>()?
    };
    for (y, l) in ys.iter_mut().zip(ls) {
        if let Some(bias) = &l.1 {
            for row in y.chunks_exact_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
    }
    ys.try_into()
        .map_err(|_| candle_core::Error::Msg("fused decode: product count".into()))
}

fn linear(l: &HostLinear, x: &[f32], rows: usize) -> Result<Vec<f32>> {
    let [y] = linears([l], x, rows)?;
    Ok(y)
}

/// Where row `i` of a step keeps its keys and values.
pub(crate) enum RowCaches<'c> {
    /// One cache for the batch (`generate`): row `i` of each layer's buffers, with its mask.
    Batch(&'c mut [LayerCache], &'c [Vec<u8>]),
    /// One cache per row (`decode_rows`).
    PerRow(Vec<&'c mut [LayerCache]>),
}

/// One decode step: `tokens[i]` at `positions[i]` for each row → final hidden states
/// `(rows, hidden)` (after the last norm).
pub(crate) fn decode_step(
    model: &Transformer,
    host: &HostWeights,
    tokens: &[u32],
    positions: &[u32],
    mut caches: RowCaches,
) -> Result<Vec<f32>> {
    let cfg = model.config();
    let (rows, hidden) = (tokens.len(), cfg.hidden_size);
    let (heads, kv_heads, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let eps = cfg.rms_norm_eps as f32;
    let half = d / 2;
    let ids = Tensor::from_slice(tokens, rows, model.device())?;
    let mut x: Vec<f32> = model.embedding_rows(&ids)?.flatten_all()?.to_vec1()?;
    let mut normed = vec![0f32; rows * hidden];
    let mut attn = vec![0f32; rows * heads * d];
    for (l, layer) in host.layers.iter().enumerate() {
        let [q_proj, k_proj, v_proj, o_proj, gate, up, down] = &layer.linears;
        rms_norm(&x, &layer.input_norm, eps, &mut normed);
        let [mut q, mut k, v] = linears([q_proj, k_proj, v_proj], &normed, rows)?;
        for row in 0..rows {
            let p = positions[row] as usize;
            let (cos, sin) = (
                &host.cos[p * half..(p + 1) * half],
                &host.sin[p * half..(p + 1) * half],
            );
            rope(&mut q[row * heads * d..(row + 1) * heads * d], d, cos, sin);
            rope(
                &mut k[row * kv_heads * d..(row + 1) * kv_heads * d],
                d,
                cos,
                sin,
            );
        }
        let kv_row = |t: &[f32], row: usize| {
            Tensor::from_slice(
                &t[row * kv_heads * d..(row + 1) * kv_heads * d],
                (1, kv_heads, 1, d),
                model.device(),
            )
        };
        let batch_cache = matches!(caches, RowCaches::Batch(..));
        for row in 0..rows {
            let (cache, buffer_row, mask) = match &mut caches {
                RowCaches::Batch(layers, masks) => {
                    (&mut layers[l], row, masks.get(row).map(Vec::as_slice))
                }
                RowCaches::PerRow(per_row) => (&mut per_row[row][l], 0, None),
            };
            let (k_buf, v_buf) = if batch_cache {
                // A batch cache takes all rows' keys at once; done for row 0.
                if row == 0 {
                    let all_k = Tensor::from_slice(&k, (rows, kv_heads, 1, d), model.device())?;
                    let all_v = Tensor::from_slice(&v, (rows, kv_heads, 1, d), model.device())?;
                    cache.append_to_buffers(&all_k, &all_v)?
                } else {
                    cache.buffers()?
                }
            } else {
                cache.append_to_buffers(&kv_row(&k, row)?, &kv_row(&v, row)?)?
            };
            let (_, _, capacity, _) = k_buf.dims4()?;
            let shape = DecodeShape {
                heads,
                kv_heads,
                head_dim: d,
                len: cache.len(),
                capacity,
            };
            let row_len = kv_heads * capacity * d;
            let (ks, kl) = k_buf.storage_and_layout();
            let (vs, vl) = v_buf.storage_and_layout();
            let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&*ks, &*vs) else {
                candle_core::bail!("fused decode runs on the CPU");
            };
            let (Some((k0, _)), Some((v0, _))) = (kl.contiguous_offsets(), vl.contiguous_offsets())
            else {
                candle_core::bail!("fused decode takes contiguous cache buffers");
            };
            let at = buffer_row * row_len;
            let keys = &ks.as_slice::<f32>()?[k0 + at..k0 + at + row_len];
            let values = &vs.as_slice::<f32>()?[v0 + at..v0 + at + row_len];
            let out = &mut attn[row * heads * d..(row + 1) * heads * d];
            let scale = 1.0 / (d as f32).sqrt();
            decode_attention(
                shape,
                &q[row * heads * d..(row + 1) * heads * d],
                keys,
                values,
                mask,
                scale,
                out,
            )?;
        }
        let o = linear(o_proj, &attn, rows)?;
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        rms_norm(&x, &layer.post_norm, eps, &mut normed);
        let [mut g, u] = linears([gate, up], &normed, rows)?;
        g.iter_mut()
            .zip(&u)
            .for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u);
        let y = linear(down, &g, rows)?;
        x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
    }
    let mut out = vec![0f32; rows * hidden];
    rms_norm(&x, &host.norm, eps, &mut out);
    Ok(out)
}
