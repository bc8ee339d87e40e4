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

use super::conv::mm;
use super::cpu_conv::{grouped_sum, uninit, Geom};
use super::real::{threads, Real};

/// Whether the Winograd path takes this convolution: 3×3, stride 1, padding 1, and enough
/// channels on both sides that the GEMMs dominate the transforms.
pub(super) fn applies(g: &Geom) -> bool {
    g.k == 3 && g.s == 1 && g.p == 1 && g.c >= 16 && g.o >= 16 && g.h >= 2 && g.w >= 2
}

/// U = G g Gᵀ of every filter, as 16 matrices [O, C] (ξ = 4·i + j): `wt` is [O, C, 3, 3].
fn filter_transform<T: Real>(wt: &[T], o: usize, c: usize) -> Vec<T> {
    let half = T::from_f64(0.5);
    let mut u = uninit(16 * o * c);
    for oc in 0..o * c {
        let g = &wt[oc * 9..oc * 9 + 9];
        // t = G g: rows g0, (g0+g1+g2)/2, (g0−g1+g2)/2, g2 of the 3×3 filter.
        let mut t = [[T::ZERO; 3]; 4];
        for j in 0..3 {
            let (a, b, cc) = (g[j], g[3 + j], g[6 + j]);
            t[0][j] = a;
            t[1][j] = (a + b + cc) * half;
            t[2][j] = (a - b + cc) * half;
            t[3][j] = cc;
        }
        for (i, r) in t.iter().enumerate() {
            let (a, b, cc) = (r[0], r[1], r[2]);
            let row = [a, (a + b + cc) * half, (a - b + cc) * half, cc];
            for (j, v) in row.into_iter().enumerate() {
                u[(4 * i + j) * o * c + oc] = v;
            }
        }
    }
    u
}

/// Tiles per row and per column of an H×W output.
fn tiles(g: &Geom) -> (usize, usize) {
    (g.h.div_ceil(2), g.w.div_ceil(2))
}

/// V = Bᵀ d B of every 4×4 input tile of the channels `x` ([n, H, W]) into `v`: 16 blocks
/// [C_total, T] (row stride T, block stride `cstride`·T), this run's channels at rows
/// `c0..c0+n`. Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]]; tile (ty, tx) covers input
/// rows 2ty−1..2ty+2 and columns 2tx−1..2tx+2, zero outside the image. Written as loops over
/// whole rows of tiles so that they vectorise (per-tile code was 6 ns per input value).
fn input_transform<T: Real>(x: &[T], g: &Geom, v: &mut [T], c0: usize, cstride: usize) {
    let t = tiles(g).0 * tiles(g).1;
    input_transform_at(x, g, v, (c0, cstride), (t, 0))
}

/// [`input_transform`] into rows of length `ld`, this image's tiles from column `col0` on
/// (several images side by side, as the weight gradient's GEMMs take them).
fn input_transform_at<T: Real>(
    x: &[T],
    g: &Geom,
    v: &mut [T],
    cs: (usize, usize),
    at: (usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // The loops compiled with AVX2 (same bits: no fused multiply-adds here): a closure
        // this size handed to `vectorized` stayed out of line, in SSE2 (measured 2–7 ns per
        // input value).
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<T: Real>(
            x: &[T],
            g: &Geom,
            v: &mut [T],
            cs: (usize, usize),
            at: (usize, usize),
        ) {
            input_transform_at_impl(x, g, v, cs, at)
        }
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { avx2(x, g, v, cs, at) };
    }
    input_transform_at_impl(x, g, v, cs, at)
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
    // One input row with a zero on the left and zeros past its end: px[i + 1] = x[i].
    let mut px = vec![T::ZERO; 2 * tw + 4];
    // Its odd and even positions: od[t] = x[2t − 1], ev[t] = x[2t].
    let (mut od, mut ev) = (vec![T::ZERO; tw + 1], vec![T::ZERO; tw + 1]);
    for (ci, xc) in x.chunks_exact(g.h * g.w).enumerate() {
        for r in 1..=g.h {
            px[1..=g.w].copy_from_slice(&xc[(r - 1) * g.w..r * g.w]);
            deinterleave(&px, &mut od, &mut ev);
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
            for (d, (&a, &b)) in d0.iter_mut().zip(o0.iter().zip(o1)) {
                *d = a - b;
            }
            for (d, (&a, &b)) in d1.iter_mut().zip(e0.iter().zip(o1)) {
                *d = a + b;
            }
            for (d, (&a, &b)) in d2.iter_mut().zip(o1.iter().zip(e0)) {
                *d = a - b;
            }
            for (d, (&a, &b)) in d3.iter_mut().zip(e0.iter().zip(e1)) {
                *d = a - b;
            }
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
                    for (d, (&a, &b)) in dst.iter_mut().zip(p.iter().zip(q)) {
                        *d = a + b;
                    }
                } else {
                    for (d, (&a, &b)) in dst.iter_mut().zip(p.iter().zip(q)) {
                        *d = a - b;
                    }
                }
            }
        }
    }
}

/// Y = Aᵀ m A of every tile for the output channels `out` ([n, H, W], channels `o0..`) from
/// the 16 products `m` ([16][O, T]), plus the bias. Aᵀ = [[1,1,1,0],[0,1,−1,−1]]. Loops over
/// all T tiles of a channel at once (vectorised), then the 2×2 results interleaved into rows.
fn output_transform<T: Real>(m: &[T], g: &Geom, bias: Option<&[T]>, out: &mut [T], o0: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Compiled with AVX2, as `input_transform_at`.
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<T: Real>(m: &[T], g: &Geom, bias: Option<&[T]>, out: &mut [T], o0: usize) {
            output_transform_impl(m, g, bias, out, o0)
        }
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { avx2(m, g, bias, out, o0) };
    }
    output_transform_impl(m, g, bias, out, o0)
}

#[inline(always)]
fn output_transform_impl<T: Real>(m: &[T], g: &Geom, bias: Option<&[T]>, out: &mut [T], o0: usize) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    // s[k][j]: k = 0 → m0j + m1j + m2j, k = 1 → m1j − m2j − m3j; then y[a][b] over T.
    let mut s = vec![T::ZERO; 8 * t];
    let mut y = vec![T::ZERO; 4 * t];
    for (oi, yo) in out.chunks_exact_mut(g.h * g.w).enumerate() {
        let o = o0 + oi;
        let b = bias.map_or(T::ZERO, |b| b[o]);
        let mv = |i: usize, j: usize| &m[((4 * i + j) * g.o + o) * t..][..t];
        for j in 0..4 {
            let (m0, m1, m2, m3) = (mv(0, j), mv(1, j), mv(2, j), mv(3, j));
            let (s0, s1) = s[2 * j * t..(2 * j + 2) * t].split_at_mut(t);
            for (d, ((&a, &bb), &c)) in s0.iter_mut().zip(m0.iter().zip(m1).zip(m2)) {
                *d = (a + bb) + c;
            }
            for (d, ((&a, &bb), &c)) in s1.iter_mut().zip(m1.iter().zip(m2).zip(m3)) {
                *d = (a - bb) - c;
            }
        }
        let sk = |k: usize, j: usize| &s[(2 * j + k) * t..(2 * j + k + 1) * t];
        for (a, ya) in y.chunks_exact_mut(2 * t).enumerate() {
            let (y0, y1) = ya.split_at_mut(t);
            let (p0, p1, p2, p3) = (sk(a, 0), sk(a, 1), sk(a, 2), sk(a, 3));
            for (d, ((&x0, &x1), &x2)) in y0.iter_mut().zip(p0.iter().zip(p1).zip(p2)) {
                *d = ((x0 + x1) + x2) + b;
            }
            for (d, ((&x1, &x2), &x3)) in y1.iter_mut().zip(p1.iter().zip(p2).zip(p3)) {
                *d = ((x1 - x2) - x3) + b;
            }
        }
        for r in 0..g.h {
            let (a, ty) = (r % 2, r / 2);
            let ya = &y[(2 * a) * t + ty * tw..][..tw];
            let yb = &y[(2 * a + 1) * t + ty * tw..][..tw];
            let row = &mut yo[r * g.w..(r + 1) * g.w];
            let mut px = row.chunks_exact_mut(2);
            for ((p, &va), &vb) in (&mut px).zip(ya).zip(yb) {
                p[0] = va;
                p[1] = vb;
            }
            if let Some(last) = px.into_remainder().first_mut() {
                *last = ya[tw - 1];
            }
        }
    }
}

/// od[t] = px[2t], ev[t] = px[2t + 1] for t ≤ tw (od, ev: tw + 1 values; px: 2·tw + 4). In
/// f32 with AVX2 eight of each per two loads and two shuffles: the plain loop stayed scalar
/// (LLVM does not vectorise the stride-2 access here) and was a third of the input transform.
#[inline(always)]
fn deinterleave<T: Real>(px: &[T], od: &mut [T], ev: &mut [T]) {
    let n = od.len();
    assert!(ev.len() == n && px.len() >= 2 * n + 2);
    let mut t = 0;
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx2")
    {
        use std::arch::x86_64::*;
        let (p, o, e) = (
            px.as_ptr() as *const f32,
            od.as_mut_ptr() as *mut f32,
            ev.as_mut_ptr() as *mut f32,
        );
        while t + 8 <= n {
            // SAFETY: T is f32 (checked), the CPU has AVX2 (checked), and 2t + 16 ≤ 2n ≤
            // px.len(), t + 8 ≤ n: every access is in bounds.
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
                _mm256_storeu_ps(o.add(t), fix(even));
                _mm256_storeu_ps(e.add(t), fix(odd));
            }
            t += 8;
        }
    }
    for t in t..n {
        od[t] = px[2 * t];
        ev[t] = px[2 * t + 1];
    }
}

/// Scratch of one image: V [16][C, T] and the products M [16][O, T].
struct Scratch<T> {
    v: Vec<T>,
    m: Vec<T>,
}

/// `y = conv(x, w) + bias` for a convolution [`applies`] accepts: `wt` [O, C, 3, 3].
pub(super) fn forward<T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let u = filter_transform(wt, g.o, g.c);
    let (hw, nt) = (g.h * g.w, threads());
    let mut out = uninit(g.b * g.o * hw);
    let new = || Scratch {
        v: uninit(16 * g.c * t),
        m: uninit(16 * g.o * t),
    };
    // The 16 products of one image: M_ξ [O, T] = U_ξ [O, C] · V_ξ [C, T].
    let products = |s: &mut Scratch<T>, xi: usize| {
        let (oc, ct, ot) = (g.o * g.c, g.c * t, g.o * t);
        let (mx, vx) = (
            &mut s.m[xi * ot..(xi + 1) * ot],
            &s.v[xi * ct..(xi + 1) * ct],
        );
        let ux = &u[xi * oc..(xi + 1) * oc];
        mm(
            (g.o, t, g.c),
            mx,
            false,
            ux,
            (g.c, 1),
            vx,
            (t, 1),
            Parallelism::None,
        );
    };
    let image = |s: &mut Scratch<T>, xb: &[T], ob: &mut [T]| {
        input_transform(xb, g, &mut s.v, 0, g.c);
        for xi in 0..16 {
            products(s, xi);
        }
        output_transform(&s.m, g, bias, ob, 0);
    };
    let (xs, os) = (g.c * hw, g.o * hw);
    if nt <= 1 {
        let mut s = new();
        for (xb, ob) in x.chunks(xs).zip(out.chunks_mut(os)) {
            image(&mut s, xb, ob);
        }
    } else if g.b >= nt {
        x.par_chunks(xs)
            .zip(out.par_chunks_mut(os))
            .for_each_init(new, |s, (xb, ob)| image(s, xb, ob));
    } else {
        // Fewer images than threads: each stage of one image split over the threads, in
        // pieces that do not depend on the thread count (channels, the 16 products).
        let mut s = new();
        let ct = g.c * t;
        for (xb, ob) in x.chunks(xs).zip(out.chunks_mut(os)) {
            // Channels in runs of 8: each run writes its rows of every V_ξ.
            let runs: Vec<(usize, &[T])> = xb.chunks(8 * hw).enumerate().collect();
            let v_ptr = SendPtr(s.v.as_mut_ptr());
            let vlen = s.v.len();
            runs.into_par_iter().for_each(|(r, xr)| {
                // SAFETY: run r writes only rows 8r..8r+n of each V_ξ block, disjoint from
                // the other runs' rows; `v` outlives the loop.
                let v = unsafe { std::slice::from_raw_parts_mut(v_ptr.get(), vlen) };
                input_transform(xr, g, v, 8 * r, g.c);
            });
            let ot = g.o * t;
            let (m, v) = (&mut s.m, &s.v);
            m.par_chunks_mut(ot).enumerate().for_each(|(xi, mx)| {
                let ux = &u[xi * g.o * g.c..(xi + 1) * g.o * g.c];
                let vx = &v[xi * ct..(xi + 1) * ct];
                mm(
                    (g.o, t, g.c),
                    mx,
                    false,
                    ux,
                    (g.c, 1),
                    vx,
                    (t, 1),
                    Parallelism::None,
                );
            });
            let m = &s.m;
            ob.par_chunks_mut(8 * hw)
                .enumerate()
                .for_each(|(r, oc)| output_transform(m, g, bias, oc, 8 * r));
        }
    }
    out
}

/// Z = A ∂y Aᵀ of every 2×2 tile of the output gradient `dy` ([O, H, W], one image) into `z`
/// ([16][O, T]), A = (Aᵀ)ᵀ of [`output_transform`]: a 2-vector (p, q) becomes
/// (p, p + q, p − q, −q), along rows and then along columns; zero past the image.
fn grad_transform<T: Real>(dy: &[T], g: &Geom, z: &mut [T], at: (usize, usize)) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Compiled with AVX2, as `input_transform_at`.
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<T: Real>(dy: &[T], g: &Geom, z: &mut [T], at: (usize, usize)) {
            grad_transform_impl(dy, g, z, at)
        }
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { avx2(dy, g, z, at) };
    }
    grad_transform_impl(dy, g, z, at)
}

#[inline(always)]
fn grad_transform_impl<T: Real>(dy: &[T], g: &Geom, z: &mut [T], (ld, col0): (usize, usize)) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    // e[j][r % 2][r / 2][tx] as in `input_transform`, for the rows r of dy.
    let mut e = vec![T::ZERO; 8 * t];
    let (mut ev, mut od) = (vec![T::ZERO; tw], vec![T::ZERO; tw]);
    let half = g.w / 2;
    for (o, yo) in dy.chunks_exact(g.h * g.w).enumerate() {
        for r in 0..g.h {
            let src = &yo[r * g.w..(r + 1) * g.w];
            for (k, pair) in src.chunks_exact(2).enumerate() {
                ev[k] = pair[0];
                od[k] = pair[1];
            }
            if g.w % 2 == 1 {
                ev[half] = src[g.w - 1];
                od[half] = T::ZERO;
            }
            let row = |j: usize| ((2 * j + r % 2) * th + r / 2) * tw;
            let [a0, a1, a2, a3] = [row(0), row(1), row(2), row(3)];
            e[a0..a0 + tw].copy_from_slice(&ev);
            for (d, (&p, &q)) in e[a1..a1 + tw].iter_mut().zip(ev.iter().zip(&od)) {
                *d = p + q;
            }
            for (d, (&p, &q)) in e[a2..a2 + tw].iter_mut().zip(ev.iter().zip(&od)) {
                *d = p - q;
            }
            for (d, &q) in e[a3..a3 + tw].iter_mut().zip(&od) {
                *d = T::ZERO - q;
            }
        }
        if g.h % 2 == 1 {
            // The last tile row's bottom row lies outside the image.
            for j in 0..4 {
                let at = ((2 * j + 1) * th + th - 1) * tw;
                e[at..at + tw].fill(T::ZERO);
            }
        }
        for j in 0..4 {
            let top = &e[(2 * j) * th * tw..][..t];
            let bot = &e[(2 * j + 1) * th * tw..][..t];
            for i in 0..4 {
                let at = ((4 * i + j) * g.o + o) * ld + col0;
                let dst = &mut z[at..at + t];
                match i {
                    0 => dst.copy_from_slice(top),
                    1 => dst
                        .iter_mut()
                        .zip(top.iter().zip(bot))
                        .for_each(|(d, (&p, &q))| *d = p + q),
                    2 => dst
                        .iter_mut()
                        .zip(top.iter().zip(bot))
                        .for_each(|(d, (&p, &q))| *d = p - q),
                    _ => dst.iter_mut().zip(bot).for_each(|(d, &q)| *d = T::ZERO - q),
                }
            }
        }
    }
}

/// dL/dw [O, C, 3, 3] of a convolution [`applies`] accepts, from its input `x` and output
/// gradient `dy`: ∂L/∂g = Σ_tiles Gᵀ[(A ∂y Aᵀ) ⊙ (Bᵀ d B)]G, so per ξ one GEMM
/// M_ξ [O, C] = Z_ξ [O, T] · V_ξ [C, T]ᵀ summed over the tiles of every image — depth T per
/// image, where the im2col weight gradient has 9·C·Ho·Wo / (O) work per output and packs the
/// columns. Images are summed in `groups` consecutive groups (fixed by the batch, not the
/// threads), the groups' sums added in order.
pub(super) fn backward_weight<T: Real>(x: &[T], dy: &[T], g: &Geom, groups: usize) -> Vec<T> {
    backward_weight_within(x, dy, g, groups, 16 << 20)
}

/// [`backward_weight`] with V and Z of one GEMM held to about `budget` values.
fn backward_weight_within<T: Real>(
    x: &[T],
    dy: &[T],
    g: &Geom,
    groups: usize,
    budget: usize,
) -> Vec<T> {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let hw = g.h * g.w;
    let (ct, ot, oc) = (g.c * t, g.o * t, g.o * g.c);
    // A group's images side by side along the tiles, one GEMM of depth images·T per ξ: at
    // most `sub` images per GEMM, so that V and Z stay within the budget (16 Mi values = 64 MiB in f32; decided by the geometry alone); a group of more
    // runs in steps, the GEMMs accumulating.
    let sub = (budget / (16 * (ct + ot)).max(1)).max(1);
    let group = |range: std::ops::Range<usize>, par: Parallelism| {
        if range.is_empty() {
            return vec![T::ZERO; 16 * oc];
        }
        let mut m = uninit(16 * oc);
        let most = sub.min(range.len());
        let (mut v, mut z) = (uninit(16 * ct * most), uninit(16 * ot * most));
        for (step, first) in range.clone().step_by(most).enumerate() {
            let imgs = first..(first + most).min(range.end);
            let (k, ld) = (imgs.len(), imgs.len() * t);
            for (n, b) in imgs.enumerate() {
                let xb = &x[b * g.c * hw..][..g.c * hw];
                input_transform_at(xb, g, &mut v, (0, g.c), (ld, n * t));
                grad_transform(&dy[b * g.o * hw..][..g.o * hw], g, &mut z, (ld, n * t));
            }
            for xi in 0..16 {
                mm(
                    (g.o, g.c, ld),
                    &mut m[xi * oc..(xi + 1) * oc],
                    step > 0,
                    &z[xi * ot * k..][..ot * k],
                    (ld, 1),
                    &v[xi * ct * k..][..ct * k],
                    (1, ld),
                    par,
                );
            }
        }
        m
    };
    let m = grouped_sum(g.b, groups, 16 * oc, group);
    // dw = Gᵀ M G per (o, c), G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]].
    let half = T::from_f64(0.5);
    let mut dw = uninit(oc * 9);
    for k in 0..oc {
        let mk = |i: usize, j: usize| m[(4 * i + j) * oc + k];
        // Column j of Gᵀ M (3 values).
        let cols: [[T; 3]; 4] = std::array::from_fn(|j| {
            let (a, b, c, d) = (mk(0, j), mk(1, j), mk(2, j), mk(3, j));
            [a + (b + c) * half, (b - c) * half, (b + c) * half + d]
        });
        for (a, w) in dw[k * 9..(k + 1) * 9].chunks_exact_mut(3).enumerate() {
            let r = cols.map(|c| c[a]);
            w[0] = r[0] + (r[1] + r[2]) * half;
            w[1] = (r[1] - r[2]) * half;
            w[2] = (r[1] + r[2]) * half + r[3];
        }
    }
    dw
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
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `f(x index, y index, w index)` for every tap of a padding-1 3×3 convolution that
    /// reads inside the image.
    fn taps(g: &Geom, mut f: impl FnMut(usize, usize, usize)) {
        for n in 0..g.b {
            for o in 0..g.o {
                for c in 0..g.c {
                    for (ky, kx, oy, ox) in (0..9)
                        .flat_map(|k| (0..g.h * g.w).map(move |p| (k / 3, k % 3, p / g.w, p % g.w)))
                    {
                        let (iy, ix) = (oy + ky, ox + kx);
                        if iy < 1 || ix < 1 || iy > g.h || ix > g.w {
                            continue;
                        }
                        f(
                            ((n * g.c + c) * g.h + iy - 1) * g.w + ix - 1,
                            ((n * g.o + o) * g.h + oy) * g.w + ox,
                            ((o * g.c + c) * 3 + ky) * 3 + kx,
                        );
                    }
                }
            }
        }
    }

    /// The convolution by its definition, in f64.
    fn direct(x: &[f64], w: &[f64], b: &[f64], g: &Geom) -> Vec<f64> {
        let plane = g.h * g.w;
        let mut y: Vec<f64> = (0..g.b * g.o * plane).map(|i| b[i / plane % g.o]).collect();
        taps(g, |xi, yi, wi| y[yi] += x[xi] * w[wi]);
        y
    }

    /// dL/dw by its definition, in f64.
    fn direct_dw(x: &[f64], dy: &[f64], g: &Geom) -> Vec<f64> {
        let mut dw = vec![0f64; g.o * g.c * 9];
        taps(g, |xi, yi, wi| dw[wi] += x[xi] * dy[yi]);
        dw
    }

    /// max |got − want|.
    fn max_err<T: Real>(got: &[T], want: &[f64]) -> f64 {
        (got.iter().zip(want))
            .map(|(a, b)| (a.to_f64() - b).abs())
            .fold(0f64, f64::max)
    }

    /// `run` in f32 on 1, 2 and 3 threads: within `rel` of the largest reference value, and
    /// the same bits every time.
    fn f32_on_threads(
        want: &[f64],
        rel: f64,
        what: &str,
        run: impl Fn() -> Vec<f32> + Send + Sync,
    ) {
        let scale = want.iter().map(|v| v.abs()).fold(0f64, f64::max);
        let mut bits = None;
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(&run);
            let err = max_err(&got, want);
            assert!(err < rel * scale, "f32 {what}: {err} of {scale}");
            let b: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert!(
                bits.get_or_insert(b.clone()) == &b,
                "{what}: {threads} threads changed bits"
            );
        }
    }

    fn random(rng: &mut impl Rng, n: usize, r: f64) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-r..r)).collect()
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&v| v as f32).collect()
    }

    #[test]
    fn weight_gradient_matches_the_definition_on_any_thread_count() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for &(b, c, o, h, w) in &[
            (1, 16, 16, 5, 7),
            (5, 24, 16, 8, 8),
            (3, 16, 40, 9, 4),
            (2, 16, 16, 5, 33),
        ] {
            let what = format!("{b}×{c}→{o} {h}×{w}");
            let g = Geom::new(&[b, c, h, w], &[o, c, 3, 3], 1, 1).unwrap();
            let x = random(&mut rng, b * c * h * w, 1.0);
            let dy = random(&mut rng, b * o * h * w, 1.0);
            let want = direct_dw(&x, &dy, &g);
            let err = max_err(&backward_weight(&x, &dy, &g, 4), &want);
            assert!(err < 1e-11, "f64 {what}: {err}");
            // One image per GEMM (a budget below one image's V and Z): the same sums.
            let err = max_err(&backward_weight_within(&x, &dy, &g, 1, 1), &want);
            assert!(err < 1e-11, "f64 stepped {what}: {err}");
            let (x32, dy32) = (f32s(&x), f32s(&dy));
            f32_on_threads(&want, 4e-6, &what, || backward_weight(&x32, &dy32, &g, 4));
        }
    }

    #[test]
    fn matches_the_definition_at_odd_and_even_sizes_on_any_thread_count() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        // (batch, C, O, H, W): odd sizes, one image (split stages), several (per image).
        // Rows wide enough for the vectorised deinterleave too (33: 17 tiles, two 8-wide steps).
        for &(b, c, o, h, w) in &[
            (1, 16, 16, 5, 7),
            (3, 24, 16, 8, 8),
            (2, 16, 40, 9, 4),
            (1, 16, 16, 6, 33),
            (3, 16, 16, 4, 32),
        ] {
            let what = format!("{b}×{c}→{o} {h}×{w}");
            let g = Geom::new(&[b, c, h, w], &[o, c, 3, 3], 1, 1).unwrap();
            assert!(applies(&g));
            let x = random(&mut rng, b * c * h * w, 1.0);
            let wt = random(&mut rng, o * c * 9, 0.3);
            let bias = random(&mut rng, o, 1.0);
            let want = direct(&x, &wt, &bias, &g);
            let err = max_err(&forward(&x, &wt, Some(&bias), &g), &want);
            assert!(err < 1e-12, "f64 {what}: {err}");
            let (x32, w32, b32) = (f32s(&x), f32s(&wt), f32s(&bias));
            f32_on_threads(&want, 2e-6, &what, || forward(&x32, &w32, Some(&b32), &g));
        }
    }
}
