//! The engine: one scheduler thread owns the model and runs continuous batching.
//!
//! Every step it admits waiting requests (prefilling each prompt into the sequence's own KV
//! cache), then decodes one token for every running sequence in one batch — the base matmuls
//! once for all rows, each adapter's low-rank update on its own rows
//! ([`ft_model::RowAdapters`]). A sequence leaves the batch the step it finishes, or as soon
//! as its client stops listening; its cache goes with it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use candle_core::{DType, Tensor};
use ft_model::generate::{LogitsProcessor, SamplingParams};
use ft_model::{Cache, Inputs, Lora, LoraAdapter, RowAdapters, TextModel};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;
use crate::prefix_cache::{PrefixCache, Reuse};
use crate::registry::ResolvedAdapter;

/// Limits of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most sequences waiting for a slot; beyond it requests get 429.
    pub max_queue: usize,
    /// Bytes of recent prompts' keys and values kept for reuse by prompts that start the same
    /// way (0: off). See [`crate::prefix_cache`].
    pub prefix_cache_bytes: usize,
}

/// 128 MiB: about 2,900 prompt tokens of the default model (46 KiB each, f32).
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 128 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_queue: 256,
            prefix_cache_bytes: DEFAULT_PREFIX_CACHE_BYTES,
        }
    }
}

/// Why a sequence stopped, as OpenAI's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// The request's time ran out (`--max-request-seconds`); reported as `length`, as OpenAI
    /// does for a response cut short, and counted apart in the metrics.
    Timeout,
}

impl FinishReason {
    /// `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length | Self::Timeout => "length",
        }
    }
}

/// What the engine reports about one sequence (choice `index` of its request).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (never splits a character, never shows part of a stop string).
    Delta {
        /// The choice.
        index: usize,
        /// The text.
        text: String,
    },
    /// The sequence is done.
    Done {
        /// The choice.
        index: usize,
        /// Why.
        finish: FinishReason,
        /// Tokens generated (end-of-turn token included).
        completion_tokens: usize,
        /// Prompt tokens whose keys and values came from the prefix store.
        cached_tokens: usize,
    },
    /// The model failed on this sequence.
    Failed {
        /// The choice.
        index: usize,
        /// What went wrong.
        message: String,
    },
}

/// One sequence to generate.
#[derive(Debug)]
pub struct SequenceRequest {
    /// Prompt token ids (non-empty).
    pub prompt_ids: Vec<u32>,
    /// The adapter version to use from first to last token; `None` for the base.
    pub adapter: Option<ResolvedAdapter>,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Most new tokens.
    pub max_tokens: usize,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Choice index reported in events.
    pub index: usize,
    /// Where events go; dropping the receiver cancels the sequence.
    pub events: UnboundedSender<Event>,
    /// When the sequence must end (waiting included), finishing with [`FinishReason::Timeout`].
    pub deadline: Option<Instant>,
}

impl SequenceRequest {
    fn timed_out(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

struct Shared {
    model: Arc<TextModel>,
    config: EngineConfig,
    queue: Mutex<VecDeque<SequenceRequest>>,
    wake: Condvar,
    running: AtomicUsize,
    stopped: AtomicBool,
    /// Prefills that reused a stored prefix, and the prompt tokens they did not compute.
    prefix_hits: AtomicU64,
    prefix_reused_tokens: AtomicU64,
}

/// A handle to the engine; clones share it. The scheduler stops when [`Engine::shutdown`] is
/// called.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.shared.config)
            .field("queued", &self.queue_depth())
            .field("running", &self.running())
            .finish()
    }
}

impl Engine {
    /// Starts the scheduler thread for `model`.
    pub fn start(model: Arc<TextModel>, config: EngineConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            model,
            config,
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            running: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            prefix_hits: AtomicU64::new(0),
            prefix_reused_tokens: AtomicU64::new(0),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("ft-scheduler".into())
            .spawn(move || Scheduler::new(worker).run())?;
        Ok(Self { shared })
    }

    /// The model it serves.
    pub fn model(&self) -> &Arc<TextModel> {
        &self.shared.model
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<SequenceRequest>> {
        // Only push/pop happen under the lock, so a poisoned queue is still consistent.
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the sequences of one request (all or none): 429 when the queue is full, 503
    /// after shutdown.
    pub fn submit(&self, sequences: Vec<SequenceRequest>) -> Result<(), ApiError> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the engine is shutting down"));
        }
        let max_queue = self.shared.config.max_queue;
        if sequences.len() > max_queue {
            // Waiting would not help: say so instead of a retryable 429.
            return Err(ApiError::invalid(
                "n",
                format!(
                    "the request needs {} sequences but the server queues at most {max_queue}",
                    sequences.len()
                ),
            ));
        }
        let mut queue = self.queue();
        if queue.len() + sequences.len() > max_queue {
            return Err(ApiError::overloaded(queue.len()));
        }
        queue.extend(sequences);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Sequences waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.queue().len()
    }

    /// Sequences being decoded.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Prefix reuse so far: `(prompts that reused a stored prefix, prompt tokens not
    /// recomputed)`.
    pub fn prefix_cache_stats(&self) -> (u64, u64) {
        (
            self.shared.prefix_hits.load(Ordering::Relaxed),
            self.shared.prefix_reused_tokens.load(Ordering::Relaxed),
        )
    }

    /// Stops the scheduler after its current step; queued requests are dropped (their
    /// clients see the stream end).
    pub fn shutdown(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.queue().clear();
        self.shared.wake.notify_all();
    }
}

/// A running sequence: its request, cache and the text sent so far.
struct Sequence {
    request: SequenceRequest,
    cache: Cache,
    sampler: LogitsProcessor,
    generated: Vec<u32>,
    /// The last sampled token, fed at the next step at `position`.
    next_token: u32,
    position: u32,
    emitted: String,
    /// Prompt tokens taken from the prefix store (OpenAI's `usage.prompt_tokens_details`).
    cached_tokens: usize,
}

struct Scheduler {
    shared: Arc<Shared>,
    running: Vec<Sequence>,
    prefixes: PrefixCache,
}

/// A request admitted to this step, with the stored prefix its prefill starts from.
struct Admitted {
    request: SequenceRequest,
    reuse: Option<Reuse>,
}

impl Admitted {
    /// Prompt tokens taken from the prefix store.
    fn reused(&self) -> usize {
        self.reuse.as_ref().map_or(0, |r| r.tokens)
    }

    /// Prompt tokens the prefill computes.
    fn computed(&self) -> usize {
        self.request.prompt_ids.len() - self.reused()
    }
}

fn adapter_of(request: &SequenceRequest) -> Option<&Arc<LoraAdapter>> {
    request.adapter.as_ref().map(|a| &a.adapter)
}

impl Scheduler {
    fn new(shared: Arc<Shared>) -> Self {
        let prefixes = PrefixCache::new(shared.config.prefix_cache_bytes);
        Self {
            shared,
            running: Vec::new(),
            prefixes,
        }
    }

    fn run(mut self) {
        loop {
            let admitted = {
                let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                while self.running.is_empty()
                    && queue.is_empty()
                    && !self.shared.stopped.load(Ordering::SeqCst)
                {
                    queue = self
                        .shared
                        .wake
                        .wait(queue)
                        .unwrap_or_else(|e| e.into_inner());
                }
                if self.shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let free = self
                    .shared
                    .config
                    .max_batch
                    .saturating_sub(self.running.len());
                let n = free.min(queue.len());
                queue.drain(..n).collect::<Vec<_>>()
            };
            let mut live = Vec::with_capacity(admitted.len());
            for request in admitted {
                if request.events.is_closed() {
                    continue;
                }
                if request.timed_out() {
                    // Its time ran out while it waited: free the slot without a prefill.
                    let _ = request.events.send(Event::Done {
                        index: request.index,
                        finish: FinishReason::Timeout,
                        completion_tokens: 0,
                        cached_tokens: 0,
                    });
                    continue;
                }
                let reuse = self
                    .prefixes
                    .lookup(adapter_of(&request), &request.prompt_ids);
                live.push(Admitted { request, reuse });
            }
            // All prompts admitted in this step are prefilled together (in groups of similar
            // length), so the first token does not wait behind every other prompt in turn.
            for group in prefill_groups(live) {
                let failed: Vec<_> = group
                    .iter()
                    .map(|a| (a.request.index, a.request.events.clone()))
                    .collect();
                match self.prefill(group) {
                    Ok(sequences) => self.running.extend(sequences),
                    Err(e) => {
                        let message = ft_core::error::one_line(&e);
                        tracing::error!(%message, "prefill failed");
                        for (index, events) in failed {
                            let _ = events.send(Event::Failed {
                                index,
                                message: message.clone(),
                            });
                        }
                    }
                }
            }
            self.shared
                .running
                .store(self.running.len(), Ordering::SeqCst);
            if self.running.is_empty() {
                continue;
            }
            if let Err(e) = self.step() {
                let message = ft_core::error::one_line(&e);
                tracing::error!(%message, "decode step failed; ending its sequences");
                for sequence in self.running.drain(..) {
                    let index = sequence.request.index;
                    let _ = sequence.request.events.send(Event::Failed {
                        index,
                        message: message.clone(),
                    });
                }
            }
            self.shared
                .running
                .store(self.running.len(), Ordering::SeqCst);
        }
    }

    /// Runs a group of prompts together (right-padded, each row under its own adapter), hands
    /// each its own cache and samples its first token. The rows of a group reuse stored
    /// prefixes of one length (or none): their caches start with those keys and values and
    /// only the rest of each prompt is computed. Sequences that already finished (or whose
    /// client left) are not returned.
    fn prefill(&mut self, group: Vec<Admitted>) -> candle_core::Result<Vec<Sequence>> {
        let model = &self.shared.model.model.transformer;
        if group.iter().any(|a| a.computed() == 0) {
            // Requests are validated non-empty and a reuse leaves the last token: never index
            // before the first computed token.
            candle_core::bail!("prefill: an empty prompt");
        }
        let past = group.first().map_or(0, Admitted::reused);
        if group.iter().any(|a| a.reused() != past) {
            candle_core::bail!("prefill: rows reuse prefixes of different lengths");
        }
        let computed: Vec<usize> = group.iter().map(Admitted::computed).collect();
        let longest = computed.iter().copied().max().unwrap_or(0);
        let rows = group.len();
        let mut tokens = Vec::with_capacity(rows * longest);
        let mut key_mask = Vec::with_capacity(rows);
        for (admitted, &n) in group.iter().zip(&computed) {
            let rest = &admitted.request.prompt_ids[past..];
            tokens.extend(
                rest.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, longest - n)),
            );
            key_mask.push(
                (0..past + longest)
                    .map(|i| u8::from(i < past + n))
                    .collect(),
            );
        }
        let device = model.device();
        let positions: Vec<u32> = (0..rows)
            .flat_map(|_| (past..past + longest).map(|p| p as u32))
            .collect();
        let inputs = Inputs {
            tokens: Tensor::from_vec(tokens, (rows, longest), device)?,
            positions: Tensor::from_vec(positions, (rows, longest), device)?,
            key_mask,
            segments: None,
        };
        let per_row: Vec<Option<Arc<LoraAdapter>>> = group
            .iter()
            .map(|a| adapter_of(&a.request).cloned())
            .collect();
        let adapters = RowAdapters::for_rows(&per_row, device)?;
        let lora = adapters.as_ref().map_or(Lora::None, Lora::Rows);
        let mut cache = if past > 0 {
            let prefixes: Vec<&[(Tensor, Tensor)]> = group
                .iter()
                .filter_map(|a| a.reuse.as_ref().map(|r| r.kv.as_slice()))
                .collect();
            Cache::from_prefixes(&prefixes, past, past + longest)?
        } else {
            model.new_cache_for(longest)
        };
        let hidden = model.forward_hidden(&inputs, Some(&mut cache), lora)?; // (rows, longest, hidden)
        let last: Vec<Tensor> = computed
            .iter()
            .enumerate()
            .map(|(row, &n)| hidden.narrow(0, row, 1)?.narrow(1, n - 1, 1))
            .collect::<candle_core::Result<_>>()?;
        let logits: Vec<Vec<f32>> = model
            .logits(&Tensor::cat(&last, 0)?.squeeze(1)?)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        if past > 0 {
            self.shared
                .prefix_hits
                .fetch_add(rows as u64, Ordering::Relaxed);
            let reused = (past * rows) as u64;
            self.shared
                .prefix_reused_tokens
                .fetch_add(reused, Ordering::Relaxed);
        }
        let requests: Vec<SequenceRequest> = group.into_iter().map(|a| a.request).collect();
        let lens: Vec<usize> = requests.iter().map(|r| r.prompt_ids.len()).collect();
        let capacities: Vec<usize> = requests
            .iter()
            .map(|r| r.prompt_ids.len() + r.max_tokens)
            .collect();
        let caches = cache.split_rows(&lens, &capacities)?;
        if self.shared.config.prefix_cache_bytes > 0 {
            for (request, cache) in requests.iter().zip(&caches) {
                let prompt = &request.prompt_ids;
                let copy = || cache.copy_prefix(prompt.len());
                let per_token = cache.bytes_per_token();
                self.prefixes
                    .insert(adapter_of(request), prompt, per_token, copy)?;
            }
        }
        let mut started = Vec::with_capacity(rows);
        for ((request, cache), row_logits) in requests.into_iter().zip(caches).zip(logits) {
            let position = request.prompt_ids.len() as u32;
            let mut sequence = Sequence {
                sampler: LogitsProcessor::new(request.sampling.clone()),
                request,
                cache,
                generated: Vec::new(),
                next_token: 0,
                position,
                emitted: String::new(),
                cached_tokens: past,
            };
            let token = sequence.sampler.sample(&row_logits);
            if self.advance(&mut sequence, token) {
                started.push(sequence);
            }
        }
        Ok(started)
    }

    /// One decoding step for every running sequence; drops the ones that finish.
    fn step(&mut self) -> candle_core::Result<()> {
        let model = &self.shared.model.model.transformer;
        let tokens: Vec<u32> = self.running.iter().map(|s| s.next_token).collect();
        let positions: Vec<u32> = self.running.iter().map(|s| s.position).collect();
        let per_row: Vec<Option<Arc<LoraAdapter>>> = self
            .running
            .iter()
            .map(|s| s.request.adapter.as_ref().map(|a| a.adapter.clone()))
            .collect();
        let rows = RowAdapters::for_rows(&per_row, model.device())?;
        let lora = rows.as_ref().map_or(Lora::None, Lora::Rows);
        let logits = {
            let mut caches: Vec<&mut Cache> =
                self.running.iter_mut().map(|s| &mut s.cache).collect();
            model.decode_rows(&tokens, &positions, &mut caches, lora)?
        };
        let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        let mut still_running = Vec::with_capacity(self.running.len());
        let running = std::mem::take(&mut self.running);
        for (mut sequence, row_logits) in running.into_iter().zip(logits) {
            sequence.position += 1;
            let token = sequence.sampler.sample(&row_logits);
            if self.advance(&mut sequence, token) {
                still_running.push(sequence);
            }
        }
        self.running = still_running;
        Ok(())
    }

    /// Takes a sampled token: sends the new text, decides whether the sequence goes on.
    fn advance(&self, sequence: &mut Sequence, token: u32) -> bool {
        let index = sequence.request.index;
        if sequence.request.events.is_closed() {
            return false;
        }
        let tokenizer = &self.shared.model.tokenizer;
        sequence.generated.push(token);
        let text = match tokenizer.decode(&sequence.generated, true) {
            Ok(text) => text,
            Err(e) => {
                let message = e.to_string();
                let _ = sequence
                    .request
                    .events
                    .send(Event::Failed { index, message });
                return false;
            }
        };
        let stop = &sequence.request.stop;
        let context = self
            .shared
            .model
            .model
            .transformer
            .config()
            .max_position_embeddings;
        let finished = if let Some(at) = first_stop(&text, stop) {
            Some((&text[..at], FinishReason::Stop))
        } else if tokenizer.eos_ids().contains(&token) {
            Some((text.trim_end_matches('\u{FFFD}'), FinishReason::Stop))
        } else if sequence.generated.len() >= sequence.request.max_tokens
            || sequence.position as usize + 1 >= context
        {
            Some((text.trim_end_matches('\u{FFFD}'), FinishReason::Length))
        } else if sequence.request.timed_out() {
            Some((text.trim_end_matches('\u{FFFD}'), FinishReason::Timeout))
        } else {
            None
        };
        match finished {
            Some((final_text, finish)) => {
                let final_text = final_text.to_string();
                send_delta(sequence, &final_text);
                let _ = sequence.request.events.send(Event::Done {
                    index,
                    finish,
                    completion_tokens: sequence.generated.len(),
                    cached_tokens: sequence.cached_tokens,
                });
                false
            }
            None => {
                let shown = safe_prefix(&text, stop).to_string();
                send_delta(sequence, &shown);
                sequence.next_token = token;
                true
            }
        }
    }
}

/// Most prompt tokens (padding included) in one prefill forward: bounds its memory and keeps a
/// decode step from waiting behind a huge batch.
const PREFILL_TOKEN_BUDGET: usize = 1024;

/// Splits admitted requests into prefill groups: by reused prefix length (a group's rows
/// share one past), then sorted by the tokens left to compute, so padding stays small, and
/// each group within [`PREFILL_TOKEN_BUDGET`] padded tokens (a prompt longer than that goes
/// alone).
fn prefill_groups(mut requests: Vec<Admitted>) -> Vec<Vec<Admitted>> {
    requests.sort_by_key(|a| (a.reused(), a.computed()));
    let mut groups: Vec<Vec<Admitted>> = Vec::new();
    for admitted in requests {
        // Sorted: this prompt is the longest of the group it joins.
        let fits = groups.last().is_some_and(|g| {
            g[0].reused() == admitted.reused()
                && (g.len() + 1) * admitted.computed() <= PREFILL_TOKEN_BUDGET
        });
        match groups.last_mut() {
            Some(group) if fits => group.push(admitted),
            _ => groups.push(vec![admitted]),
        }
    }
    groups
}

/// Sends the part of `text` after what was already emitted.
fn send_delta(sequence: &mut Sequence, text: &str) {
    let Some(new) = text.strip_prefix(sequence.emitted.as_str()) else {
        return; // decoding changed earlier text (rare); send nothing rather than garbage
    };
    if new.is_empty() {
        return;
    }
    let _ = sequence.request.events.send(Event::Delta {
        index: sequence.request.index,
        text: new.to_string(),
    });
    sequence.emitted.push_str(new);
}

/// Byte offset of the earliest stop string in `text`.
fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// The part of `text` that can be shown now: without a trailing incomplete character
/// (U+FFFD from a split multi-byte token) and without a suffix that may be the start of a stop
/// string.
fn safe_prefix<'t>(text: &'t str, stops: &[String]) -> &'t str {
    let text = text.trim_end_matches('\u{FFFD}');
    let mut end = text.len();
    for stop in stops {
        for (i, _) in text.char_indices().rev().take(stop.chars().count()) {
            if stop.starts_with(&text[i..]) {
                end = end.min(i);
            }
        }
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_stop_strings_and_split_characters() {
        let stops = vec!["###".to_string(), "END".to_string()];
        assert_eq!(safe_prefix("hello ##", &stops), "hello ");
        assert_eq!(safe_prefix("hello EN", &stops), "hello ");
        assert_eq!(safe_prefix("hello E!", &stops), "hello E!");
        assert_eq!(safe_prefix("caf\u{FFFD}", &stops), "caf");
        assert_eq!(safe_prefix("naïve", &[]), "naïve");
        assert_eq!(first_stop("a END b ### c", &stops), Some(2));
        assert_eq!(first_stop("nothing", &stops), None);
    }
}
