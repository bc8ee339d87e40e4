//! IDX files (the MNIST format, optionally gzipped) and Fashion-MNIST.
//!
//! An IDX file is a big-endian header `0x00 0x00 type ndim`, then `ndim` `u32` dimensions, then
//! the values in C order. Only unsigned-byte data (`type = 0x08`) is supported.
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::pixels::u8_to_unit;
use super::set::ImageSet;
use crate::{Error, Result};

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Which part of an MNIST-style data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// 60,000 images: `train-*`.
    Train,
    /// 10,000 images: `t10k-*`.
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::DataFile {
        file: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Parse IDX bytes (already decompressed); `path` only names the file in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(file_err(
            path,
            "not an IDX file: the magic number must start with two zero bytes",
        ));
    }
    if bytes[2] != 0x08 {
        return Err(file_err(
            path,
            format!(
                "unsupported IDX data type 0x{:02x}: only unsigned bytes (0x08) are supported",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(file_err(
            path,
            format!("truncated IDX header: {ndim} dimensions need {header} bytes"),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| file_err(path, format!("IDX dimensions {dims:?} overflow")))?;
    let got = bytes.len() - header;
    if got != n {
        return Err(file_err(
            path,
            format!("IDX dimensions {dims:?} need {n} data bytes, the file has {got}"),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Read an IDX file, gunzipping it if it starts with the gzip magic bytes.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut bytes = Vec::new();
        GzDecoder::new(&raw[..])
            .read_to_end(&mut bytes)
            .map_err(|e| file_err(path, format!("corrupt gzip data: {e}")))?;
        parse_idx(&bytes, path)
    } else {
        parse_idx(&raw, path)
    }
}

/// `dir/name.gz` if it exists, else `dir/name` if that exists, else `dir/name.gz` (whose
/// absence the reader then reports).
fn find(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    if !gz.exists() && plain.exists() {
        plain
    } else {
        gz
    }
}

/// Load an MNIST-style image/label pair: `{prefix}-images-idx3-ubyte[.gz]` (N × H × W bytes)
/// and `{prefix}-labels-idx1-ubyte[.gz]` (N bytes, each `< class_names.len()`).
///
/// # Shapes
/// The result holds `N × 1 × H × W`, bytes mapped to `[-1, 1]` (0 → -1).
pub fn load_idx_pair(dir: &Path, prefix: &str, class_names: &[&str]) -> Result<ImageSet> {
    let img_path = find(dir, &format!("{prefix}-images-idx3-ubyte"));
    let lab_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"));
    let images = read_idx(&img_path)?;
    let [n, h, w] = images.dims[..] else {
        return Err(file_err(
            &img_path,
            format!(
                "expected a 3-D image array N × H × W, got dimensions {:?}",
                images.dims
            ),
        ));
    };
    let labels = read_idx(&lab_path)?;
    if labels.dims != [n] {
        return Err(file_err(
            &lab_path,
            format!(
                "expected {n} labels (one per image in {}), got dimensions {:?}",
                img_path.display(),
                labels.dims
            ),
        ));
    }
    if let Some(i) = labels
        .data
        .iter()
        .position(|&l| l as usize >= class_names.len())
    {
        return Err(file_err(
            &lab_path,
            format!(
                "label {} of item {i} is out of range for {} classes",
                labels.data[i],
                class_names.len()
            ),
        ));
    }
    Ok(ImageSet {
        images: images.data.iter().map(|&v| u8_to_unit(v)).collect(),
        labels: labels.data.iter().map(|&l| l as u32).collect(),
        n,
        channels: 1,
        height: h,
        width: w,
        class_names: class_names.iter().map(|s| s.to_string()).collect(),
    })
}

/// Load Fashion-MNIST (Xiao et al., 2017) from `dir` (normally [`FASHION_MNIST_DIR`]; install
/// with `apt-get install dataset-fashion-mnist`): 60,000 training or 10,000 test 28×28 greyscale
/// images, labels 0–9 named by [`FASHION_MNIST_CLASSES`]. Background is `-1`.
///
/// With `pad_to: Some(s)` the images are padded with `-1` (background) to `s × s`, e.g. 32 so
/// that a UNet can halve the size several times.
///
/// # Shapes
/// The result holds `N × 1 × 28 × 28` (or `N × 1 × s × s`).
pub fn load_fashion_mnist(
    dir: impl AsRef<Path>,
    split: Split,
    pad_to: Option<u32>,
) -> Result<ImageSet> {
    let set = load_idx_pair(dir.as_ref(), split.prefix(), &FASHION_MNIST_CLASSES)?;
    match pad_to {
        Some(s) => set.padded(s as usize, s as usize, -1.0),
        None => Ok(set),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::scratch_dir;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            out.extend(d.to_be_bytes());
        }
        out.extend(data);
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn parses_synthetic_gzipped_pair() {
        let dir = scratch_dir("idx-pair");
        let pixels: Vec<u8> = (0..3 * 2 * 2).map(|v| (v * 20) as u8).collect();
        std::fs::write(
            dir.join("t10k-images-idx3-ubyte.gz"),
            gz(&idx_bytes(&[3, 2, 2], &pixels)),
        )
        .unwrap();
        std::fs::write(
            dir.join("t10k-labels-idx1-ubyte.gz"),
            gz(&idx_bytes(&[3], &[9, 0, 4])),
        )
        .unwrap();
        let set = load_fashion_mnist(&dir, Split::Test, None).unwrap();
        set.validate().unwrap();
        assert_eq!((set.n, set.channels, set.height, set.width), (3, 1, 2, 2));
        assert_eq!(set.labels, vec![9, 0, 4]);
        assert_eq!(set.class_names[9], "Ankle boot");
        assert_eq!(
            set.image(0),
            &[
                -1.0,
                20.0 / 127.5 - 1.0,
                40.0 / 127.5 - 1.0,
                60.0 / 127.5 - 1.0
            ]
        );
        let padded = load_fashion_mnist(&dir, Split::Test, Some(4)).unwrap();
        assert_eq!((padded.height, padded.width), (4, 4));
        assert_eq!(padded.image(1)[5], set.image(1)[0]);
        assert_eq!(padded.image(1)[0], -1.0);

        // Uncompressed files are read too.
        std::fs::write(
            dir.join("train-images-idx3-ubyte"),
            idx_bytes(&[1, 1, 2], &[0, 255]),
        )
        .unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_bytes(&[1], &[3])).unwrap();
        let set = load_fashion_mnist(&dir, Split::Train, None).unwrap();
        assert_eq!(set.images, vec![-1.0, 1.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clear_errors_name_the_file() {
        let dir = scratch_dir("idx-errors");
        let p = dir.join("x.gz");
        let check = |bytes: Vec<u8>, want: &str| {
            std::fs::write(&p, bytes).unwrap();
            let e = read_idx(&p).unwrap_err().to_string();
            assert!(e.contains("x.gz") && e.contains(want), "{e}");
        };
        check(gz(&[1, 2, 8, 1, 0, 0, 0, 1, 5]), "magic");
        check(gz(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 5]), "data type 0x0d");
        check(gz(&[0, 0, 8, 2, 0, 0]), "truncated");
        check(
            gz(&idx_bytes(&[2, 3], &[0; 5])),
            "need 6 data bytes, the file has 5",
        );
        let mut bad = gz(&idx_bytes(&[4], &[1, 2, 3, 4]));
        let n = bad.len();
        bad.truncate(n - 6);
        check(bad, "gzip");

        // Label count mismatch and out-of-range labels name the label file.
        std::fs::write(
            dir.join("train-images-idx3-ubyte.gz"),
            gz(&idx_bytes(&[2, 1, 1], &[0, 1])),
        )
        .unwrap();
        std::fs::write(
            dir.join("train-labels-idx1-ubyte.gz"),
            gz(&idx_bytes(&[3], &[0, 1, 2])),
        )
        .unwrap();
        let e = load_fashion_mnist(&dir, Split::Train, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train-labels-idx1-ubyte.gz") && e.contains("expected 2 labels"),
            "{e}"
        );
        std::fs::write(
            dir.join("train-labels-idx1-ubyte.gz"),
            gz(&idx_bytes(&[2], &[0, 10])),
        )
        .unwrap();
        let e = load_fashion_mnist(&dir, Split::Train, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 10 of item 1"), "{e}");
        let e = load_fashion_mnist(&dir, Split::Test, None).unwrap_err();
        assert!(e.to_string().contains("t10k-images-idx3-ubyte.gz"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn real_fashion_mnist_when_installed() {
        let dir = Path::new(FASHION_MNIST_DIR);
        if !dir.exists() {
            crate::data::skip_missing_test_data(
                "real_fashion_mnist_when_installed",
                &format!("{FASHION_MNIST_DIR} is absent (run scripts/fetch_image_data.sh)"),
            );
            return;
        }
        let train = load_fashion_mnist(dir, Split::Train, None).unwrap();
        train.validate().unwrap();
        assert_eq!(
            (train.n, train.channels, train.height, train.width),
            (60000, 1, 28, 28)
        );
        assert!(train.labels.iter().all(|&l| l < 10));
        // Balanced: 6000 per class.
        assert!(train.class_indices().iter().all(|c| c.len() == 6000));
        let mean = train.images.iter().map(|&v| v as f64).sum::<f64>() / train.images.len() as f64;
        assert!((-0.6..-0.2).contains(&mean), "mean {mean}"); // mostly dark background
        let test = load_fashion_mnist(dir, Split::Test, Some(32)).unwrap();
        assert_eq!((test.n, test.height, test.width), (10000, 32, 32));
        assert!(test.labels.iter().all(|&l| l < 10));
        assert!(test.image(0)[..32].iter().all(|&v| v == -1.0));
    }
}
