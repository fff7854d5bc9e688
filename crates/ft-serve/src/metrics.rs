//! Prometheus metrics in the text exposition format, kept in memory (no exporter crate:
//! a handful of counters and histograms is a page of code).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Upper bounds of `llm_latency_seconds` buckets.
pub const LATENCY_BUCKETS: [f64; 7] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];
/// Upper bounds of `llm_time_to_first_token_seconds` buckets.
pub const TTFT_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// `key="value",...` with Prometheus escaping.
fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, Default)]
struct Series {
    requests: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    tokens: BTreeMap<String, u64>,
    timeouts: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram>,
    ttft: BTreeMap<String, Histogram>,
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<Series>,
    active: AtomicI64,
}

impl Metrics {
    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a finished request and its latency; errors (status ≥ 400) also count in
    /// `llm_errors_total`.
    pub fn request_finished(&self, model: &str, endpoint: &str, status: u16, seconds: f64) {
        let status_text = status.to_string();
        let mut series = self.series();
        let key = labels(&[
            ("model", model),
            ("status", &status_text),
            ("endpoint", endpoint),
        ]);
        *series.requests.entry(key).or_default() += 1;
        if status >= 400 {
            let key = labels(&[
                ("model", model),
                ("endpoint", endpoint),
                ("status", &status_text),
            ]);
            *series.errors.entry(key).or_default() += 1;
        }
        series
            .latency
            .entry(labels(&[("model", model), ("endpoint", endpoint)]))
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// Counts a request cut short by `--max-request-seconds`.
    pub fn request_timed_out(&self, model: &str, endpoint: &str) {
        let key = labels(&[("model", model), ("endpoint", endpoint)]);
        *self.series().timeouts.entry(key).or_default() += 1;
    }

    /// Counts prompt or completion tokens (`token_type` = `prompt` | `completion`).
    pub fn tokens(&self, model: &str, token_type: &str, n: usize) {
        let key = labels(&[("model", model), ("token_type", token_type)]);
        *self.series().tokens.entry(key).or_default() += n as u64;
    }

    /// Records the time from a request's arrival to its first generated text.
    pub fn time_to_first_token(&self, model: &str, seconds: f64) {
        self.series()
            .ttft
            .entry(labels(&[("model", model)]))
            .or_insert_with(|| Histogram::new(&TTFT_BUCKETS))
            .observe(seconds);
    }

    /// One more request in flight.
    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    /// One fewer request in flight.
    pub fn request_ended(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// The exposition text, with the engine's queue depth, running sequences and prefix
    /// reuse (`(prompts, tokens)`, see [`crate::engine::Engine::prefix_cache_stats`]).
    pub fn render(&self, queue_depth: usize, running: usize, prefix: (u64, u64)) -> String {
        let series = self.series();
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, map: &BTreeMap<String, u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in map {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        counter(
            &mut out,
            "llm_requests_total",
            "Requests by model, HTTP status and endpoint.",
            &series.requests,
        );
        counter(
            &mut out,
            "llm_errors_total",
            "Requests that ended with an error status.",
            &series.errors,
        );
        counter(
            &mut out,
            "llm_tokens_total",
            "Prompt and completion tokens.",
            &series.tokens,
        );
        counter(
            &mut out,
            "llm_request_timeouts_total",
            "Requests ended by --max-request-seconds (finish_reason length).",
            &series.timeouts,
        );
        let total = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        total(
            &mut out,
            "llm_prefix_cache_hits_total",
            "Prompts prefilled from a stored prefix of an earlier prompt.",
            prefix.0,
        );
        total(
            &mut out,
            "llm_prefix_cache_reused_tokens_total",
            "Prompt tokens whose keys and values came from the prefix store.",
            prefix.1,
        );
        let histogram =
            |out: &mut String, name: &str, help: &str, map: &BTreeMap<String, Histogram>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
                for (labels, h) in map {
                    h.render(out, name, labels);
                }
            };
        histogram(
            &mut out,
            "llm_latency_seconds",
            "Request latency, arrival to last byte.",
            &series.latency,
        );
        histogram(
            &mut out,
            "llm_time_to_first_token_seconds",
            "Arrival to first generated text.",
            &series.ttft,
        );
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "llm_active_requests",
            "Requests in flight.",
            self.active.load(Ordering::SeqCst),
        );
        gauge(
            &mut out,
            "llm_queue_depth",
            "Sequences waiting for a decode slot.",
            queue_depth as i64,
        );
        gauge(
            &mut out,
            "llm_running_sequences",
            "Sequences in the decode batch.",
            running as i64,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = Metrics::default();
        metrics.request_finished("base", "/v1/chat/completions", 200, 0.3);
        metrics.request_finished("base", "/v1/chat/completions", 404, 0.01);
        metrics.tokens("base", "completion", 7);
        metrics.request_timed_out("base", "/v1/completions");
        let text = metrics.render(2, 1, (3, 40));
        assert!(text.contains(
            "llm_requests_total{model=\"base\",status=\"200\",endpoint=\"/v1/chat/completions\"} 1"
        ));
        assert!(text.contains(
            "llm_errors_total{model=\"base\",endpoint=\"/v1/chat/completions\",status=\"404\"} 1"
        ));
        assert!(text.contains("llm_tokens_total{model=\"base\",token_type=\"completion\"} 7"));
        // 0.3 s falls in le=0.5 and above, not le=0.1; 0.01 s falls in all.
        assert!(text.contains(
            "llm_latency_seconds_bucket{model=\"base\",endpoint=\"/v1/chat/completions\",le=\"0.1\"} 1"
        ));
        assert!(text.contains(
            "llm_latency_seconds_bucket{model=\"base\",endpoint=\"/v1/chat/completions\",le=\"0.5\"} 2"
        ));
        assert!(text.contains("llm_queue_depth 2"));
        assert!(text.contains("llm_prefix_cache_reused_tokens_total 40"));
        assert!(text
            .contains("llm_request_timeouts_total{model=\"base\",endpoint=\"/v1/completions\"} 1"));
    }
}
