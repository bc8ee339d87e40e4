//! UniPC (Zhao et al. 2023): predictor–corrector multistep solver, B(h) variants.
use candle_core::Tensor;

use super::Ctx;
use crate::Result;

/// UniPC's B(h) variants (Zhao et al. 2023, §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcVariant {
    /// B(h) = h.
    Bh1,
    /// B(h) = e^h - 1.
    Bh2,
}

/// Solve the small dense system A·x = b (Gaussian elimination with partial pivoting).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap();
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            for k in c..n {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        x[r] = (b[r] - (r + 1..n).map(|k| a[r][k] * x[k]).sum::<f64>()) / a[r][r];
    }
    x
}

/// The UniPC update from x at σ_s to σ_t, for data prediction in λ = -ln σ.
/// `hist` holds (λ_k, x̂0_k), newest last; `hist.last()` is at σ_s. With `model_t` this is the
/// corrector UniC (its x̂0 at σ_t enters with weight ρ_last); without, the predictor UniP.
fn update(
    x: &Tensor,
    sigma_s: f64,
    sigma_t: f64,
    hist: &[(f64, Tensor)],
    order: usize,
    model_t: Option<&Tensor>,
    variant: UniPcVariant,
) -> Result<Tensor> {
    let (lambda_s, m0) = hist.last().unwrap();
    let h = -sigma_t.ln() - lambda_s;
    // Divided differences D1_k = (m_k - m0)/r_k from older estimates.
    let mut rks = vec![];
    let mut d1s = vec![];
    for k in 1..order {
        let (lam_k, m_k) = &hist[hist.len() - 1 - k];
        let rk = (lam_k - lambda_s) / h;
        rks.push(rk);
        d1s.push(((m_k - m0)? / rk)?);
    }
    rks.push(1.0);
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let b_h = match variant {
        UniPcVariant::Bh1 => hh,
        UniPcVariant::Bh2 => hh.exp_m1(),
    };
    let mut fact = 1.0;
    let mut rmat = vec![];
    let mut b = vec![];
    for i in 1..=order {
        rmat.push(rks.iter().map(|r| r.powi(i as i32 - 1)).collect::<Vec<_>>());
        b.push(h_phi_k * fact / b_h);
        fact *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / fact;
    }
    let x_base = ((x * (sigma_t / sigma_s))? - (m0 * h_phi_1)?)?;
    let mut res: Option<Tensor> = None;
    let mut add = |t: Tensor| -> Result<()> {
        res = Some(match res.take() {
            Some(r) => (r + t)?,
            None => t,
        });
        Ok(())
    };
    match model_t {
        None => {
            if !d1s.is_empty() {
                let rhos = if order == 2 {
                    vec![0.5]
                } else {
                    let m = order - 1;
                    solve(
                        rmat[..m].iter().map(|r| r[..m].to_vec()).collect(),
                        b[..m].to_vec(),
                    )
                };
                for (rho, d) in rhos.iter().zip(&d1s) {
                    add((d * *rho)?)?;
                }
            }
        }
        Some(mt) => {
            let rhos = if order == 1 {
                vec![0.5]
            } else {
                solve(rmat, b)
            };
            for (rho, d) in rhos.iter().zip(&d1s) {
                add((d * *rho)?)?;
            }
            add(((mt - m0)? * *rhos.last().unwrap())?)?;
        }
    }
    Ok(match res {
        Some(r) => (x_base - (r * b_h)?)?,
        None => x_base,
    })
}

/// UniPC (Zhao et al. 2023, Algorithm 1 with diffusers' warm-up and lower-order final step):
/// the UniP-p predictor plus the UniC corrector, which reuses the next step's network
/// evaluation, so it costs no extra NFE. Order `solver_order` (default 2), data prediction.
pub fn unipc(ctx: &mut Ctx, x: Tensor, sigmas: &[f64], variant: UniPcVariant) -> Result<Tensor> {
    let n = sigmas.len() - 1;
    let max_order = ctx.opts.solver_order.clamp(1, 3);
    let mut hist: Vec<(f64, Tensor)> = vec![];
    let mut x = x;
    let mut last: Option<(Tensor, usize)> = None;
    for i in 0..n {
        let sigma = sigmas[i];
        let m = ctx.denoise(&x, sigma)?;
        if let Some((x_prev, order_prev)) = &last {
            x = update(
                x_prev,
                sigmas[i - 1],
                sigma,
                &hist,
                *order_prev,
                Some(&m),
                variant,
            )?;
        }
        hist.push((-sigma.ln(), m.clone()));
        if hist.len() > max_order {
            hist.remove(0);
        }
        let order = max_order.min(n - i).min(i + 1);
        let next = if sigmas[i + 1] == 0.0 {
            m.clone()
        } else {
            update(&x, sigma, sigmas[i + 1], &hist, order, None, variant)?
        };
        last = Some((x, order));
        x = ctx.step_done(i, sigmas, next, &m)?;
    }
    Ok(x)
}

/// UniPC with B(h) = h.
pub fn unipc_bh1(ctx: &mut Ctx, x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    unipc(ctx, x, sigmas, UniPcVariant::Bh1)
}

/// UniPC with B(h) = e^h - 1 (diffusers' default).
pub fn unipc_bh2(ctx: &mut Ctx, x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    unipc(ctx, x, sigmas, UniPcVariant::Bh2)
}
