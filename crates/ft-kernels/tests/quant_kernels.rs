//! The quantized kernels against their references: block unpacking against candle's ggml port
//! (an independent implementation), every SIMD kernel against the plain reference (integer
//! parts exact, float accumulation within `REL_TOL`), and the reference against f32 math.

use candle_core::quantized::QTensor;
use candle_core::{Device, Result, Tensor};
use ft_kernels::quant::{
    matmul_with, reference, vec_dot, Isa, QuantMatrix, QuantType, QuantizedRows,
};

/// Relative difference allowed between SIMD and reference results, relative to Σ|w·x| (the
/// kernels accumulate the same terms in another order).
const REL_TOL: f32 = 1e-5;

/// Deterministic pseudo-random values in [-1, 1) with a few outliers, as real weights have.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            if i % 97 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

fn quantized(
    ty: QuantType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Result<(QuantMatrix, Vec<f32>)> {
    let w = Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu)?;
    let q = QTensor::quantize(&w, ty.to_ggml())?;
    let candle_dequant: Vec<f32> = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let matrix = QuantMatrix::new(ty, rows, cols, q.data()?.into_owned())?;
    Ok((matrix, candle_dequant))
}

fn widths(ty: QuantType) -> &'static [usize] {
    if ty.is_k_quant() {
        &[256, 1536, 2304]
    } else {
        &[32, 576, 1536]
    }
}

#[test]
fn dequantization_equals_candles_ggml_port() -> Result<()> {
    for ty in QuantType::ALL {
        for &cols in widths(ty) {
            let (matrix, expected) = quantized(ty, 7, cols, cols as u64)?;
            assert_eq!(matrix.dequantize(), expected, "{ty:?} width {cols}");
        }
    }
    Ok(())
}

#[test]
fn reference_dot_is_the_dequantized_dot() -> Result<()> {
    for ty in QuantType::ALL {
        for &cols in widths(ty) {
            let (matrix, dequant) = quantized(ty, 3, cols, 7)?;
            let x = values(cols, 11);
            let xq = QuantizedRows::quantize(&x, 1, cols, ty.block_len());
            for r in 0..3 {
                let row = &dequant[r * cols..(r + 1) * cols];
                let exact: f32 = row.iter().zip(&x).map(|(w, x)| w * x).sum();
                let scale: f32 = row.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum();
                let ours = reference::vec_dot(ty, matrix.row(r), xq.row(0));
                // Only the activations' 16-bit rounding separates the two.
                assert!(
                    (ours - exact).abs() <= 1e-3 * scale,
                    "{ty:?} width {cols} row {r}: {ours} vs {exact} (scale {scale})"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn simd_integer_sums_equal_the_reference() -> Result<()> {
    // Extreme activations (±32767 everywhere) make the widest integer sums.
    for ty in QuantType::ALL {
        let cols = widths(ty)[1];
        let (matrix, _) = quantized(ty, 4, cols, 3)?;
        let x: Vec<f32> = (0..cols)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let xq = QuantizedRows::quantize(&x, 1, cols, ty.block_len());
        let scale = abs_scale(&matrix, &xq, 1);
        for isa in Isa::available() {
            for (r, row_scale) in scale.iter().enumerate() {
                let want = reference::vec_dot(ty, matrix.row(r), xq.row(0));
                let got = vec_dot(isa, &matrix, r, &xq, 0)?;
                let bound = REL_TOL * row_scale;
                assert!(
                    (got - want).abs() <= bound,
                    "{ty:?} {isa:?} row {r}: {got} vs {want}"
                );
            }
        }
    }
    Ok(())
}

/// `Σ|w·x|` per (batch row, weight row): the scale the float error is relative to.
fn abs_scale(matrix: &QuantMatrix, x: &QuantizedRows, batch: usize) -> Vec<f32> {
    let mut w = vec![0f32; matrix.cols()];
    let mut out = vec![0f32; batch * matrix.rows()];
    for r in 0..matrix.rows() {
        matrix.dequantize_row(r, &mut w);
        for b in 0..batch {
            let row = x.row(b);
            let mut s = 0f32;
            for (i, wv) in w.iter().enumerate() {
                s += (wv * row.scales[i / x.block_len] * row.qs[i] as f32).abs();
            }
            out[b * matrix.rows() + r] = s;
        }
    }
    out
}

fn check_matmul(ty: QuantType, rows: usize, cols: usize, batch: usize) -> Result<()> {
    let (matrix, _) = quantized(ty, rows, cols, (rows * 31 + cols) as u64)?;
    let x = values(batch * cols, batch as u64 + 5);
    let xq = QuantizedRows::quantize(&x, batch, cols, ty.block_len());
    let want = matmul_with(Isa::Scalar, &matrix, &x, batch)?;
    let scale = abs_scale(&matrix, &xq, batch);
    for isa in Isa::available() {
        let got = matmul_with(isa, &matrix, &x, batch)?;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let bound = REL_TOL * scale[i].max(1e-3);
            assert!(
                (g - w).abs() <= bound,
                "{ty:?} {isa:?} {rows}x{cols} batch {batch} at {i}: {g} vs {w}"
            );
        }
    }
    Ok(())
}

#[test]
fn matmul_matches_reference_for_model_shapes_and_batches() -> Result<()> {
    for ty in QuantType::ALL {
        let (narrow, wide) = if ty.is_k_quant() {
            (1536, 2304)
        } else {
            (576, 1536)
        };
        // The 32-wide types go through the tile kernels (eight weight rows by four activation
        // rows, then one at a time for the rest of the batch); the K-quants through the row
        // kernels. 32: `ft serve`'s largest decode batch.
        for batch in [1, 2, 3, 5, 13, 16, 32] {
            check_matmul(ty, narrow, wide, batch)?;
            check_matmul(ty, wide, narrow, batch)?;
        }
        // A row count that is not a multiple of the tile's eight rows, nor of a task's.
        check_matmul(ty, 101, wide, 6)?;
    }
    Ok(())
}

#[test]
fn tile_kernels_integer_sums_equal_the_reference() -> Result<()> {
    // As `simd_integer_sums_equal_the_reference`, through the tile kernels (batch > 1): the
    // largest activations make the largest block sums, summed across lanes by the kernel.
    for ty in QuantType::ALL.into_iter().filter(|t| !t.is_k_quant()) {
        let (rows, cols, batch) = (24, 1536, 5);
        let (matrix, _) = quantized(ty, rows, cols, 11)?;
        let x: Vec<f32> = (0..batch * cols)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let xq = QuantizedRows::quantize(&x, batch, cols, ty.block_len());
        let scale = abs_scale(&matrix, &xq, batch);
        for isa in Isa::available() {
            let got = matmul_with(isa, &matrix, &x, batch)?;
            for (i, g) in got.iter().enumerate() {
                let want = reference::vec_dot(ty, matrix.row(i % rows), xq.row(i / rows));
                assert!(
                    (g - want).abs() <= REL_TOL * scale[i],
                    "{ty:?} {isa:?} at {i}: {g} vs {want}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn matmul_matches_reference_for_a_vocabulary_sized_head() -> Result<()> {
    // SmolLM2's tied head: 49152 rows of 576, in its GGUF's Q8_0, and Q4_0.
    check_matmul(QuantType::Q8_0, 49152, 576, 1)?;
    check_matmul(QuantType::Q4_0, 49152, 576, 3)
}

#[test]
fn rejects_mismatched_shapes() -> Result<()> {
    assert!(QuantMatrix::new(QuantType::Q4_1, 2, 48, vec![0; 60]).is_err());
    assert!(QuantMatrix::new(QuantType::Q4_1, 2, 64, vec![0; 79]).is_err());
    let m = QuantMatrix::new(QuantType::Q4_1, 2, 64, vec![0; 80])?;
    assert!(matmul_with(Isa::Scalar, &m, &[0.0; 63], 1).is_err());
    Ok(())
}

#[test]
fn gemm_path_for_long_prompts_matches_the_integer_reference() -> Result<()> {
    // From GEMM_MIN_ROWS rows, `quantized_linear` dequantizes the weights and runs f32 gemm:
    // it must agree with the integer reference up to the activations' 16-bit rounding.
    use ft_kernels::quant::{quantized_linear, GEMM_MIN_ROWS};
    let batch = GEMM_MIN_ROWS + 3;
    for ty in [QuantType::Q4_1, QuantType::Q8_0, QuantType::Q6K] {
        let (rows, cols) = if ty.is_k_quant() {
            (300, 512)
        } else {
            (1100, 576)
        };
        let (matrix, _) = quantized(ty, rows, cols, 9)?;
        let matrix = std::sync::Arc::new(matrix);
        let x = values(batch * cols, 21);
        let xq = QuantizedRows::quantize(&x, batch, cols, ty.block_len());
        let want = matmul_with(Isa::Scalar, &matrix, &x, batch)?;
        let scale = abs_scale(&matrix, &xq, batch);
        let input = Tensor::from_vec(x, (batch, cols), &Device::Cpu)?;
        let got: Vec<f32> = quantized_linear(&input, &matrix)?
            .flatten_all()?
            .to_vec1()?;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * scale[i].max(1e-3),
                "{ty:?} at {i}: {g} vs {w}"
            );
        }
    }
    Ok(())
}

#[test]
fn several_products_of_one_input_equal_each_alone() -> Result<()> {
    use ft_kernels::quant::matmul_many_with;
    let (q, _) = quantized(QuantType::Q4_1, 576, 576, 1)?;
    let (k, _) = quantized(QuantType::Q4_1, 192, 576, 2)?;
    let (v, _) = quantized(QuantType::Q4_1, 192, 576, 3)?;
    for batch in [1, 9] {
        let x = values(batch * 576, 4);
        for isa in Isa::available() {
            let together = matmul_many_with(isa, &[&q, &k, &v], &x, batch)?;
            for (m, y) in [&q, &k, &v].into_iter().zip(&together) {
                assert_eq!(y, &matmul_with(isa, m, &x, batch)?, "{isa:?} batch {batch}");
            }
        }
    }
    let (other, _) = quantized(QuantType::Q8_0, 192, 576, 5)?;
    assert!(matmul_many_with(Isa::Scalar, &[&q, &other], &values(576, 1), 1).is_err());
    Ok(())
}

#[test]
fn a_row_gets_the_same_bits_alone_and_in_a_batch() -> Result<()> {
    // A served sequence must not change its answer with the batch it lands in: every output
    // of a 32-wide type comes from the same tile kernel, whatever the batch size and place.
    for ty in QuantType::ALL.into_iter().filter(|t| !t.is_k_quant()) {
        let (rows, cols, batch) = (101, 576, 7);
        let (matrix, _) = quantized(ty, rows, cols, 5)?;
        let x = values(batch * cols, 6);
        for isa in Isa::available() {
            let together = matmul_with(isa, &matrix, &x, batch)?;
            for b in 0..batch {
                let alone = matmul_with(isa, &matrix, &x[b * cols..(b + 1) * cols], 1)?;
                assert_eq!(
                    &together[b * rows..(b + 1) * rows],
                    &alone[..],
                    "{ty:?} {isa:?} row {b}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn trainable_product_and_its_backward_equal_dense_math_on_the_dequantized_weight() -> Result<()> {
    // Training on a quantized base: with a gradient, y = x·Wᵀ and dX = dY·W over the
    // dequantized weight (tiles of 1024 rows: 1100 rows make a ragged second tile), against
    // candle's dense matmul and autograd on the same dequantized values.
    use candle_core::Var;
    use ft_kernels::quant::quantized_linear;
    for (ty, rows, cols, batch) in [
        (QuantType::Q4_0, 1100, 576, 5),
        (QuantType::Q8_0, 96, 64, 70),
        (QuantType::Q4K, 300, 256, 3),
    ] {
        let (matrix, dequantized) = quantized(ty, rows, cols, 4)?;
        let matrix = std::sync::Arc::new(matrix);
        let w = Tensor::from_vec(dequantized, (rows, cols), &Device::Cpu)?;
        let x = Var::from_tensor(&Tensor::from_vec(
            values(batch * cols, 8),
            (batch, cols),
            &Device::Cpu,
        )?)?;
        let upstream = Tensor::from_vec(values(batch * rows, 12), (batch, rows), &Device::Cpu)?;
        let y = quantized_linear(x.as_tensor(), &matrix)?;
        let y_dense = x.as_tensor().matmul(&w.t()?)?;
        let close = |a: &Tensor, b: &Tensor| -> Result<f32> {
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            Ok(diff / b.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert!(close(&y, &y_dense)? < 1e-5, "{ty:?}: forward");
        let grad = |y: &Tensor| -> Result<Tensor> {
            let grads = (y * &upstream)?.sum_all()?.backward()?;
            grads
                .get(x.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
        };
        let (dx, dx_dense) = (grad(&y)?, grad(&y_dense)?);
        assert!(close(&dx, &dx_dense)? < 1e-5, "{ty:?}: backward");
    }
    Ok(())
}
