//! The training ops' hand-written backward (fused RMSNorm, RoPE, SwiGLU, attention and LM
//! head + cross-entropy) gives the LoRA gradients that candle's autograd gives for the
//! composition of primitives (the old path), on every tiny model, with padding, packing and
//! LoRA dropout. The fused path is each block as one graph node (`block_backward`).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use ft_data::{BatchConfig, Batcher, TokenizedExample};
use ft_kernels::backward_path::with_composed;
use ft_model::loss::causal_lm_loss;
use ft_model::{LoraAdapter, LoraConfig, Model, TargetModules};

/// Relative to the gradient's largest element, per LoRA matrix.
const GRAD_REL_TOL: f32 = 1e-5;

fn examples() -> Vec<TokenizedExample> {
    (0..7u32)
        .map(|i| {
            let len = 4 + (i * 5) % 11;
            TokenizedExample {
                input_ids: (0..len).map(|t| (i * 37 + t * 11 + 5) % 128).collect(),
                labels: (0..len).map(|t| t >= len / 3).collect(),
            }
        })
        .collect()
}

/// A trainable adapter on every linear whose B is not zero (PEFT's initial B would make
/// every A gradient zero, which could hide a dropped path).
fn adapter(model: &Model, dropout: f64, targets: &str) -> Result<LoraAdapter> {
    let config = LoraConfig {
        dropout,
        target_modules: TargetModules::parse(targets),
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::init(&model.transformer, config, 7, None)?;
    // Dropout masks come from (seed, module): both paths draw the same ones.
    adapter.set_dropout_seed(Some(11));
    for (key, var) in adapter.vars() {
        if key.contains("lora_B") {
            var.set(&Tensor::randn(0f32, 0.05, var.shape(), &Device::Cpu)?)?;
        }
    }
    Ok(adapter)
}

fn gradients(model: &Model, adapter: &LoraAdapter, batcher: &Batcher) -> Result<Vec<Tensor>> {
    let mut total: Option<Vec<Tensor>> = None;
    for rows in batcher.plan(0) {
        let batch = batcher.batch(&rows);
        let loss = causal_lm_loss(&model.transformer, &batch, Some(adapter))?;
        let store = loss.sum.backward()?;
        let grads = adapter
            .vars()
            .iter()
            .map(|(key, var)| {
                store
                    .get(var.as_tensor())
                    .cloned()
                    .with_context(|| format!("{key} got no gradient"))
            })
            .collect::<Result<Vec<_>>>()?;
        total = Some(match total {
            None => grads,
            Some(sum) => sum
                .iter()
                .zip(&grads)
                .map(|(a, b)| Ok((a + b)?))
                .collect::<Result<_>>()?,
        });
    }
    total.context("no batches")
}

fn assert_fused_equals_composed(model_name: &str, packing: bool, dropout: f64) -> Result<()> {
    assert_fused_equals_composed_on(model_name, packing, dropout, "all-linear")
}

fn assert_fused_equals_composed_on(
    model_name: &str,
    packing: bool,
    dropout: f64,
    targets: &str,
) -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(model_name)
        .join("model");
    let model = Model::load(&dir, &Device::Cpu)?;
    let adapter = adapter(&model, dropout, targets)?;
    let config = BatchConfig {
        batch_size: 3,
        max_seq_len: 20,
        packing,
        seed: 5,
        pad_id: 0,
    };
    let batcher = Batcher::new(examples(), config);
    let fused = gradients(&model, &adapter, &batcher)?;
    let composed = with_composed(|| gradients(&model, &adapter, &batcher))?;
    for (((key, _), fused), composed) in adapter.vars().iter().zip(&fused).zip(&composed) {
        let scale = composed.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(scale > 0.0, "{model_name}: {key} has an all-zero gradient");
        let diff = (fused - composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff <= GRAD_REL_TOL * scale,
            "{model_name} (packing {packing}): {key} differs from the composed path by {} relative",
            diff / scale
        );
    }
    Ok(())
}

#[test]
fn llama_lora_gradients_equal_the_composed_path_with_padding_and_packing() -> Result<()> {
    assert_fused_equals_composed("tiny-llama", false, 0.0)?;
    assert_fused_equals_composed("tiny-llama", true, 0.0)
}

#[test]
fn lora_dropout_masks_are_the_same_on_both_paths() -> Result<()> {
    assert_fused_equals_composed("tiny-llama", true, 0.1)
}

#[test]
fn llama3_scaled_rope_lora_gradients_equal_the_composed_path() -> Result<()> {
    assert_fused_equals_composed("tiny-llama3", false, 0.0)?;
    assert_fused_equals_composed("tiny-llama3", true, 0.0)
}

#[test]
fn qwen2_lora_gradients_equal_the_composed_path() -> Result<()> {
    assert_fused_equals_composed("tiny-qwen2", false, 0.0)?;
    assert_fused_equals_composed("tiny-qwen2", true, 0.0)
}

#[test]
fn an_adapter_on_some_modules_only_gets_the_same_gradients() -> Result<()> {
    assert_fused_equals_composed_on("tiny-llama", false, 0.0, "q_proj,v_proj,down_proj")
}

/// bf16 frozen products against the exact f32 path: each LoRA gradient within this fraction of
/// its largest element (inputs and weights rounded to 8 bits of mantissa, f32 sums).
const BF16_GRAD_REL_TOL: f32 = 1e-2;

#[test]
fn bf16_frozen_products_stay_within_their_tolerance_of_f32() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama/model");
    let model = Model::load(&dir, &Device::Cpu)?;
    if !ft_kernels::bf16_matmul::available() {
        // No AVX512_BF16 here: asking for bf16 must say so rather than run the slow reference.
        let refused = model.transformer.set_bf16_training(true);
        assert!(
            refused.is_err(),
            "bf16 training accepted on a CPU without AVX512_BF16"
        );
        return Ok(());
    }
    let adapter = adapter(&model, 0.0, "all-linear")?;
    let config = BatchConfig {
        batch_size: 3,
        max_seq_len: 20,
        packing: false,
        seed: 5,
        pad_id: 0,
    };
    let batcher = Batcher::new(examples(), config);
    let exact = gradients(&model, &adapter, &batcher)?;
    model.transformer.set_bf16_training(true)?;
    let bf16 = gradients(&model, &adapter, &batcher);
    model.transformer.set_bf16_training(false)?;
    let bf16 = bf16?;
    let mut largest = 0f32;
    for (((key, _), bf16), exact) in adapter.vars().iter().zip(&bf16).zip(&exact) {
        let scale = exact.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = (bf16 - exact)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
        assert!(
            diff <= BF16_GRAD_REL_TOL,
            "{key}: bf16 differs from f32 by {diff} relative"
        );
        largest = largest.max(diff);
    }
    // Not the f32 path under another name: bf16 rounding shows.
    assert!(largest > 1e-6, "bf16 gradients equal f32's exactly");
    Ok(())
}
