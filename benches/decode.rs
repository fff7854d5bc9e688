//! Greedy decode speed on the default model (CPU, batch 1): tokens/s after the prompt.
//! `scripts/bench/decode-vs-transformers.sh` runs it beside transformers' `generate` and prints
//! the ratio.
//!
//! `cargo bench --bench decode -- [--new-tokens 64] [--threads N] [--precision f32|quantized]`

#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use ft::model::generate::{generate, GenerateParams};
use ft::model::text::TextRequest;
use ft::model::{ModelOptions, Precision, TextModel};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let new_tokens = flag("--new-tokens")
        .and_then(|v| v.parse().ok())
        .unwrap_or(64usize);
    let threads = flag("--threads").and_then(|v| v.parse().ok()).unwrap_or(0);
    let precision: Precision = match flag("--precision") {
        Some(p) => p.parse().map_err(anyhow::Error::msg)?,
        None => Precision::Quantized,
    };
    ft::kernels::threads::set_num_threads(threads)?;
    let path = ft::hub::resolve_model(None)?;
    let options = ModelOptions {
        precision,
        ..Default::default()
    };
    let model = TextModel::load_with(&path, &Device::Cpu, &options)?;
    let request = TextRequest {
        prompt: "Write a short story about a robot who learns to paint.".into(),
        raw: false,
        max_new_tokens: new_tokens,
        sampling: Default::default(),
    };
    let prompt = model.prompt_ids(&request)?;
    // No stop tokens: both sides generate exactly `new_tokens`.
    let params = GenerateParams {
        max_new_tokens: new_tokens,
        stop_ids: Vec::new(),
        sampling: Default::default(),
    };
    generate(
        &model.model.transformer,
        std::slice::from_ref(&prompt),
        &GenerateParams {
            max_new_tokens: 4,
            ..params.clone()
        },
        None,
    )?;
    let start = Instant::now();
    let out = generate(&model.model.transformer, &[prompt], &params, None)?;
    let seconds = start.elapsed().as_secs_f64();
    let tokens_per_sec = out[0].len() as f64 / seconds;
    println!(
        "ft greedy decode ({precision:?}, {} threads): {} new tokens in {seconds:.2} s, {tokens_per_sec:.1} tokens/s",
        ft::kernels::threads::num_threads(),
        out[0].len()
    );
    println!("RESULT tokens_per_sec={tokens_per_sec:.3}");
    Ok(())
}
