//! Subcommands, one file each.

use clap::{Parser, Subcommand};

mod closed_loop;
mod common;
mod data;
mod eval;
mod export;
mod generate;
mod score;
mod serve;
mod train;
mod worker;

/// Fine-tune LoRA adapters on a frozen base model and serve them.
#[derive(Debug, Parser)]
#[command(name = "ft", version, about)]
pub struct Cli {
    /// Worker threads for every kernel (0 = one per physical core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an answer to a prompt (chat template applied unless --raw).
    Generate(generate::Args),
    /// Per-token negative log-likelihood of a text.
    Score(score::Args),
    /// Validate or prepare datasets.
    Data(data::Args),
    /// Train a LoRA adapter on a JSONL dataset.
    Train(Box<train::Args>),
    /// Serve the base model and adapters over an OpenAI-compatible HTTP API.
    Serve(Box<serve::Args>),
    /// Run fine-tuning jobs from a PostgreSQL store shared with `ft serve` (no HTTP).
    Worker(worker::Args),
    /// Evaluate the base model and adapters on a test split (metrics, judge, report, gate).
    Eval(Box<eval::Args>),
    /// Adapter versions on a running server: add, promote (gate, canary, rollback), status.
    Adapters(closed_loop::AdaptersArgs),
    /// Export an adapter merged into its base (HF directory) or as it is (PEFT).
    Export(export::Args),
}

/// `ft eval --gate` found an adapter that does not pass: exit status 1 with this message.
#[derive(Debug, thiserror::Error)]
#[error("gate failed: at least one adapter does not pass (see the Gate section above)")]
pub struct GateFailed;

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    ft::kernels::threads::set_num_threads(cli.threads)?;
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Score(args) => score::run(args),
        Command::Data(args) => data::run(args),
        Command::Train(args) => train::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::Worker(args) => worker::run(args),
        Command::Export(args) => export::run(args),
        Command::Adapters(args) => closed_loop::run(args),
        Command::Eval(args) => {
            if eval::run(*args)? {
                Ok(())
            } else {
                Err(GateFailed.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
