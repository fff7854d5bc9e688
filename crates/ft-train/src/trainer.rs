//! The training loop: data → LoRA updates, with evaluation, early stopping, checkpoints and
//! exact resume. Progress is reported through a callback; the library never prints.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};
use ft_data::dataset::{read_dataset, ReadOptions, Report};
use ft_data::{Batch, BatchConfig, Batcher, ExampleTokenizer, TokenizedExample};
use ft_model::adapter_io::{save_adapter, LoadOptions};
use ft_model::loss::{causal_lm_loss, dataset_nll};
use ft_model::{LoraAdapter, LoraConfig, TargetModules, TextModel};

use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::metrics::{self, EvalMetrics, MetricsRow, StepMetrics};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::schedule::LrSchedule;
use crate::{Error, Result};

/// Where to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The newest complete checkpoint of the run (older ones if it is unreadable).
    Latest,
    /// A given checkpoint directory.
    Dir(PathBuf),
}

/// The files and switches of one run.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Training data (JSONL).
    pub data: PathBuf,
    /// Evaluation data (JSONL).
    pub eval_data: Option<PathBuf>,
    /// Run directory.
    pub out: PathBuf,
    /// Continue a run.
    pub resume: Option<Resume>,
    /// Empty a non-empty `out` and start over.
    pub overwrite: bool,
    /// Train on the valid lines of data with invalid ones.
    pub skip_invalid: bool,
    /// Start from this adapter instead of a fresh initialisation.
    pub init_adapter: Option<PathBuf>,
    /// Written as `base_model_name_or_path` in the adapter.
    pub base_model_name: String,
}

/// What the loop reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A dataset was read.
    DataRead(&'a Report),
    /// A checkpoint could not be read and an older one is used.
    CheckpointSkipped {
        /// The unreadable checkpoint.
        dir: &'a Path,
        /// Why.
        reason: String,
    },
    /// Training starts (or resumes) at `start_step` of `total_steps`.
    Started {
        /// Steps already done.
        start_step: usize,
        /// All steps.
        total_steps: usize,
    },
    /// An optimizer step finished.
    Step(&'a StepMetrics),
    /// An evaluation finished.
    Eval(&'a EvalMetrics),
    /// A checkpoint was written.
    Checkpoint(&'a Path),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// Optimizer steps done in total.
    pub steps: usize,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Best evaluation loss and its step.
    pub best_eval: Option<(f64, usize)>,
    /// The final adapter.
    pub adapter_dir: PathBuf,
    /// Early stopping ended the run.
    pub stopped_early: bool,
    /// A stop request (Ctrl-C) ended the run after saving a checkpoint.
    pub interrupted: bool,
}

/// Trains a LoRA adapter on a frozen [`TextModel`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use ft_train::trainer::{TrainOptions, Trainer};
/// let model = ft_model::TextModel::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &candle_core::Device::Cpu)?;
/// let options = TrainOptions { data: "datasets/seed-demo.jsonl".into(), out: "runs/demo".into(), ..Default::default() };
/// let outcome = Trainer::new(&model, ft_train::TrainConfig::default(), options).run(&mut |_| {})?;
/// println!("adapter in {}", outcome.adapter_dir.display());
/// # Ok(()) }
/// ```
pub struct Trainer<'m> {
    model: &'m TextModel,
    config: TrainConfig,
    options: TrainOptions,
    stop: Arc<AtomicBool>,
}

fn dropout_seed(seed: u64, step: usize, micro: usize) -> u64 {
    seed ^ (step as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
        ^ (micro as u64).wrapping_mul(0xA076_1D64_78BD_642F)
}

impl<'m> Trainer<'m> {
    /// A trainer for `model` with `config` and the run's `options`.
    pub fn new(model: &'m TextModel, config: TrainConfig, options: TrainOptions) -> Self {
        Self {
            model,
            config,
            options,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Uses `stop` as the stop flag (one the caller made before the trainer existed).
    pub fn with_stop_flag(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    /// A flag that, once set (e.g. by a Ctrl-C handler), makes the loop save a checkpoint after
    /// the current step and return.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    fn read(&self, path: &Path, on_event: &mut dyn FnMut(Event)) -> Result<Vec<TokenizedExample>> {
        let tokenizer = ExampleTokenizer::new(&self.model.tokenizer, self.config.train_on_prompt);
        let options = ReadOptions {
            max_seq_len: self.config.max_seq_len,
            train_on_prompt: self.config.train_on_prompt,
            ..ReadOptions::default()
        };
        let (examples, report) = read_dataset(path, &tokenizer, &options)?;
        on_event(Event::DataRead(&report));
        if report.has_errors() && !self.options.skip_invalid {
            return Err(Error::InvalidData {
                path: path.to_path_buf(),
                invalid: report.invalid_lines,
                lines: report.lines,
            });
        }
        if examples.is_empty() {
            return Err(Error::NoExamples(path.to_path_buf()));
        }
        Ok(examples)
    }

    fn prepare_out_dir(&self) -> Result<()> {
        let out = &self.options.out;
        if self.options.resume.is_some() {
            return Ok(());
        }
        let non_empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if non_empty {
            if !self.options.overwrite {
                return Err(Error::OutputExists(out.clone()));
            }
            std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
        }
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        // Fail now, not after the first step, if the directory is not writable.
        let probe = out.join(".write-test");
        std::fs::write(&probe, b"").map_err(|e| Error::io(out, e))?;
        std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
    }

    fn lora_config(&self) -> LoraConfig {
        LoraConfig {
            r: self.config.lora_r,
            alpha: self.config.lora_alpha,
            dropout: self.config.lora_dropout,
            target_modules: TargetModules::parse(&self.config.target_modules),
            use_rslora: self.config.use_rslora,
        }
    }

    /// The adapter, optimizer and state to start from: a checkpoint, an initial adapter, or fresh.
    fn starting_point(
        &self,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(LoraAdapter, AdamW, TrainerState)> {
        let model = &self.model.model;
        let adam = AdamWConfig {
            weight_decay: self.config.weight_decay,
            ..AdamWConfig::default()
        };
        let fresh_state = TrainerState {
            step: 0,
            epoch: 0,
            batch: 0,
            best_eval: None,
            evals_without_improvement: 0,
        };
        match &self.options.resume {
            Some(resume) => {
                let candidates = match resume {
                    Resume::Latest => checkpoint::list(&self.options.out)
                        .into_iter()
                        .map(|c| c.1)
                        .collect(),
                    Resume::Dir(dir) => vec![dir.clone()],
                };
                for dir in &candidates {
                    match checkpoint::load(dir, model, adam, model.transformer.device()) {
                        Ok(c) => return Ok((c.adapter, c.optimizer, c.state)),
                        Err(err) => on_event(Event::CheckpointSkipped {
                            dir,
                            reason: err.to_string(),
                        }),
                    }
                }
                Err(Error::NoCheckpoint(self.options.out.clone()))
            }
            None => {
                let adapter = match &self.options.init_adapter {
                    Some(dir) => {
                        let loaded = model.load_adapter(dir, &LoadOptions::default())?;
                        let config = LoraConfig {
                            dropout: self.config.lora_dropout,
                            ..loaded.config().clone()
                        };
                        let matrices = loaded
                            .modules()
                            .iter()
                            .map(|(p, m)| (p.clone(), m.a.clone(), m.b.clone()))
                            .collect();
                        LoraAdapter::from_modules(config, matrices, Some(model.fingerprint.clone()))
                            .into_trainable()?
                    }
                    None => LoraAdapter::init(
                        &model.transformer,
                        self.lora_config(),
                        self.config.seed,
                        Some(model.fingerprint.clone()),
                    )?,
                };
                Ok((adapter, AdamW::new(adam), fresh_state))
            }
        }
    }

    /// Mean NLL over the label tokens of `batcher` with a frozen copy of `adapter` (the same
    /// function `ft eval` reports as `loss`).
    fn evaluate(&self, batcher: &Batcher, adapter: &LoraAdapter) -> Result<f64> {
        Ok(dataset_nll(&self.model.model.transformer, batcher, Some(adapter))?.mean)
    }

    /// Runs training to the end (or early stop, or a stop request), calling `on_event` as it
    /// goes. Writes `config.toml`, `metrics.jsonl`, checkpoints, `adapter/` and `loss.svg`.
    pub fn run(&self, on_event: &mut dyn FnMut(Event)) -> Result<TrainOutcome> {
        self.config.validate().map_err(Error::Setting)?;
        let dense = self.model.model.transformer.is_dense();
        let quantized_base = self.config.base_precision != crate::config::BasePrecision::F32;
        if !dense && !quantized_base {
            return Err(Error::Setting(
                "the model was loaded quantized, but base_precision is f32: load it with \
                 Precision::F32, or train with base_precision q8 or q4"
                    .to_string(),
            ));
        }
        if quantized_base && self.config.precision == crate::config::TrainPrecision::Bf16 {
            return Err(Error::Setting(
                "precision bf16 applies to a dense base; with base_precision q8 or q4 the \
                 products are f32 over dequantized tiles"
                    .to_string(),
            ));
        }
        let transformer = &self.model.model.transformer;
        transformer.set_gradient_checkpointing(self.config.gradient_checkpointing);
        transformer
            .set_bf16_training(self.config.precision == crate::config::TrainPrecision::Bf16)
            .map_err(|e| Error::Setting(format!("precision: {e}")))?;
        let out = self.options.out.clone();
        self.prepare_out_dir()?;
        let train = self.read(&self.options.data, on_event)?;
        let eval = match &self.options.eval_data {
            Some(path) => Some(self.read(path, on_event)?),
            None => None,
        };
        let pad_id = self.model.tokenizer.eos_id().unwrap_or(0);
        let batch_config = BatchConfig {
            batch_size: self.config.batch_size,
            max_seq_len: self.config.max_seq_len,
            packing: self.config.packing,
            seed: self.config.seed,
            pad_id,
        };
        let batcher = Batcher::new(train, batch_config.clone());
        let eval_batcher = eval.map(|e| {
            Batcher::new(
                e,
                BatchConfig {
                    packing: false,
                    ..batch_config
                },
            )
        });
        let batches_per_epoch = batcher.batches_per_epoch();
        let steps_per_epoch = batches_per_epoch.div_ceil(self.config.grad_accum).max(1);
        let total_steps = self
            .config
            .max_steps
            .unwrap_or(self.config.epochs * steps_per_epoch);
        let schedule = LrSchedule {
            peak: self.config.lr,
            warmup_steps: self.config.warmup(total_steps),
            total_steps,
            kind: self.config.lr_scheduler,
        };

        let (adapter, mut optimizer, mut state) = self.starting_point(on_event)?;
        std::fs::write(out.join("config.toml"), self.config.to_toml())
            .map_err(|e| Error::io(out.join("config.toml"), e))?;
        let metrics_path = out.join("metrics.jsonl");
        metrics::truncate_after(&metrics_path, state.step)?;
        on_event(Event::Started {
            start_step: state.step,
            total_steps,
        });

        let params: Vec<(String, candle_core::Var)> = adapter.vars().to_vec();
        let first_step = state.step + 1;
        let mut pending_a: HashSet<String> = params
            .iter()
            .filter(|(n, _)| n.contains(".lora_A."))
            .map(|(n, _)| n.clone())
            .collect();
        let mut stream = batcher.iter_from(state.cursor());
        let started = Instant::now();
        let mut last_loss = f64::NAN;
        let mut stopped_early = false;
        let mut interrupted = false;
        while state.step < total_steps {
            let step = state.step + 1;
            let step_started = Instant::now();
            let mut group: Vec<Batch> = Vec::with_capacity(self.config.grad_accum);
            let mut cursor = state.cursor();
            let epoch_before = cursor.epoch;
            for _ in 0..self.config.grad_accum {
                let Some((batch, next)) = stream.next() else {
                    break;
                };
                group.push(batch);
                cursor = next;
            }
            let labels: usize = group.iter().map(Batch::num_labels).sum();
            let tokens: usize = group.iter().map(Batch::num_tokens).sum();
            let mut grads: HashMap<String, Tensor> = HashMap::new();
            let mut loss_sum = 0f64;
            let mut correct = 0usize;
            for (micro, batch) in group.iter().enumerate() {
                adapter.set_dropout_seed(Some(dropout_seed(self.config.seed, step, micro)));
                let loss = causal_lm_loss(&self.model.model.transformer, batch, Some(&adapter))?;
                correct += loss.correct;
                // Token-weighted over the whole accumulation group, as HF's num_items_in_batch.
                let scaled = (loss.sum / labels.max(1) as f64)?;
                loss_sum += scaled.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let store = scaled.backward()?;
                for (name, var) in &params {
                    if let Some(g) = store.get(var.as_tensor()) {
                        let g = match grads.remove(name) {
                            Some(acc) => (acc + g)?,
                            None => g.clone(),
                        };
                        grads.insert(name.clone(), g);
                    }
                }
            }
            adapter.set_dropout_seed(None);
            if !loss_sum.is_finite() {
                return Err(Error::Diverged {
                    step,
                    reason: format!(
                        "the loss is {loss_sum}; the last good checkpoint is kept (lower --lr?)"
                    ),
                });
            }
            self.check_gradients(step == first_step, step, &params, &grads, &mut pending_a)?;
            let grad_norm = clip_grad_norm(&mut grads, self.config.max_grad_norm)?;
            let lr = schedule.lr(step);
            optimizer.step(&params, &grads, lr)?;
            state.step = step;
            (state.epoch, state.batch) = (cursor.epoch, cursor.batch);
            last_loss = loss_sum;
            let row = StepMetrics {
                step,
                loss: loss_sum,
                lr,
                grad_norm,
                tokens_per_sec: tokens as f64 / step_started.elapsed().as_secs_f64().max(1e-9),
                elapsed_s: started.elapsed().as_secs_f64(),
                token_accuracy: Some(correct as f64 / labels.max(1) as f64),
            };
            metrics::append(&metrics_path, &MetricsRow::Step(row.clone()))?;
            on_event(Event::Step(&row));

            let epoch_ended = cursor.epoch > epoch_before || (cursor.batch >= batches_per_epoch);
            let eval_due = self
                .config
                .eval_steps
                .is_some_and(|n| n > 0 && step % n == 0)
                || epoch_ended
                || step == total_steps;
            let mut improved = false;
            if let (Some(eval_batcher), true) = (&eval_batcher, eval_due) {
                let eval_loss = self.evaluate(eval_batcher, &adapter)?;
                let eval_row = EvalMetrics {
                    step,
                    eval_loss,
                    eval_ppl: eval_loss.exp(),
                };
                metrics::append(&metrics_path, &MetricsRow::Eval(eval_row.clone()))?;
                on_event(Event::Eval(&eval_row));
                if state.best_eval.is_none_or(|(best, _)| eval_loss < best) {
                    state.best_eval = Some((eval_loss, step));
                    state.evals_without_improvement = 0;
                    improved = true;
                } else {
                    state.evals_without_improvement += 1;
                    stopped_early = self
                        .config
                        .early_stopping_patience
                        .is_some_and(|p| state.evals_without_improvement >= p);
                }
            }
            interrupted = self.stop.load(Ordering::SeqCst);
            let save_due = (self.config.save_steps > 0 && step % self.config.save_steps == 0)
                || step == total_steps
                || improved
                || stopped_early
                || interrupted;
            if save_due {
                let dir = checkpoint::save(
                    &out,
                    &adapter,
                    &optimizer,
                    &state,
                    &self.options.base_model_name,
                )?;
                checkpoint::prune(
                    &out,
                    self.config.save_total_limit,
                    state.best_eval.map(|b| b.1),
                )?;
                on_event(Event::Checkpoint(&dir));
            }
            if stopped_early || interrupted {
                break;
            }
        }
        if state.step == 0 {
            return Err(Error::NoExamples(self.options.data.clone()));
        }
        let adapter_dir = out.join("adapter");
        save_adapter(&adapter, &adapter_dir, &self.options.base_model_name)?;
        let rows = metrics::read(&metrics_path);
        std::fs::write(out.join("loss.svg"), metrics::loss_svg(&rows))
            .map_err(|e| Error::io(out.join("loss.svg"), e))?;
        Ok(TrainOutcome {
            steps: state.step,
            last_loss,
            best_eval: state.best_eval,
            adapter_dir,
            stopped_early,
            interrupted,
        })
    }

    /// Every LoRA matrix must get a gradient. With PEFT's initialisation B is zero, so the A
    /// matrices get exactly zero gradient until their B has moved (dA ∝ Bᵀ). So: every B is
    /// checked at the first step of the run, and each A at the first step its B is non-zero.
    fn check_gradients(
        &self,
        first_step: bool,
        step: usize,
        params: &[(String, candle_core::Var)],
        grads: &HashMap<String, Tensor>,
        pending_a: &mut HashSet<String>,
    ) -> Result<()> {
        let is_zero = |t: Option<&Tensor>| -> Result<bool> {
            Ok(match t {
                Some(t) => {
                    t.abs()?
                        .max_all()?
                        .to_dtype(DType::F32)?
                        .to_scalar::<f32>()?
                        == 0.0
                }
                None => true,
            })
        };
        let values: HashMap<&str, &Tensor> = params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_tensor()))
            .collect();
        let mut to_check: Vec<String> = Vec::new();
        if first_step {
            to_check.extend(
                params
                    .iter()
                    .filter(|(n, _)| n.contains(".lora_B."))
                    .map(|(n, _)| n.clone()),
            );
        }
        for a in pending_a.clone() {
            let b = a.replace(".lora_A.", ".lora_B.");
            if !is_zero(values.get(b.as_str()).copied())? {
                pending_a.remove(&a);
                to_check.push(a);
            }
        }
        for name in to_check {
            if is_zero(grads.get(&name))? {
                return Err(Error::Diverged {
                    step,
                    reason: format!("{name} got an all-zero gradient: the gradient does not reach this LoRA parameter"),
                });
            }
        }
        Ok(())
    }
}
