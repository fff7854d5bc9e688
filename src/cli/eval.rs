//! `ft eval`: the base model and adapters on a test split, side by side, with an optional gate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ft::eval::evaluate::{evaluate, Candidate, EvalOptions, Metric};
use ft::eval::gate::Gate;
use ft::eval::judge::JudgeConfig;
use ft::model::adapter_io::LoadOptions;
use ft::model::TextModel;

/// Arguments of `ft eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The test split (JSONL: chat `messages`, prompt/completion or text).
    #[arg(long)]
    data: PathBuf,
    /// A GGUF file, an HF directory, or a Hub id [default: models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long)]
    model: Option<String>,
    /// An adapter to evaluate, as NAME=DIR (repeatable; all run in one pass).
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<String>,
    /// Evaluate the base model too (the baseline for deltas, judge and `*base` gates).
    #[arg(long)]
    base: bool,
    /// Comma-separated metrics.
    #[arg(long, default_value = "loss,ppl,em,f1,rougeL,bleu")]
    metrics: String,
    /// Most generated tokens per answer.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Longest example in tokens.
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// Also report the share of answers that parse as JSON.
    #[arg(long)]
    expect_json: bool,
    /// An OpenAI-compatible endpoint (e.g. http://127.0.0.1:8080/v1) to judge answers pairwise.
    #[arg(long)]
    judge: Option<String>,
    /// The `model` to ask the judge.
    #[arg(long, default_value = "judge")]
    judge_model: String,
    /// API key for the judge.
    #[arg(long, env = "FT_JUDGE_API_KEY", hide_env_values = true)]
    judge_api_key: Option<String>,
    /// Extra attempts when a verdict is malformed.
    #[arg(long, default_value_t = 2)]
    judge_retries: usize,
    /// Where to write report.json, report.md and chart.svg.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Exit 1 unless every adapter passes, e.g. "judge_win_rate>0.7" or "rougeL>1.2*base".
    #[arg(long)]
    gate: Option<String>,
    /// Load adapters even if they were trained on another base model.
    #[arg(long)]
    allow_base_mismatch: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    precision: super::common::PrecisionArgs,
}

/// Runs `ft eval`; `Ok(false)` when the gate fails.
pub fn run(args: Args) -> anyhow::Result<bool> {
    let gate = args.gate.as_deref().map(Gate::parse).transpose()?;
    let metrics = Metric::parse_list(&args.metrics)?;
    if !args.data.is_file() {
        anyhow::bail!("--data {}: no such file", args.data.display());
    }
    let path = ft::hub::resolve_model(args.model.as_deref())?;
    let device = ft::core::device::select(args.device.parse()?)?;
    let model = TextModel::load_with(
        &path,
        &device,
        &args.precision.options(ft::model::Precision::Quantized),
    )?;
    let mut candidates = Vec::new();
    if args.base {
        candidates.push(Candidate {
            name: "base".into(),
            adapter: None,
            source: None,
        });
    }
    let options = LoadOptions {
        allow_base_mismatch: args.allow_base_mismatch,
    };
    for spec in &args.adapters {
        let (name, dir) = spec
            .split_once('=')
            .with_context(|| format!("--adapter {spec}: expected NAME=DIR"))?;
        if candidates.iter().any(|c: &Candidate| c.name == name) {
            anyhow::bail!("--adapter {spec}: the name `{name}` is used twice");
        }
        let adapter = model
            .model
            .load_adapter(dir.as_ref(), &options)
            .with_context(|| format!("loading adapter {dir}"))?;
        candidates.push(Candidate {
            name: name.to_string(),
            adapter: Some(Arc::new(adapter)),
            source: Some(dir.into()),
        });
    }
    let judge = args.judge.map(|url| JudgeConfig {
        url,
        model: args.judge_model.clone(),
        api_key: args.judge_api_key.clone(),
        retries: args.judge_retries,
        timeout: Duration::from_secs(120),
    });
    let eval_options = EvalOptions {
        metrics,
        max_new_tokens: args.max_tokens,
        batch_size: args.batch_size.max(1),
        max_seq_len: args.max_seq_len,
        expect_json: args.expect_json,
        judge,
    };
    let mut report = evaluate(&model, &args.data, &candidates, &eval_options)?;
    let mut passed = true;
    if let Some(gate) = &gate {
        let base = report.baseline_metrics().cloned();
        let results: Vec<_> = report
            .models
            .iter()
            .filter(|m| m.adapter_path.is_some())
            .map(|m| gate.check(&m.name, &m.metrics, base.as_ref()))
            .collect();
        if results.is_empty() {
            anyhow::bail!("--gate needs at least one --adapter to judge");
        }
        passed = results.iter().all(|r| r.passed);
        report.gate = Some(results);
    }
    if let Some(dir) = &args.report {
        report.write(dir)?;
        eprintln!("report written to {}", dir.join("report.md").display());
    }
    let mut stdout = std::io::stdout().lock();
    use std::io::Write;
    writeln!(stdout, "{}", report.markdown())?;
    Ok(passed)
}
