//! `ft serve`'s closed-loop flags (request log, failure injection, the retrain trigger) and
//! `ft adapters`: versions, promotion, rollback and events through a running server's admin API.

use std::time::Duration;

use anyhow::Context;
use ft::serve::closed_loop::rollout::{parse_duration, Policy};
use ft::serve::closed_loop::RetrainPolicy;
use ft::serve::ClosedLoopConfig;
use serde_json::{json, Value};

/// The closed loop's flags of `ft serve` (it runs whenever --state-dir is given).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Keep every request's conversation in the request log, not only requests that send
    /// `"store": true` (corrections in feedback need the conversation).
    #[arg(long)]
    store_completions: bool,
    /// Allow `POST /v1/admin/faults` to make a version's requests fail (drills and tests).
    #[arg(long)]
    fault_injection: bool,
    /// Start a fine-tuning job when the stable version's negative feedback passes
    /// --retrain-negative-rate; its adapter is then gated and rolled out as a candidate.
    #[arg(long)]
    auto_retrain: bool,
    /// Share of negative feedback that triggers a retrain.
    #[arg(long, default_value_t = 0.3)]
    retrain_negative_rate: f64,
    /// Verdicts needed in the window before the trigger can fire.
    #[arg(long, default_value_t = 50)]
    retrain_min_samples: u64,
    /// The trigger's window (e.g. 30m, 1h, 3600).
    #[arg(long, default_value = "1h")]
    retrain_window: String,
    /// Gate of a retrained candidate against stable, on the corrected conversations
    /// ("none" for no gate).
    #[arg(long, default_value = "rougeL>=base")]
    retrain_gate: String,
    /// Canary steps of a retrained candidate.
    #[arg(long, default_value = "5,25,50,100")]
    retrain_steps: String,
    /// Requests each version needs per step of a retrained candidate's rollout.
    #[arg(long, default_value_t = 100)]
    retrain_min_requests: u64,
    /// Window of each step of a retrained candidate's rollout.
    #[arg(long, default_value = "10m")]
    retrain_rollout_window: String,
    /// Verdicts each version needs per step before the feedback signal counts.
    #[arg(long, default_value_t = 20)]
    retrain_min_feedback: u64,
    /// How often the controller writes the request log and judges rollouts.
    #[arg(long, default_value = "1s")]
    check_interval: String,
}

fn seconds(flag: &str, text: &str) -> anyhow::Result<u64> {
    parse_duration(&Value::String(text.to_string())).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

fn steps(flag: &str, text: &str) -> anyhow::Result<Vec<u32>> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse::<u32>()
                .with_context(|| format!("{flag} {text}: `{s}` is not a percentage"))
        })
        .collect()
}

impl ServeArgs {
    /// The closed loop's settings for a server reachable at `self_url`.
    pub fn config(
        &self,
        self_url: String,
        api_key: Option<String>,
    ) -> anyhow::Result<ClosedLoopConfig> {
        let retrain = if self.auto_retrain {
            if !(0.0..1.0).contains(&self.retrain_negative_rate) {
                anyhow::bail!("--retrain-negative-rate must be from 0 to 1");
            }
            let gate = (self.retrain_gate != "none").then(|| self.retrain_gate.clone());
            let promote = Policy {
                steps: steps("--retrain-steps", &self.retrain_steps)?,
                min_requests: self.retrain_min_requests,
                window_seconds: seconds("--retrain-rollout-window", &self.retrain_rollout_window)?,
                min_feedback: self.retrain_min_feedback,
                // The corrections file is the eval data; it is known once the job runs.
                eval_data: None,
                gate,
                ..Policy::default()
            };
            let mut check = promote.clone();
            check.eval_data = check.gate.as_ref().map(|_| String::from("-"));
            check
                .check()
                .map_err(|(field, why)| anyhow::anyhow!("--retrain-{field}: {why}"))?;
            Some(RetrainPolicy {
                negative_rate: self.retrain_negative_rate,
                min_samples: self.retrain_min_samples,
                window_seconds: seconds("--retrain-window", &self.retrain_window)?,
                promote,
            })
        } else {
            None
        };
        Ok(ClosedLoopConfig {
            self_url,
            api_key,
            store_completions: self.store_completions,
            fault_injection: self.fault_injection,
            retrain,
            check_interval: Duration::from_secs(
                seconds("--check-interval", &self.check_interval)?.max(1),
            ),
        })
    }
}

/// Arguments of `ft adapters`.
#[derive(Debug, clap::Args)]
pub struct AdaptersArgs {
    /// The server's base URL.
    #[arg(long, env = "FT_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Its API key.
    #[arg(long, env = "FT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: AdaptersCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AdaptersCommand {
    /// Add a version to NAME: a served model's adapter (--model) or a directory under the
    /// server's --adapters-dir (--path). The first version is stable, later ones candidates.
    Add {
        /// The adapter name requests ask for.
        name: String,
        /// A stored model, e.g. a job's fine_tuned_model.
        #[arg(long)]
        model: Option<String>,
        /// A directory under --adapters-dir.
        #[arg(long)]
        path: Option<String>,
    },
    /// List NAME's versions and their states.
    Versions {
        /// The adapter name.
        name: String,
    },
    /// Promote NAME@N over the stable version: gate, then canary steps with automatic rollback.
    Promote {
        /// NAME@N.
        target: String,
        /// Canary percentages, ending at 100.
        #[arg(long, default_value = "5,25,50,100")]
        steps: String,
        /// Requests each version needs within the window before a step is judged.
        #[arg(long, default_value_t = 100)]
        min_requests: u64,
        /// Each step runs at least this long and is judged on its last window (30s, 10m, 1h).
        #[arg(long, default_value = "10m")]
        window: String,
        /// Roll back when the candidate's error rate exceeds this times stable's.
        #[arg(long, default_value_t = 1.5)]
        max_error_ratio: f64,
        /// Verdicts each version needs before negative feedback counts as a signal.
        #[arg(long, default_value_t = 20)]
        min_feedback: u64,
        /// Judge on errors only, not on negative feedback.
        #[arg(long)]
        no_feedback_signal: bool,
        /// `ft eval` gate against stable first, e.g. "judge_win_rate>0.7".
        #[arg(long, requires = "eval_data")]
        gate: Option<String>,
        /// The gate's test split (a path on the server).
        #[arg(long, requires = "gate")]
        eval_data: Option<String>,
        /// The judge's model (default: the served base).
        #[arg(long)]
        judge_model: Option<String>,
    },
    /// Show NAME's rollout with the numbers of its current window.
    Status {
        /// The adapter name.
        name: String,
    },
    /// Roll NAME's candidate back now.
    Rollback {
        /// The adapter name.
        name: String,
    },
    /// NAME's registry events (promotions, steps, rollbacks, gates, retrains).
    Events {
        /// The adapter name.
        name: String,
    },
}

impl AdaptersArgs {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let mut request = ureq::request(method, &url).timeout(Duration::from_secs(60));
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match response {
            Ok(response) => Ok(response.into_json()?),
            Err(ureq::Error::Status(code, response)) => {
                let body: Value = response.into_json().unwrap_or(Value::Null);
                let message = body["error"]["message"].as_str().unwrap_or("no message");
                anyhow::bail!("{method} {url}: {code}: {message}")
            }
            Err(e) => anyhow::bail!("{method} {url}: {e}"),
        }
    }
}

fn encoded(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `ft adapters …`, printing the server's JSON answer.
pub fn run(args: AdaptersArgs) -> anyhow::Result<()> {
    let answer = match &args.command {
        AdaptersCommand::Add { name, model, path } => args.call(
            "POST",
            &format!("/v1/adapters/{}/versions", encoded(name)),
            Some(json!({"model": model, "path": path})),
        )?,
        AdaptersCommand::Versions { name } => args.call(
            "GET",
            &format!("/v1/adapters/{}/versions", encoded(name)),
            None,
        )?,
        AdaptersCommand::Promote {
            target,
            steps: step_list,
            min_requests,
            window,
            max_error_ratio,
            min_feedback,
            no_feedback_signal,
            gate,
            eval_data,
            judge_model,
        } => {
            let (name, version) = target
                .rsplit_once('@')
                .and_then(|(n, v)| Some((n, v.parse::<u32>().ok()?)))
                .with_context(|| format!("`{target}`: give NAME@VERSION, e.g. support@2"))?;
            let body = json!({
                "version": version,
                "steps": steps("--steps", step_list)?,
                "min_requests": min_requests,
                "window": seconds("--window", window)?,
                "max_error_ratio": max_error_ratio,
                "min_feedback": min_feedback,
                "feedback_signal": !no_feedback_signal,
                "gate": gate,
                "eval_data": eval_data,
                "judge_model": judge_model,
            });
            args.call(
                "POST",
                &format!("/v1/adapters/{}/promote", encoded(name)),
                Some(body),
            )?
        }
        AdaptersCommand::Status { name } => args.call(
            "GET",
            &format!("/v1/adapters/{}/rollout", encoded(name)),
            None,
        )?,
        AdaptersCommand::Rollback { name } => args.call(
            "POST",
            &format!("/v1/adapters/{}/rollback", encoded(name)),
            Some(json!({})),
        )?,
        AdaptersCommand::Events { name } => args.call(
            "GET",
            &format!("/v1/adapters/{}/events", encoded(name)),
            None,
        )?,
    };
    let mut stdout = std::io::stdout().lock();
    use std::io::Write;
    writeln!(stdout, "{}", serde_json::to_string_pretty(&answer)?)?;
    Ok(())
}
