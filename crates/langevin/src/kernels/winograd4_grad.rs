//! The weight gradient in Winograd F(4×4, 3×3) (Lavin & Gray 2016): Z = A ∂y Aᵀ of every
//! 4×4 tile of the output gradient (6×6 values), V = Bᵀ d B of the 6×6 input tiles as in the
//! forward ([`super::winograd4`]), 36 products summed over the batch's tiles, then
//! dw = Gᵀ M G.
//!
//! Written for a measured hot spot (issue 17, CPU round 13 in docs/benchmarks.md): in
//! F(2×2, 3×3) the weight gradient took 4× the forward's time (conv3×3 64→64, 32×32, b64:
//! backward 40.8 ms, forward 8.6), its transforms a third of that: each input value became
//! four transformed ones. F(4×4) writes 2.25 per input value and multiplies 2.25 times per
//! output and channel pair instead of 4.
use rayon::prelude::*;

use super::cpu_conv::{uninit, Geom};
use super::real::Real;
use super::simd::vectorized;
use super::winograd4::{deinterleave4, input_transform, rows_mut, tiles, F4, G};
use super::winograd4_simd::{lanes, six_rows, x8};
use super::winograd_grad::GradTiling;

/// Whether the weight gradient takes F(4×4, 3×3) (for a convolution
/// [`super::winograd::applies`] takes): from 32×32 and 64 channels on both sides. Measured
/// (b32, 2 threads, F(4×4) against F(2×2)): 128→128 at 32×32 19.5 against 23.6 ms, 64→64 at
/// 32×32 (b64) 15.3 against 17.8; no gain at 96→32 (7.2 / 7.3) or at 16×16 (256→256: 23.7 /
/// 23.9), a loss at 32→32 (2.7 / 2.4) and at 64→64 16×16 (3.3 / 2.9), where the transforms,
/// not the products, take most of the time.
pub(super) fn applies(g: &Geom) -> bool {
    g.h.div_ceil(4) * g.w.div_ceil(4) >= 64 && g.c >= 64 && g.o >= 64
}

impl GradTiling for F4 {
    const M: usize = 4;
    fn input<T: Real>(x: &[T], g: &Geom, v: &mut [T], cs: (usize, usize), at: (usize, usize)) {
        input_transform(x, g, v, cs, at)
    }
    fn grad<T: Real>(dy: &[T], g: &Geom, z: &mut [T], ostride: usize, at: (usize, usize)) {
        vectorized(
            #[inline(always)]
            || grad_impl(dy, g, z, ostride, at),
        )
    }
    fn filter_grad<T: Real>(m: &[T]) -> Vec<T> {
        filter_grad4(m)
    }
}

/// A = (Aᵀ)ᵀ of F(4×4)'s output transform applied to four values: (q0, (q0 + q2) + (q1 + q3),
/// (q0 + q2) − (q1 + q3), (q0 + 4q2) + (2q1 + 8q3), (q0 + 4q2) − (2q1 + 8q3), q3).
#[inline(always)]
fn a6<T: Real>(q: [T; 4]) -> [T; 6] {
    let (two, four, eight) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    let (s02, s13) = (q[0] + q[2], q[1] + q[3]);
    let (u, v) = (q[0] + four * q[2], two * q[1] + eight * q[3]);
    [q[0], s02 + s13, s02 - s13, u + v, u - v, q[3]]
}

/// o_i[k] = a6(q_0[k], …, q_3[k])_i for k < len (separate output slices, so that the compiler
/// knows they do not alias), in [`super::winograd4_simd`]'s vector kernels where they apply.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn apply_a6<T: Real>(
    [q0, q1, q2, q3]: [&[T]; 4],
    o0: &mut [T],
    o1: &mut [T],
    o2: &mut [T],
    o3: &mut [T],
    o4: &mut [T],
    o5: &mut [T],
    len: usize,
) {
    let (q0, q1, q2, q3) = (&q0[..len], &q1[..len], &q2[..len], &q3[..len]);
    let (o0, o1, o2) = (&mut o0[..len], &mut o1[..len], &mut o2[..len]);
    let (o3, o4, o5) = (&mut o3[..len], &mut o4[..len], &mut o5[..len]);
    let q = [q0, q1, q2, q3].map(|q| q.as_ptr() as *const f32);
    let o = six_rows([&mut *o0, &mut *o1, &mut *o2, &mut *o3, &mut *o4, &mut *o5]);
    // SAFETY: `lanes` runs this only where T is f32 and the CPU has AVX2;
    // every slice holds len values (re-sliced above), the kernels stay below len.
    let k0 = lanes::<T>(|| unsafe { x8::a6(q, o, len) });
    for k in k0..len {
        let c = a6([q0[k], q1[k], q2[k], q3[k]]);
        (o0[k], o1[k], o2[k], o3[k], o4[k], o5[k]) = (c[0], c[1], c[2], c[3], c[4], c[5]);
    }
}

/// Z = A ∂y Aᵀ of every 4×4 tile of `dy` ([O, H, W], one image) into 36 blocks [`ostride`,
/// `ld`] (block ξ = 6i + j), this image's tiles from column `col0`. Tile (ty, tx) covers output rows
/// 4ty … 4ty + 3 and columns 4tx … 4tx + 3, zero past the image. Along each row first (the
/// row's values by residue mod 4), then along the columns over all T tiles at once.
#[inline(always)]
fn grad_impl<T: Real>(dy: &[T], g: &Geom, z: &mut [T], ostride: usize, (ld, col0): (usize, usize)) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    // e[j][r % 4][r / 4][tx]: row r of dy times Aᵀ, column j. Rows past the image are never
    // written and stay zero.
    let block = 4 * t;
    let mut e = vec![T::ZERO; 6 * block];
    // p[k·n + t] = px[4t + k] with px[i + 1] = row[i] (`deinterleave4`'s zero on the left),
    // so row[4t + a] is p[(a + 1)·n + t] for a < 3 and p[t + 1] for a = 3.
    let n = tw + 1;
    let mut p = vec![T::ZERO; 4 * n];
    for (o, yo) in dy.chunks_exact(g.h * g.w).enumerate() {
        for r in 0..g.h {
            deinterleave4(&yo[r * g.w..(r + 1) * g.w], &mut p, n);
            let q = [
                &p[n..n + tw],
                &p[2 * n..][..tw],
                &p[3 * n..][..tw],
                &p[1..=tw],
            ];
            let mut row = rows_mut(&mut e, ((r % 4) * th + r / 4) * tw, block, tw);
            let (e0, e1, e2, e3, e4, e5) = (row(), row(), row(), row(), row(), row());
            apply_a6(q, e0, e1, e2, e3, e4, e5, tw);
        }
        for (j, ej) in e.chunks_exact(block).enumerate() {
            // Rows 4ty + a for every ty: residue a, T values.
            let q = [&ej[..t], &ej[t..2 * t], &ej[2 * t..3 * t], &ej[3 * t..]];
            // Block ξ = 6i + j, row o: the i-th of six runs 6·ostride·ld apart.
            let mut row = rows_mut(z, (j * ostride + o) * ld + col0, 6 * ostride * ld, t);
            let (z0, z1, z2, z3, z4, z5) = (row(), row(), row(), row(), row(), row());
            apply_a6(q, z0, z1, z2, z3, z4, z5, t);
        }
    }
}

/// dw [O·C, 3, 3] = Gᵀ M G per filter from the 36 summed products `m` ([36][O·C]), in blocks
/// of filters (vectorised along the block, blocks in parallel: at 256 channels this is 65 536
/// filters). Each value is computed alike on any thread.
fn filter_grad4<T: Real>(m: &[T]) -> Vec<T> {
    const BLOCK: usize = 256;
    let oc = m.len() / 36;
    let g: [[T; 3]; 6] = G.map(|r| r.map(T::from_f64));
    let mut dw: Vec<T> = uninit(9 * oc);
    dw.par_chunks_mut(9 * BLOCK)
        .enumerate()
        .for_each(|(bl, out)| {
            let (k0, n) = (bl * BLOCK, out.len() / 9);
            // c[3j + a] = Σ_i G[i][a]·M[6i + j], then d[3a + b] = Σ_j c[3j + a]·G[j][b].
            let (mut c, mut d) = (vec![T::ZERO; 18 * n], vec![T::ZERO; 9 * n]);
            vectorized(
                #[inline(always)]
                || {
                    for j in 0..6 {
                        for a in 0..3 {
                            let dst = &mut c[(3 * j + a) * n..][..n];
                            for (i, gi) in g.iter().enumerate() {
                                if gi[a] != T::ZERO {
                                    let src = &m[(6 * i + j) * oc + k0..][..n];
                                    dst.iter_mut().zip(src).for_each(|(s, &v)| *s += gi[a] * v);
                                }
                            }
                        }
                    }
                    for a in 0..3 {
                        for b in 0..3 {
                            let dst = &mut d[(3 * a + b) * n..][..n];
                            for (j, gj) in g.iter().enumerate() {
                                if gj[b] != T::ZERO {
                                    let src = &c[(3 * j + a) * n..][..n];
                                    dst.iter_mut().zip(src).for_each(|(s, &v)| *s += v * gj[b]);
                                }
                            }
                        }
                    }
                },
            );
            for (k, w) in out.chunks_exact_mut(9).enumerate() {
                for (q, wq) in w.iter_mut().enumerate() {
                    *wq = d[q * n + k];
                }
            }
        });
    dw
}
