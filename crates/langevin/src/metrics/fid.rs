//! Fréchet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update
//! Rule Converge to a Local Nash Equilibrium") and Kernel Inception Distance (Bińkowski et al.
//! 2018, "Demystifying MMD GANs") on feature vectors.
//!
//! Features are accumulated in f64 by [`FeatureStats`] (streaming mean and covariance), so a
//! data set never has to be held in memory for FID; KID needs the features themselves.
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::seq::index::sample;

use crate::error::{Error, Result};
use crate::rng::seeded;

/// Streaming mean and covariance of `dim`-dimensional feature vectors, accumulated in f64
/// (sums of `x` and of `x xᵀ`, shifted by the first vector for numerical stability).
#[derive(Debug, Clone)]
pub struct FeatureStats {
    dim: usize,
    n: usize,
    shift: Vec<f64>,
    sum: Vec<f64>,
    /// Row-major `dim × dim` sum of outer products of shifted vectors.
    outer: Vec<f64>,
}

impl FeatureStats {
    /// Empty statistics of `dim`-dimensional features.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            n: 0,
            shift: vec![0.0; dim],
            sum: vec![0.0; dim],
            outer: vec![0.0; dim * dim],
        }
    }

    /// Number of vectors seen.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Add the rows of `features` (row-major, `dim` columns).
    pub fn update(&mut self, features: &[f32]) -> Result<()> {
        if features.len() % self.dim != 0 {
            return Err(Error::config(
                "features",
                format!(
                    "{} values are not whole rows of {}",
                    features.len(),
                    self.dim
                ),
            ));
        }
        let d = self.dim;
        for row in features.chunks_exact(d) {
            if self.n == 0 {
                self.shift = row.iter().map(|&v| v as f64).collect();
            }
            let c: Vec<f64> = row
                .iter()
                .zip(&self.shift)
                .map(|(&v, s)| v as f64 - s)
                .collect();
            for (s, v) in self.sum.iter_mut().zip(&c) {
                *s += v;
            }
            for (i, &ci) in c.iter().enumerate() {
                if ci == 0.0 {
                    continue;
                }
                let out = &mut self.outer[i * d..(i + 1) * d];
                for (o, &cj) in out.iter_mut().zip(&c) {
                    *o += ci * cj;
                }
            }
            self.n += 1;
        }
        Ok(())
    }

    /// Mean vector.
    pub fn mean(&self) -> DVector<f64> {
        let n = self.n.max(1) as f64;
        DVector::from_iterator(
            self.dim,
            self.sum.iter().zip(&self.shift).map(|(s, m)| s / n + m),
        )
    }

    /// Unbiased sample covariance (divides by `n − 1`, as `numpy.cov`).
    pub fn covariance(&self) -> Result<DMatrix<f64>> {
        if self.n < 2 {
            return Err(Error::config(
                "features",
                format!("covariance needs at least 2 vectors, got {}", self.n),
            ));
        }
        let n = self.n as f64;
        let d = self.dim;
        Ok(DMatrix::from_fn(d, d, |i, j| {
            (self.outer[i * d + j] - self.sum[i] * self.sum[j] / n) / (n - 1.0)
        }))
    }
}

/// Square root of a symmetric positive semi-definite matrix by eigendecomposition; negative
/// eigenvalues (round-off) are clamped to 0.
pub fn sqrtm_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let sym = (m + m.transpose()) * 0.5;
    let eig = SymmetricEigen::new(sym);
    let s = eig.eigenvalues.map(|v| v.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&s) * eig.eigenvectors.transpose()
}

/// Fréchet distance between `N(μ1, Σ1)` and `N(μ2, Σ2)`:
/// `|μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)` (Heusel et al. 2017, eq. 6).
///
/// `tr (Σ1 Σ2)^½` is the sum of the square roots of the eigenvalues of Σ1 Σ2. With the
/// rank-revealing factorisation Σ1 = L Lᵀ ([`pivoted_cholesky`], L of size d × r), Σ1 Σ2 =
/// L (Lᵀ Σ2 L) L⁻¹ on its range, so those eigenvalues are the ones of the symmetric r × r matrix
/// Lᵀ Σ2 L (plus zeros). That needs eigenvalues only, not eigenvectors. The form with two full
/// symmetric eigendecompositions (`frechet_distance_eig`, kept as the tests' reference) took
/// about 50 s of one core at d = 2048 (measured: `langevin fid` on 3 images, 2026-11-30).
pub fn frechet_distance(
    mu1: &DVector<f64>,
    s1: &DMatrix<f64>,
    mu2: &DVector<f64>,
    s2: &DMatrix<f64>,
) -> f64 {
    let diff = mu1 - mu2;
    let l = pivoted_cholesky(&((s1 + s1.transpose()) * 0.5));
    let inner = l.transpose() * s2 * &l;
    let sym = (&inner + inner.transpose()) * 0.5;
    let tr_sqrt: f64 = (sym.symmetric_eigenvalues().iter())
        .map(|v| v.max(0.0).sqrt())
        .sum();
    diff.dot(&diff) + s1.trace() + s2.trace() - 2.0 * tr_sqrt
}

/// `L` (d × r) with `L Lᵀ = S` for a symmetric positive semi-definite `S`, by Cholesky with
/// diagonal pivoting, stopping when the largest remaining pivot is below 1e-13 of the largest
/// diagonal entry (r is then the numerical rank). Rows stay in `S`'s order. Backward stable:
/// `L Lᵀ` differs from `S` by round-off (and the dropped, negligible remainder), so the
/// eigenvalues built from it are those of `S` to that accuracy (Higham, *Accuracy and Stability
/// of Numerical Algorithms*, 2nd ed., §10.3).
pub fn pivoted_cholesky(s: &DMatrix<f64>) -> DMatrix<f64> {
    let d = s.nrows();
    let mut diag: Vec<f64> = (0..d).map(|i| s[(i, i)]).collect();
    let top = diag.iter().cloned().fold(0.0, f64::max);
    let tol = 1e-13 * top;
    let mut used = vec![false; d];
    let mut cols: Vec<Vec<f64>> = Vec::new();
    while cols.len() < d {
        let Some((p, &dp)) = (diag.iter().enumerate())
            .filter(|&(i, _)| !used[i])
            .max_by(|a, b| a.1.total_cmp(b.1))
        else {
            break;
        };
        if !(dp > tol) {
            break;
        }
        used[p] = true;
        let piv = dp.sqrt();
        // Column p of the remaining Schur complement, over the rows not yet pivoted.
        let mut col: Vec<f64> = s.column(p).iter().copied().collect();
        for c in &cols {
            let cp = c[p];
            for (x, &ci) in col.iter_mut().zip(c) {
                *x -= ci * cp;
            }
        }
        for (i, x) in col.iter_mut().enumerate() {
            *x = if i == p {
                piv
            } else if used[i] {
                0.0
            } else {
                *x / piv
            };
        }
        for (i, x) in col.iter().enumerate() {
            if !used[i] {
                diag[i] -= x * x;
            }
        }
        cols.push(col);
    }
    DMatrix::from_fn(d, cols.len(), |i, j| cols[j][i])
}

/// FID between two feature statistics.
pub fn fid(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.dim != b.dim {
        return Err(Error::config(
            "features",
            format!("dimensions differ: {} vs {}", a.dim, b.dim),
        ));
    }
    Ok(frechet_distance(
        &a.mean(),
        &a.covariance()?,
        &b.mean(),
        &b.covariance()?,
    ))
}

/// KID estimate: mean and standard deviation over subsets.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
}

/// Σ over entries of k(x_i, y_j) = (x_iᵀy_j / d + 1)³, skipping i = j when `within`; the Gram
/// matrix comes from one f32 matrix product (candle's multi-threaded GEMM), the sum in f64.
/// (A scalar double loop made 100 subsets of 1,000 rows take minutes.)
fn kernel_sum(x: &[&[f32]], y: &[&[f32]], d: usize, within: bool) -> Result<f64> {
    let rows = |s: &[&[f32]]| {
        candle_core::Tensor::from_vec(s.concat(), (s.len(), d), &candle_core::Device::Cpu)
    };
    let g: Vec<Vec<f32>> = rows(x)?.matmul(&rows(y)?.t()?)?.to_vec2()?;
    let mut t = 0.0;
    for (i, r) in g.iter().enumerate() {
        for (j, &v) in r.iter().enumerate() {
            if !(within && i == j) {
                t += (v as f64 / d as f64 + 1.0).powi(3);
            }
        }
    }
    Ok(t)
}

/// Unbiased MMD² with the cubic polynomial kernel `k(x, y) = (xᵀy / d + 1)³` between the rows
/// of `x` and `y` (Bińkowski et al. 2018).
fn mmd2_poly(x: &[&[f32]], y: &[&[f32]], d: usize) -> Result<f64> {
    let (m, n) = (x.len() as f64, y.len() as f64);
    Ok(
        kernel_sum(x, x, d, true)? / (m * (m - 1.0)) + kernel_sum(y, y, d, true)? / (n * (n - 1.0))
            - 2.0 * kernel_sum(x, y, d, false)? / (m * n),
    )
}

/// KID between feature sets `a` and `b` (row-major, `dim` columns): the unbiased polynomial
/// MMD² averaged over `n_subsets` random subsets of `min(subset_size, rows)` rows of each
/// (drawn without replacement from `seed`), with the standard deviation across subsets.
pub fn kid(
    a: &[f32],
    b: &[f32],
    dim: usize,
    n_subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<Kid> {
    if dim == 0 || a.len() % dim != 0 || b.len() % dim != 0 {
        return Err(Error::config("features", "not whole rows of dim"));
    }
    let ra: Vec<&[f32]> = a.chunks_exact(dim).collect();
    let rb: Vec<&[f32]> = b.chunks_exact(dim).collect();
    let m = subset_size.min(ra.len()).min(rb.len());
    if m < 2 || n_subsets == 0 {
        return Err(Error::config(
            "kid",
            format!("need at least 2 rows per set and 1 subset (subset size {m})"),
        ));
    }
    let mut rng = seeded(seed);
    let vals: Vec<f64> = (0..n_subsets)
        .map(|_| {
            let x: Vec<&[f32]> = sample(&mut rng, ra.len(), m)
                .iter()
                .map(|i| ra[i])
                .collect();
            let y: Vec<&[f32]> = sample(&mut rng, rb.len(), m)
                .iter()
                .map(|i| rb[i])
                .collect();
            mmd2_poly(&x, &y, dim)
        })
        .collect::<Result<_>>()?;
    let k = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / k;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k;
    Ok(Kid {
        mean,
        std: var.sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand_distr::StandardNormal;

    fn spd(d: usize, seed: u64) -> DMatrix<f64> {
        let mut rng = seeded(seed);
        let a = DMatrix::from_fn(d, d, |_, _| rng.sample::<f64, _>(StandardNormal));
        &a * a.transpose() + DMatrix::identity(d, d) * 0.1
    }

    /// The GEMM form of the unbiased MMD² equals its definition as a double sum.
    #[test]
    fn mmd2_poly_matches_the_double_sum() {
        fn k(x: &[f32], y: &[f32], d: f64) -> f64 {
            let dot: f64 = x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum();
            (dot / d + 1.0).powi(3)
        }
        let mut rng = seeded(5);
        let d = 16;
        let a: Vec<f32> = (0..7 * d)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let b: Vec<f32> = (0..9 * d)
            .map(|_| rng.sample::<f32, _>(StandardNormal) + 0.3)
            .collect();
        let (x, y): (Vec<&[f32]>, Vec<&[f32]>) = (a.chunks(d).collect(), b.chunks(d).collect());
        let (m, n, df) = (7.0, 9.0, d as f64);
        let mut want = 0.0;
        for i in 0..7 {
            for j in 0..7 {
                if i != j {
                    want += k(x[i], x[j], df) / (m * (m - 1.0));
                }
            }
        }
        for i in 0..9 {
            for j in 0..9 {
                if i != j {
                    want += k(y[i], y[j], df) / (n * (n - 1.0));
                }
            }
        }
        for xi in &x {
            for yj in &y {
                want -= 2.0 * k(xi, yj, df) / (m * n);
            }
        }
        let got = mmd2_poly(&x, &y, d).unwrap();
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }

    #[test]
    fn sqrtm_squares_back() {
        let m = spd(20, 1);
        let r = sqrtm_psd(&m);
        let err = (&r * &r - &m).abs().max();
        assert!(err < 1e-9 * m.abs().max(), "err {err}");
    }

    #[test]
    fn frechet_identical_is_zero_and_diagonal_matches_closed_form() {
        let m = spd(10, 2);
        let mu = DVector::from_fn(10, |i, _| i as f64);
        assert!(frechet_distance(&mu, &m, &mu, &m).abs() < 1e-8);
        // Diagonal: Σ (μ1−μ2)² + Σ (√a − √b)².
        let a = [1.0, 4.0, 0.25, 9.0];
        let b = [2.0, 1.0, 1.0, 16.0];
        let mu1 = DVector::from_vec(vec![0.0, 1.0, 2.0, 3.0]);
        let mu2 = DVector::from_vec(vec![1.0, 1.0, 0.0, 3.5]);
        let s1 = DMatrix::from_diagonal(&DVector::from_vec(a.to_vec()));
        let s2 = DMatrix::from_diagonal(&DVector::from_vec(b.to_vec()));
        let want: f64 = (&mu1 - &mu2).norm_squared()
            + a.iter()
                .zip(&b)
                .map(|(x, y): (&f64, &f64)| (x.sqrt() - y.sqrt()).powi(2))
                .sum::<f64>();
        let got = frechet_distance(&mu1, &s1, &mu2, &s2);
        assert!((got - want).abs() < 1e-10, "{got} vs {want}");
    }

    /// [`frechet_distance`] through `(Σ1^½ Σ2 Σ1^½)^½` with two symmetric eigendecompositions:
    /// the textbook form, kept as the reference the fast one is tested against.
    fn frechet_distance_eig(
        mu1: &DVector<f64>,
        s1: &DMatrix<f64>,
        mu2: &DVector<f64>,
        s2: &DMatrix<f64>,
    ) -> f64 {
        let diff = mu1 - mu2;
        let r1 = sqrtm_psd(s1);
        let inner = &r1 * s2 * &r1;
        let sym = (&inner + inner.transpose()) * 0.5;
        let tr_sqrt: f64 = SymmetricEigen::new(sym)
            .eigenvalues
            .iter()
            .map(|v| v.max(0.0).sqrt())
            .sum();
        diff.dot(&diff) + s1.trace() + s2.trace() - 2.0 * tr_sqrt
    }

    /// The fast Fréchet distance equals the two-eigendecomposition form on full-rank and on
    /// rank-deficient covariances (fewer samples than dimensions, as FID on n < 2048 images).
    #[test]
    fn fast_frechet_matches_the_eigendecomposition_form() {
        let low_rank = |d: usize, r: usize, seed: u64| {
            let mut rng = seeded(seed);
            let a = DMatrix::from_fn(d, r, |_, _| rng.sample::<f64, _>(StandardNormal));
            &a * a.transpose()
        };
        let mu1 = DVector::from_fn(40, |i, _| (i as f64).sin());
        let mu2 = DVector::from_fn(40, |i, _| (i as f64).cos());
        for (s1, s2) in [
            (spd(40, 7), spd(40, 8)),
            (low_rank(40, 5, 9), spd(40, 10)),
            (spd(40, 11), low_rank(40, 3, 12)),
            (low_rank(40, 6, 13), low_rank(40, 9, 14)),
        ] {
            let want = frechet_distance_eig(&mu1, &s1, &mu2, &s2);
            let got = frechet_distance(&mu1, &s1, &mu2, &s2);
            // The reference takes square roots of round-off eigenvalues (≈ 1e-13 → 3e-7 each)
            // where the product is singular; the fast form drops those directions exactly.
            assert!(
                (got - want).abs() < 1e-6 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }

    /// L Lᵀ gives back S, and the rank is found.
    #[test]
    fn pivoted_cholesky_factors_and_reveals_the_rank() {
        let mut rng = seeded(15);
        let a = DMatrix::from_fn(30, 4, |_, _| rng.sample::<f64, _>(StandardNormal));
        let s = &a * a.transpose();
        let l = pivoted_cholesky(&s);
        assert_eq!(l.ncols(), 4);
        let err = (&l * l.transpose() - &s).abs().max();
        assert!(err < 1e-10 * s.abs().max(), "err {err}");
        let full = spd(25, 16);
        let l = pivoted_cholesky(&full);
        assert_eq!(l.ncols(), 25);
        assert!((&l * l.transpose() - &full).abs().max() < 1e-10 * full.abs().max());
        assert_eq!(pivoted_cholesky(&DMatrix::zeros(3, 3)).ncols(), 0);
    }

    #[test]
    fn streaming_stats_match_direct_mean_and_cov() {
        let mut rng = seeded(3);
        let (n, d) = (50, 3);
        let x: Vec<f32> = (0..n * d)
            .map(|_| rng.random::<f32>() * 4.0 + 10.0)
            .collect();
        let mut st = FeatureStats::new(d);
        st.update(&x[..30]).unwrap();
        st.update(&x[30..]).unwrap();
        let mu: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| x[i * d + j] as f64).sum::<f64>() / n as f64)
            .collect();
        let cov = st.covariance().unwrap();
        for (i, m) in mu.iter().enumerate() {
            assert!((st.mean()[i] - m).abs() < 1e-9);
            for j in 0..d {
                let c: f64 = (0..n)
                    .map(|k| (x[k * d + i] as f64 - m) * (x[k * d + j] as f64 - mu[j]))
                    .sum::<f64>()
                    / (n - 1) as f64;
                assert!((cov[(i, j)] - c).abs() < 1e-9);
            }
        }
        assert!(st.update(&x[..2]).is_err());
    }

    #[test]
    fn fid_of_samples_recovers_mean_shift() {
        // Two large samples of N(0, I) and N(δ, I) in 4-d: FID ≈ |δ|² = 4.
        let mut rng = seeded(4);
        let d = 4;
        let gen = |shift: f32, rng: &mut rand_chacha::ChaCha8Rng| -> Vec<f32> {
            (0..20000 * d)
                .map(|_| rng.sample::<f32, _>(StandardNormal) + shift)
                .collect()
        };
        let (a, b) = (gen(0.0, &mut rng), gen(1.0, &mut rng));
        let (mut sa, mut sb) = (FeatureStats::new(d), FeatureStats::new(d));
        sa.update(&a).unwrap();
        sb.update(&b).unwrap();
        let f = fid(&sa, &sb).unwrap();
        assert!((f - 4.0).abs() < 0.1, "fid {f}");
    }

    #[test]
    fn kid_same_distribution_near_zero_and_shift_positive() {
        let mut rng = seeded(5);
        let d = 8;
        let gen = |shift: f32, rng: &mut rand_chacha::ChaCha8Rng| -> Vec<f32> {
            (0..600 * d)
                .map(|_| rng.sample::<f32, _>(StandardNormal) + shift)
                .collect()
        };
        let (a, b, c) = (gen(0.0, &mut rng), gen(0.0, &mut rng), gen(0.5, &mut rng));
        let same = kid(&a, &b, d, 10, 300, 0).unwrap();
        let diff = kid(&a, &c, d, 10, 300, 0).unwrap();
        // Same distribution: |mean| within 0.01; mean shift of 0.5 per dim: clearly positive.
        assert!(same.mean.abs() < 0.01, "{same:?}");
        assert!(
            diff.mean > 0.05 && diff.mean > 5.0 * same.std,
            "{diff:?} {same:?}"
        );
    }
}
