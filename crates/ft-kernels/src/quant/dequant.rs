//! Fast dequantization of whole rows (for the gemm path of long prompts): the same arithmetic
//! as [`super::reference::dequantize_row`] (`scale · q + min`, bit for bit), written as plain
//! loops over each block that LLVM vectorizes when compiled for AVX2.

use super::format::{f16_at, QuantType};
use super::reference;

/// Dequantizes one row of `ty` blocks into `out`.
pub fn dequantize_row(ty: QuantType, row: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::dispatch::isa() != super::dispatch::Isa::Scalar {
        // SAFETY: the dispatcher reports a SIMD instruction set only when AVX2 is there.
        unsafe { dequantize_row_avx2(ty, row, out) };
        return;
    }
    dequantize_row_plain(ty, row, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_row_avx2(ty: QuantType, row: &[u8], out: &mut [f32]) {
    dequantize_row_plain(ty, row, out);
}

#[inline(always)]
fn dequantize_row_plain(ty: QuantType, row: &[u8], out: &mut [f32]) {
    let bytes = ty.block_bytes();
    let blocks = row.chunks_exact(bytes).zip(out.chunks_exact_mut(32));
    match ty {
        QuantType::Q4_0 => {
            blocks.for_each(|(b, y)| nibbles(&b[2..18], None, f16_at(b, 0), -8.0, 0.0, y))
        }
        QuantType::Q4_1 => {
            blocks.for_each(|(b, y)| nibbles(&b[4..20], None, f16_at(b, 0), 0.0, f16_at(b, 2), y))
        }
        QuantType::Q5_0 => blocks
            .for_each(|(b, y)| nibbles(&b[6..22], Some(&b[2..6]), f16_at(b, 0), -16.0, 0.0, y)),
        QuantType::Q5_1 => blocks.for_each(|(b, y)| {
            nibbles(
                &b[8..24],
                Some(&b[4..8]),
                f16_at(b, 0),
                0.0,
                f16_at(b, 2),
                y,
            )
        }),
        QuantType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            for (v, &q) in y.iter_mut().zip(&b[2..34]) {
                *v = d * (q as i8) as f32;
            }
        }),
        _ => reference::dequantize_row(ty, row, out),
    }
}

/// `y[j] = d · (q[j] + offset) + min` for the 32 4-bit (or, with `high`, 5-bit) values of a
/// block; the integer is formed first, as the reference does.
#[inline(always)]
fn nibbles(qs: &[u8], high: Option<&[u8]>, d: f32, offset: f32, min: f32, y: &mut [f32]) {
    let bits = high.map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
    let offset = offset as i32;
    for j in 0..16 {
        let lo = (qs[j] & 0x0f) as i32 | ((((bits >> j) & 1) << 4) as i32);
        let hi = (qs[j] >> 4) as i32 | ((((bits >> (j + 16)) & 1) << 4) as i32);
        y[j] = d * (lo + offset) as f32 + min;
        y[j + 16] = d * (hi + offset) as f32 + min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_reference_bit_for_bit() {
        for ty in [
            QuantType::Q4_0,
            QuantType::Q4_1,
            QuantType::Q5_0,
            QuantType::Q5_1,
            QuantType::Q8_0,
        ] {
            // Every byte value in every position, with finite f16 scales.
            let blocks = 64;
            let mut row = vec![0u8; blocks * ty.block_bytes()];
            for (i, b) in row.iter_mut().enumerate() {
                *b = (i * 37 + 11) as u8;
            }
            for block in row.chunks_exact_mut(ty.block_bytes()) {
                block[1] &= 0x3b; // keep the f16 scale (and minimum) finite
                if matches!(ty, QuantType::Q4_1 | QuantType::Q5_1) {
                    block[3] &= 0x3b;
                }
            }
            let (mut fast, mut plain) = (vec![0f32; blocks * 32], vec![0f32; blocks * 32]);
            dequantize_row(ty, &row, &mut fast);
            reference::dequantize_row(ty, &row, &mut plain);
            assert_eq!(fast, plain, "{ty:?}");
        }
    }
}
