//! The CPU arithmetic of the own 2-D convolution ([`super::conv`]): im2col, the GEMMs per
//! image and the weight gradient's partial sums; `conv.rs` wraps these as candle ops.
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::mm;
use super::real::{min_len, threads, Real};

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
    /// The output columns `ox` whose input column `ox·s + kx − p` lies inside the image.
    fn valid_cols(&self, kx: usize) -> (usize, usize) {
        let lo = if kx >= self.p {
            0
        } else {
            (self.p - kx).div_ceil(self.s)
        };
        let hi = if self.w + self.p > kx {
            ((self.w - 1 + self.p - kx) / self.s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Unfold one image [C, H, W] into columns [C·k·k, Ho·Wo].
fn im2col<T: Real>(x: &[T], g: &Geom, col: &mut [T]) {
    let (k, s, hwo) = (g.k, g.s, g.hwo());
    for c in 0..g.c {
        let xc = &x[c * g.hwi()..(c + 1) * g.hwi()];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((c * k + ky) * k + kx) * hwo..][..hwo];
                let (lo, hi) = g.valid_cols(kx);
                for oy in 0..g.ho {
                    let dst = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    let iy = (oy * s + ky) as isize - g.p as isize;
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(T::ZERO);
                        continue;
                    }
                    let src = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    dst[..lo].fill(T::ZERO);
                    dst[hi..].fill(T::ZERO);
                    let ix0 = lo * s + kx - g.p;
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (j, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = src[ix0 + j * s];
                        }
                    }
                }
            }
        }
    }
}

/// Fold columns [C·k·k, Ho·Wo] back onto one image [C, H, W], adding overlaps (the adjoint of
/// [`im2col`]). `dx` must be zeroed.
fn col2im<T: Real>(col: &[T], g: &Geom, dx: &mut [T]) {
    let (k, s, hwo) = (g.k, g.s, g.hwo());
    for c in 0..g.c {
        let xc = &mut dx[c * g.hwi()..(c + 1) * g.hwi()];
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((c * k + ky) * k + kx) * hwo..][..hwo];
                let (lo, hi) = g.valid_cols(kx);
                for oy in 0..g.ho {
                    let iy = (oy * s + ky) as isize - g.p as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let src = &row[oy * g.wo..(oy + 1) * g.wo];
                    let dst = &mut xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let ix0 = lo * s + kx - g.p;
                    if s == 1 {
                        for (d, v) in dst[ix0..ix0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d += *v;
                        }
                    } else {
                        for (j, v) in src[lo..hi].iter().enumerate() {
                            dst[ix0 + j * s] += *v;
                        }
                    }
                }
            }
        }
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
fn uninit<T: Real>(n: usize) -> Vec<T> {
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

/// `y = conv(x, w) + bias`. Where the output has at most half the input's channels (a UNet's
/// up blocks after the skip concatenation, the output convolution) the im2col GEMM has only O
/// rows and runs well below the matmul rate (measured 96→32 channels at 32×32: 1.25× the time of
/// the same flops as [`transposed_conv`], 0.8× with it); there the convolution is computed as
/// the transposed convolution of the flipped weights (GEMM with C·k² rows, then [`col2im`]).
pub(super) fn forward<T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    match g.transposed() {
        Some(gt) if g.c >= 2 * g.o => transposed_conv(x, &flip(wt, g), bias, &gt),
        _ => forward_im2col(x, wt, bias, g),
    }
}

/// `y = conv(x, w) + bias` by im2col and one GEMM per image, the bias as the GEMM's initial
/// value.
pub(super) fn forward_im2col<T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let (ckk, hwo) = (g.ckk(), g.hwo());
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
    } else {
        let mut col = Vec::new();
        for (ob, xb) in out.chunks_mut(ochunk).zip(x.chunks(xchunk)) {
            one(xb, ob, &mut col, par);
        }
    }
    out
}

/// dL/dx from dL/dy. At stride 1 (k > 1, p < k) the input gradient is itself a convolution,
/// dx = conv(dy, w̃, padding k − 1 − p) with w̃[c, o, ky, kx] = w[o, c, k−1−ky, k−1−kx]: the
/// forward's im2col + one GEMM per image with C rows and depth O·k², no col2im scatter. That
/// wins where C > O (measured 96→32 channels at 32×32: 0.75× the time of GEMM + col2im; 128→64
/// at 16×16: 0.9×) and loses a few per cent at C ≤ O, where [`transposed_conv`] (GEMM Wᵀ·dy
/// with C·k² rows, then col2im) stays, as it does for stride 2 and 1×1.
pub(super) fn backward_input<T: Real>(dy: &[T], wt: &[T], g: &Geom) -> Vec<T> {
    match g.transposed() {
        Some(gt) if g.c > g.o => forward_im2col(dy, &flip(wt, g), None, &gt),
        _ => transposed_conv(dy, wt, None, g),
    }
}

/// The weights of the input gradient's convolution: [O, C, k, k] → [C, O, k, k], each kernel
/// rotated by 180°.
fn flip<T: Real>(wt: &[T], g: &Geom) -> Vec<T> {
    let kk = g.k * g.k;
    let mut out = Vec::with_capacity(wt.len());
    for c in 0..g.c {
        for o in 0..g.o {
            let src = &wt[(o * g.c + c) * kk..][..kk];
            out.extend(src.iter().rev());
        }
    }
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
    } else {
        let mut col = Vec::new();
        for (dxb, dyb) in dx.chunks_mut(xchunk).zip(dy.chunks(ychunk)) {
            one(dyb, dxb, &mut col, par);
        }
    }
    dx
}

/// dL/dw = Σ_b dy_b · col_bᵀ, in partial sums over groups of images.
pub(super) fn backward_weight<T: Real>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    let (ckk, hwo) = (g.ckk(), g.hwo());
    let (xchunk, ychunk) = (g.c * g.hwi(), g.o * hwo);
    let images = |range: std::ops::Range<usize>, par| {
        let mut dw = vec![T::ZERO; g.o * ckk];
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
            mm(
                (g.o, ckk, hwo),
                &mut dw,
                n > 0,
                dyb,
                (hwo, 1),
                src,
                (1, hwo),
                par,
            );
        }
        dw
    };
    // The images are summed in a fixed number of consecutive groups and the groups' sums added
    // in order, so the result does not depend on the number of threads (which
    // `crate::threads::adapt` may change between calls).
    let groups = g.b.clamp(1, WEIGHT_GRAD_GROUPS);
    let per = g.b.div_ceil(groups);
    let range = |t: usize| (t * per).min(g.b)..((t + 1) * per).min(g.b);
    let nt = threads();
    let parts: Vec<Vec<T>> = if groups >= nt && nt > 1 {
        (0..groups)
            .into_par_iter()
            .map(|t| images(range(t), Parallelism::None))
            .collect()
    } else {
        let par = if nt > 1 {
            Parallelism::Rayon(nt)
        } else {
            Parallelism::None
        };
        (0..groups).map(|t| images(range(t), par)).collect()
    };
    let mut parts = parts.into_iter();
    let mut dw = parts.next().unwrap_or_else(|| vec![T::ZERO; g.o * ckk]);
    for p in parts {
        for (x, y) in dw.iter_mut().zip(p) {
            *x += y;
        }
    }
    dw
}

/// Partial sums of the weight gradient: enough groups to keep 8 threads busy, few enough that
/// adding them up costs nothing next to the GEMMs.
const WEIGHT_GRAD_GROUPS: usize = 8;

/// dL/dbias: the sum of dy over batch and positions, per output channel.
pub(super) fn bias_grad<T: Real>(dy: &[T], g: &Geom) -> Vec<T> {
    let hwo = g.hwo();
    let mut db = vec![0f64; g.o];
    for img in dy.chunks(g.o * hwo) {
        for (d, row) in db.iter_mut().zip(img.chunks(hwo)) {
            *d += row.iter().map(|v| v.to_f64()).sum::<f64>();
        }
    }
    db.into_iter().map(T::from_f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (batch, channels, height, width, out channels, kernel, stride, padding): 3×3 at padding
    /// 0, 1 and 2, 5×5, odd and 1×1 images, 1×1 kernels with and without padding, stride 2,
    /// fewer, more and at least twice as many input as output channels.
    const CASES: &[(usize, usize, usize, usize, usize, usize, usize, usize)] = &[
        (1, 3, 7, 5, 4, 3, 1, 1),
        (2, 2, 5, 7, 3, 3, 1, 0),
        (2, 3, 5, 5, 4, 3, 1, 2),
        (3, 4, 6, 6, 6, 1, 1, 0),
        (1, 5, 4, 3, 2, 1, 1, 1),
        (2, 3, 6, 9, 2, 5, 1, 2),
        (1, 2, 1, 1, 3, 3, 1, 1),
        (2, 5, 9, 8, 3, 3, 2, 1),
        (1, 16, 13, 11, 7, 3, 1, 1),
        (2, 6, 7, 5, 3, 3, 1, 1),
        (3, 7, 6, 8, 2, 3, 1, 0),
    ];

    /// Deterministic values in [-1, 1) (SplitMix64), so the test needs no RNG crate.
    fn values<T: Real>(n: usize, seed: u64) -> Vec<T> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                T::from_f64((z >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
            })
            .collect()
    }

    /// dx[b, c, iy, ix] = Σ dy[b, o, oy, ox]·w[o, c, ky, kx] over iy = oy·s + ky − p,
    /// ix = ox·s + kx − p: the definition, summed term by term in f64.
    fn direct(dy: &[f64], wt: &[f64], g: &Geom) -> Vec<f64> {
        let mut dx = vec![0.0; g.b * g.c * g.hwi()];
        for b in 0..g.b {
            for o in 0..g.o {
                for c in 0..g.c {
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let w = wt[((o * g.c + c) * g.k + ky) * g.k + kx];
                            for oy in 0..g.ho {
                                for ox in 0..g.wo {
                                    let iy = (oy * g.s + ky) as isize - g.p as isize;
                                    let ix = (ox * g.s + kx) as isize - g.p as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let d = dy[((b * g.o + o) * g.ho + oy) * g.wo + ox];
                                    dx[((b * g.c + c) * g.h + iy as usize) * g.w + ix as usize] +=
                                        d * w;
                                }
                            }
                        }
                    }
                }
            }
        }
        dx
    }

    /// max |a − b| / max |b|; infinite if any value is not finite (`f64::max` would skip NaN).
    fn max_rel(a: &[f64], b: &[f64]) -> f64 {
        if a.iter().chain(b).any(|v| !v.is_finite()) {
            return f64::INFINITY;
        }
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn geom(
        &(b, c, h, w, o, k, s, p): &(usize, usize, usize, usize, usize, usize, usize, usize),
    ) -> Geom {
        Geom::new(&[b, c, h, w], &[o, c, k, k], s, p).unwrap()
    }

    /// y[b, o, oy, ox] = bias[o] + Σ x[b, c, iy, ix]·w[o, c, ky, kx] (same index map as
    /// [`direct`]), term by term in f64.
    fn direct_forward(x: &[f64], wt: &[f64], bias: &[f64], g: &Geom) -> Vec<f64> {
        let mut y = vec![0.0; g.b * g.o * g.hwo()];
        for b in 0..g.b {
            for o in 0..g.o {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let mut acc = bias[o];
                        for c in 0..g.c {
                            for ky in 0..g.k {
                                for kx in 0..g.k {
                                    let iy = (oy * g.s + ky) as isize - g.p as isize;
                                    let ix = (ox * g.s + kx) as isize - g.p as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    acc += x
                                        [((b * g.c + c) * g.h + iy as usize) * g.w + ix as usize]
                                        * wt[((o * g.c + c) * g.k + ky) * g.k + kx];
                                }
                            }
                        }
                        y[((b * g.o + o) * g.ho + oy) * g.wo + ox] = acc;
                    }
                }
            }
        }
        y
    }

    fn to32(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    fn to64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    /// Both input-gradient paths (the convolution of dy with the flipped weights wherever the
    /// geometry allows it, GEMM + col2im everywhere) and the dispatch between them give the
    /// definition's values in f64, and agree to rounding in f32.
    #[test]
    fn input_gradient_paths_match_the_definition() {
        for (i, case) in CASES.iter().enumerate() {
            let g = geom(case);
            let conv_form = case.6 == 1 && case.7 < case.5 && case.5 > 1;
            assert_eq!(g.transposed().is_some(), conv_form, "case {i}");
            let dy = values::<f64>(g.b * g.o * g.hwo(), 2 * i as u64);
            let wt = values::<f64>(g.o * g.ckk(), 2 * i as u64 + 1);
            let reference = direct(&dy, &wt, &g);
            let mut paths = vec![
                ("col2im", transposed_conv(&dy, &wt, None, &g)),
                ("dispatch", backward_input(&dy, &wt, &g)),
            ];
            if let Some(gt) = g.transposed() {
                paths.push(("conv", forward_im2col(&dy, &flip(&wt, &g), None, &gt)));
                let (a, b) = (to32(&dy), to32(&wt));
                let by_conv = forward_im2col(&a, &flip(&b, &g), None, &gt);
                let by_col2im = transposed_conv(&a, &b, None, &g);
                let err = max_rel(&to64(&by_conv), &to64(&by_col2im));
                assert!(err < 1e-5, "case {i} {case:?}: f32 conv vs col2im {err}");
            }
            for (name, dx) in paths {
                assert_eq!(dx.len(), reference.len(), "case {i} {name}");
                let err = max_rel(&dx, &reference);
                assert!(err < 1e-13, "case {i} {case:?}: {name} {err}");
            }
        }
    }

    /// The forward by im2col, by the transposed convolution of the flipped weights (where the
    /// geometry allows it) and the dispatch between them give the definition's values, bias
    /// included, in f64, and agree to rounding in f32.
    #[test]
    fn forward_paths_match_the_definition() {
        for (i, case) in CASES.iter().enumerate() {
            let g = geom(case);
            let x = values::<f64>(g.b * g.c * g.hwi(), 3 * i as u64);
            let wt = values::<f64>(g.o * g.ckk(), 3 * i as u64 + 1);
            let bias = values::<f64>(g.o, 3 * i as u64 + 2);
            let reference = direct_forward(&x, &wt, &bias, &g);
            let mut paths = vec![
                ("im2col", forward_im2col(&x, &wt, Some(&bias), &g)),
                ("dispatch", forward(&x, &wt, Some(&bias), &g)),
            ];
            if let Some(gt) = g.transposed() {
                paths.push((
                    "col2im",
                    transposed_conv(&x, &flip(&wt, &g), Some(&bias), &gt),
                ));
                let (a, b, c) = (to32(&x), to32(&wt), to32(&bias));
                let by_col2im = transposed_conv(&a, &flip(&b, &g), Some(&c), &gt);
                let by_im2col = forward_im2col(&a, &b, Some(&c), &g);
                let err = max_rel(&to64(&by_col2im), &to64(&by_im2col));
                assert!(err < 1e-5, "case {i} {case:?}: f32 col2im vs im2col {err}");
            }
            for (name, y) in paths {
                assert_eq!(y.len(), reference.len(), "case {i} {name}");
                let err = max_rel(&y, &reference);
                assert!(err < 1e-13, "case {i} {case:?}: {name} {err}");
            }
        }
    }

    /// dw[o, c, ky, kx] = Σ dy[b, o, oy, ox]·x[b, c, iy, ix] (the index map of [`direct`]):
    /// the weight gradient over its partial sums of images, against the definition in f64.
    #[test]
    fn weight_gradient_matches_the_definition() {
        for (i, case) in CASES.iter().enumerate() {
            let g = geom(case);
            let x = values::<f64>(g.b * g.c * g.hwi(), 5 * i as u64);
            let dy = values::<f64>(g.b * g.o * g.hwo(), 5 * i as u64 + 1);
            let mut reference = vec![0.0; g.o * g.ckk()];
            for (j, r) in reference.iter_mut().enumerate() {
                // The gradient along weight j is the forward with that single weight set to 1.
                let mut unit = vec![0.0; g.o * g.ckk()];
                unit[j] = 1.0;
                let y = direct_forward(&x, &unit, &vec![0.0; g.o], &g);
                *r = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
            }
            let dw = backward_weight(&x, &dy, &g);
            let err = max_rel(&dw, &reference);
            assert!(err < 1e-13, "case {i} {case:?}: {err}");
        }
    }

    /// The same bits on 1, 2 and 3 threads for the forward and the input gradient on every path
    /// (C < O, C > O, C ≥ 2·O), in both work splits (batch 1: one image at a time with a
    /// threaded GEMM; batch 5: images per worker).
    #[test]
    fn conv_paths_are_bit_identical_across_thread_counts() {
        for (b, c, o) in [
            (1, 4, 6),
            (1, 8, 6),
            (1, 12, 5),
            (5, 4, 6),
            (5, 8, 6),
            (5, 12, 5),
        ] {
            let g = Geom::new(&[b, c, 9, 7], &[o, c, 3, 3], 1, 1).unwrap();
            let x = values::<f32>(g.b * g.c * g.hwi(), 10);
            let dy = values::<f32>(g.b * g.o * g.hwo(), 11);
            let wt = values::<f32>(g.o * g.ckk(), 12);
            let bias = values::<f32>(g.o, 13);
            let run = |n: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap();
                let (y, dx) = pool.install(|| {
                    (
                        forward(&x, &wt, Some(&bias), &g),
                        backward_input(&dy, &wt, &g),
                    )
                });
                let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                (bits(y), bits(dx))
            };
            let one = run(1);
            assert_eq!(one, run(2), "{:?}", (b, c, o));
            assert_eq!(one, run(3), "{:?}", (b, c, o));
        }
    }
}
