//! Winograd F(4×4, 3×3) (Lavin & Gray 2016, interpolation points 0, ±1, ±2, ∞): each 4×4
//! output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A from a 6×6 input tile d, so a 3×3 convolution
//! costs 36 GEMMs [O, C]·[C, tiles] over (H/4)·(W/4) tiles — 2.25 multiply-adds per output
//! and input channel instead of F(2×2, 3×3)'s 4 and im2col's 9.
//!
//! Written for a measured hot spot (issue 17, CPU round 9 in docs/benchmarks.md): after
//! F(2×2, 3×3) the small and cifar10 UNets still spent half their CPU time in the Winograd
//! GEMMs. The transforms are loops over whole rows of tiles as in [`super::winograd`]; the
//! larger tile's stride-4 reads are deinterleaved once per input row.
//!
//! Accuracy: the points ±2 scale some terms by up to 8·4·(1/24), so f32 results carry a few
//! times F(2×2)'s rounding error (tested: within 1e-5 of the output's scale, where F(2×2) is
//! within 2e-6; the ddpm-cifar10-32 UNet's output against PyTorch: 4.4e-6–6.8e-6 relative,
//! 3.3e-6 before).
use super::cpu_conv::Geom;
use super::lanes::interleave4;
use super::real::Real;
use super::simd::vectorized;
use super::winograd::{filter_blocks, Cols, Tiling};
use super::winograd4_simd::{lanes, six_rows, x8};

/// Whether F(4×4, 3×3) takes a convolution that [`super::winograd::forward_applies`] to: at
/// least 64 tiles of 4×4 per image (32×32). With fewer, the per-image GEMMs [O, C]·[C, T]
/// have too few columns (gemm puts them along the vector lanes) and F(2×2, 3×3), with 4× the
/// tiles, wins (measured 64–256 channels at 16×16: F(4×4) 0.78–0.89× of its speed, at 8×8
/// 0.4–0.5×; at 32×32 1.15–1.47×, batch 1 and 16).
pub(super) fn applies(g: &Geom) -> bool {
    g.h.div_ceil(4) * g.w.div_ceil(4) >= 64
}

/// F(4×4, 3×3): the transforms below.
pub(super) struct F4;

impl Tiling for F4 {
    const M: usize = 4;
    fn filter<T: Real>(wt: &[T], o: usize, c: usize) -> Vec<T> {
        filter_blocks(wt, o, c, &G)
    }
    fn input<T: Real>(x: &[T], g: &Geom, v: &mut [T], c0: usize, cstride: usize, at: Cols) {
        input_transform(x, g, v, (c0, cstride), at)
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

/// Tiles per column and per row of an H×W output.
pub(super) fn tiles(g: &Geom) -> (usize, usize) {
    (g.h.div_ceil(4), g.w.div_ceil(4))
}

/// G of Lavin & Gray's F(4×4, 3×3), the rows of the 6×3 matrix.
pub(super) const G: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// V = Bᵀ d B of every 6×6 input tile of the channels `x` ([n, H, W]) into `v`: 36 blocks
/// [`cstride`, T] (block ξ = 6·i + j), this run's channels at rows `c0..c0 + n`. Tile (ty, tx)
/// covers input rows 4ty − 1 … 4ty + 4 and columns 4tx − 1 … 4tx + 4, zero outside the image.
/// Bᵀ = [[4,0,−5,0,1,0], [0,−4,−4,1,1,0], [0,4,−4,−1,1,0], [0,−2,−1,2,1,0], [0,2,−1,−2,1,0],
/// [0,4,0,−5,0,1]]. Rows of length `ld`, this image's tiles from column `col0` on (the weight
/// gradient puts several images side by side).
pub(super) fn input_transform<T: Real>(
    x: &[T],
    g: &Geom,
    v: &mut [T],
    cs: (usize, usize),
    at: (usize, usize),
) {
    // Compiled with AVX2 where the CPU has it (same bits: no fused multiply-adds).
    vectorized(
        #[inline(always)]
        || input_impl(x, g, v, cs, at),
    )
}

/// The rows of d·B (`d` the six values of a tile's row) for six rows of values at once:
/// (4d0 − 5d2 + d4, (d3 + d4) − 4(d1 + d2), (d4 − d3) + 4(d1 − d2), (d4 − d2) + 2(d3 − d1),
/// (d4 − d2) − 2(d3 − d1), 4d1 − 5d3 + d5), the same combination along rows and columns.
#[inline(always)]
fn bt<T: Real>(d: [T; 6]) -> [T; 6] {
    let (two, four, five) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(5.0));
    let (s12, s34) = (d[1] + d[2], d[3] + d[4]);
    let (d12, d43) = (d[1] - d[2], d[4] - d[3]);
    let (d42, d31) = (d[4] - d[2], d[3] - d[1]);
    [
        (four * d[0] - five * d[2]) + d[4],
        s34 - four * s12,
        d43 + four * d12,
        d42 + two * d31,
        d42 - two * d31,
        (four * d[1] - five * d[3]) + d[5],
    ]
}

/// Rows of `len` values of `buf`, the first at `off`, each `stride` after the last, one per
/// call (split off in turn: no division per call, unlike `chunks_exact`, and no out-of-line
/// `array::from_fn`, which an array-returning form left in the profile at 7%).
#[inline(always)]
pub(super) fn rows_mut<'a, T>(
    buf: &'a mut [T],
    off: usize,
    stride: usize,
    len: usize,
) -> impl FnMut() -> &'a mut [T] {
    let mut rows = buf[off..].chunks_mut(stride);
    move || &mut rows.next().expect("a row per block")[..len]
}

/// o_i[k] = bt(d_0[k], …, d_5[k])_i for k < len. Separate slice arguments, so that the
/// compiler knows the outputs do not alias (as arrays of slices they did not vectorise).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn apply_bt<T: Real>(
    [d0, d1, d2, d3, d4, d5]: [&[T]; 6],
    o0: &mut [T],
    o1: &mut [T],
    o2: &mut [T],
    o3: &mut [T],
    o4: &mut [T],
    o5: &mut [T],
    len: usize,
) {
    let (d0, d1, d2, d3, d4, d5) = (
        &d0[..len],
        &d1[..len],
        &d2[..len],
        &d3[..len],
        &d4[..len],
        &d5[..len],
    );
    let (o0, o1, o2) = (&mut o0[..len], &mut o1[..len], &mut o2[..len]);
    let (o3, o4, o5) = (&mut o3[..len], &mut o4[..len], &mut o5[..len]);
    let d = [d0, d1, d2, d3, d4, d5].map(|d| d.as_ptr() as *const f32);
    let o = six_rows([&mut *o0, &mut *o1, &mut *o2, &mut *o3, &mut *o4, &mut *o5]);
    // SAFETY: `lanes` runs this only where T is f32 and the CPU has AVX2;
    // every slice holds len values (re-sliced above), the kernels stay below len.
    let k0 = lanes::<T>(|| unsafe { x8::bt(d, o, len) });
    for k in k0..len {
        let c = bt([d0[k], d1[k], d2[k], d3[k], d4[k], d5[k]]);
        (o0[k], o1[k], o2[k], o3[k], o4[k], o5[k]) = (c[0], c[1], c[2], c[3], c[4], c[5]);
    }
}

/// o_a[k] = at(m_0[k], …, m_5[k])_a + b for k < len, as [`apply_bt`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn apply_at<T: Real>(
    [m0, m1, m2, m3, m4, m5]: [&[T]; 6],
    o0: &mut [T],
    o1: &mut [T],
    o2: &mut [T],
    o3: &mut [T],
    b: T,
    len: usize,
) {
    let (m0, m1, m2, m3, m4, m5) = (
        &m0[..len],
        &m1[..len],
        &m2[..len],
        &m3[..len],
        &m4[..len],
        &m5[..len],
    );
    let (o0, o1, o2, o3) = (
        &mut o0[..len],
        &mut o1[..len],
        &mut o2[..len],
        &mut o3[..len],
    );
    let d = [m0, m1, m2, m3, m4, m5].map(|d| d.as_ptr() as *const f32);
    let o = [
        o0.as_mut_ptr(),
        o1.as_mut_ptr(),
        o2.as_mut_ptr(),
        o3.as_mut_ptr(),
    ];
    let (o, bf) = (o.map(|o| o as *mut f32), b.to_f64() as f32);
    // SAFETY: as in `apply_bt`.
    let k0 = lanes::<T>(|| unsafe { x8::at(d, o, bf, len) });
    for k in k0..len {
        let c = at([m0[k], m1[k], m2[k], m3[k], m4[k], m5[k]]);
        (o0[k], o1[k], o2[k], o3[k]) = (c[0] + b, c[1] + b, c[2] + b, c[3] + b);
    }
}

#[inline(always)]
fn input_impl<T: Real>(
    x: &[T],
    g: &Geom,
    v: &mut [T],
    (c0, cstride): (usize, usize),
    (ld, col0): (usize, usize),
) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    // e[j][r % 4][r / 4][tx]: row r − 1 of the input (zero rows around it) times B, column j;
    // the rows apart by r mod 4, so that the six rows of every tile row ty are one run of T.
    let qr = th + 1;
    let block = 4 * qr * tw;
    let mut e = vec![T::ZERO; 6 * block];
    // The row's positions by residue mod 4, with a zero on the left and zeros past its end
    // (px[i + 1] = x[i]): p[k][t] = px[4t + k].
    let n = tw + 1;
    let mut p = vec![T::ZERO; 4 * n];
    for (ci, xc) in x.chunks_exact(g.h * g.w).enumerate() {
        for r in 1..=g.h {
            deinterleave4(&xc[(r - 1) * g.w..r * g.w], &mut p, n);
            let (p0, p1, p2, p3) = (
                &p[..tw],
                &p[n..n + tw],
                &p[2 * n..][..tw],
                &p[3 * n..][..tw],
            );
            let (q0, q1) = (&p[1..=tw], &p[n + 1..n + 1 + tw]);
            let off = ((r % 4) * qr + r / 4) * tw;
            let mut row = rows_mut(&mut e, off, block, tw);
            let (e0, e1, e2, e3, e4, e5) = (row(), row(), row(), row(), row(), row());
            apply_bt([p0, p1, p2, p3, q0, q1], e0, e1, e2, e3, e4, e5, tw);
        }
        // Rows outside the image stay zero (only rows 1..=h are written).
        let c = c0 + ci;
        for (j, ej) in e.chunks_exact(block).enumerate() {
            // Rows 4ty + k for every ty: residue k % 4, from row k / 4 on, T values.
            let r = |k: usize| &ej[((k % 4) * qr + k / 4) * tw..][..t];
            let (r0, r1, r2, r3, r4, r5) = (r(0), r(1), r(2), r(3), r(4), r(5));
            // Block ξ = 6i + j, row c: the i-th of six runs 6·cstride·ld apart.
            let mut row = rows_mut(v, (j * cstride + c) * ld + col0, 6 * cstride * ld, t);
            let (v0, v1, v2, v3, v4, v5) = (row(), row(), row(), row(), row(), row());
            apply_bt([r0, r1, r2, r3, r4, r5], v0, v1, v2, v3, v4, v5, t);
        }
    }
}

/// p[k·n + t] = px[4t + k] for t < n, k < 4, where px is the input row with a zero on the
/// left and zeros past its end (px[i + 1] = row[i]). Read straight from the row: residues 0,
/// 1, 2 of the row are residues 1, 2, 3 of px, residue 3 of the row is residue 0 of px one
/// tile on. (Copying the row into a padded buffer first, shifted by one value, made every
/// 32-byte load of this loop straddle two of the copy's stores: failed store forwarding, the
/// hottest instructions of the transform.) In f32 with AVX2 eight of each per four loads,
/// four unpack pairs and four permutes (LLVM leaves the stride-4 loop scalar).
#[inline(always)]
pub(super) fn deinterleave4<T: Real>(row: &[T], p: &mut [T], n: usize) {
    let w = row.len();
    assert!(p.len() >= 4 * n && n >= 1);
    // The AVX2 loop writes residues 1..=3 for t < done and residue 0 for 1 ≤ t ≤ done.
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx2")
    {
        use std::arch::x86_64::*;
        let (src, dst) = (row.as_ptr() as *const f32, p.as_mut_ptr() as *mut f32);
        while done + 9 <= n && 4 * done + 32 <= w {
            let t = done;
            // SAFETY: T is f32 (checked), the CPU has AVX2 (checked), 4t + 32 ≤ w = row.len()
            // and 3n + t + 8 ≤ 4n, t + 9 ≤ n ≤ p.len(): every access is in bounds.
            unsafe {
                let s = src.add(4 * t);
                let (a, b) = (_mm256_loadu_ps(s), _mm256_loadu_ps(s.add(8)));
                let (c, d) = (_mm256_loadu_ps(s.add(16)), _mm256_loadu_ps(s.add(24)));
                // Per 128-bit lane: t0 = [x0 x8 x1 x9 | x4 x12 x5 x13], t1 = [x2 x10 x3 x11 | …].
                let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                let (t2, t3) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
                // Residue k of positions t = [0 4 2 6 | 1 5 3 7] of these eight, reordered.
                let idx = _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7);
                let fix = |u: __m256| _mm256_permutevar8x32_ps(u, idx);
                _mm256_storeu_ps(dst.add(n + t), fix(_mm256_unpacklo_ps(t0, t2)));
                _mm256_storeu_ps(dst.add(2 * n + t), fix(_mm256_unpackhi_ps(t0, t2)));
                _mm256_storeu_ps(dst.add(3 * n + t), fix(_mm256_unpacklo_ps(t1, t3)));
                _mm256_storeu_ps(dst.add(t + 1), fix(_mm256_unpackhi_ps(t1, t3)));
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
    p[0] = T::ZERO;
    for (t, v) in p[..n].iter_mut().enumerate().skip(done + 1) {
        *v = px(4 * t);
    }
    for t in done..n {
        for k in 1..4 {
            p[k * n + t] = px(4 * t + k);
        }
    }
}

/// Y = Aᵀ m A of every tile for the output channels `out` ([n, H, W], channels `o0..`) from
/// the 36 products `m` ([36][`ostride`, T], O rows used), plus the bias.
/// Aᵀ = [[1,1,1,1,1,0], [0,1,−1,2,−2,0], [0,1,1,4,4,0], [0,1,−1,8,−8,1]]: loops over all T
/// tiles of a channel, then the 4×4 results interleaved into rows.
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
        || output_impl(m, g, bias, out, os, mt),
    )
}

/// Aᵀ applied to six values: (m0 + (m1 + m2) + (m3 + m4), (m1 − m2) + 2(m3 − m4),
/// (m1 + m2) + 4(m3 + m4), (m1 − m2) + 8(m3 − m4) + m5).
#[inline(always)]
fn at<T: Real>(m: [T; 6]) -> [T; 4] {
    let (two, four, eight) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    let (s12, d12, s34, d34) = (m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]);
    [
        (m[0] + s12) + s34,
        d12 + two * d34,
        s12 + four * s34,
        (d12 + eight * d34) + m[5],
    ]
}

#[inline(always)]
fn output_impl<T: Real>(
    m: &[T],
    g: &Geom,
    bias: Option<&[T]>,
    out: &mut [T],
    (o0, ostride): (usize, usize),
    (mld, col0): Cols,
) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    // s[a][j] = Σ_i Aᵀ[a][i] m_ij over T, then y[a][b] = Σ_j s[a][j] Aᵀ[b][j] over T.
    let mut s = vec![T::ZERO; 24 * t];
    let mut y = vec![T::ZERO; 16 * t];
    for (oi, yo) in out.chunks_exact_mut(g.h * g.w).enumerate() {
        let o = o0 + oi;
        let b = bias.map_or(T::ZERO, |b| b[o]);
        for j in 0..6 {
            let mv = |i: usize| &m[((6 * i + j) * ostride + o) * mld + col0..][..t];
            let (m0, m1, m2, m3, m4, m5) = (mv(0), mv(1), mv(2), mv(3), mv(4), mv(5));
            let mut row = rows_mut(&mut s, j * t, 6 * t, t);
            let (s0, s1, s2, s3) = (row(), row(), row(), row());
            apply_at([m0, m1, m2, m3, m4, m5], s0, s1, s2, s3, T::ZERO, t);
        }
        for a in 0..4 {
            let sv = |j: usize| &s[(6 * a + j) * t..][..t];
            let (x0, x1, x2, x3, x4, x5) = (sv(0), sv(1), sv(2), sv(3), sv(4), sv(5));
            let mut row = rows_mut(&mut y, 4 * a * t, t, t);
            let (y0, y1, y2, y3) = (row(), row(), row(), row());
            apply_at([x0, x1, x2, x3, x4, x5], y0, y1, y2, y3, b, t);
        }
        for r in 0..g.h {
            let (a, ty) = (r % 4, r / 4);
            let yb = |bb: usize| &y[(4 * a + bb) * t + ty * tw..][..tw];
            let (y0, y1, y2, y3) = (yb(0), yb(1), yb(2), yb(3));
            interleave4(&mut yo[r * g.w..(r + 1) * g.w], [y0, y1, y2, y3]);
        }
    }
}
