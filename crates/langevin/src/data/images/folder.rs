//! Folders of PNG / JPEG files, one class per subfolder.
use std::path::{Path, PathBuf};

use super::pixels::{composite_on_white, push_planar, resize_cover, Channels};
use super::set::ImageSet;
use crate::{Error, Result};

/// File extensions [`load_folder`] reads (case-insensitive); other files are ignored.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// What to do with a file that cannot be read or decoded, or has the wrong size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnError {
    /// Print a warning naming the file on stderr and leave it out.
    #[default]
    Skip,
    /// Fail with an error naming the file.
    Stop,
}

/// How [`load_folder`] turns files into images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Target `(height, width)`: each image is scaled so it covers the target (its shorter
    /// side, relative to the target, fits exactly) and the centre is cropped. `None` keeps
    /// the files' size, which must then be the same for all of them.
    pub size: Option<(u32, u32)>,
    /// Grey or RGB; alpha is always composited on white.
    pub channels: Channels,
    pub on_error: OnError,
}

/// Decodes files one by one into a growing planar buffer, applying [`LoadOptions`].
pub(crate) struct Collector {
    opts: LoadOptions,
    size: Option<(u32, u32)>,
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub skipped: usize,
}

impl Collector {
    pub fn new(opts: LoadOptions) -> Self {
        Self {
            opts,
            size: opts.size,
            images: Vec::new(),
            labels: Vec::new(),
            skipped: 0,
        }
    }

    /// Decode `path` and append it with `label`; a bad file is skipped (with a warning) or
    /// an error, as `on_error` says.
    pub fn add(&mut self, path: &Path, label: u32) -> Result<()> {
        match self.decode(path) {
            Ok(()) => {
                self.labels.push(label);
                Ok(())
            }
            Err(e) if self.opts.on_error == OnError::Skip => {
                eprintln!("warning: skipping image: {e}");
                self.skipped += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn decode(&mut self, path: &Path) -> Result<()> {
        let err = |msg: String| Error::DataFile {
            file: path.to_path_buf(),
            msg,
        };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let img = image::load_from_memory(&bytes)
            .map_err(|e| err(format!("cannot decode image: {e}")))?;
        let mut rgb = composite_on_white(&img);
        match (self.opts.size, self.size) {
            (Some((h, w)), _) => rgb = resize_cover(rgb, h, w),
            (None, Some((h, w))) if rgb.dimensions() != (w, h) => {
                return Err(err(format!(
                    "image is {}×{} (height × width) but earlier images are {h}×{w}; \
                     set a target size to resize them all",
                    rgb.height(),
                    rgb.width()
                )))
            }
            (None, Some(_)) => {}
            (None, None) => self.size = Some((rgb.height(), rgb.width())),
        }
        push_planar(&rgb, self.opts.channels, &mut self.images);
        Ok(())
    }

    /// The collected images; an error naming `source` if there are none.
    pub fn finish(self, source: &Path, class_names: Vec<String>) -> Result<ImageSet> {
        let Some((h, w)) = self.size.filter(|_| !self.labels.is_empty()) else {
            return Err(Error::DataFile {
                file: source.to_path_buf(),
                msg: format!(
                    "no readable images ({} skipped; accepted extensions: {})",
                    self.skipped,
                    IMAGE_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
                ),
            });
        };
        let set = ImageSet {
            images: self.images,
            n: self.labels.len(),
            labels: self.labels,
            channels: self.opts.channels.count(),
            height: h as usize,
            width: w as usize,
            class_names,
        };
        set.validate()?;
        Ok(set)
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Sorted non-hidden entries of `dir`: (subfolders, image files).
fn list(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            dirs.push(path);
        } else if is_image(&path) {
            files.push(path);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

/// Load every PNG / JPEG image under `dir`.
///
/// Each subfolder of `dir` is a class; class names are the subfolder names, sorted, and label
/// `i` is the `i`-th name. Only files directly inside a class subfolder are read. If `dir` has
/// no subfolders, the image files directly inside it form a single class named after `dir`;
/// if it has subfolders, image files directly inside `dir` are left out with a warning.
/// Hidden entries (names starting with `.`) and files of other types are ignored; subfolders
/// without images are classes with no images.
///
/// A file that cannot be read or decoded, or (with `size: None`) differs in size from the
/// first image, is skipped with a warning on stderr or is an error naming it, per
/// [`LoadOptions::on_error`]. It is an error if no image could be loaded.
///
/// # Shapes
/// The result holds `N × C × H × W` with `C` from `opts.channels` and `H × W` from `opts.size`
/// or the files.
pub fn load_folder(dir: impl AsRef<Path>, opts: LoadOptions) -> Result<ImageSet> {
    let dir = dir.as_ref();
    if let Some((h, w)) = opts.size {
        if h == 0 || w == 0 {
            return Err(Error::config(
                "size",
                format!("image size must be positive, got {h}×{w}"),
            ));
        }
    }
    let (subdirs, loose) = list(dir)?;
    let mut collector = Collector::new(opts);
    let class_names: Vec<String> = if subdirs.is_empty() {
        for f in &loose {
            collector.add(f, 0)?;
        }
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "images".into());
        vec![name]
    } else {
        if !loose.is_empty() {
            eprintln!(
                "warning: {}: ignoring {} image file(s) outside the class subfolders",
                dir.display(),
                loose.len()
            );
        }
        for (label, sub) in subdirs.iter().enumerate() {
            for f in list(sub)?.1 {
                collector.add(&f, label as u32)?;
            }
        }
        subdirs
            .iter()
            .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    collector.finish(dir, class_names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::scratch_dir;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    fn solid(w: u32, h: u32, v: u8) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb([v, v, v]))
    }

    /// cats/{a.png (4×4, 0), b.png (4×4, 255), broken.png (garbage)},
    /// dogs/{c.jpg (4×4), d.png (RGBA, fully transparent)}, notes.txt, .hidden/x.png
    fn make_folder(name: &str) -> PathBuf {
        let dir = scratch_dir(name);
        std::fs::create_dir_all(dir.join("cats")).unwrap();
        std::fs::create_dir_all(dir.join("dogs")).unwrap();
        std::fs::create_dir_all(dir.join(".hidden")).unwrap();
        solid(4, 4, 0).save(dir.join("cats/a.png")).unwrap();
        solid(4, 4, 255).save(dir.join("cats/b.png")).unwrap();
        std::fs::write(dir.join("cats/broken.png"), b"\x89PNG not really").unwrap();
        solid(4, 4, 128).save(dir.join("dogs/c.jpg")).unwrap();
        RgbaImage::from_pixel(4, 4, Rgba([0, 0, 0, 0]))
            .save(dir.join("dogs/d.png"))
            .unwrap();
        solid(4, 4, 9).save(dir.join(".hidden/x.png")).unwrap();
        std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
        dir
    }

    #[test]
    fn skip_leaves_out_the_corrupt_file() {
        let dir = make_folder("folder-skip");
        let set = load_folder(&dir, LoadOptions::default()).unwrap();
        set.validate().unwrap();
        assert_eq!(set.class_names, vec!["cats", "dogs"]);
        assert_eq!(set.labels, vec![0, 0, 1, 1]);
        assert_eq!((set.n, set.channels, set.height, set.width), (4, 3, 4, 4));
        assert!(set.image(0).iter().all(|&v| v == -1.0));
        assert!(set.image(1).iter().all(|&v| v == 1.0));
        // JPEG is lossy: mid grey stays near 0.
        assert!(
            set.image(2).iter().all(|&v| v.abs() < 0.05),
            "{:?}",
            set.image(2)
        );
        // Transparent composited on white.
        assert!(set.image(3).iter().all(|&v| v == 1.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stop_names_the_corrupt_file() {
        let dir = make_folder("folder-stop");
        let opts = LoadOptions {
            on_error: OnError::Stop,
            ..Default::default()
        };
        let err = load_folder(&dir, opts).unwrap_err();
        match &err {
            Error::DataFile { file, msg } => {
                assert!(file.ends_with("cats/broken.png"), "{file:?}");
                assert!(msg.contains("decode"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("broken.png"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resize_grey_and_size_mismatch() {
        let dir = scratch_dir("folder-flat");
        solid(6, 3, 255).save(dir.join("wide.png")).unwrap();
        solid(4, 4, 0).save(dir.join("z-square.png")).unwrap();
        let opts = LoadOptions {
            size: Some((2, 2)),
            channels: Channels::Grey,
            on_error: OnError::Stop,
        };
        let set = load_folder(&dir, opts).unwrap();
        assert_eq!((set.n, set.channels, set.height, set.width), (2, 1, 2, 2));
        assert_eq!(set.labels, vec![0, 0]);
        assert_eq!(set.class_names.len(), 1);
        assert!(set.class_names[0].starts_with("langevin-folder-flat"));
        assert_eq!(set.images, vec![1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]);

        // Without a target size, differing sizes are a file problem.
        let stop = LoadOptions {
            on_error: OnError::Stop,
            ..Default::default()
        };
        let e = load_folder(&dir, stop).unwrap_err().to_string();
        assert!(
            e.contains("z-square.png") && e.contains("earlier images"),
            "{e}"
        );
        let set = load_folder(&dir, LoadOptions::default()).unwrap();
        assert_eq!((set.n, set.height, set.width), (1, 3, 6));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_or_missing_folder_is_an_error() {
        let dir = scratch_dir("folder-empty");
        let e = load_folder(&dir, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no readable images"), "{e}");
        let missing = dir.join("nope");
        let e = load_folder(&missing, LoadOptions::default()).unwrap_err();
        assert!(
            matches!(e, Error::Io { ref path, .. } if path == &missing),
            "{e:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The folder name for class `name` in a class-subfolder layout: path separators become `-`
/// (Fashion-MNIST's "T-shirt/top" → "T-shirt-top").
pub fn class_dir_name(name: &str) -> String {
    name.replace(['/', '\\'], "-")
}
