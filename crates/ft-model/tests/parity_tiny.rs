//! Parity with transformers + PEFT on tiny random models (fixtures made by
//! `scripts/reference/make_tiny_models.py`, transformers 5.24.0, peft 0.21.2):
//! logits of llama (sharded safetensors), llama3 rope scaling, qwen2 (biases, tied
//! embeddings), qwen3 (q/k norms) and gemma3 (`make_tiny_qwen3_gemma3.py`); and, with a LoRA
//! adapter whose B is non-zero, the loss and every LoRA gradient.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use ft_model::adapter_io::LoadOptions;
use ft_model::{Inputs, Model};

/// Logits must equal transformers' within this absolute difference.
const LOGITS_ABS_TOL: f32 = 1e-5;
/// Loss and gradients must equal PEFT's within this relative difference.
const GRAD_REL_TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn reference(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).with_context(|| path.display().to_string())
}

/// Inputs and the attention mask rows from a reference file.
fn inputs_of(reference: &HashMap<String, Tensor>) -> Result<(Inputs, Vec<Vec<u8>>)> {
    let ids = reference["input_ids"].to_dtype(DType::U32)?;
    let mask: Vec<Vec<u8>> = reference["attention_mask"].to_dtype(DType::U8)?.to_vec2()?;
    Ok((Inputs::from_attention_mask(&ids, &mask)?, mask))
}

/// Largest |a - b| over positions where the mask is 1.
fn max_diff_on_mask(a: &Tensor, b: &Tensor, mask: &[Vec<u8>]) -> Result<f32> {
    let mut worst = 0f32;
    for (row, keep) in mask.iter().enumerate() {
        for (pos, &k) in keep.iter().enumerate() {
            if k == 1 {
                let d = (a.get(row)?.get(pos)? - b.get(row)?.get(pos)?)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                worst = worst.max(d);
            }
        }
    }
    Ok(worst)
}

fn assert_logits_match(model_dir: &Path, reference_file: &Path) -> Result<()> {
    let model = Model::load(model_dir, &Device::Cpu)?;
    let reference = reference(reference_file)?;
    let (inputs, mask) = inputs_of(&reference)?;
    let logits = model.transformer.forward(&inputs, None, None)?;
    let diff = max_diff_on_mask(&logits, &reference["logits"], &mask)?;
    assert!(
        diff < LOGITS_ABS_TOL,
        "{}: logits differ by {diff}",
        model_dir.display()
    );
    Ok(())
}

#[test]
fn llama_logits_match_transformers_from_sharded_safetensors() -> Result<()> {
    assert!(fixture("tiny-llama/model/model.safetensors.index.json").is_file());
    assert_logits_match(
        &fixture("tiny-llama/model"),
        &fixture("tiny-llama/reference.safetensors"),
    )
}

#[test]
fn llama3_rope_scaling_logits_match_transformers() -> Result<()> {
    assert_logits_match(
        &fixture("tiny-llama3/model"),
        &fixture("tiny-llama3/reference.safetensors"),
    )
}

#[test]
fn qwen2_logits_match_transformers() -> Result<()> {
    assert_logits_match(
        &fixture("tiny-qwen2/model"),
        &fixture("tiny-qwen2/reference.safetensors"),
    )
}

#[test]
fn qwen3_logits_match_transformers() -> Result<()> {
    assert_logits_match(
        &fixture("tiny-qwen3/model"),
        &fixture("tiny-qwen3/reference.safetensors"),
    )
}

/// Sliding-window and global layers with their two RoPE bases, (1 + w) sandwich norms, q/k
/// norms, GeGLU, scaled embeddings and a query scale other than 1/sqrt(head_dim).
#[test]
fn gemma3_logits_match_transformers() -> Result<()> {
    assert_logits_match(
        &fixture("tiny-gemma3/model"),
        &fixture("tiny-gemma3/reference.safetensors"),
    )
}

#[test]
fn transformers_v5_rope_parameters_config_gives_same_logits() -> Result<()> {
    for name in ["tiny-llama3", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"] {
        let dir = tempfile::tempdir()?;
        for entry in std::fs::read_dir(fixture(&format!("{name}/model")))? {
            let entry = entry?;
            std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
        }
        std::fs::copy(
            fixture(&format!("{name}/config.rope_parameters.json")),
            dir.path().join("config.json"),
        )?;
        assert_logits_match(
            dir.path(),
            &fixture(&format!("{name}/reference.safetensors")),
        )?;
    }
    Ok(())
}

/// HF's causal-LM loss: position i predicts labels[i + 1]; labels of -100 are ignored.
fn hf_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (batch, seq, vocab) = logits.dims3()?;
    let shifted_logits = logits
        .narrow(1, 0, seq - 1)?
        .reshape((batch * (seq - 1), vocab))?;
    let shifted: Vec<i64> = labels.narrow(1, 1, seq - 1)?.flatten_all()?.to_vec1()?;
    let mask: Vec<f32> = shifted
        .iter()
        .map(|&l| f32::from(u8::from(l >= 0)))
        .collect();
    let targets: Vec<u32> = shifted.iter().map(|&l| l.max(0) as u32).collect();
    let n = targets.len();
    let (loss, _) = ft_kernels::masked_cross_entropy(
        &shifted_logits,
        &Tensor::from_vec(targets, n, &Device::Cpu)?,
        &Tensor::from_vec(mask, n, &Device::Cpu)?,
    )?;
    Ok(loss)
}

fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-12);
    Ok(diff / scale)
}

#[test]
fn lora_loss_logits_and_grads_match_peft() -> Result<()> {
    assert_lora_matches_peft("tiny-llama", 2)
}

#[test]
fn qwen3_lora_loss_logits_and_grads_match_peft() -> Result<()> {
    assert_lora_matches_peft("tiny-qwen3", 2)
}

#[test]
fn gemma3_lora_loss_logits_and_grads_match_peft() -> Result<()> {
    assert_lora_matches_peft("tiny-gemma3", 3)
}

/// The fixture's LoRA logits, loss and every LoRA gradient equal PEFT's.
fn assert_lora_matches_peft(name: &str, layers: usize) -> Result<()> {
    let model = Model::load(&fixture(&format!("{name}/model")), &Device::Cpu)?;
    let adapter = model
        .load_adapter(
            &fixture(&format!("{name}/adapter")),
            &LoadOptions::default(),
        )?
        .into_trainable()?;
    assert_eq!(
        adapter.vars().len(),
        layers * 7 * 2,
        "{layers} layers x 7 modules x (A, B)"
    );
    let reference = reference(&fixture(&format!("{name}/lora_reference.safetensors")))?;
    let (inputs, mask) = inputs_of(&self::reference(&fixture(&format!(
        "{name}/reference.safetensors"
    )))?)?;
    let logits = model.transformer.forward(&inputs, None, Some(&adapter))?;
    let diff = max_diff_on_mask(&logits, &reference["logits"], &mask)?;
    assert!(
        diff < LOGITS_ABS_TOL,
        "{name}: LoRA logits differ by {diff}"
    );

    let loss = hf_loss(&logits, &reference["labels"])?;
    let expected = reference["loss"].to_dtype(DType::F32)?.flatten_all()?;
    let loss_rel = rel_diff(&loss.flatten_all()?, &expected)?;
    assert!(
        loss_rel < GRAD_REL_TOL,
        "{name}: loss {loss} vs PEFT {expected}"
    );

    let grads = loss.backward()?;
    for (key, var) in adapter.vars() {
        let grad = grads
            .get(var.as_tensor())
            .with_context(|| format!("{key} got no gradient"))?;
        let norm = grad.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(norm > 0.0, "{key} has an all-zero gradient");
        let peft = &reference[&format!("grad.{key}")];
        let rel = rel_diff(grad, peft)?;
        assert!(
            rel < GRAD_REL_TOL,
            "{name} {key}: gradient differs from PEFT by {rel} (relative)"
        );
    }
    Ok(())
}

#[test]
fn rslora_scaling_matches_peft() -> Result<()> {
    let model = Model::load(&fixture("tiny-llama/model"), &Device::Cpu)?;
    let adapter = model.load_adapter(
        &fixture("tiny-llama/adapter-rslora"),
        &LoadOptions::default(),
    )?;
    assert!(adapter.config().use_rslora);
    let reference = reference(&fixture("tiny-llama/lora_rslora_reference.safetensors"))?;
    let (inputs, mask) = inputs_of(&self::reference(&fixture(
        "tiny-llama/reference.safetensors",
    ))?)?;
    let logits = model.transformer.forward(&inputs, None, Some(&adapter))?;
    let diff = max_diff_on_mask(&logits, &reference["logits"], &mask)?;
    assert!(diff < LOGITS_ABS_TOL, "rsLoRA logits differ by {diff}");
    Ok(())
}
