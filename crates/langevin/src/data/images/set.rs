//! [`ImageSet`]: a labelled stack of same-sized images in memory, values in `[-1, 1]`.
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::data::npy::load_npy_f32;
use crate::{Error, Result};

/// A labelled set of `n` images of `channels × height × width`, stored contiguously.
///
/// # Shapes
/// `images` is `N × C × H × W`, row-major (image `i`, channel `c`, row `y`, column `x` at
/// `((i·C + c)·H + y)·W + x`), values in `[-1, 1]` (`-1` black / background, `1` white).
/// `labels` has `N` entries, each `< class_names.len()`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Check that the buffer sizes agree with `n`, `channels`, `height`, `width` and that
    /// every label names a class.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::config("image set", msg));
        if self.channels == 0 || self.height == 0 || self.width == 0 {
            return bad(format!(
                "empty image shape {}×{}×{}",
                self.channels, self.height, self.width
            ));
        }
        if self.images.len() != self.n * self.image_len() {
            return bad(format!(
                "{} values do not hold {} images of {}×{}×{}",
                self.images.len(),
                self.n,
                self.channels,
                self.height,
                self.width
            ));
        }
        if self.labels.len() != self.n {
            return bad(format!(
                "{} labels for {} images",
                self.labels.len(),
                self.n
            ));
        }
        if let Some(l) = self
            .labels
            .iter()
            .find(|&&l| l as usize >= self.class_names.len())
        {
            return bad(format!(
                "label {l} out of range for {} classes",
                self.class_names.len()
            ));
        }
        Ok(())
    }

    /// Number of values in one image, `C·H·W`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Image `i` as `C × H × W` values. Panics if `i >= n`.
    pub fn image(&self, i: usize) -> &[f32] {
        assert!(i < self.n, "image {i} out of range for {} images", self.n);
        let len = self.image_len();
        &self.images[i * len..(i + 1) * len]
    }

    /// The given images copied into one contiguous buffer, in order (repeats allowed).
    /// Panics if an index is out of range.
    ///
    /// # Shapes
    /// Returns `B × C × H × W` values for `B = indices.len()`.
    pub fn gather(&self, indices: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            out.extend_from_slice(self.image(i));
        }
        out
    }

    /// The given images as a tensor. Panics if an index is out of range.
    ///
    /// # Shapes
    /// Returns `[B, C, H, W]` (f32) for `B = indices.len()`.
    pub fn to_tensor(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let shape = (indices.len(), self.channels, self.height, self.width);
        Ok(Tensor::from_vec(self.gather(indices), shape, device)?)
    }

    /// The labels of the given images as a tensor. Panics if an index is out of range.
    ///
    /// # Shapes
    /// Returns `[B]` (u32).
    pub fn labels_tensor(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Tensor::from_vec(labels, indices.len(), device)?)
    }

    /// A new set made of the given images, in the given order (repeats allowed), keeping all
    /// class names. Panics if an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        ImageSet {
            images: self.gather(indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            n: indices.len(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            class_names: self.class_names.clone(),
        }
    }

    /// Indices of the images of each class: entry `c` lists class `c`'s images in order.
    pub fn class_indices(&self) -> Vec<Vec<usize>> {
        let mut by_class = vec![Vec::new(); self.class_names.len()];
        for (i, &l) in self.labels.iter().enumerate() {
            by_class[l as usize].push(i);
        }
        by_class
    }

    /// `k` images of each class drawn without replacement by `rng`, grouped by class in class
    /// order (class 0's images first). A class with fewer than `k` images contributes all it
    /// has (in a random order).
    pub fn per_class(&self, k: usize, rng: &mut impl Rng) -> ImageSet {
        let mut chosen = Vec::with_capacity(k * self.class_names.len());
        for mut idx in self.class_indices() {
            idx.shuffle(rng);
            idx.truncate(k);
            chosen.extend(idx);
        }
        self.subset(&chosen)
    }

    /// A copy with every image padded symmetrically to `height × width` with `value` (extra
    /// odd rows / columns go to the bottom / right). The target must be at least as large as
    /// the images. Used e.g. to pad 28×28 to 32×32 so UNets can halve the size repeatedly.
    pub fn padded(&self, height: usize, width: usize, value: f32) -> Result<ImageSet> {
        if height < self.height || width < self.width {
            return Err(Error::config(
                "pad",
                format!(
                    "cannot pad {}×{} images to the smaller {height}×{width}",
                    self.height, self.width
                ),
            ));
        }
        let (top, left) = ((height - self.height) / 2, (width - self.width) / 2);
        let mut images = vec![value; self.n * self.channels * height * width];
        for (p, src) in self.images.chunks_exact(self.width).enumerate() {
            // p counts source rows over all images and channels: plane = p / H, y = p % H.
            let (plane, y) = (p / self.height, p % self.height);
            let start = (plane * height + top + y) * width + left;
            images[start..start + self.width].copy_from_slice(src);
        }
        Ok(ImageSet {
            images,
            height,
            width,
            ..self.clone()
        })
    }

    /// Load images from a `.npy` array of shape `[N, C, H, W]` (`C` 1 or 3) or `[N, H, W]`
    /// (greyscale), with values in `[-1, 1]`. Every image gets label 0 of a single class named
    /// after the file stem.
    pub fn from_npy(path: impl AsRef<Path>) -> Result<ImageSet> {
        let path = path.as_ref();
        let (shape, images) = load_npy_f32(path)?;
        let err = |msg: String| Error::DataFile {
            file: path.to_path_buf(),
            msg,
        };
        let (n, c, h, w) = match shape[..] {
            [n, h, w] => (n, 1, h, w),
            [n, c, h, w] => (n, c, h, w),
            _ => {
                return Err(err(format!(
                    "expected an image array [N, C, H, W] or [N, H, W], got shape {shape:?}"
                )))
            }
        };
        if c != 1 && c != 3 {
            return Err(err(format!(
                "shape {shape:?}: expected 1 or 3 channels in dimension 1 \
                 (channels-last [N, H, W, C] arrays must be transposed first)"
            )));
        }
        if n == 0 || h == 0 || w == 0 {
            return Err(err(format!("shape {shape:?} holds no images")));
        }
        if let Some(i) = images.iter().position(|v| !(-1.0..=1.0).contains(v)) {
            let len = c * h * w;
            return Err(err(format!(
                "value {} in image {} (flat index {}) is outside [-1, 1]; \
                 scale pixels as v / 127.5 - 1",
                images[i],
                i / len,
                i % len
            )));
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "images".into());
        Ok(ImageSet {
            images,
            labels: vec![0; n],
            n,
            channels: c,
            height: h,
            width: w,
            class_names: vec![name],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::save_npy;
    use crate::data::test_util::scratch_dir;
    use crate::rng::seeded;

    /// `n` 1×2×3 images whose values encode (image, position); labels cycle over 3 classes.
    pub(crate) fn tiny(n: usize) -> ImageSet {
        ImageSet {
            images: (0..n * 6).map(|v| v as f32 / (n * 6) as f32).collect(),
            labels: (0..n as u32).map(|i| i % 3).collect(),
            n,
            channels: 1,
            height: 2,
            width: 3,
            class_names: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    #[test]
    fn image_subset_and_tensors() {
        let s = tiny(5);
        s.validate().unwrap();
        assert_eq!(s.image(2), &s.images[12..18]);
        let sub = s.subset(&[4, 1, 4]);
        sub.validate().unwrap();
        assert_eq!(sub.n, 3);
        assert_eq!(sub.labels, vec![1, 1, 1]);
        assert_eq!(sub.image(0), s.image(4));
        assert_eq!(sub.image(1), s.image(1));
        let t = s.to_tensor(&[3, 0], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 1, 2, 3]);
        let flat: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&flat[..6], s.image(3));
        assert_eq!(&flat[6..], s.image(0));
        let l = s.labels_tensor(&[3, 2], &Device::Cpu).unwrap();
        assert_eq!(l.to_vec1::<u32>().unwrap(), vec![0, 2]);
    }

    #[test]
    fn validate_catches_inconsistency() {
        let mut s = tiny(4);
        s.labels[1] = 3;
        assert!(s.validate().unwrap_err().to_string().contains("label 3"));
        let mut s = tiny(4);
        s.images.pop();
        assert!(s.validate().is_err());
    }

    #[test]
    fn per_class_takes_k_of_each_without_repeats() {
        let s = tiny(10); // classes: a×4 (0,3,6,9), b×3, c×3
        let mut rng = seeded(7);
        let p = s.per_class(2, &mut rng);
        assert_eq!(p.labels, vec![0, 0, 1, 1, 2, 2]);
        assert_ne!(p.image(0), p.image(1));
        // Every chosen image is an original of the right class.
        for j in 0..p.n {
            let i = (0..s.n).find(|&i| s.image(i) == p.image(j)).unwrap();
            assert_eq!(s.labels[i], p.labels[j]);
        }
        let all = s.per_class(100, &mut rng);
        assert_eq!(all.n, 10);
        let again = s.per_class(2, &mut seeded(7));
        assert_eq!(again, p);
    }

    #[test]
    fn padding_centres_the_image() {
        let s = tiny(2);
        let p = s.padded(4, 5, -1.0).unwrap();
        p.validate().unwrap();
        assert_eq!((p.height, p.width), (4, 5));
        let img = p.image(1);
        // Row 0 and 3 are padding; rows 1-2 hold the source rows at columns 1..4.
        assert!(img[..5].iter().all(|&v| v == -1.0));
        assert_eq!(&img[6..9], &s.image(1)[0..3]);
        assert_eq!(&img[11..14], &s.image(1)[3..6]);
        assert_eq!((img[5], img[9], img[10], img[14]), (-1.0, -1.0, -1.0, -1.0));
        assert!(img[15..].iter().all(|&v| v == -1.0));
        assert!(s.padded(1, 5, 0.0).is_err());
    }

    #[test]
    fn from_npy_shapes_and_range() {
        let dir = scratch_dir("imageset-npy");
        let p = dir.join("faces.npy");
        let vals: Vec<f32> = (0..24).map(|v| v as f32 / 12.0 - 1.0).collect();
        save_npy(&p, &[2, 3, 2, 2], &vals).unwrap();
        let s = ImageSet::from_npy(&p).unwrap();
        s.validate().unwrap();
        assert_eq!((s.n, s.channels, s.height, s.width), (2, 3, 2, 2));
        assert_eq!(s.class_names, vec!["faces"]);
        assert_eq!(s.images, vals);
        save_npy(&p, &[3, 2, 4], &vals).unwrap();
        let s = ImageSet::from_npy(&p).unwrap();
        assert_eq!((s.n, s.channels, s.height, s.width), (3, 1, 2, 4));
        save_npy(&p, &[2, 2, 2, 3], &vals).unwrap();
        let e = ImageSet::from_npy(&p).unwrap_err().to_string();
        assert!(
            e.contains("faces.npy") && e.contains("channels-last"),
            "{e}"
        );
        let mut big = vals.clone();
        big[5] = 2.0;
        save_npy(&p, &[2, 3, 2, 2], &big).unwrap();
        let e = ImageSet::from_npy(&p).unwrap_err().to_string();
        assert!(
            e.contains("outside [-1, 1]") && e.contains("value 2"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
