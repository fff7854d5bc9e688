//! Reading a JSONL dataset: streamed line by line (a file never sits in memory whole),
//! parsed, tokenized in parallel, and validated, with every problem reported by line number.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::format::{parse_line, Example, Format};
use crate::tokenize::{ExampleTokenizer, TokenizedExample};
use crate::{Error, Result};

/// How to read a dataset.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Force a format instead of detecting it per line.
    pub format: Option<Format>,
    /// Examples longer than this are reported (and skipped with `skip_invalid`).
    pub max_seq_len: usize,
    /// Label prompt tokens of prompt/completion examples too.
    pub train_on_prompt: bool,
    /// How many line errors to keep for the report (all are counted); `usize::MAX` keeps all.
    pub max_errors: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            format: None,
            max_seq_len: 2048,
            train_on_prompt: false,
            max_errors: 100,
        }
    }
}

/// A problem with one line of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// The field at fault (`messages[2].role`), or `None` when it is the line as a whole
    /// (invalid JSON, too many tokens).
    pub field: Option<String>,
    /// What is wrong, naming the field.
    #[serde(rename = "reason")]
    pub message: String,
}

impl LineError {
    /// An error on `line`; the field is read off the front of `message`, where the format
    /// checks always name it (`messages[0].role is ...`, `messages[1]: missing field `role``,
    /// `missing field `text``).
    pub fn new(line: usize, message: String) -> Self {
        Self {
            line,
            field: field_of(&message),
            message,
        }
    }
}

/// The top-level fields a line may have; a message starting with one of them names it.
const FIELDS: [&str; 4] = ["messages", "prompt", "completion", "text"];

fn field_of(message: &str) -> Option<String> {
    let path_len = message
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '[' | ']' | '.')))
        .unwrap_or(message.len());
    let path = &message[..path_len];
    let root = path.split(['[', '.']).next().unwrap_or("");
    let quoted = |rest: &str| {
        rest.strip_prefix("missing field `")
            .and_then(|r| r.split_once('`'))
            .map(|(name, _)| name.to_string())
    };
    if FIELDS.contains(&root) {
        match message[path_len..].strip_prefix(": ").and_then(quoted) {
            Some(name) => Some(format!("{path}.{name}")),
            None => Some(path.to_string()),
        }
    } else {
        quoted(message)
    }
}

/// What reading a dataset found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The file.
    pub path: PathBuf,
    /// Non-empty lines read.
    pub lines: usize,
    /// Valid examples.
    pub examples: usize,
    /// Kept line errors (at most `max_errors`), in line order.
    pub errors: Vec<LineError>,
    /// All line errors, including those not kept.
    pub error_count: usize,
    /// Lines with at least one error.
    pub invalid_lines: usize,
    /// Tokens over all valid examples.
    pub tokens: usize,
    /// Label tokens over all valid examples.
    pub label_tokens: usize,
    /// Token length of each valid example, for percentiles.
    pub lengths: Vec<usize>,
}

impl Report {
    /// The `p`-th percentile (0–100) of example lengths in tokens.
    pub fn length_percentile(&self, p: f64) -> usize {
        if self.lengths.is_empty() {
            return 0;
        }
        let mut sorted = self.lengths.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank.min(sorted.len() - 1)]
    }

    /// Whether any line was invalid.
    pub fn has_errors(&self) -> bool {
        self.error_count > 0
    }
}

impl Report {
    /// The report as text, showing at most `max_errors` line errors (then "... and N more").
    pub fn display(&self, max_errors: usize) -> Shown<'_> {
        Shown {
            report: self,
            max_errors,
        }
    }

    /// Every kept error and the summary as JSON (`ft data validate --report`).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "file": self.path.display().to_string(),
            "summary": {
                "lines": self.lines,
                "valid_examples": self.examples,
                "invalid_lines": self.invalid_lines,
                "errors": self.error_count,
                "errors_listed": self.errors.len(),
                "tokens": self.tokens,
                "label_tokens": self.label_tokens,
                "length_p50": self.length_percentile(50.0),
                "length_p90": self.length_percentile(90.0),
                "length_p99": self.length_percentile(99.0),
                "length_max": self.lengths.iter().max().copied().unwrap_or(0),
            },
            "errors": self.errors,
        })
    }
}

/// A [`Report`] shown with a cap on the listed errors; see [`Report::display`].
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    report: &'a Report,
    max_errors: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.display(usize::MAX).fmt(f)
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let report = self.report;
        let name = report.path.display();
        let shown = report.errors.len().min(self.max_errors);
        for error in &report.errors[..shown] {
            writeln!(f, "{name}:{}: {}", error.line, error.message)?;
        }
        if report.error_count > shown {
            writeln!(f, "... and {} more errors", report.error_count - shown)?;
        }
        let this = report;
        writeln!(
            f,
            "{name}: {} lines, {} valid examples, {} invalid lines",
            this.lines, this.examples, this.invalid_lines
        )?;
        write!(
            f,
            "tokens {} (labels {}), length p50 {} p90 {} p99 {} max {}",
            this.tokens,
            this.label_tokens,
            this.length_percentile(50.0),
            this.length_percentile(90.0),
            this.length_percentile(99.0),
            this.lengths.iter().max().copied().unwrap_or(0)
        )
    }
}

/// Lines parsed and tokenized together, bounding memory for huge files.
const CHUNK_LINES: usize = 4096;

/// Reads, validates and tokenizes `path`. Returns the valid examples (in file order) and the
/// report; only an unreadable file is an `Err` — bad lines are in the report.
pub fn read_dataset(
    path: &Path,
    tokenizer: &ExampleTokenizer<'_>,
    options: &ReadOptions,
) -> Result<(Vec<TokenizedExample>, Report)> {
    let io_error = |e| Error::Io {
        path: path.to_path_buf(),
        cause: e,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io_error)?);
    let mut report = Report {
        path: path.to_path_buf(),
        ..Report::default()
    };
    let mut examples = Vec::new();
    let mut chunk: Vec<(usize, Vec<u8>)> = Vec::with_capacity(CHUNK_LINES);
    let mut line_number = 0;
    loop {
        let mut bytes = Vec::new();
        let read = reader.read_until(b'\n', &mut bytes).map_err(io_error)?;
        if read > 0 {
            line_number += 1;
            if !bytes.iter().all(u8::is_ascii_whitespace) {
                chunk.push((line_number, bytes));
            }
        }
        if chunk.len() == CHUNK_LINES || (read == 0 && !chunk.is_empty()) {
            process_chunk(&chunk, tokenizer, options, &mut examples, &mut report);
            chunk.clear();
        }
        if read == 0 {
            break;
        }
    }
    Ok((examples, report))
}

fn process_chunk(
    chunk: &[(usize, Vec<u8>)],
    tokenizer: &ExampleTokenizer<'_>,
    options: &ReadOptions,
    examples: &mut Vec<TokenizedExample>,
    report: &mut Report,
) {
    let results: Vec<(usize, std::result::Result<TokenizedExample, Vec<String>>)> = chunk
        .par_iter()
        .map(|(line, bytes)| (*line, tokenize_line(bytes, tokenizer, options)))
        .collect();
    for (line, result) in results {
        report.lines += 1;
        match result {
            Ok(example) => {
                report.examples += 1;
                report.tokens += example.len();
                report.label_tokens += example.num_labels();
                report.lengths.push(example.len());
                examples.push(example);
            }
            Err(messages) => {
                report.invalid_lines += 1;
                for message in messages {
                    report.error_count += 1;
                    if report.errors.len() < options.max_errors {
                        report.errors.push(LineError::new(line, message));
                    }
                }
            }
        }
    }
}

fn tokenize_line(
    bytes: &[u8],
    tokenizer: &ExampleTokenizer<'_>,
    options: &ReadOptions,
) -> std::result::Result<TokenizedExample, Vec<String>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| vec![format!("not valid UTF-8 (byte {})", e.valid_up_to())])?;
    let example: Example = parse_line(text.trim_end(), options.format)?;
    let tokenized = tokenizer
        .tokenize(&example)
        .map_err(|e| vec![e.to_string()])?;
    if tokenized.len() > options.max_seq_len {
        return Err(vec![format!(
            "example has {} tokens, max_seq_len is {}: {} would be truncated",
            tokenized.len(),
            options.max_seq_len,
            tokenized.len() - options.max_seq_len
        )]);
    }
    if tokenized.num_labels() == 0 {
        return Err(vec!["example has no label tokens".to_string()]);
    }
    Ok(tokenized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_is_read_off_the_message() {
        let field = |m: &str| LineError::new(1, m.to_string()).field;
        assert_eq!(
            field("messages[0].role is \"bot\"; use system, user or assistant").as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            field("messages[3]: missing field `content`").as_deref(),
            Some("messages[3].content")
        );
        assert_eq!(
            field("missing field `completion`").as_deref(),
            Some("completion")
        );
        assert_eq!(
            field("text must be a string, got a number").as_deref(),
            Some("text")
        );
        assert_eq!(field("invalid JSON: EOF while parsing"), None);
        assert_eq!(field("example has 90 tokens, max_seq_len is 64"), None);
    }
}
