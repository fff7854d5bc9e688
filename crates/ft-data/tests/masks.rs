//! Assistant-only label masks for five template families (SmolLM2 ChatML, Llama 3.1, Mistral
//! Nemo, Gemma 2, Qwen2.5), against transformers' `return_assistant_tokens_mask` on
//! `{% generation %}`-tagged copies of the official templates (fixtures by
//! `scripts/reference/make_mask_fixtures.py`, transformers 5.24.0). All use SmolLM2's tokenizer.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ft_data::format::{parse_line, Example};
use ft_data::mask;
use ft_data::{ChatTemplate, ExampleTokenizer, Tokenizer};
use serde::Deserialize;

/// The default GGUF (its tokenizer), or `None` outside CI when it has not been fetched.
fn smollm2() -> Option<PathBuf> {
    ft_core::testing::default_gguf()
}

#[derive(Deserialize)]
struct Family {
    family: String,
    template_file: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    conversations: Vec<Conversation>,
}

#[derive(Deserialize)]
struct Conversation {
    name: String,
    messages: Vec<serde_json::Value>,
    text: String,
    input_ids: Vec<u32>,
    assistant_mask: Vec<u8>,
    prefix_checks: Vec<PrefixCheck>,
}

#[derive(Deserialize)]
struct PrefixCheck {
    is_prefix: bool,
}

/// The messages of a chat example and the indices of its trained turns.
fn turns(example: &Example) -> (Vec<ft_data::Message>, Vec<usize>) {
    let Example::Chat(messages) = example else {
        return (Vec::new(), Vec::new());
    };
    let all = messages.iter().map(|m| m.message.clone()).collect();
    let trained = (0..messages.len()).filter(|&i| messages[i].train).collect();
    (all, trained)
}

#[test]
fn labels_are_exactly_the_assistant_tokens_for_five_template_families() -> Result<()> {
    let Some(model) = smollm2() else {
        return Ok(());
    };
    let tokenizer = Tokenizer::load(&model)?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/masks");
    let mut checked = 0;
    let mut linear = 0;
    for family in ["smollm2", "llama3", "mistral", "gemma", "qwen2"] {
        let path = dir.join(format!("{family}.json"));
        let fixture: Family = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| path.display().to_string())?;
        let source = std::fs::read_to_string(dir.join(&fixture.template_file))?;
        let template = ChatTemplate::new(
            &source,
            fixture.bos_token.as_deref().unwrap_or(""),
            fixture.eos_token.as_deref().unwrap_or(""),
        )?;
        let template_again = ChatTemplate::new(
            &source,
            fixture.bos_token.as_deref().unwrap_or(""),
            fixture.eos_token.as_deref().unwrap_or(""),
        )?;
        let examples = ExampleTokenizer::new(&tokenizer, false).with_template(template_again);
        for conversation in &fixture.conversations {
            let what = format!("{}/{}", fixture.family, conversation.name);
            let line = serde_json::json!({ "messages": conversation.messages }).to_string();
            let example = parse_line(&line, None).map_err(|e| anyhow::anyhow!("{what}: {e:?}"))?;
            let messages: Vec<ft_data::Message> = conversation
                .messages
                .iter()
                .map(|m| serde_json::from_value(m.clone()))
                .collect::<Result<_, _>>()?;
            assert_eq!(
                template.render(&messages, false)?,
                conversation.text,
                "{what}: rendering"
            );
            let result = examples.tokenize(&example);
            if conversation.prefix_checks.iter().all(|c| c.is_prefix) {
                let tokenized = result.with_context(|| what.clone())?;
                assert_eq!(tokenized.input_ids, conversation.input_ids, "{what}: ids");
                let expected: Vec<bool> = conversation
                    .assistant_mask
                    .iter()
                    .map(|&m| m == 1)
                    .collect();
                assert_eq!(tokenized.labels, expected, "{what}: labels");
                checked += 1;
                // The linear path (used for long conversations) must give the same spans.
                let (all, trained) = turns(&example);
                let full = template.render(&all, false)?;
                let exact = mask::spans_by_prefix(&template, &all, &trained, &full)?;
                if let Some(fast) = mask::spans_by_markers(&template, &all, &trained, &full)? {
                    assert_eq!(fast, exact, "{what}: linear spans");
                    linear += 1;
                }
            } else {
                // Mistral Nemo drops the system prompt unless the last message is the user's,
                // so a turn cannot be located by prefix; that must be a clear error, not a
                // silently wrong mask.
                let err = result.expect_err("a template that rewrites earlier turns is refused");
                assert!(
                    err.to_string().contains("cannot locate assistant message"),
                    "{what}: {err}"
                );
            }
        }
    }
    assert!(checked >= 14, "only {checked} conversations were checked");
    assert_eq!(
        linear, checked,
        "the linear path gave up on some fixture conversations"
    );
    Ok(())
}
