//! Training configuration: a TOML file (`--config`) overridden by flags, defaults from the seed
//! recipe. The resolved configuration is written next to the run as `config.toml`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::schedule::SchedulerKind;
use crate::{Error, Result};

/// Every training setting. Field names are the TOML keys and the `--flag` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training data (ignored when `max_steps` is set).
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<usize>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Decay after warmup.
    pub lr_scheduler: SchedulerKind,
    /// Warmup steps (takes precedence over `warmup_ratio`).
    pub warmup_steps: Option<usize>,
    /// Warmup as a fraction of all steps.
    pub warmup_ratio: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f64,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA alpha.
    pub lora_alpha: f64,
    /// Dropout on the LoRA input.
    pub lora_dropout: f64,
    /// `all-linear` or a comma-separated list of module names.
    pub target_modules: String,
    /// Scale by `alpha/√r` instead of `alpha/r`.
    pub use_rslora: bool,
    /// Longest example in tokens.
    pub max_seq_len: usize,
    /// Drives LoRA initialisation, dropout and data order.
    pub seed: u64,
    /// Save a checkpoint every this many steps (0 = only at the end).
    pub save_steps: usize,
    /// Keep this many recent checkpoints (plus the best).
    pub save_total_limit: usize,
    /// Evaluate every this many steps (also at each epoch end).
    pub eval_steps: Option<usize>,
    /// Stop after this many evaluations without improvement.
    pub early_stopping_patience: Option<usize>,
    /// Pack several examples per row.
    pub packing: bool,
    /// Also train on prompt tokens of prompt/completion data.
    pub train_on_prompt: bool,
    /// Recompute each block's activations in backward instead of keeping them (less memory
    /// for long sequences, about one more forward of time). Changes no number.
    pub gradient_checkpointing: bool,
    /// `f32` (exact, the default) or `bf16`: the frozen base's products in bf16 with f32
    /// accumulation (CPUs with AVX512_BF16); LoRA weights, gradients and AdamW stay f32.
    pub precision: TrainPrecision,
    /// How the frozen base's linear weights are held: `f32` (exact, the default), or
    /// quantized (`q8`, `q4`: QLoRA-style, a fraction of the memory; products over weight
    /// tiles dequantized on the fly, forward and backward).
    pub base_precision: BasePrecision,
}

/// How the frozen base is held in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BasePrecision {
    /// Dense f32: PEFT's numbers.
    #[default]
    F32,
    /// Quantized linears: a GGUF's blocks as they are; full-precision weights to Q8_0 at load.
    Q8,
    /// Quantized linears: a GGUF's blocks as they are; full-precision weights to Q4_0 at load.
    Q4,
}

impl std::str::FromStr for BasePrecision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "q8" => Ok(Self::Q8),
            "q4" => Ok(Self::Q4),
            other => Err(format!(
                "unknown base precision `{other}`; use f32, q8 or q4"
            )),
        }
    }
}

/// The arithmetic of the frozen base's products in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrainPrecision {
    /// f32 throughout: PEFT's numbers.
    #[default]
    F32,
    /// bf16 products of the frozen weights, f32 accumulation.
    Bf16,
}

impl std::str::FromStr for TrainPrecision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown training precision `{other}`; use f32 or bf16"
            )),
        }
    }
}

impl Default for TrainConfig {
    /// The seed recipe: lr 2e-4, 3 epochs, batch 4 × accumulation 4, 3 % warmup, cosine,
    /// weight decay 0, clip 1.0, r 8, alpha 16, dropout 0.05, all linear layers.
    fn default() -> Self {
        Self {
            epochs: 3,
            max_steps: None,
            batch_size: 4,
            grad_accum: 4,
            lr: 2e-4,
            lr_scheduler: SchedulerKind::Cosine,
            warmup_steps: None,
            warmup_ratio: 0.03,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: "all-linear".into(),
            use_rslora: false,
            max_seq_len: 1024,
            seed: 42,
            save_steps: 50,
            save_total_limit: 2,
            eval_steps: None,
            early_stopping_patience: None,
            packing: false,
            train_on_prompt: false,
            gradient_checkpointing: false,
            precision: TrainPrecision::F32,
            base_precision: BasePrecision::F32,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file; unknown keys are an error naming the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string().trim().replace('\n', " "),
        })
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks values that would make training meaningless.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("lora_r", self.lora_r),
            ("max_seq_len", self.max_seq_len),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return Err("epochs must be at least 1 (or set max_steps)".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!(
                "lora_dropout must be in [0, 1), got {}",
                self.lora_dropout
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(format!(
                "warmup_ratio must be in [0, 1], got {}",
                self.warmup_ratio
            ));
        }
        if self.max_seq_len < 2 {
            return Err("max_seq_len must be at least 2".into());
        }
        Ok(())
    }

    /// Warmup steps out of `total_steps`.
    pub fn warmup(&self, total_steps: usize) -> usize {
        self.warmup_steps
            .unwrap_or_else(|| (self.warmup_ratio * total_steps as f64).ceil() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trips_and_rejects_unknown_keys() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let path = dir.path().join("train.toml");
        std::fs::write(
            &path,
            "lr = 1e-3\nmax_steps = 30\nlr_scheduler = \"constant\"\n",
        )
        .map_err(|e| Error::io(&path, e))?;
        let config = TrainConfig::from_file(&path)?;
        assert_eq!(
            (config.lr, config.max_steps, config.lora_r),
            (1e-3, Some(30), 8)
        );
        assert_eq!(config.lr_scheduler, SchedulerKind::Constant);
        std::fs::write(&path, config.to_toml()).map_err(|e| Error::io(&path, e))?;
        assert_eq!(TrainConfig::from_file(&path)?, config);
        std::fs::write(&path, "learning_rate = 1e-3\n").map_err(|e| Error::io(&path, e))?;
        let err = TrainConfig::from_file(&path)
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("learning_rate"), "{err}");
        Ok(())
    }
}
