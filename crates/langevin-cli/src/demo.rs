//! `langevin demo`: the whole pipeline on a built-in 2-D set in about a minute.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use clap::Args as ClapArgs;
use langevin::api::{DataInput, TrainOptions};
use langevin::data::{toy::Toy2d, Standardizer};
use langevin::metrics::{mmd_rbf, sliced_wasserstein};
use langevin::model::Run;
use langevin::plot::{scatter_png, ScatterSeries};

use langevin::api::sample::draw_table;
use langevin::api::SampleOptions;

use crate::progress::Bar;

#[derive(ClapArgs)]
pub struct Args {
    /// Built-in data set: swiss-roll, two-moons, 8-gaussians, checkerboard, rings.
    #[arg(long, default_value = "swiss-roll")]
    pub data: String,
    /// Training steps.
    #[arg(long, default_value_t = 3000, value_parser = crate::ranges::steps, allow_negative_numbers = true)]
    pub steps: u64,
    /// Samples drawn per sampler (and size of each reference draw).
    #[arg(long, default_value_t = 2000, value_parser = crate::ranges::count2, allow_negative_numbers = true)]
    pub n: usize,
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub seed: u64,
    /// Where the run directory and the plot go.
    #[arg(long, default_value = "langevin-demo")]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let start = Instant::now();
    let toy: Toy2d = a.data.parse()?;
    let mut rng = langevin::rng::seeded(a.seed);
    let train = toy.sample(20_000, &mut rng);
    let std = Standardizer::fit(&train);
    let run_dir = a.out.join("model");
    let opts = TrainOptions {
        out: run_dir.clone(),
        // The demo's own folder: a rerun replaces it.
        overwrite: true,
        n_toy: 20_000,
        steps: Some(a.steps),
        seed: a.seed,
        checkpoint_every: 0,
        ..Default::default()
    };
    eprintln!("training an MLP on {toy} ({} steps)…", a.steps);
    // The same 20,000 points as `train` above (drawn from the same seed).
    let summary = langevin::api::train(
        &opts,
        Some(DataInput::Spec(format!("toy:{toy}"))),
        &Bar::new(),
    )?;
    eprintln!("trained in {:.1} s", summary.secs);

    let run = Run::load(&run_dir, &Device::Cpu)?;
    // Two independent draws of the true distribution: the reference and the noise floor.
    let reference = toy.sample(a.n, &mut rng);
    let floor_draw = toy.sample(a.n, &mut rng);
    let z = |t: &langevin::data::Table| std.transform(t).expect("same columns");
    let floor_swd = sliced_wasserstein(&z(&reference), &z(&floor_draw), 256, 1);
    let floor_mmd = mmd_rbf(&z(&reference), &z(&floor_draw), None);

    let samplers = [
        ("heun", 25, "Heun (ODE), 49 NFE"),
        ("ddim", 50, "DDIM η=0, 50 NFE"),
        ("langevin", 10, "annealed Langevin, 10×10 NFE"),
    ];
    let mut series_data = vec![];
    println!(
        "{:<32} {:>8} {:>8} {:>10} {:>8}",
        "sampler", "SWD", "×floor", "MMD²", "time s"
    );
    println!(
        "{:<32} {:>8.4} {:>8} {:>10.2e} {:>8}",
        "noise floor (data vs data)", floor_swd, "1.00", floor_mmd, "-"
    );
    for (name, steps, label) in samplers {
        let s = SampleOptions {
            sampler: name.parse()?,
            steps,
            // Annealed Langevin's last levels barely move at α = σ²; stop at 0.02.
            sigma_min: (name == "langevin").then_some(0.02),
            batch_size: a.n,
            ..Default::default()
        };
        let t0 = Instant::now();
        let (samples, _) = draw_table(&run, &s, a.n, a.seed, None, &Bar::new())?;
        let dt = t0.elapsed().as_secs_f64();
        let swd = sliced_wasserstein(&z(&reference), &z(&samples), 256, 1);
        let mmd = mmd_rbf(&z(&reference), &z(&samples), None);
        println!(
            "{label:<32} {swd:>8.4} {:>8.2} {mmd:>10.2e} {dt:>8.1}",
            swd / floor_swd
        );
        series_data.push((label, samples));
    }
    let mut series = vec![ScatterSeries {
        label: "data".into(),
        points: &reference,
        color: langevin::plot::PALETTE[0],
    }];
    let colors = [
        langevin::plot::PALETTE[1],
        langevin::plot::PALETTE[2],
        langevin::plot::PALETTE[3],
    ];
    for ((label, t), c) in series_data.iter().zip(colors) {
        series.push(ScatterSeries {
            label: (*label).into(),
            points: t,
            color: c,
        });
    }
    let plot = a.out.join("demo.png");
    scatter_png(&plot, &format!("{toy}: data and samples"), &series)?;
    println!(
        "wrote {} and the model in {}",
        plot.display(),
        run_dir.display()
    );
    println!(
        "demo wall time: {:.1} s ({} threads)",
        start.elapsed().as_secs_f64(),
        langevin::threads::pool()
    );
    Ok(())
}
