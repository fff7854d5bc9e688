//! GGUF exports on the real SmolLM2 GGUF with its PEFT-trained fixture adapter: the adapter as
//! a llama.cpp GGUF LoRA loads back to the same logits (q/k rows permuted as llama.cpp wants
//! and back), the merged GGUF gives the adapter's logits, and a GGUF LoRA for another base is
//! refused. (llama.cpp loading both: scripts/reference/check_gguf_exports.sh.)

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use ft_model::adapter_io::LoadOptions;
use ft_model::export_gguf::{export_gguf_lora, export_merged_gguf};
use ft_model::{Inputs, Model};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

#[test]
fn gguf_lora_and_merged_gguf_give_the_adapters_logits() -> Result<()> {
    let Some(path) = ft_core::testing::default_gguf() else {
        return Ok(());
    };
    let model = Model::load(&path, &Device::Cpu)?;
    let options = LoadOptions {
        allow_base_mismatch: false,
    };
    let adapter = model.load_adapter(
        &repo().join("tests/fixtures/smollm2/peft-adapter"),
        &options,
    )?;
    let dir = tempfile::tempdir()?;
    let lora_file = dir.path().join("adapter.gguf");
    export_gguf_lora(&path, &adapter, &lora_file)?;
    let merged_file = dir.path().join("merged.gguf");
    export_merged_gguf(&path, &adapter, GgmlDType::F32, &merged_file)?;

    let tokens = Tensor::new(
        &[[504u32, 2365, 6354, 16438, 27003, 690, 260, 23790]],
        &Device::Cpu,
    )?;
    let inputs = Inputs::from_attention_mask(&tokens, &[vec![1; 8]])?;
    let expected = model.transformer.forward(&inputs, None, Some(&adapter))?;
    let base = model.transformer.forward(&inputs, None, None)?;
    assert!(
        max_diff(&expected, &base)? > 1e-2,
        "the adapter changes nothing"
    );

    let from_gguf = model.load_adapter(&lora_file, &options)?;
    assert_eq!(from_gguf.modules().len(), adapter.modules().len());
    let with_gguf_lora = model.transformer.forward(&inputs, None, Some(&from_gguf))?;
    let diff = max_diff(&with_gguf_lora, &expected)?;
    assert!(diff < 1e-4, "GGUF LoRA logits differ by {diff}");

    let merged = Model::load(&merged_file, &Device::Cpu)?;
    let diff = max_diff(&merged.transformer.forward(&inputs, None, None)?, &expected)?;
    assert!(diff < 1e-3, "merged GGUF logits differ by {diff}");

    // The GGUF LoRA on another base: the tiny llama has other shapes and another fingerprint.
    let other = Model::load(
        &repo().join("tests/fixtures/tiny-llama/model"),
        &Device::Cpu,
    )?;
    let refused = other.load_adapter(&lora_file, &options);
    assert!(
        refused.is_err(),
        "a GGUF LoRA for SmolLM2 loaded onto the tiny llama"
    );
    let forced = other.load_adapter(
        &lora_file,
        &LoadOptions {
            allow_base_mismatch: true,
        },
    );
    let message = format!(
        "{:#}",
        forced
            .err()
            .ok_or_else(|| anyhow::anyhow!("shapes accepted"))?
    );
    assert!(message.contains("another base"), "{message}");
    Ok(())
}
