//! Serving paths against the plain ones on the tiny llama (its two fixture adapters):
//! a batch whose rows use different adapters ([`RowAdapters`]) gives each row the logits it
//! gets alone with its adapter, and per-row decoding over caches of different lengths
//! ([`Transformer::decode_rows`]) gives each sequence the logits of decoding it alone.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use candle_core::{Device, Tensor, D};
use ft_model::adapter_io::LoadOptions;
use ft_model::{Cache, Inputs, LoraAdapter, Model, RowAdapters};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-llama")
        .join(name)
}

fn load() -> Result<(Model, Arc<LoraAdapter>, Arc<LoraAdapter>)> {
    let model = Model::load(&fixture("model"), &Device::Cpu)?;
    let options = LoadOptions {
        allow_base_mismatch: true,
    };
    let a = Arc::new(model.load_adapter(&fixture("adapter"), &options)?);
    let b = Arc::new(model.load_adapter(&fixture("adapter-rslora"), &options)?);
    Ok((model, a, b))
}

fn max_abs_diff(x: &Tensor, y: &Tensor) -> Result<f32> {
    Ok((x - y)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

fn one_row(model: &Model, tokens: &[u32], adapter: Option<&LoraAdapter>) -> Result<Tensor> {
    let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
    let inputs = Inputs::from_attention_mask(&input, &[vec![1; tokens.len()]])?;
    Ok(model
        .transformer
        .forward(&inputs, None, adapter)?
        .squeeze(0)?)
}

#[test]
fn rows_with_different_adapters_match_each_row_alone() -> Result<()> {
    let (model, a, b) = load()?;
    let rows: [&[u32]; 4] = [
        &[1, 5, 9, 13, 2],
        &[3, 3, 7, 11, 4],
        &[8, 1, 2, 6, 10],
        &[12, 14, 1, 1, 5],
    ];
    let per_row = [Some(a.clone()), None, Some(b.clone()), Some(a.clone())];
    let tokens = Tensor::new(
        rows.iter()
            .flat_map(|r| r.iter().copied())
            .collect::<Vec<u32>>(),
        &Device::Cpu,
    )?
    .reshape((4, 5))?;
    let inputs = Inputs::from_attention_mask(&tokens, &vec![vec![1; 5]; 4])?;
    let adapters = RowAdapters::new(&per_row, &Device::Cpu)?;
    let mixed = model.transformer.forward(&inputs, None, &adapters)?;
    for (row, (tokens, adapter)) in rows.iter().zip(&per_row).enumerate() {
        let alone = one_row(&model, tokens, adapter.as_deref())?;
        let diff = max_abs_diff(&mixed.get(row)?, &alone)?;
        assert!(diff < 1e-5, "row {row}: max |Δlogit| {diff}");
    }
    // The adapters do change the logits, so the check above can tell rows apart.
    let base = one_row(&model, rows[0], None)?;
    assert!(max_abs_diff(&mixed.get(0)?, &base)? > 1e-3);
    assert!(
        max_abs_diff(
            &one_row(&model, rows[2], Some(&b))?,
            &one_row(&model, rows[2], Some(&a))?
        )? > 1e-3
    );
    Ok(())
}

#[test]
fn per_row_decoding_matches_decoding_each_sequence_alone() -> Result<()> {
    let (model, a, b) = load()?;
    let transformer = &model.transformer;
    let prompts: [&[u32]; 3] = [&[1, 5, 9], &[3, 3, 7, 11, 4, 6, 2], &[8]];
    let per_row = [Some(a.clone()), Some(b.clone()), None];
    // Prefill each sequence into its own cache (as the server does on admission).
    let mut caches: Vec<Cache> = Vec::new();
    let mut next: Vec<u32> = Vec::new();
    for (prompt, adapter) in prompts.iter().zip(&per_row) {
        let mut cache = transformer.new_cache();
        let input = Tensor::new(*prompt, &Device::Cpu)?.unsqueeze(0)?;
        let inputs = Inputs::from_attention_mask(&input, &[vec![1; prompt.len()]])?;
        let logits = transformer.forward(&inputs, Some(&mut cache), adapter.as_deref())?;
        next.push(
            logits
                .squeeze(0)?
                .get(prompt.len() - 1)?
                .argmax(D::Minus1)?
                .to_scalar::<u32>()?,
        );
        caches.push(cache);
    }
    let adapters = RowAdapters::new(&per_row, &Device::Cpu)?;
    let mut sequences: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    for _ in 0..6 {
        let positions: Vec<u32> = sequences.iter().map(|s| s.len() as u32).collect();
        let logits = {
            let mut refs: Vec<&mut Cache> = caches.iter_mut().collect();
            transformer.decode_rows(&next, &positions, &mut refs, &adapters)?
        };
        for (row, sequence) in sequences.iter_mut().enumerate() {
            sequence.push(next[row]);
            // The whole sequence alone, no cache: its last position must give the same logits.
            let alone = one_row(&model, sequence, per_row[row].as_deref())?;
            let alone = alone.get(sequence.len() - 1)?;
            let diff = max_abs_diff(&logits.get(row)?, &alone)?;
            assert!(
                diff < 1e-4,
                "row {row} at length {}: max |Δlogit| {diff}",
                sequence.len()
            );
            next[row] = logits.get(row)?.argmax(D::Minus1)?.to_scalar::<u32>()?;
        }
    }
    assert!(caches
        .iter()
        .zip(&sequences)
        .all(|(c, s)| c.len() == s.len()));
    Ok(())
}
