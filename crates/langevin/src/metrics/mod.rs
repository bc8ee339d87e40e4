//! Sample-quality metrics: sliced Wasserstein distance and kernel MMD.
//!
//! Both metrics are positive even between two independent draws of the *same* distribution,
//! because of sampling noise. That **noise floor** is the same metric computed between two
//! independent draws of the true distribution (e.g. a training subset and the held-out set),
//! at the sample sizes used for the real comparison; a model is as good as these metrics can
//! tell once it reaches the floor. [`MetricReport::compute`] reports both side by side.
pub mod fid;
pub mod fid_setup;
pub mod inception;
pub mod mmd;
pub mod nll;
pub mod swd;

use std::fmt;

pub use mmd::{median_bandwidth, mmd_rbf};
pub use swd::sliced_wasserstein;

use crate::data::Table;

/// A metric next to its noise floor.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricReport {
    /// Sliced 2-Wasserstein distance, generated vs reference.
    pub swd: f64,
    /// Sliced 2-Wasserstein distance, fresh reference vs reference.
    pub swd_floor: f64,
    /// Unbiased MMD², generated vs reference.
    pub mmd: f64,
    /// Unbiased MMD², fresh reference vs reference.
    pub mmd_floor: f64,
}

impl MetricReport {
    /// Compare `generated` with `reference`, and `fresh_reference` (an independent draw of the
    /// true distribution, ideally the same size as `generated`) with `reference` for the
    /// floor. Both SWDs use the same `n_projections` directions from `seed`; both MMDs use one
    /// bandwidth, the median heuristic on `reference` ∪ `fresh_reference`, so the two numbers
    /// are on the same scale.
    pub fn compute(
        generated: &Table,
        reference: &Table,
        fresh_reference: &Table,
        n_projections: usize,
        seed: u64,
    ) -> Self {
        let h = median_bandwidth(reference, fresh_reference);
        Self {
            swd: sliced_wasserstein(generated, reference, n_projections, seed),
            swd_floor: sliced_wasserstein(fresh_reference, reference, n_projections, seed),
            mmd: mmd_rbf(generated, reference, Some(h)),
            mmd_floor: mmd_rbf(fresh_reference, reference, Some(h)),
        }
    }
}

impl fmt::Display for MetricReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SWD {:.4} (floor {:.4})  MMD² {:.5} (floor {:.5})",
            self.swd, self.swd_floor, self.mmd, self.mmd_floor
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Toy2d;
    use crate::rng::seeded;

    #[test]
    fn report_separates_good_from_bad_samples() {
        let reference = Toy2d::EightGaussians.sample(1000, &mut seeded(1));
        let fresh = Toy2d::EightGaussians.sample(1000, &mut seeded(2));
        let good = Toy2d::EightGaussians.sample(1000, &mut seeded(3));
        let bad = Toy2d::Rings.sample(1000, &mut seeded(4));
        let g = MetricReport::compute(&good, &reference, &fresh, 200, 0);
        let b = MetricReport::compute(&bad, &reference, &fresh, 200, 0);
        assert_eq!((g.swd_floor, g.mmd_floor), (b.swd_floor, b.mmd_floor));
        // Good samples sit at the floor; rings vs 8-gaussians are far above it.
        assert!(g.swd < 2.0 * g.swd_floor, "{g}");
        assert!(b.swd > 4.0 * b.swd_floor, "{b}");
        assert!(g.mmd.abs() < 0.003 && g.mmd_floor.abs() < 0.003, "{g}");
        assert!(b.mmd > 0.01, "{b}");
        let s = MetricReport {
            swd: 0.5,
            swd_floor: 0.0123,
            mmd: 0.25,
            mmd_floor: -0.0001,
        }
        .to_string();
        assert_eq!(
            s,
            "SWD 0.5000 (floor 0.0123)  MMD² 0.25000 (floor -0.00010)"
        );
    }
}
