//! OpenAI's defaults and refusals that `ft serve` got wrong, and `--max-request-seconds`: a
//! request cannot hold a decode slot forever.

mod common;
use common::{get, model, post, start, start_simple, stream};

use ft_serve::{EngineConfig, ServerConfig};
use serde_json::{json, Value};

fn assert_invalid(status: u16, response: &Value, param: Option<&str>) {
    assert_eq!(status, 400, "{response}");
    assert_eq!(
        response["error"]["type"], "invalid_request_error",
        "{response}"
    );
    assert_eq!(response["error"]["param"].as_str(), param, "{response}");
    assert!(response["error"].get("code").is_some(), "{response}");
}

#[test]
fn openai_defaults_and_refusals() {
    let Some(model) = model() else { return };
    let live = start_simple(model, &[]);
    let chat = format!("{}/v1/chat/completions", live.url);

    // /v1/completions without max_tokens stops at 16 tokens, as OpenAI and vLLM do.
    let (status, response) = post(
        &format!("{}/v1/completions", live.url),
        &json!({"model": live.base_id, "prompt": "Once upon a time, in a land far away,", "temperature": 0}),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["usage"]["completion_tokens"], 16, "{response}");
    assert_eq!(response["choices"][0]["finish_reason"], "length");

    let user = json!([{"role": "user", "content": "Hi"}]);
    // stream_options must be an object, and only with stream: true.
    let (status, response) = post(
        &chat,
        &json!({"model": live.base_id, "messages": user, "stream": true, "stream_options": []}),
    );
    assert_invalid(status, &response, Some("stream_options"));
    let (status, response) = post(
        &chat,
        &json!({"model": live.base_id, "messages": user, "stream_options": {"include_usage": true}}),
    );
    assert_invalid(status, &response, Some("stream_options"));
    // Every message needs content (no tools, so not even the assistant may omit it).
    for messages in [
        json!([{"role": "user"}]),
        json!([{"role": "user", "content": null}]),
        json!([{"role": "user", "content": "Hi"}, {"role": "assistant"}]),
    ] {
        let (status, response) = post(&chat, &json!({"model": live.base_id, "messages": messages}));
        let last = messages.as_array().map_or(0, |m| m.len() - 1);
        let param = format!("messages[{last}].content");
        assert_invalid(status, &response, Some(&param));
    }
    // The framework's own path rejection is in OpenAI's shape too.
    let response = ureq::request("DELETE", &format!("{}/v1/adapters/%ff", live.url)).call();
    let Err(ureq::Error::Status(400, r)) = response else {
        panic!("expected 400, got {response:?}")
    };
    let body: Value = r.into_json().expect("a JSON body");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
}

#[test]
fn a_request_out_of_time_ends_with_length_and_is_counted() {
    let Some(model) = model() else { return };
    let config = ServerConfig {
        max_request_seconds: 0.5,
        ..ServerConfig::default()
    };
    let live = start(model, &[], None, 10, config, EngineConfig::default());
    let completions = format!("{}/v1/completions", live.url);
    // Greedy counting goes on far past 0.5 s of decoding on any machine.
    let body = json!({"model": live.base_id, "prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0, "max_tokens": 4000});

    let (status, response) = post(&completions, &body);
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["choices"][0]["finish_reason"], "length");
    let tokens = response["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    assert!(tokens < 4000, "the deadline did not cut it: {response}");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let payloads = stream(&completions, &streamed).expect("a stream");
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let finish: Vec<Value> = payloads
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .map(|c| c["choices"][0]["finish_reason"].clone())
        .collect();
    assert_eq!(finish, [json!("length")]);

    // The slots are free again (the scheduler publishes its count after its step).
    let mut health = Value::Null;
    for _ in 0..50 {
        health = get(&format!("{}/health", live.url)).1;
        if health["running"] == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(health["running"], 0, "{health}");
    let text = ureq::get(&format!("{}/metrics", live.url))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    let needle = format!(
        "llm_request_timeouts_total{{model=\"{}\",endpoint=\"/v1/completions\"}} 2",
        live.base_id
    );
    assert!(text.contains(&needle), "missing {needle} in\n{text}");
}

/// A fuzz target for request parsing, as a bounded property test: random bodies (valid
/// skeletons with fields swapped for wrong types and edge values, and raw bytes) against a live
/// server. Every answer is a 200 (JSON or a complete SSE stream) or an OpenAI-shaped error;
/// nothing panics and no connection drops.
#[test]
fn fuzzed_requests_get_an_answer_or_an_openai_error() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let Some(model) = model() else { return };
    let config = ServerConfig {
        max_tokens_limit: 2,
        max_body_bytes: 2048,
        ..ServerConfig::default()
    };
    let live = start(model, &[], None, 10, config, EngineConfig::default());
    let value = prop_oneof![
        Just(json!(null)),
        Just(json!(true)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(1e300)),
        Just(json!("")),
        Just(json!("Hi")),
        Just(json!([])),
        Just(json!({})),
        Just(json!([{"type": "text", "text": "Hi"}])),
        Just(json!({"include_usage": true})),
        Just(json!({"include_usage": "yes"})),
    ];
    let field = prop_oneof![
        Just("model"),
        Just("messages"),
        Just("prompt"),
        Just("stream"),
        Just("stream_options"),
        Just("max_tokens"),
        Just("max_completion_tokens"),
        Just("n"),
        Just("temperature"),
        Just("top_p"),
        Just("top_k"),
        Just("stop"),
        Just("seed"),
    ];
    let message = (
        prop_oneof![
            Just("user"),
            Just("assistant"),
            Just("system"),
            Just("tool")
        ],
        value.clone(),
        any::<bool>(),
    );
    let base_id = live.base_id.clone();
    let body = (
        any::<bool>(),
        prop::collection::vec(message, 0..3),
        prop::collection::vec((field, value), 0..4),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
    )
        .prop_map(move |(chat, messages, overrides, raw)| {
            if let Some(raw) = raw {
                return (chat, raw);
            }
            let mut body = json!({"model": base_id, "temperature": 0});
            if chat {
                let messages: Vec<Value> = messages
                    .into_iter()
                    .map(|(role, content, with_content)| {
                        if with_content {
                            json!({"role": role, "content": content})
                        } else {
                            json!({"role": role})
                        }
                    })
                    .collect();
                body["messages"] = json!(messages);
            } else {
                body["prompt"] = json!("Hi");
            }
            for (field, value) in overrides {
                body[field] = value;
            }
            (chat, body.to_string().into_bytes())
        });
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let url = live.url.clone();
    runner
        .run(&body, |(chat, bytes)| {
            let path = if chat {
                "chat/completions"
            } else {
                "completions"
            };
            let response = ureq::post(&format!("{url}/v1/{path}"))
                .set("content-type", "application/json")
                .send_bytes(&bytes);
            let (status, response) = match response {
                Ok(r) => (r.status(), r),
                Err(ureq::Error::Status(code, r)) => (code, r),
                Err(e) => panic!("no answer: {e} for {}", String::from_utf8_lossy(&bytes)),
            };
            let streamed = response
                .header("content-type")
                .is_some_and(|c| c.starts_with("text/event-stream"));
            let text = response.into_string().expect("a complete body");
            let what = String::from_utf8_lossy(&bytes).to_string();
            if status == 200 && streamed {
                prop_assert!(text.trim_end().ends_with("data: [DONE]"), "{what}: {text}");
            } else {
                let body: Value = serde_json::from_str(&text).expect("a JSON body");
                if status != 200 {
                    prop_assert!(body["error"]["message"].is_string(), "{what}: {body}");
                    prop_assert!(body["error"]["type"].is_string(), "{what}: {body}");
                    prop_assert!(status < 500, "{what}: {status} {body}");
                }
            }
            Ok(())
        })
        .expect("every fuzzed request is answered cleanly");
}
