//! `ft score`: per-token negative log-likelihood of a text.

use std::io::Write;

use ft::model::Precision;

use super::common::ModelArgs;

/// Arguments of `ft score`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score (tokenized with no special tokens).
    #[arg(long)]
    text: String,
    /// Print `{"token_ids", "nll", "nll_mean", "n_pred"}` as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ft score`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (model, adapter) = args.model.load(Precision::F32)?;
    let score = model.score(&args.text, adapter.as_ref())?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string(&score)?)?;
    } else {
        writeln!(
            stdout,
            "{} tokens, mean NLL {:.4}, perplexity {:.2}",
            score.token_ids.len(),
            score.nll_mean,
            score.nll_mean.exp()
        )?;
    }
    Ok(())
}
