//! `ft export`: an adapter merged into its base as an HF directory, or the adapter alone.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::quantized::GgmlDType;
use ft::model::adapter_io::LoadOptions;
use ft::model::export::{
    hf_config_json, merged_weights, safetensors_bytes, write_directory_atomically,
};
use ft::model::export_gguf::{export_gguf_lora, export_merged_gguf};
use ft::model::text::TextModel;
use ft::model::ModelOptions;

/// Arguments of `ft export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base: a GGUF file, an HF directory, or a Hub id [default: models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long)]
    model: Option<String>,
    /// The PEFT-format adapter directory to export.
    #[arg(long)]
    adapter: PathBuf,
    /// Export the adapter even if it was trained on another base model.
    #[arg(long)]
    allow_base_mismatch: bool,
    /// The directory to write (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// hf: the merged model as an HF directory (config.json, tokenizer, model.safetensors in
    /// f32); gguf: the base GGUF with the adapter merged (one file for llama.cpp / Ollama);
    /// gguf-lora: the adapter alone as a llama.cpp LoRA (`llama-cli -m BASE --lora OUT`);
    /// peft: the adapter directory as it is.
    #[arg(long, default_value = "hf")]
    format: String,
    /// With --format gguf: the block type of the merged weights (q8_0, q4_0, f16 or f32);
    /// every other tensor keeps the base's.
    #[arg(long, default_value = "q8_0")]
    quantize: String,
}

/// Runs `ft export`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !matches!(args.format.as_str(), "hf" | "peft" | "gguf" | "gguf-lora") {
        bail!(
            "--format {}: not supported (supported: hf, gguf, gguf-lora, peft)",
            args.format
        );
    }
    let merged_type = match args.quantize.as_str() {
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "f16" => GgmlDType::F16,
        "f32" => GgmlDType::F32,
        other => bail!("--quantize {other}: not supported (supported: q8_0, q4_0, f16, f32)"),
    };
    if args.out.exists() {
        bail!(
            "{}: already exists; choose a new output path",
            args.out.display()
        );
    }
    let path = ft::hub::resolve_model(args.model.as_deref())?;
    let cpu = candle_core::Device::Cpu;
    let base = TextModel::load_with(&path, &cpu, &ModelOptions::default())?;
    let options = LoadOptions {
        allow_base_mismatch: args.allow_base_mismatch,
    };
    let adapter = base
        .model
        .load_adapter(&args.adapter, &options)
        .with_context(|| format!("loading adapter {}", args.adapter.display()))?;
    if args.format.starts_with("gguf") {
        if !path.is_file() {
            bail!(
                "--format {} needs a GGUF base (--model {} is an HF directory); use --format hf",
                args.format,
                path.display()
            );
        }
        if args.format == "gguf" {
            export_merged_gguf(&path, &adapter, merged_type, &args.out)?;
        } else {
            export_gguf_lora(&path, &adapter, &args.out)?;
        }
        eprintln!("wrote {} ({})", args.out.display(), args.format);
        return Ok(());
    }
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if args.format == "peft" {
        for entry in std::fs::read_dir(&args.adapter)
            .with_context(|| format!("reading {}", args.adapter.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                files.push((name, std::fs::read(entry.path())?));
            }
        }
    } else {
        let (config, tensors) = merged_weights(&path, &adapter)?;
        drop(base.model);
        let tokenizer = &base.tokenizer;
        let eos_ids = tokenizer.eos_ids().to_vec();
        let bos_id = tokenizer.bos_id();
        let config_json = hf_config_json(&config, bos_id, &eos_ids);
        files.push((
            "config.json".into(),
            serde_json::to_vec_pretty(&config_json)?,
        ));
        let generation = serde_json::json!({ "bos_token_id": bos_id, "eos_token_id": eos_ids });
        files.push((
            "generation_config.json".into(),
            serde_json::to_vec_pretty(&generation)?,
        ));
        files.extend(tokenizer.hf_files()?);
        files.push((
            "model.safetensors".into(),
            safetensors_bytes(&tensors, &args.out)?,
        ));
    }
    write_directory_atomically(&args.out, &files)?;
    eprintln!("wrote {} ({})", args.out.display(), args.format);
    Ok(())
}
