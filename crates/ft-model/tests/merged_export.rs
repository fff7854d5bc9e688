//! `export::merged_weights` + `hf_config_json`: the merged HF directory, loaded back, gives the
//! logits of the base with the adapter applied (tiny llama, qwen3 and gemma3 with their PEFT
//! fixture adapters; Gemma's norms go back to the `w` its checkpoints store).

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use ft_model::adapter_io::LoadOptions;
use ft_model::export::{
    hf_config_json, merged_weights, safetensors_bytes, write_directory_atomically,
};
use ft_model::{Inputs, Model};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn assert_merged_export_matches_adapter(name: &str) -> Result<()> {
    let base_dir = fixture(name).join("model");
    let base = Model::load(&base_dir, &Device::Cpu)?;
    let adapter = base.load_adapter(&fixture(name).join("adapter"), &LoadOptions::default())?;
    let (config, tensors) = merged_weights(&base_dir, &adapter)?;
    let out = tempfile::tempdir()?;
    let dir = out.path().join("merged");
    let config_json = serde_json::to_vec_pretty(&hf_config_json(&config, None, &[]))?;
    let files = vec![
        ("config.json".to_string(), config_json),
        (
            "model.safetensors".to_string(),
            safetensors_bytes(&tensors, &dir)?,
        ),
    ];
    write_directory_atomically(&dir, &files)?;
    // A second export to the same place is refused, and the first is left as it was.
    assert!(write_directory_atomically(&dir, &files).is_err());

    let merged = Model::load(&dir, &Device::Cpu)?;
    assert_eq!(merged.transformer.config(), base.transformer.config());
    let tokens = Tensor::new(
        &[[3u32, 17, 42, 5, 99, 8, 64, 1, 77, 23, 11, 120]],
        &Device::Cpu,
    )?;
    let inputs = Inputs::from_attention_mask(&tokens, &[vec![1; 12]])?;
    let with_adapter = base.transformer.forward(&inputs, None, Some(&adapter))?;
    let from_export = merged.transformer.forward(&inputs, None, None)?;
    let without = base.transformer.forward(&inputs, None, None)?;
    let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    };
    let merged_diff = diff(&with_adapter, &from_export)?;
    assert!(
        merged_diff < 1e-4,
        "{name}: merged export differs by {merged_diff}"
    );
    assert!(
        diff(&with_adapter, &without)? > 1e-2,
        "{name}: the adapter changes nothing, so the check above could not fail"
    );
    Ok(())
}

#[test]
fn merged_llama_export_gives_the_adapters_logits() -> Result<()> {
    assert_merged_export_matches_adapter("tiny-llama")
}

#[test]
fn merged_qwen3_export_gives_the_adapters_logits() -> Result<()> {
    assert_merged_export_matches_adapter("tiny-qwen3")
}

#[test]
fn merged_gemma3_export_gives_the_adapters_logits() -> Result<()> {
    assert_merged_export_matches_adapter("tiny-gemma3")
}
