//! The real SmolLM2-135M-Instruct GGUF (Q4_1/Q8_0) against transformers' GGUF loader + PEFT
//! (fixtures by `scripts/reference/make_smollm2_fixtures.py`, transformers 5.24.0, peft 0.21.2):
//! per-token NLL, greedy generation, and a PEFT-trained adapter's logits.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, D};
use ft_model::adapter_io::LoadOptions;
use ft_model::generate::{generate, token_nll, GenerateParams};
use ft_model::{Inputs, Model};
use serde::Deserialize;

/// Mean NLL per text must be within this of transformers'.
const NLL_MEAN_ABS_TOL: f32 = 1e-3;
/// Logits with the PEFT adapter must be within this of PEFT's.
const ADAPTER_LOGITS_ABS_TOL: f32 = 1e-4;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default GGUF, or `None` outside CI when it has not been fetched. Under `CI=true` a
/// missing model fails the test instead of skipping it.
fn smollm2() -> Option<Model> {
    let path = ft_core::testing::default_gguf()?;
    Some(Model::load(&path, &Device::Cpu).expect("the default GGUF loads"))
}

fn read_json<T: for<'de> Deserialize<'de>>(name: &str) -> Result<T> {
    let path = repo().join("tests/fixtures/smollm2").join(name);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

#[derive(Deserialize)]
struct NllCase {
    name: String,
    ids: Vec<u32>,
    nll: Vec<f32>,
    nll_mean: f32,
}

#[derive(Deserialize)]
struct GenerateCase {
    prompt_ids: Vec<u32>,
    new_ids: Vec<u32>,
    max_new_tokens: usize,
}

#[test]
fn per_text_nll_matches_transformers() -> Result<()> {
    let Some(model) = smollm2() else {
        return Ok(());
    };
    let cases: Vec<NllCase> = read_json("nll.json")?;
    assert!(cases.len() >= 6);
    for case in cases {
        let nll = token_nll(&model.transformer, &case.ids, None)?;
        assert_eq!(nll.len(), case.nll.len());
        let mean = nll.iter().sum::<f32>() / nll.len() as f32;
        assert!(
            (mean - case.nll_mean).abs() < NLL_MEAN_ABS_TOL,
            "{}: mean NLL {mean} vs transformers {}",
            case.name,
            case.nll_mean
        );
    }
    Ok(())
}

#[test]
fn greedy_generation_equals_transformers_alone_and_batched() -> Result<()> {
    let Some(model) = smollm2() else {
        return Ok(());
    };
    let cases: Vec<GenerateCase> = read_json("generate.json")?;
    assert!(cases.len() >= 3);
    let params = GenerateParams {
        max_new_tokens: cases[0].max_new_tokens,
        stop_ids: vec![2],
        sampling: Default::default(),
    };
    for case in &cases {
        let out = generate(
            &model.transformer,
            std::slice::from_ref(&case.prompt_ids),
            &params,
            None,
        )?;
        assert_eq!(out[0], case.new_ids);
    }
    // All prompts in one left-padded batch give the same tokens as one at a time.
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt_ids.clone()).collect();
    let batched = generate(&model.transformer, &prompts, &params, None)?;
    for (out, case) in batched.iter().zip(&cases) {
        assert_eq!(out, &case.new_ids);
    }
    Ok(())
}

#[test]
fn peft_trained_adapter_gives_peft_logits() -> Result<()> {
    let Some(model) = smollm2() else {
        return Ok(());
    };
    let adapter = model.load_adapter(
        &repo().join("tests/fixtures/smollm2/peft-adapter"),
        &LoadOptions::default(),
    )?;
    let path = repo().join("tests/fixtures/smollm2/peft_reference.safetensors");
    let reference = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let ids = reference["input_ids"].to_dtype(DType::U32)?;
    let n = ids.dim(1)?;
    let inputs = Inputs::from_attention_mask(&ids, &[vec![1; n]])?;
    for (prefix, lora) in [("adapter", Some(&adapter)), ("base", None)] {
        let logits = model.transformer.forward(&inputs, None, lora)?;
        let head = logits.narrow(D::Minus1, 0, 2048)?;
        let diff = (&head - &reference[&format!("{prefix}_logits_head")])?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(
            diff < ADAPTER_LOGITS_ABS_TOL,
            "{prefix}: logits differ by {diff}"
        );
        let lse = logits.log_sum_exp(D::Minus1)?;
        let diff = (&lse - &reference[&format!("{prefix}_logsumexp")])?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(
            diff < ADAPTER_LOGITS_ABS_TOL,
            "{prefix}: logsumexp differs by {diff}"
        );
        let argmax: Vec<u32> = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1()?;
        let expected: Vec<i64> = reference[&format!("{prefix}_argmax")]
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(
            argmax,
            expected.iter().map(|&x| x as u32).collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[test]
fn adapter_round_trips_and_refuses_another_base() -> Result<()> {
    let Some(model) = smollm2() else {
        return Ok(());
    };
    let adapter = model.load_adapter(
        &repo().join("tests/fixtures/smollm2/peft-adapter"),
        &LoadOptions::default(),
    )?;
    let trained = ft_model::LoraAdapter::from_modules(
        adapter.config().clone(),
        adapter
            .modules()
            .iter()
            .map(|(p, m)| (p.clone(), m.a.clone(), m.b.clone()))
            .collect(),
        Some(model.fingerprint.clone()),
    );
    let dir = tempfile::tempdir()?;
    ft_model::adapter_io::save_adapter(&trained, dir.path(), "SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let reloaded = model.load_adapter(dir.path(), &LoadOptions::default())?;
    // Saving the same adapter again gives the same bytes (the header's metadata is ordered).
    let first = std::fs::read(dir.path().join("adapter_model.safetensors"))?;
    for _ in 0..8 {
        let again = tempfile::tempdir()?;
        ft_model::adapter_io::save_adapter(
            &trained,
            again.path(),
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        )?;
        assert!(std::fs::read(again.path().join("adapter_model.safetensors"))? == first);
    }
    for (path, module) in adapter.modules() {
        let other = reloaded
            .module(path)
            .context("module survives the round trip")?;
        let diff = (&module.b - &other.b)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{path}");
    }
    // The same adapter presented to a model with another fingerprint is refused...
    let err = ft_model::adapter_io::load_adapter(
        dir.path(),
        &model.transformer,
        "0000000000000000",
        &LoadOptions::default(),
    )
    .expect_err("another base is refused")
    .to_string();
    assert!(
        err.contains("trained on base") && err.contains("--allow-base-mismatch"),
        "{err}"
    );
    // ...unless the user overrides the check.
    ft_model::adapter_io::load_adapter(
        dir.path(),
        &model.transformer,
        "0000000000000000",
        &LoadOptions {
            allow_base_mismatch: true,
        },
    )?;
    // An adapter whose shapes fit another model is refused with the key named.
    let tiny = Model::load(
        &repo().join("tests/fixtures/tiny-llama/model"),
        &Device::Cpu,
    )?;
    let err = tiny
        .load_adapter(
            dir.path(),
            &LoadOptions {
                allow_base_mismatch: true,
            },
        )
        .expect_err("SmolLM2 adapter does not fit the tiny llama")
        .to_string();
    assert!(err.contains("model.layers."), "{err}");
    Ok(())
}
