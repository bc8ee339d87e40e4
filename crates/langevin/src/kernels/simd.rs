//! Elementwise loops compiled for AVX-512 or AVX2 where the CPU has it, with the same results.
//!
//! The release build targets baseline x86-64 (SSE2), so the own kernels' elementwise loops
//! (SiLU's sigmoid, its backward product, the AdamW / EMA pass) ran 4 lanes wide; a `perf`
//! profile of the demo's training step had them at ~20% of the step (issue 17, round 3 in
//! docs/benchmarks.md). [`vectorized`] runs a closure inside a function compiled with AVX2, so
//! the loops inlined into it use 8 lanes. Rust never contracts `a * b + c` into a fused
//! multiply-add and AVX2's add, mul, div and sqrt round as SSE2's do, so the bits are the same
//! on either path (the same trick as `gemm`'s `V3::vectorize`); an explicit `mul_add` is one
//! FMA instruction here (AVX-512 implies FMA; the AVX2 path asks for it) and libm's `fmaf`
//! on the plain path, the same bits again. Where the CPU has AVX-512
//! (this project's 2-core machine since CPU round 12: an Intel Xeon with AVX-512 and AMX, where
//! PyTorch's oneDNN runs 16 lanes wide) the loops are compiled for it, 16 lanes, again with the
//! same bits.

/// Runs `f`, compiled with AVX-512 (F, BW, VL, DQ) or else AVX2 + FMA enabled when the CPU
/// supports it. Only what is inlined into the wide function gets the wide instructions: pass a closure
/// marked `#[inline(always)]` (measured in CPU round 8: the group norm's SiLU closure and the
/// Winograd transforms had stayed out of line, compiled for SSE2, 4 lanes instead of 8).
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2")]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if avx512() {
            // SAFETY: the CPU supports these AVX-512 subsets (checked just above).
            return unsafe { wide(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Whether the CPU has the AVX-512 subsets (F, BW, VL, DQ) the own kernels compile for.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorized_loops_give_the_plain_loops_bits() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
        let f = |x: &[f32]| -> Vec<f32> {
            x.iter()
                .map(|&v| (v * 1.5 + 0.25) / ((v * v).sqrt() + 1e-3))
                .collect()
        };
        let plain = f(&x);
        let fast = vectorized(
            #[inline(always)]
            || f(&x),
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&plain), bits(&fast));
    }

    /// The exponential's fused multiply-adds: FMA instructions inside `vectorized`, libm's
    /// `fmaf` outside, the same bits.
    #[test]
    fn vectorized_exponential_gives_the_plain_bits() {
        use crate::kernels::mlp::exp_f32;
        let x: Vec<f32> = (0..4000).map(|i| (i as f32 * 0.731).sin() * 90.0).collect();
        let plain: Vec<u32> = x.iter().map(|&v| exp_f32(v).to_bits()).collect();
        let fast = vectorized(
            #[inline(always)]
            || x.iter().map(|&v| exp_f32(v).to_bits()).collect::<Vec<_>>(),
        );
        assert_eq!(plain, fast);
    }
}
