//! `ft train`: LoRA fine-tuning from a JSONL dataset into a PEFT adapter.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use ft::train::schedule::SchedulerKind;
use ft::train::{Event, Resume, TrainConfig, TrainOptions, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `ft train`. Flags override `--config`, which overrides the defaults.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training data (JSONL: chat, prompt/completion or text).
    #[arg(long)]
    data: PathBuf,
    /// Evaluation data, scored every --eval-steps and at each epoch end.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// A GGUF file, an HF directory, or a Hub id [default: the default model].
    #[arg(long)]
    model: Option<String>,
    /// Run directory: adapter/, checkpoints/, metrics.jsonl, loss.svg, config.toml.
    #[arg(long)]
    out: PathBuf,
    /// TOML file with any of the settings below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue from `latest` (the newest checkpoint in --out) or a checkpoint directory.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
    resume: Option<String>,
    /// Delete a non-empty --out and start over.
    #[arg(long)]
    overwrite: bool,
    /// Train on the valid lines of data with invalid ones.
    #[arg(long)]
    skip_invalid: bool,
    /// Start from this adapter instead of a fresh initialisation.
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    /// cosine, linear or constant.
    #[arg(long)]
    lr_scheduler: Option<SchedulerKind>,
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long)]
    warmup_ratio: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    max_grad_norm: Option<f64>,
    #[arg(long)]
    lora_r: Option<usize>,
    #[arg(long)]
    lora_alpha: Option<f64>,
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// all-linear or a comma-separated list (q_proj,v_proj,...).
    #[arg(long)]
    target_modules: Option<String>,
    #[arg(long)]
    max_seq_len: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    save_steps: Option<usize>,
    #[arg(long)]
    save_total_limit: Option<usize>,
    #[arg(long)]
    eval_steps: Option<usize>,
    #[arg(long)]
    early_stopping_patience: Option<usize>,
    /// Pack several examples into each row.
    #[arg(long)]
    packing: bool,
    /// Put prompt tokens of prompt/completion data in the loss too.
    #[arg(long)]
    train_on_prompt: bool,
    /// Recompute each block's activations in backward instead of keeping them: less memory
    /// for long sequences, at the cost of a second forward of every block.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// f32 (exact: PEFT's numbers) or bf16 (the frozen base's products in bf16 with f32
    /// accumulation, on CPUs with AVX512_BF16; LoRA weights and optimizer state stay f32).
    #[arg(long)]
    precision: Option<ft::train::TrainPrecision>,
    /// f32 (exact) or q8 / q4: keep the frozen base's linears quantized, QLoRA-style (a GGUF's
    /// blocks as they are; an HF base quantized to Q8_0 / Q4_0 at load).
    #[arg(long)]
    base_precision: Option<ft::train::BasePrecision>,
}

impl Args {
    fn resolve_config(&self) -> anyhow::Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => TrainConfig::from_file(path)?,
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field.clone() { c.$field = v; })* };
        }
        set!(
            epochs,
            batch_size,
            grad_accum,
            lr,
            lr_scheduler,
            warmup_ratio,
            weight_decay,
            max_grad_norm,
            lora_r,
            lora_alpha,
            lora_dropout,
            target_modules,
            max_seq_len,
            seed,
            save_steps,
            save_total_limit,
            precision,
            base_precision
        );
        if self.max_steps.is_some() {
            c.max_steps = self.max_steps;
        }
        if self.warmup_steps.is_some() {
            c.warmup_steps = self.warmup_steps;
        }
        if self.eval_steps.is_some() {
            c.eval_steps = self.eval_steps;
        }
        if self.early_stopping_patience.is_some() {
            c.early_stopping_patience = self.early_stopping_patience;
        }
        c.packing |= self.packing;
        c.gradient_checkpointing |= self.gradient_checkpointing;
        c.train_on_prompt |= self.train_on_prompt;
        c.validate()
            .map_err(|e| anyhow::anyhow!("invalid setting: {e}"))?;
        Ok(c)
    }
}

/// Runs `ft train`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.resolve_config()?;
    let model_path = ft::hub::resolve_model(args.model.as_deref())?;
    let device = ft::core::device::select(args.device.parse()?)?;
    let model = ft::train::load_model(&model_path, &device, config.base_precision)?;
    let options = TrainOptions {
        data: args.data.clone(),
        eval_data: args.eval_data.clone(),
        out: args.out.clone(),
        resume: args.resume.as_deref().map(|r| match r {
            "latest" => Resume::Latest,
            dir => Resume::Dir(dir.into()),
        }),
        overwrite: args.overwrite,
        skip_invalid: args.skip_invalid,
        init_adapter: args.init_adapter.clone(),
        base_model_name: model_path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| model_path.display().to_string()),
    };
    let trainer = Trainer::new(&model, config, options);
    let stop = trainer.stop_handle();
    ctrlc::set_handler(move || {
        eprintln!("\nstopping after this step (a checkpoint will be saved) ...");
        stop.store(true, Ordering::SeqCst);
    })?;

    let terminal = std::io::stderr().is_terminal();
    let skip_invalid = args.skip_invalid;
    let mut bar: Option<ProgressBar> = None;
    let outcome = trainer.run(&mut |event| match event {
        Event::DataRead(report) => {
            eprintln!("{report}");
            if report.has_errors() && skip_invalid {
                eprintln!(
                    "skipping {} invalid lines of {} (--skip-invalid)",
                    report.invalid_lines, report.lines
                );
            }
        }
        Event::CheckpointSkipped { dir, reason } => {
            eprintln!(
                "warning: checkpoint {} is unreadable ({reason}); using an older one",
                dir.display()
            )
        }
        Event::Started {
            start_step,
            total_steps,
        } => {
            if start_step > 0 {
                eprintln!("resuming at step {start_step} of {total_steps}");
            }
            if terminal {
                let b = ProgressBar::new(total_steps as u64).with_position(start_step as u64);
                b.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar = Some(b);
            }
        }
        Event::Step(m) => {
            let mut line = format!(
                "loss {:.4} lr {:.2e} grad_norm {:.3} {:.0} tok/s",
                m.loss, m.lr, m.grad_norm, m.tokens_per_sec
            );
            if let Some(accuracy) = m.token_accuracy {
                line.push_str(&format!(" token_acc {accuracy:.3}"));
            }
            match &bar {
                Some(b) => {
                    b.set_message(line);
                    b.inc(1);
                }
                None => eprintln!("step {} {line}", m.step),
            }
        }
        Event::Eval(m) => {
            let line = format!(
                "step {} eval_loss {:.4} eval_ppl {:.2}",
                m.step, m.eval_loss, m.eval_ppl
            );
            match &bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
        }
        Event::Checkpoint(dir) => tracing::debug!("checkpoint {}", dir.display()),
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let how = if outcome.interrupted {
        " (interrupted; continue with --resume latest)"
    } else if outcome.stopped_early {
        " (early stopping)"
    } else {
        ""
    };
    eprintln!(
        "trained {} steps, last loss {:.4}{how}; adapter in {}",
        outcome.steps,
        outcome.last_loss,
        outcome.adapter_dir.display()
    );
    Ok(())
}
