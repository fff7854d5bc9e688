//! x86-64 dot products of one weight row with one row of 16-bit activations: AVX2
//! (`vpmaddwd`), and the same kernels with `vpdpwssd` from AVX512-VNNI (on 256-bit registers)
//! or AVX-VNNI. Weight unpacking follows ggml's `ggml-cpu/arch/x86/quants.c`.
//!
//! Each kernel body is written once in a macro and stamped out per instruction set inside a
//! `#[target_feature]` function: intrinsics called through closures or plain helpers would
//! lose the feature and not inline. Integer sums per block (32-wide types) or per sub-block
//! (K-quants) are exact; only the order of the f32 accumulation differs from the reference.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::activation::XRow;
use super::dispatch::TILE_ROWS;
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

/// The nibbles of 16 bytes: `(low nibbles, high nibbles)` = elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> (__m128i, __m128i) {
    let bytes = _mm_loadu_si128(p as *const __m128i);
    let low = _mm_set1_epi8(0x0f);
    (
        _mm_and_si128(bytes, low),
        _mm_and_si128(_mm_srli_epi16(bytes, 4), low),
    )
}

/// 0xff in byte `j` where bit `j` of the little-endian u32 at `p` is set, as the halves for
/// elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits_to_bytes(p: *const u8) -> (__m128i, __m128i) {
    let x32 = i32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
    let shuffle = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuffle);
    let bit_mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, bit_mask), _mm256_set1_epi64x(-1));
    (
        _mm256_castsi256_si128(set),
        _mm256_extracti128_si256(set, 1),
    )
}

/// `acc + Σ pairs of a·b` over 16-bit lanes into 8 × i32, with `vpmaddwd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_words_avx2(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
}

/// As [`dot_words_avx2`], in one `vpdpwssd` (AVX512-VNNI + VL).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn dot_words_vnni(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, a, b)
}

/// As [`dot_words_avx2`], with AVX-VNNI (no AVX-512).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot_words_avxvnni(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_avx_epi32(acc, a, b)
}

macro_rules! kernels {
    ($module:ident, $features:literal, $dot:ident) => {
        /// The kernels of one instruction set.
        pub mod $module {
            #![allow(unsafe_op_in_unsafe_fn)]
            use super::*;

            /// `Σ w·x` of 16 signed-byte weights (`w`) and 16 activations at `x`: 8 × i32.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot16(acc: __m256i, w: __m128i, x: *const i16) -> __m256i {
                let w = _mm256_cvtepi8_epi16(w);
                $dot(acc, w, _mm256_loadu_si256(x as *const __m256i))
            }

            /// `Σ w·x` of 32 weights given as two halves of signed bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot32(halves: (__m128i, __m128i), x: *const i16) -> __m256i {
                let acc = dot16(_mm256_setzero_si256(), halves.0, x);
                dot16(acc, halves.1, x.add(16))
            }

            /// A 32-wide type: `weights` gives the block's 32 integer weights as two halves of
            /// signed bytes, with the f16 scale at byte 0 and, for `_1` types, the f16 minimum
            /// at byte 2. Two blocks per iteration with their own accumulators, so the f32
            /// dependency chains overlap.
            macro_rules! dot32 {
                ($name:ident, $tile:ident, $bytes:expr, $has_min:expr, |$b:ident| $weights:expr) => {
                    /// [`TILE_ROWS`] weight rows against `N` activation rows: the block sums of
                    /// the eight weight rows land in the eight lanes of one vector (a
                    /// horizontal-add tree), so the scales multiply and accumulate once per
                    /// block for all eight outputs instead of once per output, and each
                    /// activation block is loaded once for all eight rows. The integer block
                    /// sums equal the reference's; the f32 accumulation is per block, in
                    /// block order, as the reference does it.
                    #[target_feature(enable = $features)]
                    pub unsafe fn $tile<const N: usize>(
                        rows: &[&[u8]; TILE_ROWS],
                        x: &[XRow; N],
                    ) -> [[f32; TILE_ROWS]; N] {
                        let nb = x[0].scales.len();
                        debug_assert!(rows.iter().all(|r| r.len() == nb * $bytes));
                        debug_assert!(x.iter().all(|r| r.scales.len() == nb));
                        let mut acc = [_mm256_setzero_ps(); N];
                        // The tile's rows are short strided streams that the hardware
                        // prefetcher does not pick up in time (measured: batch-1 decode 35 %
                        // slower without this), so each block fetches its share of the next
                        // tile's bytes, which follow this tile's last row in memory. Prefetches
                        // never fault; past the matrix they are wasted, not wrong.
                        let row_bytes = nb * $bytes;
                        let next = rows[TILE_ROWS - 1].as_ptr().wrapping_add(row_bytes);
                        let ahead = TILE_ROWS * row_bytes;
                        for i in 0..nb {
                            let mut line = (i * ahead / nb) & !63;
                            while line < (i + 1) * ahead / nb {
                                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(line) as *const i8);
                                line += 64;
                            }
                            let mut lo = [_mm256_setzero_si256(); TILE_ROWS];
                            let mut hi = [_mm256_setzero_si256(); TILE_ROWS];
                            let mut d = [0u16; TILE_ROWS];
                            let mut m = [0u16; TILE_ROWS];
                            for r in 0..TILE_ROWS {
                                let $b = rows[r].as_ptr().add(i * $bytes);
                                let (l, h) = $weights;
                                lo[r] = _mm256_cvtepi8_epi16(l);
                                hi[r] = _mm256_cvtepi8_epi16(h);
                                d[r] = ($b as *const u16).read_unaligned();
                                if $has_min {
                                    m[r] = ($b.add(2) as *const u16).read_unaligned();
                                }
                            }
                            let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr() as *const __m128i));
                            let mw = _mm256_cvtph_ps(_mm_loadu_si128(m.as_ptr() as *const __m128i));
                            for a in 0..N {
                                let xr = &x[a];
                                let q = xr.qs.as_ptr().add(i * 32);
                                let xl = _mm256_loadu_si256(q as *const __m256i);
                                let xh = _mm256_loadu_si256(q.add(16) as *const __m256i);
                                macro_rules! sum {
                                    ($r:expr) => {
                                        $dot($dot(_mm256_setzero_si256(), lo[$r], xl), hi[$r], xh)
                                    };
                                }
                                // Lane r of `sums` = Σ over the block of weight row r · x.
                                let t01 = _mm256_hadd_epi32(sum!(0), sum!(1));
                                let t23 = _mm256_hadd_epi32(sum!(2), sum!(3));
                                let t45 = _mm256_hadd_epi32(sum!(4), sum!(5));
                                let t67 = _mm256_hadd_epi32(sum!(6), sum!(7));
                                let u0 = _mm256_hadd_epi32(t01, t23);
                                let u1 = _mm256_hadd_epi32(t45, t67);
                                let sums = _mm256_add_epi32(
                                    _mm256_permute2x128_si256(u0, u1, 0x20),
                                    _mm256_permute2x128_si256(u0, u1, 0x31),
                                );
                                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*xr.scales.get_unchecked(i)));
                                acc[a] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[a]);
                                if $has_min {
                                    let sum_x = _mm256_set1_ps(*xr.sums.get_unchecked(i));
                                    acc[a] = _mm256_fmadd_ps(mw, sum_x, acc[a]);
                                }
                            }
                        }
                        let mut out = [[0f32; TILE_ROWS]; N];
                        for a in 0..N {
                            _mm256_storeu_ps(out[a].as_mut_ptr(), acc[a]);
                        }
                        out
                    }

                    /// One row's dot product (see the module docs).
                    #[target_feature(enable = $features)]
                    pub unsafe fn $name(row: &[u8], x: XRow) -> f32 {
                        let nb = x.scales.len();
                        debug_assert_eq!(row.len(), nb * $bytes);
                        let (w, qs) = (row.as_ptr(), x.qs.as_ptr());
                        let (scales, sums) = (x.scales.as_ptr(), x.sums.as_ptr());
                        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                        let (mut min0, mut min1) = (0f32, 0f32);
                        macro_rules! block {
                            ($i:expr, $acc:ident, $min:ident) => {{
                                let i = $i;
                                let $b = w.add(i * $bytes);
                                let sum = dot32($weights, qs.add(i * 32));
                                let d = _mm256_set1_ps(f16_at($b) * *scales.add(i));
                                $acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sum), $acc);
                                if $has_min {
                                    $min += f16_at($b.add(2)) * *sums.add(i);
                                }
                            }};
                        }
                        let mut i = 0;
                        while i + 1 < nb {
                            block!(i, acc0, min0);
                            block!(i + 1, acc1, min1);
                            i += 2;
                        }
                        if i < nb {
                            block!(i, acc0, min0);
                        }
                        hsum(_mm256_add_ps(acc0, acc1)) + (min0 + min1)
                    }
                };
            }

            dot32!(q4_0, q4_0_tile, 18, false, |b| {
                let (lo, hi) = nibbles(b.add(2));
                let eight = _mm_set1_epi8(8);
                (_mm_sub_epi8(lo, eight), _mm_sub_epi8(hi, eight))
            });
            dot32!(q4_1, q4_1_tile, 20, true, |b| nibbles(b.add(4)));
            dot32!(q5_0, q5_0_tile, 22, false, |b| {
                // A clear fifth bit makes the byte (nibble | 0xf0) = nibble − 16 as i8.
                let (lo, hi) = nibbles(b.add(6));
                let (set_lo, set_hi) = bits_to_bytes(b.add(2));
                let high = _mm_set1_epi8(-16);
                (
                    _mm_or_si128(lo, _mm_andnot_si128(set_lo, high)),
                    _mm_or_si128(hi, _mm_andnot_si128(set_hi, high)),
                )
            });
            dot32!(q5_1, q5_1_tile, 24, true, |b| {
                let (lo, hi) = nibbles(b.add(8));
                let (set_lo, set_hi) = bits_to_bytes(b.add(4));
                let bit = _mm_set1_epi8(0x10);
                (
                    _mm_or_si128(lo, _mm_and_si128(set_lo, bit)),
                    _mm_or_si128(hi, _mm_and_si128(set_hi, bit)),
                )
            });
            dot32!(q8_0, q8_0_tile, 34, false, |b| (
                _mm_loadu_si128(b.add(2) as *const __m128i),
                _mm_loadu_si128(b.add(18) as *const __m128i)
            ));

            /// Q4_K and Q5_K (`five`: the fifth bits in `qh`).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn q45k(row: &[u8], x: XRow, bytes: usize, five: bool) -> f32 {
                let nb = x.scales.len();
                debug_assert_eq!(row.len(), nb * bytes);
                let low = _mm256_set1_epi8(0x0f);
                let mut acc = _mm256_setzero_ps();
                let mut min_acc = 0f32;
                for i in 0..nb {
                    let b = row.as_ptr().add(i * bytes);
                    let dx = *x.scales.get_unchecked(i);
                    let (d, dmin) = (f16_at(b) * dx, f16_at(b.add(2)) * dx);
                    let scale_bytes = std::slice::from_raw_parts(b.add(4), 12);
                    let (qh, qs) = if five {
                        (b.add(16), b.add(48))
                    } else {
                        (b, b.add(16))
                    };
                    let high_bits = _mm256_loadu_si256(qh as *const __m256i);
                    let xq = x.qs.as_ptr().add(i * 256);
                    let bsums = x.bsums.as_ptr().add(i * 16);
                    let mut mins = 0i32;
                    for chunk in 0..4 {
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
                        for (sub, q) in [(2 * chunk, lo), (2 * chunk + 1, hi)] {
                            let (scale, min) = scale_min_k4(sub, scale_bytes);
                            mins += min * (*bsums.add(2 * sub) + *bsums.add(2 * sub + 1));
                            let halves =
                                (_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
                            // At most 4 · 31 · 32767 per lane: exact in f32.
                            let sum = dot32(halves, xq.add(32 * sub));
                            let ds = _mm256_set1_ps(d * scale as f32);
                            acc = _mm256_fmadd_ps(ds, _mm256_cvtepi32_ps(sum), acc);
                        }
                    }
                    min_acc += dmin * mins as f32;
                }
                hsum(acc) - min_acc
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

            /// Q6_K's row dot product: 6-bit values minus 32 as signed bytes, one scale per 16.
            #[target_feature(enable = $features)]
            pub unsafe fn q6_k(row: &[u8], x: XRow) -> f32 {
                let nb = x.scales.len();
                debug_assert_eq!(row.len(), nb * 210);
                let low = _mm256_set1_epi8(0x0f);
                let three = _mm256_set1_epi8(3);
                let thirty_two = _mm256_set1_epi8(32);
                let mut acc = _mm256_setzero_ps();
                for i in 0..nb {
                    let b = row.as_ptr().add(i * 210);
                    let (ql, qh, sc) = (b, b.add(128), b.add(192) as *const i8);
                    let d = f16_at(b.add(208)) * *x.scales.get_unchecked(i);
                    let xq = x.qs.as_ptr().add(i * 256);
                    for half in 0..2 {
                        let hb = _mm256_loadu_si256(qh.add(32 * half) as *const __m256i);
                        let l0 = _mm256_loadu_si256(ql.add(64 * half) as *const __m256i);
                        let l1 = _mm256_loadu_si256(ql.add(64 * half + 32) as *const __m256i);
                        let quarters = [
                            (_mm256_and_si256(l0, low), 0),
                            (_mm256_and_si256(l1, low), 2),
                            (_mm256_and_si256(_mm256_srli_epi16(l0, 4), low), 4),
                            (_mm256_and_si256(_mm256_srli_epi16(l1, 4), low), 6),
                        ];
                        for (k, (nibble, shift)) in quarters.into_iter().enumerate() {
                            let bits = _mm256_srl_epi16(hb, _mm_cvtsi32_si128(shift));
                            let high = _mm256_slli_epi16(_mm256_and_si256(bits, three), 4);
                            let q = _mm256_sub_epi8(_mm256_or_si256(nibble, high), thirty_two);
                            let at = 128 * half + 32 * k;
                            let s = at / 16;
                            for (part, w) in
                                [_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)]
                                    .into_iter()
                                    .enumerate()
                            {
                                let sum = dot16(_mm256_setzero_si256(), w, xq.add(at + 16 * part));
                                let ds = _mm256_set1_ps(d * *sc.add(s + part) as f32);
                                acc = _mm256_fmadd_ps(ds, _mm256_cvtepi32_ps(sum), acc);
                            }
                        }
                    }
                }
                hsum(acc)
            }
        }
    };
}

kernels!(avx2, "avx2,fma,f16c", dot_words_avx2);
kernels!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl", dot_words_vnni);
kernels!(avxvnni, "avx2,fma,f16c,avxvnni", dot_words_avxvnni);
