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

pub(super) fn forward<T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let (ckk, hwo) = (g.ckk(), g.hwo());
    let mut out = vec![T::ZERO; g.b * g.o * hwo];
    let one = |xb: &[T], ob: &mut [T], col: &mut Vec<T>, par| {
        if let Some(bias) = bias {
            for (row, &v) in ob.chunks_mut(hwo).zip(bias) {
                row.fill(v);
            }
        }
        let src: &[T] = if g.pointwise() {
            xb
        } else {
            col.resize(ckk * hwo, T::ZERO);
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
/// forward's im2col + one GEMM per image (depth O·k², the deep side), with no col2im scatter
/// and no O·k²-row column buffer written by the GEMM and read back (issue 17). Stride 2 and
/// 1×1 convolutions keep [`backward_input_col2im`].
pub(super) fn backward_input<T: Real>(dy: &[T], wt: &[T], g: &Geom) -> Vec<T> {
    match g.transposed() {
        Some(gt) => forward(dy, &flip(wt, g), None, &gt),
        None => backward_input_col2im(dy, wt, g),
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

/// dL/dx from dL/dy: columns `Wᵀ·dy`, folded back by [`col2im`].
pub(super) fn backward_input_col2im<T: Real>(dy: &[T], wt: &[T], g: &Geom) -> Vec<T> {
    let (ckk, hwo, hwi) = (g.ckk(), g.hwo(), g.hwi());
    let mut dx = vec![T::ZERO; g.b * g.c * hwi];
    let one = |dyb: &[T], dxb: &mut [T], col: &mut Vec<T>, par| {
        if g.pointwise() {
            mm(
                (g.c, hwi, g.o),
                dxb,
                false,
                wt,
                (1, ckk),
                dyb,
                (hwo, 1),
                par,
            );
        } else {
            col.resize(ckk * hwo, T::ZERO);
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
                col.resize(ckk * hwo, T::ZERO);
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
    /// 0, 1 and 2, 5×5, odd and 1×1 images, 1×1 kernels with and without padding, stride 2.
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

    fn max_rel(a: &[f64], b: &[f64]) -> f64 {
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn geom(
        &(b, c, h, w, o, k, s, p): &(usize, usize, usize, usize, usize, usize, usize, usize),
    ) -> Geom {
        Geom::new(&[b, c, h, w], &[o, c, k, k], s, p).unwrap()
    }

    #[test]
    fn input_gradient_as_a_convolution_matches_col2im_and_the_definition() {
        for (i, case) in CASES.iter().enumerate() {
            let g = geom(case);
            let by_conv = case.6 == 1 && case.7 < case.5 && case.5 > 1;
            assert_eq!(g.transposed().is_some(), by_conv, "case {i}");
            let dy = values::<f64>(g.b * g.o * g.hwo(), 2 * i as u64);
            let wt = values::<f64>(g.o * g.ckk(), 2 * i as u64 + 1);
            let reference = direct(&dy, &wt, &g);
            let new = backward_input(&dy, &wt, &g);
            let old = backward_input_col2im(&dy, &wt, &g);
            assert_eq!(new.len(), reference.len(), "case {i}");
            assert!(max_rel(&new, &reference) < 1e-13, "case {i} {case:?}: new");
            assert!(max_rel(&old, &reference) < 1e-13, "case {i} {case:?}: old");
            // f32: the two summation orders agree to rounding.
            let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let new32 = backward_input(&f(&dy), &f(&wt), &g);
            let old32 = backward_input_col2im(&f(&dy), &f(&wt), &g);
            let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
            let err = max_rel(&widen(&new32), &widen(&old32));
            assert!(err < 1e-5, "case {i} {case:?}: f32 new vs old {err}");
        }
    }

    /// The same bits on 1, 2 and 3 threads, in both work splits (batch 1: one image at a time
    /// with a threaded GEMM; batch 5: images per worker).
    #[test]
    fn input_gradient_is_bit_identical_across_thread_counts() {
        for case in [(1, 8, 9, 7, 6, 3, 1, 1), (5, 8, 9, 7, 6, 3, 1, 0)] {
            let g = geom(&case);
            let dy = values::<f32>(g.b * g.o * g.hwo(), 11);
            let wt = values::<f32>(g.o * g.ckk(), 12);
            let run = |n: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap();
                let dx = pool.install(|| backward_input(&dy, &wt, &g));
                dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let one = run(1);
            assert_eq!(one, run(2), "{case:?}");
            assert_eq!(one, run(3), "{case:?}");
        }
    }
}
