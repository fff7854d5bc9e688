//! Forward + backward of a LoRA training step on the default model (CPU, f32): ms per step,
//! tokens/s and peak RSS. `scripts/bench/lora-step-vs-peft.sh` runs it beside PyTorch + PEFT on
//! the same tokens and prints the ratio.
//!
//! `cargo bench --bench lora_step -- [--batch 4] [--seq 128] [--steps 5] [--rank 8]
//! [--composed] [--gradient-checkpointing] [--bf16]`
//!
//! The step is `ft train`'s: `causal_lm_loss` (every token a label) and its backward.
//! `--composed` records the old path instead (candle's autograd of composed primitives, no
//! block node); `--gradient-checkpointing` recomputes each block's forward in backward; `--bf16`
//! multiplies by the frozen weights in bf16 (AVX512_BF16).

#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use ft::data::{BatchConfig, Batcher, TokenizedExample};
use ft::model::loss::causal_lm_loss;
use ft::model::{LoraAdapter, LoraConfig, Model, TargetModules};

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
    // As every `ft` command does at start-up (thread count, candle's pool settings).
    ft::kernels::threads::set_num_threads(0)?;
    let flag = |name: &str| std::env::args().any(|a| a == name);
    let composed = flag("--composed");
    let path = ft::hub::resolve_model(None)?;
    let model = Model::load(&path, &Device::Cpu)?;
    model
        .transformer
        .set_gradient_checkpointing(flag("--gradient-checkpointing"));
    model.transformer.set_bf16_training(flag("--bf16"))?;
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
    let ids = tokens(batch, seq, vocab);
    let examples = ids
        .chunks(seq)
        .map(|row| TokenizedExample {
            input_ids: row.to_vec(),
            labels: vec![true; seq],
        })
        .collect();
    let batch_config = BatchConfig {
        batch_size: batch,
        max_seq_len: seq,
        packing: false,
        seed: 0,
        pad_id: 0,
    };
    let batcher = Batcher::new(examples, batch_config);
    let plan = batcher.plan(0);
    let rows = plan.first().ok_or_else(|| anyhow::anyhow!("no batch"))?;
    let the_batch = batcher.batch(rows);
    let step = || -> Result<f32> {
        let run = || -> Result<f32> {
            let loss = causal_lm_loss(&model.transformer, &the_batch, Some(&adapter))?;
            let grads = loss.mean.backward()?;
            let (_, first) = &adapter.vars()[0];
            anyhow::ensure!(grads.get(first.as_tensor()).is_some(), "no LoRA gradient");
            Ok(loss.mean.to_scalar::<f32>()?)
        };
        if composed {
            ft::kernels::backward_path::with_composed(run)
        } else {
            run()
        }
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
        match (composed, flag("--gradient-checkpointing"), flag("--bf16")) {
            (true, _, _) => " (composed autograd)",
            (false, true, _) => " (gradient checkpointing)",
            (false, false, true) => " (bf16 frozen products)",
            (false, false, false) => "",
        },
        seconds * 1e3,
        peak_rss_mib()
    );
    println!(
        "RESULT tokens_per_sec={tokens_per_sec:.3} peak_rss_mib={:.1}",
        peak_rss_mib()
    );
    Ok(())
}
