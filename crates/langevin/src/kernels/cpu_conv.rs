//! The CPU arithmetic of the own 2-D convolution ([`super::conv`]): im2col, the GEMMs per
//! image and the weight gradient's partial sums; `conv.rs` wraps these as candle ops.
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::{mm, mm_colmajor};
use super::real::{min_len, threads, Real};
use super::simd::vectorized;
use unfold::{col2im, im2col, im2col_ld};

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geom {
    pub(super) b: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) k: usize,
    pub(super) s: usize,
    pub(super) p: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Geom {
    pub(super) fn new(x: &[usize], w: &[usize], s: usize, p: usize) -> candle_core::Result<Self> {
        let bad = || candle_core::Error::Msg(format!("conv2d: input {x:?} and weight {w:?}"));
        let ([b, c, h, wd], [o, ci, k, k2]) = (
            <[usize; 4]>::try_from(x).map_err(|_| bad())?,
            <[usize; 4]>::try_from(w).map_err(|_| bad())?,
        );
        if ci != c || k != k2 || s == 0 || h + 2 * p < k || wd + 2 * p < k {
            return Err(bad());
        }
        Ok(Self {
            b,
            c,
            h,
            w: wd,
            o,
            k,
            s,
            p,
            ho: (h + 2 * p - k) / s + 1,
            wo: (wd + 2 * p - k) / s + 1,
        })
    }
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
    fn hwi(&self) -> usize {
        self.h * self.w
    }
    fn hwo(&self) -> usize {
        self.ho * self.wo
    }
    /// The geometry of the convolution that maps dy to dx ([`backward_input`]): O → C
    /// channels over Ho×Wo, padding k − 1 − p; `None` where that does not hold (stride > 1,
    /// p ≥ k) or gains nothing (1×1, already a plain matrix product).
    fn transposed(&self) -> Option<Self> {
        if self.s != 1 || self.p >= self.k || self.k == 1 {
            return None;
        }
        Some(Self {
            b: self.b,
            c: self.o,
            h: self.ho,
            w: self.wo,
            o: self.c,
            k: self.k,
            s: 1,
            p: self.k - 1 - self.p,
            ho: self.h,
            wo: self.w,
        })
    }
    /// A 1×1 stride-1 convolution is a plain matrix product; no columns needed.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }
}

/// Work split: whole images per worker when the batch fills the pool, else one image at a time
/// with a multi-threaded GEMM.
/// The third value is the `with_min_len` of the loop over images.
fn split(b: usize) -> (bool, Parallelism, usize) {
    let nt = threads();
    if b >= nt || nt == 1 {
        (true, Parallelism::None, min_len(nt))
    } else {
        (false, Parallelism::Rayon(nt), 1)
    }
}

/// A buffer of `n` values left unwritten, for outputs that are written in full before
/// anything reads them (GEMM outputs with `accumulate == false`, im2col columns, images
/// filled per worker): `vec![0; n]` zeroed each convolution's output serially, before the
/// parallel loop, and the scratch columns once per rayon job (issue 17; candle's own conv2d
/// allocates its outputs the same way, `alloc_uninit_vec`).
#[allow(clippy::uninit_vec)]
pub(crate) fn uninit<T: Real>(n: usize) -> Vec<T> {
    if cfg!(test) {
        // NaN wherever a value would be read unwritten, so the tests below would see it.
        return vec![T::from_f64(f64::NAN); n];
    }
    let mut v = Vec::with_capacity(n);
    // SAFETY: `T` is f32 or f64 (the only `Real`s): no destructor and every bit pattern a
    // valid value. Each caller writes every element before reading it; `gemm` with
    // `read_dst == false` overwrites its destination without using the old values.
    unsafe { v.set_len(n) };
    v
}

/// Make the scratch buffer `v` hold `n` values without writing them (see [`uninit`]).
fn scratch<T: Real>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        *v = uninit(n);
    }
    v.truncate(n);
}

/// Fill each channel's plane of every image in `out` ([B, channels, plane]) with its bias.
fn fill_bias<T: Real>(out: &mut [T], bias: &[T], plane: usize) {
    for (row, &v) in out.chunks_mut(plane).zip(bias.iter().cycle()) {
        row.fill(v);
    }
}

/// `y = conv(x, w) + bias`: Winograd (F(4×4, 3×3) or F(2×2, 3×3)) where
/// [`super::winograd::forward_applies`] (3×3, stride 1, ≥ 16 channels, from 16×16, on 8×8 maps
/// only with many input channels), else as follows. Where the output has at most half the
/// input's channels (a UNet's up blocks after the skip concatenation, the output convolution)
/// the im2col GEMM has only O rows and runs well below the matmul rate (measured 96→32 channels
/// at 32×32: 1.25× the time of the same flops as [`transposed_conv`], 0.8× with it); there the
/// convolution is computed as the transposed convolution of the flipped weights (GEMM with
/// C·k² rows, then [`col2im`]), up to 256 input channels.
pub(super) fn forward<T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    if super::winograd::forward_applies(g) {
        return super::winograd::forward(x, wt, bias, g);
    }
    match g.transposed() {
        // Up to 256 input channels: from 512 on, the transposed form's C·k²-row GEMM and
        // col2im lost to im2col (CPU round 13, one process, batch 32 at 4×4: 512→256 23.4–23.8
        // ms against 13.2–13.4, 768→256 37.1–38.8 against 19.3–21.1; at 8×8 128→64 and 192→64
        // it won, 2.4–2.5 against 3.1–3.5 and 3.0–3.2 against 4.5–4.7).
        Some(gt) if g.c >= 2 * g.o && g.c <= 256 => transposed_conv(x, &flip(wt, g), bias, &gt),
        _ => forward_im2col(x, wt, bias, g),
    }
}

/// `y = conv(x, w) + bias` by im2col and one GEMM per image, the bias as the GEMM's initial
/// value.
pub(super) fn forward_im2col<T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let (ckk, hwo) = (g.ckk(), g.hwo());
    if let Some(nb) = grouped(g) {
        return forward_grouped(x, wt, bias, g, nb);
    }
    let mut out = uninit(g.b * g.o * hwo);
    let one = |xb: &[T], ob: &mut [T], col: &mut Vec<T>, par| {
        if let Some(bias) = bias {
            fill_bias(ob, bias, hwo);
        }
        let src: &[T] = if g.pointwise() {
            xb
        } else {
            scratch(col, ckk * hwo);
            im2col(xb, g, col);
            col
        };
        mm(
            (g.o, hwo, ckk),
            ob,
            bias.is_some(),
            wt,
            (ckk, 1),
            src,
            (hwo, 1),
            par,
        );
    };
    let (per_image, par, min) = split(g.b);
    let (ochunk, xchunk) = (g.o * hwo, g.c * g.hwi());
    if per_image {
        out.par_chunks_mut(ochunk)
            .zip(x.par_chunks(xchunk))
            .with_min_len(min)
            .for_each_init(Vec::new, |col, (ob, xb)| one(xb, ob, col, par));
    } else if let Some(rows) = row_split(g.o, hwo, ckk) {
        let mut col = Vec::new();
        for (ob, xb) in out.chunks_mut(ochunk).zip(x.chunks(xchunk)) {
            let src: &[T] = if g.pointwise() {
                xb
            } else {
                scratch(&mut col, ckk * hwo);
                let kkhwo = g.k * g.k * hwo;
                col.par_chunks_mut(kkhwo)
                    .zip(xb.par_chunks(g.hwi()))
                    .for_each(|(cc, xc)| im2col(xc, g, cc));
                &col
            };
            ob.par_chunks_mut(rows * hwo)
                .enumerate()
                .for_each(|(i, oc)| {
                    let (o0, m) = (i * rows, oc.len() / hwo);
                    if let Some(bias) = bias {
                        fill_bias(oc, &bias[o0..o0 + m], hwo);
                    }
                    let w = &wt[o0 * ckk..(o0 + m) * ckk];
                    let nopar = Parallelism::None;
                    mm(
                        (m, hwo, ckk),
                        oc,
                        bias.is_some(),
                        w,
                        (ckk, 1),
                        src,
                        (hwo, 1),
                        nopar,
                    );
                });
        }
    } else {
        let mut col = Vec::new();
        for (ob, xb) in out.chunks_mut(ochunk).zip(x.chunks(xchunk)) {
            one(xb, ob, &mut col, par);
        }
    }
    out
}

/// Images per GEMM on small maps, or `None` for one image per GEMM. One image of a 4×4 map gives
/// `gemm` a product 16 columns wide; `nb` images side by side make up to [`GROUP_COLUMNS`]
/// columns in at least [`MIN_GROUPS`] groups, with at most [`GROUP_VALUES`] of columns. In one
/// process, alternating (issue 17, CPU round 14), batch 32: 256→256 channels at 4×4 5.2–5.4 ms
/// against 7.5–7.9, 512→256 11.3–12.0 against 14.4–14.7, 128→128 at 8×8 stride 2 1.7 against
/// 2.2–2.3; equal at 8×8 stride 1. Fixed by the shapes, never by the thread count: `gemm`'s
/// depth blocking depends on the product's width, so the groups must not move with the threads
/// for the bits not to (tested); an image's values in a group agree with its values alone to
/// rounding (tested).
fn grouped(g: &Geom) -> Option<usize> {
    let fit = (GROUP_VALUES / (g.ckk() * g.hwo())).max(1);
    let nb = (GROUP_COLUMNS / g.hwo())
        .min(g.b.div_ceil(MIN_GROUPS))
        .min(fit);
    (nb > 1 && !g.pointwise()).then_some(nb)
}

/// Groups of images at least (see [`grouped`]), so that two threads share them evenly.
const MIN_GROUPS: usize = 4;

/// Columns of one grouped GEMM (see [`grouped`]).
const GROUP_COLUMNS: usize = 256;

/// At most this many values of im2col columns per group (640 KiB of f32, inside the L2 cache).
const GROUP_VALUES: usize = 160 * 1024;

/// [`forward_im2col`] with `nb` images per GEMM: their columns side by side ([C·k², nb·Ho·Wo]),
/// one product [O, nb·Ho·Wo] from the bias, then each image's [O, Ho·Wo] copied out.
/// The groups run in parallel where there are as many as threads (each GEMM on one thread),
/// else one after the other with `gemm` threaded inside.
fn forward_grouped<T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom, nb: usize) -> Vec<T> {
    let (ckk, hwo, hwi) = (g.ckk(), g.hwo(), g.hwi());
    let mut out = uninit(g.b * g.o * hwo);
    // One group: its images `xb` [n, C, H, W] into `ob` [n, O, Ho, Wo].
    let group = |ob: &mut [T], xb: &[T], par| {
        let cols = xb.len() / (g.c * hwi) * hwo;
        let mut col = uninit(ckk * cols);
        for (j, xi) in xb.chunks_exact(g.c * hwi).enumerate() {
            im2col_ld(xi, g, &mut col[j * hwo..], cols);
        }
        let mut y = uninit(g.o * cols);
        if let Some(bias) = bias {
            fill_bias(&mut y, bias, cols);
        }
        mm(
            (g.o, cols, ckk),
            &mut y,
            bias.is_some(),
            wt,
            (ckk, 1),
            &col,
            (cols, 1),
            par,
        );
        for (o, row) in y.chunks_exact(cols).enumerate() {
            for (j, v) in row.chunks_exact(hwo).enumerate() {
                ob[(j * g.o + o) * hwo..][..hwo].copy_from_slice(v);
            }
        }
    };
    let (ochunk, xchunk, nt) = (nb * g.o * hwo, nb * g.c * hwi, threads());
    if g.b.div_ceil(nb) >= nt || nt == 1 {
        out.par_chunks_mut(ochunk)
            .zip(x.par_chunks(xchunk))
            .with_min_len(1)
            .for_each(|(ob, xb)| group(ob, xb, Parallelism::None));
    } else {
        for (ob, xb) in out.chunks_mut(ochunk).zip(x.chunks(xchunk)) {
            group(ob, xb, Parallelism::Rayon(nt));
        }
    }
    out
}

/// Rows per piece when one image's GEMM (`m` rows, `n` columns, depth `k`) is split by rows
/// over the threads: at batch 1 `gemm`'s own threading gained nothing on 2 threads (measured:
/// 128→128 channels at 32×32, 6.9 ms on 1 thread and on 2), and the im2col before it ran on
/// one thread. Pieces of whole multiples of 16 rows, each large enough for `gemm`'s general
/// kernel (which the unsplit product uses too: its small-matrix and matrix-vector kernels sum
/// in another order), so every output gets the same bits on any number of threads. `None`
/// where a split would not pay or could change the kernel.
fn row_split(m: usize, n: usize, k: usize) -> Option<usize> {
    let nt = threads();
    let rows = m.div_ceil(nt).next_multiple_of(16);
    (nt > 1 && rows < m && rows * n > 16 * 16 && n > 1 && k > 2 && m * n * k >= 1 << 20)
        .then_some(rows)
}

/// dL/dx from dL/dy. At stride 1 (k > 1, p < k) the input gradient is itself a convolution,
/// dx = conv(dy, w̃, padding k − 1 − p) with w̃[c, o, ky, kx] = w[o, c, k−1−ky, k−1−kx]: the
/// forward's im2col + one GEMM per image with C rows and depth O·k², no col2im scatter. That
/// wins where C > O (measured 96→32 channels at 32×32: 0.75× the time of GEMM + col2im; 128→64
/// at 16×16: 0.9×) and loses a few per cent at C ≤ O, where [`transposed_conv`] (GEMM Wᵀ·dy
/// with C·k² rows, then col2im) stays, as it does for stride 2 and 1×1. That convolution goes
/// through Winograd where [`super::winograd::forward_applies`] to it (3×3, padding 1, ≥ 16
/// channels) from 16×16 on: on 8×8 maps, with the filters transformed per call, the forms above
/// were faster (CPU round 13, one process: 64→64 at batch 32 1.5–2.2 ms against 2.1–2.5 for
/// F(2×2), 128→128 at batch 16 3.3–3.7 against 5.5–6.3, equal at 256 channels, 3–4× faster at
/// batch 1).
pub(super) fn backward_input<T: Real>(dy: &[T], wt: &[T], g: &Geom) -> Vec<T> {
    match g.transposed() {
        Some(gt) if super::winograd::forward_applies(&gt) && gt.h >= 16 && gt.w >= 16 => {
            super::winograd::forward(dy, &flip(wt, g), None, &gt)
        }
        Some(gt) if g.c > g.o => forward_im2col(dy, &flip(wt, g), None, &gt),
        _ => transposed_conv(dy, wt, None, g),
    }
}

/// The weights of the input gradient's convolution: [O, C, k, k] → [C, O, k, k], each kernel
/// rotated by 180°.
fn flip<T: Real>(wt: &[T], g: &Geom) -> Vec<T> {
    let kk = g.k * g.k;
    let mut out = uninit(wt.len());
    // Per input channel in parallel: paid per call, at batch 1 it was 2% of a UNet forward.
    out.par_chunks_mut(g.o * kk)
        .enumerate()
        .for_each(|(c, oc)| {
            for (o, dst) in oc.chunks_exact_mut(kk).enumerate() {
                let src = &wt[(o * g.c + c) * kk..][..kk];
                for (d, &v) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = v;
                }
            }
        });
    out
}

/// The adjoint of the convolution `g` (dL/dx from dL/dy), plus `bias` per input channel:
/// columns `Wᵀ·dy`, folded back by [`col2im`] onto the bias (or zeros).
pub(super) fn transposed_conv<T: Real>(dy: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let (ckk, hwo, hwi) = (g.ckk(), g.hwo(), g.hwi());
    let mut dx = uninit(g.b * g.c * hwi);
    let one = |dyb: &[T], dxb: &mut [T], col: &mut Vec<T>, par| {
        // The pointwise GEMM overwrites `dxb` unless it accumulates onto the bias; col2im adds.
        match bias {
            Some(bias) => fill_bias(dxb, bias, hwi),
            None if !g.pointwise() => dxb.fill(T::ZERO),
            None => {}
        }
        if g.pointwise() {
            mm(
                (g.c, hwi, g.o),
                dxb,
                bias.is_some(),
                wt,
                (1, ckk),
                dyb,
                (hwo, 1),
                par,
            );
        } else {
            scratch(col, ckk * hwo);
            mm(
                (ckk, hwo, g.o),
                col,
                false,
                wt,
                (1, ckk),
                dyb,
                (hwo, 1),
                par,
            );
            col2im(col, g, dxb);
        }
    };
    let (per_image, par, min) = split(g.b);
    let (xchunk, ychunk) = (g.c * hwi, g.o * hwo);
    if per_image {
        dx.par_chunks_mut(xchunk)
            .zip(dy.par_chunks(ychunk))
            .with_min_len(min)
            .for_each_init(Vec::new, |col, (dxb, dyb)| one(dyb, dxb, col, par));
    } else if let Some(rows) = row_split(g.c, hwo, g.o) {
        // Pieces of `rows` input channels: their GEMM rows (c, ky, kx) and their planes of dx.
        let kk = g.k * g.k;
        for (dxb, dyb) in dx.chunks_mut(xchunk).zip(dy.chunks(ychunk)) {
            dxb.par_chunks_mut(rows * hwi)
                .enumerate()
                .for_each(|(i, dc)| {
                    let (c0, m) = (i * rows, dc.len() / hwi);
                    let nopar = Parallelism::None;
                    let w = &wt[c0 * kk..];
                    if let Some(bias) = bias {
                        fill_bias(dc, &bias[c0..c0 + m], hwi);
                    }
                    if g.pointwise() {
                        let acc = bias.is_some();
                        mm((m, hwi, g.o), dc, acc, w, (1, ckk), dyb, (hwo, 1), nopar);
                    } else {
                        if bias.is_none() {
                            dc.fill(T::ZERO);
                        }
                        let mut col = uninit(m * kk * hwo);
                        mm(
                            (m * kk, hwo, g.o),
                            &mut col,
                            false,
                            w,
                            (1, ckk),
                            dyb,
                            (hwo, 1),
                            nopar,
                        );
                        col2im(&col, g, dc);
                    }
                });
        }
    } else {
        let mut col = Vec::new();
        for (dxb, dyb) in dx.chunks_mut(xchunk).zip(dy.chunks(ychunk)) {
            one(dyb, dxb, &mut col, par);
        }
    }
    dx
}

/// dL/dw = Σ_b dy_b · col_bᵀ, in partial sums over groups of images ([`grouped_sum`]); the
/// Winograd form where [`winograd_weight_grad`].
///
/// The sums are kept transposed, dwᵀ [C·k², O], and transposed once at the end: `gemm` packs
/// the operand on the side of its destination's contiguous dimension, so with dw row-major it
/// packed the columns (C·k² rows × Ho·Wo, read across rows: a strided gather, ~8% of the small
/// UNet's training step), while with dwᵀ it packs dy (O rows) and reads the columns in place,
/// each row contiguous along the summed dimension.
pub(super) fn backward_weight<T: Real>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    if winograd_weight_grad(g) {
        return super::winograd_grad::backward_weight(x, dy, g, WEIGHT_GRAD_GROUPS);
    }
    let (ckk, hwo) = (g.ckk(), g.hwo());
    let (xchunk, ychunk) = (g.c * g.hwi(), g.o * hwo);
    let images = |range: std::ops::Range<usize>, par| {
        let mut dwt = vec![T::ZERO; g.o * ckk];
        let mut col = Vec::new();
        for (n, b) in range.enumerate() {
            let (xb, dyb) = (&x[b * xchunk..][..xchunk], &dy[b * ychunk..][..ychunk]);
            let src: &[T] = if g.pointwise() {
                xb
            } else {
                scratch(&mut col, ckk * hwo);
                im2col(xb, g, &mut col);
                &col
            };
            mm_colmajor(
                (g.o, ckk, hwo),
                &mut dwt,
                n > 0,
                dyb,
                (hwo, 1),
                src,
                (1, hwo),
                par,
            );
        }
        dwt
    };
    let dwt = grouped_sum(g.b, WEIGHT_GRAD_GROUPS, g.o * ckk, images);
    // dwᵀ [C·k², O] → dw [O, C·k²].
    let mut dw = uninit(g.o * ckk);
    for (j, row) in dwt.chunks(g.o).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            dw[o * ckk + j] = v;
        }
    }
    dw
}

/// Whether the weight gradient takes Winograd ([`super::winograd_grad`]): as
/// [`super::winograd::applies`], on maps from 32×32 or with 256 channels on both sides. Below,
/// the im2col GEMMs were faster, in one process, alternating, batch 32 (issue 17, CPU round 14;
/// forward + both gradients of one convolution): 64→64 channels at 8×8 3.5–3.9 ms against
/// 4.7–5.3 by F(2×2), 128→64 at 8×8 6.0–8.6 against 6.7–9.8, 128→128 at 8×8 14.2 against 15.8,
/// at 16×16 64→64 9.7–13.9 against 11.2–15.0, 128→64 17.7–21.8 against 22.5–23.0, 128→128 43.5
/// against 47.7. At 256 channels F(2×2) won on 16×16 (184.8 against 203.4) and the two forms
/// were within the noise of each other on 8×8 and 4×4 (256→256 and 512→256, either one ahead
/// by up to 13% from run to run); at 32×32 Winograd won at 32–96 channels (96→32 26.9 against
/// 32.2, 64→32 18.9 against 21.5).
fn winograd_weight_grad(g: &Geom) -> bool {
    super::winograd::applies(g) && (g.h.min(g.w) >= 32 || g.c.min(g.o) >= 256)
}

/// Σ over a batch of `b` images of `part(images, par)` (each a vector of `len` values): the
/// images in at most `groups` consecutive groups, each group's part computed on its own (over
/// the pool when there are enough groups, else with `par` threads inside), the parts added in
/// order, so the result does not depend on the number of threads (which
/// `crate::threads::adapt` may change between calls). The weight gradients' batch sum.
pub(super) fn grouped_sum<T: Real>(
    b: usize,
    groups: usize,
    len: usize,
    part: impl Fn(std::ops::Range<usize>, Parallelism) -> Vec<T> + Sync + Send,
) -> Vec<T> {
    let groups = b.clamp(1, groups.max(1));
    let per = b.div_ceil(groups);
    let range = |t: usize| (t * per).min(b)..((t + 1) * per).min(b);
    let nt = threads();
    let parts: Vec<Vec<T>> = if groups >= nt && nt > 1 {
        (0..groups)
            .into_par_iter()
            .map(|t| part(range(t), Parallelism::None))
            .collect()
    } else {
        let par = if nt > 1 {
            Parallelism::Rayon(nt)
        } else {
            Parallelism::None
        };
        (0..groups).map(|t| part(range(t), par)).collect()
    };
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![T::ZERO; len]);
    for p in parts {
        vectorized(
            #[inline(always)]
            || sum.iter_mut().zip(p).for_each(|(a, b)| *a += b),
        );
    }
    sum
}

/// Partial sums of the weight gradient: enough groups to keep 8 threads busy, few enough that
/// adding them up costs nothing next to the GEMMs.
const WEIGHT_GRAD_GROUPS: usize = 8;

/// dL/dbias: the sum of dy over batch and positions, per output channel.
pub(super) fn bias_grad<T: Real>(dy: &[T], g: &Geom) -> Vec<T> {
    // One output channel per task (its images summed in order, so the bits do not depend on
    // the thread count); it ran serially, ~1% of the small UNet's training step.
    let hwo = g.hwo();
    (0..g.o)
        .into_par_iter()
        .map(|o| {
            let planes = (0..g.b).map(|b| &dy[(b * g.o + o) * hwo..][..hwo]);
            T::from_f64(planes.map(plane_sum).sum::<f64>())
        })
        .collect()
}

/// Σ of one plane in f64, in 8 interleaved partial sums (a single running sum is a chain of
/// dependent adds that the compiler may not reorder), AVX2 where available.
fn plane_sum<T: Real>(v: &[T]) -> f64 {
    vectorized(
        #[inline(always)]
        || {
            let mut acc = [0f64; 8];
            let mut chunks = v.chunks_exact(8);
            for c in &mut chunks {
                for (a, x) in acc.iter_mut().zip(c) {
                    *a += x.to_f64();
                }
            }
            let tail: f64 = chunks.remainder().iter().map(|x| x.to_f64()).sum();
            acc.iter().sum::<f64>() + tail
        },
    )
}

#[cfg(test)]
#[path = "cpu_conv_tests.rs"]
mod tests;

#[path = "im2col.rs"]
mod unfold;
