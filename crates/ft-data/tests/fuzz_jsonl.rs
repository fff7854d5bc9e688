//! Fuzz targets for the JSONL reader and validator, as bounded property tests (proptest) in
//! the normal suite: arbitrary bytes and arbitrary conversations must never panic, every
//! refusal must say why, and the linear mask path must agree with the definition on every
//! template family we ship fixtures for. What they found is kept as plain regression cases at
//! the bottom.

use std::io::Write;
use std::path::Path;

use ft_data::format::parse_line;
use ft_data::mask::{assistant_spans, spans_by_markers, spans_by_prefix};
use ft_data::{read_dataset, ChatTemplate, ExampleTokenizer, Message, ReadOptions, Tokenizer};
use proptest::prelude::*;

/// Cases per property: enough to find shallow bugs, cheap enough for every `cargo test`.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The fixture templates (Jinja sources of five families) with their BOS/EOS strings.
fn templates() -> Vec<(String, ChatTemplate)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/masks");
    ["smollm2", "llama3", "mistral", "gemma", "qwen2"]
        .iter()
        .map(|family| {
            let fixture: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join(format!("{family}.json"))).expect("fixture"),
            )
            .expect("fixture JSON");
            let file = fixture["template_file"].as_str().expect("template_file");
            let source = std::fs::read_to_string(dir.join(file)).expect("template");
            let token = |key: &str| fixture[key].as_str().unwrap_or("").to_string();
            let template = ChatTemplate::new(&source, &token("bos_token"), &token("eos_token"))
                .expect("template compiles");
            (family.to_string(), template)
        })
        .collect()
}

/// Message text with the characters that break naive code: whitespace at the ends, quotes,
/// braces, Jinja syntax, template tokens, multi-byte characters and our own marker code points.
fn content() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just(" ".to_string()),
            Just("\n".to_string()),
            Just("\"".to_string()),
            Just("{{ x }}".to_string()),
            Just("<|im_end|>".to_string()),
            Just("é".to_string()),
            Just("🙂".to_string()),
            Just("\u{E000}".to_string()),
            "[a-z]{1,6}",
        ],
        1..8,
    )
    .prop_map(|parts| parts.concat())
    .prop_filter("non-empty after trim", |s| !s.trim().is_empty())
}

/// An alternating conversation (optionally with a system prompt) and its trained turns.
fn conversation() -> impl Strategy<Value = (Vec<Message>, Vec<usize>)> {
    (
        any::<bool>(),
        prop::collection::vec((content(), content()), 1..6),
    )
        .prop_map(|(system, pairs)| {
            let mut messages = Vec::new();
            if system {
                messages.push(Message::new("system", "Be brief."));
            }
            for (question, answer) in pairs {
                messages.push(Message::new("user", question));
                messages.push(Message::new("assistant", answer));
            }
            let trained = (0..messages.len())
                .filter(|&i| messages[i].role == "assistant")
                .collect();
            (messages, trained)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_line_parses_or_is_refused_with_reasons(line in "\\PC{0,200}") {
        if let Err(errors) = parse_line(&line, None) {
            prop_assert!(!errors.is_empty());
            prop_assert!(errors.iter().all(|e| !e.is_empty()));
        }
    }

    #[test]
    fn any_json_shaped_line_parses_or_is_refused_with_reasons(
        role in prop_oneof![Just("user"), Just("assistant"), Just("system"), Just("bot"), Just("")],
        text in content(),
        weight in prop_oneof![Just("0"), Just("1"), Just("2"), Just("null"), Just("\"1\""), Just("-0.5")],
        shape in 0..6usize,
    ) {
        let text = serde_json::to_string(&text).unwrap_or_default();
        let line = match shape {
            0 => format!(r#"{{"messages": [{{"role": "user", "content": {text}}}, {{"role": "{role}", "content": {text}, "weight": {weight}}}]}}"#),
            1 => format!(r#"{{"prompt": {text}, "completion": {text}}}"#),
            2 => format!(r#"{{"prompt": [{{"role": "{role}", "content": {text}}}], "completion": [{{"role": "assistant", "content": {text}, "weight": {weight}}}]}}"#),
            3 => format!(r#"{{"text": {text}}}"#),
            4 => format!(r#"{{"messages": {text}}}"#),
            _ => format!(r#"{{"messages": [{{"role": "{role}"}}, {weight}]}}"#),
        };
        if let Err(errors) = parse_line(&line, None) {
            prop_assert!(!errors.is_empty());
        }
    }

    #[test]
    fn linear_masks_equal_the_definition((messages, trained) in conversation()) {
        for (family, template) in templates() {
            let full = template.render(&messages, false);
            // Some templates refuse some conversations (raise_exception): that is not a mask bug.
            let Ok(full) = full else { continue };
            let Ok(exact) = spans_by_prefix(&template, &messages, &trained, &full) else {
                continue;
            };
            if let Ok(Some(fast)) = spans_by_markers(&template, &messages, &trained, &full) {
                prop_assert_eq!(&fast, &exact, "{}", family);
            }
            let (_, auto) = assistant_spans(&template, &messages, &trained).expect("spans");
            prop_assert_eq!(&auto, &exact, "{}", family);
        }
    }
}

/// Random bytes through the whole reader with the real tokenizer (when the model is here):
/// every line is counted once, as valid or invalid, and nothing panics.
#[test]
fn arbitrary_bytes_through_the_reader() {
    let Some(path) = ft_core::testing::default_gguf() else {
        return;
    };
    let tokenizer = Tokenizer::load(&path).expect("tokenizer");
    let examples = ExampleTokenizer::new(&tokenizer, false);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let lines = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..40);
    runner
        .run(&lines, |lines| {
            let mut file = tempfile::NamedTempFile::new().expect("temp file");
            let mut non_empty = 0;
            for line in &lines {
                let line: Vec<u8> = line.iter().copied().filter(|b| *b != b'\n').collect();
                if !line.iter().all(u8::is_ascii_whitespace) {
                    non_empty += 1;
                }
                file.write_all(&line).expect("write");
                file.write_all(b"\n").expect("write");
            }
            let (valid, report) =
                read_dataset(file.path(), &examples, &ReadOptions::default()).expect("read");
            prop_assert_eq!(report.lines, non_empty);
            prop_assert_eq!(report.examples + report.invalid_lines, report.lines);
            prop_assert_eq!(valid.len(), report.examples);
            Ok(())
        })
        .expect("the reader never panics and counts every line");
}
