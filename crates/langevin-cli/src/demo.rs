//! `langevin demo`: the whole pipeline on a built-in 2-D set in about a minute.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use clap::Args as ClapArgs;
use langevin::data::{toy::Toy2d, Standardizer};
use langevin::metrics::{mmd_rbf, sliced_wasserstein};
use langevin::model::Run;
use langevin::plot::{scatter_png, ScatterSeries};
use langevin::train::TrainData;

use crate::common::{BetaArgs, ScheduleName};
use crate::sample::{draw, SamplerArgs};
use crate::train::{new_trainer, to_tensor, train_loop, NetArgs, OptArgs};

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
    let sched = BetaArgs {
        schedule: ScheduleName::Linear,
        timesteps: 1000,
        beta: 0.5,
        beta_start: 1e-4,
        beta_end: 0.02,
    };
    let opt = OptArgs {
        prediction: "eps".into(),
        steps: a.steps,
        batch_size: 512,
        lr: 2e-3,
        warmup: 100,
        weight_decay: 0.0,
        grad_clip: 1.0,
        ema_decay: 0.995,
        seed: a.seed,
        checkpoint_every: 0,
        time_limit: None,
    };
    let net = NetArgs {
        hidden: 128,
        blocks: 3,
        temb_dim: 64,
    };
    let mut trainer = new_trainer(
        format!("toy:{toy}"),
        &train,
        &std,
        &sched,
        &opt,
        &net,
        &Device::Cpu,
    )?;
    let run_dir = a.out.join("model");
    eprintln!("training an MLP on {toy} ({} steps)…", a.steps);
    let data = TrainData::unlabelled(to_tensor(&std.transform(&train)?)?);
    let secs = train_loop(&mut trainer, &data, &run_dir, None)?;
    eprintln!("trained in {secs:.1} s");

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
        let s = SamplerArgs {
            sampler: name.into(),
            steps,
            schedule: "auto".into(),
            eta: None,
            churn: 0.0,
            langevin_steps: 10,
            langevin_eps: None,
            snr: 0.16,
            corrector_steps: 1,
            ve_prior: false,
            // Annealed Langevin's last levels barely move at α = σ²; stop at 0.02.
            sigma_min: (name == "langevin").then_some(0.02),
            sigma_max: None,
        };
        let t0 = Instant::now();
        let (samples, _) = draw(&run, &s, a.n, a.seed, a.n, None)?;
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
