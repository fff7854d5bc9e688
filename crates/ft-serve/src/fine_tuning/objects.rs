//! The OpenAI objects of fine-tuning (`file`, `fine_tuning.job`, `fine_tuning.job.event`,
//! `fine_tuning.job.checkpoint`) and the create request, read as openai-python sends it.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// A hyperparameter as sent: `"auto"` or a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting<T> {
    /// Chosen by the server.
    Auto,
    /// Chosen by the client.
    Value(T),
}

impl<T: Copy + Into<Value>> Setting<T> {
    fn to_json(self) -> Value {
        match self {
            Self::Auto => json!("auto"),
            Self::Value(v) => v.into(),
        }
    }
}

/// `hyperparameters`, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyperparameters {
    /// Passes over the training file.
    pub n_epochs: Setting<u64>,
    /// Examples per optimizer step.
    pub batch_size: Setting<u64>,
    /// Scales the recipe's learning rate.
    pub learning_rate_multiplier: Setting<f64>,
}

impl Hyperparameters {
    /// As the job object shows them.
    pub fn to_json(self) -> Value {
        json!({
            "n_epochs": self.n_epochs.to_json(),
            "batch_size": self.batch_size.to_json(),
            "learning_rate_multiplier": self.learning_rate_multiplier.to_json(),
        })
    }

    /// Reads them back from a stored job (all `"auto"` if they do not parse).
    pub fn from_json(value: &Value) -> Self {
        Self::parse(Some(value), "hyperparameters").unwrap_or(Self {
            n_epochs: Setting::Auto,
            batch_size: Setting::Auto,
            learning_rate_multiplier: Setting::Auto,
        })
    }

    fn parse(value: Option<&Value>, param: &str) -> Result<Self, ApiError> {
        let empty = Map::new();
        let fields = match value {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(map)) => map,
            Some(_) => {
                return Err(ApiError::invalid(
                    param,
                    format!("`{param}` must be an object"),
                ))
            }
        };
        if let Some(unknown) = fields.keys().find(|k| {
            !matches!(
                k.as_str(),
                "n_epochs" | "batch_size" | "learning_rate_multiplier"
            )
        }) {
            return Err(ApiError::invalid(
                &format!("{param}.{unknown}"),
                format!("unknown hyperparameter `{unknown}` (n_epochs, batch_size, learning_rate_multiplier)"),
            ));
        }
        let integer = |name: &str, max: u64| -> Result<Setting<u64>, ApiError> {
            let field = format!("{param}.{name}");
            match fields.get(name) {
                None | Some(Value::Null) => Ok(Setting::Auto),
                Some(Value::String(s)) if s == "auto" => Ok(Setting::Auto),
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=max).contains(&n) => Ok(Setting::Value(n)),
                    _ => Err(ApiError::invalid(
                        &field,
                        format!(
                            "`{field}` must be \"auto\" or an integer from 1 to {max}, got {v}"
                        ),
                    )),
                },
            }
        };
        let multiplier = {
            let field = format!("{param}.learning_rate_multiplier");
            match fields.get("learning_rate_multiplier") {
                None | Some(Value::Null) => Setting::Auto,
                Some(Value::String(s)) if s == "auto" => Setting::Auto,
                Some(v) => match v.as_f64() {
                    Some(x) if x > 0.0 && x <= 10.0 => Setting::Value(x),
                    _ => {
                        return Err(ApiError::invalid(
                            &field,
                            format!("`{field}` must be \"auto\" or a number in (0, 10], got {v}"),
                        ))
                    }
                },
            }
        };
        Ok(Self {
            n_epochs: integer("n_epochs", 50)?,
            batch_size: integer("batch_size", 256)?,
            learning_rate_multiplier: multiplier,
        })
    }
}

/// `POST /v1/fine_tuning/jobs`, as the SDK sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCreate {
    model: String,
    training_file: String,
    #[serde(default)]
    validation_file: Option<String>,
    #[serde(default)]
    hyperparameters: Option<Value>,
    #[serde(default)]
    method: Option<Value>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    integrations: Option<Vec<Value>>,
}

/// A checked create request.
#[derive(Debug, Clone)]
pub struct CreateJob {
    /// The base model id.
    pub model: String,
    /// `file-…` to train on.
    pub training_file: String,
    /// `file-…` to score on.
    pub validation_file: Option<String>,
    /// As sent (auto until the job resolves them).
    pub hyperparameters: Hyperparameters,
    /// Part of the fine-tuned model's name.
    pub suffix: Option<String>,
    /// The client's seed, if any.
    pub seed: Option<i64>,
    /// Up to 16 string pairs, echoed back.
    pub metadata: Option<Map<String, Value>>,
}

impl CreateJob {
    /// Reads and checks a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let raw: RawCreate = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_body(format!("invalid request body: {e}")))?;
        let hyperparameters = match &raw.method {
            None | Some(Value::Null) => {
                Hyperparameters::parse(raw.hyperparameters.as_ref(), "hyperparameters")?
            }
            Some(method) => {
                let kind = method.get("type").and_then(Value::as_str).unwrap_or("");
                if kind != "supervised" {
                    return Err(ApiError::invalid(
                        "method.type",
                        format!("method type `{kind}` is not supported: ft trains `supervised` (LoRA SFT) only"),
                    ));
                }
                let nested = method.pointer("/supervised/hyperparameters");
                match nested {
                    Some(h) if !h.is_null() => {
                        Hyperparameters::parse(Some(h), "method.supervised.hyperparameters")?
                    }
                    _ => Hyperparameters::parse(raw.hyperparameters.as_ref(), "hyperparameters")?,
                }
            }
        };
        if let Some(suffix) = &raw.suffix {
            let ok = !suffix.is_empty()
                && suffix.len() <= 64
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(ApiError::invalid(
                    "suffix",
                    "`suffix` must be 1-64 characters of letters, digits, - and _",
                ));
            }
        }
        if let Some(metadata) = &raw.metadata {
            if metadata.len() > 16
                || metadata
                    .iter()
                    .any(|(k, v)| k.len() > 64 || v.as_str().is_none_or(|s| s.len() > 512))
            {
                return Err(ApiError::invalid(
                    "metadata",
                    "`metadata` takes at most 16 keys of up to 64 characters with string values of up to 512",
                ));
            }
        }
        if raw.integrations.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(ApiError::invalid(
                "integrations",
                "integrations (Weights & Biases) are not supported by ft; see the job's events and metrics instead",
            ));
        }
        Ok(Self {
            model: raw.model,
            training_file: raw.training_file,
            validation_file: raw.validation_file,
            hyperparameters,
            suffix: raw.suffix,
            seed: raw.seed,
            metadata: raw.metadata,
        })
    }
}

/// A new job object with every key OpenAI's `FineTuningJob` requires.
pub fn new_job(
    id: &str,
    created_at: i64,
    request: &CreateJob,
    organization: &str,
    seed: i64,
) -> Value {
    let hyperparameters = request.hyperparameters.to_json();
    json!({
        "object": "fine_tuning.job",
        "id": id,
        "created_at": created_at,
        "model": request.model,
        "organization_id": organization,
        "status": "validating_files",
        "training_file": request.training_file,
        "validation_file": request.validation_file,
        "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "fine_tuned_model": null,
        "finished_at": null,
        "error": null,
        "result_files": [],
        "trained_tokens": null,
        "seed": seed,
        "estimated_finish": null,
        "integrations": null,
        "metadata": request.metadata,
        "user_provided_suffix": request.suffix,
    })
}

/// `ft:{base}:{org}:{suffix}:{id}`, OpenAI's fine-tuned model name (an empty slot when there
/// is no suffix); `id` is the job id's random tail, shortened as OpenAI's are.
pub fn fine_tuned_model_name(
    base: &str,
    organization: &str,
    suffix: Option<&str>,
    job_id: &str,
) -> String {
    let tail = job_id.strip_prefix("ftjob-").unwrap_or(job_id);
    let short: String = tail.chars().take(8).collect();
    format!("ft:{base}:{organization}:{}:{short}", suffix.unwrap_or(""))
}

/// A `fine_tuning.job.event`.
pub fn event(job_id: &str, level: &str, message: &str, data: Option<Value>) -> Value {
    let kind = if data.is_some() { "metrics" } else { "message" };
    json!({
        "object": "fine_tuning.job.event",
        "id": ft_store::new_id("ft-event-"),
        "created_at": ft_store::unix_now(),
        "level": level,
        "message": message,
        "data": data,
        "type": kind,
        "fine_tuning_job_id": job_id,
    })
}

/// A `fine_tuning.job.checkpoint`.
pub fn checkpoint(job_id: &str, model: &str, step: usize, metrics: Value) -> Value {
    json!({
        "object": "fine_tuning.job.checkpoint",
        "id": ft_store::new_id("ftckpt_"),
        "created_at": ft_store::unix_now(),
        "fine_tuned_model_checkpoint": checkpoint_model_name(model, step),
        "fine_tuning_job_id": job_id,
        "metrics": metrics,
        "step_number": step,
    })
}

/// The servable name of a job's checkpoint: `…:ckpt-step-N`.
pub fn checkpoint_model_name(model: &str, step: usize) -> String {
    format!("{model}:ckpt-step-{step}")
}

/// A list in OpenAI's shape; `with_ids` adds `first_id`/`last_id` (files, checkpoints).
pub fn list(page: ft_store::Page, with_ids: bool) -> Value {
    let mut body = json!({"object": "list", "has_more": page.has_more});
    if with_ids {
        let id = |o: Option<&Value>| o.and_then(|o| o.get("id")).cloned().unwrap_or(Value::Null);
        body["first_id"] = id(page.items.first());
        body["last_id"] = id(page.items.last());
    }
    body["data"] = Value::Array(page.items);
    body
}

/// OpenAI's rule for `n_epochs: "auto"`: 3 epochs, more for small files (at least ~100
/// examples seen), fewer for large ones (at most ~25 000), within 1-25.
pub fn auto_epochs(examples: usize) -> u64 {
    let n = examples.max(1) as u64;
    if n * 3 < 100 {
        100u64.div_ceil(n).min(25)
    } else if n * 3 > 25_000 {
        (25_000 / n).max(1)
    } else {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperparameters_come_from_the_top_level_or_the_method() {
        let top = br#"{"model":"m","training_file":"file-1","hyperparameters":{"n_epochs":4}}"#;
        let job = CreateJob::parse(top)
            .map_err(|e| e.detail.message)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(job.hyperparameters.n_epochs, Setting::Value(4));
        assert_eq!(job.hyperparameters.batch_size, Setting::Auto);
        let nested = br#"{"model":"m","training_file":"file-1","method":{"type":"supervised","supervised":{"hyperparameters":{"batch_size":2,"learning_rate_multiplier":0.5}}}}"#;
        let job = CreateJob::parse(nested)
            .map_err(|e| e.detail.message)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(job.hyperparameters.batch_size, Setting::Value(2));
        assert_eq!(
            job.hyperparameters.learning_rate_multiplier,
            Setting::Value(0.5)
        );
    }

    #[test]
    fn bad_requests_name_their_field() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"model":"m","training_file":"f","method":{"type":"dpo"}}"#, "method.type"),
            (br#"{"model":"m","training_file":"f","hyperparameters":{"n_epochs":0}}"#, "hyperparameters.n_epochs"),
            (br#"{"model":"m","training_file":"f","hyperparameters":{"learning_rate_multiplier":-1}}"#, "hyperparameters.learning_rate_multiplier"),
            (br#"{"model":"m","training_file":"f","hyperparameters":{"epochs":3}}"#, "hyperparameters.epochs"),
            (br#"{"model":"m","training_file":"f","suffix":"a/b"}"#, "suffix"),
        ];
        for (body, param) in cases {
            let error = CreateJob::parse(body)
                .err()
                .unwrap_or_else(|| panic!("{param}: accepted"));
            assert_eq!(error.detail.param.as_deref(), Some(param));
        }
    }

    #[test]
    fn names_and_auto_epochs_follow_openai() {
        let name = fine_tuned_model_name("base", "org", None, "ftjob-abcdefghijkl");
        assert_eq!(name, "ft:base:org::abcdefgh");
        assert_eq!(
            checkpoint_model_name(&name, 10),
            "ft:base:org::abcdefgh:ckpt-step-10"
        );
        assert_eq!(auto_epochs(1), 25);
        assert_eq!(auto_epochs(10), 10);
        assert_eq!(auto_epochs(100), 3);
        assert_eq!(auto_epochs(100_000), 1);
    }
}
