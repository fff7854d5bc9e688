//! x86-64 dot products of one weight row with one quantized activation row: AVX2, and the same
//! kernels with the byte products done by VNNI's `vpdpbusd` (AVX512-VNNI on 256-bit registers,
//! or AVX-VNNI). Layout tricks follow ggml's `ggml-cpu/arch/x86/quants.c`.
//!
//! Each kernel body is written once in a macro and stamped out per instruction set inside a
//! `#[target_feature]` function: intrinsics called through closures or plain helpers would
//! lose the feature and not inline. Integer sums are exact and equal the reference's; only
//! the order of the f32 accumulation differs.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::activation::XRow;
use super::reference::scale_min_k4;

/// Little-endian f16 at `p` to f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Q6_K's two high bits at `shift`, moved to bits 4..6 of each byte.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn high_pair(high: __m256i, shift: i32, three: __m256i) -> __m256i {
    let bits = _mm256_srl_epi16(high, _mm_cvtsi32_si128(shift));
    _mm256_slli_epi16(_mm256_and_si256(bits, three), 4)
}

/// 32 nibbles from 16 bytes: low nibbles in bytes 0..16, high nibbles in 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(p as *const __m128i);
    let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(bytes, _mm256_set1_epi8(0x0f))
}

/// 0xff in byte `j` where bit `j` of the little-endian u32 at `p` is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits_to_bytes(p: *const u8) -> __m256i {
    let x32 = i32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
    let shuffle = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuffle);
    let bit_mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, bit_mask), _mm256_set1_epi64x(-1))
}

/// Σ over byte pairs of u8 × i8 into 8 × i32, with `vpmaddubsw` + `vpmaddwd`. Exact for the
/// value ranges used here (|u8 · i8 · 2| < 2^15).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bytes_avx2(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// As [`dot_bytes_avx2`], in one `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn dot_bytes_vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

/// As [`dot_bytes_avx2`], with AVX-VNNI (no AVX-512).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot_bytes_avxvnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
}

macro_rules! kernels {
    ($module:ident, $features:literal, $dot:ident) => {
        /// The kernels of one instruction set.
        pub mod $module {
            #![allow(unsafe_op_in_unsafe_fn)]
            use super::*;

            /// i8 × i8 through the u8 × i8 product: |a| · (b with a's sign).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot_signed(a: __m256i, b: __m256i) -> __m256i {
                $dot(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
            }

            /// A 32-wide type: `weights(block)` gives the 32 integer weights (signed when
            /// `$signed`), with the scale at byte 0 and, for `_1` types, the minimum at byte 2.
            macro_rules! dot32 {
                ($name:ident, $bytes:expr, $signed:expr, $has_min:expr, |$b:ident| $weights:expr) => {
                    /// One row's dot product (see the module docs).
                    #[target_feature(enable = $features)]
                    pub unsafe fn $name(row: &[u8], x: XRow) -> f32 {
                        let nb = x.scales.len();
                        debug_assert_eq!(row.len(), nb * $bytes);
                        let (w, qs) = (row.as_ptr(), x.qs.as_ptr());
                        let mut acc = _mm256_setzero_ps();
                        let mut min_acc = 0f32;
                        for i in 0..nb {
                            let $b = w.add(i * $bytes);
                            let qw: __m256i = $weights;
                            let qx = _mm256_loadu_si256(qs.add(i * 32) as *const __m256i);
                            let sum = if $signed { dot_signed(qw, qx) } else { $dot(qw, qx) };
                            let d = _mm256_set1_ps(f16_at($b) * *x.scales.get_unchecked(i));
                            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sum), acc);
                            if $has_min {
                                min_acc += f16_at($b.add(2)) * *x.sums.get_unchecked(i);
                            }
                        }
                        hsum(acc) + min_acc
                    }
                };
            }

            dot32!(q4_0, 18, true, false, |b| _mm256_sub_epi8(
                nibbles(b.add(2)),
                _mm256_set1_epi8(8)
            ));
            dot32!(q4_1, 20, false, true, |b| nibbles(b.add(4)));
            dot32!(q5_0, 22, true, false, |b| {
                // A clear fifth bit makes the byte (nibble | 0xf0) = nibble − 16 as i8.
                let high = _mm256_andnot_si256(bits_to_bytes(b.add(2)), _mm256_set1_epi8(-16));
                _mm256_or_si256(nibbles(b.add(6)), high)
            });
            dot32!(q5_1, 24, false, true, |b| {
                let high = _mm256_and_si256(bits_to_bytes(b.add(4)), _mm256_set1_epi8(0x10));
                _mm256_or_si256(nibbles(b.add(8)), high)
            });
            dot32!(q8_0, 34, true, false, |b| _mm256_loadu_si256(
                b.add(2) as *const __m256i
            ));

            /// `scale_lo · Σ(bytes 0..16) + scale_hi · Σ(bytes 16..32)` of u8 × i8, exact.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot_scaled(u: __m256i, s: __m256i, lo: i32, hi: i32) -> __m256i {
                let scales = _mm256_set_m128i(_mm_set1_epi32(hi), _mm_set1_epi32(lo));
                _mm256_mullo_epi32($dot(u, s), scales)
            }

            /// Q4_K and Q5_K (`qh` present).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn q45k(row: &[u8], x: XRow, bytes: usize, five: bool) -> f32 {
                let nb = x.scales.len();
                debug_assert_eq!(row.len(), nb * bytes);
                let low = _mm256_set1_epi8(0x0f);
                let mut acc = 0f32;
                for i in 0..nb {
                    let b = row.as_ptr().add(i * bytes);
                    let dx = *x.scales.get_unchecked(i);
                    let scale_bytes = std::slice::from_raw_parts(b.add(4), 12);
                    let (qh, qs) = if five {
                        (b.add(16), b.add(48))
                    } else {
                        (b, b.add(16))
                    };
                    let high_bits = _mm256_loadu_si256(qh as *const __m256i);
                    let xq = x.qs.as_ptr().add(i * 256);
                    let bsums = x.bsums.as_ptr().add(i * 16);
                    let mut sum = _mm256_setzero_si256();
                    let mut mins = 0i32;
                    for chunk in 0..4 {
                        let (s_lo, m_lo) = scale_min_k4(2 * chunk, scale_bytes);
                        let (s_hi, m_hi) =
                            scale_min_k4(2 * chunk + 1, scale_bytes);
                        mins += m_lo * (*bsums.add(4 * chunk) + *bsums.add(4 * chunk + 1));
                        mins += m_hi * (*bsums.add(4 * chunk + 2) + *bsums.add(4 * chunk + 3));
                        let packed = _mm256_loadu_si256(qs.add(32 * chunk) as *const __m256i);
                        let mut lo = _mm256_and_si256(packed, low);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
                        if five {
                            let one = _mm256_set1_epi8(1);
                            let shift_lo = _mm_cvtsi32_si128(2 * chunk as i32);
                            let shift_hi = _mm_cvtsi32_si128(2 * chunk as i32 + 1);
                            let h_lo = _mm256_and_si256(_mm256_srl_epi16(high_bits, shift_lo), one);
                            let h_hi = _mm256_and_si256(_mm256_srl_epi16(high_bits, shift_hi), one);
                            lo = _mm256_or_si256(lo, _mm256_slli_epi16(h_lo, 4));
                            hi = _mm256_or_si256(hi, _mm256_slli_epi16(h_hi, 4));
                        }
                        let x_lo = _mm256_loadu_si256(xq.add(64 * chunk) as *const __m256i);
                        let x_hi = _mm256_loadu_si256(xq.add(64 * chunk + 32) as *const __m256i);
                        sum = _mm256_add_epi32(sum, dot_scaled(lo, x_lo, s_lo, s_lo));
                        sum = _mm256_add_epi32(sum, dot_scaled(hi, x_hi, s_hi, s_hi));
                    }
                    let total = hsum_i32(sum);
                    acc += f16_at(b) * dx * total as f32 - f16_at(b.add(2)) * dx * mins as f32;
                }
                acc
            }

            /// Q4_K's row dot product.
            #[target_feature(enable = $features)]
            pub unsafe fn q4_k(row: &[u8], x: XRow) -> f32 {
                q45k(row, x, 144, false)
            }

            /// Q5_K's row dot product.
            #[target_feature(enable = $features)]
            pub unsafe fn q5_k(row: &[u8], x: XRow) -> f32 {
                q45k(row, x, 176, true)
            }

            /// Q6_K's row dot product: weights taken unsigned (0..64) and 32 · Σx subtracted.
            #[target_feature(enable = $features)]
            pub unsafe fn q6_k(row: &[u8], x: XRow) -> f32 {
                let nb = x.scales.len();
                debug_assert_eq!(row.len(), nb * 210);
                let low = _mm256_set1_epi8(0x0f);
                let three = _mm256_set1_epi8(3);
                let mut acc = 0f32;
                for i in 0..nb {
                    let b = row.as_ptr().add(i * 210);
                    let (ql, qh, sc) = (b, b.add(128), b.add(192) as *const i8);
                    let xq = x.qs.as_ptr().add(i * 256);
                    let bsums = x.bsums.as_ptr().add(i * 16);
                    let mut sum = _mm256_setzero_si256();
                    let mut offset = 0i32;
                    for s in 0..16 {
                        offset += *sc.add(s) as i32 * *bsums.add(s);
                    }
                    for half in 0..2 {
                        let hb = _mm256_loadu_si256(qh.add(32 * half) as *const __m256i);
                        let l0 = _mm256_loadu_si256(ql.add(64 * half) as *const __m256i);
                        let l1 = _mm256_loadu_si256(ql.add(64 * half + 32) as *const __m256i);
                        let quarters = [
                            _mm256_or_si256(_mm256_and_si256(l0, low), high_pair(hb, 0, three)),
                            _mm256_or_si256(_mm256_and_si256(l1, low), high_pair(hb, 2, three)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low), high_pair(hb, 4, three)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low), high_pair(hb, 6, three)),
                        ];
                        for (k, q) in quarters.into_iter().enumerate() {
                            let at = 128 * half + 32 * k;
                            let xv = _mm256_loadu_si256(xq.add(at) as *const __m256i);
                            let s = at / 16;
                            let (lo, hi) = (*sc.add(s) as i32, *sc.add(s + 1) as i32);
                            sum = _mm256_add_epi32(sum, dot_scaled(q, xv, lo, hi));
                        }
                    }
                    let total = hsum_i32(sum) - 32 * offset;
                    acc += f16_at(b.add(208)) * *x.scales.get_unchecked(i) * total as f32;
                }
                acc
            }
        }
    };
}

kernels!(avx2, "avx2,fma,f16c", dot_bytes_avx2);
kernels!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl", dot_bytes_vnni);
kernels!(avxvnni, "avx2,fma,f16c,avxvnni", dot_bytes_avxvnni);
