//! Elementwise loops over short rows in fixed-size chunks, and the row interleaves of the
//! Winograd output transforms, for the transforms' loops of 8–64 values.
//!
//! Written for a measured hot spot (issue 17, CPU round 13): inside [`super::simd::vectorized`]
//! the compiler vectorises a plain loop 16 lanes × 4 unrolled, so a row of 8–32 tiles never
//! reached the vector loop and ran scalar (or 4 lanes) — the Winograd transforms were a fifth
//! of the small UNet's training step. Chunks of 16 and then 8 values with constant bounds
//! compile to one vector operation each. Each value is computed by the same scalar expression
//! as in the plain loop, so the bits do not change.
use super::real::Real;

/// `d[k] = f(a[k], b[k])` for k < d.len().
#[inline(always)]
pub(super) fn map2<T: Real>(d: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T + Copy) {
    let n = d.len();
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    while i + 16 <= n {
        chunk2::<T, 16>(&mut d[i..i + 16], &a[i..i + 16], &b[i..i + 16], f);
        i += 16;
    }
    if i + 8 <= n {
        chunk2::<T, 8>(&mut d[i..i + 8], &a[i..i + 8], &b[i..i + 8], f);
        i += 8;
    }
    for k in i..n {
        d[k] = f(a[k], b[k]);
    }
}

#[inline(always)]
fn chunk2<T: Real, const N: usize>(d: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    // Every value loaded before any is stored: the compiler need not prove that `d` does not
    // overlap `a` or `b` to make this one vector operation.
    let (a, b): ([T; N], [T; N]) = (load(a), load(b));
    let r: [T; N] = std::array::from_fn(|k| f(a[k], b[k]));
    d.copy_from_slice(&r);
}

/// The first N values of `a`, by value.
#[inline(always)]
fn load<T: Real, const N: usize>(a: &[T]) -> [T; N] {
    *<&[T; N]>::try_from(&a[..N]).expect("N values")
}

/// `d[k] = f(a[k], b[k], c[k])` for k < d.len().
#[inline(always)]
pub(super) fn map3<T: Real>(
    d: &mut [T],
    a: &[T],
    b: &[T],
    c: &[T],
    f: impl Fn(T, T, T) -> T + Copy,
) {
    let n = d.len();
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut i = 0;
    while i + 16 <= n {
        let r = i..i + 16;
        chunk3::<T, 16>(&mut d[r.clone()], &a[r.clone()], &b[r.clone()], &c[r], f);
        i += 16;
    }
    if i + 8 <= n {
        let r = i..i + 8;
        chunk3::<T, 8>(&mut d[r.clone()], &a[r.clone()], &b[r.clone()], &c[r], f);
        i += 8;
    }
    for k in i..n {
        d[k] = f(a[k], b[k], c[k]);
    }
}

#[inline(always)]
fn chunk3<T: Real, const N: usize>(
    d: &mut [T],
    a: &[T],
    b: &[T],
    c: &[T],
    f: impl Fn(T, T, T) -> T,
) {
    let (a, b, c): ([T; N], [T; N], [T; N]) = (load(a), load(b), load(c));
    let r: [T; N] = std::array::from_fn(|k| f(a[k], b[k], c[k]));
    d.copy_from_slice(&r);
}

/// `row[2k] = a[k]`, `row[2k + 1] = b[k]` for 2k + 1 < row.len(), and `row[2k] = a[k]` for a
/// last odd position. In f32 with AVX2 eight pairs per two unpacks and two lane permutes (the
/// plain loop stays scalar: two 4-byte stores per pair).
#[inline(always)]
pub(super) fn interleave2<T: Real>(row: &mut [T], a: &[T], b: &[T]) {
    let pairs = row.len() / 2;
    let mut k0 = 0;
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx2")
    {
        assert!(a.len() >= pairs && b.len() >= pairs);
        // SAFETY: T is f32 and the CPU has AVX2 (checked); row holds 2·pairs values and a, b
        // at least `pairs` each (asserted), the loop's accesses stay below those.
        k0 = unsafe {
            x8::interleave2(
                row.as_mut_ptr() as *mut f32,
                a.as_ptr() as *const f32,
                b.as_ptr() as *const f32,
                pairs,
            )
        };
    }
    for k in k0..pairs {
        row[2 * k] = a[k];
        row[2 * k + 1] = b[k];
    }
    if row.len() % 2 == 1 {
        row[2 * pairs] = a[pairs];
    }
}

/// `row[4k + i] = y_i[k]` for 4k + i < row.len() (the last group may be partial). In f32 with
/// AVX2 eight groups per eight unpacks and four lane permutes.
#[inline(always)]
pub(super) fn interleave4<T: Real>(row: &mut [T], y: [&[T]; 4]) {
    let groups = row.len() / 4;
    let mut k0 = 0;
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx2")
    {
        assert!(y.iter().all(|y| y.len() >= groups));
        // SAFETY: as in `interleave2`: row holds 4·groups values, each y_i at least `groups`.
        k0 = unsafe {
            x8::interleave4(
                row.as_mut_ptr() as *mut f32,
                y.map(|y| y.as_ptr() as *const f32),
                groups,
            )
        };
    }
    for k in k0..groups {
        for (i, yi) in y.iter().enumerate() {
            row[4 * k + i] = yi[k];
        }
    }
    for (i, v) in row[4 * groups..].iter_mut().enumerate() {
        *v = y[i][groups];
    }
}

#[cfg(target_arch = "x86_64")]
mod x8 {
    use std::arch::x86_64::*;

    /// The AVX2 part of [`super::interleave2`]: pairs k < `pairs` rounded down to eight;
    /// returns that.
    ///
    /// # Safety
    /// The CPU has AVX2; `row` is valid for 2·pairs values, `a` and `b` for `pairs`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interleave2(
        row: *mut f32,
        a: *const f32,
        b: *const f32,
        pairs: usize,
    ) -> usize {
        let mut k = 0;
        while k + 8 <= pairs {
            let (va, vb) = (_mm256_loadu_ps(a.add(k)), _mm256_loadu_ps(b.add(k)));
            // [a0 b0 a1 b1 | a4 b4 a5 b5] and [a2 b2 a3 b3 | a6 b6 a7 b7].
            let (lo, hi) = (_mm256_unpacklo_ps(va, vb), _mm256_unpackhi_ps(va, vb));
            _mm256_storeu_ps(row.add(2 * k), _mm256_permute2f128_ps::<0x20>(lo, hi));
            _mm256_storeu_ps(row.add(2 * k + 8), _mm256_permute2f128_ps::<0x31>(lo, hi));
            k += 8;
        }
        k
    }

    /// The AVX2 part of [`super::interleave4`]: groups k < `groups` rounded down to eight;
    /// returns that.
    ///
    /// # Safety
    /// The CPU has AVX2; `row` is valid for 4·groups values, each `y[i]` for `groups`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interleave4(row: *mut f32, y: [*const f32; 4], groups: usize) -> usize {
        let mut k = 0;
        while k + 8 <= groups {
            let (y0, y1) = (_mm256_loadu_ps(y[0].add(k)), _mm256_loadu_ps(y[1].add(k)));
            let (y2, y3) = (_mm256_loadu_ps(y[2].add(k)), _mm256_loadu_ps(y[3].add(k)));
            // Per 128-bit lane: t0 = [y0_0 y2_0 y0_1 y2_1], t1 = [y0_2 y2_2 y0_3 y2_3], …
            let (t0, t1) = (_mm256_unpacklo_ps(y0, y2), _mm256_unpackhi_ps(y0, y2));
            let (t2, t3) = (_mm256_unpacklo_ps(y1, y3), _mm256_unpackhi_ps(y1, y3));
            // g0 = [group 0 | group 4], g1 = [1 | 5], g2 = [2 | 6], g3 = [3 | 7].
            let (g0, g1) = (_mm256_unpacklo_ps(t0, t2), _mm256_unpackhi_ps(t0, t2));
            let (g2, g3) = (_mm256_unpacklo_ps(t1, t3), _mm256_unpackhi_ps(t1, t3));
            let out = row.add(4 * k);
            _mm256_storeu_ps(out, _mm256_permute2f128_ps::<0x20>(g0, g1));
            _mm256_storeu_ps(out.add(8), _mm256_permute2f128_ps::<0x20>(g2, g3));
            _mm256_storeu_ps(out.add(16), _mm256_permute2f128_ps::<0x31>(g0, g1));
            _mm256_storeu_ps(out.add(24), _mm256_permute2f128_ps::<0x31>(g2, g3));
            k += 8;
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_maps_and_interleaves_match_the_plain_loops() {
        for n in [0, 1, 7, 8, 9, 16, 17, 24, 31, 33, 64, 70] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.91).cos()).collect();
            let c: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut d = vec![0f32; n];
            map2(&mut d, &a, &b, |x, y| x - y * 0.5);
            assert!((0..n).all(|k| d[k].to_bits() == (a[k] - b[k] * 0.5).to_bits()));
            map3(&mut d, &a, &b, &c, |x, y, z| (x + y) - z);
            assert!((0..n).all(|k| d[k].to_bits() == ((a[k] + b[k]) - c[k]).to_bits()));
            for len in [2 * n, (2 * n).saturating_sub(1)] {
                let mut row = vec![f32::NAN; len];
                interleave2(&mut row, &a, &b);
                for (i, v) in row.iter().enumerate() {
                    assert_eq!(*v, if i % 2 == 0 { a[i / 2] } else { b[i / 2] }, "{len}");
                }
            }
            for len in [4 * n, (4 * n).saturating_sub(1), (4 * n).saturating_sub(3)] {
                let ys = [&a[..], &b[..], &c[..], &a[..]];
                let mut row = vec![f32::NAN; len];
                interleave4(&mut row, ys);
                for (i, v) in row.iter().enumerate() {
                    assert_eq!(*v, ys[i % 4][i / 4], "{len}");
                }
            }
        }
    }
}
