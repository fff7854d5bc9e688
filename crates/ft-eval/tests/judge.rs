//! The judge against a scripted fake OpenAI-compatible server: position swap, ties, malformed
//! verdicts (retried, then invalid), HTTP failures, the summary and the gate.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use ft_eval::gate::Gate;
use ft_eval::judge::{Judge, JudgeConfig, JudgeSummary, Outcome, Verdict};
use serde_json::{json, Value};

type Calls = Arc<Mutex<HashMap<String, usize>>>;

/// Behaviour is chosen by the question: `consistent` prefers the answer "GOOD"; `biased`
/// always picks the first answer; `tie` says tie; `flaky` answers garbage the first time it
/// sees a prompt; `broken` always answers garbage; `down` fails with HTTP 500.
async fn fake_judge(
    State(calls): State<Calls>,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let prompt = body["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let seen = {
        let mut calls = calls.lock().unwrap();
        let n = calls.entry(prompt.clone()).or_default();
        *n += 1;
        *n
    };
    let section = |name: &str| {
        prompt
            .split(&format!("{name}:\n"))
            .nth(1)
            .and_then(|s| s.split("\n\n").next())
            .unwrap_or_default()
            .to_string()
    };
    let question = section("Question");
    let preferred = if section("Answer A") == "GOOD" {
        "A"
    } else {
        "B"
    };
    let content = match question.as_str() {
        "consistent" => json!({"winner": preferred, "reason": "matches"}).to_string(),
        "biased" => r#"{"winner": "A"}"#.to_string(),
        "tie" => r#"{"winner": "tie"}"#.to_string(),
        "flaky" if seen == 1 => "I think the first one is better".to_string(),
        "flaky" => format!("```json\n{{\"winner\": \"{preferred}\"}}\n```"),
        "down" => {
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"message": "boom"}})),
            )
        }
        _ => "{\"winner\": \"maybe\"}".to_string(),
    };
    let response = json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]});
    (axum::http::StatusCode::OK, Json(response))
}

fn start_fake() -> (String, Calls, tokio::runtime::Runtime) {
    let calls: Calls = Arc::default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/chat/completions", post(fake_judge))
        .with_state(calls.clone());
    runtime.spawn(async move { axum::serve(listener, app).await });
    (url, calls, runtime)
}

#[test]
fn both_orders_ties_malformed_and_failures() {
    let (url, calls, _runtime) = start_fake();
    let judge = Judge::new(JudgeConfig {
        url,
        model: "judge".into(),
        api_key: Some("k".into()),
        retries: 2,
        timeout: Duration::from_secs(10),
    });
    let cases = [
        ("consistent", "GOOD", "BAD", Outcome::Win),
        ("consistent", "BAD", "GOOD", Outcome::Loss),
        ("biased", "GOOD", "BAD", Outcome::Tie), // first position both times: bias cancels
        ("tie", "GOOD", "BAD", Outcome::Tie),
        ("flaky", "GOOD", "BAD", Outcome::Win), // malformed once per order, then read
        ("broken", "GOOD", "BAD", Outcome::Invalid),
        ("down", "GOOD", "BAD", Outcome::Invalid),
    ];
    let mut outcomes = Vec::new();
    for (question, candidate, baseline, expected) in cases {
        let pair = judge.compare(question, "ref", candidate, baseline);
        assert_eq!(pair.outcome, expected, "{question}: {pair:?}");
        outcomes.push(pair.outcome);
    }
    let biased = judge.compare("biased", "ref", "GOOD", "BAD");
    assert_eq!(
        (biased.candidate_first, biased.baseline_first),
        (Some(Verdict::A), Some(Verdict::A))
    );
    // Retries: flaky needed 2 calls per order; broken and down used all 3 per order.
    let calls = calls.lock().unwrap();
    let count = |q: &str| {
        calls
            .iter()
            .filter(|(p, _)| p.starts_with(&format!("Question:\n{q}\n")))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    assert_eq!(count("flaky"), 4);
    assert_eq!(count("broken"), 6);
    assert_eq!(count("down"), 6);

    let summary = JudgeSummary::new("base", &outcomes);
    assert_eq!(
        (summary.wins, summary.ties, summary.losses, summary.invalid),
        (2, 2, 1, 2)
    );
    assert!((summary.win_rate - 0.4).abs() < 1e-12);
    assert!(summary.win_rate_ci95.0 < 0.4 && summary.win_rate_ci95.1 > 0.4);
    let metrics: BTreeMap<String, f64> = [("judge_win_rate".to_string(), summary.win_rate)].into();
    assert!(
        !Gate::parse("judge_win_rate>0.7")
            .unwrap()
            .check("a", &metrics, None)
            .passed
    );
    assert!(
        Gate::parse("judge_win_rate>0.3")
            .unwrap()
            .check("a", &metrics, None)
            .passed
    );
}
