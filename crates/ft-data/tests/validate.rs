//! Dataset validation: one error per bad line with its line number, a clean file passes, and
//! no corruption of a line can panic the reader.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use ft_data::{read_dataset, ExampleTokenizer, ReadOptions, Tokenizer};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default GGUF (its tokenizer), or `None` outside CI when it has not been fetched.
fn smollm2() -> Option<Tokenizer> {
    let path = ft_core::testing::default_gguf()?;
    Some(Tokenizer::load(&path).expect("the default tokenizer loads"))
}

const CHAT: &str = r#"{"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}]}"#;

#[test]
fn one_error_per_bad_line_with_its_number() -> Result<()> {
    let Some(tokenizer) = smollm2() else {
        return Ok(());
    };
    let long = format!(r#"{{"text": "{}"}}"#, "word ".repeat(200));
    let lines: Vec<Vec<u8>> = vec![
        CHAT.into(),                                                                        // 1 ok
        b"{\"messages\": [".to_vec(),                                                       // 2 invalid JSON
        br#"{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}"#.to_vec(), // 3 unknown role
        br#"{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]}"#.to_vec(), // 4 empty content
        br#"{"prompt": "only a prompt"}"#.to_vec(),                                          // 5 missing field
        br#"{"messages": [{"role": "user", "content": "anyone?"}]}"#.to_vec(),               // 6 no assistant turn
        br#"{"text": 42}"#.to_vec(),                                                         // 7 wrong type
        long.into_bytes(),                                                                   // 8 over-long
        br#"{"text": "Plain text is fine."}"#.to_vec(),                                      // 9 ok
        Vec::new(),                                                                          // 10 empty: skipped
        br#"{"prompt": "2 + 2 =", "completion": " 4"}"#.to_vec(),                            // 11 ok
        b"[1, 2, 3]".to_vec(),                                                               // 12 not an object
        b"{\"text\": \"caf\xe9\"}".to_vec(),                                                 // 13 not UTF-8
    ];
    let mut file = tempfile::NamedTempFile::new()?;
    for line in &lines {
        file.write_all(line)?;
        file.write_all(b"\n")?;
    }
    let options = ReadOptions {
        max_seq_len: 64,
        ..ReadOptions::default()
    };
    let (examples, report) = read_dataset(
        file.path(),
        &ExampleTokenizer::new(&tokenizer, false),
        &options,
    )?;
    let error_lines: Vec<usize> = report.errors.iter().map(|e| e.line).collect();
    assert_eq!(error_lines, [2, 3, 4, 5, 6, 7, 8, 12, 13], "{report}");
    let message = |line: usize| {
        report
            .errors
            .iter()
            .find(|e| e.line == line)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    assert!(message(2).starts_with("invalid JSON"));
    assert_eq!(
        message(3),
        "messages[0].role is \"bot\"; use system, user or assistant"
    );
    assert_eq!(message(4), "messages[0].content is empty");
    assert_eq!(message(5), "missing field `completion`");
    assert_eq!(message(6), "messages has no assistant message");
    assert_eq!(message(7), "text must be a string, got a number");
    assert!(
        message(8).contains("max_seq_len is 64") && message(8).contains("would be truncated"),
        "{}",
        message(8)
    );
    assert_eq!(message(12), "expected a JSON object");
    assert!(message(13).starts_with("not valid UTF-8"));
    assert_eq!((report.lines, report.examples, examples.len()), (12, 3, 3));
    assert!(report
        .to_string()
        .contains(&format!("{}:3: messages[0].role", file.path().display())));
    Ok(())
}

#[test]
fn the_shipped_support_dataset_is_clean() -> Result<()> {
    let Some(tokenizer) = smollm2() else {
        return Ok(());
    };
    for (split, count) in [("train", 240), ("validation", 30), ("test", 30)] {
        let path = repo().join(format!("datasets/support/{split}.jsonl"));
        let (examples, report) = read_dataset(
            &path,
            &ExampleTokenizer::new(&tokenizer, false),
            &ReadOptions::default(),
        )?;
        assert!(!report.has_errors(), "{report}");
        assert_eq!(examples.len(), count);
        assert!(examples.iter().all(|e| e.num_labels() > 0));
    }
    Ok(())
}

#[test]
fn ten_thousand_corrupted_lines_never_panic() -> Result<()> {
    let Some(tokenizer) = smollm2() else {
        return Ok(());
    };
    let seeds = [
        CHAT.to_string(),
        r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Yo", "weight": 1}]}"#.to_string(),
        r#"{"prompt": "Q: 2+2?", "completion": " A: 4"}"#.to_string(),
        r#"{"text": "Some plain text with ünïcode and 123 numbers."}"#.to_string(),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    let mut file = tempfile::NamedTempFile::new()?;
    let mut written = 0;
    while written < 10_000 {
        let mut line = seeds[rng.random_range(0..seeds.len())].clone().into_bytes();
        for _ in 0..rng.random_range(1..4) {
            match rng.random_range(0..5) {
                0 if !line.is_empty() => {
                    let i = rng.random_range(0..line.len());
                    line[i] = rng.random();
                }
                1 if !line.is_empty() => line.truncate(rng.random_range(0..line.len())),
                2 => {
                    let i = rng.random_range(0..=line.len());
                    let junk = [
                        b"\"".as_slice(),
                        b"{",
                        b"}",
                        b"[",
                        b"]",
                        b":",
                        b",",
                        b"null",
                        b"\\u0000",
                        b"1e999",
                    ];
                    let piece = junk[rng.random_range(0..junk.len())];
                    line.splice(i..i, piece.iter().copied());
                }
                3 => {
                    let text = String::from_utf8_lossy(&line)
                        .replace("\"content\"", "\"contents\"")
                        .replace("user", "robot");
                    line = text.into_bytes();
                }
                _ => {}
            }
        }
        line.retain(|b| *b != b'\n');
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        file.write_all(&line)?;
        file.write_all(b"\n")?;
        written += 1;
    }
    let (examples, report) = read_dataset(
        file.path(),
        &ExampleTokenizer::new(&tokenizer, false),
        &ReadOptions::default(),
    )?;
    assert_eq!(report.lines, 10_000);
    assert_eq!(report.examples + report.invalid_lines, 10_000);
    assert_eq!(examples.len(), report.examples);
    assert!(
        report.invalid_lines > 1000,
        "the corruptions should break many lines"
    );
    Ok(())
}

#[test]
fn a_ten_thousand_turn_line_validates() -> Result<()> {
    // Rendering the template once per prefix made this line take minutes; it must now be
    // linear. No timing here (that is scripts/bench/validate-scaling.sh): it just has to end.
    let Some(tokenizer) = smollm2() else {
        return Ok(());
    };
    let turns = 10_000;
    let messages: Vec<serde_json::Value> = (0..turns)
        .flat_map(|i| {
            [
                serde_json::json!({"role": "user", "content": format!("What is {i} plus {i}?")}),
                serde_json::json!({"role": "assistant", "content": format!("It is {}.", 2 * i)}),
            ]
        })
        .collect();
    let mut file = tempfile::NamedTempFile::new()?;
    writeln!(file, "{}", serde_json::json!({ "messages": messages }))?;
    let options = ReadOptions {
        max_seq_len: 10_000_000,
        ..ReadOptions::default()
    };
    let (examples, report) = read_dataset(
        file.path(),
        &ExampleTokenizer::new(&tokenizer, false),
        &options,
    )?;
    assert!(!report.has_errors(), "{report}");
    // Each answer: "It", " is", digits, ".", "<|im_end|>" are labels.
    assert!(
        examples[0].num_labels() > 4 * turns,
        "{}",
        examples[0].num_labels()
    );
    Ok(())
}
