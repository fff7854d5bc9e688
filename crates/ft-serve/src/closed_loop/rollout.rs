//! A rollout of one adapter version over another: its stored shape, the per-user traffic
//! split, and the decision each step ends with (advance, hold, roll back). Pure functions of
//! the numbers, so the rules are tested without a server.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use ft_store::VersionStats;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `ft eval` is comparing the candidate with stable (the gate); no traffic yet.
    Gating,
    /// The candidate takes `percent` of the users.
    Canary,
    /// The candidate became stable (100 %).
    Promoted,
    /// The candidate did worse and takes no traffic.
    RolledBack,
    /// The gate said no; the candidate never took traffic.
    GateFailed,
}

impl Status {
    /// Whether the rollout still changes (and the controller looks at it).
    pub fn active(self) -> bool {
        matches!(self, Self::Gating | Self::Canary)
    }
}

/// How a promotion proceeds; what `ft adapters promote` sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Traffic percentages, ascending, ending at 100.
    pub steps: Vec<u32>,
    /// Requests each version needs within the window before a step is judged.
    pub min_requests: u64,
    /// Each step runs at least this long and is judged on its last `window_seconds`.
    pub window_seconds: u64,
    /// Roll back when the candidate's error rate exceeds this times stable's.
    pub max_error_ratio: f64,
    /// Also judge the negative-feedback rate (same ratio) once both versions have
    /// `min_feedback` verdicts in the window.
    pub feedback_signal: bool,
    /// Verdicts each version needs before the feedback signal counts.
    pub min_feedback: u64,
    /// `ft eval` gate the candidate must pass against stable first, e.g. `judge_win_rate>0.7`.
    pub gate: Option<String>,
    /// The test split the gate evaluates on (a path on the server).
    pub eval_data: Option<String>,
    /// The judge's `model` (default: the base model, served by this server).
    pub judge_model: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            steps: vec![5, 25, 50, 100],
            min_requests: 100,
            window_seconds: 600,
            max_error_ratio: 1.5,
            feedback_signal: true,
            min_feedback: 20,
            gate: None,
            eval_data: None,
            judge_model: None,
        }
    }
}

impl Policy {
    /// Checks the numbers, naming the field that is wrong.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, why: String| Err((field.to_string(), why));
        if self.steps.is_empty() || self.steps.last() != Some(&100) {
            return bad("steps", "steps must end at 100, e.g. 5,25,50,100".into());
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) || self.steps[0] == 0 {
            return bad("steps", "steps must rise from 1 to 100".into());
        }
        if self.window_seconds == 0 || self.window_seconds > 30 * 86_400 {
            return bad("window", "the window must be 1 s to 30 days".into());
        }
        if !(self.max_error_ratio.is_finite() && self.max_error_ratio >= 1.0) {
            return bad("max_error_ratio", "max_error_ratio must be >= 1".into());
        }
        if self.gate.is_some() != self.eval_data.is_some() {
            return bad(
                "gate",
                "a gate needs eval_data (and eval_data a gate)".into(),
            );
        }
        Ok(())
    }
}

/// A rollout, as stored (`rollouts.object`) and as the admin API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Always `adapter.rollout`.
    pub object: String,
    /// The adapter name requests ask for.
    pub name: String,
    /// The version that answers everyone else.
    pub stable: u32,
    /// The version being promoted.
    pub candidate: u32,
    /// Where it is.
    pub status: Status,
    /// Index into `policy.steps` of the current step.
    pub step: usize,
    /// Share of users (0-100) the candidate answers now.
    pub percent: u32,
    /// How it proceeds.
    pub policy: Policy,
    /// Unix ms the current step began.
    pub step_started_at_ms: i64,
    /// Why it rolled back, failed its gate or holds.
    pub reason: Option<String>,
    /// The gate's details (each condition with its numbers).
    pub gate_result: Option<Vec<String>>,
    /// Unix seconds.
    pub created_at: i64,
}

impl Rollout {
    /// A new rollout of `candidate` over `stable`: gating first when there is a gate, else
    /// straight to the first step.
    pub fn new(name: &str, stable: u32, candidate: u32, policy: Policy, now_ms: i64) -> Self {
        let gating = policy.gate.is_some();
        Self {
            object: "adapter.rollout".into(),
            name: name.into(),
            stable,
            candidate,
            status: if gating {
                Status::Gating
            } else {
                Status::Canary
            },
            step: 0,
            percent: if gating { 0 } else { policy.steps[0] },
            policy,
            step_started_at_ms: now_ms,
            reason: None,
            gate_result: None,
            created_at: now_ms / 1000,
        }
    }

    /// The version that answers `user`: the candidate for the `percent` lowest buckets.
    pub fn version_for(&self, user: &str) -> u32 {
        let on_candidate = match self.status {
            Status::Canary => bucket(&self.name, user) < self.percent,
            Status::Promoted => true,
            Status::Gating | Status::RolledBack | Status::GateFailed => false,
        };
        if on_candidate {
            self.candidate
        } else {
            self.stable
        }
    }

    /// The start of the traffic the current step is judged on, and whether the step is old
    /// enough (one window) to be judged at all.
    pub fn window_start(&self, now_ms: i64) -> (i64, bool) {
        let window_ms = (self.policy.window_seconds as i64).saturating_mul(1000);
        let start = self.step_started_at_ms.max(now_ms - window_ms);
        (start, now_ms - self.step_started_at_ms >= window_ms)
    }
}

/// A user's bucket (0-99) for adapter `name`: sha256 of both, so a user keeps the bucket as the
/// percentage grows, and different adapters canary on different users.
pub fn bucket(name: &str, user: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([0])
        .chain_update(user.as_bytes())
        .finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(head) % 100) as u32
}

/// `90`, `"90"`, `"90s"`, `"10m"`, `"1h"` in seconds.
pub fn parse_duration(value: &Value) -> Result<u64, String> {
    let text = match value {
        Value::Number(n) => {
            return n
                .as_u64()
                .ok_or_else(|| format!("`{n}` is not a whole number of seconds"))
        }
        Value::String(s) => s.trim(),
        other => return Err(format!("`{other}` is not a duration")),
    };
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 10m or 1h"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// What a step's numbers say.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not enough data yet (never a pass).
    Hold(String),
    /// The candidate is no worse: next step.
    Advance(String),
    /// The candidate is worse: roll back.
    RollBack(String),
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Judges a step: hold until both versions have `min_requests` in the window; then roll back
/// when the candidate's error rate (or, with the feedback signal and enough verdicts, its
/// negative-feedback rate) exceeds `max_error_ratio` times stable's, else advance.
pub fn decide(stable: VersionStats, candidate: VersionStats, policy: &Policy) -> Decision {
    let min = policy.min_requests.max(1);
    if stable.requests < min || candidate.requests < min {
        return Decision::Hold(format!(
            "waiting for {min} requests on each version in the window (stable {}, candidate {})",
            stable.requests, candidate.requests
        ));
    }
    let ratio = policy.max_error_ratio;
    let (stable_errors, candidate_errors) = (
        rate(stable.failures, stable.requests),
        rate(candidate.failures, candidate.requests),
    );
    if candidate_errors > ratio * stable_errors {
        return Decision::RollBack(format!(
            "error rate {candidate_errors:.3} ({} of {}) exceeds {ratio}x stable's {stable_errors:.3} ({} of {})",
            candidate.failures, candidate.requests, stable.failures, stable.requests
        ));
    }
    let mut evidence = format!(
        "error rate {candidate_errors:.3} <= {ratio}x stable's {stable_errors:.3} over {} and {} requests",
        candidate.requests, stable.requests
    );
    if policy.feedback_signal {
        let min_feedback = policy.min_feedback;
        if stable.feedback < min_feedback || candidate.feedback < min_feedback {
            return Decision::Hold(format!(
                "waiting for {min_feedback} feedback verdicts on each version in the window (stable {}, candidate {})",
                stable.feedback, candidate.feedback
            ));
        }
        let (stable_negative, candidate_negative) = (
            rate(stable.negative, stable.feedback),
            rate(candidate.negative, candidate.feedback),
        );
        if candidate_negative > ratio * stable_negative {
            return Decision::RollBack(format!(
                "negative feedback {candidate_negative:.3} ({} of {}) exceeds {ratio}x stable's {stable_negative:.3} ({} of {})",
                candidate.negative, candidate.feedback, stable.negative, stable.feedback
            ));
        }
        evidence.push_str(&format!(
            "; negative feedback {candidate_negative:.3} <= {ratio}x stable's {stable_negative:.3}"
        ));
    }
    Decision::Advance(evidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(requests: u64, failures: u64, feedback: u64, negative: u64) -> VersionStats {
        VersionStats {
            requests,
            failures,
            feedback,
            negative,
        }
    }

    fn policy() -> Policy {
        Policy {
            min_requests: 50,
            min_feedback: 10,
            ..Policy::default()
        }
    }

    #[test]
    fn too_little_data_holds_and_never_passes() {
        let p = policy();
        let good = stats(1000, 0, 100, 0);
        assert!(matches!(
            decide(good, stats(49, 0, 49, 0), &p),
            Decision::Hold(_)
        ));
        assert!(matches!(
            decide(stats(49, 0, 0, 0), good, &p),
            Decision::Hold(_)
        ));
        // Enough requests but too few verdicts: still a hold, not a pass.
        assert!(matches!(
            decide(good, stats(60, 0, 9, 0), &p),
            Decision::Hold(_)
        ));
    }

    #[test]
    fn the_error_ratio_decides_at_one_and_a_half() {
        let p = policy();
        // Stable 10 %: the candidate may have 15 % and no more.
        let stable = stats(100, 10, 10, 1);
        assert!(matches!(
            decide(stable, stats(100, 15, 10, 1), &p),
            Decision::Advance(_)
        ));
        assert!(matches!(
            decide(stable, stats(100, 16, 10, 1), &p),
            Decision::RollBack(_)
        ));
        // A perfect stable: any candidate error rolls back.
        assert!(matches!(
            decide(stats(100, 0, 10, 0), stats(100, 1, 10, 0), &p),
            Decision::RollBack(_)
        ));
    }

    #[test]
    fn negative_feedback_is_a_second_signal() {
        let p = policy();
        let stable = stats(100, 0, 20, 4); // 20 % negative
        assert!(matches!(
            decide(stable, stats(100, 0, 20, 6), &p),
            Decision::Advance(_)
        ));
        let Decision::RollBack(why) = decide(stable, stats(100, 0, 20, 7), &p) else {
            panic!("35 % negative against 20 % must roll back");
        };
        assert!(why.contains("negative feedback"), "{why}");
        let off = Policy {
            feedback_signal: false,
            ..policy()
        };
        assert!(matches!(
            decide(stable, stats(100, 0, 20, 20), &off),
            Decision::Advance(_)
        ));
    }

    #[test]
    fn users_keep_their_bucket_and_buckets_are_uniform() {
        let mut rollout = Rollout::new("support", 1, 2, policy(), 0);
        let users: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let mut previous: Vec<u32> = users.iter().map(|u| rollout.version_for(u)).collect();
        for percent in [5, 25, 50] {
            rollout.percent = percent;
            let now: Vec<u32> = users.iter().map(|u| rollout.version_for(u)).collect();
            // Nobody on the candidate goes back to stable as the share grows.
            assert!(previous.iter().zip(&now).all(|(p, n)| *p == 1 || *n == 2));
            let share = now.iter().filter(|v| **v == 2).count() as f64 / users.len() as f64;
            assert!(
                (share * 100.0 - f64::from(percent)).abs() < 1.5,
                "{percent}: {share}"
            );
            previous = now;
        }
        // Another adapter's canary falls on other users.
        let same = users
            .iter()
            .filter(|u| bucket("support", u) == bucket("other", u))
            .count();
        assert!(
            same < users.len() / 20,
            "{same} of {} share a bucket",
            users.len()
        );
    }

    #[test]
    fn policies_are_checked() {
        let mut p = Policy::default();
        assert!(p.check().is_ok());
        p.steps = vec![5, 25];
        assert_eq!(p.check().unwrap_err().0, "steps");
        p.steps = vec![25, 5, 100];
        assert_eq!(p.check().unwrap_err().0, "steps");
        p = Policy {
            gate: Some("judge_win_rate>0.7".into()),
            ..Policy::default()
        };
        assert_eq!(p.check().unwrap_err().0, "gate");
    }
}
