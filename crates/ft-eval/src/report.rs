//! The evaluation report: `report.json` (every metric per model, deltas against the baseline,
//! per-example outputs and scores), `report.md` (the table and the worst examples) and
//! `chart.svg` (bars per metric and model).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use ft_model::adapter_io::write_atomically;

use crate::gate::GateResult;
use crate::judge::{JudgeSummary, PairJudgement};
use crate::{Error, Result};

/// One model's results.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// `base` or the adapter's name.
    pub name: String,
    /// The adapter's directory.
    pub adapter_path: Option<String>,
    /// Metric key → value (`loss`, `ppl`, `em`, `f1`, `rougeL`, `bleu`, `judge_win_rate`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Judge counts against the baseline, when judged.
    pub judge: Option<JudgeSummary>,
}

/// One metric of one model next to the baseline's.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Delta {
    /// The model's value.
    pub value: f64,
    /// The baseline's value.
    pub baseline: f64,
    /// `value - baseline`.
    pub delta: f64,
    /// `value / baseline` (absent when the baseline is 0).
    pub ratio: Option<f64>,
}

/// Scores of one model's answer to one example.
#[derive(Debug, Clone, Serialize)]
pub struct ExampleScores {
    /// The generated answer.
    pub text: String,
    /// Exact match, 0 or 1.
    pub em: f64,
    /// Token F1.
    pub f1: f64,
    /// ROUGE-L F-measure.
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    /// Sentence BLEU, 0–100.
    pub bleu: f64,
    /// Whether the answer parses as JSON (with `--expect-json`).
    pub json_valid: Option<bool>,
    /// The judge's two verdicts against the baseline.
    pub judge: Option<PairJudgement>,
}

/// One example with every model's answer.
#[derive(Debug, Clone, Serialize)]
pub struct ExampleReport {
    /// Line in the test file.
    pub line: usize,
    /// The last user message (or the raw prompt).
    pub question: String,
    /// The reference answer.
    pub reference: String,
    /// Model name → answer and scores.
    pub outputs: BTreeMap<String, ExampleScores>,
}

/// Everything `ft eval` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The test file.
    pub dataset: String,
    /// The model compared against (`base` when evaluated).
    pub baseline: String,
    /// Per model, in the order given.
    pub models: Vec<ModelReport>,
    /// Model → metric → comparison with the baseline (models other than the baseline).
    pub deltas: BTreeMap<String, BTreeMap<String, Delta>>,
    /// Per example.
    pub examples: Vec<ExampleReport>,
    /// Gate results, when a gate was given.
    pub gate: Option<Vec<GateResult>>,
}

impl Report {
    /// Assembles the report; the baseline is the base model when present, else the first.
    pub fn new(data: &Path, models: Vec<ModelReport>, examples: Vec<ExampleReport>) -> Self {
        let baseline_index = models
            .iter()
            .position(|m| m.adapter_path.is_none())
            .unwrap_or(0);
        let baseline = models
            .get(baseline_index)
            .map_or_else(String::new, |m| m.name.clone());
        let mut deltas = BTreeMap::new();
        if let Some(base) = models.get(baseline_index) {
            for model in models.iter().filter(|m| m.name != base.name) {
                let table = model
                    .metrics
                    .iter()
                    .filter_map(|(key, &value)| {
                        let &baseline = base.metrics.get(key)?;
                        let ratio = (baseline != 0.0).then(|| value / baseline);
                        Some((
                            key.clone(),
                            Delta {
                                value,
                                baseline,
                                delta: value - baseline,
                                ratio,
                            },
                        ))
                    })
                    .collect();
                deltas.insert(model.name.clone(), table);
            }
        }
        Self {
            dataset: data.display().to_string(),
            baseline,
            models,
            deltas,
            examples,
            gate: None,
        }
    }

    /// The metrics of the baseline model.
    pub fn baseline_metrics(&self) -> Option<&BTreeMap<String, f64>> {
        self.models
            .iter()
            .find(|m| m.name == self.baseline)
            .map(|m| &m.metrics)
    }

    /// Writes `report.json`, `report.md` and `chart.svg` into `dir` (each to a temporary file
    /// first, then renamed, so a report is never half-written).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Setting(e.to_string()))?;
        write_atomically(&dir.join("report.json"), json.as_bytes())?;
        write_atomically(&dir.join("report.md"), self.markdown().as_bytes())?;
        write_atomically(&dir.join("chart.svg"), self.chart_svg().as_bytes())?;
        Ok(())
    }

    fn metric_keys(&self) -> Vec<String> {
        let order = [
            "loss",
            "ppl",
            "em",
            "f1",
            "rougeL",
            "bleu",
            "json_valid",
            "judge_win_rate",
            "judge_tie_rate",
            "judge_loss_rate",
        ];
        let mut keys: Vec<String> = order
            .iter()
            .filter(|k| self.models.iter().any(|m| m.metrics.contains_key(**k)))
            .map(|k| k.to_string())
            .collect();
        for model in &self.models {
            for key in model.metrics.keys() {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
        }
        keys
    }

    /// The Markdown report: metrics table, judge results, gate, worst examples per model.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Evaluation of `{}`\n", self.dataset);
        let keys = self.metric_keys();
        let _ = writeln!(md, "| model | {} |", keys.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(keys.len()));
        for model in &self.models {
            let cells: Vec<String> = keys
                .iter()
                .map(|k| {
                    let value = model
                        .metrics
                        .get(k)
                        .map_or_else(|| "–".to_string(), |v| format!("{v:.4}"));
                    match self.deltas.get(&model.name).and_then(|d| d.get(k)) {
                        Some(delta) => format!("{value} ({:+.4})", delta.delta),
                        None => value,
                    }
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", model.name, cells.join(" | "));
        }
        let _ = writeln!(md, "\nDeltas in parentheses are against `{}`. em, f1, rougeL are means over examples (0–1); bleu is corpus BLEU (0–100, sacreBLEU 13a).", self.baseline);
        for model in &self.models {
            if let Some(judge) = &model.judge {
                let _ = writeln!(
                    md,
                    "\n**Judge, `{}` vs `{}`** (both orders): {} wins, {} ties, {} losses, {} invalid → win rate {:.3} (95% CI {:.3}–{:.3})",
                    model.name, judge.baseline, judge.wins, judge.ties, judge.losses, judge.invalid,
                    judge.win_rate, judge.win_rate_ci95.0, judge.win_rate_ci95.1
                );
            }
        }
        if let Some(gate) = &self.gate {
            let _ = writeln!(md, "\n## Gate\n");
            for result in gate {
                let verdict = if result.passed { "PASS" } else { "FAIL" };
                let _ = writeln!(
                    md,
                    "- `{}`: **{verdict}** — {}",
                    result.model,
                    result.details.join("; ")
                );
            }
        }
        for model in &self.models {
            let mut worst: Vec<&ExampleReport> = self
                .examples
                .iter()
                .filter(|e| e.outputs.contains_key(&model.name))
                .collect();
            if worst.is_empty() {
                continue;
            }
            worst.sort_by(|a, b| {
                a.outputs[&model.name]
                    .rouge_l
                    .total_cmp(&b.outputs[&model.name].rouge_l)
            });
            let _ = writeln!(
                md,
                "\n## Worst examples: `{}` (lowest ROUGE-L)\n",
                model.name
            );
            for example in worst.iter().take(3) {
                let scores = &example.outputs[&model.name];
                let _ = writeln!(
                    md,
                    "- line {} (rougeL {:.3}, f1 {:.3})\n  - question: {}\n  - reference: {}\n  - answer: {}",
                    example.line, scores.rouge_l, scores.f1,
                    one_line(&example.question), one_line(&example.reference), one_line(&scores.text)
                );
            }
        }
        md
    }

    /// Grouped bars: one group per metric on a 0–1 scale (BLEU / 100; loss and perplexity are
    /// left out, they have no common scale), one bar per model.
    pub fn chart_svg(&self) -> String {
        let keys: Vec<String> = self
            .metric_keys()
            .into_iter()
            .filter(|k| k != "loss" && k != "ppl")
            .collect();
        let colours = [
            "#8c8c8c", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
        ];
        let (bar, gap, height, top, left) = (18.0, 24.0, 220.0, 30.0, 40.0);
        let group = bar * self.models.len() as f64 + gap;
        let width = left + group * keys.len().max(1) as f64 + 20.0;
        let legend_y = top + height + 40.0;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n",
            legend_y + 18.0 * self.models.len() as f64 + 10.0
        );
        let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(
            svg,
            "<text x=\"{left}\" y=\"18\" font-size=\"13\">{}</text>",
            escape(&self.dataset)
        );
        for tick in 0..=4 {
            let y = top + height - height * tick as f64 / 4.0;
            let _ = writeln!(svg, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"4\" y=\"{}\">{:.2}</text>", width - 10.0, y + 4.0, tick as f64 / 4.0);
        }
        for (k, key) in keys.iter().enumerate() {
            let x0 = left + gap / 2.0 + group * k as f64;
            for (m, model) in self.models.iter().enumerate() {
                let Some(&value) = model.metrics.get(key) else {
                    continue;
                };
                let scaled = if key == "bleu" { value / 100.0 } else { value }.clamp(0.0, 1.0);
                let h = height * scaled;
                let _ = writeln!(
                    svg,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"{}\"><title>{}: {value:.4}</title></rect>",
                    x0 + bar * m as f64, top + height - h, bar - 2.0, colours[m % colours.len()], escape(&model.name)
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                x0 + bar * self.models.len() as f64 / 2.0,
                top + height + 16.0,
                escape(key)
            );
        }
        for (m, model) in self.models.iter().enumerate() {
            let y = legend_y + 18.0 * m as f64;
            let _ = writeln!(svg, "<rect x=\"{left}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>", y - 10.0, colours[m % colours.len()], left + 18.0, y, escape(&model.name));
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 200 {
        format!("{}…", flat.chars().take(200).collect::<String>())
    } else {
        flat
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
