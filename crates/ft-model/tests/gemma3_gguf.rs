//! The real Gemma 3 270M GGUF (Q4_K_M) against transformers' GGUF loader (fixtures by
//! `scripts/reference/make_gemma3_fixtures.py`, transformers 5.24.0): token ids of the parity
//! texts, the chat template's prompt ids, per-text mean NLL on the exact path, and greedy
//! 24-token answers to three chat prompts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use ft_data::{Message, Tokenizer};
use ft_model::generate::{generate, token_nll, GenerateParams};
use ft_model::Model;
use serde::Deserialize;

/// Mean NLL per text must be within this of transformers'.
const NLL_MEAN_ABS_TOL: f32 = 1e-3;

fn read_json<T: for<'de> Deserialize<'de>>(name: &str) -> Result<T> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/gemma3")
        .join(name);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

fn gemma3() -> Option<PathBuf> {
    ft_core::testing::gemma3_gguf()
}

#[derive(Deserialize)]
struct TokenCase {
    name: String,
    text: String,
    ids: Vec<u32>,
    ids_with_special: Vec<u32>,
    decoded: String,
}

#[derive(Deserialize)]
struct NllCase {
    name: String,
    ids: Vec<u32>,
    nll_mean: f32,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct GenerateCase {
    messages: Vec<ChatMessage>,
    prompt_text: String,
    prompt_ids: Vec<u32>,
    new_ids: Vec<u32>,
    max_new_tokens: usize,
}

#[test]
fn token_ids_and_chat_prompts_equal_transformers() -> Result<()> {
    let Some(path) = gemma3() else {
        return Ok(());
    };
    let tokenizer = Tokenizer::load(&path)?;
    let cases: Vec<TokenCase> = read_json("tokens.json")?;
    assert!(cases.len() >= 9);
    for case in &cases {
        assert_eq!(
            tokenizer.encode(&case.text, false)?,
            case.ids,
            "{}",
            case.name
        );
        assert_eq!(
            tokenizer.encode(&case.text, true)?,
            case.ids_with_special,
            "{} with BOS",
            case.name
        );
        assert_eq!(
            tokenizer.decode(&case.ids, false)?,
            case.decoded,
            "{}",
            case.name
        );
    }
    let template = tokenizer.chat_template()?;
    for case in read_json::<Vec<GenerateCase>>("generate.json")? {
        let messages: Vec<Message> = case
            .messages
            .iter()
            .map(|m| Message::new(&m.role, &m.content))
            .collect();
        let text = template.render(&messages, true)?;
        assert_eq!(text, case.prompt_text);
        assert_eq!(tokenizer.encode(&text, false)?, case.prompt_ids);
    }
    Ok(())
}

#[test]
fn per_text_nll_and_greedy_answers_equal_transformers() -> Result<()> {
    let Some(path) = gemma3() else {
        return Ok(());
    };
    let model = Model::load(&path, &Device::Cpu)?;
    let cases: Vec<NllCase> = read_json("nll.json")?;
    assert!(cases.len() >= 6);
    for case in cases {
        let nll = token_nll(&model.transformer, &case.ids, None)?;
        let mean = nll.iter().sum::<f32>() / nll.len() as f32;
        assert!(
            (mean - case.nll_mean).abs() < NLL_MEAN_ABS_TOL,
            "{}: mean NLL {mean} vs transformers {}",
            case.name,
            case.nll_mean
        );
    }
    let tokenizer = Tokenizer::load(&path)?;
    let cases: Vec<GenerateCase> = read_json("generate.json")?;
    assert_eq!(cases.len(), 3);
    let params = GenerateParams {
        max_new_tokens: cases[0].max_new_tokens,
        stop_ids: tokenizer.eos_ids().to_vec(),
        sampling: Default::default(),
    };
    for case in &cases {
        let out = generate(
            &model.transformer,
            std::slice::from_ref(&case.prompt_ids),
            &params,
            None,
        )?;
        assert_eq!(out[0], case.new_ids, "{}", case.prompt_text);
    }
    Ok(())
}
