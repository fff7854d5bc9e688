//! Every metric against the reference libraries (SQuAD v1.1 script, rouge-score, sacreBLEU) on
//! the committed fixture `tests/fixtures/metrics/metrics.json`.

use ft_eval::text_metrics::{
    corpus_bleu, exact_match, normalize_answer, rouge_l, rouge_tokens, sentence_bleu, token_f1,
    tokenize_13a,
};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics/metrics.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture readable");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn every_case_matches_the_reference_libraries() {
    let fixture = fixture();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let pred = case["prediction"].as_str().unwrap();
        let gold = case["reference"].as_str().unwrap();
        let mut check = |what: &str, ok: bool, detail: String| {
            if !ok {
                failures.push(format!("{id}: {what}: {detail}"));
            }
        };
        let norm = normalize_answer(pred);
        check(
            "normalize",
            norm == case["normalized_prediction"],
            format!("{norm:?}"),
        );
        let em = exact_match(pred, gold);
        check(
            "em",
            close(em, case["em"].as_f64().unwrap()),
            format!("{em}"),
        );
        let f1 = token_f1(pred, gold);
        check(
            "f1",
            close(f1, case["f1"].as_f64().unwrap()),
            format!("{f1}"),
        );
        let tokens = rouge_tokens(pred);
        let expected: Vec<String> =
            serde_json::from_value(case["rouge_tokens_prediction"].clone()).unwrap();
        check("rouge tokens", tokens == expected, format!("{tokens:?}"));
        let rouge = rouge_l(pred, gold);
        for (name, ours) in [
            ("precision", rouge.precision),
            ("recall", rouge.recall),
            ("fmeasure", rouge.fmeasure),
        ] {
            let theirs = case["rougeL"][name].as_f64().unwrap();
            check(
                &format!("rougeL.{name}"),
                close(ours, theirs),
                format!("{ours} vs {theirs}"),
            );
        }
        let tokens = tokenize_13a(pred);
        check(
            "13a",
            tokens == case["bleu_hyp_tokens"],
            format!("{tokens:?}"),
        );
        let bleu = sentence_bleu(pred, gold);
        let reference = &case["sentence_bleu"];
        let theirs = reference["score"].as_f64().unwrap();
        check(
            "bleu",
            close(bleu.score, theirs),
            format!("{} vs {theirs}", bleu.score),
        );
        check(
            "bleu counts",
            bleu.stats.counts.to_vec() == usizes(&reference["counts"]),
            format!("{:?}", bleu.stats.counts),
        );
        check(
            "bleu totals",
            bleu.stats.totals.to_vec() == usizes(&reference["totals"]),
            format!("{:?}", bleu.stats.totals),
        );
        check(
            "bleu bp",
            close(bleu.bp, reference["bp"].as_f64().unwrap()),
            format!("{}", bleu.bp),
        );
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    let fixture = fixture();
    let cases = fixture["cases"].as_array().unwrap();
    let pairs: Vec<(&str, &str)> = cases
        .iter()
        .map(|c| {
            (
                c["prediction"].as_str().unwrap(),
                c["reference"].as_str().unwrap(),
            )
        })
        .collect();
    let bleu = corpus_bleu(pairs);
    let reference = &fixture["corpus_bleu"];
    assert_eq!(bleu.stats.counts.to_vec(), usizes(&reference["counts"]));
    assert_eq!(bleu.stats.totals.to_vec(), usizes(&reference["totals"]));
    assert_eq!(
        bleu.stats.sys_len as u64,
        reference["sys_len"].as_u64().unwrap()
    );
    assert!(
        close(bleu.score, reference["score"].as_f64().unwrap()),
        "{}",
        bleu.score
    );
}
