//! `ft generate` and `ft score` end to end on the real SmolLM2 GGUF, against transformers'
//! outputs (tests/fixtures/smollm2, made by scripts/reference/make_smollm2_fixtures.py), and
//! every bad input the CLI must refuse with a one-line error and exit code 1.

mod common;
use common::{ft, repo};

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result};
use serde::Deserialize;

const NLL_MEAN_ABS_TOL: f64 = 1e-3;

/// The default GGUF, or `None` outside CI when it has not been fetched. Under `CI=true` a
/// missing model fails the test instead of skipping it.
fn smollm2() -> Option<PathBuf> {
    ft::core::testing::default_gguf()
}

/// Asserts a clean refusal: exit code 1, one `error:` line that mentions `needle`, no panic.
fn assert_refused(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in: {stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing on stdout for an error");
}

#[derive(Deserialize)]
struct GenerateCase {
    messages: Vec<serde_json::Value>,
    text: String,
}

#[derive(Deserialize)]
struct NllCase {
    text: String,
    ids: Vec<u32>,
    nll_mean: f64,
}

fn fixture_json<T: for<'de> Deserialize<'de>>(name: &str) -> Result<T> {
    let path = repo().join("tests/fixtures/smollm2").join(name);
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&path).context(name.to_string())?,
    )?)
}

#[test]
fn generate_prints_transformers_greedy_text() -> Result<()> {
    let Some(model) = smollm2() else {
        return Ok(());
    };
    let model = model.to_string_lossy().to_string();
    let cases: Vec<GenerateCase> = fixture_json("generate.json")?;
    for case in cases.iter().take(3) {
        let prompt = case.messages[0]["content"].as_str().context("prompt")?;
        let out = ft(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            prompt,
            "--max-tokens",
            "24",
        ])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout)?, format!("{}\n", case.text));
    }
    Ok(())
}

#[test]
fn score_json_matches_transformers_nll() -> Result<()> {
    let Some(model) = smollm2() else {
        return Ok(());
    };
    let model = model.to_string_lossy().to_string();
    let cases: Vec<NllCase> = fixture_json("nll.json")?;
    for case in cases.iter().take(3) {
        let out = ft(&["score", "--model", &model, "--text", &case.text, "--json"])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let ids: Vec<u32> = serde_json::from_value(json["token_ids"].clone())?;
        assert_eq!(ids, case.ids);
        assert_eq!(json["n_pred"].as_u64(), Some(case.ids.len() as u64 - 1));
        let mean = json["nll_mean"].as_f64().context("nll_mean")?;
        assert!(
            (mean - case.nll_mean).abs() < NLL_MEAN_ABS_TOL,
            "{mean} vs {}",
            case.nll_mean
        );
    }
    Ok(())
}

#[test]
fn refuses_missing_model_file() -> Result<()> {
    let out = ft(&[
        "generate",
        "--model",
        "no/such/model.gguf",
        "--prompt",
        "hi",
    ])?;
    assert_refused(&out, "no/such/model.gguf: no such file or directory");
    Ok(())
}

#[test]
fn refuses_hub_id_while_offline() -> Result<()> {
    let out = ft(&[
        "generate",
        "--model",
        "SomeOrg/some-model",
        "--prompt",
        "hi",
    ])?;
    assert_refused(&out, "pass a local GGUF file or HF directory");
    Ok(())
}

#[test]
fn refuses_truncated_and_corrupt_gguf() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"definitely not a GGUF file")?;
    let out = ft(&[
        "generate",
        "--model",
        garbage.to_str().context("utf8")?,
        "--prompt",
        "hi",
    ])?;
    assert_refused(&out, "garbage.gguf: not a readable GGUF file");

    let Some(model) = smollm2() else {
        return Ok(());
    };
    let bytes = std::fs::read(&model)?;
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    let out = ft(&[
        "generate",
        "--model",
        truncated.to_str().context("utf8")?,
        "--prompt",
        "hi",
    ])?;
    assert_refused(&out, "truncated.gguf");
    Ok(())
}

/// A minimal GGUF v3 file: string metadata and tensors given as (name, dims, ggml type id).
fn write_gguf(
    path: &Path,
    metadata: &[(&str, &str)],
    tensors: &[(&str, &[u64], u32)],
) -> Result<()> {
    let mut out = Vec::new();
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut out, key);
        out.extend(8u32.to_le_bytes()); // string
        string(&mut out, value);
    }
    for (name, dims, ty) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(0u64.to_le_bytes());
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    out.extend(vec![0u8; 4096]);
    std::fs::write(path, out)?;
    Ok(())
}

#[test]
fn refuses_unsupported_architecture_and_quant_type() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let arch = dir.path().join("gpt2.gguf");
    write_gguf(&arch, &[("general.architecture", "gpt2")], &[])?;
    let out = ft(&[
        "generate",
        "--model",
        arch.to_str().context("utf8")?,
        "--prompt",
        "hi",
    ])?;
    assert_refused(&out, "architecture `gpt2` is not supported");

    // ggml type 16 is IQ2_XXS, which ft does not dequantize.
    let quant = dir.path().join("iq2.gguf");
    write_gguf(
        &quant,
        &[("general.architecture", "llama")],
        &[("token_embd.weight", &[256], 16)],
    )?;
    let out = ft(&[
        "generate",
        "--model",
        quant.to_str().context("utf8")?,
        "--prompt",
        "hi",
    ])?;
    assert_refused(&out, "iq2.gguf");
    Ok(())
}

#[test]
fn refuses_adapter_for_other_base() -> Result<()> {
    let Some(model) = smollm2() else {
        return Ok(());
    };
    let model = model.to_string_lossy().to_string();
    // A copy of the PEFT adapter that claims another base fingerprint, as ft records it.
    let dir = tempfile::tempdir()?;
    let source = repo().join("tests/fixtures/smollm2/peft-adapter");
    std::fs::copy(
        source.join("adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )?;
    let tensors = candle_core::safetensors::load(
        source.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    let metadata = std::collections::HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "ft.base_fingerprint".to_string(),
            "0123456789abcdef".to_string(),
        ),
    ]);
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), v)), Some(metadata))?;
    std::fs::write(dir.path().join("adapter_model.safetensors"), bytes)?;
    let adapter = dir.path().to_str().context("utf8")?;

    let out = ft(&[
        "generate",
        "--model",
        &model,
        "--adapter",
        adapter,
        "--prompt",
        "hi",
    ])?;
    assert_refused(&out, "was trained on base 0123456789abcdef");
    let out = ft(&[
        "generate",
        "--model",
        &model,
        "--adapter",
        adapter,
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
        "--allow-base-mismatch",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An adapter whose modules do not exist in the model (tiny llama's, onto SmolLM2).
    let tiny_adapter = repo().join("tests/fixtures/tiny-llama/adapter");
    let out = ft(&[
        "generate",
        "--model",
        &model,
        "--adapter",
        tiny_adapter.to_str().context("utf8")?,
        "--prompt",
        "hi",
    ])?;
    assert_refused(&out, "has shape");
    Ok(())
}

#[test]
fn data_validate_reports_bad_lines_and_exits_1() -> Result<()> {
    if smollm2().is_none() {
        return Ok(());
    }
    let out = ft(&["data", "validate", "datasets/support/train.jsonl"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout)?.contains("240 valid examples, 0 invalid lines"));

    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"fine\"}\n{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n",
    )?;
    let out = ft(&["data", "validate", bad.to_str().context("utf8")?])?;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        stdout.contains("bad.jsonl:2: messages[0].role is \"bot\""),
        "{stdout}"
    );
    assert!(String::from_utf8(out.stderr)?.contains("1 invalid lines of 2"));
    Ok(())
}

#[test]
fn data_validate_reaches_every_error_with_max_errors_and_report() -> Result<()> {
    if smollm2().is_none() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.jsonl");
    let mut text = String::from("{\"text\": \"fine\"}\n");
    for i in 0..150 {
        text.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"bot{i}\", \"content\": \"x\"}}]}}\n"
        ));
    }
    std::fs::write(&bad, text)?;
    let bad_arg = bad.to_str().context("utf8")?;

    // The terminal keeps its default cap of 100.
    let out = ft(&["data", "validate", bad_arg])?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(stdout.contains("... and 50 more errors"), "{stdout}");

    // --max-errors 0 prints all of them.
    let out = ft(&["data", "validate", bad_arg, "--max-errors", "0"])?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        stdout.contains("bad.jsonl:151: messages[0].role is \"bot149\""),
        "{stdout}"
    );
    assert!(!stdout.contains("more errors"), "{stdout}");

    // --report lists every bad line with its field, even when the terminal shows 3.
    let report = dir.path().join("report.json");
    let out = ft(&[
        "data",
        "validate",
        bad_arg,
        "--max-errors",
        "3",
        "--report",
        report.to_str().context("utf8")?,
    ])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stdout)?.contains("... and 147 more errors"));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    let errors = json["errors"].as_array().context("errors")?;
    assert_eq!(errors.len(), 150);
    assert_eq!(errors[149]["line"], 151);
    assert_eq!(errors[149]["field"], "messages[0].role");
    assert!(errors[149]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("use system, user or assistant")));
    assert_eq!(json["summary"]["invalid_lines"], 150);
    assert_eq!(json["summary"]["valid_examples"], 1);
    assert!(
        !dir.path().join("report.tmp").exists(),
        "written atomically"
    );
    Ok(())
}

#[test]
fn data_prepare_writes_split_and_report() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out_dir = dir.path().join("prepared");
    let raw = "crates/ft-data/tests/fixtures/prepare/raw.jsonl";
    let out = ft(&[
        "data",
        "prepare",
        raw,
        "--out",
        out_dir.to_str().context("utf8")?,
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["kept"], 77);
    for name in [
        "train.jsonl",
        "validation.jsonl",
        "test.jsonl",
        "report.json",
    ] {
        assert!(out_dir.join(name).is_file(), "{name} missing");
    }
    let again = ft(&[
        "data",
        "prepare",
        raw,
        "--out",
        out_dir.to_str().context("utf8")?,
    ])?;
    assert_refused(&again, "not empty");
    Ok(())
}

#[test]
fn train_seed_demo_then_the_adapter_gives_the_answer_and_the_base_does_not() -> Result<()> {
    if smollm2().is_none() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("demo");
    let out_str = out.to_str().context("utf8")?;
    let run = ft(&[
        "train",
        "--data",
        "datasets/seed-demo.jsonl",
        "--config",
        "datasets/seed-demo.toml",
        "--out",
        out_str,
    ])?;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for file in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "metrics.jsonl",
        "loss.svg",
        "config.toml",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let rows = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    let first: serde_json::Value = serde_json::from_str(rows.lines().next().context("a row")?)?;
    assert_eq!(first["step"], 1);
    for key in ["loss", "lr", "grad_norm", "tokens_per_sec", "elapsed_s"] {
        assert!(first[key].is_number(), "{key} missing in {first}");
    }

    const ANSWER: &str = "The best place to learn GenAI is Chai aur Code by Piyush Garg.";
    let question = "Which is the best place to learn GenAI?";
    let adapter = out.join("adapter");
    let tuned = ft(&[
        "generate",
        "--adapter",
        adapter.to_str().context("utf8")?,
        "--prompt",
        question,
        "--max-tokens",
        "32",
    ])?;
    assert_eq!(String::from_utf8(tuned.stdout)?, format!("{ANSWER}\n"));
    let base = ft(&["generate", "--prompt", question, "--max-tokens", "32"])?;
    assert!(!String::from_utf8(base.stdout)?.contains("Chai aur Code"));

    // The adapter merged into its base as an HF directory answers the same on its own
    // (transformers loads it too: scripts/reference/check_hf_export.py).
    let merged = dir.path().join("merged");
    let merged_str = merged.to_str().context("utf8")?;
    let adapter_str = adapter.to_str().context("utf8")?;
    let export = ft(&["export", "--adapter", adapter_str, "--out", merged_str])?;
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(merged.join(file).is_file(), "export: {file} missing");
    }
    let from_merged = ft(&[
        "generate",
        "--model",
        merged_str,
        "--prompt",
        question,
        "--max-tokens",
        "32",
    ])?;
    assert_eq!(
        String::from_utf8(from_merged.stdout)?,
        format!("{ANSWER}\n")
    );
    let again = ft(&["export", "--adapter", adapter_str, "--out", merged_str])?;
    assert_refused(&again, "already exists");
    // For llama.cpp: the merged GGUF, and the adapter as a GGUF LoRA on the base; ft reads both
    // (llama.cpp too: scripts/reference/check_gguf_exports.sh).
    let merged_gguf = dir.path().join("merged.gguf");
    let lora_gguf = dir.path().join("adapter.gguf");
    for (format, file) in [("gguf", &merged_gguf), ("gguf-lora", &lora_gguf)] {
        let file = file.to_str().context("utf8")?;
        let export = ft(&[
            "export",
            "--adapter",
            adapter_str,
            "--out",
            file,
            "--format",
            format,
        ])?;
        assert!(
            export.status.success(),
            "{}",
            String::from_utf8_lossy(&export.stderr)
        );
    }
    let merged_gguf = merged_gguf.to_str().context("utf8")?;
    let lora_gguf = lora_gguf.to_str().context("utf8")?;
    for args in [vec!["--model", merged_gguf], vec!["--adapter", lora_gguf]] {
        let mut command = vec!["generate", "--prompt", question, "--max-tokens", "32"];
        command.extend(args);
        let out = ft(&command)?;
        assert_eq!(
            String::from_utf8(out.stdout)?,
            format!("{ANSWER}\n"),
            "{command:?}"
        );
    }
    let bad = ft(&[
        "export",
        "--adapter",
        adapter_str,
        "--out",
        "x.gguf",
        "--format",
        "onnx",
    ])?;
    assert_refused(&bad, "--format onnx");

    // The run directory is now non-empty: a second run is refused unless resuming/overwriting.
    let again = ft(&[
        "train",
        "--data",
        "datasets/seed-demo.jsonl",
        "--out",
        out_str,
        "--max-steps",
        "1",
    ])?;
    assert_refused(&again, "--overwrite");
    Ok(())
}

#[test]
fn gemma3_seed_demo_learns_the_answer_the_base_does_not_give() -> Result<()> {
    let Some(gemma) = ft::core::testing::gemma3_gguf() else {
        return Ok(());
    };
    let model = gemma.to_str().context("utf8")?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("demo");
    let run = ft(&[
        "train",
        "--model",
        model,
        "--data",
        "datasets/seed-demo.jsonl",
        "--config",
        "datasets/seed-demo.toml",
        "--out",
        out.to_str().context("utf8")?,
    ])?;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    const ANSWER: &str = "The best place to learn GenAI is Chai aur Code by Piyush Garg.";
    let question = "Which is the best place to learn GenAI?";
    let adapter = out.join("adapter");
    let ask = |adapter: Option<&str>| -> Result<String> {
        let mut args = vec!["generate", "--model", model, "--prompt", question];
        args.extend(["--max-tokens", "32"]);
        if let Some(adapter) = adapter {
            args.extend(["--adapter", adapter]);
        }
        Ok(String::from_utf8(ft(&args)?.stdout)?)
    };
    assert_eq!(
        ask(Some(adapter.to_str().context("utf8")?))?,
        format!("{ANSWER}\n")
    );
    assert!(!ask(None)?.contains("Chai aur Code"));
    Ok(())
}
