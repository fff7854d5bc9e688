//! `ft worker`: runs fine-tuning jobs only, from a PostgreSQL store shared with `ft serve`
//! processes (and other workers), and the fine-tuning options both commands take.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ft::serve::{FineTuning, FineTuningConfig, Registry};

/// How jobs are stored and run: `ft serve` and `ft worker` alike.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// Turns on OpenAI's files and fine-tuning jobs API, with its store, uploaded files, job
    /// runs and trained adapters in this directory; jobs, files and adapters survive
    /// restarts, and a job that was running resumes from its last checkpoint.
    #[arg(long, env = "FT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep the store's rows in this PostgreSQL database (`postgres://user:password@host/db`)
    /// instead of SQLite in --state-dir, so that several `ft serve` and `ft worker` processes
    /// share the jobs; each needs the same --state-dir (a shared filesystem across machines).
    #[arg(long, env = "FT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The training recipe (TOML, as `ft train --config`) jobs start from; a job's
    /// hyperparameters then set epochs and batch size and scale the learning rate.
    #[arg(long)]
    pub job_config: Option<PathBuf>,
    /// Cores a fine-tuning job trains on; requests keep the others.
    #[arg(long, default_value_t = 1)]
    pub train_threads: usize,
    /// `organization_id` of jobs and the org part of fine-tuned model names.
    #[arg(long, default_value = "local")]
    pub organization: String,
    /// Seconds a job's lease lasts unless its worker renews it (it does, four times a
    /// lease); a worker that dies loses its job to another after this.
    #[arg(long, default_value_t = 60)]
    pub lease_seconds: u32,
}

impl JobArgs {
    /// The fine-tuning service's settings for `base` (None without --state-dir).
    pub fn config(&self, base: &std::path::Path) -> anyhow::Result<Option<FineTuningConfig>> {
        let Some(state_dir) = &self.state_dir else {
            if self.database_url.is_some() {
                anyhow::bail!("--database-url needs --state-dir (where the blobs live)");
            }
            return Ok(None);
        };
        let recipe = match &self.job_config {
            Some(path) => ft::train::TrainConfig::from_file(path)?,
            None => ft::train::TrainConfig::default(),
        };
        recipe
            .validate()
            .map_err(|e| anyhow::anyhow!("--job-config: invalid setting: {e}"))?;
        let mut config = FineTuningConfig::new(state_dir.clone(), base.to_path_buf(), recipe);
        config.train_threads = self.train_threads.max(1);
        config.organization = self.organization.clone();
        config.database_url = self.database_url.clone();
        config.lease_seconds = i64::from(self.lease_seconds.max(1));
        Ok(Some(config))
    }
}

/// Arguments of `ft worker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base jobs train: the file or directory the servers serve [default:
    /// models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long)]
    model: Option<String>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    jobs: JobArgs,
    #[command(flatten)]
    precision: super::common::PrecisionArgs,
}

/// Runs jobs until Ctrl-C; the running one then stops after its step with a checkpoint, and
/// the next worker (or this one, restarted) resumes it.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.jobs.database_url.is_none() {
        anyhow::bail!(
            "ft worker needs --database-url postgres://… (a store shared with `ft serve`); \
             with SQLite, `ft serve --state-dir` runs the jobs itself"
        );
    }
    let path = ft::hub::resolve_model(args.model.as_deref())?;
    let Some(mut config) = args.jobs.config(&path)? else {
        anyhow::bail!("ft worker needs --state-dir (the directory the servers share)");
    };
    config.run_jobs = true;
    // The registry checks each published adapter against the base, as the servers will.
    let model = args.precision.load_serving_base(&path, &args.device)?;
    let registry = Arc::new(Registry::new(model, None, 1));
    let fine_tuning =
        FineTuning::start(config, registry.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!("worker for {} waiting for jobs", registry.base_id());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime
        .block_on(tokio::signal::ctrl_c())
        .context("waiting for Ctrl-C")?;
    fine_tuning.shutdown();
    Ok(())
}
