//! The plain implementation of every block type: unpacking, dequantization and the dot product
//! with quantized activations. Obviously correct, slow, and what the SIMD kernels are tested
//! against (their integer sums must equal these exactly).

use super::activation::XRow;
use super::format::{f16_at, QuantType};

/// A 32-block unpacked: integer weights `q`, and `w ≈ scale · q + min`.
struct Unpacked32 {
    q: [i32; 32],
    scale: f32,
    min: f32,
}

/// A 256-block unpacked: integer weights `q`, 16-value sub-block scales and minimums (integers),
/// and `w ≈ d · scale[s] · q − dmin · min[s]`.
struct Unpacked256 {
    q: [i32; 256],
    /// Per 16 values (K-quants with 32-value sub-blocks repeat each entry twice).
    scales: [i32; 16],
    mins: [i32; 16],
    d: f32,
    dmin: f32,
}

fn nibbles(qs: &[u8], q: &mut [i32; 32]) {
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) as i32;
        q[j + 16] = (qs[j] >> 4) as i32;
    }
}

fn fifth_bits(qh: &[u8], q: &mut [i32; 32]) {
    let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((bits >> j) & 1) << 4) as i32;
    }
}

fn unpack32(ty: QuantType, b: &[u8]) -> Unpacked32 {
    let mut q = [0i32; 32];
    let scale = f16_at(b, 0);
    let (offset, min) = match ty {
        QuantType::Q4_0 => {
            nibbles(&b[2..18], &mut q);
            (8, 0.0)
        }
        QuantType::Q4_1 => {
            nibbles(&b[4..20], &mut q);
            (0, f16_at(b, 2))
        }
        QuantType::Q5_0 => {
            nibbles(&b[6..22], &mut q);
            fifth_bits(&b[2..6], &mut q);
            (16, 0.0)
        }
        QuantType::Q5_1 => {
            nibbles(&b[8..24], &mut q);
            fifth_bits(&b[4..8], &mut q);
            (0, f16_at(b, 2))
        }
        QuantType::Q8_0 => {
            for (v, &byte) in q.iter_mut().zip(&b[2..34]) {
                *v = byte as i8 as i32;
            }
            (0, 0.0)
        }
        _ => unreachable!("unpack32 takes a 32-wide type"),
    };
    for v in &mut q {
        *v -= offset;
    }
    Unpacked32 { q, scale, min }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and minimum of sub-block `j` (0..8).
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (i32, i32) {
    if j < 4 {
        ((s[j] & 63) as i32, (s[j + 4] & 63) as i32)
    } else {
        let scale = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        let min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (scale as i32, min as i32)
    }
}

fn unpack256(ty: QuantType, b: &[u8]) -> Unpacked256 {
    let mut u = Unpacked256 {
        q: [0; 256],
        scales: [0; 16],
        mins: [0; 16],
        d: 0.0,
        dmin: 0.0,
    };
    match ty {
        QuantType::Q4K | QuantType::Q5K => {
            u.d = f16_at(b, 0);
            u.dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let (qh, qs) = if ty == QuantType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for sub in 0..8 {
                let (scale, min) = scale_min_k4(sub, scales);
                u.scales[2 * sub] = scale;
                u.scales[2 * sub + 1] = scale;
                u.mins[2 * sub] = min;
                u.mins[2 * sub + 1] = min;
            }
            for chunk in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * chunk + l];
                    let (lo, hi) = (64 * chunk + l, 64 * chunk + 32 + l);
                    u.q[lo] = (byte & 0x0f) as i32;
                    u.q[hi] = (byte >> 4) as i32;
                    if let Some(qh) = qh {
                        u.q[lo] |= (((qh[l] >> (2 * chunk)) & 1) << 4) as i32;
                        u.q[hi] |= (((qh[l] >> (2 * chunk + 1)) & 1) << 4) as i32;
                    }
                }
            }
        }
        QuantType::Q6K => {
            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
            u.d = f16_at(b, 208);
            for (s, &v) in u.scales.iter_mut().zip(scales) {
                *s = v as i8 as i32;
            }
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                let y = &mut u.q[128 * half..];
                for l in 0..32 {
                    y[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                    y[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                }
            }
        }
        _ => unreachable!("unpack256 takes a K-quant"),
    }
    u
}

/// Dequantizes one row (`row.len()` bytes of blocks) into `out`.
pub fn dequantize_row(ty: QuantType, row: &[u8], out: &mut [f32]) {
    let (n, bytes) = (ty.block_len(), ty.block_bytes());
    for (block, y) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(n)) {
        if ty.is_k_quant() {
            let u = unpack256(ty, block);
            for (i, v) in y.iter_mut().enumerate() {
                let s = i / 16;
                *v = u.d * u.scales[s] as f32 * u.q[i] as f32 - u.dmin * u.mins[s] as f32;
            }
        } else {
            let u = unpack32(ty, block);
            for (v, &q) in y.iter_mut().zip(&u.q) {
                *v = u.scale * q as f32 + u.min;
            }
        }
    }
}

/// The integer part of one block's dot product, as the SIMD kernels must reproduce it exactly:
/// for a 32-block `Σ q·qx`; for a 256-block `(Σ_s scale[s]·Σ q·qx, Σ_s min[s]·Σ qx)` (in i64:
/// 16-bit activations times 6-bit scales exceed i32 over a whole block).
pub fn block_integer_dot(ty: QuantType, block: &[u8], qx: &[i16]) -> (i64, i64) {
    if ty.is_k_quant() {
        let u = unpack256(ty, block);
        let (mut scaled, mut mins) = (0i64, 0i64);
        for s in 0..16 {
            let range = 16 * s..16 * (s + 1);
            let dot: i64 = u.q[range.clone()]
                .iter()
                .zip(&qx[range.clone()])
                .map(|(&q, &x)| (q * x as i32) as i64)
                .sum();
            let sum_x: i64 = qx[range].iter().map(|&x| x as i64).sum();
            scaled += u.scales[s] as i64 * dot;
            mins += u.mins[s] as i64 * sum_x;
        }
        (scaled, mins)
    } else {
        let u = unpack32(ty, block);
        let dot: i32 = u.q.iter().zip(qx).map(|(&q, &x)| q * x as i32).sum();
        (dot as i64, 0)
    }
}

/// `Σ w·x` of one weight row with one activation row: the reference kernel.
pub fn vec_dot(ty: QuantType, row: &[u8], x: XRow) -> f32 {
    let (n, bytes) = (ty.block_len(), ty.block_bytes());
    let mut acc = 0f32;
    for (xb, block) in row.chunks_exact(bytes).enumerate() {
        let qx = &x.qs[xb * n..(xb + 1) * n];
        let (dot, mins) = block_integer_dot(ty, block, qx);
        let dx = x.scales[xb];
        acc += if ty.is_k_quant() {
            let u_d = if ty == QuantType::Q6K {
                f16_at(block, 208)
            } else {
                f16_at(block, 0)
            };
            let dmin = if ty == QuantType::Q6K {
                0.0
            } else {
                f16_at(block, 2)
            };
            u_d * dx * dot as f32 - dmin * dx * mins as f32
        } else {
            let scale = f16_at(block, 0);
            let min_term = match ty {
                QuantType::Q4_1 | QuantType::Q5_1 => f16_at(block, 2) * x.sums[xb],
                _ => 0.0,
            };
            scale * dx * dot as f32 + min_term
        };
    }
    acc
}
