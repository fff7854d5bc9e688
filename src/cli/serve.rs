//! `ft serve`: the OpenAI-compatible server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ft::serve::{ClosedLoop, Engine, EngineConfig, FineTuning, Registry, Server, ServerConfig};

/// Arguments of `ft serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A GGUF file, an HF directory, or a Hub id [default: models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long)]
    model: Option<String>,
    /// An adapter to serve from the start, as NAME=DIR (repeatable).
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<String>,
    /// Directory `POST /v1/adapters` may load from (paths outside it are refused; without it,
    /// loading over HTTP is off).
    #[arg(long)]
    adapters_dir: Option<PathBuf>,
    /// Address to bind (loopback by default: pass 0.0.0.0 to expose it, ideally with a key).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "FT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most adapters kept in memory; others reload from their directory on demand.
    #[arg(long, default_value_t = 10)]
    max_resident_adapters: usize,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Most sequences waiting for a slot before requests get 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// MiB of recent prompts' keys and values kept so that a prompt starting as an earlier
    /// one did (same system prompt, a repeated question, one more turn) computes only the
    /// rest (0: off).
    #[arg(long, default_value_t = 128)]
    prefix_cache_mib: usize,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 4096)]
    max_tokens_limit: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Longest a request may run, waiting included; then its choices end with
    /// finish_reason "length" (0 = no limit).
    #[arg(long, default_value_t = 600.0)]
    max_request_seconds: f64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Largest file `POST /v1/files` accepts, in bytes (larger: 413).
    #[arg(long, default_value_t = 512 << 20)]
    max_upload_bytes: usize,
    /// Run no fine-tuning jobs in this process: `ft worker`s sharing --database-url do.
    #[arg(long)]
    no_train: bool,
    #[command(flatten)]
    jobs: super::worker::JobArgs,
    #[command(flatten)]
    closed_loop: super::closed_loop::ServeArgs,
    #[command(flatten)]
    precision: super::common::PrecisionArgs,
}

/// Runs `ft serve` until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !(args.max_request_seconds >= 0.0 && args.max_request_seconds.is_finite()) {
        anyhow::bail!(
            "--max-request-seconds must be 0 (no limit) or a positive number of seconds, got {}",
            args.max_request_seconds
        );
    }
    let path = ft::hub::resolve_model(args.model.as_deref())?;
    let model = args.precision.load_serving_base(&path, &args.device)?;
    let registry = Arc::new(Registry::new(
        model.clone(),
        args.adapters_dir.clone(),
        args.max_resident_adapters,
    ));
    for spec in &args.adapters {
        let (name, dir) = spec
            .split_once('=')
            .with_context(|| format!("--adapter {spec}: expected NAME=DIR"))?;
        registry
            .load(name, dir.as_ref())
            .map_err(|e| anyhow::anyhow!("--adapter {spec}: {}", e.detail.message))?;
    }
    let engine = Engine::start(
        model,
        EngineConfig {
            max_batch: args.max_batch.max(1),
            max_queue: args.max_queue,
            prefix_cache_bytes: args.prefix_cache_mib.saturating_mul(1 << 20),
        },
    )?;
    let mut server = Server::new(
        engine,
        registry.clone(),
        ServerConfig {
            api_key: args.api_key.clone(),
            max_body_bytes: args.max_body_bytes,
            max_tokens_limit: args.max_tokens_limit.max(1),
            max_request_seconds: args.max_request_seconds,
        },
    );
    if let Some(mut config) = args.jobs.config(&path)? {
        config.max_upload_bytes = args.max_upload_bytes;
        config.run_jobs = !args.no_train;
        let fine_tuning = FineTuning::start(config, registry.clone())
            .map_err(|e| anyhow::anyhow!("--state-dir: {e}"))?;
        // Gates ask the judge (by default the base served here) over this server's own API.
        let reachable = match args.host.as_str() {
            "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
            host => host,
        };
        let self_url = format!("http://{reachable}:{}/v1", args.port);
        let closed_loop_config = args.closed_loop.config(self_url, args.api_key.clone())?;
        let closed_loop = ClosedLoop::start(fine_tuning.clone(), closed_loop_config)
            .map_err(|e| anyhow::anyhow!("--state-dir: {e}"))?;
        server = server
            .with_fine_tuning(fine_tuning)
            .with_closed_loop(closed_loop);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;
        tracing::info!(
            "serving {} on http://{} (adapters: {})",
            registry.base_id(),
            listener.local_addr()?,
            registry
                .list()
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        server
            .serve(listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("server failed")
    })
}
