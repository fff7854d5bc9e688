//! One pass over a test split for the base model and any number of adapters: teacher-forced
//! loss on the label tokens (the same masks and function as `ft train`'s evaluation), then
//! batched greedy generation in which rows of different adapters share each batch.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ft_data::batch::{BatchConfig, Batcher};
use ft_data::dataset::{read_dataset, ReadOptions};
use ft_data::format::{parse_line, Example};
use ft_data::tokenize::ExampleTokenizer;
use ft_model::generate::{generate, GenerateParams};
use ft_model::loss::dataset_nll;
use ft_model::{Lora, LoraAdapter, RowAdapters, TextModel};

use crate::judge::{Judge, JudgeConfig, JudgeSummary, Outcome};
use crate::report::{ExampleReport, ExampleScores, ModelReport, Report};
use crate::text_metrics::{
    corpus_bleu, exact_match, is_valid_json, rouge_l, sentence_bleu, token_f1,
};
use crate::{Error, Result};

/// A metric `ft eval` can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// Mean NLL per label token.
    Loss,
    /// `exp(loss)`.
    Ppl,
    /// Normalized exact match (SQuAD).
    Em,
    /// Token F1 (SQuAD).
    F1,
    /// ROUGE-L F-measure.
    RougeL,
    /// Corpus BLEU (sacreBLEU).
    Bleu,
}

impl Metric {
    /// Every metric, the default of `--metrics`.
    pub const ALL: [Metric; 6] = [
        Self::Loss,
        Self::Ppl,
        Self::Em,
        Self::F1,
        Self::RougeL,
        Self::Bleu,
    ];

    /// Its key in reports and gates.
    pub fn key(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::Ppl => "ppl",
            Self::Em => "em",
            Self::F1 => "f1",
            Self::RougeL => "rougeL",
            Self::Bleu => "bleu",
        }
    }

    /// Parses `loss,ppl,em,f1,rougeL,bleu` (case-insensitive names).
    pub fn parse_list(spec: &str) -> Result<Vec<Metric>> {
        let mut metrics = Vec::new();
        for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let metric = Self::ALL
                .into_iter()
                .find(|m| m.key().eq_ignore_ascii_case(name))
                .ok_or_else(|| Error::Setting(format!("--metrics: unknown metric `{name}` (known: loss, ppl, em, f1, rougeL, bleu)")))?;
            if !metrics.contains(&metric) {
                metrics.push(metric);
            }
        }
        Ok(metrics)
    }

    fn needs_generation(self) -> bool {
        !matches!(self, Self::Loss | Self::Ppl)
    }
}

/// A model under evaluation: the base (no adapter) or an adapter.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its name in the report (`base`, or the adapter's name).
    pub name: String,
    /// The adapter; `None` is the base model.
    pub adapter: Option<Arc<LoraAdapter>>,
    /// Where the adapter was loaded from.
    pub source: Option<PathBuf>,
}

/// What to measure and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Metrics to compute.
    pub metrics: Vec<Metric>,
    /// Most generated tokens per answer.
    pub max_new_tokens: usize,
    /// Rows per forward pass (loss and generation).
    pub batch_size: usize,
    /// Longest example in tokens.
    pub max_seq_len: usize,
    /// Also report the share of answers that parse as JSON.
    pub expect_json: bool,
    /// Judge adapters against the baseline with this endpoint.
    pub judge: Option<JudgeConfig>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            metrics: Metric::ALL.to_vec(),
            max_new_tokens: 128,
            batch_size: 8,
            max_seq_len: 2048,
            expect_json: false,
            judge: None,
        }
    }
}

/// An example that can be answered: its prompt and the reference answer.
#[derive(Debug, Clone)]
struct Item {
    line: usize,
    question: String,
    reference: String,
    prompt_ids: Vec<u32>,
}

/// Reads the generation items of `path`: chat examples ending with an assistant turn (the
/// turn is the reference; everything before it the prompt) and prompt/completion examples.
/// Plain-text examples are scored for loss only.
fn read_items(model: &TextModel, path: &Path) -> Result<Vec<Item>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let template = model.tokenizer.chat_template().ok();
    let mut items = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line_no = number + 1;
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |reason: String| Error::Data {
            path: path.to_path_buf(),
            line: line_no,
            reason,
        };
        let example = parse_line(&line, None).map_err(|errors| at(errors.join("; ")))?;
        match example {
            Example::Chat(messages) => {
                let Some((last, context)) = messages.split_last() else {
                    continue;
                };
                if last.message.role != "assistant" || context.is_empty() {
                    continue;
                }
                let template = template.as_ref().ok_or_else(|| {
                    at("the model has no chat template for a chat example".into())
                })?;
                let context: Vec<_> = context.iter().map(|m| m.message.clone()).collect();
                let text = template
                    .render(&context, true)
                    .map_err(|e| at(e.to_string()))?;
                let question = context
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .map_or_else(String::new, |m| m.content.clone());
                items.push(Item {
                    line: line_no,
                    question,
                    reference: last.message.content.clone(),
                    prompt_ids: model
                        .tokenizer
                        .encode(&text, false)
                        .map_err(|e| at(e.to_string()))?,
                });
            }
            Example::Completion { prompt, completion } => items.push(Item {
                line: line_no,
                prompt_ids: model
                    .tokenizer
                    .encode(&prompt, true)
                    .map_err(|e| at(e.to_string()))?,
                question: prompt,
                reference: completion,
            }),
            Example::Text(_) => {}
        }
    }
    Ok(items)
}

/// Evaluates every candidate on the test split at `data`.
pub fn evaluate(
    model: &TextModel,
    data: &Path,
    candidates: &[Candidate],
    options: &EvalOptions,
) -> Result<Report> {
    if candidates.is_empty() {
        return Err(Error::Setting(
            "nothing to evaluate: pass --base and/or --adapter NAME=DIR".into(),
        ));
    }
    let transformer = &model.model.transformer;
    let mut reports: Vec<ModelReport> = candidates
        .iter()
        .map(|c| ModelReport {
            name: c.name.clone(),
            adapter_path: c.source.as_ref().map(|p| p.display().to_string()),
            metrics: BTreeMap::new(),
            judge: None,
        })
        .collect();
    let wants = |m: Metric| options.metrics.contains(&m);

    // Teacher-forced loss with the training masks.
    if wants(Metric::Loss) || wants(Metric::Ppl) {
        let tokenizer = ExampleTokenizer::new(&model.tokenizer, false);
        let read = ReadOptions {
            max_seq_len: options.max_seq_len,
            ..ReadOptions::default()
        };
        let (examples, data_report) = read_dataset(data, &tokenizer, &read)?;
        if data_report.error_count > 0 {
            let shown: Vec<String> = data_report
                .errors
                .iter()
                .take(5)
                .map(|e| format!("{}:{}: {}", data.display(), e.line, e.message))
                .collect();
            return Err(Error::Setting(format!(
                "{} invalid line(s) in the test split:\n{}",
                data_report.invalid_lines,
                shown.join("\n")
            )));
        }
        let batcher = Batcher::new(
            examples,
            BatchConfig {
                batch_size: options.batch_size,
                max_seq_len: options.max_seq_len,
                packing: false,
                seed: 0,
                pad_id: model.tokenizer.eos_id().unwrap_or(0),
            },
        );
        for (i, candidate) in candidates.iter().enumerate() {
            tracing::info!(model = %candidate.name, "teacher-forced loss");
            let nll = dataset_nll(transformer, &batcher, candidate.adapter.as_deref())?;
            if wants(Metric::Loss) {
                reports[i].metrics.insert("loss".into(), nll.mean);
            }
            if wants(Metric::Ppl) {
                reports[i].metrics.insert("ppl".into(), nll.mean.exp());
            }
        }
    }

    // Generation: every (item, candidate) pair is a row; rows of all candidates mix in batches.
    let generating = options.metrics.iter().any(|m| m.needs_generation())
        || options.expect_json
        || options.judge.is_some();
    let items = if generating {
        read_items(model, data)?
    } else {
        Vec::new()
    };
    let mut outputs: Vec<Vec<String>> = vec![vec![String::new(); candidates.len()]; items.len()];
    if !items.is_empty() {
        let mut rows: Vec<(usize, usize)> = (0..items.len())
            .flat_map(|i| (0..candidates.len()).map(move |c| (i, c)))
            .collect();
        // Similar lengths together: less left padding per batch.
        rows.sort_by_key(|(i, _)| items[*i].prompt_ids.len());
        let params = GenerateParams {
            max_new_tokens: options.max_new_tokens,
            stop_ids: model.tokenizer.eos_ids().to_vec(),
            sampling: Default::default(),
        };
        let total = rows.len();
        for (done, chunk) in rows.chunks(options.batch_size.max(1)).enumerate() {
            tracing::info!(
                "generating rows {}..{} of {total}",
                done * options.batch_size,
                done * options.batch_size + chunk.len()
            );
            let prompts: Vec<Vec<u32>> = chunk
                .iter()
                .map(|(i, _)| items[*i].prompt_ids.clone())
                .collect();
            let per_row: Vec<Option<Arc<LoraAdapter>>> = chunk
                .iter()
                .map(|(_, c)| candidates[*c].adapter.clone())
                .collect();
            let row_adapters = RowAdapters::for_rows(&per_row, transformer.device())?;
            let lora = row_adapters.as_ref().map_or(Lora::None, Lora::Rows);
            let generated = generate(transformer, &prompts, &params, lora)?;
            for ((i, c), ids) in chunk.iter().zip(generated) {
                outputs[*i][*c] = model.tokenizer.decode(&ids, true)?.trim().to_string();
            }
        }
    }

    // Per-example scores and means.
    let mut per_example: Vec<ExampleReport> = items
        .iter()
        .enumerate()
        .map(|(i, item)| ExampleReport {
            line: item.line,
            question: item.question.clone(),
            reference: item.reference.clone(),
            outputs: candidates
                .iter()
                .enumerate()
                .map(|(c, candidate)| {
                    let text = &outputs[i][c];
                    let scores = ExampleScores {
                        text: text.clone(),
                        em: exact_match(text, &item.reference),
                        f1: token_f1(text, &item.reference),
                        rouge_l: rouge_l(text, &item.reference).fmeasure,
                        bleu: sentence_bleu(text, &item.reference).score,
                        json_valid: options.expect_json.then(|| is_valid_json(text)),
                        judge: None,
                    };
                    (candidate.name.clone(), scores)
                })
                .collect(),
        })
        .collect();
    if !items.is_empty() {
        for (c, candidate) in candidates.iter().enumerate() {
            let scores: Vec<&ExampleScores> = per_example
                .iter()
                .map(|e| &e.outputs[&candidate.name])
                .collect();
            let mean = |f: &dyn Fn(&ExampleScores) -> f64| {
                scores.iter().map(|s| f(s)).sum::<f64>() / scores.len() as f64
            };
            let metrics = &mut reports[c].metrics;
            if wants(Metric::Em) {
                metrics.insert("em".into(), mean(&|s| s.em));
            }
            if wants(Metric::F1) {
                metrics.insert("f1".into(), mean(&|s| s.f1));
            }
            if wants(Metric::RougeL) {
                metrics.insert("rougeL".into(), mean(&|s| s.rouge_l));
            }
            if wants(Metric::Bleu) {
                let pairs = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| (outputs[i][c].as_str(), item.reference.as_str()));
                metrics.insert("bleu".into(), corpus_bleu(pairs).score);
            }
            if options.expect_json {
                metrics.insert(
                    "json_valid".into(),
                    mean(&|s| f64::from(u8::from(s.json_valid == Some(true)))),
                );
            }
        }
    }

    // Judge each adapter against the baseline: the base when present, else the first adapter.
    if let (Some(config), false) = (&options.judge, items.is_empty()) {
        let baseline = candidates
            .iter()
            .position(|c| c.adapter.is_none())
            .unwrap_or(0);
        let judge = Judge::new(config.clone());
        for (c, candidate) in candidates.iter().enumerate() {
            if c == baseline {
                continue;
            }
            tracing::info!(model = %candidate.name, baseline = %candidates[baseline].name, "judging {} pairs in both orders", items.len());
            let mut outcomes = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let pair = judge.compare(
                    &item.question,
                    &item.reference,
                    &outputs[i][c],
                    &outputs[i][baseline],
                );
                outcomes.push(pair.outcome);
                if let Some(scores) = per_example[i].outputs.get_mut(&candidate.name) {
                    scores.judge = Some(pair);
                }
            }
            let summary = JudgeSummary::new(&candidates[baseline].name, &outcomes);
            let metrics = &mut reports[c].metrics;
            metrics.insert("judge_win_rate".into(), summary.win_rate);
            metrics.insert("judge_tie_rate".into(), summary.tie_rate);
            metrics.insert("judge_loss_rate".into(), summary.loss_rate);
            if outcomes.iter().all(|o| *o == Outcome::Invalid) {
                tracing::warn!(model = %candidate.name, "the judge gave no usable verdict");
            }
            reports[c].judge = Some(summary);
        }
    }

    Ok(Report::new(data, reports, per_example))
}
