//! LLM-as-judge: pairwise comparisons through any OpenAI-compatible chat endpoint
//! (`ft serve` included).
//!
//! Each pair is judged twice with the answers in swapped positions, so a judge that prefers
//! whichever answer comes first cancels out: the two verdicts, seen from the candidate's side
//! (+1 win, 0 tie, −1 loss), are summed — positive is a win, negative a loss, zero a tie. A
//! verdict that cannot be parsed is asked for again (`retries` times), then the pair counts as
//! invalid; nothing the judge sends can stop the evaluation.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

/// Where and how to reach the judge.
#[derive(Debug, Clone)]
pub struct JudgeConfig {
    /// Base URL of the API (`http://127.0.0.1:8080/v1`) or the full chat-completions URL.
    pub url: String,
    /// The `model` to ask.
    pub model: String,
    /// Sent as `Authorization: Bearer` when set.
    pub api_key: Option<String>,
    /// Extra attempts after a malformed or failed answer.
    pub retries: usize,
    /// Per-call timeout.
    pub timeout: Duration,
}

/// Which answer a judge preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The first answer shown.
    A,
    /// The second answer shown.
    B,
    /// Neither.
    Tie,
}

/// A pair's result from the candidate's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The candidate is better.
    Win,
    /// Equal, or the two orders disagreed.
    Tie,
    /// The baseline is better.
    Loss,
    /// The judge gave no usable verdict in one of the orders.
    Invalid,
}

/// Both verdicts of one pair and what they add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PairJudgement {
    /// Candidate shown first.
    pub candidate_first: Option<Verdict>,
    /// Baseline shown first.
    pub baseline_first: Option<Verdict>,
    /// The combined result.
    pub outcome: Outcome,
}

/// The JSON schema the judge is asked to answer in.
fn verdict_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "winner": {"type": "string", "enum": ["A", "B", "tie"]},
            "reason": {"type": "string"}
        },
        "required": ["winner"]
    })
}

const SYSTEM_PROMPT: &str = "You are a strict evaluator. Compare two answers to the same \
question against the reference answer. Prefer the answer that is correct, complete and \
consistent with the reference; ignore length and style otherwise. Reply with only a JSON \
object: {\"winner\": \"A\" | \"B\" | \"tie\", \"reason\": \"<one sentence>\"}.";

/// Reads a verdict from a judge's message: the first JSON object in it (code fences and
/// surrounding prose allowed) with `winner` A, B or tie (any case).
pub fn parse_verdict(content: &str) -> Option<Verdict> {
    let start = content.find('{')?;
    let end = content.rfind('}')?;
    let value: Value = serde_json::from_str(content.get(start..=end)?).ok()?;
    match value
        .get("winner")?
        .as_str()?
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "a" => Some(Verdict::A),
        "b" => Some(Verdict::B),
        "tie" | "draw" | "equal" => Some(Verdict::Tie),
        _ => None,
    }
}

/// Combines the two orders into the candidate's outcome.
pub fn combine(candidate_first: Option<Verdict>, baseline_first: Option<Verdict>) -> Outcome {
    let (Some(first), Some(second)) = (candidate_first, baseline_first) else {
        return Outcome::Invalid;
    };
    let side = |v: Verdict, candidate_is_a: bool| match (v, candidate_is_a) {
        (Verdict::Tie, _) => 0,
        (Verdict::A, true) | (Verdict::B, false) => 1,
        _ => -1,
    };
    match side(first, true) + side(second, false) {
        s if s > 0 => Outcome::Win,
        s if s < 0 => Outcome::Loss,
        _ => Outcome::Tie,
    }
}

/// A client for one judge endpoint.
#[derive(Debug)]
pub struct Judge {
    config: JudgeConfig,
    agent: ureq::Agent,
    endpoint: String,
}

impl Judge {
    /// A client for `config`.
    pub fn new(config: JudgeConfig) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(config.timeout).build();
        let base = config.url.trim_end_matches('/');
        let endpoint = if base.ends_with("/chat/completions") {
            base.to_string()
        } else {
            format!("{base}/chat/completions")
        };
        Self {
            config,
            agent,
            endpoint,
        }
    }

    fn ask(&self, prompt: &str) -> Result<String, String> {
        let body = json!({
            "model": self.config.model,
            "temperature": 0,
            "max_tokens": 256,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": verdict_schema()},
            },
        });
        let mut request = self.agent.post(&self.endpoint);
        if let Some(key) = &self.config.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let response: Value = request
            .send_json(body)
            .map_err(|e| e.to_string())?
            .into_json()
            .map_err(|e| format!("judge response is not JSON: {e}"))?;
        response["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "judge response has no choices[0].message.content".to_string())
    }

    /// One verdict on answers shown as A and B, asking again on malformed output or errors.
    pub fn verdict(&self, question: &str, reference: &str, a: &str, b: &str) -> Option<Verdict> {
        let prompt = format!(
            "Question:\n{question}\n\nReference answer:\n{reference}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n\
             Which answer is better? Reply with JSON only."
        );
        for attempt in 0..=self.config.retries {
            match self.ask(&prompt) {
                Ok(content) => match parse_verdict(&content) {
                    Some(verdict) => return Some(verdict),
                    None => tracing::warn!(attempt, "judge verdict unreadable: {content:.120}"),
                },
                Err(e) => tracing::warn!(attempt, "judge call failed: {e}"),
            }
        }
        None
    }

    /// Judges `candidate` against `baseline` in both orders.
    pub fn compare(
        &self,
        question: &str,
        reference: &str,
        candidate: &str,
        baseline: &str,
    ) -> PairJudgement {
        let candidate_first = self.verdict(question, reference, candidate, baseline);
        let baseline_first = self.verdict(question, reference, baseline, candidate);
        PairJudgement {
            candidate_first,
            baseline_first,
            outcome: combine(candidate_first, baseline_first),
        }
    }
}

/// The 95 % Wilson score interval of a proportion `successes / n`.
pub fn wilson_interval(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n = n as f64;
    let p = successes as f64 / n;
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denominator;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Win/tie/loss counts and rates over the valid pairs, with 95 % Wilson intervals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgeSummary {
    /// The model compared against.
    pub baseline: String,
    /// Pairs won.
    pub wins: usize,
    /// Pairs tied.
    pub ties: usize,
    /// Pairs lost.
    pub losses: usize,
    /// Pairs without a usable verdict (excluded from the rates).
    pub invalid: usize,
    /// wins / valid pairs.
    pub win_rate: f64,
    /// ties / valid pairs.
    pub tie_rate: f64,
    /// losses / valid pairs.
    pub loss_rate: f64,
    /// 95 % interval of the win rate.
    pub win_rate_ci95: (f64, f64),
    /// 95 % interval of the loss rate.
    pub loss_rate_ci95: (f64, f64),
}

impl JudgeSummary {
    /// Counts `outcomes` of comparisons against `baseline`.
    pub fn new(baseline: &str, outcomes: &[Outcome]) -> Self {
        let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
        let (wins, ties, losses, invalid) = (
            count(Outcome::Win),
            count(Outcome::Tie),
            count(Outcome::Loss),
            count(Outcome::Invalid),
        );
        let valid = wins + ties + losses;
        let rate = |k: usize| {
            if valid == 0 {
                0.0
            } else {
                k as f64 / valid as f64
            }
        };
        Self {
            baseline: baseline.to_string(),
            wins,
            ties,
            losses,
            invalid,
            win_rate: rate(wins),
            tie_rate: rate(ties),
            loss_rate: rate(losses),
            win_rate_ci95: wilson_interval(wins, valid),
            loss_rate_ci95: wilson_interval(losses, valid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_parse_from_messy_output() {
        assert_eq!(parse_verdict(r#"{"winner": "A"}"#), Some(Verdict::A));
        assert_eq!(
            parse_verdict("```json\n{\"winner\":\"b\",\"reason\":\"x\"}\n```"),
            Some(Verdict::B)
        );
        assert_eq!(
            parse_verdict("Sure! {\"winner\": \"Tie\"} hope that helps"),
            Some(Verdict::Tie)
        );
        assert_eq!(parse_verdict("A is better"), None);
        assert_eq!(parse_verdict(r#"{"winner": "C"}"#), None);
        assert_eq!(parse_verdict(r#"{"winner": 1}"#), None);
        assert_eq!(parse_verdict("{not json}"), None);
    }

    #[test]
    fn position_bias_cancels() {
        use Verdict::*;
        assert_eq!(combine(Some(A), Some(B)), Outcome::Win); // candidate chosen both times
        assert_eq!(combine(Some(B), Some(A)), Outcome::Loss);
        assert_eq!(combine(Some(A), Some(A)), Outcome::Tie); // always the first: bias
        assert_eq!(combine(Some(A), Some(Tie)), Outcome::Win);
        assert_eq!(combine(Some(Tie), Some(Tie)), Outcome::Tie);
        assert_eq!(combine(None, Some(B)), Outcome::Invalid);
    }

    #[test]
    fn wilson_interval_matches_the_formula() {
        // statsmodels proportion_confint(7, 10, method="wilson") = (0.396778, 0.892209).
        let (lo, hi) = wilson_interval(7, 10);
        assert!(
            (lo - 0.396_778).abs() < 1e-6 && (hi - 0.892_209).abs() < 1e-6,
            "{lo} {hi}"
        );
        assert_eq!(wilson_interval(0, 0), (0.0, 1.0));
    }
}
