//! Google's Noto emoji as 64×64 images from the npm package `emoji-datasource-google`.
//!
//! Get it once with `npm pack emoji-datasource-google@16.0.0 && tar xzf
//! emoji-datasource-google-16.0.0.tgz`, which unpacks into `package/`.
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::folder::{Collector, LoadOptions, OnError};
use super::pixels::Channels;
use super::set::ImageSet;
use crate::{Error, Result};

#[derive(Deserialize)]
struct Variation {
    image: String,
}

#[derive(Deserialize)]
struct Entry {
    image: String,
    category: String,
    #[serde(default)]
    skin_variations: Option<HashMap<String, Variation>>,
}

/// The package directory: `dir` itself if it holds `emoji.json`, else `dir/package`.
fn package_dir(dir: &Path) -> PathBuf {
    if dir.join("emoji.json").exists() {
        dir.to_path_buf()
    } else {
        dir.join("package")
    }
}

/// Load every 64×64 PNG of `img/google/64/` in the unpacked `emoji-datasource-google` package
/// at `dir` (the package folder, or the folder holding `package/`). Labels are the `category`
/// of each image in `emoji.json` (skin-tone variations take their base emoji's category);
/// class names are the categories, sorted (10 in version 16.0.0). Transparency is composited
/// on white; with `size: Some(s)` images are resized to `s × s`.
///
/// Images without an entry in `emoji.json` are left out with a warning. A file that cannot be
/// decoded is an error naming it.
///
/// # Shapes
/// The result holds `N × 3 × 64 × 64` (or `N × 3 × s × s`); N = 3,786 for version 16.0.0.
pub fn load_emoji(dir: impl AsRef<Path>, size: Option<u32>) -> Result<ImageSet> {
    let pkg = package_dir(dir.as_ref());
    let json_path = pkg.join("emoji.json");
    let text = std::fs::read_to_string(&json_path).map_err(|e| Error::io(&json_path, e))?;
    let entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: json_path.clone(),
        source: e,
    })?;
    let mut category_of: HashMap<String, String> = HashMap::new();
    for e in entries {
        for v in e.skin_variations.iter().flat_map(|m| m.values()) {
            category_of.insert(v.image.clone(), e.category.clone());
        }
        category_of.insert(e.image, e.category);
    }
    let classes: Vec<String> = category_of
        .values()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let label: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();

    let img_dir = pkg.join("img/google/64");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&img_dir)
        .map_err(|e| Error::io(&img_dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(&img_dir, e)))
        .collect::<Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "png"));
    files.sort();

    let mut collector = Collector::new(LoadOptions {
        size: size.map(|s| (s, s)),
        channels: Channels::Rgb,
        on_error: OnError::Stop,
    });
    let mut unknown = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        match category_of.get(name.as_ref()) {
            Some(c) => collector.add(f, label[c.as_str()])?,
            None => unknown += 1,
        }
    }
    if unknown > 0 {
        eprintln!(
            "warning: {}: left out {unknown} image(s) not listed in {}",
            img_dir.display(),
            json_path.display()
        );
    }
    collector.finish(&img_dir, classes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::scratch_dir;
    use image::{Rgba, RgbaImage};

    #[test]
    fn synthetic_package() {
        let dir = scratch_dir("emoji-synth");
        let pkg = dir.join("package");
        std::fs::create_dir_all(pkg.join("img/google/64")).unwrap();
        std::fs::write(
            pkg.join("emoji.json"),
            r#"[{"image": "a.png", "category": "Zoo", "name": "A"},
                {"image": "b.png", "category": "Food",
                 "skin_variations": {"1F3FB": {"image": "b-1.png", "unified": "x"}}}]"#,
        )
        .unwrap();
        let px = |c: [u8; 4]| RgbaImage::from_pixel(4, 4, Rgba(c));
        px([255, 0, 0, 255])
            .save(pkg.join("img/google/64/a.png"))
            .unwrap();
        px([0, 0, 0, 0])
            .save(pkg.join("img/google/64/b.png"))
            .unwrap();
        px([0, 0, 255, 255])
            .save(pkg.join("img/google/64/b-1.png"))
            .unwrap();
        px([0, 0, 0, 255])
            .save(pkg.join("img/google/64/stray.png"))
            .unwrap();
        let set = load_emoji(&dir, None).unwrap();
        assert_eq!(set.class_names, vec!["Food", "Zoo"]);
        assert_eq!(set.labels, vec![1, 0, 0]); // a, b-1, b (sorted); stray left out
        assert_eq!((set.n, set.channels, set.height, set.width), (3, 3, 4, 4));
        assert_eq!(&set.image(0)[..16], &[1.0; 16]); // red channel of red
        assert_eq!(&set.image(0)[16..], &[-1.0; 32]);
        assert_eq!(&set.image(1)[32..], &[1.0; 16]); // blue
        assert!(set.image(2).iter().all(|&v| v == 1.0)); // transparent → white
        let small = load_emoji(&pkg, Some(2)).unwrap();
        assert_eq!((small.height, small.width), (2, 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn real_emoji_when_unpacked() {
        let Some(home) = std::env::var_os("HOME") else {
            crate::data::skip_missing_test_data("real_emoji_when_unpacked", "HOME unset");
            return;
        };
        let dir = Path::new(&home).join(".cache/langevin/emoji-google");
        if !dir.join("package/emoji.json").exists() {
            crate::data::skip_missing_test_data(
                "real_emoji_when_unpacked",
                &format!("{} absent (run scripts/fetch_image_data.sh)", dir.display()),
            );
            return;
        }
        let set = load_emoji(&dir, Some(32)).unwrap();
        set.validate().unwrap();
        assert_eq!(
            (set.n, set.channels, set.height, set.width),
            (3786, 3, 32, 32)
        );
        assert_eq!(set.num_classes(), 10);
        assert!(set.class_indices().iter().all(|c| !c.is_empty()));
    }
}
