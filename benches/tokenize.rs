//! Dataset tokenization with assistant masks (parse + template + tokenize + mask), examples/s,
//! on the shipped support set repeated. `scripts/bench/tokenize-vs-transformers.sh` runs it
//! beside transformers' `apply_chat_template` + tokenizer and prints the ratio.
//!
//! `cargo bench --bench tokenize -- [--repeat 20]`

#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use ft::data::dataset::{read_dataset, ReadOptions};
use ft::data::{ExampleTokenizer, Tokenizer};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let repeat = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20usize);
    let source = std::fs::read_to_string("datasets/support/train.jsonl")?;
    let mut file = tempfile::NamedTempFile::new()?;
    for _ in 0..repeat {
        file.write_all(source.as_bytes())?;
    }
    file.flush()?;
    let tokenizer = Tokenizer::load(&ft::hub::resolve_model(None)?)?;
    let examples = ExampleTokenizer::new(&tokenizer, false);
    let start = Instant::now();
    let (tokenized, report) = read_dataset(file.path(), &examples, &ReadOptions::default())?;
    let seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(!report.has_errors(), "{report}");
    let per_sec = tokenized.len() as f64 / seconds;
    println!(
        "ft: {} examples ({} tokens) parsed, templated, tokenized and masked in {seconds:.2} s, {per_sec:.0} examples/s",
        tokenized.len(),
        report.tokens
    );
    println!("RESULT examples_per_sec={per_sec:.3}");
    Ok(())
}
