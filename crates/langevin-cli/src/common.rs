//! Argument groups and helpers shared by subcommands.
use std::path::Path;

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, ValueEnum};
use langevin::data::{load_table, toy::Toy2d, Table};
use langevin::model::NoiseDist;
use langevin::schedule::sigmas::{VeSde, VpSde};
use langevin::schedule::BetaSchedule;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleName {
    Linear,
    ScaledLinear,
    Cosine,
    Sigmoid,
    Geometric,
    /// EDM's log-normal noise levels (continuous; pair with --prediction edm).
    Edm,
    /// Variance-exploding SDE σ(t) = σ_min(σ_max/σ_min)^t (continuous).
    VeSde,
    /// Variance-preserving SDE with linear β(t) (continuous).
    VpSde,
}

impl std::fmt::Display for ScheduleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.to_possible_value().unwrap().get_name())
    }
}

/// The noise schedule a model is trained with.
#[derive(ClapArgs, Clone, Debug)]
pub struct BetaArgs {
    /// Noise schedule.
    #[arg(long, value_enum, default_value_t = ScheduleName::Linear)]
    pub schedule: ScheduleName,
    /// Number of discrete steps T.
    #[arg(long, default_value_t = 1000, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub timesteps: usize,
    /// β of the geometric schedule β_t = β(1-β)^(T-1-t), in (0, 1).
    #[arg(long, default_value_t = 0.5, value_parser = crate::ranges::open_unit, allow_negative_numbers = true)]
    pub beta: f64,
    /// First β of linear / scaled-linear / sigmoid schedules.
    #[arg(long, default_value_t = 1e-4, value_parser = crate::ranges::open_unit, allow_negative_numbers = true)]
    pub beta_start: f64,
    /// Last β of linear / scaled-linear / sigmoid schedules.
    #[arg(long, default_value_t = 0.02, value_parser = crate::ranges::open_unit, allow_negative_numbers = true)]
    pub beta_end: f64,
}

pub fn beta_schedule(a: &BetaArgs) -> Result<BetaSchedule> {
    let (beta_start, beta_end) = (a.beta_start, a.beta_end);
    Ok(match a.schedule {
        ScheduleName::Linear => BetaSchedule::Linear { beta_start, beta_end },
        ScheduleName::ScaledLinear => BetaSchedule::ScaledLinear { beta_start, beta_end },
        ScheduleName::Cosine => BetaSchedule::Cosine,
        ScheduleName::Sigmoid => BetaSchedule::Sigmoid { beta_start, beta_end },
        ScheduleName::Geometric => BetaSchedule::Geometric { geometric_beta: a.beta },
        other => bail!("--schedule {other} is continuous; it has no β_t table (use linear, scaled-linear, cosine, sigmoid or geometric)"),
    })
}

pub fn noise_dist(a: &BetaArgs) -> Result<NoiseDist> {
    Ok(match a.schedule {
        ScheduleName::Edm => NoiseDist::EdmLogNormal {
            p_mean: -1.2,
            p_std: 1.2,
            sigma_min: 0.002,
            sigma_max: 80.0,
        },
        ScheduleName::VeSde => NoiseDist::VeSde(VeSde::default()),
        ScheduleName::VpSde => NoiseDist::VpSde {
            sde: VpSde::default(),
            eps: 1e-3,
        },
        _ => {
            let beta = beta_schedule(a)?;
            // Validate now so a bad β fails before training starts.
            beta.betas(a.timesteps)?;
            NoiseDist::Discrete {
                beta,
                num_train_timesteps: a.timesteps,
            }
        }
    })
}

/// `toy:NAME` (or a bare toy name) draws `n_toy` points; anything else is a .csv/.npy path.
pub fn load_data(spec: &str, n_toy: usize, seed: u64) -> Result<(Table, String)> {
    // `toy:NAME` must name a toy set (the parse error lists them); a bare name may be one.
    let toy = match spec.strip_prefix("toy:") {
        Some(name) => Some(name.parse::<Toy2d>()?),
        None => spec.parse::<Toy2d>().ok(),
    };
    if let Some(toy) = toy {
        // The table (f64), its standardised copy and the f32 tensor: about 40 bytes a point.
        langevin::memory::check(
            &format!("--n-toy {n_toy}"),
            (n_toy as u64).saturating_mul(40),
            None,
            || "lower --n-toy".into(),
        )?;
        let mut rng = langevin::rng::seeded(seed);
        return Ok((toy.sample(n_toy, &mut rng), format!("toy:{toy}")));
    }
    let t = load_table(Path::new(spec))?;
    // Stored absolute, so `--resume` and `eval` find the file from any directory.
    let source = std::fs::canonicalize(spec).map_or(spec.to_string(), |p| p.display().to_string());
    Ok((t, source))
}

/// Write a table by extension: .csv, .npy, or .png (scatter plot of the first two columns).
pub fn write_table(path: &Path, t: &Table, title: &str) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => langevin::data::csv::save_csv(path, t)?,
        Some("npy") => langevin::data::npy::save_npy(path, &[t.rows, t.cols], &t.to_f32())?,
        Some("png") => {
            if t.cols < 2 {
                bail!(
                    "{}: a scatter plot needs at least 2 columns, the data has {}",
                    path.display(),
                    t.cols
                );
            }
            langevin::plot::scatter_png(
                path,
                title,
                &[langevin::plot::ScatterSeries {
                    label: title.into(),
                    points: t,
                    color: langevin::plot::PALETTE[1],
                }],
            )?
        }
        _ => bail!(
            "{}: unknown output type; expected .csv, .npy or .png",
            path.display()
        ),
    }
    Ok(())
}

/// Where the network runs and in what precision.
#[derive(ClapArgs, Clone, Debug)]
pub struct ComputeArgs {
    /// cpu, cuda or cuda:N (CUDA needs a build made with scripts/build-cuda.sh).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The network's precision; samplers, losses and optimiser state stay f32 (training in
    /// bf16/f16 is mixed precision with f32 master weights).
    /// f32, bf16 or f16. Default: f32, except that sampling an image model on CUDA uses bf16.
    #[arg(long)]
    pub dtype: Option<langevin::compute::Precision>,
}

impl ComputeArgs {
    /// The device, checked against the dtype.
    pub fn device(&self) -> Result<candle_core::Device> {
        let dev = langevin::compute::device(&self.device)?;
        langevin::compute::check(&dev, self.dtype())?;
        Ok(dev)
    }

    /// The chosen precision, f32 by default (training and tabular models).
    pub fn dtype(&self) -> candle_core::DType {
        self.dtype.unwrap_or_default().dtype()
    }

    /// Load a model directory onto the chosen device for sampling, in the chosen precision
    /// (by default bf16 for image models on CUDA, f32 otherwise).
    pub fn load_run(&self, dir: &Path) -> Result<langevin::model::Run> {
        Ok(langevin::model::Run::load_for_sampling(
            dir,
            &self.device()?,
            self.dtype.map(|p| p.dtype()),
        )?)
    }
}
