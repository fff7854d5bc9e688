//! A live `ft serve` on an ephemeral port for the tests, and adapters made for them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Tensor;
use ft_model::adapter_io::save_adapter;
use ft_model::generate::SamplingParams;
use ft_model::text::TextRequest;
use ft_model::{LoraAdapter, LoraConfig, TextModel};
use ft_serve::{Engine, EngineConfig, Registry, Server, ServerConfig};

/// A running server and what it serves.
pub struct Live {
    pub url: String,
    pub model: Arc<TextModel>,
    pub registry: Arc<Registry>,
    pub base_id: String,
    _runtime: tokio::runtime::Runtime,
}

/// Loads the default model, or `None` outside CI when it is missing.
pub fn model() -> Option<Arc<TextModel>> {
    let path = ft_core::testing::default_gguf()?;
    Some(Arc::new(
        TextModel::load(&path, &candle_core::Device::Cpu).expect("model loads"),
    ))
}

/// The default model on the quantized inference path, or `None` outside CI when it is missing.
pub fn quantized_model() -> Option<Arc<TextModel>> {
    let path = ft_core::testing::default_gguf()?;
    let options = ft_model::ModelOptions {
        precision: ft_model::Precision::Quantized,
        quantize: None,
    };
    Some(Arc::new(
        TextModel::load_with(&path, &candle_core::Device::Cpu, &options).expect("model loads"),
    ))
}

/// Starts a server over `model` with `adapters` (name, dir) preloaded.
pub fn start(
    model: Arc<TextModel>,
    adapters: &[(&str, &Path)],
    adapters_dir: Option<PathBuf>,
    max_resident: usize,
    config: ServerConfig,
    engine: EngineConfig,
) -> Live {
    let registry = Arc::new(Registry::new(model.clone(), adapters_dir, max_resident));
    for (name, dir) in adapters {
        registry.load(name, dir).expect("adapter loads");
    }
    let engine = Engine::start(model.clone(), engine).expect("engine starts");
    let server = Server::new(engine, registry.clone(), config);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    runtime.spawn(server.serve(listener, std::future::pending()));
    let base_id = registry.base_id();
    Live {
        url,
        model,
        registry,
        base_id,
        _runtime: runtime,
    }
}

/// A server with default limits.
pub fn start_simple(model: Arc<TextModel>, adapters: &[(&str, &Path)]) -> Live {
    start(
        model,
        adapters,
        None,
        10,
        ServerConfig::default(),
        EngineConfig::default(),
    )
}

/// Writes an adapter for `model` whose B matrices are random (seeded), so it changes the
/// model's answers; returns its directory under `parent`.
pub fn random_adapter(
    model: &TextModel,
    parent: &Path,
    name: &str,
    seed: u64,
    scale: f64,
) -> PathBuf {
    let transformer = &model.model.transformer;
    let config = LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    let init = LoraAdapter::init(
        transformer,
        config.clone(),
        seed,
        Some(model.model.fingerprint.clone()),
    )
    .expect("init");
    let mut state = seed;
    let matrices = init
        .modules()
        .iter()
        .map(|(path, module)| {
            let n = module.b.elem_count();
            // A small LCG: deterministic values without another RNG dependency.
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (((state >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0) as f32 * scale as f32
                })
                .collect();
            let b = Tensor::from_vec(values, module.b.shape(), module.b.device()).expect("b");
            (path.clone(), module.a.clone(), b)
        })
        .collect();
    let adapter =
        LoraAdapter::from_modules(config, matrices, Some(model.model.fingerprint.clone()));
    let dir = parent.join(name);
    save_adapter(&adapter, &dir, "SmolLM2-135M-Instruct").expect("save");
    dir
}

/// `ft generate`'s greedy answer (the reference for HTTP outputs).
pub fn generate(
    model: &TextModel,
    prompt: &str,
    raw: bool,
    max_tokens: usize,
    adapter: Option<&LoraAdapter>,
) -> String {
    let request = TextRequest {
        prompt: prompt.to_string(),
        raw,
        max_new_tokens: max_tokens,
        sampling: SamplingParams::default(),
    };
    model.generate(&request, adapter).expect("generate")
}

/// POSTs JSON; returns status and body (error statuses too).
pub fn post(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    match ureq::post(url).send_json(body.clone()) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(serde_json::Value::Null)),
        Err(ureq::Error::Status(code, r)) => {
            (code, r.into_json().unwrap_or(serde_json::Value::Null))
        }
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// GETs JSON.
pub fn get(url: &str) -> (u16, serde_json::Value) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_json().unwrap_or(serde_json::Value::Null)),
        Err(ureq::Error::Status(code, r)) => {
            (code, r.into_json().unwrap_or(serde_json::Value::Null))
        }
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Streams a request; returns every `data:` payload in order (the raw SSE lines are checked).
pub fn stream(url: &str, body: &serde_json::Value) -> Result<Vec<String>, String> {
    use std::io::BufRead;
    let response = ureq::post(url)
        .send_json(body.clone())
        .map_err(|e| e.to_string())?;
    let content_type = response
        .header("content-type")
        .unwrap_or_default()
        .to_string();
    if !content_type.starts_with("text/event-stream") {
        return Err(format!("content-type {content_type}"));
    }
    let mut payloads = Vec::new();
    for line in std::io::BufReader::new(response.into_reader()).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.is_empty() {
            continue;
        }
        let Some(data) = line.strip_prefix("data: ") else {
            return Err(format!("not an SSE data line: {line:?}"));
        };
        payloads.push(data.to_string());
    }
    Ok(payloads)
}
