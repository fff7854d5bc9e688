//! Reference-based text metrics, each a port of the implementation people quote:
//!
//! - [`exact_match`] and [`token_f1`]: the SQuAD v1.1 evaluation script (`normalize_answer`:
//!   lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace).
//! - [`rouge_l`]: Google's `rouge-score` package, `RougeScorer(['rougeL'])` without stemming.
//! - [`sentence_bleu`] / [`corpus_bleu`]: sacreBLEU 2.x defaults (13a tokenization, exp
//!   smoothing; effective order for sentences).
//!
//! `tests/fixtures/metrics/metrics.json` (written by `scripts/reference/make_metric_fixtures.py`
//! with those libraries) pins every number.

use std::collections::HashMap;

/// Python's `str.isspace()` set: Unicode whitespace plus the ASCII separators U+001C–U+001F,
/// which Rust's `char::is_whitespace` leaves out.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()`.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// SQuAD's `normalize_answer`.
pub fn normalize_answer(text: &str) -> String {
    let lower = text.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // `re.sub(r'\b(a|an|the)\b', ' ', s)`: whole words only, where word characters are
    // Unicode alphanumerics and `_` (Python 3's `\w`).
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut without_articles = String::with_capacity(no_punct.len());
    let mut rest = no_punct.as_str();
    while let Some(c) = rest.chars().next() {
        let run_len = if is_word(c) {
            rest.find(|c: char| !is_word(c)).unwrap_or(rest.len())
        } else {
            rest.find(is_word).unwrap_or(rest.len())
        };
        let run = &rest[..run_len];
        if matches!(run, "a" | "an" | "the") {
            without_articles.push(' ');
        } else {
            without_articles.push_str(run);
        }
        rest = &rest[run_len..];
    }
    py_split(&without_articles).collect::<Vec<_>>().join(" ")
}

/// 1.0 when the normalized texts are equal, else 0.0.
pub fn exact_match(prediction: &str, reference: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(prediction) == normalize_answer(reference),
    ))
}

fn counts<T: std::hash::Hash + Eq>(items: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut map = HashMap::new();
    for item in items {
        *map.entry(item).or_insert(0) += 1;
    }
    map
}

/// SQuAD v1.1 token F1 over normalized whitespace tokens (0 when nothing is shared, so two
/// empty texts score 0, as in the v1.1 script).
pub fn token_f1(prediction: &str, reference: &str) -> f64 {
    let prediction = normalize_answer(prediction);
    let reference = normalize_answer(reference);
    let pred: Vec<&str> = py_split(&prediction).collect();
    let gold: Vec<&str> = py_split(&reference).collect();
    let gold_counts = counts(gold.iter().copied());
    let same: usize = counts(pred.iter().copied())
        .iter()
        .map(|(token, n)| (*n).min(gold_counts.get(token).copied().unwrap_or(0)))
        .sum();
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pred.len() as f64;
    let recall = same as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Precision, recall and F-measure.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Prf {
    /// Matched / predicted.
    pub precision: f64,
    /// Matched / reference.
    pub recall: f64,
    /// Harmonic mean.
    pub fmeasure: f64,
}

/// `rouge-score`'s default tokenizer: lowercase, then runs of ASCII `[a-z0-9]`.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// ROUGE-L: longest common subsequence of [`rouge_tokens`].
pub fn rouge_l(prediction: &str, reference: &str) -> Prf {
    let pred = rouge_tokens(prediction);
    let gold = rouge_tokens(reference);
    if pred.is_empty() || gold.is_empty() {
        return Prf {
            precision: 0.0,
            recall: 0.0,
            fmeasure: 0.0,
        };
    }
    let mut previous = vec![0usize; pred.len() + 1];
    for g in &gold {
        let mut current = vec![0usize; pred.len() + 1];
        for (j, p) in pred.iter().enumerate() {
            current[j + 1] = if g == p {
                previous[j] + 1
            } else {
                current[j].max(previous[j + 1])
            };
        }
        previous = current;
    }
    let lcs = previous[pred.len()] as f64;
    let precision = lcs / pred.len() as f64;
    let recall = lcs / gold.len() as f64;
    let fmeasure = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    Prf {
        precision,
        recall,
        fmeasure,
    }
}

/// sacreBLEU's `13a` tokenizer (mteval-v13a), applied after `rstrip()` as BLEU does.
pub fn tokenize_13a(text: &str) -> String {
    let mut line = text
        .trim_end_matches(is_py_space)
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let line = format!(" {line} ");
    // 1. Pad most ASCII symbols: [{-~[-` -&(-+:-@/].
    let symbol =
        |c: char| matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/');
    let mut padded = String::with_capacity(line.len() * 2);
    for c in line.chars() {
        if symbol(c) {
            padded.push(' ');
            padded.push(c);
            padded.push(' ');
        } else {
            padded.push(c);
        }
    }
    let is_digit = |c: char| c.is_ascii_digit();
    let period_comma = |c: char| c == '.' || c == ',';
    // 2. `([^0-9])([\.,])` → `\1 \2 `; 3. `([\.,])([^0-9])` → ` \1 \2`; 4. `([0-9])(-)` → `\1 \2 `.
    let step2 = replace_pairs(
        &padded,
        |a, b| !is_digit(a) && period_comma(b),
        |a, b, out| {
            out.push(a);
            out.push(' ');
            out.push(b);
            out.push(' ');
        },
    );
    let step3 = replace_pairs(
        &step2,
        |a, b| period_comma(a) && !is_digit(b),
        |a, b, out| {
            out.push(' ');
            out.push(a);
            out.push(' ');
            out.push(b);
        },
    );
    let step4 = replace_pairs(
        &step3,
        |a, b| is_digit(a) && b == '-',
        |a, b, out| {
            out.push(a);
            out.push(' ');
            out.push(b);
            out.push(' ');
        },
    );
    py_split(&step4).collect::<Vec<_>>().join(" ")
}

/// A left-to-right, non-overlapping substitution of two-character matches (what `re.sub`
/// does for a two-group pattern of single characters).
fn replace_pairs(
    text: &str,
    matches: impl Fn(char, char) -> bool,
    write: impl Fn(char, char, &mut String),
) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && matches(chars[i], chars[i + 1]) {
            write(chars[i], chars[i + 1], &mut out);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The sufficient statistics of BLEU: n-gram matches and totals for n = 1..4, lengths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BleuStats {
    /// Clipped n-gram matches.
    pub counts: [usize; 4],
    /// Hypothesis n-grams.
    pub totals: [usize; 4],
    /// Hypothesis tokens.
    pub sys_len: usize,
    /// Reference tokens.
    pub ref_len: usize,
}

impl BleuStats {
    /// Statistics of one hypothesis against one reference.
    pub fn new(hypothesis: &str, reference: &str) -> Self {
        let hyp = tokenize_13a(hypothesis);
        let reference = tokenize_13a(reference);
        let hyp: Vec<&str> = py_split(&hyp).collect();
        let refs: Vec<&str> = py_split(&reference).collect();
        let mut stats = Self {
            sys_len: hyp.len(),
            ref_len: refs.len(),
            ..Self::default()
        };
        for n in 1..=4 {
            let ref_counts = counts(refs.windows(n));
            let hyp_counts = counts(hyp.windows(n));
            stats.totals[n - 1] = hyp.len().saturating_sub(n - 1);
            stats.counts[n - 1] = hyp_counts
                .iter()
                .map(|(gram, c)| (*c).min(ref_counts.get(gram).copied().unwrap_or(0)))
                .sum();
        }
        stats
    }

    fn add(&mut self, other: &Self) {
        for n in 0..4 {
            self.counts[n] += other.counts[n];
            self.totals[n] += other.totals[n];
        }
        self.sys_len += other.sys_len;
        self.ref_len += other.ref_len;
    }
}

/// A BLEU score (0–100) with its parts, as sacreBLEU reports it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bleu {
    /// The score, 0–100.
    pub score: f64,
    /// Brevity penalty.
    pub bp: f64,
    /// n-gram precisions, 0–100 (smoothed).
    pub precisions: [f64; 4],
    /// The statistics it was computed from.
    pub stats: BleuStats,
}

/// sacreBLEU's `compute_bleu` with exp smoothing.
fn compute_bleu(stats: BleuStats, effective_order: bool) -> Bleu {
    let BleuStats {
        counts,
        totals,
        sys_len,
        ref_len,
    } = stats;
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    let mut precisions = [0.0f64; 4];
    if counts.iter().all(|c| *c == 0) {
        return Bleu {
            score: 0.0,
            bp,
            precisions,
            stats,
        };
    }
    let mut smooth = 1.0f64;
    let mut order = 4;
    for n in 1..=4 {
        if totals[n - 1] == 0 {
            break;
        }
        if effective_order {
            order = n;
        }
        if counts[n - 1] == 0 {
            smooth *= 2.0;
            precisions[n - 1] = 100.0 / (smooth * totals[n - 1] as f64);
        } else {
            precisions[n - 1] = 100.0 * counts[n - 1] as f64 / totals[n - 1] as f64;
        }
    }
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    let sum: f64 = precisions[..order].iter().fold(0.0, |acc, p| acc + log(*p));
    let score = bp * (sum / order as f64).exp();
    Bleu {
        score,
        bp,
        precisions,
        stats,
    }
}

/// `sacrebleu.sentence_bleu(hypothesis, [reference])`.
pub fn sentence_bleu(hypothesis: &str, reference: &str) -> Bleu {
    compute_bleu(BleuStats::new(hypothesis, reference), true)
}

/// `sacrebleu.corpus_bleu(hypotheses, [references])`: statistics summed, then one score.
pub fn corpus_bleu<'t>(pairs: impl IntoIterator<Item = (&'t str, &'t str)>) -> Bleu {
    let mut total = BleuStats::default();
    for (hypothesis, reference) in pairs {
        total.add(&BleuStats::new(hypothesis, reference));
    }
    compute_bleu(total, false)
}

/// Whether `text` (trimmed, and without a surrounding ``` fence) parses as JSON.
pub fn is_valid_json(text: &str) -> bool {
    let trimmed = text.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .unwrap_or(trimmed);
    serde_json::from_str::<serde_json::Value>(unfenced.trim()).is_ok()
}
