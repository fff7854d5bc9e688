//! The quantized matmul kernels alone: multiply-adds per second of `x·Wᵀ` for SmolLM2's layer
//! shapes (the seven projections of one block) at the batch sizes decode and serving use, per
//! instruction set, and the f32 gemm of the same shapes (candle's `matmul` on dequantized
//! weights) for comparison. Random weights (quantized by candle's ggml port), so it needs no
//! model.
//!
//! `cargo bench --bench quant_matmul -- [--threads 2] [--type q4_1] [--batches 1,4,8,16,32,64]`

#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::time::Instant;

use anyhow::Result;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use ft::kernels::quant::{matmul_many_with, Isa, QuantMatrix, QuantType};

/// (rows, cols) of q, k, v, o, gate, up, down in SmolLM2-135M.
const SHAPES: [(usize, usize); 7] = [
    (576, 576),
    (192, 576),
    (192, 576),
    (576, 576),
    (1536, 576),
    (1536, 576),
    (576, 1536),
];

/// One timed call: the seven products of one block.
type Run = Box<dyn Fn() -> Result<()>>;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_add(0x9e3779b97f4a7c15);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let threads = flag("--threads").and_then(|v| v.parse().ok()).unwrap_or(2);
    let ty_name = flag("--type").unwrap_or_else(|| "q4_1".into());
    let ty = QuantType::ALL
        .into_iter()
        .find(|t| format!("{t:?}").eq_ignore_ascii_case(&ty_name))
        .ok_or_else(|| anyhow::anyhow!("unknown --type {ty_name}"))?;
    let batches: Vec<usize> = flag("--batches")
        .unwrap_or_else(|| "1,4,8,16,32,64".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ft::kernels::threads::set_num_threads(threads)?;
    let cols_of = |(_, c): (usize, usize)| {
        if ty.is_k_quant() {
            c.div_ceil(256) * 256
        } else {
            c
        }
    };
    let mut matrices = Vec::new();
    let mut dense = Vec::new();
    for (i, &shape) in SHAPES.iter().enumerate() {
        let (rows, cols) = (shape.0, cols_of(shape));
        let w = Tensor::from_vec(values(rows * cols, i as u64), (rows, cols), &Device::Cpu)?;
        let q = QTensor::quantize(&w, ty.to_ggml())?;
        matrices.push(QuantMatrix::new(ty, rows, cols, q.data()?.into_owned())?);
        dense.push(q.dequantize(&Device::Cpu)?.t()?);
    }
    let macs_per_row: usize = SHAPES.iter().map(|&s| s.0 * cols_of(s)).sum();
    println!("{ty:?}, {threads} threads, the 7 projections of one SmolLM2 block per call");
    println!("batch  isa          GMAC/s   µs per block");
    for &batch in &batches {
        let mut runs: Vec<(String, Run)> = Vec::new();
        for isa in Isa::available() {
            let xs: Vec<Vec<f32>> = SHAPES
                .iter()
                .map(|&s| values(batch * cols_of(s), 7))
                .collect();
            let ms = matrices.clone();
            runs.push((
                format!("{isa:?}"),
                Box::new(move || {
                    for (m, x) in ms.iter().zip(&xs) {
                        matmul_many_with(isa, &[m], x, batch)?;
                    }
                    Ok(())
                }),
            ));
        }
        let xs: Vec<Tensor> = SHAPES
            .iter()
            .map(|&s| {
                Tensor::from_vec(
                    values(batch * cols_of(s), 7),
                    (batch, cols_of(s)),
                    &Device::Cpu,
                )
            })
            .collect::<candle_core::Result<_>>()?;
        let ds = dense.clone();
        runs.push((
            "f32 gemm".into(),
            Box::new(move || {
                for (w, x) in ds.iter().zip(&xs) {
                    x.matmul(w)?;
                }
                Ok(())
            }),
        ));
        for (name, run) in &runs {
            run()?;
            // Enough calls for ~0.3 s.
            let start = Instant::now();
            let mut calls = 0usize;
            while start.elapsed().as_secs_f64() < 0.3 {
                run()?;
                calls += 1;
            }
            let per_call = start.elapsed().as_secs_f64() / calls as f64;
            let gmacs = (macs_per_row * batch) as f64 / per_call / 1e9;
            println!("{batch:5}  {name:11} {gmacs:8.2} {:10.1}", per_call * 1e6);
        }
    }
    Ok(())
}
