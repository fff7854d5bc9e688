//! The cached paths of the Gemma 3 and Qwen3 blocks against the whole sequence without a cache
//! (whose logits equal transformers', `parity_tiny.rs`): a prompt prefilled in chunks, one
//! token at a time on a shared cache, and per-row decoding over caches of different lengths.
//! tiny-gemma3's window is 4 keys and the sequences reach 12, so the sliding-window layers'
//! masks on every path are exercised past the window.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use ft_model::{Cache, Inputs, Model, RowAdapters};

fn model(name: &str) -> Result<Model> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .join("model");
    Ok(Model::load(&dir, &Device::Cpu)?)
}

fn max_abs_diff(x: &Tensor, y: &Tensor) -> Result<f32> {
    Ok((x - y)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

/// `(seq, vocab)` logits of `tokens` alone, no cache.
fn whole(model: &Model, tokens: &[u32]) -> Result<Tensor> {
    let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
    let inputs = Inputs::from_attention_mask(&input, &[vec![1; tokens.len()]])?;
    Ok(model.transformer.forward(&inputs, None, None)?.squeeze(0)?)
}

/// Feeds `chunk` (starting at position `past`) through `cache`: `(chunk, vocab)` logits.
fn step(model: &Model, cache: &mut Cache, chunk: &[u32], past: usize) -> Result<Tensor> {
    let tokens = Tensor::new(chunk, &Device::Cpu)?.unsqueeze(0)?;
    let end = (past + chunk.len()) as u32;
    let positions = Tensor::arange(past as u32, end, &Device::Cpu)?.unsqueeze(0)?;
    let inputs = Inputs {
        tokens,
        positions,
        key_mask: vec![vec![1; past + chunk.len()]],
        segments: None,
    };
    Ok(model
        .transformer
        .forward(&inputs, Some(cache), None)?
        .squeeze(0)?)
}

const TOKENS: [u32; 12] = [5, 17, 3, 99, 42, 8, 64, 1, 77, 23, 11, 120];

fn assert_chunks_and_steps_match_whole(name: &str) -> Result<()> {
    let model = model(name)?;
    let reference = whole(&model, &TOKENS)?;
    let mut cache = model.transformer.new_cache();
    // Chunks of 3 then 4 (past > 0 with several queries), then one token at a time.
    let mut past = 0;
    for len in [3, 4, 1, 1, 1, 1, 1] {
        let logits = step(&model, &mut cache, &TOKENS[past..past + len], past)?;
        let expected = reference.narrow(0, past, len)?;
        let diff = max_abs_diff(&logits, &expected)?;
        assert!(
            diff < 1e-4,
            "{name}: tokens {past}..{}: max |Δlogit| {diff}",
            past + len
        );
        past += len;
    }
    assert_eq!(past, TOKENS.len());
    Ok(())
}

#[test]
fn gemma3_cached_chunks_and_steps_match_the_whole_sequence() -> Result<()> {
    assert_chunks_and_steps_match_whole("tiny-gemma3")
}

#[test]
fn qwen3_cached_chunks_and_steps_match_the_whole_sequence() -> Result<()> {
    assert_chunks_and_steps_match_whole("tiny-qwen3")
}

#[test]
fn gemma3_without_its_window_gives_other_logits() -> Result<()> {
    // The same weights with a window wider than the sequence: the late logits move, so the
    // comparisons here and transformers' parity would catch a window that is not applied.
    let source =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-gemma3/model");
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(&source)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
    }
    let config = std::fs::read_to_string(source.join("config.json"))?;
    let widened = config.replace("\"sliding_window\": 4", "\"sliding_window\": 64");
    assert_ne!(config, widened);
    std::fs::write(dir.path().join("config.json"), widened)?;
    let wide = Model::load(dir.path(), &Device::Cpu)?;
    let last = |logits: Tensor| logits.get(TOKENS.len() - 1);
    let diff = max_abs_diff(
        &last(whole(&model("tiny-gemma3")?, &TOKENS)?)?,
        &last(whole(&wide, &TOKENS)?)?,
    )?;
    assert!(
        diff > 1e-3,
        "the window has no effect on the last logits ({diff})"
    );
    Ok(())
}

#[test]
fn gemma3_per_row_decoding_matches_each_sequence_alone() -> Result<()> {
    let model = model("tiny-gemma3")?;
    let transformer = &model.transformer;
    let lengths = [2usize, 6, 1];
    let mut caches: Vec<Cache> = Vec::new();
    for &len in &lengths {
        let mut cache = transformer.new_cache();
        step(&model, &mut cache, &TOKENS[..len], 0)?;
        caches.push(cache);
    }
    let no_adapters = RowAdapters::new(&[None, None, None], &Device::Cpu)?;
    let mut fed = lengths;
    // Until the longest reaches the end; the others go past the window too.
    for _ in 0..TOKENS.len() - 6 {
        let next: Vec<u32> = fed.iter().map(|&n| TOKENS[n]).collect();
        let positions: Vec<u32> = fed.iter().map(|&n| n as u32).collect();
        let logits = {
            let mut refs: Vec<&mut Cache> = caches.iter_mut().collect();
            transformer.decode_rows(&next, &positions, &mut refs, &no_adapters)?
        };
        for (row, n) in fed.iter_mut().enumerate() {
            let alone = whole(&model, &TOKENS[..=*n])?.get(*n)?;
            let diff = max_abs_diff(&logits.get(row)?, &alone)?;
            assert!(
                diff < 1e-4,
                "row {row} at length {}: max |Δlogit| {diff}",
                *n + 1
            );
            *n += 1;
        }
    }
    Ok(())
}
