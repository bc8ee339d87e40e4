//! The image applications on a loaded model — inpainting, image-to-image (SDEdit) and
//! upscaling (SR3 or zero-shot ILVR) — with the class / guidance rule they share.
use candle_core::{Device, Tensor};

use super::classes::{check_class, null_label};
use super::observe::Watched;
use super::sample::{draw_with, SampleOptions};
use super::Observer;
use crate::apps::img2img::img2img;
use crate::apps::inpaint::{inpaint, Resample};
use crate::apps::superres::{ilvr_upscale, upsample};
use crate::denoiser::{Cond, Denoiser, Guided};
use crate::model::Run;
use crate::{Error, Result};

/// The image shape [C, H, W] of an image model (an error for tabular ones).
pub fn image_shape(run: &Run) -> Result<Vec<usize>> {
    let shape = run.config.sample_shape()?;
    if shape.len() != 3 {
        return Err(Error::config(
            run.dir.display().to_string(),
            "not an image model",
        ));
    }
    Ok(shape)
}

/// The run's denoiser for a class and guidance scale: the class label in `cond`, and the
/// classifier-free guided wrapper (in `guided`) when the scale is not 1. Class-conditional
/// models without a class use the null label.
pub fn guided_denoiser<'a>(
    run: &'a Run,
    class: Option<u32>,
    guidance: f64,
    cond: &mut Cond,
    guided: &'a mut Option<Guided<'a>>,
) -> Result<&'a dyn Denoiser> {
    *cond = match check_class(run, class)? {
        Some(k) => Cond {
            labels: Some(Tensor::new(&[k], &Device::Cpu)?),
            image: None,
        },
        None if guidance != 1.0 => return Err(Error::config("--guidance", "needs --class")),
        None => match null_label(run) {
            Ok(null) => Cond {
                labels: Some(Tensor::new(&[null], &Device::Cpu)?),
                image: None,
            },
            Err(_) => Cond::default(),
        },
    };
    if guidance == 1.0 {
        return Ok(&run.denoiser);
    }
    Ok(guided.insert(Guided {
        inner: &run.denoiser,
        null_label: null_label(run)?,
        scale: guidance,
    }))
}

/// Check an image [1, C, H, W] against the model's image shape.
pub fn check_image(run: &Run, x: &Tensor, what: &str) -> Result<()> {
    let shape = image_shape(run)?;
    let want = [1, shape[0], shape[1], shape[2]];
    if x.dims() != want {
        return Err(Error::config(
            what,
            format!("has shape {:?}, the model takes {want:?}", x.dims()),
        ));
    }
    Ok(())
}

/// Fill the region where `keep` is 0 of `image` [1, C, H, W] (projection at every sampler
/// step; RePaint resampling with `resample`).
#[allow(clippy::too_many_arguments)]
pub fn inpaint_image(
    run: &Run,
    s: &SampleOptions,
    image: &Tensor,
    keep: &Tensor,
    class: Option<u32>,
    guidance: f64,
    seed: u64,
    resample: Resample,
    obs: &dyn Observer,
) -> Result<Tensor> {
    check_image(run, image, "image")?;
    check_image(run, keep, "mask")?;
    let dev = crate::nn::Network::device(&run.denoiser.net);
    let (mut cond, mut guided) = (Cond::default(), None);
    let den = guided_denoiser(run, class, guidance, &mut cond, &mut guided)?;
    let watched = Watched {
        inner: den,
        observer: obs,
    };
    inpaint(
        &watched,
        &cond,
        s.kind()?,
        &s.options(),
        &s.sigmas(run)?,
        &image.to_device(&dev)?,
        &keep.to_device(&dev)?,
        seed,
        resample,
    )
}

/// SDEdit: noise `image` [1, C, H, W] to `strength` ∈ (0, 1] and denoise it.
#[allow(clippy::too_many_arguments)]
pub fn img2img_image(
    run: &Run,
    s: &SampleOptions,
    image: &Tensor,
    strength: f64,
    class: Option<u32>,
    guidance: f64,
    seed: u64,
    obs: &dyn Observer,
) -> Result<Tensor> {
    check_image(run, image, "image")?;
    let dev = crate::nn::Network::device(&run.denoiser.net);
    let (mut cond, mut guided) = (Cond::default(), None);
    let den = guided_denoiser(run, class, guidance, &mut cond, &mut guided)?;
    let watched = Watched {
        inner: den,
        observer: obs,
    };
    img2img(
        &watched,
        &cond,
        s.kind()?,
        &s.options(),
        &s.sigmas(run)?,
        &image.to_device(&dev)?,
        strength,
        seed,
    )
}

/// Upscale `low` [1, C, h, w] to the model's size with `den` (the run's denoiser, possibly
/// wrapped): SR3 models condition on the upsampled input, `zero_shot` runs ILVR with an
/// unconditional model.
#[allow(clippy::too_many_arguments)]
pub fn upscale_with(
    run: &Run,
    den: &dyn Denoiser,
    mut cond: Cond,
    low: &Tensor,
    zero_shot: bool,
    s: &SampleOptions,
    seed: u64,
    obs: &dyn Observer,
) -> Result<Tensor> {
    let shape = image_shape(run)?;
    let (_, _, h, w) = low.dims4()?;
    let (mh, mw) = (shape[1], shape[2]);
    if h == 0 || w == 0 || mh % h != 0 || mw % w != 0 || mh / h != mw / w || mh / h < 2 {
        return Err(Error::config(
            "image",
            format!("a {h}×{w} image does not upscale to the model's {mh}×{mw} by one integer factor ≥ 2"),
        ));
    }
    match (run.config.data.superres_scale, zero_shot) {
        (Some(f), false) => {
            if f != mh / h {
                return Err(Error::config(
                    "image",
                    format!(
                        "the model upscales by {f} ({}×{} → {mh}×{mw}); the image is {h}×{w}",
                        mh / f,
                        mw / f
                    ),
                ));
            }
            cond.image = Some(upsample(low, f)?);
            let mut one = s.clone();
            one.batch_size = 1;
            let (out, _) = draw_with(run, den, &one, 1, seed, None, &cond, obs)?;
            return Ok(out);
        }
        (Some(_), true) => return Err(Error::config(
            run.dir.display().to_string(),
            "--zero-shot needs an unconditional model; this one is an SR3 model (drop --zero-shot)",
        )),
        (None, false) => return Err(Error::config(
            run.dir.display().to_string(),
            "not a super-resolution model (langevin train --superres F); pass --zero-shot to upscale with it unconditionally",
        )),
        (None, true) => {}
    }
    let watched = Watched {
        inner: den,
        observer: obs,
    };
    ilvr_upscale(
        &watched,
        &cond,
        s.kind()?,
        &s.options(),
        &s.sigmas(run)?,
        low,
        mh / h,
        seed,
    )
}

/// Upscale `low` [1, C, h, w] with the run's own denoiser (null label for class-conditional
/// models).
pub fn upscale_image(
    run: &Run,
    s: &SampleOptions,
    low: &Tensor,
    zero_shot: bool,
    seed: u64,
    obs: &dyn Observer,
) -> Result<Tensor> {
    let dev = crate::nn::Network::device(&run.denoiser.net);
    let (mut cond, mut guided) = (Cond::default(), None);
    let den = guided_denoiser(run, None, 1.0, &mut cond, &mut guided)?;
    upscale_with(
        run,
        den,
        cond,
        &low.to_device(&dev)?,
        zero_shot,
        s,
        seed,
        obs,
    )
}
