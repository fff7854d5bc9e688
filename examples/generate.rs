//! Answer a question with the default model from Rust code.
//!
//! ```sh
//! scripts/fetch-model.sh && cargo run --release --example generate -- "What is 2 + 2?"
//! ```

#![expect(clippy::print_stdout, reason = "an example prints its answer")]

use ft::model::{text::TextRequest, TextModel};

fn main() -> anyhow::Result<()> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the capital of France?".to_string());
    let path = ft::hub::resolve_model(None)?;
    let model = TextModel::load(&path, &candle_core::Device::Cpu)?;
    let request = TextRequest {
        prompt,
        raw: false,
        max_new_tokens: 64,
        sampling: Default::default(),
    };
    println!("{}", model.generate(&request, None)?);
    Ok(())
}
