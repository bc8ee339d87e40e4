//! Bit-level re-implementations of the torch / numpy arithmetic that diffusers' schedulers run
//! on their training tables, so that timesteps and σ come out identical.
//!
//! torch holds β and ᾱ in float32: `torch.linspace` on the CPU evaluates `start + step·i` (first
//! half) and `end - step·(n-1-i)` (second half) as fused multiply-adds in float32, and
//! `torch.cumprod` accumulates in float64 but rounds every output to float32. numpy does its
//! spacing arithmetic in float64 and rounds half to even.

/// `torch.linspace(a, b, n, dtype=torch.float32)` on the CPU.
pub fn torch_linspace_f32(a: f64, b: f64, n: usize) -> Vec<f32> {
    let (a, b) = (a as f32, b as f32);
    match n {
        0 => vec![],
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f32;
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        step.mul_add(i as f32, a)
                    } else {
                        (-step).mul_add((n - 1 - i) as f32, b)
                    }
                })
                .collect()
        }
    }
}

/// `torch.cumprod` of a float32 tensor on the CPU: float64 accumulator, float32 outputs.
pub fn torch_cumprod_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// `np.linspace(a, b, n)` in float64: `i·step + a`, the last value exactly `b`.
pub fn np_linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f64;
            (0..n)
                .map(|i| if i == n - 1 { b } else { i as f64 * step + a })
                .collect()
        }
    }
}

/// `np.arange(start, stop, step)` for float arguments: length ⌈(stop-start)/step⌉, values
/// `start + i·delta` with `delta = (start + step) - start` as numpy fills them.
pub fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if !(len > 0.0) {
        return vec![];
    }
    let delta = (start + step) - start;
    (0..len as usize)
        .map(|i| {
            if i == 0 {
                start
            } else {
                start + i as f64 * delta
            }
        })
        .collect()
}

/// numpy's `round`: half to even.
pub fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.interp(x, arange(len(fp)), fp)` in float64.
pub fn np_interp_index(x: f64, fp: &[f64]) -> f64 {
    let n = fp.len();
    if n == 1 || x <= 0.0 {
        return fp[0];
    }
    let last = (n - 1) as f64;
    if x >= last {
        return fp[n - 1];
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j];
    }
    let slope = fp[j + 1] - fp[j];
    let r = slope * (x - j as f64) + fp[j];
    if r.is_nan() {
        slope * (x - (j + 1) as f64) + fp[j + 1]
    } else {
        r
    }
}

/// diffusers' `_sigma_to_t`: piecewise-linear interpolation of the training index in log σ
/// over an increasing `log_sigmas` table.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // A one-step table has nothing to interpolate (found by the loader fuzzer).
    if n < 2 {
        return 0.0;
    }
    // np.cumsum(dists >= 0).argmax(): the first index where the running count peaks.
    let (mut count, mut best, mut low) = (0usize, 0usize, 0usize);
    for (i, ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            low = i;
        }
    }
    let low_idx = low.min(n.saturating_sub(2));
    let high_idx = low_idx + 1;
    let (lo, hi) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Karras et al. (2022) σ ramp with ρ = 7, as diffusers' `_convert_to_karras`.
pub fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Log-uniform σ ramp, as diffusers' `_convert_to_exponential`.
pub fn exponential(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// float32 σ table `((1 - ᾱ) / ᾱ) ** 0.5` as torch computes it, increasing in t.
pub fn sigmas_f32(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0f32 - a) / a).sqrt())
        .collect()
}

/// `np.log` of a float32 array, as float32 values.
pub fn log_f32(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| (v as f64).ln() as f32 as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_and_round_follow_numpy() {
        let r = np_arange(1000.0, 0.0, -1000.0 / 7.0);
        assert_eq!(r.len(), 7);
        assert_eq!(np_round(2.5), 2.0);
        assert_eq!(np_round(3.5), 4.0);
        assert_eq!(np_round(-0.5), -0.0);
    }

    #[test]
    fn interp_hits_table_points() {
        let fp = [1.0, 2.0, 4.0];
        assert_eq!(np_interp_index(1.0, &fp), 2.0);
        assert_eq!(np_interp_index(1.5, &fp), 3.0);
        assert_eq!(np_interp_index(9.0, &fp), 4.0);
    }
}
