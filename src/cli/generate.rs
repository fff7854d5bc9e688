//! `ft generate`: one answer to one prompt, printed on stdout.

use std::io::Write;

use ft::model::generate::SamplingParams;
use ft::model::text::TextRequest;
use ft::model::Precision;

use super::common::ModelArgs;

/// Arguments of `ft generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Send the prompt as-is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `ft generate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 {
        anyhow::bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.temperature < 0.0 {
        anyhow::bail!("--temperature must be >= 0, got {}", args.temperature);
    }
    let (model, adapter) = args.model.load(Precision::Quantized)?;
    let request = TextRequest {
        prompt: args.prompt,
        raw: args.raw,
        max_new_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: args.seed,
        },
    };
    let text = model.generate(&request, adapter.as_ref())?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    Ok(())
}
