//! Training on images: a diffusers UNet2DModel fed by a background batch loader, with sample
//! grids of the EMA weights (the preview sampler).
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::source::{absolute_source, load_images};
use super::train::{
    image_summary, report_schedule, train_loop, ImageData, TrainOptions, TrainSummary,
};
use super::{run_folder, Observer};
use crate::data::images::{BatchLoader, ImageSet};
use crate::denoiser::{Cond, Denoiser, Guided};
use crate::model::{DataInfo, Diffusion, NetworkConfig, RunConfig, Spacing};
use crate::nn::unet::config::{DownBlockType, SampleSize, UpBlockType};
use crate::nn::unet::UNet2DConfig;
use crate::sampler::{generate, Job, SamplerKind, SamplerOptions};
use crate::train::loss::LossWeighting;
use crate::train::Trainer;
use crate::{Error, Result};

pub(super) fn train_images(
    opts: &TrainOptions,
    data: ImageData,
    obs: &dyn Observer,
) -> Result<TrainSummary> {
    let dev = &opts.device;
    let a = &opts.image;
    let (mut trainer, set) = if opts.resume {
        let t = Trainer::resume(&opts.out, opts.steps, dev)?;
        run_folder::check_resume_steps(&opts.out, t.step(), t.cfg.steps)?;
        obs.note(&format!(
            "resuming {} at step {} of {}",
            opts.out.display(),
            t.step(),
            t.cfg.steps
        ));
        let set = match data {
            ImageData::Spec(s) => load_images(&s, &a.load, t.cfg.seed)?,
            ImageData::Set(set) => set,
        };
        (t, set)
    } else {
        let (set, source) = match data {
            ImageData::Spec(s) => (load_images(&s, &a.load, opts.seed)?, absolute_source(&s)),
            ImageData::Set(set) => (set, super::train::IN_MEMORY.to_string()),
        };
        set.validate()?;
        if let Some(f) = a.superres {
            if f < 2 || set.height % f != 0 || set.width % f != 0 {
                return Err(Error::config(
                    format!("--superres {f}"),
                    format!(
                        "must be at least 2 and divide the {}×{} images",
                        set.height, set.width
                    ),
                ));
            }
        }
        let unet = unet_config(&set, opts)?;
        let run = RunConfig {
            network: NetworkConfig::Unet(unet),
            diffusion: Diffusion {
                prediction: opts.prediction,
                noise: opts.schedule.noise_dist()?,
            },
            data: DataInfo {
                source,
                class_names: set.class_names.clone(),
                image_size: Some((set.height, set.width)),
                superres_scale: a.superres,
                hflip: a.hflip,
                ..Default::default()
            },
        };
        report_schedule(&run.diffusion, obs)?;
        let mut cfg = opts.train_config();
        cfg.label_dropout = if a.class_cond { a.label_dropout } else { 0.0 };
        if let Some(gamma) = a.min_snr {
            cfg.loss_weighting = LossWeighting::MinSnr { gamma };
        }
        (Trainer::new(run, cfg, dev)?, set)
    };
    trainer.set_compute_dtype(opts.dtype)?;
    let set = Arc::new(set);
    obs.note(&format!(
        "{} images {}×{}×{} in {} classes; UNet with {:.2}M parameters",
        set.n,
        set.channels,
        set.height,
        set.width,
        set.num_classes(),
        trainer.model_parameters() as f64 / 1e6
    ));
    let shape = [set.channels, set.height, set.width];
    crate::memory::check_training(
        &format!(
            "a training batch of {} images {}×{}×{}",
            trainer.cfg.batch_size, set.channels, set.height, set.width
        ),
        &trainer.run.network,
        &shape,
        trainer.cfg.batch_size,
        " or shrink the images with --image-size",
    )?;
    let _lock = run_folder::lock(&opts.out, opts.resume, opts.overwrite, &trainer, obs)?;
    let class_cond = trainer.run.network.is_class_conditional();
    let null = class_cond.then_some(super::classes::training_null_label(set.num_classes()));
    let mut loader = BatchLoader::resume(
        set.clone(),
        trainer.cfg.batch_size,
        a.hflip || trainer.run.data.hflip,
        trainer.cfg.seed,
        trainer.step(),
    )?;
    let every = a.sample_every;
    let out = opts.out.clone();
    let mut step = |t: &mut Trainer| {
        let (x, y) = loader.next()?;
        let r = t.train_step_batch(&x, if class_cond { Some(&y) } else { None }, null)?;
        if every > 0 && r.step % every == 0 {
            sample_grid(t, &set, &out.join(format!("samples-{:06}.png", r.step)))?;
        }
        Ok(r)
    };
    let secs = train_loop(&mut trainer, &opts.out, opts.time_limit, &mut step, obs)?;
    sample_grid(&trainer, &set, &opts.out.join("samples.png"))?;
    Ok(image_summary(&trainer, secs))
}

/// A UNet2DModel config for `set` with the options' widths, attention and classes.
pub fn unet_config(set: &ImageSet, opts: &TrainOptions) -> Result<UNet2DConfig> {
    let a = &opts.image;
    let levels = a.channels.len();
    if levels == 0 {
        return Err(Error::config("channels", "give at least one UNet width"));
    }
    let div = 1usize << (levels - 1);
    if !set.height.is_multiple_of(div) || !set.width.is_multiple_of(div) {
        return Err(Error::config(
            "channels",
            format!(
                "{}×{} images do not halve {} times; use fewer --channels levels or --image-size a multiple of {div}",
                set.height,
                set.width,
                levels - 1
            ),
        ));
    }
    let down = (0..levels)
        .map(|i| {
            if a.attention && i == levels - 1 {
                DownBlockType::AttnDownBlock2D
            } else {
                DownBlockType::DownBlock2D
            }
        })
        .collect();
    let up = (0..levels)
        .map(|i| {
            if a.attention && i == 0 {
                UpBlockType::AttnUpBlock2D
            } else {
                UpBlockType::UpBlock2D
            }
        })
        .collect();
    let cfg = UNet2DConfig {
        sample_size: Some(SampleSize::Square(set.height)),
        in_channels: if a.superres.is_some() {
            2 * set.channels
        } else {
            set.channels
        },
        out_channels: set.channels,
        down_block_types: down,
        up_block_types: up,
        block_out_channels: a.channels.clone(),
        layers_per_block: a.layers_per_block,
        norm_num_groups: a.norm_groups,
        add_attention: a.attention,
        num_class_embeds: a.class_cond.then_some(set.num_classes() + 1),
        ..Default::default()
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The preview: a grid of EMA samples (DPM-Solver++ 2M, 20 steps), one row per class with
/// guidance 2 for class-conditional models, else 8×8.
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
            let lo = crate::data::images::low_resolution(&hi, f)?;
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
            null_label: super::classes::training_null_label(k),
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
    crate::data::images::save_grid_png(path, &v, set.channels, set.height, set.width, cols)?;
    Ok(())
}
