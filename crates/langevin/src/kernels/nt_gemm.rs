//! `M[i][j] (+)= Σ_k A[i][k]·B[j][k]` for small outputs and long sums, both operands read in
//! place along their contiguous rows: the Winograd weight gradient's products (per ξ, [O, C]
//! outputs summed over the tiles of a group of images).
//!
//! Written for a measured hot spot (issue 17, CPU round 10): at 32–64 channels those products
//! are [32, 32] outputs with depth 1024, which `gemm` packs (both operands, a full copy each)
//! for about as long as it multiplies — the Winograd weight gradient was 214 ms of the small
//! UNet's ~790 ms training step, its products ~120 ms at ~40 GFLOP/s. Here each 4×3 block of
//! outputs keeps twelve 8-lane accumulators over the whole depth (AVX2 + FMA, f32): per eight
//! k, seven loads and twelve fused multiply-adds, the rows streaming from L1/L2. The sums run
//! in a fixed order (eight lane sums over k, then the tail, then the lanes pairwise), whatever
//! the threads. f64 and CPUs without AVX2/FMA take `gemm`.
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::mm;
use super::real::Real;

/// Outputs up to which [`nt`] runs its own kernel: measured on one thread (f32, depth 256–1024)
/// 2.1× `gemm`'s speed at [32, 32] and [32, 96] (83–88 against 39–41 GFLOP/s), even at
/// [64, 64] (78 / 76), 0.93× at [128, 128] (B's rows no longer stay in cache).
const SMALL: usize = 64 * 64;

/// `m` [rows_a, rows_b] (+)= A · Bᵀ with A = `a` [rows_a, k] and B = `b` [rows_b, k], both
/// row-major with row stride `ld` ≥ k. `par`: the output's rows split over the threads (each
/// output value computed alike on any thread).
#[allow(clippy::too_many_arguments)]
pub(super) fn nt<T: Real>(
    (rows_a, rows_b, k): (usize, usize, usize),
    m: &mut [T],
    accumulate: bool,
    a: &[T],
    b: &[T],
    ld: usize,
    par: Parallelism,
) {
    #[cfg(target_arch = "x86_64")]
    if rows_a * rows_b <= SMALL
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        assert!(m.len() >= rows_a * rows_b);
        assert!(rows_a == 0 || k == 0 || a.len() >= (rows_a - 1) * ld + k);
        assert!(rows_b == 0 || k == 0 || b.len() >= (rows_b - 1) * ld + k);
        // SAFETY: T is f32 (checked), so the slices reinterpret as f32 slices of the same
        // lengths.
        let (m, a, b) = unsafe {
            (
                std::slice::from_raw_parts_mut(m.as_mut_ptr() as *mut f32, m.len()),
                std::slice::from_raw_parts(a.as_ptr() as *const f32, a.len()),
                std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len()),
            )
        };
        // Bands of the kernel's rows (six for AVX-512, four for AVX2), over the threads when
        // asked.
        let wide = super::simd::avx512();
        let r = if wide { x16::ROWS } else { x8::ROWS };
        let band = |(i, mb): (usize, &mut [f32])| {
            let i0 = r * i;
            let rows = mb.len() / rows_b;
            let a = &a[i0 * ld..];
            // SAFETY: the CPU has AVX2 and FMA (checked), and AVX-512 where `wide`; the
            // asserts keep every row read inside `a` and `b`, and the band's outputs inside
            // `mb`.
            unsafe {
                if wide {
                    x16::band(mb, a, rows, b, rows_b, k, ld, accumulate)
                } else {
                    x8::band(mb, a, rows, b, rows_b, k, ld, accumulate)
                }
            }
        };
        if rows_a == 0 || rows_b == 0 {
            return;
        }
        let m = &mut m[..rows_a * rows_b];
        match par {
            Parallelism::Rayon(n) if n > 1 => {
                m.par_chunks_mut(r * rows_b).enumerate().for_each(band)
            }
            _ => m.chunks_mut(r * rows_b).enumerate().for_each(band),
        }
        return;
    }
    mm(
        (rows_a, rows_b, k),
        m,
        accumulate,
        a,
        (ld, 1),
        b,
        (1, ld),
        par,
    );
}

/// Σ of the eight lanes of `v`, pairwise in a fixed order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hsum8(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Σ of the sixteen lanes of `v`: the upper eight added to the lower eight, then as [`hsum8`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hsum16(v: std::arch::x86_64::__m512) -> f32 {
    use std::arch::x86_64::*;
    hsum8(_mm256_add_ps(
        _mm512_castps512_ps256(v),
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)),
    ))
}

/// One NT kernel per vector width: `$v` vectors of `$lanes` f32, blocks of up to
/// `$rows`×`$cols` outputs, each a vector accumulator over the whole depth.
macro_rules! nt_kernel {
    (
        $(#[$doc:meta])*
        $name:ident, $feature:literal, $v:ty, $lanes:literal,
        ($zero:ident, $load:ident, $fma:ident, $hsum:ident), $rows:literal, $cols:literal
    ) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use std::arch::x86_64::*;

            /// Output rows per band (and per full block).
            pub(super) const ROWS: usize = $rows;

            /// Output rows `R` × columns `S` of one block: Σ_k a_r[k]·b_c[k], added to or
            /// stored in `out[r][c]` (row stride `ldo`); lane sums, then the k tail, in a
            /// fixed order.
            #[inline(always)]
            unsafe fn block<const R: usize, const S: usize>(
                a: [*const f32; R],
                b: [*const f32; S],
                k: usize,
                out: *mut f32,
                ldo: usize,
                accumulate: bool,
            ) {
                let mut acc: [[$v; S]; R] = [[$zero(); S]; R];
                let kv = k / $lanes * $lanes;
                let mut kk = 0;
                while kk < kv {
                    let bv: [$v; S] = std::array::from_fn(|s| $load(b[s].add(kk)));
                    for r in 0..R {
                        let av = $load(a[r].add(kk));
                        for s in 0..S {
                            acc[r][s] = $fma(av, bv[s], acc[r][s]);
                        }
                    }
                    kk += $lanes;
                }
                for r in 0..R {
                    for s in 0..S {
                        let mut v = super::$hsum(acc[r][s]);
                        for t in kv..k {
                            v = (*a[r].add(t)).mul_add(*b[s].add(t), v);
                        }
                        let o = out.add(r * ldo + s);
                        *o = if accumulate { *o + v } else { v };
                    }
                }
            }

            /// One band of up to [`ROWS`] output rows: `mb` [rows, cols], `a` its rows of A.
            ///
            /// # Safety
            /// The CPU has the features this kernel is compiled for; `a` holds `rows` rows and
            /// `b` `cols` rows of stride `ld` with k values each; `mb` holds rows·cols values.
            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn band(
                mb: &mut [f32],
                a: &[f32],
                rows: usize,
                b: &[f32],
                cols: usize,
                k: usize,
                ld: usize,
                accumulate: bool,
            ) {
                let (ap, bp, out) = (a.as_ptr(), b.as_ptr(), mb.as_mut_ptr());
                let arow = |r: usize| ap.add(r * ld);
                // Rows past `cols` are named but never read (hence wrapping: they may lie
                // outside `b`).
                let brow = |c: usize| bp.wrapping_add(c * ld);
                let mut c0 = 0;
                while c0 < cols {
                    let n = (cols - c0).min($cols);
                    let o = out.add(c0);
                    let bs = |c: usize| -> [*const f32; 4] { std::array::from_fn(|s| brow(c + s)) };
                    let [b0, b1, b2, b3] = bs(c0);
                    macro_rules! cols {
                        ($r:expr, $a:expr, $o:expr) => {
                            match n {
                                4 => block::<$r, 4>($a, [b0, b1, b2, b3], k, $o, cols, accumulate),
                                3 => block::<$r, 3>($a, [b0, b1, b2], k, $o, cols, accumulate),
                                2 => block::<$r, 2>($a, [b0, b1], k, $o, cols, accumulate),
                                _ => block::<$r, 1>($a, [b0], k, $o, cols, accumulate),
                            }
                        };
                    }
                    if rows == ROWS {
                        cols!(ROWS, std::array::from_fn(|r| arow(r)), o);
                    } else {
                        for r in 0..rows {
                            cols!(1, [arow(r)], o.add(r * cols));
                        }
                    }
                    c0 += n;
                }
            }
        }
    };
}

nt_kernel!(
    /// AVX2 + FMA, eight lanes, blocks of 4×3 outputs (twelve accumulators): per eight k,
    /// seven loads and twelve fused multiply-adds.
    x8, "avx2,fma", __m256, 8,
    (_mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, hsum8), 4, 3
);

nt_kernel!(
    /// AVX-512F, sixteen lanes, blocks of 6×4 outputs (24 accumulators of the 32 registers,
    /// bands of six rows): on this project's Intel machine (CPU round 12) the products run at
    /// AVX-512's rate, as PyTorch's do. 6×4 rather than 4×4 blocks: conv3×3 64→64 backward
    /// 38–39 ms against 40–45 (A/B). Lane sums: the two halves added, then as [`x8`].
    x16, "avx512f,avx2,fma", __m512, 16,
    (_mm512_setzero_ps, _mm512_loadu_ps, _mm512_fmadd_ps, hsum16), 6, 4
);

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Against the sum in f64 for sizes that reach every block shape and the k tail, stored
    /// and accumulated, the same bits on one and several threads.
    #[test]
    fn nt_matches_the_definition() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (ra, rb, k, ld) in [
            (32, 32, 1024, 1024),
            (7, 5, 37, 40),
            (4, 3, 8, 8),
            (9, 11, 3, 5),
            (6, 7, 56, 57),
        ] {
            let a: Vec<f32> = (0..ra * ld).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..rb * ld).map(|_| rng.random_range(-1.0..1.0)).collect();
            let init: Vec<f32> = (0..ra * rb).map(|_| rng.random_range(-1.0..1.0)).collect();
            for accumulate in [false, true] {
                let want: Vec<f64> = (0..ra * rb)
                    .map(|ij| {
                        let (i, j) = (ij / rb, ij % rb);
                        let dot: f64 = (0..k)
                            .map(|t| a[i * ld + t] as f64 * b[j * ld + t] as f64)
                            .sum();
                        dot + if accumulate { init[ij] as f64 } else { 0.0 }
                    })
                    .collect();
                let run = |par| {
                    let mut m = init.clone();
                    nt((ra, rb, k), &mut m, accumulate, &a, &b, ld, par);
                    m
                };
                let one = run(Parallelism::None);
                let two = rayon::ThreadPoolBuilder::new()
                    .num_threads(3)
                    .build()
                    .unwrap()
                    .install(|| run(Parallelism::Rayon(3)));
                assert_eq!(one, two, "{ra}×{rb}×{k}: threads changed bits");
                let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                for (g, w) in one.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < tol, "{ra}×{rb}×{k}: {g} vs {w}");
                }
            }
        }
    }
}
