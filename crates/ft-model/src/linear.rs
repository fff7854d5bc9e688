//! A frozen linear layer that knows its PEFT module path, so a LoRA adapter can find it.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::lora::Lora;

/// `y = x·Wᵀ + b`, plus `scale · x·Aᵀ·Bᵀ` when the adapter in use targets this module.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    path: String,
}

impl Linear {
    /// Loads `weight` (`(out, in)`) and, when `bias` is set, `bias` from `vb`; `parent` is the
    /// module path of the enclosing block, e.g. `model.layers.0.self_attn`.
    pub fn load(
        vb: VarBuilder,
        in_features: usize,
        out_features: usize,
        bias: bool,
        parent: &str,
    ) -> Result<Self> {
        let name = vb
            .prefix()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let weight = vb.get((out_features, in_features), "weight")?;
        let bias = if bias {
            Some(vb.get(out_features, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            path: format!("{parent}.{name}"),
        })
    }

    /// The module path as in PEFT keys, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The short module name, e.g. `q_proj`.
    pub fn name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or_default()
    }

    /// `(out_features, in_features)`.
    pub fn shape(&self) -> (usize, usize) {
        let dims = self.weight.dims();
        (dims[0], dims[1])
    }

    /// `x: (.., in)` → `(.., out)`.
    pub fn forward(&self, x: &Tensor, lora: Lora) -> Result<Tensor> {
        let mut y = ft_kernels::frozen_linear(x, &self.weight)?;
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
