//! `ft data prepare`: the raw-data pipeline. Cleans text, masks PII, drops examples that are
//! too short or too long, removes exact (and optionally near-) duplicates, and writes a seeded
//! 80/10/10 split with a report of what was removed and why.
//!
//! Rules, in order, for every text field (message contents, prompt, completion, text; roles are
//! left alone): CRLF/CR → LF; Unicode NFC; control characters (Cc) other than `\n`/`\t`
//! deleted; tabs → one space; runs of spaces collapsed; trailing spaces of each line stripped;
//! three or more newlines → two; the field trimmed. Then emails → `[EMAIL]` and phone numbers →
//! `[PHONE]`. Length is the sum of the fields' characters. The dedup key is the format and the
//! fields, lowercased, whitespace collapsed; the first copy is kept.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use fancy_regex::Regex;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Map, Value};
use unicode_normalization::UnicodeNormalization;

use crate::{Error, Result};

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}").expect("the email regex is valid")
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?<![\w])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?![\w])")
        .expect("the phone regex is valid")
});
static SPACES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r" {2,}").expect("the spaces regex is valid"));
static NEWLINES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\n{3,}").expect("the newlines regex is valid"));
static WHITESPACE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s+").expect("the whitespace regex is valid"));

/// Settings of `ft data prepare`.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Examples with fewer characters are dropped.
    pub min_chars: usize,
    /// Examples with more characters are dropped.
    pub max_chars: usize,
    /// Mask emails and phone numbers.
    pub mask_pii: bool,
    /// Also drop near-duplicates (MinHash over character 5-grams) at this Jaccard similarity.
    pub near_dup_threshold: Option<f64>,
    /// Seed of the split.
    pub seed: u64,
    /// Fractions of train and validation; test gets the rest.
    pub split: (f64, f64),
}

impl Default for PrepareOptions {
    /// The seed recipe: 10–4000 characters, PII masked, exact dedup only, 80/10/10, seed 42.
    fn default() -> Self {
        Self {
            min_chars: 10,
            max_chars: 4000,
            mask_pii: true,
            near_dup_threshold: None,
            seed: 42,
            split: (0.8, 0.1),
        }
    }
}

/// What `prepare` did, written as `report.json`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PrepareReport {
    /// Non-empty input lines.
    pub lines: usize,
    /// Lines that are not an example of a known format.
    pub invalid: usize,
    /// Their line numbers.
    pub invalid_lines: Vec<usize>,
    /// Emails masked.
    pub pii_email: usize,
    /// Phone numbers masked.
    pub pii_phone: usize,
    /// Examples under `min_chars`.
    pub too_short: usize,
    /// Examples over `max_chars`.
    pub too_long: usize,
    /// Exact duplicates removed.
    pub duplicate: usize,
    /// Near-duplicates removed.
    pub near_duplicate: usize,
    /// Examples kept.
    pub kept: usize,
    /// Examples in `train.jsonl`.
    pub train: usize,
    /// Examples in `validation.jsonl`.
    pub validation: usize,
    /// Examples in `test.jsonl`.
    pub test: usize,
}

/// A raw example: its format name and its JSON object with only the known fields.
#[derive(Debug, Clone, PartialEq)]
pub struct RawExample {
    /// `chat`, `prompt-completion` or `text`.
    pub format: &'static str,
    /// The example as written out.
    pub value: Value,
}

/// Parses a raw line leniently (any role string is accepted; this is cleaning, not validation).
fn parse_raw(line: &str) -> Option<RawExample> {
    let Value::Object(obj) = serde_json::from_str::<Value>(line).ok()? else {
        return None;
    };
    if let Some(messages) = obj.get("messages") {
        let items = messages.as_array().filter(|m| !m.is_empty())?;
        let messages = items
            .iter()
            .map(|m| {
                let role = m.get("role")?.as_str()?;
                let content = m.get("content")?.as_str()?;
                Some(json!({ "role": role, "content": content }))
            })
            .collect::<Option<Vec<_>>>()?;
        return Some(RawExample {
            format: "chat",
            value: json!({ "messages": messages }),
        });
    }
    if let (Some(prompt), Some(completion)) = (obj.get("prompt"), obj.get("completion")) {
        return Some(RawExample {
            format: "prompt-completion",
            value: json!({ "prompt": prompt.as_str()?, "completion": completion.as_str()? }),
        });
    }
    let text = obj.get("text")?.as_str()?;
    Some(RawExample {
        format: "text",
        value: json!({ "text": text }),
    })
}

/// Applies `f` to every text field of `example` (contents, prompt, completion, text).
fn map_fields(example: &mut RawExample, mut f: impl FnMut(&str) -> String) {
    let visit = |obj: &mut Map<String, Value>, key: &str, f: &mut dyn FnMut(&str) -> String| {
        if let Some(Value::String(s)) = obj.get_mut(key) {
            *s = f(s);
        }
    };
    let Value::Object(obj) = &mut example.value else {
        return;
    };
    if let Some(Value::Array(messages)) = obj.get_mut("messages") {
        for message in messages {
            if let Value::Object(m) = message {
                visit(m, "content", &mut f);
            }
        }
    } else {
        for key in ["prompt", "completion", "text"] {
            visit(obj, key, &mut f);
        }
    }
}

/// The text fields of `example` as `(role, text)` pairs (role empty outside chats).
fn fields(example: &RawExample) -> Vec<(String, String)> {
    let value = &example.value;
    if let Some(messages) = value.get("messages").and_then(Value::as_array) {
        return messages
            .iter()
            .map(|m| {
                let get = |k: &str| {
                    m.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                (get("role"), get("content"))
            })
            .collect();
    }
    ["prompt", "completion", "text"]
        .iter()
        .filter_map(|k| value.get(*k).and_then(Value::as_str))
        .map(|s| (String::new(), s.to_string()))
        .collect()
}

/// Cleans one text field (see the module docs for the rules).
pub fn clean(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let text: String = text
        .nfc()
        .filter(|c| *c == '\n' || *c == '\t' || !c.is_control())
        .map(|c| if c == '\t' { ' ' } else { c })
        .collect();
    let text = SPACES.replace_all(&text, " ");
    let text: Vec<&str> = text
        .split('\n')
        .map(|line| line.trim_end_matches(' '))
        .collect();
    let text = NEWLINES.replace_all(&text.join("\n"), "\n\n").into_owned();
    text.trim().to_string()
}

/// Masks emails and phone numbers; returns the text and the counts `(emails, phones)`.
pub fn mask_pii(text: &str) -> (String, usize, usize) {
    let emails = EMAIL.find_iter(text).filter(|m| m.is_ok()).count();
    let text = EMAIL.replace_all(text, "[EMAIL]").into_owned();
    let phones = PHONE.find_iter(&text).filter(|m| m.is_ok()).count();
    let text = PHONE.replace_all(&text, "[PHONE]").into_owned();
    (text, emails, phones)
}

fn dedup_key(example: &RawExample) -> String {
    let mut parts = vec![example.format.to_string()];
    for (role, text) in fields(example) {
        if example.format == "chat" {
            parts.push(format!("{role}\u{0}{text}"));
        } else {
            parts.push(text);
        }
    }
    WHITESPACE
        .replace_all(&parts.join("\u{0}").to_lowercase(), " ")
        .into_owned()
}

/// MinHash signatures over character 5-grams, with LSH banding to find candidate pairs.
struct NearDuplicates {
    threshold: f64,
    signatures: Vec<Vec<u64>>,
    buckets: HashMap<(usize, u64), Vec<usize>>,
}

const MINHASH_PERMUTATIONS: usize = 64;
const MINHASH_BANDS: usize = 16;

impl NearDuplicates {
    fn new(threshold: f64) -> Self {
        Self {
            threshold,
            signatures: Vec::new(),
            buckets: HashMap::new(),
        }
    }

    fn signature(key: &str) -> Vec<u64> {
        let chars: Vec<char> = key.chars().collect();
        let mut signature = vec![u64::MAX; MINHASH_PERMUTATIONS];
        for window in chars.windows(5.min(chars.len().max(1))) {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for c in window {
                h = (h ^ *c as u64).wrapping_mul(0x0100_0000_01b3);
            }
            for (i, slot) in signature.iter_mut().enumerate() {
                let mut x = h ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                x ^= x >> 33;
                x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
                x ^= x >> 33;
                *slot = (*slot).min(x);
            }
        }
        signature
    }

    /// Whether `key` is a near-duplicate of one seen before; if not, remembers it.
    fn check_and_insert(&mut self, key: &str) -> bool {
        let signature = Self::signature(key);
        let rows = MINHASH_PERMUTATIONS / MINHASH_BANDS;
        let bands: Vec<(usize, u64)> = signature
            .chunks(rows)
            .enumerate()
            .map(|(b, chunk)| (b, chunk.iter().fold(0u64, |h, v| h.rotate_left(13) ^ v)))
            .collect();
        let mut candidates: HashSet<usize> = HashSet::new();
        for band in &bands {
            if let Some(ids) = self.buckets.get(band) {
                candidates.extend(ids);
            }
        }
        let duplicate = candidates.into_iter().any(|id| {
            let same = self.signatures[id]
                .iter()
                .zip(&signature)
                .filter(|(a, b)| a == b)
                .count();
            same as f64 / MINHASH_PERMUTATIONS as f64 >= self.threshold
        });
        if !duplicate {
            let id = self.signatures.len();
            self.signatures.push(signature);
            for band in bands {
                self.buckets.entry(band).or_default().push(id);
            }
        }
        duplicate
    }
}

/// Runs the pipeline over `input`; returns the kept examples (file order) and the report
/// (split sizes still zero).
pub fn clean_dataset(
    input: &Path,
    options: &PrepareOptions,
) -> Result<(Vec<RawExample>, PrepareReport)> {
    let io_error = |e| Error::Io {
        path: input.to_path_buf(),
        cause: e,
    };
    let reader = BufReader::new(File::open(input).map_err(io_error)?);
    let mut report = PrepareReport::default();
    let mut seen = HashSet::new();
    let mut near = options.near_dup_threshold.map(NearDuplicates::new);
    let mut kept = Vec::new();
    for (index, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(io_error)?;
        let line = String::from_utf8_lossy(&line);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        let Some(mut example) = parse_raw(line) else {
            report.invalid += 1;
            report.invalid_lines.push(index + 1);
            continue;
        };
        map_fields(&mut example, clean);
        if options.mask_pii {
            let (mut emails, mut phones) = (0, 0);
            map_fields(&mut example, |text| {
                let (masked, e, p) = mask_pii(text);
                emails += e;
                phones += p;
                masked
            });
            report.pii_email += emails;
            report.pii_phone += phones;
        }
        let chars: usize = fields(&example)
            .iter()
            .map(|(_, t)| t.chars().count())
            .sum();
        if chars < options.min_chars {
            report.too_short += 1;
            continue;
        }
        if chars > options.max_chars {
            report.too_long += 1;
            continue;
        }
        let key = dedup_key(&example);
        if !seen.insert(key.clone()) {
            report.duplicate += 1;
            continue;
        }
        if near.as_mut().is_some_and(|n| n.check_and_insert(&key)) {
            report.near_duplicate += 1;
            continue;
        }
        kept.push(example);
    }
    report.kept = kept.len();
    Ok((kept, report))
}

/// Splits `examples` with a seeded shuffle: `(train, validation, test)`.
pub fn split(examples: Vec<RawExample>, options: &PrepareOptions) -> [Vec<RawExample>; 3] {
    let mut examples = examples;
    examples.shuffle(&mut StdRng::seed_from_u64(options.seed));
    let n = examples.len();
    let train = (n as f64 * options.split.0).floor() as usize;
    let validation = (n as f64 * options.split.1).floor() as usize;
    let test = examples.split_off(train + validation);
    let validation_set = examples.split_off(train);
    [examples, validation_set, test]
}

/// `ft data prepare`: cleans `input` and writes `train.jsonl`, `validation.jsonl`, `test.jsonl`
/// and `report.json` into `out`. The files are written into a temporary directory next to `out`
/// and moved into place only when complete; an existing non-empty `out` is refused.
pub fn prepare(input: &Path, out: &Path, options: &PrepareOptions) -> Result<PrepareReport> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |e| Error::Io { path, cause: e }
    };
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(io_error(out))?
            .next()
            .is_some()
    {
        return Err(Error::Io {
            path: out.to_path_buf(),
            cause: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "output directory is not empty; choose another --out or remove it",
            ),
        });
    }
    let (kept, mut report) = clean_dataset(input, options)?;
    let [train, validation, test] = split(kept, options);
    (report.train, report.validation, report.test) = (train.len(), validation.len(), test.len());

    let staging: PathBuf = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_error(&staging))?;
    for (name, examples) in [
        ("train", &train),
        ("validation", &validation),
        ("test", &test),
    ] {
        let path = staging.join(format!("{name}.jsonl"));
        let mut file = File::create(&path).map_err(io_error(&path))?;
        for example in examples.iter() {
            writeln!(file, "{}", example.value).map_err(io_error(&path))?;
        }
        file.sync_all().map_err(io_error(&path))?;
    }
    let report_path = staging.join("report.json");
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    std::fs::write(&report_path, text).map_err(io_error(&report_path))?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(io_error(out))?;
    }
    std::fs::rename(&staging, out).map_err(io_error(out))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_rules() {
        assert_eq!(
            clean("  a\r\nb\t\tc   d  \n\n\n\ne\u{7}  "),
            "a\nb c d\n\ne"
        );
        assert_eq!(clean("Cafe\u{301}"), "Café");
        assert_eq!(
            clean("\u{fb01}le \u{212b}"),
            "\u{fb01}le \u{c5}",
            "NFC, not NFKC"
        );
    }

    #[test]
    fn masks_emails_then_phones_and_spares_decoys() {
        let (text, emails, phones) = mask_pii(
            "mail bob@example.com or call +1 415 555 0100, v1.2.3, 10.0.0.1, 2024-01-15, 42",
        );
        assert_eq!(
            text,
            "mail [EMAIL] or call [PHONE], v1.2.3, 10.0.0.1, 2024-01-15, 42"
        );
        assert_eq!((emails, phones), (1, 1));
    }

    #[test]
    fn near_duplicates_are_caught_and_distinct_texts_are_not() {
        let mut near = NearDuplicates::new(0.7);
        let base = "the quick brown fox jumps over the lazy dog near the river bank today";
        assert!(!near.check_and_insert(base));
        assert!(near.check_and_insert(&base.replace("today", "today!")));
        assert!(!near.check_and_insert("an entirely different sentence about billing and invoices"));
    }
}
