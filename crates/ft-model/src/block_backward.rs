//! A transformer block over a frozen base as one graph node with a hand-written backward
//! (training with a LoRA adapter).
//!
//! candle's autograd of the block's ~60 ops keeps every intermediate and, for each gradient
//! it passes along, allocates a zeroed tensor and adds into it. Here the block's forward runs
//! outside the graph and saves only what backward needs (the block input, q/k/v after RoPE,
//! the attention output, the residual after attention, the MLP's gate and up, and each LoRA's
//! `x·Aᵀ`), and the backward produces `dX` and every `dA`/`dB` directly, nothing for the frozen
//! weights or the constant tables. With gradient checkpointing it saves only the input and
//! recomputes the rest in backward.
//!
//! The LoRA matrices enter the node as one flattened input (their concatenation), so candle's
//! autograd hands each `A`/`B` its gradient as for any other op, and a plain `loss.backward()`
//! still returns every LoRA gradient. Everything here is candle ops on detached tensors plus
//! `ft_kernels`' fused backward kernels, so the same code runs on any device whose forward the
//! node can hand to the graph (CPU today; the CUDA side adds its `cuda_fwd`).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use ft_kernels::bf16_matmul::bf16_linear;
use ft_kernels::quant::{dequantized_gemm, dequantized_gemm_backward_tensor};
use ft_kernels::small_matmul::{x_w_tensor, x_wt_tensor};
use ft_kernels::{
    attention_backward, attention_forward, rms_norm, rms_norm_backward, rope, rope_backward,
    swiglu, swiglu_backward,
};

use crate::linear::{Bf16Weights, Linear, Weight};
use crate::lora::{LoraAdapter, LoraModule};
use crate::model::Block;

/// The adapter's parts on one linear, and where its `A` and `B` sit in the flattened input.
#[derive(Clone)]
struct LoraPart {
    module: LoraModule,
    a_offset: usize,
    b_offset: usize,
}

/// One linear of the block with its frozen weight (dense, or quantized: a QLoRA-style base),
/// bias and optional LoRA.
#[derive(Clone)]
struct Projection {
    weight: Weight,
    /// The weight in bf16, in bf16 training.
    bf16: Option<Arc<Bf16Weights>>,
    bias: Option<Tensor>,
    lora: Option<LoraPart>,
}

/// What one projection's forward keeps for backward.
struct ProjectionSaved {
    /// `scale · dropout(x)·Aᵀ`, `(tokens, r)`.
    xa: Option<Tensor>,
    /// The dropout mask of this step, when dropout is on.
    mask: Option<Tensor>,
}

impl Projection {
    fn new(
        linear: &Linear,
        adapter: &LoraAdapter,
        offset: &mut usize,
        bf16: bool,
    ) -> Result<Option<Self>> {
        let weight = linear.weight();
        let bf16 = match weight {
            Weight::Dense(_) if bf16 => linear.bf16_weights()?,
            _ => None,
        };
        let lora = adapter.module(linear.path()).map(|module| {
            let a_offset = *offset;
            let b_offset = a_offset + module.a.elem_count();
            *offset = b_offset + module.b.elem_count();
            LoraPart {
                module: module.clone(),
                a_offset,
                b_offset,
            }
        });
        Ok(Some(Self {
            weight: weight.clone(),
            bf16,
            bias: linear.bias().cloned(),
            lora,
        }))
    }

    /// `x·Wᵀ + b + scale·dropout(x)·Aᵀ·Bᵀ` for `x: (tokens, in)`, outside the graph.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, ProjectionSaved)> {
        let mut y = match (&self.bf16, &self.weight) {
            (Some(w), _) => bf16_linear(x, &w.forward)?,
            // The exact f32 product of the dequantized weight, as the composed path takes.
            (None, Weight::Quantized(q)) => dequantized_gemm(&x.contiguous()?, q)?,
            (None, Weight::Dense(w)) => match x_wt_tensor(x, w)? {
                Some(y) => y,
                None => x.matmul(&w.t()?)?,
            },
        };
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        let mut saved = ProjectionSaved {
            xa: None,
            mask: None,
        };
        if let Some(part) = &self.lora {
            let module = &part.module;
            let mask = module.dropout_mask(x)?;
            let input = match &mask {
                Some(mask) => x.mul(mask)?,
                None => x.clone(),
            };
            let xa = (input.matmul(&module.a.detach().t()?)? * module.scale)?;
            y = (y + xa.matmul(&module.b.detach().t()?)?)?;
            saved = ProjectionSaved { xa: Some(xa), mask };
        }
        Ok((y, saved))
    }

    /// Given the input `x`, what the forward saved and `dy: (tokens, out)`: `dX` (when
    /// `need_dx`), and the LoRA's `(dA, dB)` written into `d_params` at its offsets.
    fn backward(
        &self,
        x: &Tensor,
        saved: &ProjectionSaved,
        dy: &Tensor,
        need_dx: bool,
        d_params: &mut Vec<(usize, Tensor)>,
    ) -> Result<Option<Tensor>> {
        let mut dx = match (need_dx, &self.bf16, &self.weight) {
            (false, _, _) => None,
            (true, Some(w), _) => Some(bf16_linear(dy, &w.backward)?),
            (true, None, Weight::Quantized(q)) => {
                Some(dequantized_gemm_backward_tensor(&dy.contiguous()?, q)?)
            }
            (true, None, Weight::Dense(w)) => match x_w_tensor(dy, w)? {
                Some(dx) => Some(dx),
                None => Some(dy.matmul(w)?),
            },
        };
        if let (Some(part), Some(xa)) = (&self.lora, &saved.xa) {
            let module = &part.module;
            let input = match &saved.mask {
                Some(mask) => x.mul(mask)?,
                None => x.clone(),
            };
            let d_b = dy.t()?.matmul(xa)?; // (out, r)
            let d_xa = (dy.matmul(&module.b.detach())? * module.scale)?; // (tokens, r)
            let d_a = d_xa.t()?.matmul(&input)?; // (r, in)
            d_params.push((part.a_offset, d_a.flatten_all()?));
            d_params.push((part.b_offset, d_b.flatten_all()?));
            if let Some(dx) = dx.as_mut() {
                let mut d_input = d_xa.matmul(&module.a.detach())?;
                if let Some(mask) = &saved.mask {
                    d_input = d_input.mul(mask)?;
                }
                *dx = (&*dx + d_input)?;
            }
        }
        Ok(dx)
    }
}

/// The block's frozen parts, its adapter parts, and the step's RoPE tables and mask.
#[derive(Clone)]
struct BlockParts {
    norms: (Tensor, Tensor),
    eps: f64,
    heads: (usize, usize, usize),
    /// q, k, v, o, gate, up, down.
    projections: [Projection; 7],
    cos: Tensor,
    sin: Tensor,
    bias: Tensor,
}

/// What the forward keeps for backward (or what backward recomputes, with checkpointing).
/// The two norms' outputs and the attention output in head layout are not kept: backward
/// recomputes them from `x`, `x2` and `attn_rows` (exactly, and cheaply next to the
/// products), which saves three `(tokens, hidden)` buffers per block.
struct Saved {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_rows: Tensor,
    x2: Tensor,
    gate: Tensor,
    up: Tensor,
    projections: Vec<ProjectionSaved>,
}

impl BlockParts {
    /// The block's forward outside the graph: `x: (b, t, hidden)` → output and what backward needs.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Saved)> {
        let (b, t, hidden) = x.dims3()?;
        let (h, kvh, d) = self.heads;
        let p = &self.projections;
        let mut kept = Vec::with_capacity(7);
        let mut project = |i: usize, input: &Tensor| -> Result<Tensor> {
            let (y, saved) = p[i].forward(input)?;
            kept.push(saved);
            Ok(y)
        };
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous();
        let n1 = rms_norm(x, &self.norms.0, self.eps)?.reshape((b * t, hidden))?;
        let q = rope(&heads(project(0, &n1)?, h)?, &self.cos, &self.sin)?;
        let k = rope(&heads(project(1, &n1)?, kvh)?, &self.cos, &self.sin)?;
        let v = heads(project(2, &n1)?, kvh)?;
        let attn = attention_forward(&q, &k, &v, Some(&self.bias))?; // (b, h, t, d)
        let attn_rows = attn.transpose(1, 2)?.reshape((b * t, h * d))?;
        let x2 = (x + project(3, &attn_rows)?.reshape((b, t, hidden))?)?;
        let n2 = rms_norm(&x2, &self.norms.1, self.eps)?.reshape((b * t, hidden))?;
        let gate = project(4, &n2)?;
        let up = project(5, &n2)?;
        let down = project(6, &swiglu(&gate, &up)?)?;
        let out = (&x2 + down.reshape((b, t, hidden))?)?;
        drop((n1, n2, attn));
        let saved = Saved {
            q,
            k,
            v,
            attn_rows,
            x2,
            gate,
            up,
            projections: kept,
        };
        Ok((out, saved))
    }

    /// `dX` (when `need_dx`) and the flattened LoRA gradient (`params` elements) from the
    /// output's gradient `grad: (b, t, hidden)`.
    fn backward(
        &self,
        x: &Tensor,
        s: &Saved,
        grad: &Tensor,
        need_dx: bool,
        params: usize,
    ) -> Result<(Option<Tensor>, Tensor)> {
        let (b, t, hidden) = x.dims3()?;
        let (h, kvh, d) = self.heads;
        let p = &self.projections;
        let sp = &s.projections;
        let mut d_params = Vec::with_capacity(14);
        let rows = |g: Tensor| -> Result<Tensor> { g.reshape((b * t, hidden)) };
        let grad = rows(grad.detach().contiguous()?)?;
        // MLP: out = x2 + down(swiglu(gate(n2), up(n2)))
        let act = swiglu(&s.gate, &s.up)?;
        let d_act = p[6].backward(&act, &sp[6], &grad, true, &mut d_params)?;
        let d_act =
            d_act.ok_or_else(|| candle_core::Error::Msg("no activation gradient".into()))?;
        let (d_gate, d_up) = swiglu_backward(&s.gate, &s.up, &d_act)?;
        let x2 = s.x2.reshape((b * t, hidden))?;
        let n2 = rms_norm(&x2, &self.norms.1, self.eps)?;
        let d_n2_gate = p[4].backward(&n2, &sp[4], &d_gate, true, &mut d_params)?;
        let d_n2_up = p[5].backward(&n2, &sp[5], &d_up, true, &mut d_params)?;
        drop(n2);
        let d_n2 = match (d_n2_gate, d_n2_up) {
            (Some(a), Some(b)) => (a + b)?,
            _ => candle_core::bail!("no gradient for the MLP input"),
        };
        let d_x2 = (&grad + rms_norm_backward(&x2, &self.norms.1, self.eps, &d_n2)?)?;
        // Attention: x2 = x + o(attention(rope(q(n1)), rope(k(n1)), v(n1)))
        let d_attn_rows = p[3].backward(&s.attn_rows, &sp[3], &d_x2, true, &mut d_params)?;
        let d_attn_rows =
            d_attn_rows.ok_or_else(|| candle_core::Error::Msg("no attention gradient".into()))?;
        let d_attn = d_attn_rows
            .reshape((b, t, h, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let attn = s
            .attn_rows
            .reshape((b, t, h, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let (d_q, d_k, d_v) =
            attention_backward(&s.q, &s.k, &s.v, &attn, &d_attn, Some(&self.bias))?;
        drop(attn);
        let token_rows = |g: Tensor, n: usize| g.transpose(1, 2)?.reshape((b * t, n * d));
        let d_q = token_rows(rope_backward(&d_q, &self.cos, &self.sin)?, h)?;
        let d_k = token_rows(rope_backward(&d_k, &self.cos, &self.sin)?, kvh)?;
        let d_v = token_rows(d_v, kvh)?;
        let x_rows = x.reshape((b * t, hidden))?;
        let n1 = rms_norm(&x_rows, &self.norms.0, self.eps)?;
        let mut d_n1: Option<Tensor> = None;
        for (i, dy) in [(0, &d_q), (1, &d_k), (2, &d_v)] {
            if let Some(dx) = p[i].backward(&n1, &sp[i], dy, need_dx, &mut d_params)? {
                d_n1 = Some(match d_n1 {
                    Some(sum) => (sum + dx)?,
                    None => dx,
                });
            }
        }
        let dx = match d_n1 {
            Some(d_n1) if need_dx => {
                let dx = (d_x2 + rms_norm_backward(&x_rows, &self.norms.0, self.eps, &d_n1)?)?;
                Some(dx.reshape((b, t, hidden))?)
            }
            _ => None,
        };
        Ok((dx, flatten_at_offsets(d_params, params, grad.device())?))
    }
}

/// One vector of `len` elements with each `(offset, values)` written at its offset.
fn flatten_at_offsets(
    mut parts: Vec<(usize, Tensor)>,
    len: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    parts.sort_by_key(|(offset, _)| *offset);
    let mut pieces = Vec::with_capacity(parts.len());
    let mut at = 0;
    for (offset, values) in parts {
        if offset != at {
            candle_core::bail!("LoRA gradients leave a gap at {at}");
        }
        at += values.elem_count();
        pieces.push(values);
    }
    if at != len {
        candle_core::bail!("LoRA gradients cover {at} of {len} parameters");
    }
    if pieces.is_empty() {
        return Tensor::zeros(0, candle_core::DType::F32, device);
    }
    Tensor::cat(&pieces, 0)
}

/// The graph node: forward hands over the output computed outside the graph; backward runs
/// [`BlockParts::backward`].
struct BlockNode {
    parts: BlockParts,
    out: Mutex<Option<Tensor>>,
    /// `None` with gradient checkpointing: backward recomputes it.
    saved: Mutex<Option<Saved>>,
    need_dx: bool,
}

impl CustomOp2 for BlockNode {
    fn name(&self) -> &'static str {
        "ft-lora-block"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _x_layout: &Layout,
        _params: &CpuStorage,
        _params_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        ft_kernels::hand_over_output(&self.out, self.name())
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let x = x.detach();
        let kept = self.saved.lock().ok().and_then(|mut saved| saved.take());
        let saved = match kept {
            Some(saved) => saved,
            None => self.parts.forward(&x)?.1,
        };
        let (dx, d_params) =
            self.parts
                .backward(&x, &saved, grad, self.need_dx, params.elem_count())?;
        Ok((dx, Some(d_params)))
    }
}

/// How a training block runs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mode {
    /// Recompute the forward in backward instead of keeping its activations.
    pub checkpoint: bool,
    /// Frozen products in bf16 (see [`crate::Transformer::set_bf16_training`]).
    pub bf16: bool,
}

/// Whether a block's training step can run as one node: a trainable adapter, dense f32
/// weights on the CPU, the hand-written path on this thread.
pub(crate) fn applies(x: &Tensor, adapter: &LoraAdapter) -> bool {
    x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && !adapter.vars().is_empty()
        && !ft_kernels::backward_path::composed()
}

/// `block` on `x: (b, t, hidden)` with `adapter`, as one graph node (see the module docs).
/// `None` when the block cannot (a quantized weight, or no module of the adapter in it): the
/// caller runs the block's ops as usual.
pub(crate) fn forward(
    block: &Block,
    x: &Tensor,
    rope_tables: (&Tensor, &Tensor),
    bias: &Tensor,
    adapter: &LoraAdapter,
    mode: Mode,
) -> Result<Option<Tensor>> {
    let mut offset = 0;
    let mut projections = Vec::with_capacity(7);
    let attention = block.attention().linears();
    let mlp = block.mlp().linears();
    for linear in attention.into_iter().chain(mlp) {
        match Projection::new(linear, adapter, &mut offset, mode.bf16)? {
            Some(projection) => projections.push(projection),
            None => return Ok(None),
        }
    }
    let flat: Vec<Tensor> = projections
        .iter()
        .filter_map(|p| p.lora.as_ref())
        .flat_map(|part| [part.module.a.flatten_all(), part.module.b.flatten_all()])
        .collect::<Result<_>>()?;
    if flat.is_empty() {
        return Ok(None);
    }
    let params = Tensor::cat(&flat, 0)?;
    let Ok(projections) = <[Projection; 7]>::try_from(projections) else {
        candle_core::bail!("a block has seven projections");
    };
    let (norm1, norm2) = block.norms();
    let parts = BlockParts {
        norms: (norm1.clone(), norm2.clone()),
        eps: block.rms_norm_eps(),
        heads: block.attention().heads(),
        projections,
        cos: rope_tables.0.contiguous()?,
        sin: rope_tables.1.contiguous()?,
        bias: bias.clone(),
    };
    let x = x.contiguous()?;
    let (out, saved) = parts.forward(&x.detach())?;
    let node = BlockNode {
        parts,
        out: Mutex::new(Some(out.contiguous()?)),
        saved: Mutex::new(if mode.checkpoint { None } else { Some(saved) }),
        need_dx: x.track_op(),
    };
    Ok(Some(x.apply_op2(&params, node)?))
}
