//! The llama-family transformer: one implementation for training (full sequences, gradients
//! into LoRA) and for decoding (KV cache, batched rows of different lengths).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::block_backward;
use crate::cache::{Cache, LayerCache};
use crate::config::{Activation, Config};
use crate::fused_decode::{self, HostWeights, RowCaches};
use crate::inputs::attention_bias;
pub use crate::inputs::Inputs;
use crate::linear::{Linear, QuantizedWeights, Weight};
use crate::lora::Lora;
use ft_kernels::attention::decode_attention_tensors;
use ft_kernels::{rms_norm, rope, RopeTables};

/// Grouped-query self-attention with RoPE.
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    /// Per-head RMSNorm weights of queries and keys, applied before RoPE (Qwen3, Gemma 3).
    qk_norms: Option<(Tensor, Tensor)>,
    rms_norm_eps: f64,
    /// Factor on the queries that turns the kernels' `1/sqrt(head_dim)` into the model's
    /// `1/sqrt(query_pre_attn_scalar)` (Gemma), when the two differ.
    query_factor: Option<f64>,
}

impl Attention {
    /// Loads `q/k/v/o_proj` under `vb` (`model.layers.N.self_attn`).
    pub fn load(vb: VarBuilder, cfg: &Config, path: &str, q: &QuantizedWeights) -> Result<Self> {
        let (h, kv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let bias = cfg.attention_bias;
        let qk_norms = if cfg.qk_norm {
            Some((
                vb.pp("q_norm").get(d, "weight")?,
                vb.pp("k_norm").get(d, "weight")?,
            ))
        } else {
            None
        };
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), cfg.hidden_size, h * d, bias, path, q)?,
            k_proj: Linear::load(vb.pp("k_proj"), cfg.hidden_size, kv * d, bias, path, q)?,
            v_proj: Linear::load(vb.pp("v_proj"), cfg.hidden_size, kv * d, bias, path, q)?,
            o_proj: Linear::load(vb.pp("o_proj"), h * d, cfg.hidden_size, false, path, q)?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: d,
            qk_norms,
            rms_norm_eps: cfg.rms_norm_eps,
            query_factor: cfg
                .query_pre_attn_scalar
                .filter(|&scalar| scalar != d as f64)
                .map(|scalar| (d as f64 / scalar).sqrt()),
        })
    }

    /// `(query heads, kv heads, head dim)`.
    pub fn heads(&self) -> (usize, usize, usize) {
        (self.num_heads, self.num_kv_heads, self.head_dim)
    }

    /// The four projections, for LoRA targeting.
    pub fn linears(&self) -> [&Linear; 4] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
    }

    /// # Shapes
    /// `x: (batch, seq, hidden)`, `cos/sin: (batch, seq, head_dim/2)` → `(batch, seq, hidden)`.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        kv: KvSource,
        lora: Lora,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |proj: &Linear, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let y = proj.forward(x, lora)?.reshape((b, t, n, d))?;
            let y = match norm {
                Some(weight) => rms_norm(&y, weight, self.rms_norm_eps)?,
                None => y,
            };
            y.transpose(1, 2)?.contiguous() // (b, n, t, d)
        };
        let (q_norm, k_norm) = match &self.qk_norms {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let q = heads(&self.q_proj, h, q_norm)?;
        let q = match self.query_factor {
            Some(factor) => (q * factor)?,
            None => q,
        };
        let q = rope(&q, cos, sin)?;
        let k = rope(&heads(&self.k_proj, kvh, k_norm)?, cos, sin)?;
        let v = heads(&self.v_proj, kvh, None)?;
        let out = match kv {
            KvSource::Batch {
                bias: None,
                key_mask,
                cache: Some(cache),
            } if t == 1 => {
                // Decoding: the fused single-query kernel reads the cache in place.
                let (k_buf, v_buf) = cache.append_to_buffers(&k, &v)?;
                let len = cache.len();
                let rows = (0..b)
                    .map(|row| {
                        let mask = key_mask.get(row).map(Vec::as_slice);
                        decode_attention_tensors(
                            &q.narrow(0, row, 1)?,
                            &k_buf,
                            &v_buf,
                            row,
                            len,
                            mask,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?
            }
            KvSource::Batch {
                bias: Some(bias),
                cache,
                ..
            } => {
                let (k, v) = match cache {
                    Some(cache) => cache.append(&k, &v)?,
                    None => (k, v),
                }; // (b, kvh, total, d)
                ft_kernels::attention(&q, &k, &v, Some(bias))?
            }
            KvSource::Batch { bias: None, .. } => {
                candle_core::bail!("attention without a bias needs one new token and a cache")
            }
            KvSource::PerRow { caches, window } => {
                if caches.len() != b || t != 1 {
                    candle_core::bail!(
                        "per-row decoding takes one new token per row and one cache per row \
                         (got {b} rows of {t} tokens and {} caches)",
                        caches.len()
                    );
                }
                let fused = fused_decode(&q);
                let rows = caches
                    .into_iter()
                    .enumerate()
                    .map(|(row, cache)| {
                        let (k_row, v_row) = (k.narrow(0, row, 1)?, v.narrow(0, row, 1)?);
                        let q_row = q.narrow(0, row, 1)?;
                        let len = cache.len() + 1;
                        let mask = window.map(|w| window_key_mask(len, w));
                        if fused {
                            let (k_buf, v_buf) = cache.append_to_buffers(&k_row, &v_row)?;
                            decode_attention_tensors(
                                &q_row,
                                &k_buf,
                                &v_buf,
                                0,
                                len,
                                mask.as_deref(),
                            )
                        } else {
                            let (k, v) = cache.append(&k_row, &v_row)?;
                            let bias = match mask {
                                Some(mask) => Some(attention_bias(
                                    &[mask],
                                    None,
                                    1,
                                    None,
                                    q_row.dtype(),
                                    q_row.device(),
                                )?),
                                None => None,
                            };
                            ft_kernels::attention(&q_row, &k, &v, bias.as_ref())
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?
            }
        }; // (b, h, t, d)
        let out = out.transpose(1, 2)?.reshape((b, t, h * d))?;
        self.o_proj.forward(&out, lora)
    }
}

/// Whether a single-query step can take the fused decode-attention kernel: CPU, f32, and no
/// gradient to keep (the kernel has no backward).
fn fused_decode(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32 && !q.track_op()
}

/// Where attention reads the keys and values of earlier tokens from.
#[derive(Debug)]
pub enum KvSource<'c> {
    /// Rows share one cache (or none, in training) and are padded and masked by `bias`
    /// `(batch, 1, 1, seq, past + seq)`. With no `bias` (a decode step on the fused path),
    /// `key_mask` says which keys each row sees.
    Batch {
        /// The additive mask.
        bias: Option<&'c Tensor>,
        /// `(batch, past + seq)` 0/1: which keys are real.
        key_mask: &'c [Vec<u8>],
        /// The block's cache, when decoding.
        cache: Option<&'c mut LayerCache>,
    },
    /// Each row has its own cache and one new token that sees all of it (or its last
    /// `window` keys, in a sliding-window layer): sequences of different lengths decoded
    /// together (continuous batching).
    PerRow {
        /// One cache per row.
        caches: Vec<&'c mut LayerCache>,
        /// The layer's sliding window, if it has one.
        window: Option<usize>,
    },
}

/// Which of `len` keys the newest query of a sliding-window layer sees: the last `window`.
fn window_key_mask(len: usize, window: usize) -> Vec<u8> {
    (0..len).map(|key| u8::from(key + window >= len)).collect()
}

/// The gated MLP: `down(act(gate(x)) · up(x))`, SwiGLU (SiLU) or GeGLU (tanh GELU).
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    activation: Activation,
}

impl Mlp {
    /// Loads `gate/up/down_proj` under `vb` (`model.layers.N.mlp`).
    pub fn load(vb: VarBuilder, cfg: &Config, path: &str, q: &QuantizedWeights) -> Result<Self> {
        let (hidden, inter) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(vb.pp("gate_proj"), hidden, inter, false, path, q)?,
            up_proj: Linear::load(vb.pp("up_proj"), hidden, inter, false, path, q)?,
            down_proj: Linear::load(vb.pp("down_proj"), inter, hidden, false, path, q)?,
            activation: cfg.activation,
        })
    }

    /// The three projections, for LoRA targeting.
    pub fn linears(&self) -> [&Linear; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }

    /// `x: (batch, seq, hidden)` → `(batch, seq, hidden)`.
    pub fn forward(&self, x: &Tensor, lora: Lora) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x, lora)?;
        let up = self.up_proj.forward(x, lora)?;
        let gated = match self.activation {
            Activation::Silu => ft_kernels::swiglu(&gate, &up)?,
            Activation::GeluTanh => (gate.gelu()? * up)?,
        };
        self.down_proj.forward(&gated, lora)
    }
}

/// One pre-norm transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    input_layernorm: Tensor,
    self_attn: Attention,
    /// The MLP's input norm: `post_attention_layernorm` in llama, `pre_feedforward_layernorm`
    /// in Gemma.
    mlp_norm: Tensor,
    mlp: Mlp,
    /// Gemma's norms on the two sublayers' outputs, before each residual add:
    /// `(post_attention_layernorm, post_feedforward_layernorm)`.
    output_norms: Option<(Tensor, Tensor)>,
    rms_norm_eps: f64,
}

impl Block {
    /// The attention.
    pub fn attention(&self) -> &Attention {
        &self.self_attn
    }

    /// The MLP.
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    /// The RMSNorm epsilon.
    pub fn rms_norm_eps(&self) -> f64 {
        self.rms_norm_eps
    }

    /// The attention's and the MLP's input norm weights (`input_layernorm`, and
    /// `post_attention_layernorm` in llama).
    pub fn norms(&self) -> (&Tensor, &Tensor) {
        (&self.input_layernorm, &self.mlp_norm)
    }

    /// Loads block `vb` (`model.layers.N`), taking the linears in `q` from there.
    pub fn load(vb: VarBuilder, cfg: &Config, path: &str, q: &QuantizedWeights) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let norm = |name: &str| vb.pp(name).get(hidden, "weight");
        let (mlp_norm, output_norms) = if cfg.sandwich_norms {
            let outputs = (
                norm("post_attention_layernorm")?,
                norm("post_feedforward_layernorm")?,
            );
            (norm("pre_feedforward_layernorm")?, Some(outputs))
        } else {
            (norm("post_attention_layernorm")?, None)
        };
        Ok(Self {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg, &format!("{path}.self_attn"), q)?,
            mlp_norm,
            mlp: Mlp::load(vb.pp("mlp"), cfg, &format!("{path}.mlp"), q)?,
            output_norms,
            rms_norm_eps: cfg.rms_norm_eps,
        })
    }

    /// `x: (batch, seq, hidden)` → `(batch, seq, hidden)`.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        kv: KvSource,
        lora: Lora,
    ) -> Result<Tensor> {
        let eps = self.rms_norm_eps;
        let output_norm =
            |y: Tensor, pick: fn(&(Tensor, Tensor)) -> &Tensor| match &self.output_norms {
                Some(norms) => rms_norm(&y, pick(norms), eps),
                None => Ok(y),
            };
        let normed = rms_norm(x, &self.input_layernorm, eps)?;
        let attn = self.self_attn.forward(&normed, cos, sin, kv, lora)?;
        let x = (x + output_norm(attn, |n| &n.0)?)?;
        let normed = rms_norm(&x, &self.mlp_norm, eps)?;
        let mlp = self.mlp.forward(&normed, lora)?;
        x + output_norm(mlp, |n| &n.1)?
    }
}

/// The RoPE `(cos, sin)` of one forward's tokens: the global layers', and the sliding-window
/// layers' when they have their own base.
struct Rotations {
    global: (Tensor, Tensor),
    local: Option<(Tensor, Tensor)>,
}

impl Rotations {
    fn of_layer(&self, sliding: bool) -> (&Tensor, &Tensor) {
        let (cos, sin) = match (&self.local, sliding) {
            (Some(local), true) => local,
            _ => &self.global,
        };
        (cos, sin)
    }
}

/// A llama-family causal language model.
#[derive(Debug, Clone)]
pub struct Transformer {
    embed_tokens: Weight,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Weight,
    rope: RopeTables,
    /// The sliding-window layers' tables, when they have their own RoPE base (Gemma 3).
    rope_local: Option<RopeTables>,
    config: Config,
    /// Built on the first decode step that can take the fused path.
    host: std::sync::OnceLock<Option<std::sync::Arc<HostWeights>>>,
    /// Whether decode steps may take the fused path (clones share the switch).
    fused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether training blocks recompute their activations in backward instead of keeping them.
    checkpoint: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether training blocks multiply by their frozen weights in bf16.
    bf16: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Transformer {
    /// Loads the model from HF-named weights in `vb` (`model.embed_tokens.weight`, ...).
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Self::load_quantized(vb, cfg, &QuantizedWeights::new())
    }

    /// As [`Transformer::load`], taking the weights found in `quantized` from there (kept in
    /// their block type and multiplied by the integer kernels: inference only).
    pub fn load_quantized(
        vb: VarBuilder,
        cfg: &Config,
        quantized: &QuantizedWeights,
    ) -> Result<Self> {
        let shape = (cfg.vocab_size, cfg.hidden_size);
        let embed_tokens = Weight::load(&vb.pp("model.embed_tokens"), shape, quantized)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let path = format!("model.layers.{i}");
                Block::load(vb.pp(&path), cfg, &path, quantized)
            })
            .collect::<Result<Vec<_>>>()?;
        let untied = !cfg.tie_word_embeddings
            && (vb.contains_tensor("lm_head.weight") || quantized.contains_key("lm_head.weight"));
        let lm_head = if untied {
            Weight::load(&vb.pp("lm_head"), shape, quantized)?
        } else {
            embed_tokens.clone()
        };
        let max_positions = cfg.max_position_embeddings.max(1);
        let rope = RopeTables::new(&cfg.rope_inv_freq(), max_positions, vb.dtype(), vb.device())?;
        let rope_local = cfg
            .rope_local_inv_freq()
            .map(|inv_freq| RopeTables::new(&inv_freq, max_positions, vb.dtype(), vb.device()))
            .transpose()?;
        Ok(Self {
            embed_tokens,
            layers,
            norm: vb.pp("model.norm").get(cfg.hidden_size, "weight")?,
            lm_head,
            rope,
            rope_local,
            config: cfg.clone(),
            host: std::sync::OnceLock::new(),
            fused: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            checkpoint: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
            bf16: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.layers
    }

    /// The LM head's weight (the embedding when tied).
    pub fn lm_head(&self) -> &Weight {
        &self.lm_head
    }

    /// The final norm's weight.
    pub fn final_norm(&self) -> &Tensor {
        &self.norm
    }

    /// The RoPE tables.
    pub fn rope_tables(&self) -> &RopeTables {
        &self.rope
    }

    /// Lets decode steps of a fully quantized base without adapters take the fused path
    /// ([`crate::fused_decode`]; on by default), or keeps them on the general one.
    pub fn set_fused_decode(&self, enabled: bool) {
        self.fused
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// Gradient checkpointing: in training, each block keeps only its input and recomputes
    /// the rest of its forward in backward (less memory, one more forward of time). Off by
    /// default; clones share the switch.
    pub fn set_gradient_checkpointing(&self, enabled: bool) {
        self.checkpoint
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// bf16 frozen products in training: each training block multiplies by its frozen weights
    /// in bf16 with f32 accumulation (AVX512_BF16), forward and backward; LoRA weights, their
    /// gradients, norms, attention and the LM head stay f32. Off by default (f32 is exact);
    /// clones share the switch. An error on a CPU without AVX512_BF16.
    pub fn set_bf16_training(&self, enabled: bool) -> Result<()> {
        if enabled && !ft_kernels::bf16_matmul::available() {
            candle_core::bail!(
                "bf16 training needs a CPU with AVX512_BF16 (this one has none); use f32"
            );
        }
        self.bf16
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn bf16_training(&self) -> bool {
        self.bf16.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn gradient_checkpointing(&self) -> bool {
        self.checkpoint.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn fused_decode_enabled(&self) -> bool {
        self.fused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Host copies for the fused decode step, when every frozen weight is quantized (CPU f32).
    pub(crate) fn host_weights(&self) -> Option<&HostWeights> {
        let build = || {
            let cpu_f32 = self.device().is_cpu() && self.norm.dtype() == DType::F32;
            if !cpu_f32 {
                return None;
            }
            match HostWeights::build(self) {
                Ok(host) => host.map(std::sync::Arc::new),
                Err(e) => {
                    tracing::warn!("fused decode unavailable: {e}");
                    None
                }
            }
        };
        self.host.get_or_init(build).as_deref()
    }

    /// Rows `ids` of the token embedding matrix: `(ids.len(), hidden)`.
    pub fn embedding_rows(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.embed_tokens {
            Weight::Dense(w) => w.index_select(ids, 0),
            Weight::Quantized(q) => {
                let hidden = q.cols();
                let ids: Vec<u32> = ids.to_vec1()?;
                let mut out = vec![0f32; ids.len() * hidden];
                for (&id, row) in ids.iter().zip(out.chunks_mut(hidden)) {
                    if id as usize >= q.rows() {
                        candle_core::bail!(
                            "token id {id} is outside the vocabulary of {}",
                            q.rows()
                        );
                    }
                    q.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(out, (ids.len(), hidden), self.device())
            }
        }
    }

    /// Whether every frozen weight is dense (the exact path, which training needs).
    pub fn is_dense(&self) -> bool {
        let dense = |w: &Weight| matches!(w, Weight::Dense(_));
        dense(&self.embed_tokens)
            && dense(&self.lm_head)
            && self.linears().iter().all(|l| l.is_dense())
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.norm.device()
    }

    /// Every linear layer with its module path, in model order (for LoRA targeting).
    pub fn linears(&self) -> Vec<&Linear> {
        self.layers
            .iter()
            .flat_map(|block| {
                let attn = block.self_attn.linears();
                let mlp = block.mlp.linears();
                attn.into_iter().chain(mlp)
            })
            .collect()
    }

    /// A fresh KV cache for this model.
    pub fn new_cache(&self) -> Cache {
        Cache::new(self.layers.len())
    }

    /// A fresh KV cache with room for `tokens` (capped at the context) allocated at once.
    pub fn new_cache_for(&self, tokens: usize) -> Cache {
        Cache::with_capacity(self.layers.len(), tokens.min(self.rope.max_positions()))
    }

    /// Token embeddings `(batch, seq, hidden)` and RoPE tables of `tokens` at `positions`
    /// (the global layers', then the sliding-window layers' when they differ).
    fn embed(&self, tokens: &Tensor, positions: &Tensor) -> Result<(Tensor, Rotations)> {
        let (batch, seq) = tokens.dims2()?;
        let max_position = positions.max_all()?.to_scalar::<u32>()? as usize;
        if max_position >= self.rope.max_positions() {
            candle_core::bail!(
                "position {max_position} is past the model's context of {} tokens",
                self.rope.max_positions()
            );
        }
        let x = self.embedding_rows(&tokens.flatten_all()?)?.reshape((
            batch,
            seq,
            self.config.hidden_size,
        ))?;
        let x = match self.config.embedding_scale {
            Some(scale) => (x * scale)?,
            None => x,
        };
        let global = self.rope.gather(positions)?;
        let local = self
            .rope_local
            .as_ref()
            .map(|tables| tables.gather(positions))
            .transpose()?;
        Ok((x, Rotations { global, local }))
    }

    /// Runs the blocks and the final norm: `(batch, seq, hidden)` hidden states of the new
    /// tokens. With a cache, earlier tokens are read from it and the new ones appended.
    pub fn forward_hidden<'a>(
        &self,
        inputs: &Inputs,
        mut cache: Option<&mut Cache>,
        lora: impl Into<Lora<'a>>,
    ) -> Result<Tensor> {
        let lora = lora.into();
        let seq = inputs.tokens.dim(1)?;
        let (mut x, rotations) = self.embed(&inputs.tokens, &inputs.positions)?;
        let (cos, sin) = &rotations.global;
        // A decode step with a cache reads the key mask directly: no bias tensor per step.
        let direct = seq == 1 && cache.is_some() && inputs.segments.is_none() && fused_decode(&x);
        let bias_for = |window: Option<usize>| -> Result<Option<Tensor>> {
            if direct {
                return Ok(None);
            }
            let segments = inputs.segments.as_deref();
            let bias = attention_bias(
                &inputs.key_mask,
                segments,
                seq,
                window,
                x.dtype(),
                x.device(),
            );
            bias.map(Some)
        };
        let bias = bias_for(None)?;
        // Sliding-window layers: their own mask (and key masks for the direct decode step).
        let window = self.config.sliding_window;
        let local_bias = window.map(|w| bias_for(Some(w))).transpose()?.flatten();
        let local_key_mask: Vec<Vec<u8>> = match window {
            Some(w) if direct => inputs
                .key_mask
                .iter()
                .map(|keys| {
                    let visible = window_key_mask(keys.len(), w);
                    keys.iter().zip(visible).map(|(k, v)| k & v).collect()
                })
                .collect(),
            _ => Vec::new(),
        };
        if bias.is_none() && matches!(lora, Lora::None) && fused_decode::usable(self) {
            if let (Some(cache), Some(host)) = (cache.as_deref_mut(), self.host_weights()) {
                let tokens: Vec<u32> = inputs.tokens.flatten_all()?.to_vec1()?;
                let positions: Vec<u32> = inputs.positions.flatten_all()?.to_vec1()?;
                let rows = RowCaches::Batch(cache.layers_mut(), &inputs.key_mask);
                let out = fused_decode::decode_step(self, host, &tokens, &positions, rows)?;
                let shape = (tokens.len(), 1, self.config.hidden_size);
                return Tensor::from_vec(out, shape, self.device());
            }
        }
        // Training with an adapter: each block is one graph node with a hand-written backward.
        let training = match lora {
            Lora::One(adapter)
                if cache.is_none()
                    && self.config.is_plain_llama_block()
                    && block_backward::applies(&x, adapter) =>
            {
                bias.as_ref().map(|bias| (adapter, bias))
            }
            _ => None,
        };
        for (i, block) in self.layers.iter().enumerate() {
            let sliding = self.config.is_sliding(i);
            if let Some((adapter, bias)) = training {
                let mode = block_backward::Mode {
                    checkpoint: self.gradient_checkpointing(),
                    bf16: self.bf16_training(),
                };
                let tables = (cos, sin);
                if let Some(out) = block_backward::forward(block, &x, tables, bias, adapter, mode)?
                {
                    x = out;
                    continue;
                }
            }
            let cache = cache.as_deref_mut().map(|c| c.layer(i));
            let (cos, sin) = rotations.of_layer(sliding);
            // Sliding layers read their own mask: the windowed bias, or on the direct decode
            // step (no bias at all) the windowed key mask.
            let kv = KvSource::Batch {
                bias: if sliding { &local_bias } else { &bias }.as_ref(),
                key_mask: if sliding && direct {
                    &local_key_mask
                } else {
                    &inputs.key_mask
                },
                cache,
            };
            x = block.forward(&x, cos, sin, kv, lora)?;
        }
        rms_norm(&x, &self.norm, self.config.rms_norm_eps)
    }

    /// One decoding step for sequences that each have their own cache (of any length): row
    /// `i` feeds `tokens[i]` at `positions[i]` and reads `caches[i]`. Returns the next-token
    /// logits `(rows, vocab)`. This is how a server batches requests that started at
    /// different times.
    pub fn decode_rows<'a>(
        &self,
        tokens: &[u32],
        positions: &[u32],
        caches: &mut [&mut Cache],
        lora: impl Into<Lora<'a>>,
    ) -> Result<Tensor> {
        let lora = lora.into();
        let rows = tokens.len();
        if positions.len() != rows || caches.len() != rows {
            candle_core::bail!(
                "decode_rows: {rows} tokens, {} positions and {} caches",
                positions.len(),
                caches.len()
            );
        }
        let device = self.device();
        if matches!(lora, Lora::None) && fused_decode::usable(self) {
            if let Some(host) = self.host_weights() {
                let per_row =
                    RowCaches::PerRow(caches.iter_mut().map(|c| c.layers_mut()).collect());
                let out = fused_decode::decode_step(self, host, tokens, positions, per_row)?;
                let hidden = Tensor::from_vec(out, (rows, self.config.hidden_size), device)?;
                return self.logits(&hidden);
            }
        }
        let tokens = Tensor::from_slice(tokens, (rows, 1), device)?;
        let positions = Tensor::from_slice(positions, (rows, 1), device)?;
        let (mut x, rotations) = self.embed(&tokens, &positions)?;
        for (i, block) in self.layers.iter().enumerate() {
            let sliding = self.config.is_sliding(i);
            let kv = KvSource::PerRow {
                caches: caches.iter_mut().map(|c| c.layer(i)).collect(),
                window: self.config.sliding_window.filter(|_| sliding),
            };
            let (cos, sin) = rotations.of_layer(sliding);
            x = block.forward(&x, cos, sin, kv, lora)?;
        }
        let hidden = rms_norm(&x, &self.norm, self.config.rms_norm_eps)?;
        self.logits(&hidden.squeeze(1)?)
    }

    /// Projects hidden states `(.., hidden)` to vocabulary logits `(.., vocab)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.matmul_t(hidden)
    }

    /// Logits `(batch, seq, vocab)` for every new token.
    pub fn forward<'a>(
        &self,
        inputs: &Inputs,
        cache: Option<&mut Cache>,
        lora: impl Into<Lora<'a>>,
    ) -> Result<Tensor> {
        self.logits(&self.forward_hidden(inputs, cache, lora)?)
    }
}
