//! `langevin eval`: score samplers against held-out data (SWD and MMD² with their noise floor),
//! over a grid of network-evaluation budgets; optionally write a Markdown table and a plot.
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args as ClapArgs;
use langevin::data::{toy::Toy2d, Table};
use langevin::metrics::{median_bandwidth, mmd_rbf, sliced_wasserstein};
use langevin::model::Run;
use langevin::plot::{line_png, LineSeries};
use langevin::sampler::SamplerKind;

use crate::sample::{draw, SamplerArgs};

#[derive(ClapArgs)]
pub struct Args {
    /// Run directory written by `langevin train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Reference data (default: the model's training source). A toy set is drawn afresh; a
    /// file gives two disjoint random subsets (reference and noise floor).
    #[arg(long)]
    pub data: Option<String>,
    /// Samplers to compare (comma-separated; default: the one given by --sampler).
    #[arg(long, value_delimiter = ',')]
    pub samplers: Vec<SamplerKind>,
    /// Network-evaluation budgets (comma-separated; default: --steps of --sampler).
    #[arg(long, value_delimiter = ',', value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub nfe: Vec<usize>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub compute: crate::common::ComputeArgs,
    /// Samples drawn per network batch (fid/kid; raise it on a GPU).
    #[arg(long, default_value_t = 64, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// Samples per evaluation (and size of each reference draw).
    #[arg(long, default_value_t = 2000, value_parser = crate::ranges::count2, allow_negative_numbers = true)]
    pub n: usize,
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub seed: u64,
    /// Write the results as a Markdown table.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Plot SWD against NFE.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// What to measure: swd (sample quality, with MMD²) or nll (negative log-likelihood of the
    /// reference data in bits/dim, data units, through the probability-flow ODE), or for image
    /// models fid / kid (Inception-v3 features of --n samples vs --n images of --data).
    #[arg(long, value_enum, default_value_t = Metric::Swd)]
    pub metric: Metric,
}

/// What `langevin eval` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    Swd,
    Nll,
    Fid,
    Kid,
}

/// Reference and floor draws of the true distribution, in data units.
fn references(spec: &str, n: usize, seed: u64) -> Result<(Table, Table)> {
    let name = spec.strip_prefix("toy:").unwrap_or(spec);
    if let Ok(toy) = name.parse::<Toy2d>() {
        let mut rng = langevin::rng::seeded(seed.wrapping_add(0x5eed_0000));
        return Ok((toy.sample(n, &mut rng), toy.sample(n, &mut rng)));
    }
    let t = langevin::data::load_table(spec)?;
    if t.rows < 2 * n {
        bail!(
            "{spec}: {} rows, need at least 2·n = {} for a reference and a noise floor; lower --n",
            t.rows,
            2 * n
        );
    }
    let mut rng = langevin::rng::seeded(seed.wrapping_add(0x5eed_0000));
    let (a, b) = t.split(0.5, &mut rng)?;
    let idx: Vec<usize> = (0..n).collect();
    Ok((a.select_rows(&idx), b.select_rows(&idx)))
}

pub fn run(a: Args) -> Result<()> {
    let run = a.compute.load_run(&a.model)?;
    let info = run.config.data.clone();
    let spec = a.data.clone().unwrap_or(info.source.clone());
    if let Metric::Fid | Metric::Kid = a.metric {
        let dev = a.compute.device()?;
        let kid = a.metric == Metric::Kid;
        return crate::fid::eval_model(
            &run,
            &spec,
            &a.sampler,
            a.n,
            a.seed,
            kid,
            a.batch_size,
            &dev,
        );
    }
    // Two reference draws, their standardised copies and the samples, in f64.
    let per: u64 = run
        .config
        .sample_shape()?
        .iter()
        .map(|&d| d as u64)
        .product::<u64>()
        * 8
        * 6;
    langevin::memory::check(
        &format!("--n {}", a.n),
        per.saturating_mul(a.n as u64),
        None,
        || "lower --n".into(),
    )?;
    let (reference, floor_draw) = references(&spec, a.n, a.seed)?;
    let std = info.standardizer.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: eval scores tabular models; this one has no column statistics",
            a.model.display()
        )
    })?;
    let z = |t: &Table| std.transform(t);
    let (r, f) = (z(&reference)?, z(&floor_draw)?);
    if a.metric == Metric::Nll {
        return nll(&run, &r, &std, &spec, a.seed);
    }
    let h = median_bandwidth(&r, &f);
    let floor_swd = sliced_wasserstein(&r, &f, 256, 1);
    let floor_mmd = mmd_rbf(&r, &f, Some(h));
    let samplers = if a.samplers.is_empty() {
        vec![a.sampler.kind()?]
    } else {
        a.samplers.clone()
    };
    let budgets = if a.nfe.is_empty() {
        vec![a.sampler.steps]
    } else {
        a.nfe.clone()
    };

    let mut md = String::new();
    writeln!(md, "| sampler | levels | NFE | SWD | SWD / floor | MMD² |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    writeln!(
        md,
        "| noise floor (data vs data) | | | {floor_swd:.4} | 1.00 | {floor_mmd:.2e} |"
    )?;
    println!(
        "{:<14} {:>6} {:>5} {:>8} {:>7} {:>10}",
        "sampler", "levels", "NFE", "SWD", "×floor", "MMD²"
    );
    println!(
        "{:<14} {:>6} {:>5} {floor_swd:>8.4} {:>7} {floor_mmd:>10.2e}",
        "noise floor", "", "", "1.00"
    );
    let mut series = vec![];
    for &kind in &samplers {
        let mut s = a.sampler.clone();
        s.sampler = langevin::api::SamplerChoice::Ours(kind);
        let mut pts = vec![];
        for &nfe in &budgets {
            s.steps = kind.levels_for_nfe(nfe, &s.options());
            let (samples, used) = match draw(&run, &s, a.n, a.seed, a.n, None) {
                Ok(v) => v,
                Err(e) => {
                    println!("{:<14} {:>6} {:>5} failed: {e}", kind.name(), s.steps, nfe);
                    writeln!(
                        md,
                        "| {} | {} | {nfe} | failed: {e} | | |",
                        kind.name(),
                        s.steps
                    )?;
                    continue;
                }
            };
            let zs = z(&samples)?;
            let swd = sliced_wasserstein(&r, &zs, 256, 1);
            let mmd = mmd_rbf(&r, &zs, Some(h));
            println!(
                "{:<14} {:>6} {used:>5} {swd:>8.4} {:>7.2} {mmd:>10.2e}",
                kind.name(),
                s.steps,
                swd / floor_swd
            );
            writeln!(
                md,
                "| {} | {} | {used} | {swd:.4} | {:.2} | {mmd:.2e} |",
                kind.name(),
                s.steps,
                swd / floor_swd
            )?;
            pts.push((used as f64, swd / floor_swd));
        }
        series.push(LineSeries {
            label: kind.name().into(),
            points: pts,
        });
    }
    if let Some(p) = &a.markdown {
        langevin::io::write_atomic_bytes(p, md.as_bytes())?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.plot {
        line_png(
            p,
            &format!("SWD / noise floor against NFE ({spec}, n = {})", a.n),
            "network evaluations",
            "SWD / floor",
            &series,
            true,
        )?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// Bits/dim of the (standardised) reference rows, mapped to data units: −log p_data(x) =
/// −log p_z(z) + Σ_j ln std_j for z = (x − mean)/std. Exact divergence (d ≤ 8 columns) or
/// Hutchinson.
fn nll(
    run: &Run,
    r: &Table,
    std: &langevin::data::Standardizer,
    spec: &str,
    seed: u64,
) -> Result<()> {
    use langevin::metrics::nll::{nll_bits_per_dim, Divergence, NllOptions};
    let x = r.to_tensor(&Device::Cpu)?;
    let (lo, hi) = run.config.diffusion.sigma_range()?;
    let opts = NllOptions {
        divergence: if r.cols <= 8 {
            Divergence::Exact
        } else {
            NllOptions::default().divergence
        },
        ..Default::default()
    };
    let mut noise = langevin::rng::NoiseSource::consecutive(seed, r.rows);
    let bpd = nll_bits_per_dim(
        &run.denoiser,
        &langevin::denoiser::Cond::default(),
        &x,
        lo,
        hi,
        1.0,
        &opts,
        &mut noise,
    )?;
    let shift =
        std.std.iter().map(|s| s.ln()).sum::<f64>() / (r.cols as f64 * std::f64::consts::LN_2);
    let n = bpd.len() as f64;
    let mean = bpd.iter().sum::<f64>() / n + shift;
    let se =
        (bpd.iter().map(|b| (b + shift - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt();
    println!("NLL of {} rows of {spec}: {mean:.4} ± {se:.4} bits/dim (data units; σ ∈ [{lo:.3e}, {hi:.3e}])", r.rows);
    Ok(())
}
