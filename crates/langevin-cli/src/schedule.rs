//! `langevin schedule`: print a schedule as JSON or CSV and plot ᾱ, σ and log-SNR.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use langevin::plot::{line_png, LineSeries};
use langevin::schedule::Schedule;

use crate::common::{beta_schedule, BetaArgs};

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    pub beta: BetaArgs,
    /// A diffusers scheduler_config.json: print the timesteps (and sigmas) the scheduler holds
    /// after set_timesteps(--steps), as JSON.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Inference steps for --config.
    #[arg(long, default_value_t = 50, value_parser = crate::ranges::levels, allow_negative_numbers = true)]
    pub steps: usize,
    /// Print the schedule as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the schedule as CSV.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Plot ᾱ, σ and log-SNR to this PNG (for the geometric schedule, several β side by side).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// With --plot and the geometric schedule: the β values to compare.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.1,0.5,0.9,0.99", value_parser = crate::ranges::open_unit, allow_negative_numbers = true)]
    pub compare_betas: Vec<f64>,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(path) = &a.config {
        let cfg = langevin::scheduler::SchedulerConfig::from_file(path)?;
        let v = langevin::scheduler::schedule_json(&cfg, a.steps)?;
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let t = a.beta.timesteps;
    let sched = beta_schedule(&a.beta)?.build(t)?;
    if let Some(w) = sched.terminal_warning() {
        eprintln!("warning: {w}");
    }
    if a.json {
        let v = serde_json::json!({
            "schedule": a.beta.schedule.to_string(),
            "num_train_timesteps": t,
            "terminal_alpha_bar": sched.terminal_alpha_bar(),
            "terminal_snr": sched.terminal_snr(),
            "sigma_min": sched.sigma_min(),
            "sigma_max": sched.sigma_max(),
            "betas": sched.betas,
            "alphas_cumprod": sched.alphas_cumprod,
            "sigmas": sched.sigmas,
            "log_snr": sched.log_snr(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if a.csv {
        println!("t,beta,alpha_bar,sigma,log_snr");
        let ls = sched.log_snr();
        for i in 0..t {
            println!(
                "{i},{:e},{:e},{:e},{:e}",
                sched.betas[i], sched.alphas_cumprod[i], sched.sigmas[i], ls[i]
            );
        }
    } else {
        println!(
            "{} schedule, T = {t}: ᾱ_T = {:.4e}, terminal SNR = {:.4e}, σ ∈ [{:.4e}, {:.4e}]",
            a.beta.schedule,
            sched.terminal_alpha_bar(),
            sched.terminal_snr(),
            sched.sigma_min(),
            sched.sigma_max()
        );
    }
    if let Some(path) = &a.plot {
        let mut curves: Vec<(String, Schedule)> = vec![];
        if a.beta.schedule == crate::common::ScheduleName::Geometric {
            for &b in &a.compare_betas {
                let mut ba = a.beta.clone();
                ba.beta = b;
                curves.push((format!("geometric β={b}"), beta_schedule(&ba)?.build(t)?));
            }
        } else {
            curves.push((a.beta.schedule.to_string(), sched.clone()));
        }
        let series = |f: &dyn Fn(&Schedule) -> Vec<f64>| -> Vec<LineSeries> {
            curves
                .iter()
                .map(|(label, s)| LineSeries {
                    label: label.clone(),
                    points: f(s)
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (i as f64, v))
                        .collect(),
                })
                .collect()
        };
        let stem = path.with_extension("");
        let name = |suffix: &str| PathBuf::from(format!("{}{suffix}.png", stem.display()));
        line_png(
            &name(""),
            "log-SNR = ln(ᾱ/(1-ᾱ))",
            "t",
            "log-SNR",
            &series(&|s| s.log_snr()),
            false,
        )?;
        line_png(
            &name("-alpha-bar"),
            "ᾱ_t",
            "t",
            "ᾱ",
            &series(&|s| s.alphas_cumprod.clone()),
            false,
        )?;
        line_png(
            &name("-sigma"),
            "σ_t = √((1-ᾱ)/ᾱ)",
            "t",
            "σ",
            &series(&|s| s.sigmas.clone()),
            true,
        )?;
        eprintln!(
            "wrote {}, {}, {}",
            name("").display(),
            name("-alpha-bar").display(),
            name("-sigma").display()
        );
    }
    Ok(())
}
