//! Subcommands, one file each.

use clap::{Parser, Subcommand};

mod common;
mod data;
mod generate;
mod score;
mod train;

/// Fine-tune LoRA adapters on a frozen base model and serve them.
#[derive(Debug, Parser)]
#[command(name = "ft", version, about)]
pub struct Cli {
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
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Score(args) => score::run(args),
        Command::Data(args) => data::run(args),
        Command::Train(args) => train::run(*args),
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
