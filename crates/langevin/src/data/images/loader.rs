//! [`BatchLoader`]: shuffled training batches prepared on a background thread.
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::augment::random_hflip;
use super::set::ImageSet;
use crate::{Error, Result};

/// How many prepared batches may wait in the channel.
pub const PREFETCH: usize = 3;

/// Key mixed into the seed of the flip streams so they differ from the shuffle streams.
const FLIP_KEY: u64 = 0x9E37_79B9_7F4A_7C15;

/// The epoch permutations of `0..n` for one seed: epoch `e` is a shuffle driven by the ChaCha8
/// stream `e` of `seed`, so any epoch can be rebuilt without replaying the earlier ones.
struct Plan {
    seed: u64,
    n: usize,
    epoch: u64,
    perm: Vec<usize>,
}

impl Plan {
    fn new(seed: u64, n: usize) -> Self {
        let mut p = Plan {
            seed,
            n,
            epoch: 0,
            perm: Vec::new(),
        };
        p.build(0);
        p
    }

    fn build(&mut self, epoch: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        self.perm = (0..self.n).collect();
        self.perm.shuffle(&mut rng);
        self.epoch = epoch;
    }

    /// Indices of batch `step`: positions `step·B … step·B + B − 1` of the concatenated epoch
    /// permutations (a batch may straddle two epochs).
    fn indices(&mut self, step: u64, batch_size: usize) -> Vec<usize> {
        let n = self.n as u64;
        (0..batch_size as u64)
            .map(|k| {
                let pos = step * batch_size as u64 + k;
                let (epoch, at) = (pos / n, (pos % n) as usize);
                if epoch != self.epoch {
                    self.build(epoch);
                }
                self.perm[at]
            })
            .collect()
    }
}

/// Indices of batch `step` (0-based) of a loader over `n` images with this `batch_size` and
/// `seed`; what [`BatchLoader`] draws, computed directly. Every epoch of `n` consecutive
/// positions visits each image once.
pub fn batch_indices(n: usize, batch_size: usize, seed: u64, step: u64) -> Vec<usize> {
    Plan::new(seed, n).indices(step, batch_size)
}

fn make_batch(
    set: &ImageSet,
    idx: &[usize],
    hflip: bool,
    seed: u64,
    step: u64,
) -> Result<(Tensor, Tensor)> {
    let mut images = set.gather(idx);
    if hflip {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ FLIP_KEY);
        rng.set_stream(step);
        random_hflip(&mut images, set.channels, set.height, set.width, &mut rng);
    }
    let shape = (idx.len(), set.channels, set.height, set.width);
    let x = Tensor::from_vec(images, shape, &Device::Cpu)?;
    let y = set.labels_tensor(idx, &Device::Cpu)?;
    Ok((x, y))
}

/// An endless stream of shuffled batches, prepared on a background thread and handed over
/// through a bounded channel ([`PREFETCH`] batches), so the trainer rarely waits.
///
/// Batch `s` depends only on `(seed, s)`: the indices come from [`batch_indices`] and the
/// optional flips from ChaCha8 stream `s` of a key derived from `seed`. The sequence is
/// therefore reproducible, independent of timing, and resumable at any step with
/// [`BatchLoader::resume`]. Dropping the loader stops and joins the thread.
///
/// # Shapes
/// [`BatchLoader::next`] returns images `[B, C, H, W]` (f32, CPU) and labels `[B]` (u32, CPU).
pub struct BatchLoader {
    rx: Option<Receiver<Result<(Tensor, Tensor)>>>,
    handle: Option<JoinHandle<()>>,
    step: u64,
    batch_size: usize,
    n: usize,
}

impl BatchLoader {
    /// A loader starting at batch 0. `hflip` mirrors each image with probability 1/2.
    pub fn new(set: Arc<ImageSet>, batch_size: usize, hflip: bool, seed: u64) -> Result<Self> {
        Self::resume(set, batch_size, hflip, seed, 0)
    }

    /// A loader whose first batch is batch `step` of the sequence [`BatchLoader::new`] with the
    /// same arguments would give, e.g. the [`BatchLoader::step`] saved in a checkpoint.
    pub fn resume(
        set: Arc<ImageSet>,
        batch_size: usize,
        hflip: bool,
        seed: u64,
        step: u64,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if set.n == 0 {
            return Err(Error::config("batch loader", "the image set is empty"));
        }
        set.validate()?;
        let n = set.n;
        let (tx, rx) = sync_channel(PREFETCH);
        let handle = std::thread::Builder::new()
            .name("langevin-batches".into())
            .spawn(move || {
                let mut plan = Plan::new(seed, set.n);
                for s in step.. {
                    let idx = plan.indices(s, batch_size);
                    // A send error means the loader was dropped: stop.
                    if tx.send(make_batch(&set, &idx, hflip, seed, s)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::config("batch loader", format!("cannot start thread: {e}")))?;
        Ok(Self {
            rx: Some(rx),
            handle: Some(handle),
            step,
            batch_size,
            n,
        })
    }

    /// The next batch: images `[B, C, H, W]` and labels `[B]`.
    // Not `Iterator`: the stream never ends, so an `Option` would only get in the way.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<(Tensor, Tensor)> {
        let rx = self.rx.as_ref().expect("receiver lives until drop");
        match rx.recv() {
            Ok(batch) => {
                self.step += 1;
                batch
            }
            Err(_) => Err(Error::config(
                "batch loader",
                "the background thread stopped unexpectedly",
            )),
        }
    }

    /// Index of the batch the next call to [`BatchLoader::next`] returns (batches handed out
    /// so far plus the starting step); pass it to [`BatchLoader::resume`] to continue.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per pass over the set, `⌈N / B⌉`.
    pub fn batches_per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Dropping the receiver makes the worker's pending or next send fail, ending it.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> Arc<ImageSet> {
        // Image i is 1×1×2 holding [i, -i]; label i % 3 so labels identify images.
        Arc::new(ImageSet {
            images: (0..n).flat_map(|i| [i as f32, -(i as f32)]).collect(),
            labels: (0..n as u32).map(|i| i % 3).collect(),
            n,
            channels: 1,
            height: 1,
            width: 2,
            class_names: vec!["a".into(), "b".into(), "c".into()],
        })
    }

    fn take(l: &mut BatchLoader, k: usize) -> Vec<(Vec<f32>, Vec<u32>)> {
        (0..k)
            .map(|_| {
                let (x, y) = l.next().unwrap();
                assert_eq!(x.dims()[1..], [1, 1, 2]);
                (
                    x.flatten_all().unwrap().to_vec1().unwrap(),
                    y.to_vec1().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn same_seed_same_batches_and_resume() {
        let s = set(10);
        let a = take(&mut BatchLoader::new(s.clone(), 4, true, 11).unwrap(), 8);
        let b = take(&mut BatchLoader::new(s.clone(), 4, true, 11).unwrap(), 8);
        assert_eq!(a, b);
        let c = take(&mut BatchLoader::new(s.clone(), 4, true, 12).unwrap(), 8);
        assert_ne!(a, c);
        let mut r = BatchLoader::resume(s.clone(), 4, true, 11, 5).unwrap();
        assert_eq!(r.step(), 5);
        assert_eq!(take(&mut r, 3), a[5..]);
        assert_eq!(r.step(), 8);
        // The images drawn are the ones batch_indices names, flipped or not.
        for (step, (x, y)) in a.iter().enumerate() {
            let idx = batch_indices(10, 4, 11, step as u64);
            for (k, &i) in idx.iter().enumerate() {
                let v = i as f32;
                let img = &x[2 * k..2 * k + 2];
                assert!(img == [v, -v] || img == [-v, v], "{img:?} vs image {i}");
                assert_eq!(y[k], i as u32 % 3);
            }
        }
        // Some image among 32 draws was flipped.
        assert!(a.iter().any(|(x, _)| x.chunks(2).any(|p| p[0] < p[1])));
    }

    #[test]
    fn each_epoch_visits_every_image_once() {
        let mut l = BatchLoader::new(set(12), 4, false, 3).unwrap();
        assert_eq!(l.batches_per_epoch(), 3);
        let batches = take(&mut l, 6);
        for epoch in batches.chunks(3) {
            let mut seen: Vec<i32> = epoch
                .iter()
                .flat_map(|(x, _)| x.chunks(2).map(|p| p[0] as i32))
                .collect();
            seen.sort();
            assert_eq!(seen, (0..12).collect::<Vec<_>>());
        }
        let first: Vec<_> = batches[..3].iter().map(|b| b.0.clone()).collect();
        let second: Vec<_> = batches[3..].iter().map(|b| b.0.clone()).collect();
        assert_ne!(first, second, "epochs are reshuffled");
        // A batch straddling epochs: n = 5, B = 3 → batch 1 holds positions 3, 4, 5.
        let idx = batch_indices(5, 3, 9, 1);
        assert_eq!(idx[..2], batch_indices(5, 5, 9, 0)[3..]);
        assert_eq!(idx[2], batch_indices(5, 5, 9, 1)[0]);
    }

    #[test]
    fn drop_stops_the_thread_and_bad_args_fail() {
        for _ in 0..5 {
            let mut l = BatchLoader::new(set(50), 7, true, 1).unwrap();
            l.next().unwrap();
            drop(l); // must not hang with the channel full
        }
        assert!(BatchLoader::new(set(5), 0, false, 0).is_err());
        assert!(BatchLoader::new(set(0), 2, false, 0).is_err());
    }
}
