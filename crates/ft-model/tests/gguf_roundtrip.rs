//! The GGUF loader on files written the way llama.cpp's converter writes them (q/k rows
//! permuted, llama.cpp names, metadata instead of config.json), in every supported tensor type:
//! F32 must give transformers' logits exactly; quantized types must stay close.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use ft_model::{Inputs, Model};

/// F32 GGUF logits vs transformers' (same as the safetensors path).
const F32_LOGITS_ABS_TOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// llama.cpp's `permute` for q/k (convert_hf_to_gguf.py `LlamaModel.permute`).
fn llama_cpp_permute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer weight");
    let (layer, rest) = rest.split_once('.').expect("layer index");
    let module = [
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
        ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ];
    let (_, g) = module
        .iter()
        .find(|(h, _)| *h == rest)
        .expect("known module");
    format!("blk.{layer}.{g}")
}

/// Writes the tiny llama (HF safetensors) as a llama.cpp-style GGUF with matrices in `dtype`.
fn write_tiny_gguf(path: &Path, dtype: GgmlDType) -> Result<()> {
    let dir = fixture("tiny-llama/model");
    let mut tensors = HashMap::new();
    for entry in std::fs::read_dir(&dir)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            tensors.extend(candle_core::safetensors::load(&p, &Device::Cpu)?);
        }
    }
    let (heads, kv_heads) = (4usize, 2usize);
    let mut qtensors = Vec::new();
    for (name, tensor) in &tensors {
        let tensor = match name.as_str() {
            n if n.ends_with("q_proj.weight") => llama_cpp_permute(tensor, heads)?,
            n if n.ends_with("k_proj.weight") => llama_cpp_permute(tensor, kv_heads)?,
            _ => tensor.clone(),
        };
        // llama.cpp keeps norms (1-D) in F32.
        let ty = if tensor.rank() == 1 {
            GgmlDType::F32
        } else {
            dtype
        };
        qtensors.push((gguf_name(name), QTensor::quantize(&tensor, ty)?));
    }
    use gguf_file::Value;
    let metadata = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(2)),
        ("llama.embedding_length", Value::U32(64)),
        ("llama.feed_forward_length", Value::U32(96)),
        ("llama.attention.head_count", Value::U32(heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(kv_heads as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.context_length", Value::U32(128)),
        ("llama.vocab_size", Value::U32(128)),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let qtensors: Vec<(&str, &QTensor)> = qtensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::fs::File::create(path)?;
    gguf_file::write(&mut file, &metadata, &qtensors)?;
    Ok(())
}

fn logits(model: &Model) -> Result<(Tensor, Tensor)> {
    let reference =
        candle_core::safetensors::load(fixture("tiny-llama/reference.safetensors"), &Device::Cpu)?;
    let ids = reference["input_ids"].to_dtype(DType::U32)?;
    let (batch, seq) = ids.dims2()?;
    // Compare the unpadded first row only.
    let ids = ids.narrow(0, 0, 1)?;
    let inputs = Inputs::from_attention_mask(&ids, &[vec![1; seq]])?;
    let expected = reference["logits"].narrow(0, 0, 1)?;
    assert_eq!(batch, 2);
    Ok((model.transformer.forward(&inputs, None, None)?, expected))
}

#[test]
fn f32_gguf_gives_transformers_logits() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny-f32.gguf");
    write_tiny_gguf(&path, GgmlDType::F32)?;
    let model = Model::load(&path, &Device::Cpu)?;
    let (ours, expected) = logits(&model)?;
    let diff = (ours - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(
        diff < F32_LOGITS_ABS_TOL,
        "F32 GGUF logits differ by {diff}"
    );
    Ok(())
}

#[test]
fn quantized_ggufs_load_and_stay_close() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Block-32 types (the tiny model's widths, 64 and 96, are multiples of 32).
    // Max absolute logit difference from transformers, about twice what each type showed.
    let cases = [
        (GgmlDType::F16, 1e-3),
        (GgmlDType::BF16, 5e-3),
        (GgmlDType::Q8_0, 2e-2),
        (GgmlDType::Q5_0, 0.15),
        (GgmlDType::Q5_1, 0.1),
        (GgmlDType::Q4_0, 0.16),
        (GgmlDType::Q4_1, 0.2),
    ];
    for (dtype, tolerance) in cases {
        let path = dir.path().join(format!("tiny-{dtype:?}.gguf"));
        write_tiny_gguf(&path, dtype)?;
        let model = Model::load(&path, &Device::Cpu)?;
        let (ours, expected) = logits(&model)?;
        let diff = (ours - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
        eprintln!("{dtype:?}: max logit diff {diff}");
        assert!(diff < tolerance, "{dtype:?}: logits differ by {diff}");
    }
    Ok(())
}

/// Deterministic uniform values with standard deviation `std` (candle's `randn` is unseeded).
fn pseudo_random(shape: (usize, usize), std: f32, seed: u64) -> candle_core::Result<Tensor> {
    let n = shape.0 * shape.1;
    let values: Vec<f32> = (0..n as u64)
        .map(|i| {
            let h = (i.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32;
            (h / (1u64 << 24) as f32 - 0.5) * std * 12f32.sqrt()
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

#[test]
fn k_quant_tensors_dequantize_through_the_loader() -> Result<()> {
    // K-quants need rows of 256 values: a one-layer llama 256 wide with random weights, written
    // once as F32 and once per K-quant; the quantized model's logits must track the F32 one.
    let device = Device::Cpu;
    let (hidden, inter, heads, vocab) = (256usize, 256usize, 4usize, 64usize);
    let mut weights: Vec<(String, Tensor)> = vec![
        (
            "token_embd.weight".into(),
            pseudo_random((vocab, hidden), 0.5, 1)?,
        ),
        (
            "output_norm.weight".into(),
            Tensor::ones(hidden, DType::F32, &device)?,
        ),
        (
            "output.weight".into(),
            pseudo_random((vocab, hidden), 0.05, 2)?,
        ),
        (
            "blk.0.attn_norm.weight".into(),
            Tensor::ones(hidden, DType::F32, &device)?,
        ),
        (
            "blk.0.ffn_norm.weight".into(),
            Tensor::ones(hidden, DType::F32, &device)?,
        ),
    ];
    for (name, rows, cols) in [
        ("attn_q", hidden, hidden),
        ("attn_k", hidden, hidden),
        ("attn_v", hidden, hidden),
        ("attn_output", hidden, hidden),
        ("ffn_gate", inter, hidden),
        ("ffn_up", inter, hidden),
        ("ffn_down", hidden, inter),
    ] {
        weights.push((
            format!("blk.0.{name}.weight"),
            pseudo_random((rows, cols), 0.05, rows as u64 * 31 + name.len() as u64)?,
        ));
    }
    let write = |path: &Path, dtype: GgmlDType| -> Result<()> {
        use gguf_file::Value;
        let metadata = [
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U32(1)),
            ("llama.embedding_length", Value::U32(hidden as u32)),
            ("llama.feed_forward_length", Value::U32(inter as u32)),
            ("llama.attention.head_count", Value::U32(heads as u32)),
            ("llama.rope.freq_base", Value::F32(10000.0)),
            ("llama.context_length", Value::U32(64)),
        ];
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let qtensors = weights
            .iter()
            .map(|(n, t)| {
                let ty = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
                Ok((n.as_str(), QTensor::quantize(t, ty)?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(n, t)| (*n, t)).collect();
        gguf_file::write(&mut std::fs::File::create(path)?, &metadata, &refs)?;
        Ok(())
    };
    let dir = tempfile::tempdir()?;
    let run = |model: &Model| -> Result<Tensor> {
        let ids = Tensor::new(&[[1u32, 5, 9, 33, 2, 60]], &device)?;
        let inputs = Inputs::from_attention_mask(&ids, &[vec![1; 6]])?;
        Ok(model.transformer.forward(&inputs, None, None)?)
    };
    write(&dir.path().join("f32.gguf"), GgmlDType::F32)?;
    let reference = run(&Model::load(&dir.path().join("f32.gguf"), &device)?)?;
    let scale = reference.abs()?.max_all()?.to_scalar::<f32>()?;
    // Relative drift from the F32 model, about twice what each type showed.
    for (dtype, tolerance) in [
        (GgmlDType::Q8_0, 0.03),
        (GgmlDType::Q6K, 0.07),
        (GgmlDType::Q5K, 0.18),
        (GgmlDType::Q4K, 0.22),
        (GgmlDType::Q3K, 0.35),
        (GgmlDType::Q2K, 0.5),
    ] {
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        write(&path, dtype)?;
        let logits = run(&Model::load(&path, &device)?)?;
        let rel = ((logits - &reference)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?)
            / scale;
        eprintln!("{dtype:?}: relative drift {rel}");
        assert!(
            rel < tolerance,
            "{dtype:?}: logits drift {rel} (relative) from F32"
        );
    }
    Ok(())
}
