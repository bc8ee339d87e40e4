//! F(4×4, 3×3)'s transform kernels over whole vectors of f32 lanes: Bᵀ (input), Aᵀ (output)
//! and A (the output gradient's, for the weight gradient), each applied to rows of tiles.
//!
//! Written for a measured hot spot (issue 17, CPU rounds 9 and 13): the transforms' row loops
//! have 8–64 tiles at 32×32, where the compiler's vector loop (several blocks of 16 or 8) never
//! ran and the scalar remainder did all the work (measured 2–4 ns per input value). Eight lanes
//! (AVX2) even where the CPU has AVX-512: sixteen-lane forms of the same kernels made the
//! input transform slower (64 channels at 32×32, 32 images: 5.3 against 4.2 ms; the rows are
//! not 64-byte aligned, so every 64-byte store splits across two cache lines). The same adds
//! and multiplies in the same order as the scalar functions (`winograd4::bt`,
//! `winograd4::at`, `winograd4_grad::a6`), so every path gives the same bits.

/// Eight lanes, AVX2.
#[cfg(target_arch = "x86_64")]
pub(super) mod x8 {
    use std::arch::x86_64::*;

    /// o_i[k] = bt(d_0[k], …, d_5[k])_i for k < len rounded down to the lanes; returns
    /// that.
    ///
    /// # Safety
    /// The CPU has AVX2; every pointer is valid for `len` values.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn bt(d: [*const f32; 6], o: [*mut f32; 6], len: usize) -> usize {
        let (two, four, five) = (
            _mm256_set1_ps(2.0),
            _mm256_set1_ps(4.0),
            _mm256_set1_ps(5.0),
        );
        let mut k = 0;
        while k + 8 <= len {
            let (d0, d1) = (_mm256_loadu_ps(d[0].add(k)), _mm256_loadu_ps(d[1].add(k)));
            let (d2, d3) = (_mm256_loadu_ps(d[2].add(k)), _mm256_loadu_ps(d[3].add(k)));
            let (d4, d5) = (_mm256_loadu_ps(d[4].add(k)), _mm256_loadu_ps(d[5].add(k)));
            let (s12, s34) = (_mm256_add_ps(d1, d2), _mm256_add_ps(d3, d4));
            let (d12, d43) = (_mm256_sub_ps(d1, d2), _mm256_sub_ps(d4, d3));
            let (d42, d31) = (_mm256_sub_ps(d4, d2), _mm256_sub_ps(d3, d1));
            _mm256_storeu_ps(
                o[0].add(k),
                _mm256_add_ps(
                    _mm256_sub_ps(_mm256_mul_ps(four, d0), _mm256_mul_ps(five, d2)),
                    d4,
                ),
            );
            _mm256_storeu_ps(o[1].add(k), _mm256_sub_ps(s34, _mm256_mul_ps(four, s12)));
            _mm256_storeu_ps(o[2].add(k), _mm256_add_ps(d43, _mm256_mul_ps(four, d12)));
            _mm256_storeu_ps(o[3].add(k), _mm256_add_ps(d42, _mm256_mul_ps(two, d31)));
            _mm256_storeu_ps(o[4].add(k), _mm256_sub_ps(d42, _mm256_mul_ps(two, d31)));
            _mm256_storeu_ps(
                o[5].add(k),
                _mm256_add_ps(
                    _mm256_sub_ps(_mm256_mul_ps(four, d1), _mm256_mul_ps(five, d3)),
                    d5,
                ),
            );
            k += 8;
        }
        k
    }

    /// o_a[k] = at(m_0[k], …, m_5[k])_a + b, as [`bt`].
    ///
    /// # Safety
    /// As [`bt`].
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn at(d: [*const f32; 6], o: [*mut f32; 4], b: f32, len: usize) -> usize {
        let (two, four, eight) = (
            _mm256_set1_ps(2.0),
            _mm256_set1_ps(4.0),
            _mm256_set1_ps(8.0),
        );
        let b = _mm256_set1_ps(b);
        let mut k = 0;
        while k + 8 <= len {
            let (m0, m1) = (_mm256_loadu_ps(d[0].add(k)), _mm256_loadu_ps(d[1].add(k)));
            let (m2, m3) = (_mm256_loadu_ps(d[2].add(k)), _mm256_loadu_ps(d[3].add(k)));
            let (m4, m5) = (_mm256_loadu_ps(d[4].add(k)), _mm256_loadu_ps(d[5].add(k)));
            let (s12, d12) = (_mm256_add_ps(m1, m2), _mm256_sub_ps(m1, m2));
            let (s34, d34) = (_mm256_add_ps(m3, m4), _mm256_sub_ps(m3, m4));
            let y0 = _mm256_add_ps(_mm256_add_ps(m0, s12), s34);
            let y1 = _mm256_add_ps(d12, _mm256_mul_ps(two, d34));
            let y2 = _mm256_add_ps(s12, _mm256_mul_ps(four, s34));
            let y3 = _mm256_add_ps(_mm256_add_ps(d12, _mm256_mul_ps(eight, d34)), m5);
            _mm256_storeu_ps(o[0].add(k), _mm256_add_ps(y0, b));
            _mm256_storeu_ps(o[1].add(k), _mm256_add_ps(y1, b));
            _mm256_storeu_ps(o[2].add(k), _mm256_add_ps(y2, b));
            _mm256_storeu_ps(o[3].add(k), _mm256_add_ps(y3, b));
            k += 8;
        }
        k
    }

    /// o_i[k] = a6(q_0[k], …, q_3[k])_i, as [`bt`].
    ///
    /// # Safety
    /// As [`bt`].
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn a6(q: [*const f32; 4], o: [*mut f32; 6], len: usize) -> usize {
        let (two, four, eight) = (
            _mm256_set1_ps(2.0),
            _mm256_set1_ps(4.0),
            _mm256_set1_ps(8.0),
        );
        let mut k = 0;
        while k + 8 <= len {
            let (q0, q1) = (_mm256_loadu_ps(q[0].add(k)), _mm256_loadu_ps(q[1].add(k)));
            let (q2, q3) = (_mm256_loadu_ps(q[2].add(k)), _mm256_loadu_ps(q[3].add(k)));
            let (s02, s13) = (_mm256_add_ps(q0, q2), _mm256_add_ps(q1, q3));
            let u = _mm256_add_ps(q0, _mm256_mul_ps(four, q2));
            let v = _mm256_add_ps(_mm256_mul_ps(two, q1), _mm256_mul_ps(eight, q3));
            _mm256_storeu_ps(o[0].add(k), q0);
            _mm256_storeu_ps(o[1].add(k), _mm256_add_ps(s02, s13));
            _mm256_storeu_ps(o[2].add(k), _mm256_sub_ps(s02, s13));
            _mm256_storeu_ps(o[3].add(k), _mm256_add_ps(u, v));
            _mm256_storeu_ps(o[4].add(k), _mm256_sub_ps(u, v));
            _mm256_storeu_ps(o[5].add(k), q3);
            k += 8;
        }
        k
    }
}

/// Runs `f` (an [`x8`] kernel, returning how many values it did) where T is f32 and the CPU has
/// AVX2, and returns that count (the caller does the rest in scalar code); zero elsewhere.
#[inline(always)]
pub(super) fn lanes<T: 'static>(f: impl FnOnce() -> usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx2")
    {
        return f();
    }
    let _ = f;
    0
}

/// The six output rows of a transform as the vector kernels take them (f32 pointers; used only
/// where [`lanes`] runs them, that is where T is f32).
#[inline(always)]
pub(super) fn six_rows<T>(o: [&mut [T]; 6]) -> [*mut f32; 6] {
    o.map(|o| o.as_mut_ptr() as *mut f32)
}
