//! `langevin augment-eval`: what synthetic images are worth to a classifier. Trains the small
//! CNN of `langevin::apps::classifier` on a few real Fashion-MNIST images per class, with and
//! without a folder of synthetic ones (from `langevin augment`), and reports the test accuracy
//! of both over several seeds.
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use langevin::apps::classifier::{
    accuracy, per_class_subset, train_classifier, ClassifierTraining,
};
use langevin::data::images::{
    class_dir_name, load_fashion_mnist, load_folder, Channels, ImageSet, LoadOptions, OnError,
    Split, FASHION_MNIST_DIR,
};

#[derive(ClapArgs)]
pub struct Args {
    /// Fashion-MNIST IDX folder.
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    pub fashion_mnist: PathBuf,
    /// Real training images per class.
    #[arg(long, default_value_t = 100, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub per_class: usize,
    /// Synthetic images in class subfolders (as `langevin augment` writes them).
    #[arg(long)]
    pub synthetic: PathBuf,
    /// Optimiser steps per classifier (the same for both training sets).
    #[arg(long, default_value_t = 1500, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub steps: usize,
    #[arg(long, default_value_t = 64, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// Classifiers per training set (seeds 0..N).
    #[arg(long, default_value_t = 3, value_parser = crate::ranges::steps, allow_negative_numbers = true)]
    pub seeds: u64,
}

/// `a ∪ b`.
fn union(a: &ImageSet, b: &ImageSet) -> ImageSet {
    let mut u = a.clone();
    u.images.extend_from_slice(&b.images);
    u.labels.extend_from_slice(&b.labels);
    u.n += b.n;
    u
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (m, var.sqrt())
}

pub fn run(a: Args) -> Result<()> {
    let train = load_fashion_mnist(&a.fashion_mnist, Split::Train, Some(32))?;
    let test = load_fashion_mnist(&a.fashion_mnist, Split::Test, Some(32))?;
    let real = per_class_subset(&train, a.per_class);
    let opts = LoadOptions {
        size: Some((32, 32)),
        channels: Channels::Grey,
        on_error: OnError::Stop,
    };
    let mut synth = load_folder(&a.synthetic, opts)?;
    // Folder labels follow the folders' sorted names; map them to Fashion-MNIST's classes.
    let map: Vec<u32> = synth
        .class_names
        .iter()
        .map(|f| {
            let k = train
                .class_names
                .iter()
                .position(|c| class_dir_name(c) == *f);
            k.map(|k| k as u32).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: folder '{f}' is not a Fashion-MNIST class ({})",
                    a.synthetic.display(),
                    train
                        .class_names
                        .iter()
                        .map(|c| class_dir_name(c))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect::<Result<_>>()?;
    for l in &mut synth.labels {
        *l = map[*l as usize];
    }
    synth.class_names = train.class_names.clone();
    if synth.n == 0 {
        bail!("{}: no images", a.synthetic.display());
    }
    let mixed = union(&real, &synth);
    let classes = train.class_names.len();
    println!(
        "real: {} images ({} per class); synthetic: {}; test: {}; {} steps × batch {}, {} seeds\n",
        real.n, a.per_class, synth.n, test.n, a.steps, a.batch_size, a.seeds
    );
    println!("| training set | images | test accuracy (mean ± sd) |");
    println!("|---|---:|---:|");
    for (name, set) in [("real only", &real), ("real + synthetic", &mixed)] {
        let accs = (0..a.seeds)
            .map(|seed| {
                let t = ClassifierTraining {
                    steps: a.steps,
                    batch_size: a.batch_size,
                    lr: 1e-3,
                    seed,
                };
                accuracy(&train_classifier(set, classes, t)?, &test)
            })
            .collect::<langevin::Result<Vec<f64>>>()?;
        let (m, sd) = mean_sd(&accs);
        println!(
            "| {name} | {} | {:.2}% ± {:.2} |",
            set.n,
            100.0 * m,
            100.0 * sd
        );
    }
    Ok(())
}
