//! Prompt-prefix reuse: the keys and values of recent prompts, so a prompt that starts as an
//! earlier one did (the same system prompt and template, a repeated question, a conversation
//! one turn longer) is prefilled from where they part. vLLM's automatic prefix caching and
//! llama.cpp's `cache_prompt` do the same; both are on by default.
//!
//! Keys and values depend on the adapter (its LoRA on k/v and on every earlier layer), so an
//! entry matches only prompts under the same adapter version: entries hold a `Weak` to it, which
//! also keeps its address from being reused while the entry lives. Bounded in bytes, least
//! recently used out first. A lookup compares the prompt with every entry (linear in the
//! entries' tokens); the byte bound keeps that small next to the prefill it saves.

use std::sync::{Arc, Weak};

use candle_core::Tensor;
use ft_model::LoraAdapter;

/// Fewest tokens worth reusing: below it the rows of one prefill would split into more groups
/// than the tokens saved pay for.
pub const MIN_REUSED_TOKENS: usize = 8;

/// Per layer `(keys, values)`, `(1, kv_heads, tokens, head_dim)` each.
pub type PromptKv = Arc<Vec<(Tensor, Tensor)>>;

/// What a lookup found: the first `tokens` slots of `kv` are the prompt's own.
#[derive(Clone)]
pub struct Reuse {
    /// Prompt tokens whose keys and values need not be computed.
    pub tokens: usize,
    /// The entry's keys and values (at least `tokens` slots).
    pub kv: PromptKv,
}

struct Entry<A> {
    adapter: Option<Weak<A>>,
    tokens: Vec<u32>,
    kv: PromptKv,
    bytes: usize,
    last_used: u64,
}

impl<A> Entry<A> {
    fn serves(&self, adapter: Option<&Arc<A>>) -> bool {
        match (&self.adapter, adapter) {
            (None, None) => true,
            (Some(weak), Some(arc)) => std::ptr::eq(weak.as_ptr(), Arc::as_ptr(arc)),
            _ => false,
        }
    }

    /// Whether its adapter was dropped (replaced or unloaded): it can never match again.
    fn orphaned(&self) -> bool {
        self.adapter.as_ref().is_some_and(|w| w.strong_count() == 0)
    }
}

/// The store; owned by the scheduler thread. `A` is what keys and values depend on besides
/// the tokens: the adapter.
pub struct PrefixCache<A = LoraAdapter> {
    entries: Vec<Entry<A>>,
    bytes: usize,
    capacity: usize,
    clock: u64,
}

impl<A> PrefixCache<A> {
    /// A store of at most `capacity` bytes of keys and values (0 turns reuse off).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            capacity,
            clock: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The longest stored prefix of `prompt` under `adapter`, leaving at least the prompt's
    /// last token to compute (its logits give the first new token).
    pub fn lookup(&mut self, adapter: Option<&Arc<A>>, prompt: &[u32]) -> Option<Reuse> {
        let most = prompt.len().saturating_sub(1);
        let (index, tokens) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.serves(adapter))
            .map(|(i, e)| {
                let common = e.tokens.iter().zip(prompt).take_while(|(a, b)| a == b);
                (i, common.count().min(most))
            })
            .max_by_key(|&(_, n)| n)?;
        if tokens < MIN_REUSED_TOKENS {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[index];
        entry.last_used = self.clock;
        Some(Reuse {
            tokens,
            kv: entry.kv.clone(),
        })
    }

    /// Keeps the keys and values of `tokens` (a prompt) under `adapter`, `bytes_per_token`
    /// each; `kv` copies them out, and is called only when they will be stored. An entry that
    /// already starts with the whole prompt makes this a no-op; entries that are a prefix of it
    /// are replaced (the new one serves every lookup they would).
    pub fn insert(
        &mut self,
        adapter: Option<&Arc<A>>,
        tokens: &[u32],
        bytes_per_token: usize,
        kv: impl FnOnce() -> candle_core::Result<Vec<(Tensor, Tensor)>>,
    ) -> candle_core::Result<()> {
        let bytes = tokens.len() * bytes_per_token;
        if self.capacity == 0 || tokens.len() < MIN_REUSED_TOKENS || bytes > self.capacity {
            return Ok(());
        }
        self.clock += 1;
        let clock = self.clock;
        if let Some(covering) = self
            .entries
            .iter_mut()
            .find(|e| e.serves(adapter) && e.tokens.starts_with(tokens))
        {
            covering.last_used = clock;
            return Ok(());
        }
        let kv = kv()?;
        // Orphaned entries can never match again; prefixes of this prompt are covered by it.
        let redundant = |e: &Entry<A>| e.serves(adapter) && tokens.starts_with(&e.tokens);
        self.entries.retain(|e| !(e.orphaned() || redundant(e)));
        self.bytes = self.entries.iter().map(|e| e.bytes).sum();
        while self.bytes + bytes > self.capacity {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used)
            else {
                break;
            };
            self.bytes -= self.entries.swap_remove(oldest).bytes;
        }
        self.entries.push(Entry {
            adapter: adapter.map(Arc::downgrade),
            tokens: tokens.to_vec(),
            kv: Arc::new(kv),
            bytes,
            last_used: clock,
        });
        self.bytes += bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Result};

    /// Bytes per token of [`kv`]'s entries: 2 layers · keys and values · 4 values · 4 bytes.
    const PER_TOKEN: usize = 64;

    /// Two layers of keys/values of `n` tokens: 2 · 2 · n · 4 values of 4 bytes.
    fn kv(n: usize) -> Result<Vec<(Tensor, Tensor)>> {
        let t = || Tensor::zeros((1, 1, n, 4), candle_core::DType::F32, &Device::Cpu);
        Ok(vec![(t()?, t()?), (t()?, t()?)])
    }

    #[test]
    fn finds_the_longest_common_prefix_and_leaves_the_last_token() -> Result<()> {
        let mut cache = PrefixCache::<u8>::new(1 << 20);
        let a: Vec<u32> = (0..20).collect();
        cache.insert(None, &a, PER_TOKEN, || kv(20))?;
        let mut b = a[..12].to_vec();
        b.extend([99, 98, 97]);
        assert_eq!(cache.lookup(None, &b).map(|r| r.tokens), Some(12));
        // The same prompt again: everything but its last token.
        assert_eq!(cache.lookup(None, &a).map(|r| r.tokens), Some(19));
        // Too short a match is no match.
        let c: Vec<u32> = (0..5).chain(50..60).collect();
        assert!(cache.lookup(None, &c).is_none());
        Ok(())
    }

    #[test]
    fn entries_match_only_their_adapter() -> Result<()> {
        let mut cache = PrefixCache::<u8>::new(1 << 20);
        let prompt: Vec<u32> = (0..20).collect();
        cache.insert(None, &prompt, PER_TOKEN, || kv(20))?;
        let adapter = Arc::new(1u8);
        assert!(cache.lookup(Some(&adapter), &prompt).is_none());
        cache.insert(Some(&adapter), &prompt, PER_TOKEN, || kv(20))?;
        assert_eq!(
            cache.lookup(Some(&adapter), &prompt).map(|r| r.tokens),
            Some(19)
        );
        let other = Arc::new(2u8);
        assert!(cache.lookup(Some(&other), &prompt).is_none());
        Ok(())
    }

    #[test]
    fn stays_within_its_bytes_dropping_the_least_recently_used() -> Result<()> {
        // Each 16-token entry: 2 layers · 2 · 16 · 4 · 4 bytes = 1 KiB.
        let mut cache = PrefixCache::<u8>::new(2048);
        let prompt = |first: u32| (first..first + 16).collect::<Vec<u32>>();
        cache.insert(None, &prompt(0), PER_TOKEN, || kv(16))?;
        cache.insert(None, &prompt(100), PER_TOKEN, || kv(16))?;
        assert!(cache.lookup(None, &prompt(0)).is_some()); // 0 is now the newer
        cache.insert(None, &prompt(200), PER_TOKEN, || kv(16))?;
        assert_eq!(cache.bytes(), 2048);
        assert!(cache.lookup(None, &prompt(100)).is_none());
        assert!(cache.lookup(None, &prompt(0)).is_some());
        assert!(cache.lookup(None, &prompt(200)).is_some());
        Ok(())
    }

    #[test]
    fn a_longer_prompt_replaces_its_prefix_and_a_covered_one_is_not_stored() -> Result<()> {
        let mut cache = PrefixCache::<u8>::new(1 << 20);
        let short: Vec<u32> = (0..16).collect();
        let long: Vec<u32> = (0..32).collect();
        cache.insert(None, &short, PER_TOKEN, || kv(16))?;
        cache.insert(None, &long, PER_TOKEN, || kv(32))?;
        assert_eq!(cache.bytes(), 2048);
        cache.insert(None, &short, PER_TOKEN, || {
            candle_core::bail!("copied the keys and values of a covered prompt")
        })?;
        assert_eq!(cache.bytes(), 2048);
        assert_eq!(cache.lookup(None, &short).map(|r| r.tokens), Some(15));
        Ok(())
    }
}
