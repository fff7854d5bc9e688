//! AdamW with PyTorch's semantics (decoupled weight decay, bias correction) and f32 state that
//! is saved and restored exactly, plus global-norm gradient clipping.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};

/// AdamW hyperparameters (PyTorch's defaults except the weight decay, which follows the seed
/// recipe).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Moments of one parameter.
#[derive(Debug, Clone)]
struct Moments {
    m: Tensor,
    v: Tensor,
}

/// AdamW over named variables. `torch.optim.AdamW` step for step:
/// `p ← p·(1 − lr·wd)`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`.
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    moments: HashMap<String, Moments>,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: HashMap::new(),
        }
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update of every `(name, var)` with its gradient in `grads` at learning rate `lr`.
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for (name, var) in params {
            let Some(grad) = grads.get(name) else {
                continue;
            };
            let grad = grad.to_dtype(DType::F32)?;
            let moments = match self.moments.remove(name) {
                Some(m) => m,
                None => Moments {
                    m: grad.zeros_like()?,
                    v: grad.zeros_like()?,
                },
            };
            let m = ((moments.m * c.beta1)? + (&grad * (1.0 - c.beta1))?)?;
            let v = ((moments.v * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
            let mut p = var.as_tensor().clone();
            if c.weight_decay != 0.0 {
                p = (p * (1.0 - lr * c.weight_decay))?;
            }
            let denom = ((v.sqrt()? / bias2_sqrt)? + c.eps)?;
            let update = ((&m / denom)? * (lr / bias1))?;
            var.set(&(p - update)?)?;
            self.moments.insert(name.clone(), Moments { m, v });
        }
        Ok(())
    }

    /// Saves the step count and moments to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.moments.len() + 1);
        tensors.push((
            "step".into(),
            Tensor::new(&[self.step as i64], &Device::Cpu)?,
        ));
        for (name, moments) in &self.moments {
            tensors.push((format!("m.{name}"), moments.m.to_device(&Device::Cpu)?));
            tensors.push((format!("v.{name}"), moments.v.to_device(&Device::Cpu)?));
        }
        let bytes = safetensors::serialize(tensors, None)
            .map_err(|e| candle_core::Error::Msg(format!("serialising optimizer state: {e}")))?;
        std::fs::write(path, bytes)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
    }

    /// Restores state saved by [`AdamW::save`] onto `device`.
    pub fn load(config: AdamWConfig, path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, device)?;
        let step = tensors
            .get("step")
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no `step`", path.display())))?
            .to_vec1::<i64>()?
            .first()
            .map_or(0, |s| *s as u64);
        let mut moments = HashMap::new();
        for (key, m) in &tensors {
            if let Some(name) = key.strip_prefix("m.") {
                let v = tensors.get(&format!("v.{name}")).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "{}: `{key}` has no matching v",
                        path.display()
                    ))
                })?;
                moments.insert(
                    name.to_string(),
                    Moments {
                        m: m.clone(),
                        v: v.clone(),
                    },
                );
            }
        }
        Ok(Self {
            config,
            step,
            moments,
        })
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let mut total = 0f64;
    for name in names {
        total += grads[name]
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 {
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        if coef < 1.0 {
            for grad in grads.values_mut() {
                *grad = (&*grad * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_step_matches_hand_computed_adamw() -> Result<()> {
        // p=1, g=0.5, lr=0.1, wd=0.01: p·(1−0.001)=0.999; m=0.05, v=0.00025;
        // m̂=0.5, v̂=0.25 → update 0.1·0.5/(0.5+1e-8) ≈ 0.1 → p ≈ 0.899.
        let var = Var::new(&[1f32], &Device::Cpu)?;
        let params = vec![("p".to_string(), var.clone())];
        let grads = HashMap::from([("p".to_string(), Tensor::new(&[0.5f32], &Device::Cpu)?)]);
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        });
        opt.step(&params, &grads, 0.1)?;
        let p = var.as_tensor().to_vec1::<f32>()?[0];
        assert!((p - 0.899).abs() < 1e-6, "{p}");
        Ok(())
    }

    #[test]
    fn saved_state_resumes_bit_for_bit() -> Result<()> {
        let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
        let run = |split: bool| -> Result<Vec<f32>> {
            let var = Var::new(&[1f32, -2., 3.], &Device::Cpu)?;
            let params = vec![("p".to_string(), var.clone())];
            let mut opt = AdamW::new(AdamWConfig::default());
            for step in 0..6 {
                if split && step == 3 {
                    opt.save(&dir.path().join("opt.safetensors"))?;
                    opt = AdamW::load(
                        AdamWConfig::default(),
                        &dir.path().join("opt.safetensors"),
                        &Device::Cpu,
                    )?;
                }
                let g = (var.as_tensor() * 0.3)?.sin()?;
                opt.step(&params, &HashMap::from([("p".to_string(), g)]), 0.01)?;
            }
            var.as_tensor().to_vec1()
        };
        assert_eq!(run(false)?, run(true)?);
        Ok(())
    }

    #[test]
    fn clipping_scales_to_max_norm() -> Result<()> {
        let mut grads = HashMap::from([
            ("a".to_string(), Tensor::new(&[3f32], &Device::Cpu)?),
            ("b".to_string(), Tensor::new(&[4f32], &Device::Cpu)?),
        ]);
        let norm = clip_grad_norm(&mut grads, 1.0)?;
        assert!((norm - 5.0).abs() < 1e-9);
        let a = grads["a"].to_vec1::<f32>()?[0];
        assert!((a - 0.6).abs() < 1e-5);
        Ok(())
    }
}
