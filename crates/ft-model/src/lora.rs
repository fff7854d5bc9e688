//! LoRA adapters: configuration, PEFT-compatible initialisation, and the per-module update
//! `scale · x·Aᵀ·Bᵀ` that [`crate::linear::Linear`] adds to the frozen output.
//!
//! Saving and loading in PEFT's format live in [`crate::adapter_io`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::model::Transformer;

/// The modules a LoRA adapter attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// Every linear layer of the blocks (PEFT's `"all-linear"`; the LM head excluded).
    AllLinear,
    /// Modules whose last name component is in the list (`q_proj`, `v_proj`, ...).
    Names(Vec<String>),
}

impl TargetModules {
    /// Whether the module `name` (e.g. `q_proj`) is targeted.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::AllLinear => true,
            Self::Names(names) => names.iter().any(|n| n == name),
        }
    }

    /// Parses `all-linear` or a comma-separated list of module names.
    pub fn parse(spec: &str) -> Self {
        if spec.trim() == "all-linear" {
            Self::AllLinear
        } else {
            Self::Names(
                spec.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            )
        }
    }
}

/// LoRA hyperparameters, as in PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank of the update.
    pub r: usize,
    /// Scaling numerator: the update is multiplied by `alpha / r` (or `alpha / √r` with rsLoRA).
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    pub dropout: f64,
    /// Which modules get an adapter.
    pub target_modules: TargetModules,
    /// Rank-stabilised scaling `alpha / √r`.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    /// The seed recipe: r 8, alpha 16, dropout 0.05, all linear layers.
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: TargetModules::AllLinear,
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// The factor applied to `x·Aᵀ·Bᵀ`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// Dropout on the adapters' input, shared by every module of one adapter. Off until the
/// trainer sets a seed for the forward pass; each module then draws its mask from
/// `(seed, module index)`, so masks are reproducible with no RNG state to save.
#[derive(Debug, Default)]
pub struct LoraDropout {
    p: f64,
    seed: Mutex<Option<u64>>,
}

impl LoraDropout {
    fn new(p: f64) -> Arc<Self> {
        Arc::new(Self {
            p,
            seed: Mutex::new(None),
        })
    }

    fn current_seed(&self) -> Option<u64> {
        if self.p <= 0.0 {
            return None;
        }
        self.seed.lock().map(|s| *s).unwrap_or(None)
    }

    /// The mask `x` is multiplied by: 0 with probability `p`, else `1/(1-p)`.
    fn mask(&self, x: &Tensor, seed: u64, module: u64) -> Result<Tensor> {
        let mut rng = StdRng::seed_from_u64(
            seed ^ module.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let p = self.p as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
            .collect();
        Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())
    }
}

/// The adapter of one linear module: `A: (r, in)`, `B: (out, r)`.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// Down-projection `(r, in)`.
    pub a: Tensor,
    /// Up-projection `(out, r)`.
    pub b: Tensor,
    /// The scale applied to the product.
    pub scale: f64,
    /// The adapter's dropout and this module's index in it.
    dropout: Option<(Arc<LoraDropout>, u64)>,
}

impl LoraModule {
    /// The dropout mask for the input `x` of this step (`None` when dropout is off): the same
    /// mask every time it is asked for within a step, so a backward can rebuild it.
    pub fn dropout_mask(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match &self.dropout {
            Some((dropout, index)) => match dropout.current_seed() {
                Some(seed) => Ok(Some(dropout.mask(x, seed, *index)?)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// `scale · dropout(x)·Aᵀ·Bᵀ` for `x: (.., in)` → `(.., out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dropped;
        let x = match self.dropout_mask(x)? {
            Some(mask) => {
                dropped = x.mul(&mask)?;
                &dropped
            }
            None => x,
        };
        let a = self.a.to_dtype(x.dtype())?;
        let b = self.b.to_dtype(x.dtype())?;
        x.broadcast_matmul(&a.t()?)?
            .broadcast_matmul(&b.t()?)?
            .affine(self.scale, 0.0)
    }
}

/// A set of LoRA modules keyed by module path (`model.layers.0.self_attn.q_proj`).
///
/// Passed to [`Transformer::forward`] as an argument: the model never owns an adapter.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    config: LoraConfig,
    modules: BTreeMap<String, LoraModule>,
    /// Trainable parameters by PEFT key, empty for an adapter loaded for inference.
    vars: Vec<(String, Var)>,
    base_fingerprint: Option<String>,
    dropout: Arc<LoraDropout>,
}

/// A stable number for a module path (FNV-1a), so each module's dropout masks depend only on
/// the seed and the module, not on the order modules were created in.
fn module_id(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The PEFT key of a module's A or B matrix.
pub fn peft_key(module_path: &str, matrix: char) -> String {
    format!("base_model.model.{module_path}.lora_{matrix}.weight")
}

impl LoraAdapter {
    /// A new trainable adapter for `model`, initialised as PEFT does: `A` Kaiming-uniform
    /// (a = √5, i.e. U(−1/√in, 1/√in)), `B` zeros. `seed` makes the initialisation reproducible.
    pub fn init(
        model: &Transformer,
        config: LoraConfig,
        seed: u64,
        base_fingerprint: Option<String>,
    ) -> Result<Self> {
        let device = model.device();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut modules = BTreeMap::new();
        let mut vars = Vec::new();
        let dropout = LoraDropout::new(config.dropout);
        for linear in model.linears() {
            if !config.target_modules.matches(linear.name()) {
                continue;
            }
            let (out_features, in_features) = linear.shape();
            let bound = 1.0 / (in_features as f64).sqrt();
            let a_values: Vec<f32> = (0..config.r * in_features)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(
                a_values,
                (config.r, in_features),
                device,
            )?)?;
            let b = Var::zeros((out_features, config.r), DType::F32, device)?;
            modules.insert(
                linear.path().to_string(),
                LoraModule {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    scale: config.scale(),
                    dropout: Some((dropout.clone(), module_id(linear.path()))),
                },
            );
            vars.push((peft_key(linear.path(), 'A'), a));
            vars.push((peft_key(linear.path(), 'B'), b));
        }
        if modules.is_empty() {
            candle_core::bail!(
                "LoRA target modules {:?} match no layer",
                config.target_modules
            );
        }
        Ok(Self {
            config,
            modules,
            vars,
            base_fingerprint,
            dropout,
        })
    }

    /// An adapter from already-loaded matrices (`(module path, A, B)`), not trainable.
    pub fn from_modules(
        config: LoraConfig,
        matrices: Vec<(String, Tensor, Tensor)>,
        base_fingerprint: Option<String>,
    ) -> Self {
        let scale = config.scale();
        let dropout = LoraDropout::new(config.dropout);
        let modules = matrices
            .into_iter()
            .map(|(path, a, b)| {
                let module = LoraModule {
                    a,
                    b,
                    scale,
                    dropout: None,
                };
                (path, module)
            })
            .collect();
        Self {
            config,
            modules,
            vars: Vec::new(),
            base_fingerprint,
            dropout,
        }
    }

    /// Makes every matrix a trainable variable (e.g. to resume training from a saved adapter),
    /// with the configured dropout.
    pub fn into_trainable(self) -> Result<Self> {
        let mut modules = BTreeMap::new();
        let mut vars = Vec::new();
        let dropout = LoraDropout::new(self.config.dropout);
        for (path, module) in self.modules {
            let a = Var::from_tensor(&module.a.to_dtype(DType::F32)?)?;
            let b = Var::from_tensor(&module.b.to_dtype(DType::F32)?)?;
            vars.push((peft_key(&path, 'A'), a.clone()));
            vars.push((peft_key(&path, 'B'), b.clone()));
            let id = module_id(&path);
            modules.insert(
                path,
                LoraModule {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    scale: module.scale,
                    dropout: Some((dropout.clone(), id)),
                },
            );
        }
        Ok(Self {
            modules,
            vars,
            dropout,
            ..self
        })
    }

    /// Turns dropout on for the following forward passes with masks drawn from `seed`, or off
    /// with `None` (evaluation, inference). Without a seed, or with `dropout = 0`, it is off.
    pub fn set_dropout_seed(&self, seed: Option<u64>) {
        if let Ok(mut current) = self.dropout.seed.lock() {
            *current = seed;
        }
    }

    /// The module at `path`, when the adapter targets it.
    pub fn module(&self, path: &str) -> Option<&LoraModule> {
        self.modules.get(path)
    }

    /// All modules by path.
    pub fn modules(&self) -> &BTreeMap<String, LoraModule> {
        &self.modules
    }

    /// The hyperparameters.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Trainable variables by PEFT key (empty when loaded for inference).
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The fingerprint of the base the adapter was made for, when known.
    pub fn base_fingerprint(&self) -> Option<&str> {
        self.base_fingerprint.as_deref()
    }

    /// Every matrix by PEFT key, as saved in `adapter_model.safetensors`.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.modules
            .iter()
            .flat_map(|(path, m)| {
                [
                    (peft_key(path, 'A'), m.a.clone()),
                    (peft_key(path, 'B'), m.b.clone()),
                ]
            })
            .collect()
    }

    /// A copy for inference: the same values, detached from the autograd graph, no dropout.
    pub fn detached(&self) -> Self {
        let modules = self
            .modules
            .iter()
            .map(|(path, m)| {
                let module = LoraModule {
                    a: m.a.detach(),
                    b: m.b.detach(),
                    scale: m.scale,
                    dropout: None,
                };
                (path.clone(), module)
            })
            .collect();
        Self {
            config: self.config.clone(),
            modules,
            vars: Vec::new(),
            base_fingerprint: self.base_fingerprint.clone(),
            dropout: LoraDropout::new(0.0),
        }
    }
}

/// Which adapter a forward pass applies: none, one for every row, or one per row.
///
/// `Option<&LoraAdapter>` and `&RowAdapters` convert into it, so `forward(.., None)` and
/// `forward(.., Some(&adapter))` read as before.
#[derive(Debug, Clone, Copy, Default)]
pub enum Lora<'a> {
    /// The frozen base alone.
    #[default]
    None,
    /// The same adapter for every row.
    One(&'a LoraAdapter),
    /// Different adapters for different rows of one batch.
    Rows(&'a RowAdapters),
}

impl<'a> From<Option<&'a LoraAdapter>> for Lora<'a> {
    fn from(adapter: Option<&'a LoraAdapter>) -> Self {
        adapter.map_or(Self::None, Self::One)
    }
}

impl<'a> From<&'a LoraAdapter> for Lora<'a> {
    fn from(adapter: &'a LoraAdapter) -> Self {
        Self::One(adapter)
    }
}

impl<'a> From<&'a RowAdapters> for Lora<'a> {
    fn from(rows: &'a RowAdapters) -> Self {
        Self::Rows(rows)
    }
}

/// Rows of a batch grouped by adapter: the frozen base runs once for the whole batch and each
/// adapter's low-rank update only on its own rows (rows without an adapter get none).
#[derive(Debug, Clone)]
pub struct RowAdapters {
    /// Each adapter with the `u32` indices of its rows (along dimension 0).
    groups: Vec<(Arc<LoraAdapter>, Tensor)>,
    rows: usize,
}

impl RowAdapters {
    /// Groups `per_row` (the adapter of each row, `None` for the base) by adapter identity.
    pub fn new(per_row: &[Option<Arc<LoraAdapter>>], device: &Device) -> Result<Self> {
        let mut groups: Vec<(Arc<LoraAdapter>, Vec<u32>)> = Vec::new();
        for (row, adapter) in per_row.iter().enumerate() {
            let Some(adapter) = adapter else { continue };
            match groups.iter_mut().find(|(a, _)| Arc::ptr_eq(a, adapter)) {
                Some((_, rows)) => rows.push(row as u32),
                None => groups.push((adapter.clone(), vec![row as u32])),
            }
        }
        let groups = groups
            .into_iter()
            .map(|(adapter, rows)| {
                let n = rows.len();
                Ok((adapter, Tensor::from_vec(rows, n, device)?))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            groups,
            rows: per_row.len(),
        })
    }

    /// [`RowAdapters::new`] when at least one row has an adapter; `None` when every row runs on
    /// the base alone (then the forward pass needs no adapter at all).
    pub fn for_rows(per_row: &[Option<Arc<LoraAdapter>>], device: &Device) -> Result<Option<Self>> {
        if per_row.iter().any(Option::is_some) {
            Self::new(per_row, device).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The low-rank updates of module `path` for `x: (rows, .., in)`, added to `y: (rows, .., out)`.
    pub(crate) fn add_updates(&self, path: &str, x: &Tensor, mut y: Tensor) -> Result<Tensor> {
        if x.dim(0)? != self.rows {
            candle_core::bail!(
                "adapters were assigned to {} rows but the batch has {}",
                self.rows,
                x.dim(0)?
            );
        }
        for (adapter, rows) in &self.groups {
            let Some(module) = adapter.module(path) else {
                continue;
            };
            if rows.dim(0)? == self.rows {
                y = (y + module.forward(x)?)?;
            } else {
                let update = module.forward(&x.index_select(rows, 0)?)?;
                y = y.index_add(rows, &update, 0)?;
            }
        }
        Ok(y)
    }
}
