//! Packing several examples into one row changes nothing about each example's loss: attention
//! stays inside the example, positions restart, and no token is predicted across a boundary.

use std::path::Path;

use anyhow::Result;
use candle_core::Device;
use ft_data::{BatchConfig, Batcher, TokenizedExample};
use ft_model::loss::{causal_lm_loss, per_example_nll};
use ft_model::Model;

/// Per-example NLL sums, packed vs one example per row.
const PACKED_ABS_TOL: f32 = 1e-4;

fn examples() -> Vec<TokenizedExample> {
    (0..9u32)
        .map(|i| {
            let len = 3 + (i * 5) % 9;
            TokenizedExample {
                input_ids: (0..len).map(|t| (i * 37 + t * 11) % 128).collect(),
                // Labels on the second half, like an answer after a prompt.
                labels: (0..len).map(|t| t >= len / 2).collect(),
            }
        })
        .collect()
}

fn nll_by_example(batcher: &Batcher, model: &Model) -> Result<Vec<f32>> {
    let mut by_example = vec![f32::NAN; batcher.examples().len()];
    for rows in batcher.plan(0) {
        let batch = batcher.batch(&rows);
        let loss = causal_lm_loss(&model.transformer, &batch, None)?;
        for (&example, nll) in batch
            .examples
            .iter()
            .zip(per_example_nll(&batch, &loss.per_token)?)
        {
            by_example[example] = nll;
        }
    }
    Ok(by_example)
}

#[test]
fn per_example_loss_packed_equals_unpacked() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama/model");
    let model = Model::load(&dir, &Device::Cpu)?;
    let config = BatchConfig {
        batch_size: 2,
        max_seq_len: 24,
        packing: false,
        seed: 3,
        pad_id: 0,
    };
    let unpacked = nll_by_example(&Batcher::new(examples(), config.clone()), &model)?;
    let packed_batcher = Batcher::new(
        examples(),
        BatchConfig {
            packing: true,
            ..config
        },
    );
    assert!(
        packed_batcher
            .plan(0)
            .iter()
            .flatten()
            .any(|row| row.len() > 1),
        "the test must pack several examples into a row"
    );
    let packed = nll_by_example(&packed_batcher, &model)?;
    for (i, (a, b)) in unpacked.iter().zip(&packed).enumerate() {
        assert!(a.is_finite() && *a > 0.0, "example {i} has no loss");
        assert!(
            (a - b).abs() < PACKED_ABS_TOL,
            "example {i}: unpacked {a} vs packed {b}"
        );
    }
    Ok(())
}
