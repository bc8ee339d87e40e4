//! `langevin train` on images: a diffusers UNet2DModel fed by a background batch loader.
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use candle_core::{Device, Tensor};
use langevin::data::images::{BatchLoader, ImageSet};
use langevin::denoiser::{Cond, Denoiser, Guided, Prediction};
use langevin::model::{DataInfo, Diffusion, NetworkConfig, RunConfig, Spacing};
use langevin::sampler::{generate, Job, SamplerKind, SamplerOptions};
use langevin::train::loss::LossWeighting;
use langevin::train::Trainer;

use crate::common::noise_dist;
use crate::images::{load_images, unet_config};
use crate::train::{train_loop_with, Args};

pub fn run(a: &Args, spec: &str) -> Result<()> {
    let dev = a.compute.device()?;
    let mut trainer = if a.resume {
        let t = Trainer::resume(&a.out, Some(a.opt.steps), &dev)?;
        crate::run_dir::check_resume_steps(&a.out, t.step(), a.opt.steps)?;
        eprintln!(
            "resuming {} at step {} of {}",
            a.out.display(),
            t.step(),
            t.cfg.steps
        );
        t
    } else {
        let set = load_images(spec, &a.image, a.opt.seed)?;
        if let Some(f) = a.image.superres {
            if f < 2 || set.height % f != 0 || set.width % f != 0 {
                anyhow::bail!(
                    "--superres {f}: must be at least 2 and divide the {}×{} images",
                    set.height,
                    set.width
                );
            }
        }
        let unet = unet_config(&set, &a.image)?;
        let prediction: Prediction = a.opt.prediction.parse()?;
        let run = RunConfig {
            network: NetworkConfig::Unet(unet),
            diffusion: Diffusion {
                prediction,
                noise: noise_dist(&a.schedule)?,
            },
            data: DataInfo {
                source: crate::images::absolute_source(spec),
                class_names: set.class_names.clone(),
                image_size: Some((set.height, set.width)),
                superres_scale: a.image.superres,
                hflip: a.image.hflip,
                ..Default::default()
            },
        };
        crate::train::report_schedule(&run.diffusion)?;
        let mut cfg = a.opt.train_config();

        cfg.label_dropout = if a.image.class_cond {
            a.image.label_dropout
        } else {
            0.0
        };
        if let Some(gamma) = a.image.min_snr {
            cfg.loss_weighting = LossWeighting::MinSnr { gamma };
        }
        Trainer::new(run, cfg, &dev)?
    };
    trainer.set_compute_dtype(a.compute.dtype())?;
    let set = Arc::new(load_images(spec, &a.image, trainer.cfg.seed)?);
    let n_params: usize = trainer.model_parameters();
    eprintln!(
        "{} images {}×{}×{} in {} classes; UNet with {:.2}M parameters",
        set.n,
        set.channels,
        set.height,
        set.width,
        set.num_classes(),
        n_params as f64 / 1e6
    );
    let shape = [set.channels, set.height, set.width];
    langevin::memory::check_training(
        &format!(
            "a training batch of {} images {}×{}×{}",
            trainer.cfg.batch_size, set.channels, set.height, set.width
        ),
        &trainer.run.network,
        &shape,
        trainer.cfg.batch_size,
        " or shrink the images with --image-size",
    )?;
    let _lock = crate::run_dir::lock(&a.out, a.resume, a.overwrite, &trainer)?;
    let class_cond = trainer.run.network.is_class_conditional();
    let null = class_cond.then_some(set.num_classes() as u32);
    let mut loader = BatchLoader::resume(
        set.clone(),
        trainer.cfg.batch_size,
        a.image.hflip || trainer.run.data.hflip,
        trainer.cfg.seed,
        trainer.step(),
    )?;
    let every = a.image.sample_every;
    let out = a.out.clone();
    let mut step = |t: &mut Trainer| -> Result<_> {
        let (x, y) = loader.next()?;
        let r = t.train_step_batch(&x, if class_cond { Some(&y) } else { None }, null)?;
        if every > 0 && r.step % every == 0 {
            sample_grid(t, &set, &out.join(format!("samples-{:06}.png", r.step)))?;
        }
        Ok(r)
    };
    let secs = train_loop_with(
        &mut trainer,
        &a.out,
        a.opt.time_limit,
        &mut step,
        &mut |_| Ok(()),
    )?;
    sample_grid(&trainer, &set, &a.out.join("samples.png"))?;
    println!(
        "trained {} steps in {secs:.1} s; wrote {} (samples.png, loss.png)",
        trainer.step(),
        a.out.display()
    );
    Ok(())
}

/// A grid of EMA samples (DPM-Solver++ 2M, 20 steps): one row per class for class-conditional
/// models (guidance 2), else 8×8.
pub fn sample_grid(t: &Trainer, set: &ImageSet, path: &Path) -> Result<()> {
    let den = t.ema_denoiser()?;
    let k = set.num_classes();
    let class_cond = t.run.network.is_class_conditional();
    let (n, cols) = if class_cond { (k * 8, 8) } else { (64, 8) };
    let sigmas = t
        .run
        .diffusion
        .sigmas(20, Spacing::Exponential, (None, None))?;
    let opts = SamplerOptions::default();
    let job = Job {
        kind: SamplerKind::Dpmpp2m,
        opts: &opts,
        sigmas: &sigmas,
        n,
        seed: 0,
        batch_size: 64,
        sample_shape: vec![set.channels, set.height, set.width],
        sigma_data: 1.0,
        init_noise: None,
    };
    // SR3 models upscale low-resolution versions of the first training images.
    let image = match t.run.data.superres_scale {
        Some(f) => {
            let per = set.channels * set.height * set.width;
            let m = n.min(set.n);
            let hi = Tensor::from_vec(
                set.images[..m * per].to_vec(),
                (m, set.channels, set.height, set.width),
                &Device::Cpu,
            )?;
            let lo = langevin::apps::superres::low_resolution(&hi, f)?;
            Some(if m < n {
                lo.repeat((n.div_ceil(m), 1, 1, 1))?.narrow(0, 0, n)?
            } else {
                lo
            })
        }
        None => None,
    };
    let x = if class_cond {
        let labels: Vec<u32> = (0..n).map(|i| (i / cols) as u32).collect();
        let cond = Cond {
            labels: Some(Tensor::new(labels.as_slice(), &Device::Cpu)?),
            image: image.clone(),
        };
        let g = Guided {
            inner: &den,
            null_label: k as u32,
            scale: 2.0,
        };
        generate(&g as &dyn Denoiser, &cond, &job, &mut |_| {})?.0
    } else {
        let cond = Cond {
            labels: None,
            image,
        };
        generate(&den as &dyn Denoiser, &cond, &job, &mut |_| {})?.0
    };
    let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
    langevin::data::images::save_grid_png(path, &v, set.channels, set.height, set.width, cols)?;
    Ok(())
}
