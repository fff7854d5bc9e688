//! Train the seed demo from Rust code and ask the adapter the question.
//!
//! ```sh
//! scripts/fetch-model.sh && cargo run --release --example train
//! ```

#![expect(clippy::print_stdout, reason = "an example prints its answer")]

use ft::model::text::TextRequest;
use ft::model::TextModel;
use ft::train::{TrainConfig, TrainOptions, Trainer};

fn main() -> anyhow::Result<()> {
    let model = TextModel::load(&ft::hub::resolve_model(None)?, &candle_core::Device::Cpu)?;
    let config = TrainConfig::from_file("datasets/seed-demo.toml".as_ref())?;
    let options = TrainOptions {
        data: "datasets/seed-demo.jsonl".into(),
        out: "runs/example".into(),
        overwrite: true,
        ..TrainOptions::default()
    };
    let outcome = Trainer::new(&model, config, options).run(&mut |_| {})?;

    let adapter = model
        .model
        .load_adapter(&outcome.adapter_dir, &Default::default())?;
    let request = TextRequest {
        prompt: "Which is the best place to learn GenAI?".into(),
        raw: false,
        max_new_tokens: 32,
        sampling: Default::default(),
    };
    println!("{}", model.generate(&request, Some(&adapter))?);
    Ok(())
}
