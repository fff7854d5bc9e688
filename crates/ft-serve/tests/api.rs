//! The HTTP API against a live server on the default model: greedy outputs equal
//! `ft generate`, every endpoint and error shape, SSE framing, `model` routing, admin.

mod common;

use common::*;
use ft_model::adapter_io::LoadOptions;
use ft_serve::{EngineConfig, ServerConfig};
use serde_json::{json, Value};

const PROMPT: &str = "What is the capital of France?";

#[test]
fn greedy_output_equals_ft_generate_for_base_and_adapter() {
    let Some(model) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = random_adapter(&model, dir.path(), "a", 2, 0.4);
    let adapter = model
        .model
        .load_adapter(&adapter_dir, &LoadOptions::default())
        .unwrap();
    let live = start_simple(model.clone(), &[("tuned", &adapter_dir)]);
    let expected_base = generate(&model, PROMPT, false, 24, None);
    let expected_tuned = generate(&model, PROMPT, false, 24, Some(&adapter));
    assert_eq!(expected_base, "The capital of France is Paris.");
    assert_ne!(
        expected_base, expected_tuned,
        "the test adapter must change the answer"
    );
    for (name, expected) in [
        (live.base_id.as_str(), &expected_base),
        ("tuned", &expected_tuned),
    ] {
        let body = json!({"model": name, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 24});
        let (status, response) = post(&format!("{}/v1/chat/completions", live.url), &body);
        assert_eq!(status, 200, "{response}");
        assert_eq!(
            response["choices"][0]["message"]["content"], **expected,
            "model {name}"
        );
        assert_eq!(response["object"], "chat.completion");
        assert_eq!(response["model"], name);
        assert!(response["id"].as_str().unwrap().starts_with("chatcmpl-"));
        let usage = &response["usage"];
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["prompt_tokens"].as_u64().unwrap()
                    + usage["completion_tokens"].as_u64().unwrap()
            )
        );
        // The same through the stream.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let payloads = stream(&format!("{}/v1/chat/completions", live.url), &streamed).unwrap();
        let text: String = payloads
            .iter()
            .filter(|p| *p != "[DONE]")
            .map(|p| serde_json::from_str::<Value>(p).unwrap())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(&text, expected, "streamed, model {name}");
    }
    // Raw completions equal `ft generate --raw`.
    let raw_prompt = "The three primary colours are";
    let expected = generate(&model, raw_prompt, true, 16, None);
    let (status, response) = post(
        &format!("{}/v1/completions", live.url),
        &json!({"model": live.base_id, "prompt": raw_prompt, "temperature": 0, "max_tokens": 16}),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["object"], "text_completion");
    assert_eq!(response["choices"][0]["text"], expected);
    assert_eq!(response["choices"][0]["finish_reason"], "length");
}

#[test]
fn sse_framing_roles_finish_usage_and_done() {
    let Some(model) = model() else { return };
    let live = start_simple(model, &[]);
    let body = json!({
        "model": live.base_id, "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0, "max_tokens": 5, "n": 2, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let payloads = stream(&format!("{}/v1/chat/completions", live.url), &body).unwrap();
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id, "one id per stream");
    }
    // Each choice opens with the role and ends with finish_reason "length" (5 tokens).
    for index in 0..2 {
        let mine: Vec<&Value> = chunks
            .iter()
            .filter(|c| {
                c["choices"].as_array().is_some_and(|a| !a.is_empty())
                    && c["choices"][0]["index"] == index
            })
            .collect();
        assert_eq!(mine[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            mine.last().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
        assert!(mine[1..mine.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()));
    }
    // The usage chunk comes last, with no choices; other chunks carry "usage": null.
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 10);
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null()));
    // Completions stream too.
    let payloads = stream(
        &format!("{}/v1/completions", live.url),
        &json!({"model": live.base_id, "prompt": "Hello", "max_tokens": 3, "temperature": 0, "stream": true}),
    )
    .unwrap();
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&payloads[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
}

fn assert_error(response: &Value, kind: &str, param: Option<&str>) {
    let error = &response["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{response}"
    );
    assert_eq!(error["type"], kind, "{response}");
    assert_eq!(error["param"].as_str(), param, "{response}");
    assert!(error.get("code").is_some(), "{response}");
}

#[test]
fn every_endpoint_and_error_shape() {
    let Some(model) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = random_adapter(&model, dir.path(), "a", 2, 0.02);
    let config = ServerConfig {
        max_body_bytes: 4096,
        max_tokens_limit: 64,
        ..ServerConfig::default()
    };
    let live = start(
        model,
        &[("tuned", &adapter_dir)],
        None,
        10,
        config,
        EngineConfig::default(),
    );
    let chat = format!("{}/v1/chat/completions", live.url);

    let (status, health) = get(&format!("{}/health", live.url));
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], live.base_id);
    assert_eq!(health["adapters"], json!(["tuned"]));
    assert!(health["uptime_seconds"].as_f64().is_some());

    let (status, models) = get(&format!("{}/v1/models", live.url));
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], live.base_id);
    assert_eq!(models["data"][1]["id"], "tuned");
    assert_eq!(models["data"][1]["parent"], live.base_id);

    let user = json!([{"role": "user", "content": "Hi"}]);
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (
            json!({"model": "nope", "messages": user}),
            404,
            "not_found_error",
            Some("model"),
        ),
        (
            json!({"model": live.base_id, "messages": []}),
            400,
            "invalid_request_error",
            Some("messages"),
        ),
        (
            json!({"model": live.base_id, "messages": user, "temperature": 5}),
            400,
            "invalid_request_error",
            Some("temperature"),
        ),
        (
            json!({"model": live.base_id, "messages": user, "top_p": 0}),
            400,
            "invalid_request_error",
            Some("top_p"),
        ),
        (
            json!({"model": live.base_id, "messages": user, "max_tokens": 65}),
            400,
            "invalid_request_error",
            Some("max_tokens"),
        ),
        (
            json!({"model": live.base_id, "messages": user, "max_completion_tokens": 0}),
            400,
            "invalid_request_error",
            Some("max_completion_tokens"),
        ),
        (
            json!({"model": live.base_id, "messages": user, "n": 0}),
            400,
            "invalid_request_error",
            Some("n"),
        ),
        (
            json!({"model": live.base_id, "messages": user, "stop": ["a", "b", "c", "d", "e"]}),
            400,
            "invalid_request_error",
            Some("stop"),
        ),
        (
            json!({"model": live.base_id, "messages": [{"role": "robot", "content": "x"}]}),
            400,
            "invalid_request_error",
            Some("messages[0].role"),
        ),
        (
            json!({"model": live.base_id, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            400,
            "invalid_request_error",
            Some("messages[0].content[0]"),
        ),
        (
            json!({"messages": user}),
            400,
            "invalid_request_error",
            None,
        ),
    ];
    for (body, status, kind, param) in cases {
        let (got, response) = post(&chat, &body);
        assert_eq!(got, status, "{body} → {response}");
        assert_error(&response, kind, param);
    }
    // Malformed JSON names the position.
    let response = ureq::post(&chat)
        .set("content-type", "application/json")
        .send_string("{\"model\": ");
    let Err(ureq::Error::Status(400, r)) = response else {
        panic!("malformed JSON accepted")
    };
    let body: Value = r.into_json().unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{body}"
    );
    // Over the body limit: 413.
    let big = "x".repeat(5000);
    let (status, response) = post(
        &chat,
        &json!({"model": live.base_id, "messages": [{"role": "user", "content": big}]}),
    );
    assert_eq!(status, 413, "{response}");
    assert_error(&response, "invalid_request_error", None);
    // Unknown endpoint; known endpoint, wrong method.
    let (status, response) = get(&format!("{}/v1/nothing", live.url));
    assert_eq!(status, 404);
    assert_error(&response, "not_found_error", None);
    let (status, response) = get(&chat);
    assert_eq!(status, 405);
    assert_error(&response, "invalid_request_error", None);

    // Stop strings end the text before the stop; n gives n choices.
    let (status, response) = post(
        &chat,
        &json!({"model": live.base_id, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 24, "stop": [" Paris"], "n": 2}),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        response["choices"][0]["message"]["content"],
        "The capital of France is"
    );
    assert_eq!(response["choices"][0]["finish_reason"], "stop");
    assert_eq!(response["choices"].as_array().unwrap().len(), 2);

    // Metrics reflect the traffic.
    let text = ureq::get(&format!("{}/metrics", live.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for needle in [
        "llm_requests_total{model=\"nope\",status=\"404\",endpoint=\"/v1/chat/completions\"} 1",
        "llm_errors_total{",
        "llm_tokens_total{model=\"SmolLM2-135M-Instruct.Q4_1\",token_type=\"completion\"}",
        "llm_latency_seconds_bucket{model=\"SmolLM2-135M-Instruct.Q4_1\",endpoint=\"/v1/chat/completions\",le=\"0.1\"}",
        "llm_time_to_first_token_seconds_count",
        "llm_active_requests 0",
        "llm_queue_depth 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[test]
fn api_key_is_required_except_for_health() {
    let Some(model) = model() else { return };
    let config = ServerConfig {
        api_key: Some("sekret".into()),
        ..ServerConfig::default()
    };
    let live = start(model, &[], None, 10, config, EngineConfig::default());
    let (status, response) = get(&format!("{}/v1/models", live.url));
    assert_eq!(status, 401);
    assert_eq!(response["error"]["code"], "invalid_api_key");
    let wrong = ureq::get(&format!("{}/v1/models", live.url))
        .set("Authorization", "Bearer nope")
        .call();
    assert!(matches!(wrong, Err(ureq::Error::Status(401, _))));
    let right = ureq::get(&format!("{}/v1/models", live.url))
        .set("Authorization", "Bearer sekret")
        .call()
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(get(&format!("{}/health", live.url)).0, 200);
}

#[test]
fn adapters_load_replace_unload_and_stay_confined() {
    let Some(model) = model() else { return };
    let root = tempfile::tempdir().unwrap();
    let a = random_adapter(&model, root.path(), "a", 3, 0.02);
    random_adapter(&model, root.path(), "b", 4, 0.02);
    let outside = tempfile::tempdir().unwrap();
    random_adapter(&model, outside.path(), "c", 5, 0.02);
    // An adapter made for another base (the tiny llama fixture): refused with the reason.
    let foreign = ft_core::testing::repo_root().join("tests/fixtures/tiny-llama/adapter");
    let dest = root.path().join("foreign");
    std::fs::create_dir_all(&dest).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(foreign.join(file), dest.join(file)).unwrap();
    }
    let live = start(
        model.clone(),
        &[],
        Some(root.path().to_path_buf()),
        1,
        ServerConfig::default(),
        EngineConfig::default(),
    );
    let admin = format!("{}/v1/adapters", live.url);
    let chat = |name: &str| {
        post(
            &format!("{}/v1/chat/completions", live.url),
            &json!({"model": name, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 6}),
        )
    };

    let (status, loaded) = post(&admin, &json!({"name": "x", "path": "a"}));
    assert_eq!(status, 200, "{loaded}");
    assert_eq!(loaded["version"], 1);
    let (status, first) = chat("x");
    assert_eq!(status, 200);
    assert_eq!(first["system_fingerprint"], "x@1");
    // Replace under the same name: a new version for new requests.
    let (status, replaced) = post(&admin, &json!({"name": "x", "path": "b"}));
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["version"], 2);
    assert_eq!(chat("x").1["system_fingerprint"], "x@2");
    // A second adapter with max resident 1 evicts the first, which reloads on demand.
    assert_eq!(post(&admin, &json!({"name": "y", "path": "a"})).0, 200);
    let (_, listing) = get(&admin);
    let resident = |name: &str| {
        listing["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["resident"]
            .clone()
    };
    assert_eq!(resident("x"), false);
    assert_eq!(resident("y"), true);
    let (status, again) = chat("x");
    assert_eq!(status, 200);
    assert_eq!(again["system_fingerprint"], "x@2");
    // Same adapter, same answer, whichever name serves it.
    let adapter_a = model
        .model
        .load_adapter(&a, &LoadOptions::default())
        .unwrap();
    assert_eq!(
        chat("y").1["choices"][0]["message"]["content"],
        generate(&model, PROMPT, false, 6, Some(&adapter_a))
    );

    for (body, param_text) in [
        (json!({"name": "z", "path": "../"}), "outside"),
        (
            json!({"name": "z", "path": outside.path().join("c").display().to_string()}),
            "outside",
        ),
        (
            json!({"name": "z", "path": "missing"}),
            "no adapter directory",
        ),
        (json!({"name": "bad name!", "path": "a"}), "name"),
        (json!({"name": "z", "path": "foreign"}), "foreign"),
    ] {
        let (status, response) = post(&admin, &body);
        assert_eq!(status, 400, "{body} → {response}");
        assert!(
            response["error"]["message"]
                .as_str()
                .unwrap()
                .contains(param_text),
            "{body} → {response}"
        );
    }
    let delete = ureq::delete(&format!("{admin}/x")).call().unwrap();
    assert_eq!(delete.status(), 200);
    assert_eq!(chat("x").0, 404);
    assert!(matches!(
        ureq::delete(&format!("{admin}/x")).call(),
        Err(ureq::Error::Status(404, _))
    ));
}

#[test]
fn loading_over_http_is_off_without_an_adapters_dir() {
    let Some(model) = model() else { return };
    let live = start_simple(model, &[]);
    let (status, response) = post(
        &format!("{}/v1/adapters", live.url),
        &json!({"name": "x", "path": "/tmp"}),
    );
    assert_eq!(status, 403, "{response}");
    assert!(response["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--adapters-dir"));
}

#[test]
fn a_client_that_disconnects_frees_its_slot() {
    use std::io::BufRead;
    let Some(model) = model() else { return };
    let live = start_simple(model, &[]);
    let body = json!({"model": live.base_id, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 2000, "stream": true});
    let response = ureq::post(&format!("{}/v1/chat/completions", live.url))
        .send_json(body)
        .unwrap();
    let mut reader = std::io::BufReader::new(response.into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while get(&format!("{}/health", live.url)).1["running"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never started decoding"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(reader); // the client goes away mid-stream
    loop {
        let (_, health) = get(&format!("{}/health", live.url));
        if health["running"] == 0 && health["queue_depth"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was not freed: {health}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let Some(model) = model() else { return };
    let engine = EngineConfig {
        max_batch: 1,
        max_queue: 1,
        ..Default::default()
    };
    let live = start(model, &[], None, 10, ServerConfig::default(), engine);
    let url = format!("{}/v1/chat/completions", live.url);
    let body = json!({"model": live.base_id, "messages": [{"role": "user", "content": "Count to fifty."}], "max_tokens": 40, "temperature": 0});
    // One request runs, one waits; the next ones find the queue full.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            let handle = std::thread::spawn(move || post(&url, &body).0);
            // Let the scheduler take the first before the second queues.
            std::thread::sleep(std::time::Duration::from_millis(300));
            handle
        })
        .collect();
    let response = ureq::post(&url).send_json(body.clone());
    let Err(ureq::Error::Status(429, r)) = response else {
        panic!("expected 429, got {response:?}")
    };
    assert_eq!(r.header("retry-after"), Some("1"));
    let error: Value = r.into_json().unwrap();
    assert_eq!(error["error"]["code"], "queue_full");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    for handle in busy {
        assert_eq!(handle.join().unwrap(), 200);
    }
    // A request that could never fit the queue is a 400, not a retryable 429.
    let mut too_many = body.clone();
    too_many["n"] = json!(2);
    let (status, response) = post(&url, &too_many);
    assert_eq!(status, 400, "{response}");
    assert_eq!(response["error"]["param"], "n");
}
