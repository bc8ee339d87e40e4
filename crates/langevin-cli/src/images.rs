//! UNet and image-source options of `langevin train` (the library reads the sources and
//! builds the UNet: `langevin::api::{source, train}`).
use clap::Args as ClapArgs;
use langevin::api::source::ImageLoad;
use langevin::api::ImageOptions;

/// How image sources are read (shared by `train` and `fid`).
#[derive(ClapArgs, Clone, Default)]
pub struct ImageLoadArgs {
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
}

impl ImageLoadArgs {
    pub fn options(&self) -> ImageLoad {
        ImageLoad {
            image_size: self.image_size,
            grey: self.grey,
            strict: self.strict,
            per_class: self.per_class,
        }
    }
}

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
    #[command(flatten)]
    pub load: ImageLoadArgs,
    /// Write a grid of EMA samples every N steps (0 = only at the end).
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub sample_every: u64,
    /// SR3 super-resolution: the network also sees each image box-downsampled by this factor
    /// and upsampled back (extra input channels); sample with `langevin upscale`.
    #[arg(long, value_parser = crate::ranges::factor, allow_negative_numbers = true)]
    pub superres: Option<usize>,
}

impl ImageArgs {
    /// The library's image-training options.
    pub fn options(&self) -> ImageOptions {
        ImageOptions {
            channels: self.channels.clone(),
            layers_per_block: self.layers_per_block,
            attention: self.attention,
            norm_groups: self.norm_groups,
            class_cond: self.class_cond,
            label_dropout: self.label_dropout,
            min_snr: self.min_snr,
            hflip: self.hflip,
            load: self.load.options(),
            sample_every: self.sample_every,
            superres: self.superres,
        }
    }
}
