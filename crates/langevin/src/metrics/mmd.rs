//! Unbiased squared maximum mean discrepancy with a Gaussian (RBF) kernel.
use crate::data::Table;

/// Most points used for the median-heuristic bandwidth.
pub const MEDIAN_SUBSAMPLE: usize = 1000;

fn sq_dist(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum()
}

/// The median heuristic: the median Euclidean distance between distinct points of the pooled
/// sample `a ∪ b`. Pools larger than [`MEDIAN_SUBSAMPLE`] are thinned deterministically to
/// that many evenly spaced rows first. Falls back to 1 when the median is 0.
///
/// # Panics
/// If the column counts differ.
pub fn median_bandwidth(a: &Table, b: &Table) -> f64 {
    assert_eq!(a.cols, b.cols, "median_bandwidth: column counts differ");
    let pooled: Vec<&[f64]> = a
        .data
        .chunks_exact(a.cols)
        .chain(b.data.chunks_exact(b.cols))
        .collect();
    let n = pooled.len();
    let k = n.min(MEDIAN_SUBSAMPLE);
    let pts: Vec<&[f64]> = (0..k).map(|i| pooled[i * n / k]).collect();
    let mut d: Vec<f64> = Vec::with_capacity(k * k.saturating_sub(1) / 2);
    for i in 0..k {
        for j in i + 1..k {
            d.push(sq_dist(pts[i], pts[j]).sqrt());
        }
    }
    if d.is_empty() {
        return 1.0;
    }
    let mid = d.len() / 2;
    let (_, &mut med, _) = d.select_nth_unstable_by(mid, f64::total_cmp);
    if med > 0.0 && med.is_finite() {
        med
    } else {
        1.0
    }
}

/// Unbiased MMD² between samples `a` (n rows) and `b` (m rows) with kernel
/// `k(x, y) = exp(−|x − y|² / (2h²))`:
///
/// `MMD² = Σ_{i≠j} k(aᵢ,aⱼ)/(n(n−1)) + Σ_{i≠j} k(bᵢ,bⱼ)/(m(m−1)) − 2 Σ_{i,j} k(aᵢ,bⱼ)/(nm)`.
///
/// `h` is `bandwidth`, or [`median_bandwidth`] of the pooled sample when `None`. The sums are
/// exact, `O((n + m)²)` kernel evaluations — fine for a few thousand points. Being unbiased,
/// the estimate can be slightly negative when the distributions match.
///
/// # Panics
/// If a sample has fewer than 2 rows, the column counts differ, or `bandwidth` is not positive.
pub fn mmd_rbf(a: &Table, b: &Table, bandwidth: Option<f64>) -> f64 {
    assert!(
        a.rows >= 2 && b.rows >= 2,
        "mmd_rbf: need at least 2 points per sample"
    );
    assert_eq!(a.cols, b.cols, "mmd_rbf: column counts differ");
    let h = bandwidth.unwrap_or_else(|| median_bandwidth(a, b));
    assert!(
        h > 0.0 && h.is_finite(),
        "mmd_rbf: bandwidth must be positive, got {h}"
    );
    let gamma = 1.0 / (2.0 * h * h);
    let k = |x: &[f64], y: &[f64]| (-gamma * sq_dist(x, y)).exp();
    let within = |t: &Table| {
        let rows: Vec<&[f64]> = t.data.chunks_exact(t.cols).collect();
        let mut s = 0.0;
        for i in 0..rows.len() {
            for j in i + 1..rows.len() {
                s += k(rows[i], rows[j]);
            }
        }
        2.0 * s / (t.rows as f64 * (t.rows as f64 - 1.0))
    };
    let mut cross = 0.0;
    for x in a.data.chunks_exact(a.cols) {
        for y in b.data.chunks_exact(b.cols) {
            cross += k(x, y);
        }
    }
    within(a) + within(b) - 2.0 * cross / (a.rows as f64 * b.rows as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;
    use rand_distr::{Distribution, Normal};

    /// MMD² between N(0,1) and N(μ,1) under `exp(−(x−y)²/(2h²))`.
    ///
    /// If `Z ~ N(c, s²)` then `E exp(−Z²/(2h²)) = h/√(h²+s²) · exp(−c²/(2(h²+s²)))`. Here
    /// `X−X'` and `Y−Y'` are `N(0, 2)` and `X−Y` is `N(−μ, 2)`, so
    /// `MMD² = 2·h/√(h²+2) · (1 − exp(−μ²/(2(h²+2))))`.
    fn closed_form(mu: f64, h: f64) -> f64 {
        let h2 = h * h;
        2.0 * (h2 / (h2 + 2.0)).sqrt() * (1.0 - (-mu * mu / (2.0 * (h2 + 2.0))).exp())
    }

    fn normal_1d(n: usize, mu: f64, seed: u64) -> Table {
        let d = Normal::new(mu, 1.0).unwrap();
        let mut rng = seeded(seed);
        Table::unnamed(1, (0..n).map(|_| d.sample(&mut rng)).collect()).unwrap()
    }

    #[test]
    fn closed_form_matches_quadrature() {
        // Check the Gaussian-integral step numerically: E k(X, Y) with X−Y ~ N(−μ, 2).
        for (mu, h) in [(1.0, 1.0), (0.5, 2.0), (2.0, 0.7)] {
            let s2 = 2.0f64;
            let pdf = |z: f64, c: f64| {
                (-(z - c) * (z - c) / (2.0 * s2)).exp() / (2.0 * std::f64::consts::PI * s2).sqrt()
            };
            let ek = |c: f64| {
                let dz = 1e-3;
                (-20_000..=20_000)
                    .map(|i| {
                        let z = i as f64 * dz;
                        pdf(z, c) * (-z * z / (2.0 * h * h)).exp() * dz
                    })
                    .sum::<f64>()
            };
            let quad = 2.0 * ek(0.0) - 2.0 * ek(-mu);
            assert!(
                (quad - closed_form(mu, h)).abs() < 1e-9,
                "{quad} vs {}",
                closed_form(mu, h)
            );
        }
        assert!((closed_form(1.0, 1.0) - 0.177_267_6).abs() < 1e-6);
    }

    #[test]
    fn estimate_matches_closed_form() {
        // n = m = 2000, μ = 1, h = 1: MMD² ≈ 0.1773; allow 0.02 (≈ 11%) for sampling error.
        let a = normal_1d(2000, 0.0, 1);
        let b = normal_1d(2000, 1.0, 2);
        let est = mmd_rbf(&a, &b, Some(1.0));
        let want = closed_form(1.0, 1.0);
        assert!((est - want).abs() < 0.02, "estimate {est} vs {want}");
        // Same distribution: the unbiased estimate is centred on 0 with sd of order 1/n.
        let c = normal_1d(2000, 0.0, 3);
        let same = mmd_rbf(&a, &c, Some(1.0));
        assert!(same.abs() < 0.003, "{same}");
        // Symmetric.
        assert!((mmd_rbf(&b, &a, Some(1.0)) - est).abs() < 1e-12);
    }

    #[test]
    fn median_heuristic_bandwidth() {
        // |X − X'| for X, X' ~ N(0,1) is |N(0, 2)|, whose median is √2 · 0.6745 ≈ 0.954.
        let a = normal_1d(1500, 0.0, 4);
        let b = normal_1d(1500, 0.0, 5);
        let h = median_bandwidth(&a, &b);
        assert!((h - 0.954).abs() < 0.05, "{h}");
        let exact = Table::unnamed(1, vec![0.0, 1.0, 3.0]).unwrap();
        let one = Table::unnamed(1, vec![7.0]).unwrap();
        // Distances among {0,1,3,7}: 1,3,7,2,6,4 → upper median 4.
        assert_eq!(median_bandwidth(&exact, &one), 4.0);
        let flat = Table::unnamed(1, vec![2.0; 4]).unwrap();
        assert_eq!(median_bandwidth(&flat, &flat), 1.0);
        // With None, the heuristic is what gets used.
        let c = normal_1d(300, 1.0, 6);
        let a3 = a.select_rows(&(0..300).collect::<Vec<_>>());
        assert_eq!(
            mmd_rbf(&a3, &c, None),
            mmd_rbf(&a3, &c, Some(median_bandwidth(&a3, &c)))
        );
    }
}
