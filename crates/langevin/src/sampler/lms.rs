//! Linear multistep (LMS) sampling over σ (k-diffusion's `sample_lms`).
use candle_core::Tensor;

use super::{to_d, Ctx};
use crate::Result;

/// ∫_{t[i]}^{t[i+1]} Π_{k≠j, k<order} (τ - t[i-k])/(t[i-j] - t[i-k]) dτ, the weight of the
/// derivative from `j` steps back, integrated exactly (the basis is a polynomial).
pub fn lms_coefficient(order: usize, t: &[f64], i: usize, j: usize) -> f64 {
    // Expand the Lagrange basis polynomial into monomial coefficients c[0] + c[1]τ + …
    let mut c = vec![1.0];
    for k in 0..order {
        if k == j {
            continue;
        }
        let denom = t[i - j] - t[i - k];
        let mut next = vec![0.0; c.len() + 1];
        for (p, &ck) in c.iter().enumerate() {
            next[p + 1] += ck / denom;
            next[p] -= ck * t[i - k] / denom;
        }
        c = next;
    }
    let antideriv = |x: f64| {
        c.iter()
            .enumerate()
            .map(|(p, ck)| ck * x.powi(p as i32 + 1) / (p + 1) as f64)
            .sum::<f64>()
    };
    antideriv(t[i + 1]) - antideriv(t[i])
}

/// Linear multistep (k-diffusion's `sample_lms`, Adams–Bashforth in σ) of order `solver_order`
/// (4 in k-diffusion and diffusers' LMSDiscreteScheduler).
pub fn lms(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let order = ctx.opts.lms_order.max(1);
    let mut ds: Vec<Tensor> = vec![];
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        ds.push(to_d(&x, sigmas[i], &denoised)?);
        if ds.len() > order {
            ds.remove(0);
        }
        let cur = (i + 1).min(order);
        for (j, d) in ds.iter().rev().enumerate() {
            x = (&x + (d * lms_coefficient(cur, sigmas, i, j))?)?;
        }
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_integrate_polynomials_exactly() {
        let t = [10.0, 6.0, 3.5, 1.5, 0.5];
        // Order 1 is Euler: the weight is the step.
        assert!((lms_coefficient(1, &t, 2, 0) - (t[3] - t[2])).abs() < 1e-12);
        // Order-k weights integrate any polynomial of degree < k through the nodes exactly.
        let f = |x: f64| 3.0 * x * x - 2.0 * x + 1.0;
        let exact = |a: f64, b: f64| (b.powi(3) - b * b + b) - (a.powi(3) - a * a + a);
        let i = 3;
        let approx: f64 = (0..3)
            .map(|j| lms_coefficient(3, &t, i, j) * f(t[i - j]))
            .sum();
        assert!((approx - exact(t[i], t[i + 1])).abs() < 1e-9, "{approx}");
    }
}
