//! The `langevin` command line: a thin layer over the library. Errors print as one line and
//! exit with code 2.
mod apps;
mod augment;
mod augment_eval;
mod common;
mod demo;
mod eval;
mod fid;
mod images;
mod progress;
mod ranges;
mod run_dir;
mod sample;
mod schedule;
mod serve;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "langevin",
    version,
    about = "Diffusion models in Rust: train, sample, inspect schedules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CPU threads (default: RAYON_NUM_THREADS, else the cores this process may use); fewer
    /// are used while other processes keep the cores busy.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

#[derive(Subcommand)]
enum Command {
    /// Train on a built-in 2-D set, sample with annealed Langevin and an ODE sampler, plot, score.
    Demo(demo::Args),
    /// Train a model on a data set and write a run directory.
    Train(train::Args),
    /// Draw samples from a trained model.
    Sample(sample::Args),
    /// Fill the white region of a mask in an image (projection at every sampler step).
    Inpaint(apps::InpaintArgs),
    /// Image-to-image / style transfer (SDEdit): noise the input to --strength and denoise.
    Img2img(apps::Img2ImgArgs),
    /// Super-resolution: upscale a low-resolution image (--zero-shot: ILVR with an
    /// unconditional model).
    Upscale(apps::UpscaleArgs),
    /// Write N labelled synthetic samples (class folders of PNGs, or CSV rows), resumably.
    Augment(augment::Args),
    /// Train a small classifier on a few real Fashion-MNIST images per class, with and without
    /// synthetic ones, and report both test accuracies.
    AugmentEval(augment_eval::Args),
    /// Score samplers against held-out data (SWD, MMD² and their noise floor) over NFE budgets.
    Eval(eval::Args),
    /// Convert the FID Inception-v3 weights once into ~/.cache/langevin (needed by fid/kid).
    FidSetup(fid::SetupArgs),
    /// FID (and KID) between two image sets, e.g. the Fashion-MNIST train-vs-test floor.
    Fid(fid::Args),
    /// Print or plot a noise schedule (β, ᾱ, σ, log-SNR).
    Schedule(schedule::Args),
    /// A local web studio: sample, inpaint with a painted mask, upscale, image-to-image.
    Serve(serve::Args),
}

fn main() -> ExitCode {
    langevin::kernels::tune_allocator();
    let cli = Cli::parse();
    langevin::threads::setup(cli.threads.map(usize::from));
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Train(a) => train::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Schedule(a) => schedule::run(a),
        Command::Eval(a) => eval::run(a),
        Command::FidSetup(a) => fid::run_setup(a),
        Command::Fid(a) => fid::run(a),
        Command::Inpaint(a) => apps::run_inpaint(a),
        Command::Augment(a) => augment::run(a),
        Command::AugmentEval(a) => augment_eval::run(a),
        Command::Upscale(a) => apps::run_upscale(a),
        Command::Img2img(a) => apps::run_img2img(a),
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(i) = e.downcast_ref::<run_dir::Interrupted>() {
                return ExitCode::from((128 + i.signal) as u8);
            }
            // A cause already printed by its wrapper (as in `path: OS error`) is not repeated.
            let mut chain: Vec<String> = vec![];
            for c in e.chain().map(|c| c.to_string()) {
                if !chain.last().is_some_and(|l| l.ends_with(&c)) {
                    chain.push(c);
                }
            }
            eprintln!("error: {}", chain.join(": "));
            ExitCode::from(2)
        }
    }
}
