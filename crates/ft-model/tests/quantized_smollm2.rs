//! The quantized inference path on the real SmolLM2 GGUF against the exact f32 path (itself
//! checked against transformers in `smollm2_gguf.rs`): per-text NLL, greedy answers, the
//! fingerprint adapters are checked against, and mixed-adapter batches.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, D};
use ft_model::adapter_io::LoadOptions;
use ft_model::generate::{generate, token_nll, GenerateParams};
use ft_model::{Cache, Lora, Model, ModelOptions, Precision, RowAdapters};
use serde::Deserialize;

/// The quantized path's mean NLL per text must be within this of the f32 path's.
const NLL_MEAN_ABS_TOL: f32 = 0.05;
/// Of the four parity prompts, at least this many greedy answers must equal the f32 path's.
const GREEDY_EQUAL_AT_LEAST: usize = 3;
/// A row in a mixed batch against the same row alone (same kernels; only candle's f32 LoRA
/// matmul sees a different row count).
const ROW_LOGITS_ABS_TOL: f32 = 1e-4;

/// The fused decode step against the general path: the same operations in another order
/// (RMSNorm sums, reciprocals), amplified over 30 layers (measured: up to 7e-4).
const FUSED_LOGITS_ABS_TOL: f32 = 5e-3;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models() -> Option<(Model, Model)> {
    let path = ft_core::testing::default_gguf()?;
    let exact = Model::load(&path, &Device::Cpu).expect("the default GGUF loads");
    let options = ModelOptions {
        precision: Precision::Quantized,
        quantize: None,
    };
    let fast = Model::load_with(&path, &Device::Cpu, &options).expect("it loads quantized");
    Some((exact, fast))
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
}

#[derive(Deserialize)]
struct GenerateCase {
    prompt_ids: Vec<u32>,
}

fn mean(xs: &[f32]) -> f32 {
    xs.iter().sum::<f32>() / xs.len() as f32
}

#[test]
fn quantized_nll_is_close_to_f32_per_text_and_fingerprints_agree() -> Result<()> {
    let Some((exact, fast)) = models() else {
        return Ok(());
    };
    assert!(exact.transformer.is_dense() && !fast.transformer.is_dense());
    // Adapters record the base's fingerprint; both paths must accept the same adapters.
    assert_eq!(exact.fingerprint, fast.fingerprint);
    let cases: Vec<NllCase> = read_json("nll.json")?;
    assert!(cases.len() >= 6);
    for case in cases {
        let want = mean(&token_nll(&exact.transformer, &case.ids, None)?);
        let got = mean(&token_nll(&fast.transformer, &case.ids, None)?);
        eprintln!(
            "{}: f32 {want:.4}, quantized {got:.4}, diff {:+.4}",
            case.name,
            got - want
        );
        assert!(
            (got - want).abs() < NLL_MEAN_ABS_TOL,
            "{}: quantized mean NLL {got} vs f32 {want}",
            case.name
        );
    }
    Ok(())
}

#[test]
fn quantized_greedy_answers_equal_f32_for_most_prompts() -> Result<()> {
    let Some((exact, fast)) = models() else {
        return Ok(());
    };
    let cases: Vec<GenerateCase> = read_json("generate.json")?;
    let params = GenerateParams {
        max_new_tokens: 24,
        stop_ids: vec![2],
        sampling: Default::default(),
    };
    let mut equal = 0;
    for (i, case) in cases.iter().enumerate() {
        let prompt = std::slice::from_ref(&case.prompt_ids);
        let want = generate(&exact.transformer, prompt, &params, None)?;
        let got = generate(&fast.transformer, prompt, &params, None)?;
        if got == want {
            equal += 1;
        } else {
            let first = want[0]
                .iter()
                .zip(&got[0])
                .take_while(|(a, b)| a == b)
                .count();
            eprintln!("prompt {i}: quantized answer departs from f32 at token {first}");
        }
    }
    eprintln!("{equal} of {} greedy answers equal", cases.len());
    assert!(equal >= GREEDY_EQUAL_AT_LEAST.min(cases.len()));
    Ok(())
}

#[test]
fn quantized_mixed_adapter_rows_equal_each_row_alone() -> Result<()> {
    let Some((_, fast)) = models() else {
        return Ok(());
    };
    let adapter = std::sync::Arc::new(fast.load_adapter(
        &repo().join("tests/fixtures/smollm2/peft-adapter"),
        &LoadOptions::default(),
    )?);
    let prompts: [&[u32]; 3] = [
        &[1, 9690, 198, 2683],
        &[1, 4093, 198],
        &[1, 9690, 198, 614, 3629],
    ];
    let adapters = [Some(adapter.clone()), None, Some(adapter.clone())];
    let model = &fast.transformer;
    // The same path for a row alone and in the batch: rows with adapters take the general
    // one, so the adapter-free row does too here (the fused step has its own test).
    model.set_fused_decode(false);
    // Each prompt prefilled in its own cache, then one decode step for all rows together.
    let prefill = |prompt: &[u32], lora: Option<&ft_model::LoraAdapter>| -> Result<Cache> {
        let mut cache = model.new_cache();
        for (pos, &token) in prompt.iter().enumerate() {
            model.decode_rows(&[token], &[pos as u32], &mut [&mut cache], lora)?;
        }
        Ok(cache)
    };
    let next = [5u32, 7, 11];
    let mut caches = Vec::new();
    for (prompt, a) in prompts.iter().zip(&adapters) {
        caches.push(prefill(prompt, a.as_deref())?);
    }
    let positions: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let rows = RowAdapters::for_rows(&adapters, &Device::Cpu)?;
    let lora = rows.as_ref().map_or(Lora::None, Lora::Rows);
    let mut refs: Vec<&mut Cache> = caches.iter_mut().collect();
    let together = model.decode_rows(&next, &positions, &mut refs, lora)?;
    for (i, (prompt, a)) in prompts.iter().zip(&adapters).enumerate() {
        let mut cache = prefill(prompt, a.as_deref())?;
        let alone = model.decode_rows(
            &next[i..=i],
            &positions[i..=i],
            &mut [&mut cache],
            a.as_deref(),
        )?;
        let row: Tensor = together.narrow(0, i, 1)?;
        let diff = (&row - &alone)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff < ROW_LOGITS_ABS_TOL,
            "row {i}: logits differ by {diff}"
        );
        assert_eq!(
            row.argmax(D::Minus1)?.to_vec1::<u32>()?,
            alone.argmax(D::Minus1)?.to_vec1::<u32>()?
        );
    }
    Ok(())
}

#[test]
fn fused_decode_step_equals_the_general_path() -> Result<()> {
    let Some((_, fast)) = models() else {
        return Ok(());
    };
    let model = &fast.transformer;
    let prompt = [1u32, 9690, 198, 2683, 314, 253];
    // Per-row caches (the server's decode_rows): step through the prompt on both paths.
    let run = |fused: bool| -> Result<Vec<Vec<f32>>> {
        model.set_fused_decode(fused);
        let mut cache = model.new_cache();
        let mut out = Vec::new();
        for (pos, &token) in prompt.iter().enumerate() {
            let logits = model.decode_rows(&[token], &[pos as u32], &mut [&mut cache], None)?;
            out.push(logits.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    };
    let (fused, general) = (run(true)?, run(false)?);
    model.set_fused_decode(true);
    for (step, (a, b)) in fused.iter().zip(&general).enumerate() {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < FUSED_LOGITS_ABS_TOL,
            "step {step}: logits differ by {diff}"
        );
    }
    // The batch path (`generate`): the same greedy tokens either way.
    let cases: Vec<GenerateCase> = read_json("generate.json")?;
    let params = GenerateParams {
        max_new_tokens: 24,
        stop_ids: vec![2],
        sampling: Default::default(),
    };
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt_ids.clone()).collect();
    model.set_fused_decode(false);
    let general = generate(model, &prompts, &params, None)?;
    model.set_fused_decode(true);
    let fused = generate(model, &prompts, &params, None)?;
    assert_eq!(fused, general);
    Ok(())
}
