//! Adaptive Dormand–Prince 5(4) integration of the probability-flow ODE.
use candle_core::Tensor;

use super::Ctx;
use crate::forward::per_row;
use crate::Result;

/// Dormand–Prince 5(4) tableau: nodes, stage weights (row 6 = the 5th-order solution) and the
/// 5th-minus-4th-order error weights; shared with the likelihood ODE.
pub(crate) const C: [f64; 7] = [0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0];
pub(crate) const A: [&[f64]; 7] = [
    &[],
    &[0.2],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
    ],
    &[
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
    &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
pub(crate) const E: [f64; 7] = [
    35.0 / 384.0 - 5179.0 / 57600.0,
    0.0,
    500.0 / 1113.0 - 7571.0 / 16695.0,
    125.0 / 192.0 - 393.0 / 640.0,
    -2187.0 / 6784.0 + 92097.0 / 339200.0,
    11.0 / 84.0 - 187.0 / 2100.0,
    -1.0 / 40.0,
];

/// One sample's integration state in s = ln σ.
struct Row {
    x: Tensor,
    s: f64,
    h: f64,
    /// f at (x, s) (first-same-as-last).
    k1: Option<Tensor>,
    nfe: usize,
}

/// The probability-flow ODE (Song et al. 2021, eq. 13) dx/d ln σ = x - D(x, σ), solved from
/// σ_max = sigmas[0] to σ_min (the last non-zero level) by adaptive Dormand–Prince RK45 with
/// tolerances `rtol`, `atol` (scipy's error norm), then x ← D(x, σ_min). Every sample has its
/// own step size, so sample i does not depend on the rest of the batch; rows in flight are
/// evaluated in one batched call with per-row σ. `ctx.nfe` reports the mean evaluations.
pub fn rk45(ctx: &mut Ctx, x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    if sigmas.len() < 3 {
        return Err(crate::Error::config(
            "steps",
            "the RK45 solver integrates from σ_max to σ_min: give at least 2 noise levels",
        ));
    }
    let s_end = sigmas
        .iter()
        .rev()
        .find(|s| **s > 0.0)
        .copied()
        .unwrap()
        .ln();
    let s0 = sigmas[0].ln();
    let (rtol, atol) = (ctx.opts.rtol, ctx.opts.atol);
    let b = x.dim(0)?;
    let mut rows: Vec<Row> = (0..b)
        .map(|i| {
            Ok(Row {
                x: x.narrow(0, i, 1)?,
                s: s0,
                h: -0.05 * (s0 - s_end).max(1e-3),
                k1: None,
                nfe: 0,
            })
        })
        .collect::<Result<_>>()?;
    let cat = |ts: Vec<Tensor>| -> Result<Tensor> { Ok(Tensor::cat(&ts, 0)?) };
    loop {
        let active: Vec<usize> = (0..b).filter(|&i| rows[i].s > s_end + 1e-12).collect();
        if active.is_empty() {
            break;
        }
        for &i in &active {
            let r = &mut rows[i];
            if r.s + r.h < s_end {
                r.h = s_end - r.s;
            }
        }
        let xs = cat(active.iter().map(|&i| rows[i].x.clone()).collect())?;
        let hs: Vec<f32> = active.iter().map(|&i| rows[i].h as f32).collect();
        let h = per_row(&hs, &xs)?;
        let sh: Vec<(f64, f64)> = active.iter().map(|&i| (rows[i].s, rows[i].h)).collect();
        let f = |ctx: &mut Ctx, x: &Tensor, c: f64| -> Result<Tensor> {
            let sig: Vec<f64> = sh.iter().map(|(s, h)| (s + c * h).exp()).collect();
            Ok((x - ctx.model.denoise_rows(x, &sig, ctx.cond)?)?)
        };
        // First stage: reuse f from the last accepted step where every row has it.
        let mut k: Vec<Tensor> = vec![];
        if active.iter().all(|&i| rows[i].k1.is_some()) {
            k.push(cat(active
                .iter()
                .map(|&i| rows[i].k1.clone().unwrap())
                .collect())?);
        } else {
            k.push(f(ctx, &xs, 0.0)?);
            for &i in &active {
                rows[i].nfe += 1;
            }
        }
        for j in 1..7 {
            let mut inc = (&k[0] * A[j][0])?;
            for (m, a) in A[j].iter().enumerate().skip(1) {
                if *a != 0.0 {
                    inc = (inc + (&k[m] * *a)?)?;
                }
            }
            let xj = (&xs + inc.broadcast_mul(&h)?)?;
            k.push(f(ctx, &xj, C[j])?);
        }
        // 5th-order solution (stage 7's point) and the error estimate.
        let mut inc = (&k[0] * A[6][0])?;
        for (m, a) in A[6].iter().enumerate().skip(1) {
            inc = (inc + (&k[m] * *a)?)?;
        }
        let x_new = (&xs + inc.broadcast_mul(&h)?)?;
        let mut err = (&k[0] * E[0])?;
        for (m, e) in E.iter().enumerate().skip(1) {
            err = (err + (&k[m] * *e)?)?;
        }
        let err = err.broadcast_mul(&h)?;
        let scale = ((xs.abs()?.maximum(&x_new.abs()?)? * rtol)? + atol)?;
        let norms: Vec<f32> = (err / scale)?
            .sqr()?
            .flatten_from(1)?
            .mean(1)?
            .sqrt()?
            .to_vec1()?;
        for (r_i, &i) in active.iter().enumerate() {
            let row = &mut rows[i];
            row.nfe += 6;
            let e = norms[r_i] as f64;
            let factor = if e == 0.0 {
                10.0
            } else {
                (0.9 * e.powf(-0.2)).clamp(0.2, 10.0)
            };
            if e <= 1.0 {
                row.x = x_new.narrow(0, r_i, 1)?;
                row.s += row.h;
                row.k1 = Some(k[6].narrow(0, r_i, 1)?);
            }
            row.h *= factor;
        }
    }
    let x = cat(rows.iter().map(|r| r.x.clone()).collect())?;
    let out = ctx.model.denoise(&x, s_end.exp(), ctx.cond)?;
    ctx.nfe = rows.iter().map(|r| r.nfe).sum::<usize>() / b + 1;
    Ok(out)
}
