//! `ft data validate` and `ft data prepare`.

use std::io::Write;
use std::path::PathBuf;

use ft::data::dataset::{read_dataset, ReadOptions};
use ft::data::prepare::{prepare, PrepareOptions};
use ft::data::{ExampleTokenizer, Format, Tokenizer};
use ft::model::adapter_io::write_atomically;

/// Arguments of `ft data`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Check a JSONL dataset: every bad line with its number and reason, then a summary.
    Validate(ValidateArgs),
    /// Clean, mask PII, dedup, filter and split raw JSONL into train/validation/test.
    Prepare(PrepareArgs),
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// The JSONL file.
    file: PathBuf,
    /// The model whose tokenizer and chat template to use [default: the default model].
    #[arg(long)]
    model: Option<String>,
    /// Longest example in tokens.
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// chat, prompt-completion or text [default: detected per line].
    #[arg(long)]
    format: Option<Format>,
    /// Put prompt tokens of prompt/completion examples in the loss too.
    #[arg(long)]
    train_on_prompt: bool,
    /// Most line errors to print (0 = all).
    #[arg(long, default_value_t = 100)]
    max_errors: usize,
    /// Also write every bad line (line, field, reason) and the summary to this JSON file.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct PrepareArgs {
    /// The raw JSONL file.
    file: PathBuf,
    /// Output directory (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Drop examples shorter than this many characters.
    #[arg(long, default_value_t = 10)]
    min_chars: usize,
    /// Drop examples longer than this many characters.
    #[arg(long, default_value_t = 4000)]
    max_chars: usize,
    /// Keep emails and phone numbers as they are.
    #[arg(long)]
    no_pii: bool,
    /// Also drop near-duplicates at this Jaccard similarity (e.g. 0.8).
    #[arg(long)]
    near_dup: Option<f64>,
}

/// Runs `ft data ...`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Validate(args) => validate(args),
        Command::Prepare(args) => prepare_command(args),
    }
}

fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let model = ft::hub::resolve_model(args.model.as_deref())?;
    let tokenizer = Tokenizer::load(&model)?;
    let shown = match args.max_errors {
        0 => usize::MAX,
        n => n,
    };
    let options = ReadOptions {
        format: args.format,
        max_seq_len: args.max_seq_len,
        train_on_prompt: args.train_on_prompt,
        // The report file lists every bad line, whatever the terminal shows.
        max_errors: if args.report.is_some() {
            usize::MAX
        } else {
            shown
        },
    };
    let examples = ExampleTokenizer::new(&tokenizer, args.train_on_prompt);
    let (_, report) = read_dataset(&args.file, &examples, &options)?;
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report.to_json())?;
        write_atomically(path, format!("{json}\n").as_bytes())?;
    }
    writeln!(std::io::stdout().lock(), "{}", report.display(shown))?;
    if report.has_errors() {
        anyhow::bail!(
            "{}: {} invalid lines of {}",
            args.file.display(),
            report.invalid_lines,
            report.lines
        );
    }
    Ok(())
}

fn prepare_command(args: PrepareArgs) -> anyhow::Result<()> {
    if let Some(t) = args.near_dup {
        if !(0.0..=1.0).contains(&t) {
            anyhow::bail!("--near-dup must be between 0 and 1, got {t}");
        }
    }
    let options = PrepareOptions {
        min_chars: args.min_chars,
        max_chars: args.max_chars,
        mask_pii: !args.no_pii,
        near_dup_threshold: args.near_dup,
        seed: args.seed,
        ..PrepareOptions::default()
    };
    let report = prepare(&args.file, &args.out, &options)?;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&report)?
    )?;
    Ok(())
}
