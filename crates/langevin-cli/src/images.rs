//! Image data sources and UNet settings for `langevin train`.
use std::path::Path;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use langevin::data::images::{
    load_digits, load_emoji, load_fashion_mnist, load_folder, Channels, ImageSet, LoadOptions,
    OnError, Split, FASHION_MNIST_DIR,
};
use langevin::nn::unet::config::{DownBlockType, UpBlockType};
use langevin::nn::unet::UNet2DConfig;

/// Image-model options.
#[derive(ClapArgs, Clone)]
pub struct ImageArgs {
    /// UNet widths per resolution level (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "32,64,64", value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub channels: Vec<usize>,
    #[arg(long, default_value_t = 1, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub layers_per_block: usize,
    /// Self-attention at the lowest resolution (and in the mid block).
    #[arg(long)]
    pub attention: bool,
    #[arg(long, default_value_t = 8, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub norm_groups: usize,
    /// Condition on class labels (adds a null class for classifier-free guidance).
    #[arg(long)]
    pub class_cond: bool,
    /// Probability of dropping the label during training (classifier-free guidance).
    #[arg(long, default_value_t = 0.1, value_parser = crate::ranges::unit, allow_negative_numbers = true)]
    pub label_dropout: f64,
    /// Min-SNR-γ loss weighting (e.g. 5).
    #[arg(long, value_parser = crate::ranges::positive, allow_negative_numbers = true)]
    pub min_snr: Option<f64>,
    /// Random horizontal flips.
    #[arg(long)]
    pub hflip: bool,
    /// Resize (shorter side) and centre-crop folder / emoji images to this size.
    #[arg(long, value_parser = crate::ranges::pixels, allow_negative_numbers = true)]
    pub image_size: Option<u32>,
    /// Greyscale folder images.
    #[arg(long)]
    pub grey: bool,
    /// Stop at the first unreadable image instead of skipping it with a warning.
    #[arg(long)]
    pub strict: bool,
    /// Keep only this many images per class (a quick subset).
    #[arg(long, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub per_class: Option<usize>,
    /// Write a grid of EMA samples every N steps (0 = only at the end).
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub sample_every: u64,
    /// SR3 super-resolution: the network also sees each image box-downsampled by this factor
    /// and upsampled back (extra input channels); sample with `langevin upscale`.
    #[arg(long, value_parser = crate::ranges::factor, allow_negative_numbers = true)]
    pub superres: Option<usize>,
}

/// Is `spec` an image source?
pub fn is_image_source(spec: &str) -> bool {
    matches!(
        spec.split(':').next(),
        Some("fashion-mnist" | "digits" | "emoji")
    ) || Path::new(spec).is_dir()
}

/// `spec` with its folder made absolute, as stored in a run (so `--resume` and `eval` work
/// from any directory); built-in names stay as they are.
pub fn absolute_source(spec: &str) -> String {
    let abs = |d: &str| std::fs::canonicalize(d).map_or(d.to_string(), |p| p.display().to_string());
    match spec.split_once(':') {
        Some((k @ ("fashion-mnist" | "emoji"), d)) => format!("{k}:{}", abs(d)),
        _ if Path::new(spec).is_dir() => abs(spec),
        _ => spec.to_string(),
    }
}

/// Load an image set: `fashion-mnist[:DIR]` (padded to 32×32), `digits` (8×8), `emoji[:DIR]`,
/// or a folder of PNG/JPEG files with class subfolders.
pub fn load_images(spec: &str, a: &ImageArgs, seed: u64) -> Result<ImageSet> {
    let (kind, arg) = match spec.split_once(':') {
        Some((k, d)) => (k, Some(d)),
        None => (spec, None),
    };
    let set = match kind {
        "fashion-mnist" => {
            let dir = arg.unwrap_or(FASHION_MNIST_DIR);
            if !Path::new(dir).is_dir() {
                bail!("{dir}: Fashion-MNIST not found; install it with `apt-get install dataset-fashion-mnist` (or scripts/fetch_image_data.sh)");
            }
            load_fashion_mnist(dir, Split::Train, Some(32))?
        }
        "digits" => load_digits()?,
        "emoji" => {
            let home = std::env::var("HOME").unwrap_or_default();
            let dir = arg
                .map(String::from)
                .unwrap_or(format!("{home}/.cache/langevin/emoji-google"));
            if !Path::new(&dir).is_dir() {
                bail!("{dir}: emoji images not found; run scripts/fetch_image_data.sh");
            }
            load_emoji(&dir, Some(a.image_size.unwrap_or(32)))?
        }
        _ => {
            let opts = LoadOptions {
                size: a.image_size.map(|s| (s, s)),
                channels: if a.grey {
                    Channels::Grey
                } else {
                    Channels::Rgb
                },
                on_error: if a.strict {
                    OnError::Stop
                } else {
                    OnError::Skip
                },
            };
            load_folder(spec, opts)?
        }
    };
    Ok(match a.per_class {
        Some(k) => set.per_class(k, &mut langevin::rng::seeded(seed)),
        None => set,
    })
}

/// A UNet2DModel config for `set`.
pub fn unet_config(set: &ImageSet, a: &ImageArgs) -> Result<UNet2DConfig> {
    let levels = a.channels.len();
    let div = 1usize << (levels - 1);
    if set.height % div != 0 || set.width % div != 0 {
        bail!(
            "{}×{} images do not halve {} times; use fewer --channels levels or --image-size a multiple of {div}",
            set.height,
            set.width,
            levels - 1
        );
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
        sample_size: Some(langevin::nn::unet::config::SampleSize::Square(set.height)),
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
