//! `y = x·Wᵀ` with a quantized frozen `W`: activations quantized to 8 bits per block, integer
//! dot products, output rows split over the worker threads. Each weight row is read once per
//! call whatever the number of activation rows (a decode step of B sequences reads every
//! weight once).

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::activation::{QuantizedRows, XRow};
use super::dispatch::{isa, kernel_for, kernel_tile_for, Isa, RowDot, TileDot, TILE_ROWS};
use super::format::QuantMatrix;

/// Activation rows per cache tile: a tile of 16-bit rows (64 · 1536 · 2 bytes = 192 KiB at
/// the widest SmolLM2 input) stays in L2 while a task's weight rows pass over it.
const X_TILE: usize = 64;

/// Output rows per task: small enough to balance two to sixteen threads, big enough that a
/// task's overhead (an atomic add and a call) is noise next to its dot products.
fn rows_per_task(rows: usize, batch: usize) -> usize {
    let threads = crate::threads::num_threads().max(1);
    // A dozen tasks per thread: the region ends when its last task does, so small tasks
    // keep the threads' finishing times close (claiming one is a single atomic add).
    let per_task = rows.div_ceil(threads * 12);
    // At least ~8k multiply-adds per task.
    let min_rows = (256 / batch.max(1)).max(1);
    // Whole tiles of weight rows, so only a matrix's last task has a ragged end.
    per_task
        .max(min_rows)
        .next_multiple_of(TILE_ROWS)
        .min(rows.max(1))
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: tasks write disjoint (row, column) cells of one buffer that outlives them all.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    /// # Safety
    /// `start..start + n` is inside the buffer, and no other task touches it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, start: usize, n: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(start), n)
    }

    /// # Safety
    /// `at` is inside the buffer, and no other task writes it.
    unsafe fn write(&self, at: usize, value: f32) {
        *self.0.add(at) = value;
    }
}

/// Activation rows per tile-kernel call.
const TILE_X_ROWS: usize = 4;

/// The kernels of one product, picked once per call.
struct Kernels {
    /// The row kernel, for the types without tiles (K-quants) and the reference.
    one: RowDot,
    tile: Option<TileDot<TILE_X_ROWS>>,
    tile1: Option<TileDot<1>>,
}

impl Kernels {
    /// Output columns `columns` (weight rows) of activation rows `first_x..first_x + x.len()`.
    ///
    /// # Safety
    /// `out` holds `(batch, w.rows())` values, `columns` is inside `0..w.rows()` and no other
    /// task writes those columns of these rows.
    unsafe fn product(
        &self,
        w: &QuantMatrix,
        out: Output,
        columns: std::ops::Range<usize>,
        first_x: usize,
        x: &[XRow],
    ) {
        let rows = w.rows();
        let mut r = columns.start;
        if let (Some(tile), Some(tile1)) = (self.tile, self.tile1) {
            // Every output of a 32-wide type comes from a tile kernel, whatever the batch
            // size or the row's place in it, so a sequence gets the same bits alone and in a
            // batch. A ragged last tile repeats its last weight row and drops those outputs.
            while r < columns.end {
                let valid = TILE_ROWS.min(columns.end - r);
                let ws: [&[u8]; TILE_ROWS] = std::array::from_fn(|j| w.row(r + j.min(valid - 1)));
                let write = |b: usize, values: &[f32; TILE_ROWS]| {
                    // SAFETY: columns r..r + valid of row first_x + b are this task's.
                    unsafe { out.row((first_x + b) * rows + r, valid) }
                        .copy_from_slice(&values[..valid]);
                };
                let mut b = 0;
                while b + TILE_X_ROWS <= x.len() {
                    let group: [XRow; TILE_X_ROWS] = std::array::from_fn(|j| x[b + j]);
                    for (j, values) in tile(&ws, &group).iter().enumerate() {
                        write(b + j, values);
                    }
                    b += TILE_X_ROWS;
                }
                for (b, x_row) in x.iter().enumerate().skip(b) {
                    write(b, &tile1(&ws, &[*x_row])[0]);
                }
                r += valid;
            }
        }
        for r in r..columns.end {
            let row = w.row(r);
            for (b, x_row) in x.iter().enumerate() {
                // SAFETY: column r of row first_x + b is this task's.
                unsafe { out.write((first_x + b) * rows + r, (self.one)(row, *x_row)) };
            }
        }
    }
}

/// `x: (batch, cols)` row-major → `(batch, rows)`, with the kernels of `isa`.
pub fn matmul_with(isa: Isa, w: &QuantMatrix, x: &[f32], batch: usize) -> Result<Vec<f32>> {
    Ok(matmul_many_with(isa, &[w], x, batch)?.remove(0))
}

/// Several products of the same input (q/k/v, gate/up): the activations are quantized once
/// and every matrix's rows are split over the threads in one parallel region. The weights
/// must share their row length and block type. Each result equals [`matmul_with`]'s.
pub fn matmul_many_with(
    isa: Isa,
    ws: &[&QuantMatrix],
    x: &[f32],
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let Some(first) = ws.first() else {
        return Ok(Vec::new());
    };
    let (cols, ty) = (first.cols(), first.quant_type());
    if ws.iter().any(|w| w.cols() != cols || w.quant_type() != ty) {
        bail!("quantized matmul: the matrices of one product differ in width or block type");
    }
    if x.len() != batch * cols {
        bail!(
            "quantized matmul: {} inputs for {batch} rows of {cols}",
            x.len()
        );
    }
    if !crate::quant::Isa::available().contains(&isa) {
        bail!("quantized matmul: {isa:?} is not supported by this CPU");
    }
    let xq = QuantizedRows::quantize(x, batch, cols, ty.block_len());
    let kernels = Kernels {
        one: kernel_for(isa, ty),
        tile: kernel_tile_for::<TILE_X_ROWS>(isa, ty),
        tile1: kernel_tile_for::<1>(isa, ty),
    };
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; batch * w.rows()]).collect();
    let outs: Vec<Output> = ys.iter_mut().map(|y| Output(y.as_mut_ptr())).collect();
    let x_rows: Vec<_> = (0..batch).map(|b| xq.row(b)).collect();
    // (matrix, first row, rows) of every task, over all the matrices.
    let mut tasks = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        let chunk = rows_per_task(w.rows(), batch);
        for start in (0..w.rows()).step_by(chunk) {
            tasks.push((i, start, chunk.min(w.rows() - start)));
        }
    }
    let task = |(i, start, n): (usize, usize, usize)| {
        for tile in (0..batch).step_by(X_TILE) {
            let x = &x_rows[tile..(tile + X_TILE).min(batch)];
            // SAFETY: the task owns output columns start..start + n of every row.
            unsafe { kernels.product(ws[i], outs[i], start..start + n, tile, x) };
        }
    };
    crate::threads::parallel_for(tasks.len(), &|t| task(tasks[t]));
    Ok(ys)
}

/// [`matmul_many_with`] with the fastest kernels this CPU has.
pub fn matmul_many(ws: &[&QuantMatrix], x: &[f32], batch: usize) -> Result<Vec<Vec<f32>>> {
    matmul_many_with(isa(), ws, x, batch)
}

/// `x: (batch, cols)` → `(batch, rows)` with the fastest kernels this CPU has.
pub fn matmul(w: &QuantMatrix, x: &[f32], batch: usize) -> Result<Vec<f32>> {
    matmul_with(isa(), w, x, batch)
}

/// `x·Wᵀ` for a tensor `x: (.., cols)` (f32, CPU).
///
/// When `x` carries a gradient (training on a quantized base, QLoRA-style), the product is
/// the dequantized weight's exact f32 gemm, tile by tile, and its backward gives
/// `dX = dY·W` the same way: the weight is never held in f32 beyond one tile.
pub fn quantized_linear(x: &Tensor, w: &std::sync::Arc<QuantMatrix>) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let Some(last) = dims.last_mut() else {
        bail!("quantized linear: the input is a scalar");
    };
    if *last != w.cols() {
        bail!(
            "quantized linear: input has {} features, weight expects {}",
            last,
            w.cols()
        );
    }
    *last = w.rows();
    let rows = x.elem_count() / w.cols();
    let x2 = x.reshape((rows, w.cols()))?.contiguous()?;
    let y = if x.track_op() {
        x2.apply_op1(TrainableQuantizedLinear { weight: w.clone() })?
    } else if rows >= GEMM_MIN_ROWS && x.dtype() == candle_core::DType::F32 {
        dequantized_gemm(&x2, w)?
    } else {
        x2.apply_op1_no_bwd(&QuantizedLinear { weight: w.clone() })?
    };
    y.reshape(dims)
}

/// From this many activation rows (a prompt), the product dequantizes the weights tile by
/// tile and runs candle's f32 gemm, as ggml does with a BLAS: gemm's register blocking beats
/// per-row integer dot products once the unpacking is shared by enough rows (measured on
/// SmolLM2, 512-token prefill on 2 threads: 216 tokens/s integer, 338 dequantize + gemm). Below
/// it (decode batches of up to 32 rows) the integer kernels win: `ft serve` at 32 streams gave
/// 124 tokens/s with the gemm path from 32 rows, 144 with it from 64.
pub const GEMM_MIN_ROWS: usize = 64;

/// Weight rows dequantized at once: ≤ 6 MiB of f32 at SmolLM2's widest input.
const GEMM_TILE_ROWS: usize = 1024;

thread_local! {
    /// The dequantized tile, kept per thread: a fresh 6 MiB buffer per product was faulted in
    /// page by page every call (measured: 5 % of a quantized 512-token prefill).
    static DEQUANTIZED_TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `x: (batch, cols)` f32 · dequantized `Wᵀ`, one tile of weight rows at a time, each tile's
/// product written by gemm straight into its columns of the output.
pub fn dequantized_gemm(x: &Tensor, w: &QuantMatrix) -> Result<Tensor> {
    let (batch, cols) = x.dims2()?;
    if cols != w.cols() {
        bail!(
            "dequantized gemm: input has {cols} features, weight expects {}",
            w.cols()
        );
    }
    let y = crate::host::with_f32(x, "dequantized gemm", |x| {
        Ok(dequantized_gemm_rows(x, batch, w))
    })?;
    Tensor::from_vec(y, (batch, w.rows()), x.device())
}

fn dequantized_gemm_rows(x: &[f32], batch: usize, w: &QuantMatrix) -> Vec<f32> {
    let (rows, cols) = (w.rows(), w.cols());
    let mut y = vec![0f32; batch * rows];
    let parallelism = gemm_parallelism();
    DEQUANTIZED_TILE.with_borrow_mut(|tile| {
        tile.resize(GEMM_TILE_ROWS.min(rows) * cols, 0.0);
        for start in (0..rows).step_by(GEMM_TILE_ROWS) {
            let n = GEMM_TILE_ROWS.min(rows - start);
            dequantize_tile(w, start, n, tile);
            // SAFETY: y is (batch, rows) row-major, so columns start..start + n of every row
            // are at y[start..] with row stride `rows`; x is (batch, cols) and the tile
            // (n, cols), read as its transpose (cols, n); all three outlive the call.
            unsafe {
                gemm::gemm(
                    batch,
                    n,
                    cols,
                    y.as_mut_ptr().add(start),
                    1,
                    rows as isize,
                    false,
                    x.as_ptr(),
                    1,
                    cols as isize,
                    tile.as_ptr(),
                    cols as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
    });
    y
}

/// gemm's threading: candle's worker count.
fn gemm_parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        threads if threads > 1 => gemm::Parallelism::Rayon(threads),
        _ => gemm::Parallelism::None,
    }
}

/// `dy: (batch, rows)` f32 · dequantized `W` → `(batch, cols)`: the input gradient of
/// [`dequantized_gemm`], tile by tile.
pub fn dequantized_gemm_backward_tensor(dy: &Tensor, w: &QuantMatrix) -> Result<Tensor> {
    let (batch, rows) = dy.dims2()?;
    if rows != w.rows() {
        bail!(
            "dequantized gemm backward: gradient has {rows} features, weight has {} rows",
            w.rows()
        );
    }
    let dx = crate::host::with_f32(dy, "dequantized gemm backward", |dy| {
        Ok(dequantized_gemm_backward(dy, batch, w))
    })?;
    Tensor::from_vec(dx, (batch, w.cols()), dy.device())
}

/// `dY: (batch, rows)` · dequantized `W: (rows, cols)` → `dX: (batch, cols)`, one tile of
/// weight rows at a time, each tile's product added into `dX` by gemm.
fn dequantized_gemm_backward(dy: &[f32], batch: usize, w: &QuantMatrix) -> Vec<f32> {
    let (rows, cols) = (w.rows(), w.cols());
    let mut dx = vec![0f32; batch * cols];
    let parallelism = gemm_parallelism();
    DEQUANTIZED_TILE.with_borrow_mut(|tile| {
        tile.resize(GEMM_TILE_ROWS.min(rows) * cols, 0.0);
        for (index, start) in (0..rows).step_by(GEMM_TILE_ROWS).enumerate() {
            let n = GEMM_TILE_ROWS.min(rows - start);
            dequantize_tile(w, start, n, tile);
            // SAFETY: dx is (batch, cols); dY's columns start..start + n are at dy[start..]
            // with row stride `rows`; the tile is (n, cols) row-major; all outlive the call.
            unsafe {
                gemm::gemm(
                    batch,
                    cols,
                    n,
                    dx.as_mut_ptr(),
                    1,
                    cols as isize,
                    index > 0,
                    dy.as_ptr().add(start),
                    1,
                    rows as isize,
                    tile.as_ptr(),
                    1,
                    cols as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
    });
    dx
}

/// Dequantizes weight rows `start..start + n` into `tile` (`(n, cols)`), rows split over the
/// worker threads.
fn dequantize_tile(w: &QuantMatrix, start: usize, n: usize, tile: &mut [f32]) {
    let cols = w.cols();
    let out = Output(tile.as_mut_ptr());
    const ROWS_PER_TASK: usize = 32;
    crate::threads::parallel_for(n.div_ceil(ROWS_PER_TASK), &|t| {
        let rows = t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n);
        for r in rows {
            // SAFETY: row r of the tile belongs to this task alone.
            let row = unsafe { out.row(r * cols, cols) };
            w.dequantize_row(start + r, row);
        }
    });
}

/// The product with a backward to `x` (the weight frozen): f32 gemm over dequantized tiles
/// both ways.
struct TrainableQuantizedLinear {
    weight: std::sync::Arc<QuantMatrix>,
}

impl CustomOp1 for TrainableQuantizedLinear {
    fn name(&self) -> &'static str {
        "quantized-linear-trainable"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, _) = layout.shape().dims2()?;
        let x = crate::host::f32_slice(x, layout, "quantized linear")?;
        let y = dequantized_gemm_rows(x, batch, &self.weight);
        Ok((CpuStorage::F32(y), Shape::from((batch, self.weight.rows()))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dequantized_gemm_backward_tensor(
            &dy.contiguous()?,
            &self.weight,
        )?))
    }
}

struct QuantizedLinear {
    weight: std::sync::Arc<QuantMatrix>,
}

impl CustomOp1 for QuantizedLinear {
    fn name(&self) -> &'static str {
        "quantized-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, _) = layout.shape().dims2()?;
        let x = crate::host::f32_slice(x, layout, "quantized linear")?;
        let y = matmul(&self.weight, x, batch)?;
        Ok((CpuStorage::F32(y), Shape::from((batch, self.weight.rows()))))
    }
}
