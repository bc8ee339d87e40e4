//! Toy 2-D distributions from the normalising-flow / diffusion literature, following the
//! definitions in FFJORD's `toy_data.py` (Grathwohl et al., 2019), sampled i.i.d.
//!
//! | name | definition |
//! | --- | --- |
//! | `swiss-roll` | sklearn `make_swiss_roll(noise=1)` keeping `(x, z)`, divided by 5: `t ~ U(1.5π, 4.5π)`, point `(t cos t, t sin t)/5` plus `N(0, 0.2²)` noise per coordinate |
//! | `two-moons` | sklearn `make_moons(noise=0.1)`, then `·2 + (−1, −0.2)`: two interleaved half circles of radius 2 centred at `(−1, −0.2)` (upper) and `(1, 0.8)` (lower), noise std 0.2 |
//! | `8-gaussians` | 8 equally weighted Gaussians centred on the circle of radius `4/1.414 ≈ 2.83` at angles `kπ/4`, std `0.5/1.414 ≈ 0.354` |
//! | `checkerboard` | uniform on the 8 "black" 2×2 squares of a 4×4 board covering `[−4, 4)²`: cells where `⌊x/2⌋ + ⌊y/2⌋` is even |
//! | `rings` | 4 concentric circles of radii 0.75, 1.5, 2.25, 3, equally likely, uniform angle, noise std 0.08 |
use std::f64::consts::{FRAC_1_SQRT_2, PI};
use std::fmt;
use std::str::FromStr;

use rand_distr::{Distribution, Normal};

use super::Table;
use crate::{Error, Result};

/// A toy 2-D distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Toy2d {
    SwissRoll,
    TwoMoons,
    EightGaussians,
    Checkerboard,
    Rings,
}

/// Standard deviation of each 8-gaussians component (FFJORD: `0.5 / 1.414`).
pub const EIGHT_GAUSSIANS_STD: f64 = 0.5 / 1.414;
/// Radius of the circle the 8-gaussians centres lie on (FFJORD: `4 / 1.414`).
pub const EIGHT_GAUSSIANS_RADIUS: f64 = 4.0 / 1.414;
/// Radii of the four rings.
pub const RING_RADII: [f64; 4] = [0.75, 1.5, 2.25, 3.0];

impl Toy2d {
    /// Every toy distribution, in a fixed order.
    pub const ALL: [Toy2d; 5] = [
        Toy2d::SwissRoll,
        Toy2d::TwoMoons,
        Toy2d::EightGaussians,
        Toy2d::Checkerboard,
        Toy2d::Rings,
    ];

    /// The name used on the command line and in file names.
    pub fn name(&self) -> &'static str {
        match self {
            Toy2d::SwissRoll => "swiss-roll",
            Toy2d::TwoMoons => "two-moons",
            Toy2d::EightGaussians => "8-gaussians",
            Toy2d::Checkerboard => "checkerboard",
            Toy2d::Rings => "rings",
        }
    }

    /// The 8 centres of [`Toy2d::EightGaussians`].
    pub fn eight_gaussian_centres() -> [(f64, f64); 8] {
        let d = FRAC_1_SQRT_2;
        [
            (1.0, 0.0),
            (-1.0, 0.0),
            (0.0, 1.0),
            (0.0, -1.0),
            (d, d),
            (d, -d),
            (-d, d),
            (-d, -d),
        ]
        .map(|(x, y)| (x * EIGHT_GAUSSIANS_RADIUS, y * EIGHT_GAUSSIANS_RADIUS))
    }

    /// `n` i.i.d. points, as a table with columns `x`, `y`.
    pub fn sample(&self, n: usize, rng: &mut impl rand::Rng) -> Table {
        let mut data = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let (x, y) = self.sample_one(rng);
            data.push(x);
            data.push(y);
        }
        Table::new(vec!["x".into(), "y".into()], data).expect("2 columns")
    }

    fn sample_one(&self, rng: &mut impl rand::Rng) -> (f64, f64) {
        let normal = |rng: &mut _, sd: f64| Normal::new(0.0, sd).expect("positive sd").sample(rng);
        match self {
            Toy2d::SwissRoll => {
                let t = 1.5 * PI * (1.0 + 2.0 * rng.random::<f64>());
                let (nx, ny) = (normal(rng, 1.0), normal(rng, 1.0));
                ((t * t.cos() + nx) / 5.0, (t * t.sin() + ny) / 5.0)
            }
            Toy2d::TwoMoons => {
                let a = PI * rng.random::<f64>();
                let (x, y) = if rng.random::<bool>() {
                    (a.cos(), a.sin())
                } else {
                    (1.0 - a.cos(), 1.0 - a.sin() - 0.5)
                };
                let (nx, ny) = (normal(rng, 0.1), normal(rng, 0.1));
                (2.0 * (x + nx) - 1.0, 2.0 * (y + ny) - 0.2)
            }
            Toy2d::EightGaussians => {
                let (cx, cy) = Self::eight_gaussian_centres()[rng.random_range(0..8)];
                let sd = EIGHT_GAUSSIANS_STD;
                (cx + normal(rng, sd), cy + normal(rng, sd))
            }
            Toy2d::Checkerboard => {
                let x1 = rng.random::<f64>() * 4.0 - 2.0;
                let x2 = rng.random::<f64>() - 2.0 * rng.random_range(0..2) as f64
                    + x1.floor().rem_euclid(2.0);
                (2.0 * x1, 2.0 * x2)
            }
            Toy2d::Rings => {
                let r = RING_RADII[rng.random_range(0..4)];
                let a = 2.0 * PI * rng.random::<f64>();
                (
                    r * a.cos() + normal(rng, 0.08),
                    r * a.sin() + normal(rng, 0.08),
                )
            }
        }
    }
}

impl fmt::Display for Toy2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Toy2d {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|t| t.name()).collect();
                Error::config(
                    "dataset",
                    format!(
                        "unknown toy dataset '{s}'; valid names: {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;

    fn points(t: &Table) -> impl Iterator<Item = (f64, f64)> + '_ {
        t.data.chunks_exact(2).map(|p| (p[0], p[1]))
    }

    #[test]
    fn names_round_trip_and_errors_list_names() {
        for t in Toy2d::ALL {
            assert_eq!(t.to_string().parse::<Toy2d>().unwrap(), t);
        }
        assert_eq!(
            "8-gaussians".parse::<Toy2d>().unwrap(),
            Toy2d::EightGaussians
        );
        let err = "moons".parse::<Toy2d>().unwrap_err().to_string();
        assert!(err.contains("'moons'"), "{err}");
        assert!(
            err.contains("swiss-roll, two-moons, 8-gaussians, checkerboard, rings"),
            "{err}"
        );
    }

    #[test]
    fn shapes_and_determinism() {
        for t in Toy2d::ALL {
            let a = t.sample(257, &mut seeded(3));
            assert_eq!((a.rows, a.cols), (257, 2));
            assert_eq!(a.columns, ["x", "y"]);
            assert!(a.data.iter().all(|v| v.is_finite()));
            assert_eq!(
                a,
                t.sample(257, &mut seeded(3)),
                "{t}: same seed, same data"
            );
            assert_ne!(a, t.sample(257, &mut seeded(4)), "{t}: new seed, new data");
        }
    }

    #[test]
    fn eight_gaussians_cluster_on_centres() {
        let t = Toy2d::EightGaussians.sample(4000, &mut seeded(11));
        let centres = Toy2d::eight_gaussian_centres();
        let mut counts = [0usize; 8];
        for (x, y) in points(&t) {
            let (k, d) = centres
                .iter()
                .map(|(cx, cy)| ((x - cx).powi(2) + (y - cy).powi(2)).sqrt())
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            // P(|N(0, σ²I₂)| > 5σ) = exp(−12.5) ≈ 4e-6 per point.
            assert!(
                d < 5.0 * EIGHT_GAUSSIANS_STD,
                "point {x},{y} is {d} from a centre"
            );
            counts[k] += 1;
        }
        // Each count ~ Binomial(4000, 1/8): mean 500, sd ≈ 21; allow 5 sd.
        assert!(
            counts.iter().all(|&c| (395..=605).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn rings_lie_on_their_radii() {
        let t = Toy2d::Rings.sample(4000, &mut seeded(5));
        let mut counts = [0usize; 4];
        for (x, y) in points(&t) {
            let r = x.hypot(y);
            let (k, d) = RING_RADII
                .iter()
                .map(|rr| (r - rr).abs())
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            assert!(d < 0.4, "radius {r} is {d} from a ring (noise sd 0.08)");
            counts[k] += 1;
        }
        assert!(
            counts.iter().all(|&c| (880..=1120).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn checkerboard_fills_black_cells_only() {
        let t = Toy2d::Checkerboard.sample(4000, &mut seeded(9));
        let mut cells = std::collections::HashMap::new();
        for (x, y) in points(&t) {
            assert!(
                (-4.0..4.0).contains(&x) && (-4.0..4.0).contains(&y),
                "{x},{y}"
            );
            let (cx, cy) = ((x / 2.0).floor() as i64, (y / 2.0).floor() as i64);
            assert_eq!((cx + cy).rem_euclid(2), 0, "point {x},{y} in a white cell");
            *cells.entry((cx, cy)).or_insert(0usize) += 1;
        }
        assert_eq!(cells.len(), 8, "all 8 black cells are used");
        // Each ~ Binomial(4000, 1/8).
        assert!(
            cells.values().all(|&c| (395..=605).contains(&c)),
            "{cells:?}"
        );
    }

    #[test]
    fn two_moons_lie_on_two_arcs() {
        let t = Toy2d::TwoMoons.sample(4000, &mut seeded(2));
        let mut near = 0;
        let (mut upper, mut lower) = (0usize, 0usize);
        for (x, y) in points(&t) {
            let du = ((x + 1.0).hypot(y + 0.2) - 2.0).abs();
            let dl = ((x - 1.0).hypot(y - 0.8) - 2.0).abs();
            let d = du.min(dl);
            // Noise sd 0.2 per coordinate: 1.0 is 5 sd.
            assert!(d < 1.0, "{x},{y} is {d} from both moons");
            near += (d < 0.4) as usize;
            if y > 0.3 + 0.5 * x {
                upper += 1
            } else {
                lower += 1
            }
        }
        // Radial offset ~ N(0, 0.2²): P(|·| < 2 sd) ≈ 0.954.
        assert!(near > 3700, "{near} of 4000 within 0.4 of an arc");
        assert!(upper > 1500 && lower > 1500, "{upper} / {lower}");
    }

    #[test]
    fn swiss_roll_radius_follows_its_angle() {
        let t = Toy2d::SwissRoll.sample(5000, &mut seeded(4));
        let radii: Vec<f64> = points(&t).map(|(x, y)| x.hypot(y)).collect();
        // Noise-free radius t/5 ∈ [0.3π, 0.9π] ≈ [0.94, 2.83]; noise sd 0.2 per coordinate.
        assert!(radii.iter().all(|&r| r > 0.94 - 1.0 && r < 2.83 + 1.0));
        // E[t/5] = 0.6π ≈ 1.885; SE of the mean ≈ 0.008, noise bias ≈ +0.01.
        let mean = radii.iter().sum::<f64>() / radii.len() as f64;
        assert!((mean - 0.6 * PI).abs() < 0.05, "mean radius {mean}");
    }
}
