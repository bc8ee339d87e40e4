//! Pixel conversions between 8-bit images and the `[-1, 1]` planar layout of [`super::ImageSet`].
use image::imageops::{self, FilterType};
use image::{DynamicImage, RgbImage};

/// Channel layout of loaded images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Channels {
    /// One channel: Rec. 601 luma `0.299 R + 0.587 G + 0.114 B` (after alpha compositing).
    Grey,
    /// Three channels R, G, B. Images with alpha are composited on white first.
    #[default]
    Rgb,
}

impl Channels {
    pub fn count(self) -> usize {
        match self {
            Channels::Grey => 1,
            Channels::Rgb => 3,
        }
    }
}

/// An 8-bit value `0..=255` mapped linearly onto `[-1, 1]`.
pub fn u8_to_unit(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

/// A `[-1, 1]` value mapped onto `0..=255`, rounded; out-of-range values are clipped and NaN
/// becomes 0.
pub fn unit_to_u8(v: f32) -> u8 {
    ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// Any decoded image as 8-bit RGB, with transparent pixels composited on white:
/// `out = α·c + (1 − α)·255`.
pub fn composite_on_white(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as f32 / 255.0;
        let mix = |c: u8| (a * c as f32 + (1.0 - a) * 255.0).round() as u8;
        image::Rgb([mix(p[0]), mix(p[1]), mix(p[2])])
    })
}

/// Scale `img` so it covers `height × width` (its shorter side relative to the target
/// fits exactly), then crop the centre. Returns `img` unchanged if it already has that size.
pub fn resize_cover(img: RgbImage, height: u32, width: u32) -> RgbImage {
    let (w0, h0) = img.dimensions();
    if (w0, h0) == (width, height) {
        return img;
    }
    let scale = (width as f64 / w0 as f64).max(height as f64 / h0 as f64);
    let sw = ((w0 as f64 * scale).round() as u32).max(width);
    let sh = ((h0 as f64 * scale).round() as u32).max(height);
    let scaled = if (sw, sh) == (w0, h0) {
        img
    } else {
        imageops::resize(&img, sw, sh, FilterType::Triangle)
    };
    let (x, y) = ((sw - width) / 2, (sh - height) / 2);
    imageops::crop_imm(&scaled, x, y, width, height).to_image()
}

/// Append `img` to `out` in planar `C × H × W` order with values in `[-1, 1]`.
pub fn push_planar(img: &RgbImage, channels: Channels, out: &mut Vec<f32>) {
    match channels {
        Channels::Rgb => {
            for c in 0..3 {
                out.extend(img.pixels().map(|p| u8_to_unit(p.0[c])));
            }
        }
        Channels::Grey => out.extend(img.pixels().map(|p| {
            let [r, g, b] = p.0;
            let luma = 0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32;
            luma / 127.5 - 1.0
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    #[test]
    fn unit_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(unit_to_u8(u8_to_unit(v)), v);
        }
        assert_eq!((u8_to_unit(0), u8_to_unit(255)), (-1.0, 1.0));
        assert_eq!(
            (unit_to_u8(-3.0), unit_to_u8(7.0), unit_to_u8(f32::NAN)),
            (0, 255, 0)
        );
    }

    #[test]
    fn alpha_is_composited_on_white() {
        let mut img = RgbaImage::new(3, 1);
        img.put_pixel(0, 0, Rgba([10, 20, 30, 255]));
        img.put_pixel(1, 0, Rgba([0, 0, 0, 0]));
        img.put_pixel(2, 0, Rgba([0, 100, 255, 51])); // α = 0.2
        let rgb = composite_on_white(&DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.get_pixel(0, 0).0, [10, 20, 30]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(2, 0).0, [204, 224, 255]);
    }

    #[test]
    fn cover_resize_then_centre_crop() {
        // 8 wide × 4 high: left half black, right half white, a red middle column pair.
        let img = RgbImage::from_fn(8, 4, |x, _| match x {
            3 | 4 => image::Rgb([255, 0, 0]),
            x if x < 3 => image::Rgb([0, 0, 0]),
            _ => image::Rgb([255, 255, 255]),
        });
        let out = resize_cover(img.clone(), 4, 4);
        assert_eq!(out.dimensions(), (4, 4));
        // Scale 1 (height already fits): the crop keeps columns 2..6.
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(1, 2).0, [255, 0, 0]);
        assert_eq!(out.get_pixel(3, 3).0, [255, 255, 255]);
        let small = resize_cover(img, 2, 2);
        assert_eq!(small.dimensions(), (2, 2));
        let mut v = Vec::new();
        push_planar(&small, Channels::Grey, &mut v);
        assert_eq!(v.len(), 4);
        assert!(v[0] < v[1], "left darker than right: {v:?}");
        let red = RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 0]));
        let mut v = Vec::new();
        push_planar(&red, Channels::Grey, &mut v);
        push_planar(&red, Channels::Rgb, &mut v);
        assert!((v[0] - (0.299 * 255.0 / 127.5 - 1.0)).abs() < 1e-6, "{v:?}");
        assert_eq!(&v[1..], &[1.0, -1.0, -1.0]);
    }
}
