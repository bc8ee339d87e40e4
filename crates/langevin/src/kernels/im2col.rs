//! im2col and col2im, the unfold and fold of one image for the convolution's GEMMs
//! ([`super`]), through a zero-bordered copy of each channel.
use super::{Geom, Real};

/// Unfold one image [C, H, W] (or any run of its channels) into columns [C·k·k, Ho·Wo].
pub(super) fn im2col<T: Real>(x: &[T], g: &Geom, col: &mut [T]) {
    im2col_ld(x, g, col, g.hwo())
}

/// [`im2col`] into rows `ld` values apart (the image's Ho·Wo columns at the start of each):
/// one image's block of a matrix that holds several images side by side ([`super::grouped`]).
///
/// Each channel is copied once into a zero-bordered plane, then every row of every column row
/// is one copy out of it (at stride 1 in fixed chunks of 8 values). Row by row, with the
/// borders filled per row, an 8×8 map's rows of 8 values each went through `memmove` /
/// `memset` calls: im2col was 30% and those calls 20% of the 64→64-channel 8×8 convolution,
/// against 39% for its GEMM (issue 17, CPU round 14).
pub(super) fn im2col_ld<T: Real>(x: &[T], g: &Geom, col: &mut [T], ld: usize) {
    let (k, s, p, hwo, wo) = (g.k, g.s, g.p, g.hwo(), g.wo);
    let wp = g.w + 2 * p;
    let mut pad = vec![T::ZERO; (g.h + 2 * p) * wp];
    for (c, xc) in x.chunks_exact(g.hwi()).enumerate() {
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

/// Fold columns [C·k·k, Ho·Wo] back onto one image [C, H, W], adding overlaps onto what `dx`
/// holds (zeros or a bias; the adjoint of [`im2col`]); any run of the channels.
///
/// Each channel is copied into a zero-bordered plane, every column row's rows are added onto
/// it (at stride 1 in fixed chunks of 8 values) and the interior is copied back: the same
/// additions in the same order as row by row into `dx`, so the same bits. Row by row, with each
/// row's valid range computed, col2im was 29% of a 128→64-channel 8×8 convolution by the
/// transposed form (issue 17, CPU round 14).
pub(super) fn col2im<T: Real>(col: &[T], g: &Geom, dx: &mut [T]) {
    let (k, s, p, hwo, wo) = (g.k, g.s, g.p, g.hwo(), g.wo);
    let wp = g.w + 2 * p;
    let mut pad = vec![T::ZERO; (g.h + 2 * p) * wp];
    for (c, xc) in dx.chunks_exact_mut(g.hwi()).enumerate() {
        if c > 0 {
            pad.fill(T::ZERO);
        }
        for (iy, src) in xc.chunks_exact(g.w).enumerate() {
            copy_row(&mut pad[(iy + p) * wp + p..][..g.w], src);
        }
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((c * k + ky) * k + kx) * hwo..][..hwo];
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
