//! Forward + backward of a LoRA training step on the default model (CPU, f32): ms per step,
//! tokens/s and peak RSS. `scripts/bench/lora-step-vs-peft.sh` runs it beside PyTorch + PEFT on
//! the same tokens and prints the ratio.
//!
//! `cargo bench --bench lora_step -- [--batch 4] [--seq 128] [--steps 5] [--rank 8] [--naive-frozen]`
//!
//! `--naive-frozen` uses candle's plain matmul for the frozen base layers (which computes the
//! weight gradients and throws them away) to measure what `ft_kernels::frozen_linear` saves.

#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use ft::model::{Inputs, LoraAdapter, LoraConfig, Model, TargetModules};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of this process, from /proc (Linux), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The token ids both sides use: a fixed pseudo-random sequence (same formula in
/// `scripts/bench/lora_step_peft.py`).
fn tokens(batch: usize, seq: usize, vocab: usize) -> Vec<u32> {
    (0..batch * seq)
        .map(|i| ((i as u64 * 7919 + 13) % vocab as u64) as u32)
        .collect()
}

fn main() -> Result<()> {
    let (batch, seq, steps, rank) = (
        arg("--batch", 4),
        arg("--seq", 128),
        arg("--steps", 5),
        arg("--rank", 8),
    );
    let naive = std::env::args().any(|a| a == "--naive-frozen");
    ft::kernels::set_naive_frozen_linear(naive);
    let path = ft::hub::resolve_model(None)?;
    let model = Model::load(&path, &Device::Cpu)?;
    let config = LoraConfig {
        r: rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        target_modules: TargetModules::AllLinear,
        use_rslora: false,
    };
    // B non-zero so the step does the same work as a step after the first update.
    let adapter = LoraAdapter::init(&model.transformer, config, 0, None)?;
    for (key, var) in adapter.vars() {
        if key.ends_with("lora_B.weight") {
            var.set(&(var.as_tensor().ones_like()? * 1e-3)?)?;
        }
    }
    let vocab = model.transformer.config().vocab_size;
    let ids = Tensor::from_vec(tokens(batch, seq, vocab), (batch, seq), &Device::Cpu)?;
    let inputs = Inputs::from_attention_mask(&ids, &vec![vec![1u8; seq]; batch])?;
    let labels = ids.narrow(1, 1, seq - 1)?.flatten_all()?;
    let mask = labels.ones_like()?.to_dtype(candle_core::DType::F32)?;
    let step = || -> Result<f32> {
        let logits = model.transformer.forward(&inputs, None, Some(&adapter))?;
        let logits = logits.narrow(1, 0, seq - 1)?.flatten_to(1)?;
        let (loss, _) = ft::kernels::masked_cross_entropy(&logits, &labels, &mask)?;
        let grads = loss.backward()?;
        let (_, first) = &adapter.vars()[0];
        anyhow::ensure!(grads.get(first.as_tensor()).is_some(), "no LoRA gradient");
        Ok(loss.to_scalar::<f32>()?)
    };
    let loss = step()?; // warm-up
    let start = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    let seconds = start.elapsed().as_secs_f64() / steps as f64;
    let tokens_per_sec = (batch * seq) as f64 / seconds;
    println!(
        "ft{} batch {batch}x{seq} r{rank}: loss {loss:.4}, {:.1} ms/step, {tokens_per_sec:.1} tokens/s, peak RSS {:.0} MiB",
        if naive { " (naive frozen matmul)" } else { "" },
        seconds * 1e3,
        peak_rss_mib()
    );
    println!(
        "RESULT tokens_per_sec={tokens_per_sec:.3} peak_rss_mib={:.1}",
        peak_rss_mib()
    );
    Ok(())
}
