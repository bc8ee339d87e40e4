//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray 2016,
//! "Fast Algorithms for Convolutional Neural Networks"): each 2×2 output tile is
//! Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A from a 4×4 input tile d, so the products are 16 GEMMs over
//! [O, C]·[C, tiles] instead of one over [O, 9·C]·[9·C, pixels] — 2.25× fewer multiply-adds.
//!
//! Written for a measured hot spot (issue 17, CPU round 8 in docs/benchmarks.md): 3×3
//! convolutions at 16–64 channels are most of a small UNet's CPU time, and the im2col GEMM ran
//! them at 84 GFLOP/s on 2 cores where PyTorch was ahead. The transforms are additions over
//! whole rows (vectorised), their cost a few per cent of the GEMMs at 32+ channels.
//!
//! Every image is transformed and multiplied on its own, in the same blocks on any number of
//! threads and at any batch size, so results depend only on the image.
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::gemm_into;
use super::cpu_conv::{uninit, Geom};
use super::lanes::{interleave2, map2, map3};
use super::real::{threads, Real};
use super::simd::vectorized;

/// Whether the Winograd weight gradient takes this convolution: 3×3, stride 1, padding 1, and
/// enough channels on both sides that the GEMMs dominate the transforms.
pub(super) fn applies(g: &Geom) -> bool {
    g.k == 3 && g.s == 1 && g.p == 1 && g.c >= 16 && g.o >= 16 && g.h >= 2 && g.w >= 2
}

/// Whether [`forward`] takes it (the forward and the input gradient; sampling's prepared
/// filters follow the same rule, so both give the same bits): as [`applies`], from 16×16 on,
/// and on 8×8 maps only where C ≥ 2·O and C > 256. Below 8×8 (four tiles or fewer per image)
/// im2col is faster (measured 64–256 channels at 4×4: im2col 0.3–0.7× the time of F(2×2, 3×3),
/// at batch 1 and 16). On 8×8, with the filters transformed per call (training), CPU round 13
/// measured (one process, alternating, batch 32): im2col where C < 2·O (64→64 2.20–2.31 ms
/// against 2.42–2.45 for F(2×2), 256→256 20.8–21.1 against 23.1–24.2, 384→256 25.1–28.7
/// against 27.2–30.5), the transposed convolution where 2·O ≤ C ≤ 256 (128→64 2.85–3.03
/// against 3.62–4.16, 192→64 4.21–4.41 against 5.73–5.91); from 512 input channels the
/// transposed form lost (512→256 55.7–62.0 against 39.2–39.6; im2col, which
/// `cpu_conv::forward` now takes there, tied at 36.1–40.1). With prepared filters (sampling)
/// the two were equal within the noise at 32–256 channels.
pub(super) fn forward_applies(g: &Geom) -> bool {
    let small = g.h < 16 || g.w < 16;
    applies(g) && g.h >= 8 && g.w >= 8 && !(small && (g.c < 2 * g.o || g.c <= 256))
}

/// G of F(2×2, 3×3), the rows of the 4×3 matrix.
const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// U = G g Gᵀ of every filter `g` ([O, C, 3, 3] in `wt`) for the R×3 matrix `gm`, as R²
/// matrices [O, C] (ξ = R·i + j). In blocks of filters, each step one loop over the block
/// (vectorised, AVX2): the taps of the block apart, then G g (3R rows), then (G g) Gᵀ (R²
/// rows) straight into U. Filter by filter (16–36 scattered writes each) F(4×4)'s transform
/// was 28% of a 128-channel convolution's profile at batch 1.
pub(super) fn filter_blocks<T: Real, const R: usize>(
    wt: &[T],
    o: usize,
    c: usize,
    gm: &[[f64; 3]; R],
) -> Vec<T> {
    const BLOCK: usize = 128;
    let oc = o * c;
    let g: [[T; 3]; R] = gm.map(|r| r.map(T::from_f64));
    let mut u: Vec<T> = uninit(R * R * oc);
    let u_ptr = SendPtr(u.as_mut_ptr());
    let scratch = || (vec![T::ZERO; 9 * BLOCK], vec![T::ZERO; 3 * R * BLOCK]);
    // Blocks in parallel: at batch 1 this transform is paid per evaluation (the cifar10 UNet's
    // b1 forward went 178 → 144 ms). Each block's values are computed alike on any thread, so
    // the bits do not depend on the thread count.
    (0..oc.div_ceil(BLOCK))
        .into_par_iter()
        .for_each_init(scratch, |(taps, gg), bl| {
            let (k0, n) = (bl * BLOCK, BLOCK.min(oc - bl * BLOCK));
            vectorized(
                #[inline(always)]
                || {
                    for (k, f) in wt[9 * k0..9 * (k0 + n)].chunks_exact(9).enumerate() {
                        for (tap, &v) in f.iter().enumerate() {
                            taps[tap * BLOCK + k] = v;
                        }
                    }
                    let tap = |a: usize, b: usize| &taps[(3 * a + b) * BLOCK..][..n];
                    // gg[i][b] = Σ_a G[i][a]·g[a][b].
                    for (i, &[w0, w1, w2]) in g.iter().enumerate() {
                        for b in 0..3 {
                            let (t0, t1, t2) = (tap(0, b), tap(1, b), tap(2, b));
                            let d = &mut gg[(3 * i + b) * BLOCK..][..n];
                            for k in 0..n {
                                d[k] = (w0 * t0[k] + w1 * t1[k]) + w2 * t2[k];
                            }
                        }
                    }
                    // U[i][j] = Σ_b gg[i][b]·G[j][b].
                    for i in 0..R {
                        let row = |b: usize| &gg[(3 * i + b) * BLOCK..][..n];
                        let (r0, r1, r2) = (row(0), row(1), row(2));
                        for (j, &[w0, w1, w2]) in g.iter().enumerate() {
                            // SAFETY: values k0..k0 + n of row (i, j) of `u` (R²·oc values): this
                            // block's, written by no other task; `u` outlives the loop.
                            let d = unsafe {
                                std::slice::from_raw_parts_mut(
                                    u_ptr.get().add((R * i + j) * oc + k0),
                                    n,
                                )
                            };
                            for k in 0..n {
                                d[k] = (w0 * r0[k] + w1 * r1[k]) + w2 * r2[k];
                            }
                        }
                    }
                },
            );
        });
    u
}

/// Tiles per row and per column of an H×W output in F(2×2, 3×3).
fn tiles(g: &Geom) -> (usize, usize) {
    (g.h.div_ceil(2), g.w.div_ceil(2))
}

/// One Winograd tiling F(m×m, 3×3) of the forward driver [`forward_with`]: its three transforms
/// over whole images, the products in between being (m + 2)² GEMMs [O, C]·[C, tiles].
pub(super) trait Tiling {
    /// The output tile's side m (the input tile's is m + 2).
    const M: usize;
    /// The transformed filters, as (m + 2)² matrices [O, C]: `wt` is [O, C, 3, 3].
    fn filter<T: Real>(wt: &[T], o: usize, c: usize) -> Vec<T>;
    /// The transformed tiles of the channels `x` ([n, H, W]) into `v`: (m + 2)² blocks
    /// [`cstride`, ·] of rows of length `ld`, this image's T tiles from column `col0` on
    /// (`at` = (ld, col0)), this run's channels at rows `c0..c0 + n`.
    fn input<T: Real>(x: &[T], g: &Geom, v: &mut [T], c0: usize, cstride: usize, at: Cols);
    /// The output channels `out` ([n, H, W], channels `o0..`) from the (m + 2)² products
    /// `m` ([ξ][O, ·], rows of length `mt.0`, this image's T tiles from column `mt.1` on),
    /// plus the bias. `m` holds (m + 2)² blocks of `ostride` ≥ O rows.
    fn output<T: Real>(
        m: &[T],
        g: &Geom,
        bias: Option<&[T]>,
        out: &mut [T],
        os: (usize, usize),
        mt: Cols,
    );
}

/// (row length, first column) of one image's tiles in a block of several images side by side.
pub(super) type Cols = (usize, usize);

/// F(2×2, 3×3): the transforms below.
pub(super) struct F2;

impl Tiling for F2 {
    const M: usize = 2;
    fn filter<T: Real>(wt: &[T], o: usize, c: usize) -> Vec<T> {
        filter_blocks(wt, o, c, &G2)
    }
    fn input<T: Real>(x: &[T], g: &Geom, v: &mut [T], c0: usize, cstride: usize, at: Cols) {
        input_transform_at(x, g, v, (c0, cstride), at)
    }
    fn output<T: Real>(
        m: &[T],
        g: &Geom,
        bias: Option<&[T]>,
        out: &mut [T],
        os: (usize, usize),
        mt: Cols,
    ) {
        output_transform(m, g, bias, out, os, mt)
    }
}

/// V = Bᵀ d B of every 4×4 input tile of the channels `x` ([n, H, W]) into `v`: 16 blocks
/// [C_total, T] (row stride T, block stride `cstride`·T), this run's channels at rows
/// `c0..c0+n`. Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]]; tile (ty, tx) covers input
/// rows 2ty−1..2ty+2 and columns 2tx−1..2tx+2, zero outside the image. Written as loops over
/// whole rows of tiles so that they vectorise (per-tile code was 6 ns per input value).
/// Rows of length `ld`, this image's tiles from column `col0` on (several images side by side,
/// as the weight gradient's GEMMs take them).
pub(super) fn input_transform_at<T: Real>(
    x: &[T],
    g: &Geom,
    v: &mut [T],
    cs: (usize, usize),
    at: (usize, usize),
) {
    // Compiled with AVX2 where the CPU has it (same bits: no fused multiply-adds).
    vectorized(
        #[inline(always)]
        || input_transform_at_impl(x, g, v, cs, at),
    )
}

#[inline(always)]
fn input_transform_at_impl<T: Real>(
    x: &[T],
    g: &Geom,
    v: &mut [T],
    (c0, cstride): (usize, usize),
    (ld, col0): (usize, usize),
) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    // e[j][r % 2][r / 2][tx]: row r − 1 of the input (zero rows around it) times B, column
    // j; even and odd rows apart, so that each of the 16 outputs below is one loop over T.
    let half_rows = th + 1;
    let mut e = vec![T::ZERO; 8 * half_rows * tw];
    // The odd and even positions of an input row with a zero on the left and zeros past its
    // end: od[t] = x[2t − 1], ev[t] = x[2t].
    let (mut od, mut ev) = (vec![T::ZERO; tw + 1], vec![T::ZERO; tw + 1]);
    for (ci, xc) in x.chunks_exact(g.h * g.w).enumerate() {
        for r in 1..=g.h {
            deinterleave(&xc[(r - 1) * g.w..r * g.w], &mut od, &mut ev);
            // The four columns of d·B for every tile of the row: (d0 − d2, d1 + d2, d2 − d1,
            // d1 − d3) with d = (od[t], ev[t], od[t + 1], ev[t + 1]), written in place.
            let at = |j: usize| ((2 * j + r % 2) * half_rows + r / 2) * tw;
            let (s0, rest) = e.split_at_mut(at(1));
            let (s1, rest) = rest.split_at_mut(at(2) - at(1));
            let (s2, s3) = rest.split_at_mut(at(3) - at(2));
            let (d0, d1, d2, d3) = (
                &mut s0[at(0)..at(0) + tw],
                &mut s1[..tw],
                &mut s2[..tw],
                &mut s3[..tw],
            );
            let (o0, o1, e0, e1) = (&od[..tw], &od[1..], &ev[..tw], &ev[1..]);
            map2(d0, o0, o1, |a, b| a - b);
            map2(d1, e0, o1, |a, b| a + b);
            map2(d2, o1, e0, |a, b| a - b);
            map2(d3, e0, e1, |a, b| a - b);
        }
        // Rows outside the image stay zero (only rows 1..=h are written).
        let c = c0 + ci;
        for j in 0..4 {
            // Rows 2ty + k for all ty: parity k % 2, from row k / 2 on, T values.
            let r = |k: usize| &e[((2 * j + k % 2) * half_rows + k / 2) * tw..][..t];
            for i in 0..4 {
                let o = ((4 * i + j) * cstride + c) * ld + col0;
                let dst = &mut v[o..o + t];
                let (p, q) = match i {
                    0 => (r(0), r(2)),
                    1 => (r(1), r(2)),
                    2 => (r(2), r(1)),
                    _ => (r(1), r(3)),
                };
                if i == 1 {
                    map2(dst, p, q, |a, b| a + b);
                } else {
                    map2(dst, p, q, |a, b| a - b);
                }
            }
        }
    }
}

/// Y = Aᵀ m A of every tile for the output channels `out` ([n, H, W], channels `o0..`) from
/// the 16 products `m` ([16][`ostride`, T], O rows used), plus the bias.
/// Aᵀ = [[1,1,1,0],[0,1,−1,−1]]. Loops over all T tiles of a channel at once (vectorised), then
/// the 2×2 results interleaved into rows.
fn output_transform<T: Real>(
    m: &[T],
    g: &Geom,
    bias: Option<&[T]>,
    out: &mut [T],
    os: (usize, usize),
    mt: Cols,
) {
    // Compiled with AVX2 where the CPU has it (same bits: no fused multiply-adds).
    vectorized(
        #[inline(always)]
        || output_transform_impl(m, g, bias, out, os, mt),
    )
}

#[inline(always)]
fn output_transform_impl<T: Real>(
    m: &[T],
    g: &Geom,
    bias: Option<&[T]>,
    out: &mut [T],
    (o0, ostride): (usize, usize),
    (mld, col0): Cols,
) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    // s[k][j]: k = 0 → m0j + m1j + m2j, k = 1 → m1j − m2j − m3j; then y[a][b] over T.
    let mut s = vec![T::ZERO; 8 * t];
    let mut y = vec![T::ZERO; 4 * t];
    for (oi, yo) in out.chunks_exact_mut(g.h * g.w).enumerate() {
        let o = o0 + oi;
        let b = bias.map_or(T::ZERO, |b| b[o]);
        let mv = |i: usize, j: usize| &m[((4 * i + j) * ostride + o) * mld + col0..][..t];
        for j in 0..4 {
            let (m0, m1, m2, m3) = (mv(0, j), mv(1, j), mv(2, j), mv(3, j));
            let (s0, s1) = s[2 * j * t..(2 * j + 2) * t].split_at_mut(t);
            map3(s0, m0, m1, m2, |a, bb, c| (a + bb) + c);
            map3(s1, m1, m2, m3, |a, bb, c| (a - bb) - c);
        }
        let sk = |k: usize, j: usize| &s[(2 * j + k) * t..(2 * j + k + 1) * t];
        for (a, ya) in y.chunks_exact_mut(2 * t).enumerate() {
            let (y0, y1) = ya.split_at_mut(t);
            let (p0, p1, p2, p3) = (sk(a, 0), sk(a, 1), sk(a, 2), sk(a, 3));
            map3(y0, p0, p1, p2, |x0, x1, x2| ((x0 + x1) + x2) + b);
            map3(y1, p1, p2, p3, |x1, x2, x3| ((x1 - x2) - x3) + b);
        }
        for r in 0..g.h {
            let (a, ty) = (r % 2, r / 2);
            let ya = &y[(2 * a) * t + ty * tw..][..tw];
            let yb = &y[(2 * a + 1) * t + ty * tw..][..tw];
            interleave2(&mut yo[r * g.w..(r + 1) * g.w], ya, yb);
        }
    }
}

/// od[t] = px[2t], ev[t] = px[2t + 1] for t < n (od, ev: n values), where px is the input row
/// with a zero on the left and zeros past its end (px[i + 1] = row[i]). Read straight from the
/// row: its even positions are ev, its odd ones od one tile on (copying the row into a padded
/// buffer first, shifted by one value, made the loads straddle the copy's stores: failed store
/// forwarding, as in `winograd4::deinterleave4`). In f32 with AVX2 eight of each per two loads
/// and two shuffles: the plain loop stayed scalar (LLVM does not vectorise the stride-2
/// access here).
#[inline(always)]
pub(super) fn deinterleave<T: Real>(row: &[T], od: &mut [T], ev: &mut [T]) {
    let (n, w) = (od.len(), row.len());
    assert!(ev.len() == n && n >= 1);
    // The AVX2 loop writes ev for t < done and od for 1 ≤ t ≤ done.
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx2")
    {
        use std::arch::x86_64::*;
        let (p, o, e) = (
            row.as_ptr() as *const f32,
            od.as_mut_ptr() as *mut f32,
            ev.as_mut_ptr() as *mut f32,
        );
        while done + 9 <= n && 2 * done + 16 <= w {
            let t = done;
            // SAFETY: T is f32 (checked), the CPU has AVX2 (checked), 2t + 16 ≤ w =
            // row.len() and t + 9 ≤ n: every access is in bounds.
            unsafe {
                let a = _mm256_loadu_ps(p.add(2 * t));
                let b = _mm256_loadu_ps(p.add(2 * t + 8));
                // Per 128-bit lane: [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit quarters
                // reordered to [a0 a2 a4 a6 b0 b2 b4 b6].
                let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
                let fix = |v: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
                };
                _mm256_storeu_ps(e.add(t), fix(even));
                _mm256_storeu_ps(o.add(t + 1), fix(odd));
            }
            done += 8;
        }
    }
    let px = |i: usize| {
        if i >= 1 && i <= w {
            row[i - 1]
        } else {
            T::ZERO
        }
    };
    od[0] = T::ZERO;
    for (t, o) in od.iter_mut().enumerate().skip(done + 1) {
        *o = px(2 * t);
    }
    for (t, e) in ev.iter_mut().enumerate().skip(done) {
        *e = px(2 * t + 1);
    }
}

/// Scratch of one image: V [ξ][C, T] and the products M [ξ][O, T].
struct Scratch<T> {
    v: Vec<T>,
    m: Vec<T>,
}

/// `y = conv(x, w) + bias` for a convolution [`forward_applies`] accepts: `wt` [O, C, 3, 3]. The
/// larger tiles of F(4×4, 3×3) where [`super::winograd4::applies`] (4× fewer multiply-adds
/// than im2col), else F(2×2, 3×3) (2.25×).
pub(super) fn forward<T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    forward_prepared(x, &prepare(wt, g), bias, None, g)
}

/// Whether [`forward`] takes F(4×4, 3×3) for `g` (36 matrices per filter), else F(2×2, 3×3)
/// (16).
pub(super) fn four(g: &Geom) -> bool {
    super::winograd4::applies(g)
}

/// The transformed filters U [ξ][O, C] that [`forward`] multiplies for `g` (its tiling chosen
/// by [`four`]), from `wt` [O, C, 3, 3]: made once per model for inference
/// ([`super::conv::PreparedWeights`]), where per evaluation the transform was a third of the
/// cifar10 UNet's batch-1 forward (45 of ~135 ms).
pub(super) fn prepare<T: Real>(wt: &[T], g: &Geom) -> Vec<T> {
    if four(g) {
        super::winograd4::F4::filter(wt, g.o, g.c)
    } else {
        F2::filter(wt, g.o, g.c)
    }
}

/// [`forward`] from the transformed filters `u` of [`prepare`] (the same tiling for `g`), plus
/// `residual` (the output's shape) when given: `(conv(x) + bias) + residual`.
pub(super) fn forward_prepared<T: Real>(
    x: &[T],
    u: &[T],
    bias: Option<&[T]>,
    residual: Option<&[T]>,
    g: &Geom,
) -> Vec<T> {
    if four(g) {
        forward_with::<super::winograd4::F4, T>(x, u, bias, residual, g)
    } else {
        forward_with::<F2, T>(x, u, bias, residual, g)
    }
}

/// `out += r`, where the output transform has just written `out` (still in cache): the
/// residual add of a UNet block without a pass of its own over the activations (CPU round 16:
/// that add, a fresh buffer read and written from memory, was 2% of the small UNet's b64
/// forward). The same sum as the separate add.
fn add_residual<T: Real>(out: &mut [T], r: Option<&[T]>) {
    if let Some(r) = r {
        vectorized(
            #[inline(always)]
            || {
                for (o, &r) in out.iter_mut().zip(r) {
                    *o += r;
                }
            },
        )
    }
}

/// The row stride of T transformed tiles: T plus one cache line where T values span a multiple
/// of 4 KiB. With the blocks of V and M one row longer than their channels (in
/// [`forward_with`] and the weight gradient), the (m + 2)² rows one channel's transform writes
/// or reads, a block apart, no longer fall into the same L1 sets 4 KiB apart: measured
/// F(4×4)'s input transform at 64 channels, 32×32, 2.62 → 1.61 ms per 32 images; F(2×2)'s at
/// 32 channels 0.99 → 0.81.
pub(super) fn padded(t: usize) -> usize {
    if t % 1024 == 0 {
        t + 16
    } else {
        t
    }
}

/// [`forward`] with the tiling `W`, from the filters `u` transformed by `W::filter`.
pub(super) fn forward_with<W: Tiling, T: Real>(
    x: &[T],
    u: &[T],
    bias: Option<&[T]>,
    residual: Option<&[T]>,
    g: &Geom,
) -> Vec<T> {
    let t = g.h.div_ceil(W::M) * g.w.div_ceil(W::M);
    let xis = (W::M + 2) * (W::M + 2);
    // Images per product: `gemm` puts the tiles along its micro-kernel's 64 rows, and 16 tiles
    // (F(2×2) at 8×8) took its 16×6 kernel (6.4% of cifar10's b16 forward, CPU round 16), so
    // images with fewer than 64 tiles go side by side. An image's sums do not depend on its
    // neighbours (`gemm` blocks the depth by the depth alone): the same bits on any batch and
    // thread count (tested).
    let per = (64 / t).clamp(1, g.b.max(1));
    let mt = per * t;
    let ld = padded(mt);
    // Each block of V and M one row longer than its channels: see [`padded`].
    let (cs, os) = (g.c + 1, g.o + 1);
    let (oc, vb, mb) = (g.o * g.c, cs * ld, os * mt);
    assert_eq!(u.len(), xis * oc, "Winograd filters for another tiling");
    let (hw, nt) = (g.h * g.w, threads());
    let mut out = uninit(g.b * g.o * hw);
    let new = || Scratch {
        v: uninit(xis * vb),
        m: uninit(xis * mb),
    };
    // Product ξ of `n` images: M_ξ [O, n·T] = U_ξ [O, C] · V_ξ [C, n·T] (M's rows `mt` long).
    let product = |xi: usize, mx: &mut [T], v: &[T], n: usize| {
        let (ux, vx) = (&u[xi * oc..(xi + 1) * oc], &v[xi * vb..][..g.c * ld]);
        gemm_into(
            (g.o, n * t, g.c),
            &mut mx[..g.o * mt],
            (mt, 1),
            false,
            ux,
            (g.c, 1),
            vx,
            (ld, 1),
            Parallelism::None,
        );
    };
    let (xs, ys) = (g.c * hw, g.o * hw);
    // The residual's values from output index `at` on, `n` of them.
    let res = |at: usize, n: usize| residual.map(|r| &r[at..at + n]);
    // Group `k` of up to `per` images: their tiles side by side, one product per ξ.
    let group = |s: &mut Scratch<T>, k: usize, xg: &[T], og: &mut [T]| {
        let n = xg.len() / xs;
        for (i, xb) in xg.chunks(xs).enumerate() {
            W::input(xb, g, &mut s.v, 0, cs, (ld, i * t));
        }
        for (xi, mx) in s.m.chunks_exact_mut(mb).enumerate() {
            product(xi, mx, &s.v, n);
        }
        for (i, ob) in og.chunks_mut(ys).enumerate() {
            W::output(&s.m, g, bias, ob, (0, os), (mt, i * t));
            add_residual(ob, res((k * per + i) * ys, ys));
        }
    };
    if nt <= 1 {
        let mut s = new();
        for (k, (xg, og)) in x.chunks(per * xs).zip(out.chunks_mut(per * ys)).enumerate() {
            group(&mut s, k, xg, og);
        }
    } else if g.b.div_ceil(per) >= nt {
        x.par_chunks(per * xs)
            .zip(out.par_chunks_mut(per * ys))
            .enumerate()
            .for_each_init(new, |s, (k, (xg, og))| group(s, k, xg, og));
    } else {
        // Fewer images than threads: each stage of one image split over the threads, in
        // pieces that do not depend on the thread count (channels, the products). One image
        // per product here (its columns 0..T of M).
        let mut s = new();
        for (i, (xb, ob)) in x.chunks(xs).zip(out.chunks_mut(ys)).enumerate() {
            // Channels in runs of 8: each run writes its rows of every V_ξ.
            let runs: Vec<(usize, &[T])> = xb.chunks(8 * hw).enumerate().collect();
            let v_ptr = SendPtr(s.v.as_mut_ptr());
            let vlen = s.v.len();
            runs.into_par_iter().for_each(|(r, xr)| {
                // SAFETY: run r writes only rows 8r..8r+n of each V_ξ block, disjoint from
                // the other runs' rows; `v` outlives the loop.
                let v = unsafe { std::slice::from_raw_parts_mut(v_ptr.get(), vlen) };
                W::input(xr, g, v, 8 * r, cs, (ld, 0));
            });
            let v = &s.v;
            s.m.par_chunks_mut(mb)
                .enumerate()
                .for_each(|(xi, mx)| product(xi, mx, v, 1));
            let m = &s.m;
            ob.par_chunks_mut(8 * hw).enumerate().for_each(|(r, oc)| {
                W::output(m, g, bias, oc, (8 * r, os), (mt, 0));
                add_residual(oc, res(i * ys + 8 * r * hw, oc.len()));
            });
        }
    }
    out
}

/// A raw pointer that may cross threads (the callers guarantee disjoint writes).
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: only used for disjoint writes inside one parallel loop (see its uses).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
#[path = "winograd_tests.rs"]
pub(super) mod tests;
