//! Image data sets in memory as [`ImageSet`]s (planar, values in `[-1, 1]`), their loaders,
//! augmentation, a background [`BatchLoader`], and PNG output.
//!
//! | source | loader | shape |
//! | --- | --- | --- |
//! | folder of PNG / JPEG, class subfolders | [`load_folder`] | `N × {1,3} × H × W` |
//! | Fashion-MNIST IDX files (`apt-get install dataset-fashion-mnist`) | [`load_fashion_mnist`] | `N × 1 × 28 × 28` (or padded) |
//! | sklearn 8×8 digits (compiled in) | [`load_digits`] | `1797 × 1 × 8 × 8` |
//! | `emoji-datasource-google@16.0.0` (npm) | [`load_emoji`] | `3786 × 3 × 64 × 64` (or resized) |
//! | `.npy` `[N, C, H, W]` / `[N, H, W]` | [`ImageSet::from_npy`] | as stored |
pub mod augment;
pub mod digits;
pub mod emoji;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod output;
pub mod pixels;
pub mod resample;
pub mod set;

pub use augment::{hflip, random_hflip};
pub use digits::load_digits;
pub use emoji::load_emoji;
pub use folder::{class_dir_name, load_folder, LoadOptions, OnError, IMAGE_EXTENSIONS};
pub use idx::{
    load_fashion_mnist, read_idx, IdxArray, Split, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR,
};
pub use loader::{batch_indices, BatchLoader};
pub use output::{save_grid_png, save_png};
pub use pixels::Channels;
pub use resample::{downsample, low_resolution, upsample};
pub use set::ImageSet;
