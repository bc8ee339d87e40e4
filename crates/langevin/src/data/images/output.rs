//! Writing `[-1, 1]` images as PNG files, atomically.
use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};

use super::pixels::unit_to_u8;
use crate::io::write_atomic_bytes;
use crate::{Error, Result};

/// Pixels between and around the cells of [`save_grid_png`].
pub const GRID_PADDING: usize = 2;

/// Value of the grid padding, in `[-1, 1]` (black).
pub const GRID_PAD_VALUE: f32 = -1.0;

fn check_shape(len: usize, c: usize, h: usize, w: usize) -> Result<usize> {
    if c != 1 && c != 3 {
        return Err(Error::config(
            "png channels",
            format!("PNG output needs 1 or 3 channels, got {c}"),
        ));
    }
    let per = c * h * w;
    if per == 0 || len == 0 || !len.is_multiple_of(per) {
        return Err(Error::config(
            "png shape",
            format!("{len} values are not a whole number of {c}×{h}×{w} images"),
        ));
    }
    Ok(len / per)
}

/// Planar `C × H × W` values in `[-1, 1]` (clipped) as an 8-bit grey or RGB image.
fn to_image(img: &[f32], c: usize, h: usize, w: usize) -> DynamicImage {
    let plane = h * w;
    let (wu, hu) = (w as u32, h as u32);
    if c == 1 {
        let buf = img.iter().map(|&v| unit_to_u8(v)).collect();
        DynamicImage::ImageLuma8(GrayImage::from_raw(wu, hu, buf).expect("sized buffer"))
    } else {
        let buf = (0..plane)
            .flat_map(|p| (0..3).map(move |ch| unit_to_u8(img[ch * plane + p])))
            .collect();
        DynamicImage::ImageRgb8(RgbImage::from_raw(wu, hu, buf).expect("sized buffer"))
    }
}

fn write_png(path: &Path, img: &DynamicImage) -> Result<()> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Png)
        .map_err(|e| Error::DataFile {
            file: path.to_path_buf(),
            msg: format!("cannot encode PNG: {e}"),
        })?;
    write_atomic_bytes(path, bytes.get_ref())
}

/// Write one image as an 8-bit PNG (grey for `c = 1`, RGB for `c = 3`), values in `[-1, 1]`
/// mapped to `0..=255` (out-of-range values clipped).
///
/// # Shapes
/// `img` is `C × H × W`.
pub fn save_png(path: impl AsRef<Path>, img: &[f32], c: usize, h: usize, w: usize) -> Result<()> {
    if check_shape(img.len(), c, h, w)? != 1 {
        return Err(Error::config(
            "png shape",
            format!("{} values are not one {c}×{h}×{w} image", img.len()),
        ));
    }
    write_png(path.as_ref(), &to_image(img, c, h, w))
}

/// Tile `N` images into one PNG with `ncols` columns (`⌈N / ncols⌉` rows), separated and
/// surrounded by [`GRID_PADDING`] black pixels, as torchvision's `make_grid`. Empty cells of the
/// last row are black; with fewer than `ncols` images the grid has just `N` columns.
///
/// # Shapes
/// `images` is `N × C × H × W`; the PNG is `rows·(H + 2) + 2` high and `ncols·(W + 2) + 2`
/// wide.
pub fn save_grid_png(
    path: impl AsRef<Path>,
    images: &[f32],
    c: usize,
    h: usize,
    w: usize,
    ncols: usize,
) -> Result<()> {
    let n = check_shape(images.len(), c, h, w)?;
    if ncols == 0 {
        return Err(Error::config("ncols", "must be at least 1"));
    }
    let ncols = ncols.min(n);
    let nrows = n.div_ceil(ncols);
    let p = GRID_PADDING;
    let (gh, gw) = (nrows * (h + p) + p, ncols * (w + p) + p);
    let mut grid = vec![GRID_PAD_VALUE; c * gh * gw];
    for (i, img) in images.chunks_exact(c * h * w).enumerate() {
        let (top, left) = (p + (i / ncols) * (h + p), p + (i % ncols) * (w + p));
        for ch in 0..c {
            for y in 0..h {
                let src = &img[(ch * h + y) * w..][..w];
                let at = (ch * gh + top + y) * gw + left;
                grid[at..at + w].copy_from_slice(src);
            }
        }
    }
    write_png(path.as_ref(), &to_image(&grid, c, gh, gw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::scratch_dir;

    #[test]
    fn grid_round_trip() {
        let dir = scratch_dir("grid-png");
        let p = dir.join("sub/grid.png");
        // 3 RGB images 2×3: image i has red = i-th level, green = -1, blue = +1.
        let (c, h, w) = (3, 2, 3);
        let levels = [-1.0f32, 0.0, 1.0];
        let mut imgs = Vec::new();
        for &r in &levels {
            imgs.extend(std::iter::repeat_n(r, h * w));
            imgs.extend(std::iter::repeat_n(-1.0, h * w));
            imgs.extend(std::iter::repeat_n(1.0, h * w));
        }
        save_grid_png(&p, &imgs, c, h, w, 2).unwrap();
        let back = image::open(&p).unwrap();
        assert_eq!(back.color(), image::ColorType::Rgb8);
        let back = back.to_rgb8();
        // 2 rows × 2 cols: height 2·(2+2)+2 = 10, width 2·(3+2)+2 = 12.
        assert_eq!(back.dimensions(), (12, 10));
        assert_eq!(back.get_pixel(0, 0).0, [0, 0, 0]); // padding
        assert_eq!(back.get_pixel(2, 2).0, [0, 0, 255]); // image 0
        assert_eq!(back.get_pixel(4, 3).0, [0, 0, 255]);
        assert_eq!(back.get_pixel(5, 2).0, [0, 0, 0]); // padding between columns
        assert_eq!(back.get_pixel(7, 2).0, [128, 0, 255]); // image 1 (0.0 → 127.5 → 128)
        assert_eq!(back.get_pixel(2, 6).0, [255, 0, 255]); // image 2, second row
        assert_eq!(back.get_pixel(7, 6).0, [0, 0, 0]); // empty cell
                                                       // No temporary files left beside it.
        assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 1);

        let single = dir.join("one.png");
        let grey: Vec<f32> = vec![-1.0, -0.5, 0.5, 1.0, 3.0, -7.0];
        save_png(&single, &grey, 1, 2, 3).unwrap();
        let g = image::open(&single).unwrap();
        assert_eq!(g.color(), image::ColorType::L8);
        assert_eq!(g.to_luma8().into_raw(), vec![0, 64, 191, 255, 255, 0]);
        assert!(save_png(&single, &grey, 1, 1, 3).is_err());
        assert!(save_png(&single, &grey[..4], 2, 1, 2).is_err());
        assert!(save_grid_png(&p, &imgs, c, h, w, 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
