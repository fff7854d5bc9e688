//! `ft data prepare` on a fixture with known problems, against the independent Python reference
//! (`scripts/reference/prepare_reference.py` → `tests/fixtures/prepare/expected.json`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use ft_data::prepare::{clean_dataset, prepare, PrepareOptions};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/prepare")
        .join(name)
}

fn expected() -> Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(fixture(
        "expected.json",
    ))?)?)
}

#[test]
fn counts_and_kept_examples_equal_the_reference() -> Result<()> {
    let expected = expected()?;
    let (kept, report) = clean_dataset(&fixture("raw.jsonl"), &PrepareOptions::default())?;
    let got = serde_json::to_value(&report)?;
    for key in [
        "lines",
        "invalid",
        "invalid_lines",
        "pii_email",
        "pii_phone",
        "too_short",
        "too_long",
        "duplicate",
        "kept",
    ] {
        assert_eq!(got[key], expected[key], "{key}");
    }
    let kept: Vec<Value> = kept.into_iter().map(|e| e.value).collect();
    let want = expected["kept_examples"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(kept.len(), want.len());
    for (i, (ours, theirs)) in kept.iter().zip(&want).enumerate() {
        assert_eq!(ours, theirs, "kept example {i}");
    }
    Ok(())
}

fn read_split(dir: &Path) -> Result<Vec<Vec<String>>> {
    ["train", "validation", "test"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(format!("{name}.jsonl")))?;
            Ok(text.lines().map(str::to_string).collect())
        })
        .collect()
}

#[test]
fn split_sizes_are_right_and_reproducible_from_the_seed() -> Result<()> {
    let expected = expected()?;
    let root = tempfile::tempdir()?;
    let options = PrepareOptions::default();
    let report = prepare(&fixture("raw.jsonl"), &root.path().join("a"), &options)?;
    assert_eq!(
        [report.train, report.validation, report.test],
        ["train", "validation", "test"].map(|k| expected[k].as_u64().unwrap_or(0) as usize)
    );
    let a = read_split(&root.path().join("a"))?;
    assert_eq!(
        a.iter().map(Vec::len).collect::<Vec<_>>(),
        [report.train, report.validation, report.test]
    );
    let report_json: Value =
        serde_json::from_str(&std::fs::read_to_string(root.path().join("a/report.json"))?)?;
    assert_eq!(report_json["duplicate"], expected["duplicate"]);

    prepare(&fixture("raw.jsonl"), &root.path().join("b"), &options)?;
    assert_eq!(
        a,
        read_split(&root.path().join("b"))?,
        "same seed, same split"
    );
    prepare(
        &fixture("raw.jsonl"),
        &root.path().join("c"),
        &PrepareOptions {
            seed: 7,
            ..options.clone()
        },
    )?;
    let c = read_split(&root.path().join("c"))?;
    assert_ne!(a, c, "another seed, another split");
    let mut all_a: Vec<&String> = a.iter().flatten().collect();
    let mut all_c: Vec<&String> = c.iter().flatten().collect();
    all_a.sort();
    all_c.sort();
    assert_eq!(
        all_a, all_c,
        "the same examples, only distributed differently"
    );

    let err = prepare(&fixture("raw.jsonl"), &root.path().join("a"), &options)
        .expect_err("non-empty --out is refused");
    assert!(err.to_string().contains("not empty"), "{err}");
    Ok(())
}
