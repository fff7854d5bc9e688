//! Picks the fastest kernel the CPU runs, once per process.

use std::sync::OnceLock;

use super::activation::XRow;
use super::format::QuantType;
use super::reference;

/// An instruction set the quantized kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// The plain reference code (any CPU).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 with `vpdpbusd` from AVX512-VNNI (on 256-bit registers).
    Avx512Vnni,
    /// AVX2 with `vpdpbusd` from AVX-VNNI.
    AvxVnni,
}

impl Isa {
    /// Every instruction set this CPU can run, the reference first.
    pub fn available() -> Vec<Isa> {
        let mut out = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2 {
                out.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    out.push(Isa::Avx512Vnni);
                }
                if is_x86_feature_detected!("avxvnni") {
                    out.push(Isa::AvxVnni);
                }
            }
        }
        out
    }

    fn parse(name: &str) -> Option<Isa> {
        Some(match name {
            "scalar" => Isa::Scalar,
            "avx2" => Isa::Avx2,
            "avx512vnni" => Isa::Avx512Vnni,
            "avxvnni" => Isa::AvxVnni,
            _ => return None,
        })
    }
}

/// The instruction set in use: the best available, or `FT_KERNELS_ISA` (`scalar`, `avx2`,
/// `avx512vnni`, `avxvnni`) when it names one this CPU has.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let available = Isa::available();
        let requested = std::env::var("FT_KERNELS_ISA").ok();
        match requested.as_deref().and_then(Isa::parse) {
            Some(isa) if available.contains(&isa) => isa,
            Some(isa) => {
                tracing::warn!("FT_KERNELS_ISA={isa:?} is not supported by this CPU; ignored");
                best(&available)
            }
            None => best(&available),
        }
    })
}

fn best(available: &[Isa]) -> Isa {
    [Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2]
        .into_iter()
        .find(|isa| available.contains(isa))
        .unwrap_or(Isa::Scalar)
}

/// A row kernel: `Σ w·x` of one weight row and one activation row.
pub type RowDot = fn(&[u8], XRow) -> f32;

macro_rules! safe_kernel {
    ($isa:ident, $name:ident) => {{
        fn kernel(row: &[u8], x: XRow) -> f32 {
            // SAFETY: `kernel_for` hands this out only after `Isa::available` found the
            // features on this CPU; the lengths are checked by the caller (`QuantMatrix`
            // rows and `QuantizedRows` rows of the same width).
            unsafe { super::x86::$isa::$name(row, x) }
        }
        kernel as RowDot
    }};
}

/// The kernel `$wrap!(isa module, name)` of a 32-wide type for `isa`, or `None` (other types,
/// other instruction sets).
macro_rules! wide_kernel {
    ($isa:expr, $ty:expr, $wrap:ident, $q4_0:ident, $q4_1:ident, $q5_0:ident, $q5_1:ident, $q8_0:ident) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => wide_kernel!(@types avx2, $ty, $wrap, $q4_0, $q4_1, $q5_0, $q5_1, $q8_0),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => wide_kernel!(@types vnni, $ty, $wrap, $q4_0, $q4_1, $q5_0, $q5_1, $q8_0),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => wide_kernel!(@types avxvnni, $ty, $wrap, $q4_0, $q4_1, $q5_0, $q5_1, $q8_0),
            _ => None,
        }
    };
    (@types $m:ident, $ty:expr, $wrap:ident, $q4_0:ident, $q4_1:ident, $q5_0:ident, $q5_1:ident, $q8_0:ident) => {
        match $ty {
            QuantType::Q4_0 => $wrap!($m, $q4_0),
            QuantType::Q4_1 => $wrap!($m, $q4_1),
            QuantType::Q5_0 => $wrap!($m, $q5_0),
            QuantType::Q5_1 => $wrap!($m, $q5_1),
            QuantType::Q8_0 => $wrap!($m, $q8_0),
            _ => None,
        }
    };
}

/// Weight rows of one tile kernel call: eight, the lanes of an AVX2 f32 vector.
pub const TILE_ROWS: usize = 8;

/// A tile kernel: [`TILE_ROWS`] weight rows against `N` activation rows, `out[a][r]`.
pub type TileDot<const N: usize> = fn(&[&[u8]; TILE_ROWS], &[XRow; N]) -> [[f32; TILE_ROWS]; N];

macro_rules! safe_kernel_tile {
    ($isa:ident, $name:ident) => {{
        fn kernel<const N: usize>(
            rows: &[&[u8]; TILE_ROWS],
            x: &[XRow; N],
        ) -> [[f32; TILE_ROWS]; N] {
            // SAFETY: as in `safe_kernel`; every row has the width of the activations.
            unsafe { super::x86::$isa::$name::<N>(rows, x) }
        }
        Some(kernel::<N> as TileDot<N>)
    }};
}

/// The tile kernel of `ty` for `isa`, where there is one (the 32-wide types on x86).
pub fn kernel_tile_for<const N: usize>(isa: Isa, ty: QuantType) -> Option<TileDot<N>> {
    wide_kernel!(
        isa,
        ty,
        safe_kernel_tile,
        q4_0_tile,
        q4_1_tile,
        q5_0_tile,
        q5_1_tile,
        q8_0_tile
    )
}

/// The kernel of `ty` for `isa` (which must be one of [`Isa::available`]).
pub fn kernel_for(isa: Isa, ty: QuantType) -> RowDot {
    macro_rules! table {
        ($isa:ident) => {
            match ty {
                QuantType::Q4_0 => safe_kernel!($isa, q4_0),
                QuantType::Q4_1 => safe_kernel!($isa, q4_1),
                QuantType::Q5_0 => safe_kernel!($isa, q5_0),
                QuantType::Q5_1 => safe_kernel!($isa, q5_1),
                QuantType::Q8_0 => safe_kernel!($isa, q8_0),
                QuantType::Q4K => safe_kernel!($isa, q4_k),
                QuantType::Q5K => safe_kernel!($isa, q5_k),
                QuantType::Q6K => safe_kernel!($isa, q6_k),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => table!(avx2),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => table!(vnni),
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => table!(avxvnni),
        _ => match ty {
            QuantType::Q4_0 => |r, x| reference::vec_dot(QuantType::Q4_0, r, x),
            QuantType::Q4_1 => |r, x| reference::vec_dot(QuantType::Q4_1, r, x),
            QuantType::Q5_0 => |r, x| reference::vec_dot(QuantType::Q5_0, r, x),
            QuantType::Q5_1 => |r, x| reference::vec_dot(QuantType::Q5_1, r, x),
            QuantType::Q8_0 => |r, x| reference::vec_dot(QuantType::Q8_0, r, x),
            QuantType::Q4K => |r, x| reference::vec_dot(QuantType::Q4K, r, x),
            QuantType::Q5K => |r, x| reference::vec_dot(QuantType::Q5K, r, x),
            QuantType::Q6K => |r, x| reference::vec_dot(QuantType::Q6K, r, x),
        },
    }
}
