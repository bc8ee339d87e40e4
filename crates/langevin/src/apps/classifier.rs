//! A small CNN classifier, for measuring what synthetic training images are worth (the
//! augmentation experiment): conv 3×3/2 → ReLU → conv 3×3/2 → ReLU → linear 128 → ReLU →
//! linear, trained with AdamW on cross-entropy. Uses the own conv kernels.
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::images::ImageSet;
use crate::kernels::conv2d;
use crate::nn::init::reinit_seeded;
use crate::train::adamw::{AdamW, AdamWConfig};
use crate::{Error, Result};

pub struct Classifier {
    c1: (Tensor, Tensor),
    c2: (Tensor, Tensor),
    fc1: Linear,
    fc2: Linear,
}

impl Classifier {
    /// For `channels`×`h`×`w` images (h, w divisible by 4) and `classes` classes.
    pub fn new(
        channels: usize,
        h: usize,
        w: usize,
        classes: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv = |i: usize, o: usize, name: &str| -> Result<(Tensor, Tensor)> {
            let vb = vb.pp(name);
            Ok((
                vb.get_with_hints(
                    (o, i, 3, 3),
                    "weight",
                    candle_nn::init::DEFAULT_KAIMING_NORMAL,
                )?,
                vb.get_with_hints(o, "bias", candle_nn::Init::Const(0.0))?,
            ))
        };
        Ok(Self {
            c1: conv(channels, 32, "conv1")?,
            c2: conv(32, 64, "conv2")?,
            fc1: candle_nn::linear(64 * (h / 4) * (w / 4), 128, vb.pp("fc1"))?,
            fc2: candle_nn::linear(128, classes, vb.pp("fc2"))?,
        })
    }

    /// Logits [B, classes] for images [B, C, H, W] in [-1, 1].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = conv2d(x, &self.c1.0, Some(&self.c1.1), 2, 1)?.relu()?;
        let h = conv2d(&h, &self.c2.0, Some(&self.c2.1), 2, 1)?.relu()?;
        let h = self.fc1.forward(&h.flatten_from(1)?)?.relu()?;
        Ok(self.fc2.forward(&h)?)
    }
}

/// Optimiser settings.
#[derive(Debug, Clone, Copy)]
pub struct ClassifierTraining {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

/// Train on `set` (labels < `classes`): seeded init and batches.
pub fn train_classifier(
    set: &ImageSet,
    classes: usize,
    t: ClassifierTraining,
) -> Result<Classifier> {
    if set.n == 0 || set.height % 4 != 0 || set.width % 4 != 0 {
        return Err(Error::config(
            "classifier data",
            format!(
                "needs images with sides divisible by 4, got {} of {}×{}",
                set.n, set.height, set.width
            ),
        ));
    }
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let model = Classifier::new(
        set.channels,
        set.height,
        set.width,
        classes,
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )?;
    let mut vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rng = ChaCha8Rng::seed_from_u64(t.seed);
    reinit_seeded(&vars, &mut rng)?;
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let per = set.channels * set.height * set.width;
    let mut order: Vec<usize> = (0..set.n).collect();
    let mut pos = set.n;
    for _ in 0..t.steps {
        let mut idx = Vec::with_capacity(t.batch_size);
        while idx.len() < t.batch_size {
            if pos == set.n {
                order.shuffle(&mut rng);
                pos = 0;
            }
            idx.push(order[pos]);
            pos += 1;
        }
        let mut xs = Vec::with_capacity(idx.len() * per);
        let mut ys = Vec::with_capacity(idx.len());
        for &i in &idx {
            xs.extend_from_slice(&set.images[i * per..(i + 1) * per]);
            ys.push(set.labels[i]);
        }
        let x = Tensor::from_vec(xs, (idx.len(), set.channels, set.height, set.width), &dev)?;
        let y = Tensor::new(ys.as_slice(), &dev)?;
        let loss = candle_nn::loss::cross_entropy(&model.forward(&x)?, &y)?;
        opt.step(&loss.backward()?, t.lr, 1.0)?;
    }
    Ok(model)
}

/// Fraction of `set` classified correctly.
pub fn accuracy(model: &Classifier, set: &ImageSet) -> Result<f64> {
    let per = set.channels * set.height * set.width;
    let mut correct = 0usize;
    for start in (0..set.n).step_by(500) {
        let b = 500.min(set.n - start);
        let x = Tensor::from_vec(
            set.images[start * per..(start + b) * per].to_vec(),
            (b, set.channels, set.height, set.width),
            &Device::Cpu,
        )?;
        let pred: Vec<u32> = model.forward(&x)?.argmax(D::Minus1)?.to_vec1()?;
        correct += pred
            .iter()
            .zip(&set.labels[start..start + b])
            .filter(|(p, l)| p == l)
            .count();
    }
    Ok(correct as f64 / set.n as f64)
}

/// The first `k` images of every class, in class order.
pub fn per_class_subset(set: &ImageSet, k: usize) -> ImageSet {
    let per = set.channels * set.height * set.width;
    let mut out = ImageSet {
        images: vec![],
        labels: vec![],
        n: 0,
        ..set.clone()
    };
    for c in 0..set.class_names.len() as u32 {
        for i in (0..set.n).filter(|&i| set.labels[i] == c).take(k) {
            out.images
                .extend_from_slice(&set.images[i * per..(i + 1) * per]);
            out.labels.push(c);
            out.n += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes told apart by which half of the image is bright.
    fn halves(n: usize, seed: u64) -> ImageSet {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut images, mut labels) = (vec![], vec![]);
        for i in 0..n {
            let c = (i % 2) as u32;
            for y in 0..8 {
                for _x in 0..8 {
                    let bright = (y < 4) == (c == 0);
                    images.push(if bright { 0.5 } else { -0.5 } + rng.random_range(-0.4..0.4));
                }
            }
            labels.push(c);
        }
        ImageSet {
            images,
            labels,
            n,
            channels: 1,
            height: 8,
            width: 8,
            class_names: vec!["top".into(), "bottom".into()],
        }
    }

    #[test]
    fn learns_a_separable_task_and_subsets_per_class() {
        let train = halves(200, 1);
        let sub = per_class_subset(&train, 30);
        assert_eq!(sub.n, 60);
        assert_eq!(sub.labels.iter().filter(|&&l| l == 1).count(), 30);
        let t = ClassifierTraining {
            steps: 60,
            batch_size: 32,
            lr: 2e-3,
            seed: 0,
        };
        let m = train_classifier(&sub, 2, t).unwrap();
        let acc = accuracy(&m, &halves(400, 2)).unwrap();
        assert!(acc > 0.95, "accuracy {acc}");
    }
}
