//! `evaluate` on the default model: batched mixed-adapter generation gives each model exactly
//! its own greedy answers, the loss equals `ft train`'s evaluation loss on the same split, and
//! the report files are written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use ft_eval::evaluate::{evaluate, Candidate, EvalOptions, Metric};
use ft_model::adapter_io::LoadOptions;
use ft_model::generate::{generate, GenerateParams};
use ft_model::TextModel;
use ft_train::metrics::{self, MetricsRow};
use ft_train::{TrainConfig, TrainOptions, Trainer};

fn repo() -> PathBuf {
    ft_core::testing::repo_root()
}

fn model() -> Option<TextModel> {
    let path = ft_core::testing::default_gguf()?;
    Some(TextModel::load(&path, &Device::Cpu).expect("model loads"))
}

/// The first `n` lines of `src` in a temporary file.
fn head(src: &Path, n: usize, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(src).unwrap();
    let path = dir.join(src.file_name().unwrap());
    std::fs::write(
        &path,
        text.lines().take(n).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    path
}

#[test]
fn loss_equals_ft_train_eval_loss() {
    let Some(model) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = head(&repo().join("datasets/support/train.jsonl"), 8, dir.path());
    let validation = head(
        &repo().join("datasets/support/validation.jsonl"),
        6,
        dir.path(),
    );
    let out = dir.path().join("run");
    let config = TrainConfig {
        max_steps: Some(2),
        batch_size: 4,
        eval_steps: Some(2),
        lora_dropout: 0.0,
        ..TrainConfig::default()
    };
    let options = TrainOptions {
        data: train,
        eval_data: Some(validation.clone()),
        out: out.clone(),
        base_model_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        ..TrainOptions::default()
    };
    Trainer::new(&model, config, options)
        .run(&mut |_| {})
        .unwrap();
    let train_eval = metrics::read(&out.join("metrics.jsonl"))
        .into_iter()
        .filter_map(|row| match row {
            MetricsRow::Eval(m) => Some(m),
            _ => None,
        })
        .next_back()
        .expect("an eval row");
    let adapter = model
        .model
        .load_adapter(&out.join("adapter"), &LoadOptions::default())
        .unwrap();
    let candidates = [Candidate {
        name: "run".into(),
        adapter: Some(Arc::new(adapter)),
        source: Some(out.join("adapter")),
    }];
    let options = EvalOptions {
        metrics: vec![Metric::Loss, Metric::Ppl],
        batch_size: 4,
        ..EvalOptions::default()
    };
    let report = evaluate(&model, &validation, &candidates, &options).unwrap();
    let loss = report.models[0].metrics["loss"];
    assert!(
        (loss - train_eval.eval_loss).abs() <= 1e-9 * loss,
        "ft eval {loss} vs ft train {}",
        train_eval.eval_loss
    );
    assert!((report.models[0].metrics["ppl"] - loss.exp()).abs() < 1e-9 * loss.exp());
}

#[test]
fn mixed_adapter_generation_gives_each_model_its_own_answers() {
    let Some(model) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let test = head(&repo().join("datasets/support/test.jsonl"), 3, dir.path());
    let peft_dir = repo().join("tests/fixtures/smollm2/peft-adapter");
    let adapter = Arc::new(
        model
            .model
            .load_adapter(&peft_dir, &LoadOptions::default())
            .unwrap(),
    );
    let candidates = [
        Candidate {
            name: "base".into(),
            adapter: None,
            source: None,
        },
        Candidate {
            name: "peft".into(),
            adapter: Some(adapter.clone()),
            source: Some(peft_dir),
        },
    ];
    let options = EvalOptions {
        max_new_tokens: 20,
        batch_size: 4,
        ..EvalOptions::default()
    };
    let report = evaluate(&model, &test, &candidates, &options).unwrap();
    assert_eq!(report.examples.len(), 3);
    assert_eq!(report.baseline, "base");
    // Every answer equals the same model generating that prompt alone.
    let template = model.tokenizer.chat_template().unwrap();
    let params = GenerateParams {
        max_new_tokens: 20,
        stop_ids: model.tokenizer.eos_ids().to_vec(),
        sampling: Default::default(),
    };
    for (line, example) in std::fs::read_to_string(&test)
        .unwrap()
        .lines()
        .zip(&report.examples)
    {
        let Ok(ft_data::format::Example::Chat(messages)) = ft_data::format::parse_line(line, None)
        else {
            panic!()
        };
        let context: Vec<_> = messages[..messages.len() - 1]
            .iter()
            .map(|m| m.message.clone())
            .collect();
        let ids = model
            .tokenizer
            .encode(&template.render(&context, true).unwrap(), false)
            .unwrap();
        for (name, lora) in [("base", None), ("peft", Some(adapter.as_ref()))] {
            let alone = generate(
                &model.model.transformer,
                std::slice::from_ref(&ids),
                &params,
                lora,
            )
            .unwrap();
            let text = model.tokenizer.decode(&alone[0], true).unwrap();
            assert_eq!(
                example.outputs[name].text,
                text.trim(),
                "line {} model {name}",
                example.line
            );
        }
    }
    for m in &report.models {
        for key in ["loss", "ppl", "em", "f1", "rougeL", "bleu"] {
            assert!(m.metrics[key].is_finite(), "{} {key}", m.name);
        }
    }
    assert!(report.deltas["peft"].contains_key("rougeL"));
    let out = dir.path().join("report");
    report.write(&out).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["models"][1]["name"], "peft");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| base |") && md.contains("| peft |") && md.contains("Worst examples"),
        "{md}"
    );
    assert!(std::fs::read_to_string(out.join("chart.svg"))
        .unwrap()
        .starts_with("<svg"));
}

#[test]
fn a_bad_line_is_named() {
    let Some(model) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{not json\n").unwrap();
    let candidates = [Candidate {
        name: "base".into(),
        adapter: None,
        source: None,
    }];
    let error = evaluate(&model, &path, &candidates, &EvalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("bad.jsonl:2"), "{error}");
}
