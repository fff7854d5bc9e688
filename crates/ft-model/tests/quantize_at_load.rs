//! An HF safetensors base (f32) quantized at load (`ModelOptions::quantize`, the CLI's
//! `--quantize`) against the same base in f32: the linears become quantized, the logits stay
//! close (Q8_0 closer than Q4_0), for llama and for qwen2 (q/k/v biases stay dense).

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use ft_kernels::quant::QuantType;
use ft_model::{Inputs, Model, ModelOptions, Precision};

/// Largest logit difference, relative to the largest |logit|, per block type.
const Q8_0_REL_TOL: f32 = 0.02;
const Q4_0_REL_TOL: f32 = 0.25;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .join("model")
}

fn logits(model: &Model) -> Result<Tensor> {
    let tokens = Tensor::new(&[[1u32, 5, 9, 13, 2, 7, 3, 11]], &Device::Cpu)?;
    let inputs = Inputs::from_attention_mask(&tokens, &[vec![1; 8]])?;
    Ok(model.transformer.forward(&inputs, None, None)?)
}

#[test]
fn quantized_at_load_stays_close_to_f32() -> Result<()> {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let dir = fixture(name);
        let exact = Model::load(&dir, &Device::Cpu)?;
        let want = logits(&exact)?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        for (ty, tol) in [
            (QuantType::Q8_0, Q8_0_REL_TOL),
            (QuantType::Q4_0, Q4_0_REL_TOL),
        ] {
            let options = ModelOptions {
                precision: Precision::Quantized,
                quantize: Some(ty),
            };
            let fast = Model::load_with(&dir, &Device::Cpu, &options)?;
            assert!(
                !fast.transformer.is_dense(),
                "{name} {ty:?}: nothing was quantized"
            );
            let diff = (logits(&fast)? - &want)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(
                diff <= tol * scale,
                "{name} {ty:?}: logits differ by {diff} (max |logit| {scale})"
            );
            assert!(
                diff > 0.0,
                "{name} {ty:?}: identical logits: the quantized path did not run"
            );
            // Adapters trained on the f32 base must still load onto it.
            assert_eq!(fast.fingerprint, exact.fingerprint, "{name} {ty:?}");
        }
        // Without --quantize a full-precision base stays dense on the quantized path.
        let options = ModelOptions {
            precision: Precision::Quantized,
            quantize: None,
        };
        assert!(Model::load_with(&dir, &Device::Cpu, &options)?
            .transformer
            .is_dense());
    }
    Ok(())
}
