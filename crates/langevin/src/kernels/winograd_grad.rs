//! The weight gradient of a 3×3 stride-1 convolution by Winograd's minimal filtering (Lavin &
//! Gray 2016): ∂L/∂g = Σ_tiles Gᵀ[(A ∂y Aᵀ) ⊙ (Bᵀ d B)]G, so per transformed position ξ one
//! GEMM M_ξ [O, C] = Z_ξ [O, tiles] · V_ξ [C, tiles]ᵀ, summed over every tile of the batch.
//! The driver [`backward_weight_with`] is shared by both tilings ([`GradTiling`]): F(2×2, 3×3)
//! here, F(4×4, 3×3) in [`super::winograd4_grad`].
use gemm::Parallelism;

use super::cpu_conv::{grouped_sum, uninit, Geom};
use super::lanes::map2;
use super::nt_gemm::nt;
use super::real::Real;
use super::simd::vectorized;
use super::winograd::{deinterleave, input_transform_at, F2};

/// One Winograd tiling F(m×m, 3×3) of the weight gradient: the transforms of the input and
/// of the output gradient into (m + 2)² rows per channel, and the filter-side transform back.
pub(super) trait GradTiling {
    /// The output tile's side m (the input tile's is m + 2).
    const M: usize;
    /// V = Bᵀ d B of the channels `x` ([n, H, W], one image) into (m + 2)² blocks [`cstride`,
    /// `ld`], this image's tiles from column `col0`, its channels from row `c0`.
    fn input<T: Real>(x: &[T], g: &Geom, v: &mut [T], cs: (usize, usize), at: (usize, usize));
    /// Z = A ∂y Aᵀ of the output gradient `dy` ([O, H, W], one image) into (m + 2)² blocks
    /// [`ostride` ≥ O, `ld`], this image's tiles from column `col0`; zero past the image.
    fn grad<T: Real>(dy: &[T], g: &Geom, z: &mut [T], ostride: usize, at: (usize, usize));
    /// dw [O·C, 3, 3] = Gᵀ M G from the summed products `m` ([(m + 2)²][O·C]).
    fn filter_grad<T: Real>(m: &[T]) -> Vec<T>;
}

impl GradTiling for F2 {
    const M: usize = 2;
    fn input<T: Real>(x: &[T], g: &Geom, v: &mut [T], cs: (usize, usize), at: (usize, usize)) {
        input_transform_at(x, g, v, cs, at)
    }
    fn grad<T: Real>(dy: &[T], g: &Geom, z: &mut [T], ostride: usize, at: (usize, usize)) {
        grad_transform(dy, g, z, ostride, at)
    }
    fn filter_grad<T: Real>(m: &[T]) -> Vec<T> {
        filter_grad2(m)
    }
}

/// Tiles per column and per row of an H×W output in F(2×2, 3×3).
fn tiles(g: &Geom) -> (usize, usize) {
    (g.h.div_ceil(2), g.w.div_ceil(2))
}

/// Z = A ∂y Aᵀ of every 2×2 tile of the output gradient `dy` ([O, H, W], one image) into `z`
/// ([16][O, T]), A = (Aᵀ)ᵀ of `winograd::output_transform`: a 2-vector (p, q) becomes
/// (p, p + q, p − q, −q), along rows and then along columns; zero past the image.
pub(super) fn grad_transform<T: Real>(
    dy: &[T],
    g: &Geom,
    z: &mut [T],
    ostride: usize,
    at: (usize, usize),
) {
    // Compiled with AVX2 where the CPU has it (same bits: no fused multiply-adds).
    vectorized(
        #[inline(always)]
        || grad_transform_impl(dy, g, z, ostride, at),
    )
}

#[inline(always)]
fn grad_transform_impl<T: Real>(
    dy: &[T],
    g: &Geom,
    z: &mut [T],
    ostride: usize,
    (ld, col0): (usize, usize),
) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    // e[j][r % 2][r / 2][tx] as in `input_transform`, for the rows r of dy.
    let mut e = vec![T::ZERO; 8 * t];
    // `deinterleave` with its zero on the left: ev[k] = row[2k], shifted[k + 1] = row[2k + 1]
    // (zero past the row).
    let (mut ev, mut shifted) = (vec![T::ZERO; tw + 1], vec![T::ZERO; tw + 1]);
    for (o, yo) in dy.chunks_exact(g.h * g.w).enumerate() {
        for r in 0..g.h {
            deinterleave(&yo[r * g.w..(r + 1) * g.w], &mut shifted, &mut ev);
            let (ev, od) = (&ev[..tw], &shifted[1..]);
            let row = |j: usize| ((2 * j + r % 2) * th + r / 2) * tw;
            let [a0, a1, a2, a3] = [row(0), row(1), row(2), row(3)];
            e[a0..a0 + tw].copy_from_slice(ev);
            map2(&mut e[a1..a1 + tw], ev, od, |p, q| p + q);
            map2(&mut e[a2..a2 + tw], ev, od, |p, q| p - q);
            map2(&mut e[a3..a3 + tw], od, od, |_, q| T::ZERO - q);
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
                let at = ((4 * i + j) * ostride + o) * ld + col0;
                let dst = &mut z[at..at + t];
                match i {
                    0 => dst.copy_from_slice(top),
                    1 => map2(dst, top, bot, |p, q| p + q),
                    2 => map2(dst, top, bot, |p, q| p - q),
                    _ => map2(dst, bot, bot, |_, q| T::ZERO - q),
                }
            }
        }
    }
}

/// dL/dw [O, C, 3, 3] of a convolution [`super::winograd::applies`] accepts, from its input
/// `x` and output gradient `dy`: F(4×4, 3×3) where [`super::winograd4_grad::applies`] (2.25
/// multiply-adds per output and channel pair, and 2.25 transformed values per input value),
/// else F(2×2, 3×3) (4 and 4). Per ξ one GEMM of depth T per image, where the im2col weight
/// gradient has 9·C·Ho·Wo / O work per output and packs the columns. Images are summed in
/// `groups` consecutive groups (fixed by the batch, not the threads), the groups' sums added
/// in order.
pub(super) fn backward_weight<T: Real>(x: &[T], dy: &[T], g: &Geom, groups: usize) -> Vec<T> {
    // About 512 KiB of V and Z per step in f32 (one image at 32×32 in F(2×2)): with the whole
    // group at once (16 Mi values) the products read V and Z back from memory, and the
    // conv3×3 64→64 backward took 94–108 ms against 83–87 (CPU round 11, A/B).
    let within = (1 << 17, MIN_DEPTH);
    if super::winograd4_grad::applies(g) {
        backward_weight_with::<super::winograd4::F4, T>(x, dy, g, groups, within)
    } else {
        backward_weight_with::<F2, T>(x, dy, g, groups, within)
    }
}

/// The least depth (tiles) of one weight-gradient product when the budget allows fewer: the
/// NT kernel's measured range is 256–1024.
const MIN_DEPTH: usize = 256;

/// [`backward_weight`] in the tiling `W`, with V and Z of one GEMM held to about `budget`
/// values, but at least `min_depth` tiles deep.
pub(super) fn backward_weight_with<W: GradTiling, T: Real>(
    x: &[T],
    dy: &[T],
    g: &Geom,
    groups: usize,
    (budget, min_depth): (usize, usize),
) -> Vec<T> {
    let t = g.h.div_ceil(W::M) * g.w.div_ceil(W::M);
    let xis = (W::M + 2) * (W::M + 2);
    let hw = g.h * g.w;
    let (ct, ot, oc) = (g.c * t, g.o * t, g.o * g.c);
    // Each block of V and Z one row longer than its channels, as in the forward
    // (`winograd::padded`): at 32×32 the budget's steps are 256 tiles, 1 KiB rows, and the
    // transforms' rows a block apart would otherwise share their L1 sets.
    let (cs, os) = (g.c + 1, g.o + 1);
    // A group's images side by side along the tiles, one GEMM of depth images·T per ξ: at
    // most `sub` images per GEMM, so that V and Z stay within the budget (decided by the
    // geometry alone); a group of more runs in steps, the GEMMs accumulating. Never less than
    // `min_depth` tiles per step where the group has them: the NT kernel sums its lanes once
    // per product, and at a depth of 16 (one 8×8 image) that costs as much as the products.
    let sub = (budget / (xis * (ct + ot)).max(1))
        .max(min_depth.div_ceil(t))
        .max(1);
    let group = |range: std::ops::Range<usize>, par: Parallelism| {
        if range.is_empty() {
            return vec![T::ZERO; xis * oc];
        }
        let mut m = uninit(xis * oc);
        let most = sub.min(range.len());
        let (mut v, mut z) = (uninit(xis * cs * t * most), uninit(xis * os * t * most));
        for (step, first) in range.clone().step_by(most).enumerate() {
            let imgs = first..(first + most).min(range.end);
            let ld = imgs.len() * t;
            for (n, b) in imgs.enumerate() {
                let xb = &x[b * g.c * hw..][..g.c * hw];
                W::input(xb, g, &mut v, (0, cs), (ld, n * t));
                W::grad(&dy[b * g.o * hw..][..g.o * hw], g, &mut z, os, (ld, n * t));
            }
            for xi in 0..xis {
                nt(
                    (g.o, g.c, ld),
                    &mut m[xi * oc..(xi + 1) * oc],
                    step > 0,
                    &z[xi * os * ld..][..g.o * ld],
                    &v[xi * cs * ld..][..g.c * ld],
                    ld,
                    par,
                );
            }
        }
        m
    };
    let m = grouped_sum(g.b, groups, xis * oc, group);
    W::filter_grad(&m)
}

/// dw = Gᵀ M G of F(2×2, 3×3) per (o, c), G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]], from
/// `m` ([16][O·C]).
fn filter_grad2<T: Real>(m: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let oc = m.len() / 16;
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
