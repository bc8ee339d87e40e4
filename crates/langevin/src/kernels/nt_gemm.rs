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
        // Bands of four output rows, over the threads when asked.
        let wide = super::simd::avx512();
        // Rows per band: six for the AVX-512 kernel (its 6×4 blocks), four for AVX2's.
        let r = if wide { x16::ROWS } else { 4 };
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

#[cfg(target_arch = "x86_64")]
mod x8 {
    use std::arch::x86_64::*;

    /// Σ of the eight lanes of `v`, pairwise in a fixed order.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Output rows `rows` (≤ 4) × columns `cols` (≤ 3) of one block: Σ_k a_r[k]·b_c[k],
    /// added to or stored in `out[r][c]` (row stride `ldo`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const S: usize>(
        a: [*const f32; R],
        b: [*const f32; S],
        k: usize,
        out: *mut f32,
        ldo: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); S]; R];
        let k8 = k / 8 * 8;
        let mut kk = 0;
        while kk < k8 {
            let bv: [__m256; S] = std::array::from_fn(|s| _mm256_loadu_ps(b[s].add(kk)));
            for r in 0..R {
                let av = _mm256_loadu_ps(a[r].add(kk));
                for s in 0..S {
                    acc[r][s] = _mm256_fmadd_ps(av, bv[s], acc[r][s]);
                }
            }
            kk += 8;
        }
        for r in 0..R {
            for s in 0..S {
                let mut v = hsum(acc[r][s]);
                for t in k8..k {
                    v = (*a[r].add(t)).mul_add(*b[s].add(t), v);
                }
                let o = out.add(r * ldo + s);
                *o = if accumulate { *o + v } else { v };
            }
        }
    }

    /// One band of up to four output rows: `mb` [rows, cols], `a` its rows of A.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a` holds `rows` rows and `b` `cols` rows of stride `ld`
    /// with k values each; `mb` holds rows·cols values.
    #[target_feature(enable = "avx2,fma")]
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
        let brow = |c: usize| bp.add(c * ld);
        let mut c0 = 0;
        while c0 < cols {
            let n = (cols - c0).min(3);
            let o = out.add(c0);
            if rows == 4 {
                let a4 = [arow(0), arow(1), arow(2), arow(3)];
                match n {
                    3 => block::<4, 3>(
                        a4,
                        [brow(c0), brow(c0 + 1), brow(c0 + 2)],
                        k,
                        o,
                        cols,
                        accumulate,
                    ),
                    2 => block::<4, 2>(a4, [brow(c0), brow(c0 + 1)], k, o, cols, accumulate),
                    _ => block::<4, 1>(a4, [brow(c0)], k, o, cols, accumulate),
                }
            } else {
                for r in 0..rows {
                    let (a1, o) = ([arow(r)], o.add(r * cols));
                    match n {
                        3 => block::<1, 3>(
                            a1,
                            [brow(c0), brow(c0 + 1), brow(c0 + 2)],
                            k,
                            o,
                            cols,
                            accumulate,
                        ),
                        2 => block::<1, 2>(a1, [brow(c0), brow(c0 + 1)], k, o, cols, accumulate),
                        _ => block::<1, 1>(a1, [brow(c0)], k, o, cols, accumulate),
                    }
                }
            }
            c0 += n;
        }
    }
}

/// [`x8`] 16 lanes wide (AVX-512F), blocks of 6×4 outputs (24 accumulators of the 32
/// registers; bands of six rows): on this project's Intel machine (CPU round 12) the products
/// run at AVX-512's rate, as PyTorch's do. 6×4 rather than 4×4 blocks: conv3×3 64→64 backward
/// 38–39 ms against 40–45 (A/B). Lane sums in a fixed order: the two halves added, then as
/// [`x8`].
#[cfg(target_arch = "x86_64")]
mod x16 {
    use std::arch::x86_64::*;

    /// Output rows per band (and per block): 6×4 blocks keep 24 of the 32 registers as
    /// accumulators, and each k step loads four rows of B for 24 multiply-adds.
    pub(super) const ROWS: usize = 6;

    /// Σ of the sixteen lanes of `v`: the upper eight added to the lower eight, then pairwise.
    #[inline(always)]
    unsafe fn hsum(v: __m512) -> f32 {
        let h = _mm256_add_ps(
            _mm512_castps512_ps256(v),
            _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)),
        );
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// As [`super::x8`]'s block, sixteen k at a time.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const S: usize>(
        a: [*const f32; R],
        b: [*const f32; S],
        k: usize,
        out: *mut f32,
        ldo: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); S]; R];
        let k16 = k / 16 * 16;
        let mut kk = 0;
        while kk < k16 {
            let bv: [__m512; S] = std::array::from_fn(|s| _mm512_loadu_ps(b[s].add(kk)));
            for r in 0..R {
                let av = _mm512_loadu_ps(a[r].add(kk));
                for s in 0..S {
                    acc[r][s] = _mm512_fmadd_ps(av, bv[s], acc[r][s]);
                }
            }
            kk += 16;
        }
        for r in 0..R {
            for s in 0..S {
                let mut v = hsum(acc[r][s]);
                for t in k16..k {
                    v = (*a[r].add(t)).mul_add(*b[s].add(t), v);
                }
                let o = out.add(r * ldo + s);
                *o = if accumulate { *o + v } else { v };
            }
        }
    }

    /// One band of up to [`ROWS`] output rows, as [`super::x8::band`].
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA; otherwise as [`super::x8::band`].
    #[target_feature(enable = "avx512f,avx2,fma")]
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
        // Rows past `cols` are named but never read (hence wrapping: they may lie outside).
        let brow = |c: usize| bp.wrapping_add(c * ld);
        let mut c0 = 0;
        while c0 < cols {
            let n = (cols - c0).min(4);
            let o = out.add(c0);
            let [b0, b1, b2, b3] = [brow(c0), brow(c0 + 1), brow(c0 + 2), brow(c0 + 3)];
            macro_rules! rows {
                ($r:literal, $a:expr, $o:expr) => {
                    match n {
                        4 => block::<$r, 4>($a, [b0, b1, b2, b3], k, $o, cols, accumulate),
                        3 => block::<$r, 3>($a, [b0, b1, b2], k, $o, cols, accumulate),
                        2 => block::<$r, 2>($a, [b0, b1], k, $o, cols, accumulate),
                        _ => block::<$r, 1>($a, [b0], k, $o, cols, accumulate),
                    }
                };
            }
            if rows == ROWS {
                let a6 = [arow(0), arow(1), arow(2), arow(3), arow(4), arow(5)];
                rows!(6, a6, o);
            } else {
                for r in 0..rows {
                    rows!(1, [arow(r)], o.add(r * cols));
                }
            }
            c0 += n;
        }
    }
}

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
