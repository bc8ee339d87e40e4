//! Scores on image arrays: FID between two sets (Inception-v3 pool3 features, the reference
//! preprocessing), as `langevin fid` and `langevin eval --metric fid` compute it.
use candle_core::Device;

use crate::metrics::fid::{fid, FeatureStats};
use crate::metrics::fid_setup::require_weights;
use crate::metrics::inception::{stream_features, InceptionV3, FEATURE_DIM};
use crate::Result;

/// Feature statistics of images (row-major [n, c, h, w] in [−1, 1]).
pub fn image_stats(
    net: &InceptionV3,
    images: &[f32],
    shape: (usize, usize, usize, usize),
    batch: usize,
) -> Result<FeatureStats> {
    let mut st = FeatureStats::new(FEATURE_DIM);
    stream_features(net, images, shape, batch, |f| st.update(f))?;
    Ok(st)
}

/// FID between two image sets (each [n, c, h, w] in [−1, 1]; grey or RGB, any size). Needs
/// the Inception weights that `langevin fid-setup` converts once.
pub fn fid_of_images(
    a: (&[f32], (usize, usize, usize, usize)),
    b: (&[f32], (usize, usize, usize, usize)),
    dev: &Device,
    batch: usize,
) -> Result<f64> {
    let net = InceptionV3::load_on(&require_weights()?, dev)?;
    let sa = image_stats(&net, a.0, a.1, batch)?;
    let sb = image_stats(&net, b.0, b.1, batch)?;
    fid(&sa, &sb)
}
