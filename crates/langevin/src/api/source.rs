//! The data-source grammar, in one place: `toy:NAME` (or a bare toy name), a `.csv` / `.npy`
//! table, `fashion-mnist[:DIR]`, `digits`, `emoji[:DIR]` or a folder of PNG/JPEG images with
//! class subfolders; and in-memory data handed over by a program ([`DataInput`]).
use std::path::Path;

use crate::data::images::{
    load_digits, load_emoji, load_fashion_mnist, load_folder, Channels, ImageSet, LoadOptions,
    OnError, Split, FASHION_MNIST_DIR,
};
use crate::data::{load_table, toy::Toy2d, Table};
use crate::{Error, Result};

/// Training data: a source named by the grammar above, or arrays already in memory.
#[derive(Debug, Clone)]
pub enum DataInput {
    /// A source spec, e.g. `toy:swiss-roll`, `data.csv`, `fashion-mnist`, `photos/`.
    Spec(String),
    /// Rows of a table (not yet standardised).
    Table(Table),
    /// Images [N, C, H, W] in [-1, 1] (labels index `class_names`).
    Images(ImageSet),
}

/// How image sources are read (the CLI's `--image-size --grey --strict --per-class`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageLoad {
    /// Resize (shorter side) and centre-crop folder / emoji images to this size.
    pub image_size: Option<u32>,
    /// Greyscale folder images.
    pub grey: bool,
    /// Stop at the first unreadable image instead of skipping it with a warning.
    pub strict: bool,
    /// Keep only this many images per class (a quick subset).
    pub per_class: Option<usize>,
}

/// Is `spec` an image source?
pub fn is_image_source(spec: &str) -> bool {
    matches!(
        spec.split(':').next(),
        Some("fashion-mnist" | "digits" | "emoji")
    ) || Path::new(spec).is_dir()
}

/// `spec` with its folder made absolute, as stored in a run (so resuming and `eval` work
/// from any directory); built-in names stay as they are.
pub fn absolute_source(spec: &str) -> String {
    let abs = |d: &str| std::fs::canonicalize(d).map_or(d.to_string(), |p| p.display().to_string());
    match spec.split_once(':') {
        Some((k @ ("fashion-mnist" | "emoji"), d)) => format!("{k}:{}", abs(d)),
        _ if Path::new(spec).is_dir() => abs(spec),
        _ => spec.to_string(),
    }
}

fn missing(dir: &str, what: &str) -> Error {
    Error::DataFile {
        file: dir.into(),
        msg: what.into(),
    }
}

/// Load an image set: `fashion-mnist[:DIR]` (padded to 32×32), `digits` (8×8), `emoji[:DIR]`,
/// or a folder of PNG/JPEG files with class subfolders.
pub fn load_images(spec: &str, a: &ImageLoad, seed: u64) -> Result<ImageSet> {
    let (kind, arg) = match spec.split_once(':') {
        Some((k, d)) => (k, Some(d)),
        None => (spec, None),
    };
    let set = match kind {
        "fashion-mnist" => {
            let dir = arg.unwrap_or(FASHION_MNIST_DIR);
            if !Path::new(dir).is_dir() {
                return Err(missing(dir, "Fashion-MNIST not found; install it with `apt-get install dataset-fashion-mnist` (or scripts/fetch_image_data.sh)"));
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
                return Err(missing(
                    &dir,
                    "emoji images not found; run scripts/fetch_image_data.sh",
                ));
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
        Some(k) => set.per_class(k, &mut crate::rng::seeded(seed)),
        None => set,
    })
}

/// `toy:NAME` (or a bare toy name) draws `n_toy` points; anything else is a .csv/.npy path.
/// Returns the table and the source as stored in a run (files made absolute).
pub fn load_tabular(spec: &str, n_toy: usize, seed: u64) -> Result<(Table, String)> {
    // `toy:NAME` must name a toy set (the parse error lists them); a bare name may be one.
    let toy = match spec.strip_prefix("toy:") {
        Some(name) => Some(name.parse::<Toy2d>()?),
        None => spec.parse::<Toy2d>().ok(),
    };
    if let Some(toy) = toy {
        // The table (f64), its standardised copy and the f32 tensor: about 40 bytes a point.
        crate::memory::check(
            &format!("--n-toy {n_toy}"),
            (n_toy as u64).saturating_mul(40),
            None,
            || "lower --n-toy".into(),
        )?;
        let mut rng = crate::rng::seeded(seed);
        return Ok((toy.sample(n_toy, &mut rng), format!("toy:{toy}")));
    }
    let t = load_table(Path::new(spec))?;
    let source = std::fs::canonicalize(spec).map_or(spec.to_string(), |p| p.display().to_string());
    Ok((t, source))
}
