//! The SmolLM2 GGUF tokenizer and chat template against transformers (fixtures by
//! `scripts/reference/make_smollm2_fixtures.py`, transformers 5.24.0 / tokenizers 0.23.3).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ft_data::{Message, Tokenizer};
use serde::Deserialize;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default GGUF, or `None` outside CI when it has not been fetched. Under `CI=true` a
/// missing model fails the test instead of skipping it.
fn smollm2() -> Option<PathBuf> {
    ft_core::testing::default_gguf()
}

#[derive(Deserialize)]
struct TokenCase {
    name: String,
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

#[derive(Deserialize)]
struct GenerateCase {
    messages: Vec<Message>,
    prompt_text: String,
    prompt_ids: Vec<u32>,
}

fn read_json<T: for<'de> Deserialize<'de>>(name: &str) -> Result<T> {
    let path = repo().join("tests/fixtures/smollm2").join(name);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

#[test]
fn token_ids_equal_transformers() -> Result<()> {
    let Some(model) = smollm2() else {
        return Ok(());
    };
    let tokenizer = Tokenizer::load(&model)?;
    let cases: Vec<TokenCase> = read_json("tokens.json")?;
    assert!(cases.len() >= 6);
    for case in cases {
        let ids = tokenizer.encode(&case.text, false)?;
        assert_eq!(ids, case.ids, "{}: {:?}", case.name, case.text);
        assert_eq!(
            tokenizer.decode(&ids, false)?,
            case.decoded,
            "{}",
            case.name
        );
    }
    Ok(())
}

#[test]
fn chat_template_renders_as_transformers() -> Result<()> {
    let Some(model) = smollm2() else {
        return Ok(());
    };
    let tokenizer = Tokenizer::load(&model)?;
    let template = tokenizer.chat_template()?;
    let cases: Vec<GenerateCase> = read_json("generate.json")?;
    for case in cases {
        let text = template.render(&case.messages, true)?;
        assert_eq!(text, case.prompt_text);
        assert_eq!(tokenizer.encode(&text, false)?, case.prompt_ids);
    }
    assert_eq!(tokenizer.eos_ids(), [2]);
    Ok(())
}

#[test]
fn unsupported_or_corrupt_gguf_is_a_clear_error() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("ft-data-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("garbage.gguf");
    std::fs::write(&bad, b"this is not a gguf file at all")?;
    let err = Tokenizer::load(&bad)
        .expect_err("garbage is refused")
        .to_string();
    assert!(
        err.contains("garbage.gguf") && err.contains("GGUF"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
