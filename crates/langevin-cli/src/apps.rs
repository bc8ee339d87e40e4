//! `langevin inpaint`, `img2img` and `upscale`: read the images, call the library
//! (`langevin::api::apps`), write the result.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args as ClapArgs;
use langevin::api::apps::{image_shape, img2img_image, inpaint_image, upscale_image};
use langevin::apps::inpaint::Resample;
use langevin::data::images::pixels::{composite_on_white, push_planar};
use langevin::data::images::Channels;

use crate::progress::Bar;
use crate::sample::{write_images, SamplerArgs};

#[derive(ClapArgs)]
pub struct InpaintArgs {
    /// Image model run directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The image (PNG/JPEG) of the model's size.
    #[arg(long)]
    pub image: PathBuf,
    /// Mask of the same size: white = region to fill, black = keep.
    #[arg(long)]
    pub mask: PathBuf,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub compute: crate::common::ComputeArgs,
    /// RePaint: passes through every stretch of `--jump` steps (1 = projection only; RePaint
    /// used 10). Multiplies the network evaluations by about this much.
    #[arg(long, default_value_t = 1, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub resample: usize,
    /// RePaint: length of the stretch that is re-noised and denoised again.
    #[arg(long, default_value_t = 10, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub jump: usize,
    /// Condition on this class (class-conditional models), with --guidance.
    #[arg(long, value_parser = crate::ranges::label, allow_negative_numbers = true)]
    pub class: Option<u32>,
    #[arg(long, default_value_t = 1.0, value_parser = crate::ranges::non_negative, allow_negative_numbers = true)]
    pub guidance: f64,
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub seed: u64,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(ClapArgs)]
pub struct UpscaleArgs {
    /// Image model run directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The low-resolution image; the scale is the model's size over the image's.
    #[arg(long)]
    pub image: PathBuf,
    /// Use an unconditional model, keeping the output's low frequencies equal to the input's
    /// at every step (ILVR). Without it the model must be an SR3 model (train --superres F).
    #[arg(long)]
    pub zero_shot: bool,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub compute: crate::common::ComputeArgs,
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub seed: u64,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the output [1, C, H, W] in [-1, 1] as .npy.
    #[arg(long)]
    pub npy: Option<PathBuf>,
}

#[derive(ClapArgs)]
pub struct Img2ImgArgs {
    /// Image model run directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The input image (PNG/JPEG) of the model's size.
    #[arg(long)]
    pub image: PathBuf,
    /// How far to noise the input: 0 returns it, 1 ignores it (SDEdit).
    #[arg(long, default_value_t = 0.6, value_parser = crate::ranges::unit, allow_negative_numbers = true)]
    pub strength: f64,
    /// Steer towards this class (class-conditional models), with --guidance.
    #[arg(long, value_parser = crate::ranges::label, allow_negative_numbers = true)]
    pub class: Option<u32>,
    #[arg(long, default_value_t = 1.0, value_parser = crate::ranges::non_negative, allow_negative_numbers = true)]
    pub guidance: f64,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub compute: crate::common::ComputeArgs,
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub seed: u64,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

/// Read `path` as [1, C, h, w] in [-1, 1] (grey for C = 1, RGB for C = 3), any size.
pub(crate) fn read_any_image(path: &Path, c: usize) -> Result<Tensor> {
    let img =
        image::open(path).with_context(|| format!("{}: cannot read the image", path.display()))?;
    let (h, w) = (img.height() as usize, img.width() as usize);
    let mut v = vec![];
    push_planar(
        &composite_on_white(&img),
        if c == 1 {
            Channels::Grey
        } else {
            Channels::Rgb
        },
        &mut v,
    );
    Ok(Tensor::from_vec(v, (1, c, h, w), &Device::Cpu)?)
}

/// Read `path` as [1, C, H, W] in [-1, 1], checking it against the model's image shape.
fn read_image(path: &Path, shape: &[usize]) -> Result<Tensor> {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let x = read_any_image(path, c)?;
    let (_, _, ih, iw) = x.dims4()?;
    if (ih, iw) != (h, w) {
        bail!(
            "{}: image is {ih}×{iw}, the model takes {h}×{w}",
            path.display()
        );
    }
    Ok(x)
}

/// Write one image [1, C, H, W] in [-1, 1] as a plain PNG (no grid border), and optionally
/// as .npy.
fn write_single(x: &Tensor, out: &Path, npy: Option<&Path>) -> Result<()> {
    let (_, c, h, w) = x.dims4()?;
    let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
    langevin::data::images::save_png(out, &v, c, h, w)?;
    println!("wrote {}", out.display());
    if let Some(p) = npy {
        write_images(x, None, None, Some(p))?;
    }
    Ok(())
}

pub fn run_inpaint(a: InpaintArgs) -> Result<()> {
    let run = a.compute.load_run(&a.model)?;
    let shape = image_shape(&run)?;
    let x = read_image(&a.image, &shape)?;
    let m = read_image(&a.mask, &shape).with_context(|| "the mask must have the image's size")?;
    // White (> 0 in [-1, 1]) marks the region to fill: keep = 1 where the mask is dark.
    let keep = m.le(0.0)?.to_dtype(candle_core::DType::F32)?;
    let resample = Resample {
        jump: a.jump,
        count: a.resample,
    };
    let out = inpaint_image(
        &run,
        &a.sampler.sample_options(1),
        &x,
        &keep,
        a.class,
        a.guidance,
        a.seed,
        resample,
        &Bar::new(),
    )?;
    write_single(&out, &a.out, None)
}

pub fn run_upscale(a: UpscaleArgs) -> Result<()> {
    let run = a.compute.load_run(&a.model)?;
    let shape = image_shape(&run)?;
    let low = read_any_image(&a.image, shape[0])?;
    let out = upscale_image(
        &run,
        &a.sampler.sample_options(1),
        &low,
        a.zero_shot,
        a.seed,
        &Bar::new(),
    )
    .with_context(|| a.image.display().to_string())?;
    write_single(&out, &a.out, a.npy.as_deref())
}

pub fn run_img2img(a: Img2ImgArgs) -> Result<()> {
    let run = a.compute.load_run(&a.model)?;
    let shape = image_shape(&run)?;
    let x = read_image(&a.image, &shape)?;
    let out = img2img_image(
        &run,
        &a.sampler.sample_options(1),
        &x,
        a.strength,
        a.class,
        a.guidance,
        a.seed,
        &Bar::new(),
    )?;
    write_single(&out, &a.out, None)
}
