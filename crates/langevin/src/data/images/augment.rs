//! Data augmentation on planar image batches.
use rand::Rng;

/// Mirror every image of `batch` left–right in place.
///
/// # Shapes
/// `batch` is `B × C × H × W` for any `B`; its length must be a multiple of `c·h·w`.
pub fn hflip(batch: &mut [f32], c: usize, h: usize, w: usize) {
    assert_eq!(
        batch.len() % (c * h * w).max(1),
        0,
        "batch is not whole images"
    );
    for row in batch.chunks_exact_mut(w.max(1)) {
        row.reverse();
    }
}

/// Mirror each image of `batch` left–right independently with probability 1/2, drawing one
/// `bool` per image from `rng` in image order.
///
/// # Shapes
/// `batch` is `B × C × H × W`; its length must be a multiple of `c·h·w`.
pub fn random_hflip(batch: &mut [f32], c: usize, h: usize, w: usize, rng: &mut impl Rng) {
    let len = c * h * w;
    assert!(
        len > 0 && batch.len().is_multiple_of(len),
        "batch is not whole images"
    );
    for img in batch.chunks_exact_mut(len) {
        if rng.random_bool(0.5) {
            hflip(img, c, h, w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;

    #[test]
    fn hflip_mirrors_rows() {
        let mut x: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 2 images 1×2×3
        hflip(&mut x, 1, 2, 3);
        assert_eq!(x, vec![2., 1., 0., 5., 4., 3., 8., 7., 6., 11., 10., 9.]);
    }

    #[test]
    fn random_hflip_is_an_involution_with_the_same_seed() {
        let orig: Vec<f32> = (0..64 * 2 * 3 * 4).map(|v| (v as f32).sin()).collect();
        let mut x = orig.clone();
        random_hflip(&mut x, 2, 3, 4, &mut seeded(5));
        let len = 2 * 3 * 4;
        let flipped = (0..64)
            .filter(|&i| x[i * len..(i + 1) * len] != orig[i * len..(i + 1) * len])
            .count();
        // Each image is either untouched or exactly mirrored; about half are mirrored.
        for i in 0..64 {
            let mut m = orig[i * len..(i + 1) * len].to_vec();
            hflip(&mut m, 2, 3, 4);
            let got = &x[i * len..(i + 1) * len];
            assert!(got == &orig[i * len..(i + 1) * len] || got == &m[..]);
        }
        assert!((16..=48).contains(&flipped), "{flipped} of 64 flipped");
        random_hflip(&mut x, 2, 3, 4, &mut seeded(5));
        assert_eq!(x, orig);
    }
}
