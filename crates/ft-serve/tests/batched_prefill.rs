//! Requests that arrive together are prefilled together (right-padded, each row under its own
//! adapter) and decoded in one batch: on the quantized path, every answer must still equal
//! what `ft generate` gives for that request alone.

mod common;

use std::sync::{Arc, Barrier};

use common::{generate, post, quantized_model, random_adapter, start_simple};
use ft_model::adapter_io::LoadOptions;
use serde_json::json;

#[test]
fn concurrent_mixed_adapter_requests_each_equal_their_answer_alone() {
    let Some(model) = quantized_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = random_adapter(&model, dir.path(), "a", 2, 0.4);
    let adapter = model
        .model
        .load_adapter(&adapter_dir, &LoadOptions::default())
        .unwrap();
    let live = Arc::new(start_simple(model.clone(), &[("tuned", &adapter_dir)]));
    // Prompts of different lengths, so the prefill batch is padded.
    let prompts = [
        "What is the capital of France?",
        "Name three colours.",
        "Write one sentence about the sea, the wind and the long grey boats that sail at dawn.",
    ];
    let mut cases = Vec::new();
    for prompt in prompts {
        cases.push((
            prompt,
            live.base_id.clone(),
            generate(&model, prompt, false, 24, None),
        ));
        cases.push((
            prompt,
            "tuned".to_string(),
            generate(&model, prompt, false, 24, Some(&adapter)),
        ));
    }
    let barrier = Arc::new(Barrier::new(cases.len()));
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(prompt, name, expected)| {
            let (live, barrier) = (live.clone(), barrier.clone());
            std::thread::spawn(move || {
                let body = json!({"model": name, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 24});
                barrier.wait();
                let (status, response) = post(&format!("{}/v1/chat/completions", live.url), &body);
                assert_eq!(status, 200, "{response}");
                assert_eq!(
                    response["choices"][0]["message"]["content"], expected,
                    "model {name}, prompt {prompt:?}"
                );
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a request thread panicked");
    }
}

/// `llm_prefix_cache_reused_tokens_total` from /metrics.
fn reused_tokens(url: &str) -> u64 {
    let text = ureq::get(&format!("{url}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("llm_prefix_cache_reused_tokens_total "))
        .and_then(|v| v.parse().ok())
        .expect("the reused-tokens counter")
}

#[test]
fn prompts_that_reuse_a_stored_prefix_answer_as_they_do_alone() {
    let Some(model) = quantized_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = random_adapter(&model, dir.path(), "a", 3, 0.4);
    let adapter = model
        .model
        .load_adapter(&adapter_dir, &LoadOptions::default())
        .unwrap();
    let live = start_simple(model.clone(), &[("tuned", &adapter_dir)]);
    let mut cached = Vec::new();
    let mut ask = |name: &str, prompt: &str| {
        let body = json!({"model": name, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 24});
        let (status, response) = post(&format!("{}/v1/chat/completions", live.url), &body);
        assert_eq!(status, 200, "{response}");
        cached.push(response["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64());
        response["choices"][0]["message"]["content"]
            .as_str()
            .expect("an answer")
            .to_string()
    };
    let (first, second) = ("What is the capital of France?", "Name three colours.");
    let base = live.base_id.clone();
    assert_eq!(
        ask(&base, first),
        generate(&model, first, false, 24, None),
        "cold"
    );
    let mut reused = reused_tokens(&live.url);
    // The same prompt again (all but its last token from the store), then another question
    // (the chat template's system prompt and turn markers from the store).
    for (prompt, what) in [(first, "repeated"), (second, "shared system prompt")] {
        assert_eq!(
            ask(&base, prompt),
            generate(&model, prompt, false, 24, None),
            "{what}"
        );
        let now = reused_tokens(&live.url);
        assert!(now > reused, "{what}: nothing reused ({now})");
        reused = now;
    }
    // An adapter changes every key and value: it must not start from the base's, and it
    // reuses its own.
    let tuned_alone = generate(&model, first, false, 24, Some(&adapter));
    assert_ne!(
        tuned_alone,
        generate(&model, first, false, 24, None),
        "the adapter must change the answer for this test to mean anything"
    );
    for what in ["adapter, cold", "adapter, repeated"] {
        assert_eq!(ask("tuned", first), tuned_alone, "{what}");
    }
    assert!(
        reused_tokens(&live.url) > reused,
        "the adapter's own prefix was not reused"
    );
    // OpenAI's usage.prompt_tokens_details.cached_tokens: none cold, some on reuse.
    assert_eq!(cached[0], Some(0), "{cached:?}");
    assert!(
        cached[1..3].iter().all(|c| c.unwrap_or(0) > 0),
        "{cached:?}"
    );
    assert_eq!(cached[3], Some(0), "{cached:?}");
    assert!(cached[4].unwrap_or(0) > 0, "{cached:?}");
}
