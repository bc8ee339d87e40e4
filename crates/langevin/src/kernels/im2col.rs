//! im2col and col2im, the unfold and fold of one image for the convolution's GEMMs
//! ([`super`]), through a zero-bordered copy of each channel at strides 1 and 2.
use super::{Geom, Real};

/// Unfold one image [C, H, W] (or any run of its channels) into columns [C·k·k, Ho·Wo].
pub(super) fn im2col<T: Real>(x: &[T], g: &Geom, col: &mut [T]) {
    im2col_ld(x, g, col, g.hwo())
}

/// [`im2col`] into rows `ld` values apart (the image's Ho·Wo columns at the start of each):
/// one image's block of a matrix that holds several images side by side ([`super::grouped`]).
pub(super) fn im2col_ld<T: Real>(x: &[T], g: &Geom, col: &mut [T], ld: usize) {
    if g.s <= 2 {
        return im2col_padded(x, g, col, ld);
    }
    let (k, s, hwo) = (g.k, g.s, g.hwo());
    for c in 0..x.len() / g.hwi() {
        let xc = &x[c * g.hwi()..(c + 1) * g.hwi()];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((c * k + ky) * k + kx) * ld..][..hwo];
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

/// [`im2col_ld`] at stride 1 or 2: each channel's plane copied once into a zero-bordered plane,
/// then every row of every column row one copy out of it (at stride 1 in fixed chunks of 8
/// values). Row by row
/// with the borders filled per row, an 8×8 map's rows of 8 values each went through
/// `memmove`/`memset` calls: im2col was 30% and those calls 20% of the 64→64-channel 8×8
/// convolution, against 39% for its GEMM (issue 17, CPU round 14).
fn im2col_padded<T: Real>(x: &[T], g: &Geom, col: &mut [T], ld: usize) {
    let (k, s, p, hwo, wo) = (g.k, g.s, g.p, g.hwo(), g.wo);
    let (hp, wp) = (g.h + 2 * p, g.w + 2 * p);
    let mut pad = vec![T::ZERO; hp * wp];
    for c in 0..x.len() / g.hwi() {
        let xc = &x[c * g.hwi()..(c + 1) * g.hwi()];
        for (iy, src) in xc.chunks_exact(g.w).enumerate() {
            copy_row(&mut pad[(iy + p) * wp + p..][..g.w], src);
        }
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((c * k + ky) * k + kx) * ld..][..hwo];
                for (oy, dst) in row.chunks_exact_mut(wo).enumerate() {
                    let src = &pad[(oy * s + ky) * wp + kx..];
                    if s == 1 {
                        copy_row(dst, &src[..wo]);
                    } else {
                        for (ox, d) in dst.iter_mut().enumerate() {
                            *d = src[ox * s];
                        }
                    }
                }
            }
        }
    }
}

/// [`col2im_ld`] at stride 1 or 2, the adjoint of [`im2col_padded`]: each channel's plane copied
/// into a zero-bordered plane, every column row's rows added onto it (at stride 1 in fixed
/// chunks of 8 values),
/// the interior copied back (the same additions in the same order as row by row, so the same
/// bits). Row by row, with each row's valid range computed, col2im was 29% of a 128→64-channel
/// 8×8 convolution by the transposed form (issue 17, CPU round 14).
fn col2im_padded<T: Real>(col: &[T], g: &Geom, dx: &mut [T], ld: usize) {
    let (k, s, p, hwo, wo) = (g.k, g.s, g.p, g.hwo(), g.wo);
    let (hp, wp) = (g.h + 2 * p, g.w + 2 * p);
    let mut pad = vec![T::ZERO; hp * wp];
    for c in 0..dx.len() / g.hwi() {
        let xc = &mut dx[c * g.hwi()..(c + 1) * g.hwi()];
        if c > 0 {
            pad.fill(T::ZERO);
        }
        for (iy, src) in xc.chunks_exact(g.w).enumerate() {
            copy_row(&mut pad[(iy + p) * wp + p..][..g.w], src);
        }
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((c * k + ky) * k + kx) * ld..][..hwo];
                for (oy, src) in row.chunks_exact(wo).enumerate() {
                    let dst = &mut pad[(oy * s + ky) * wp + kx..];
                    if s == 1 {
                        add_row(&mut dst[..wo], src);
                    } else {
                        for (ox, &v) in src.iter().enumerate() {
                            dst[ox * s] += v;
                        }
                    }
                }
            }
        }
        for (iy, dst) in xc.chunks_exact_mut(g.w).enumerate() {
            copy_row(dst, &pad[(iy + p) * wp + p..][..g.w]);
        }
    }
}

/// `dst += src` elementwise, in chunks of 8 values with constant bounds.
#[inline(always)]
fn add_row<T: Real>(dst: &mut [T], src: &[T]) {
    let (mut d, mut s) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (a, b) in (&mut d).zip(&mut s) {
        let (a, b): (&mut [T; 8], &[T; 8]) = (a.try_into().unwrap(), b.try_into().unwrap());
        for i in 0..8 {
            a[i] += b[i];
        }
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a += *b;
    }
}

/// `dst.copy_from_slice(src)` in chunks of 8 values with constant bounds (vector moves, no
/// call to `memmove` for rows of a few values).
#[inline(always)]
fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    let (mut d, mut s) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (a, b) in (&mut d).zip(&mut s) {
        let (a, b): (&mut [T; 8], &[T; 8]) = (a.try_into().unwrap(), b.try_into().unwrap());
        *a = *b;
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a = *b;
    }
}

/// Fold columns [C·k·k, Ho·Wo] back onto one image [C, H, W], adding overlaps (the adjoint of
/// [`im2col`]); any run of the channels. `dx` must be zeroed.
pub(super) fn col2im<T: Real>(col: &[T], g: &Geom, dx: &mut [T]) {
    col2im_ld(col, g, dx, g.hwo())
}

/// [`col2im`] from rows `ld` values apart (as [`im2col_ld`] writes them).
fn col2im_ld<T: Real>(col: &[T], g: &Geom, dx: &mut [T], ld: usize) {
    if g.s <= 2 {
        return col2im_padded(col, g, dx, ld);
    }
    let (k, s, hwo) = (g.k, g.s, g.hwo());
    for c in 0..dx.len() / g.hwi() {
        let xc = &mut dx[c * g.hwi()..(c + 1) * g.hwi()];
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((c * k + ky) * k + kx) * ld..][..hwo];
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
