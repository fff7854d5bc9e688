//! The controller: once per check it writes the request log, judges every canary step that
//! is one window old, runs gates, watches retrain jobs and refreshes the metrics. Every
//! decision is stored before it takes effect, so a restarted server resumes the same step
//! with the same users on each version.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ft_eval::evaluate::{evaluate, Candidate, EvalOptions, Metric};
use ft_eval::gate::Gate;
use ft_eval::judge::JudgeConfig;
use ft_store::AdapterVersion;
use serde_json::{json, Value};

use super::rollout::{decide, Decision, Policy, Rollout, Status};
use super::{lock, store_error, ClosedLoop};
use crate::error::ApiError;

/// The controller thread's loop.
pub(super) fn run(closed_loop: &Arc<ClosedLoop>) {
    while !closed_loop.stopping.load(Ordering::SeqCst) {
        check(closed_loop);
        let guard = lock(&closed_loop.wake_lock);
        let _ = closed_loop
            .wake
            .wait_timeout(guard, closed_loop.config.check_interval);
    }
}

/// One check: log, rollouts, retrains, metrics. Failures are logged; the next check retries.
pub fn check(closed_loop: &Arc<ClosedLoop>) {
    closed_loop.flush_log();
    if let Err(e) = closed_loop.reload() {
        tracing::error!("cannot read the rollouts: {e}");
        return;
    }
    let now = ft_store::unix_now_ms();
    let canaries: Vec<Rollout> = lock(&closed_loop.rollouts)
        .values()
        .filter(|r| r.status == Status::Canary)
        .cloned()
        .collect();
    for rollout in canaries {
        if let Err(e) = judge_step(closed_loop, rollout, now) {
            tracing::error!("rollout check failed: {}", e.detail.message);
        }
    }
    if closed_loop.config.retrain.is_some() {
        super::retrain::check(closed_loop, now);
    }
    refresh_metrics(closed_loop, now);
}

/// Every version of `name`.
fn versions_of(closed_loop: &ClosedLoop, name: &str) -> Result<Vec<AdapterVersion>, ApiError> {
    Ok(closed_loop
        .service
        .store()
        .adapter_versions()
        .map_err(store_error)?
        .into_iter()
        .filter(|v| v.name == name)
        .collect())
}

/// Starts promoting `name@candidate` over the stable version: the gate first when the policy
/// has one, else the first canary step.
pub fn promote(
    closed_loop: &Arc<ClosedLoop>,
    name: &str,
    candidate: u32,
    policy: Policy,
) -> Result<Rollout, ApiError> {
    policy
        .check()
        .map_err(|(field, why)| ApiError::invalid(&field, why))?;
    if let Some(gate) = &policy.gate {
        Gate::parse(gate).map_err(|e| ApiError::invalid("gate", e.to_string()))?;
    }
    if let Some(data) = &policy.eval_data {
        if !std::path::Path::new(data).is_file() {
            return Err(ApiError::invalid(
                "eval_data",
                format!("no such file on the server: {data}"),
            ));
        }
    }
    if let Some(active) = closed_loop.rollout(name).filter(|r| r.status.active()) {
        return Err(ApiError::from_status(
            axum::http::StatusCode::CONFLICT,
            format!(
                "{name}@{} is being promoted already; roll it back first",
                active.candidate
            ),
        ));
    }
    let versions = versions_of(closed_loop, name)?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no adapter named `{name}`")));
    }
    let base = closed_loop.service.base_id();
    let Some(wanted) = versions.iter().find(|v| v.version == candidate) else {
        return Err(ApiError::invalid(
            "version",
            format!("{name} has no version {candidate}"),
        ));
    };
    if wanted.base != base {
        return Err(ApiError::invalid(
            "version",
            format!(
                "{name}@{candidate} was trained on `{}`, not on `{base}`",
                wanted.base
            ),
        ));
    }
    let Some(stable) = versions
        .iter()
        .filter(|v| v.state == "stable")
        .map(|v| v.version)
        .max()
    else {
        return Err(ApiError::invalid(
            "version",
            format!("{name} has no stable version"),
        ));
    };
    if stable == candidate {
        return Err(ApiError::invalid(
            "version",
            format!("{name}@{candidate} is the stable version already"),
        ));
    }
    let rollout = Rollout::new(name, stable, candidate, policy, ft_store::unix_now_ms());
    closed_loop.save(&rollout)?;
    let store = closed_loop.service.store();
    let state = if rollout.status == Status::Canary {
        "canary"
    } else {
        "candidate"
    };
    store
        .set_version_state(name, candidate, state)
        .map_err(store_error)?;
    closed_loop.event(
        name,
        Some(candidate),
        "promotion_started",
        &format!(
            "promoting {name}@{candidate} over {name}@{stable} in steps {:?}",
            rollout.policy.steps
        ),
    );
    if rollout.status == Status::Gating {
        start_gate(closed_loop, name);
    } else {
        step_event(closed_loop, &rollout);
    }
    Ok(rollout)
}

fn step_event(closed_loop: &ClosedLoop, rollout: &Rollout) {
    closed_loop.event(
        &rollout.name,
        Some(rollout.candidate),
        "canary_step",
        &format!(
            "{}@{} answers {} % of users",
            rollout.name, rollout.candidate, rollout.percent
        ),
    );
}

/// Rolls the candidate of `name` back: no user gets it from now on.
pub fn roll_back(closed_loop: &ClosedLoop, name: &str, reason: &str) -> Result<Rollout, ApiError> {
    let Some(mut rollout) = closed_loop.rollout(name).filter(|r| r.status.active()) else {
        return Err(ApiError::not_found(format!(
            "`{name}` has no rollout in progress"
        )));
    };
    rollout.status = Status::RolledBack;
    rollout.percent = 0;
    rollout.reason = Some(reason.to_string());
    closed_loop.save(&rollout)?;
    closed_loop
        .service
        .store()
        .set_version_state(name, rollout.candidate, "rolled_back")
        .map_err(store_error)?;
    closed_loop.event(
        name,
        Some(rollout.candidate),
        "rolled_back",
        &format!("{name}@{} rolled back: {reason}", rollout.candidate),
    );
    Ok(rollout)
}

/// Judges the current step of a canary on the last window of its traffic.
fn judge_step(closed_loop: &ClosedLoop, mut rollout: Rollout, now: i64) -> Result<(), ApiError> {
    let (start, old_enough) = rollout.window_start(now);
    if !old_enough {
        return Ok(());
    }
    let stats: BTreeMap<u32, ft_store::VersionStats> = closed_loop
        .service
        .store()
        .version_stats(&rollout.name, start)
        .map_err(store_error)?
        .into_iter()
        .collect();
    let of = |v: u32| stats.get(&v).copied().unwrap_or_default();
    match decide(of(rollout.stable), of(rollout.candidate), &rollout.policy) {
        Decision::Hold(why) => {
            if rollout.reason.as_deref() != Some(why.as_str()) {
                rollout.reason = Some(why);
                closed_loop.save(&rollout)?;
            }
        }
        Decision::RollBack(why) => {
            roll_back(closed_loop, &rollout.name, &why)?;
        }
        Decision::Advance(why) => {
            rollout.step += 1;
            rollout.reason = Some(why);
            rollout.step_started_at_ms = now;
            match rollout.policy.steps.get(rollout.step).copied() {
                Some(percent) if percent < 100 => {
                    rollout.percent = percent;
                    closed_loop.save(&rollout)?;
                    step_event(closed_loop, &rollout);
                }
                _ => finish_promotion(closed_loop, rollout)?,
            }
        }
    }
    Ok(())
}

/// The candidate reached 100 %: it becomes stable and the old stable retires.
fn finish_promotion(closed_loop: &ClosedLoop, mut rollout: Rollout) -> Result<(), ApiError> {
    let name = rollout.name.clone();
    let versions = versions_of(closed_loop, &name)?;
    let Some(candidate) = versions.iter().find(|v| v.version == rollout.candidate) else {
        return Err(ApiError::internal(format!(
            "{name}@{} is gone from the store",
            rollout.candidate
        )));
    };
    let store = closed_loop.service.store();
    store
        .set_version_state(&name, rollout.candidate, "stable")
        .map_err(store_error)?;
    store
        .set_version_state(&name, rollout.stable, "retired")
        .map_err(store_error)?;
    // Requests that name no rollout (and a restarted server) get the new stable version.
    let dir = closed_loop.service.resolve_dir(&candidate.dir);
    closed_loop
        .service
        .registry()
        .register(&name, &dir, u64::from(rollout.candidate))?;
    rollout.status = Status::Promoted;
    rollout.percent = 100;
    closed_loop.save(&rollout)?;
    closed_loop.event(
        &name,
        Some(rollout.candidate),
        "promoted",
        &format!(
            "{name}@{} is stable; {name}@{} retired",
            rollout.candidate, rollout.stable
        ),
    );
    Ok(())
}

/// Runs the gate of `name`'s rollout on a thread of its own (evaluation generates with the
/// base model and asks the judge over HTTP, which may be this very server).
pub(super) fn start_gate(closed_loop: &Arc<ClosedLoop>, name: &str) {
    let closed_loop = closed_loop.clone();
    let name = name.to_string();
    let spawned = std::thread::Builder::new()
        .name("ft-gate".into())
        .spawn(move || {
            let outcome = run_gate(&closed_loop, &name);
            if let Err(e) = finish_gate(&closed_loop, &name, outcome) {
                tracing::error!(adapter = %name, "cannot record the gate: {}", e.detail.message);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start a gate: {e}");
    }
}

/// The gate's verdict: passed, and the details of each condition.
fn run_gate(closed_loop: &ClosedLoop, name: &str) -> Result<(bool, Vec<String>), String> {
    let rollout = closed_loop
        .rollout(name)
        .ok_or_else(|| format!("no rollout of {name}"))?;
    let (Some(expression), Some(data)) = (&rollout.policy.gate, &rollout.policy.eval_data) else {
        return Ok((true, vec!["no gate".into()]));
    };
    let gate = Gate::parse(expression).map_err(|e| e.to_string())?;
    let registry = closed_loop.service.registry();
    let mut candidates = Vec::new();
    for (label, version) in [("stable", rollout.stable), ("candidate", rollout.candidate)] {
        let resolved = registry
            .resolve(&format!("{name}@{version}"))
            .map_err(|e| e.detail.message)?;
        candidates.push(Candidate {
            name: label.into(),
            adapter: Some(resolved.adapter),
            source: None,
        });
    }
    let wanted = gate.metrics();
    let metrics = Metric::parse_list(
        &wanted
            .iter()
            .filter(|m| !m.starts_with("judge_"))
            .copied()
            .collect::<Vec<_>>()
            .join(","),
    )
    .map_err(|e| e.to_string())?;
    let judge = wanted
        .iter()
        .any(|m| m.starts_with("judge_"))
        .then(|| JudgeConfig {
            url: closed_loop.config.self_url.clone(),
            model: rollout
                .policy
                .judge_model
                .clone()
                .unwrap_or_else(|| closed_loop.service.base_id().to_string()),
            api_key: closed_loop.config.api_key.clone(),
            retries: 2,
            timeout: Duration::from_secs(120),
        });
    let options = EvalOptions {
        metrics,
        max_new_tokens: 64,
        judge,
        ..EvalOptions::default()
    };
    let base = registry.base().clone();
    let report =
        evaluate(&base, &PathBuf::from(data), &candidates, &options).map_err(|e| e.to_string())?;
    let metrics_of = |label: &str| {
        report
            .models
            .iter()
            .find(|m| m.name == label)
            .map(|m| m.metrics.clone())
            .unwrap_or_default()
    };
    // `*base` thresholds compare with the stable version.
    let result = gate.check(
        "candidate",
        &metrics_of("candidate"),
        Some(&metrics_of("stable")),
    );
    Ok((result.passed, result.details))
}

fn finish_gate(
    closed_loop: &ClosedLoop,
    name: &str,
    outcome: Result<(bool, Vec<String>), String>,
) -> Result<(), ApiError> {
    let Some(mut rollout) = closed_loop
        .rollout(name)
        .filter(|r| r.status == Status::Gating)
    else {
        return Ok(()); // rolled back (cancelled) while the gate ran
    };
    let expression = rollout.policy.gate.clone().unwrap_or_default();
    match outcome {
        Ok((true, details)) => {
            rollout.status = Status::Canary;
            rollout.percent = rollout.policy.steps[0];
            rollout.step_started_at_ms = ft_store::unix_now_ms();
            rollout.gate_result = Some(details.clone());
            closed_loop.save(&rollout)?;
            closed_loop
                .service
                .store()
                .set_version_state(name, rollout.candidate, "canary")
                .map_err(store_error)?;
            closed_loop.event(
                name,
                Some(rollout.candidate),
                "gate_passed",
                &format!("gate `{expression}` passed: {}", details.join("; ")),
            );
            step_event(closed_loop, &rollout);
        }
        Ok((false, details)) => {
            let reason = format!("gate `{expression}` failed: {}", details.join("; "));
            rollout.status = Status::GateFailed;
            rollout.reason = Some(reason.clone());
            rollout.gate_result = Some(details);
            closed_loop.save(&rollout)?;
            closed_loop.event(name, Some(rollout.candidate), "gate_failed", &reason);
        }
        Err(error) => {
            let reason = format!("gate `{expression}` could not run: {error}");
            rollout.status = Status::GateFailed;
            rollout.reason = Some(reason.clone());
            closed_loop.save(&rollout)?;
            closed_loop.event(name, Some(rollout.candidate), "gate_failed", &reason);
        }
    }
    Ok(())
}

/// Feedback totals, negative rates and drift signals for `/metrics`.
fn refresh_metrics(closed_loop: &ClosedLoop, now: i64) {
    let store = closed_loop.service.store();
    let mut text = String::new();
    text.push_str("# HELP llm_feedback_total Feedback verdicts by model, version and score.\n");
    text.push_str("# TYPE llm_feedback_total counter\n");
    match store.feedback_totals() {
        Ok(rows) => {
            for ft_store::FeedbackTotal {
                model,
                version,
                score,
                count,
            } in rows
            {
                let version = version.map_or_else(String::new, |v| v.to_string());
                let _ = writeln!(
                    text,
                    "llm_feedback_total{{model=\"{model}\",version=\"{version}\",score=\"{score}\"}} {count}"
                );
            }
        }
        Err(e) => tracing::error!("feedback totals: {e}"),
    }
    // Drift: this window against the one before, per model asked for in either.
    let window_ms = 600_000;
    let models = store.logged_models(now - 2 * window_ms).unwrap_or_default();
    let mut drift = String::new();
    for model in &models {
        for (label, from, to) in [
            ("current", now - window_ms, now + 1),
            ("previous", now - 2 * window_ms, now - window_ms),
        ] {
            let Ok(t) = store.traffic(model, from, to) else {
                continue;
            };
            let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            let labels = format!("model=\"{model}\",window=\"{label}\"");
            let _ = writeln!(drift, "ft_drift_requests{{{labels}}} {}", t.requests);
            let _ = writeln!(
                drift,
                "ft_drift_negative_feedback_rate{{{labels}}} {:.6}",
                ratio(t.negative, t.feedback)
            );
            let _ = writeln!(
                drift,
                "ft_drift_cache_miss_rate{{{labels}}} {:.6}",
                1.0 - ratio(t.cache_hits, t.requests.max(1))
            );
            let _ = writeln!(
                drift,
                "ft_drift_prompt_tokens_mean{{{labels}}} {:.3}",
                ratio(t.prompt_tokens, t.requests)
            );
        }
    }
    text.push_str("# HELP ft_drift_requests Requests per model over the last 10 minutes (current) and the 10 before (previous); with ft_drift_negative_feedback_rate, ft_drift_cache_miss_rate and ft_drift_prompt_tokens_mean, the drift signals.\n");
    text.push_str("# TYPE ft_drift_requests gauge\n");
    text.push_str(&drift);
    // Negative-feedback rate of each version in its rollout's window.
    text.push_str("# HELP ft_negative_feedback_rate Negative share of feedback per version in the current rollout window.\n");
    text.push_str("# TYPE ft_negative_feedback_rate gauge\n");
    let rollouts: Vec<Rollout> = lock(&closed_loop.rollouts).values().cloned().collect();
    for rollout in &rollouts {
        let (start, _) = rollout.window_start(now);
        for (version, stats) in store
            .version_stats(&rollout.name, start)
            .unwrap_or_default()
        {
            let rate = if stats.feedback == 0 {
                0.0
            } else {
                stats.negative as f64 / stats.feedback as f64
            };
            let _ = writeln!(
                text,
                "ft_negative_feedback_rate{{model=\"{}\",version=\"{version}\"}} {rate:.6}",
                rollout.name
            );
        }
    }
    // Rollbacks, promotions, steps, gates and retrains, as counters.
    text.push_str("# HELP ft_registry_events_total Registry events by adapter and kind (rolled_back, promoted, canary_step, gate_failed, retrain_started, ...).\n");
    text.push_str("# TYPE ft_registry_events_total counter\n");
    for (name, kind, count) in store.registry_event_counts().unwrap_or_default() {
        let _ = writeln!(
            text,
            "ft_registry_events_total{{model=\"{name}\",kind=\"{kind}\"}} {count}"
        );
    }
    *lock(&closed_loop.metrics_text) = text;
}

/// A rollout as the admin API shows it: stored fields plus the live numbers of its window.
pub fn describe(closed_loop: &ClosedLoop, rollout: &Rollout) -> Value {
    let mut value = serde_json::to_value(rollout).unwrap_or(Value::Null);
    let now = ft_store::unix_now_ms();
    let (start, old_enough) = rollout.window_start(now);
    let stats = closed_loop
        .service
        .store()
        .version_stats(&rollout.name, start)
        .unwrap_or_default();
    let window: Vec<Value> = stats
        .iter()
        .map(|(version, s)| {
            json!({"version": version, "requests": s.requests, "failures": s.failures,
                   "feedback": s.feedback, "negative": s.negative})
        })
        .collect();
    value["window"] = json!({"since_ms": start, "judged": old_enough, "versions": window});
    value
}
