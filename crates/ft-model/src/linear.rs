//! A frozen linear layer that knows its PEFT module path, so a LoRA adapter can find it.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use ft_kernels::bf16_matmul::Bf16Matrix;
use ft_kernels::quant::QuantMatrix;

use crate::lora::Lora;

/// Frozen weights kept in their GGUF block type, by HF name (`model.layers.0.mlp.up_proj.weight`).
/// Empty for a model computed in full precision.
pub type QuantizedWeights = HashMap<String, Arc<QuantMatrix>>;

/// A frozen `(out, in)` weight: a dense tensor (f32 on CPU: exact, trainable through), or a
/// quantized matrix multiplied by the integer kernels (inference only).
#[derive(Debug, Clone)]
pub enum Weight {
    /// Full precision.
    Dense(Tensor),
    /// GGUF blocks.
    Quantized(Arc<QuantMatrix>),
}

impl Weight {
    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Weight::Dense(w) => {
                let dims = w.dims();
                (dims[0], dims[1])
            }
            Weight::Quantized(q) => (q.rows(), q.cols()),
        }
    }

    /// `x: (.., in)` → `x·Wᵀ: (.., out)`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Weight::Dense(w) => ft_kernels::frozen_linear(x, w),
            Weight::Quantized(q) => ft_kernels::quant::quantized_linear(x, q),
        }
    }

    /// Loads `{prefix}.weight` from `quantized` when it is there, else from `vb`.
    pub fn load(
        vb: &VarBuilder,
        shape: (usize, usize),
        quantized: &QuantizedWeights,
    ) -> Result<Self> {
        let name = format!("{}.weight", vb.prefix());
        match quantized.get(&name) {
            Some(q) if (q.rows(), q.cols()) == shape => Ok(Weight::Quantized(q.clone())),
            Some(q) => candle_core::bail!(
                "{name}: quantized weight is {}x{}, expected {}x{}",
                q.rows(),
                q.cols(),
                shape.0,
                shape.1
            ),
            None => Ok(Weight::Dense(vb.get(shape, "weight")?)),
        }
    }
}

/// `y = x·Wᵀ + b`, plus `scale · x·Aᵀ·Bᵀ` when the adapter in use targets this module.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    path: String,
    /// The weight in bf16, packed for `x·Wᵀ` and `dY·W`, built on first use in bf16 training
    /// (clones share it).
    bf16: Arc<std::sync::OnceLock<Arc<Bf16Weights>>>,
}

/// A dense frozen weight in bf16 for the two products of training.
#[derive(Debug)]
pub struct Bf16Weights {
    /// `W`, for `y = x·Wᵀ`.
    pub forward: Bf16Matrix,
    /// `Wᵀ`, for `dX = dY·W`.
    pub backward: Bf16Matrix,
}

impl Linear {
    /// Loads `weight` (`(out, in)`, from `quantized` when it holds it) and, when `bias` is set,
    /// `bias` from `vb`; `parent` is the module path of the enclosing block, e.g.
    /// `model.layers.0.self_attn`.
    pub fn load(
        vb: VarBuilder,
        in_features: usize,
        out_features: usize,
        bias: bool,
        parent: &str,
        quantized: &QuantizedWeights,
    ) -> Result<Self> {
        let name = vb
            .prefix()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let weight = Weight::load(&vb, (out_features, in_features), quantized)?;
        let bias = if bias {
            Some(vb.get(out_features, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            path: format!("{parent}.{name}"),
            bf16: Arc::default(),
        })
    }

    /// The weight in bf16 (packed once, on the first call); `None` for a quantized weight.
    pub fn bf16_weights(&self) -> Result<Option<Arc<Bf16Weights>>> {
        let Weight::Dense(w) = &self.weight else {
            return Ok(None);
        };
        if let Some(packed) = self.bf16.get() {
            return Ok(Some(packed.clone()));
        }
        let (rows, cols) = w.dims2()?;
        let values: Vec<f32> = w
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let packed = Arc::new(Bf16Weights {
            forward: Bf16Matrix::from_rows(&values, rows, cols),
            backward: Bf16Matrix::from_rows_transposed(&values, rows, cols),
        });
        // Two threads racing here pack the same values; either result is the one kept.
        Ok(Some(self.bf16.get_or_init(|| packed).clone()))
    }

    /// The module path as in PEFT keys, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The frozen weight.
    pub fn weight(&self) -> &Weight {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Whether the weight is dense (not quantized).
    pub fn is_dense(&self) -> bool {
        matches!(self.weight, Weight::Dense(_))
    }

    /// The short module name, e.g. `q_proj`.
    pub fn name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or_default()
    }

    /// `(out_features, in_features)`.
    pub fn shape(&self) -> (usize, usize) {
        self.weight.shape()
    }

    /// `x: (.., in)` → `(.., out)`.
    pub fn forward(&self, x: &Tensor, lora: Lora) -> Result<Tensor> {
        let mut y = self.weight.matmul_t(x)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        match lora {
            Lora::None => Ok(y),
            Lora::One(adapter) => match adapter.module(&self.path) {
                Some(module) => y + module.forward(x)?,
                None => Ok(y),
            },
            Lora::Rows(rows) => rows.add_updates(&self.path, x, y),
        }
    }
}
