//! The scikit-learn 8×8 handwritten digits (UCI Optical Recognition of Handwritten Digits),
//! compiled in through `smartcore`.
use super::set::ImageSet;
use crate::{Error, Result};

/// Load the 1,797 sklearn digits: 8×8 greyscale images with values 0–16 mapped linearly onto
/// `[-1, 1]` (0 → -1 background, 16 → 1 ink), labels 0–9 named `"0"` … `"9"`.
///
/// # Shapes
/// The result holds `1797 × 1 × 8 × 8`.
pub fn load_digits() -> Result<ImageSet> {
    let ds = smartcore::dataset::digits::load_dataset();
    let bad = |msg: String| Error::config("digits", msg);
    if ds.num_features != 64 || ds.data.len() != ds.num_samples * 64 {
        return Err(bad(format!(
            "expected 8×8 images, got {} features",
            ds.num_features
        )));
    }
    let labels = ds
        .target
        .iter()
        .map(|&t| {
            if t.fract() == 0.0 && (0.0..10.0).contains(&t) {
                Ok(t as u32)
            } else {
                Err(bad(format!("label {t} is not a digit")))
            }
        })
        .collect::<Result<Vec<u32>>>()?;
    let set = ImageSet {
        images: ds.data.iter().map(|&v| v / 8.0 - 1.0).collect(),
        labels,
        n: ds.num_samples,
        channels: 1,
        height: 8,
        width: 8,
        class_names: (0..10).map(|d| d.to_string()).collect(),
    };
    set.validate()?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_count_range_and_labels() {
        let d = load_digits().unwrap();
        assert_eq!((d.n, d.channels, d.height, d.width), (1797, 1, 8, 8));
        assert_eq!(d.images.len(), 1797 * 64);
        let (lo, hi) = d
            .images
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert_eq!((lo, hi), (-1.0, 1.0));
        // Values are the 17 levels k/8 - 1.
        assert!(d.images.iter().all(|&v| ((v + 1.0) * 8.0).fract() == 0.0));
        let counts: Vec<usize> = d.class_indices().iter().map(Vec::len).collect();
        assert_eq!(counts.iter().sum::<usize>(), 1797);
        assert!(
            counts.iter().all(|&c| (170..=190).contains(&c)),
            "{counts:?}"
        );
        // sklearn's first digit is a 0: blank corners, ink in the middle.
        assert_eq!(d.labels[0], 0);
        assert_eq!(d.image(0)[0], -1.0);
        assert!(d.image(0).iter().any(|&v| v > 0.5));
    }
}
