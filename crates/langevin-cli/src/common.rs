//! Argument groups and helpers shared by subcommands.
use std::path::Path;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use langevin::api::ScheduleOptions;
use langevin::data::Table;
use langevin::schedule::BetaSchedule;

pub use langevin::api::ScheduleName;

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

impl BetaArgs {
    pub fn options(&self) -> ScheduleOptions {
        ScheduleOptions {
            kind: self.schedule,
            timesteps: self.timesteps,
            beta: self.beta,
            beta_start: self.beta_start,
            beta_end: self.beta_end,
        }
    }
}

pub fn beta_schedule(a: &BetaArgs) -> Result<BetaSchedule> {
    Ok(a.options().beta_schedule()?)
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
