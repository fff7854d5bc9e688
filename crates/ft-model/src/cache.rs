//! The KV cache: keys and values of the tokens seen so far, per layer, for a batch of rows.

use candle_core::{Result, Tensor};

/// Keys and values of one layer, `(batch, kv_heads, len, head_dim)` each.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    /// Appends new keys/values along the sequence and returns everything cached.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.kv {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Cached sequence length.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.kv.is_none()
    }
}

/// One [`LayerCache`] per block. Passed to `forward` as `&mut`; the model itself stays shared.
#[derive(Debug, Clone)]
pub struct Cache {
    layers: Vec<LayerCache>,
}

impl Cache {
    /// An empty cache for `num_layers` blocks.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
        }
    }

    /// The cache of block `i`.
    pub fn layer(&mut self, i: usize) -> &mut LayerCache {
        &mut self.layers[i]
    }

    /// Number of tokens cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
