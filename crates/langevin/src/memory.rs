//! Memory estimates made before large allocations, so a too-large job stops with a message that
//! says what to change instead of aborting inside the allocator.
use crate::model::NetworkConfig;
use crate::{Error, Result};

const GB: f64 = 1e9;

/// Bytes of memory the system reports available (Linux `MemAvailable`); `None` where unknown.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// Fail with [`Error::Memory`] if `need` bytes exceed what is available (`avail`, or the
/// system's figure when `None`). `advice` says what to change.
pub fn check(
    what: &str,
    need: u64,
    avail: Option<u64>,
    advice: impl FnOnce() -> String,
) -> Result<()> {
    let Some(avail) = avail.or_else(available) else {
        return Ok(());
    };
    if need > avail {
        return Err(Error::Memory {
            what: what.to_string(),
            need_gb: need as f64 / GB,
            avail_gb: avail as f64 / GB,
            advice: advice(),
        });
    }
    Ok(())
}

/// A lower bound on the bytes of activations one sample keeps in a forward pass of `net`
/// (`sample` is its shape); training keeps more for the backward pass (`TRAIN_FACTOR`).
pub fn activation_bytes(net: &NetworkConfig, sample: &[usize]) -> u64 {
    let floats: u64 = match net {
        NetworkConfig::Mlp(c) => {
            (c.hidden as u64).saturating_mul(2 * c.blocks as u64 + 2) + c.temb_dim as u64
        }
        NetworkConfig::Unet(c) => {
            let (h, w) = match sample {
                [_, h, w] => (*h as u64, *w as u64),
                _ => (1, 1),
            };
            // One feature map per resolution level and per layer, halving the side each level.
            c.block_out_channels
                .iter()
                .enumerate()
                .map(|(l, &ch)| {
                    let side = (h >> l.min(62))
                        .max(1)
                        .saturating_mul((w >> l.min(62)).max(1));
                    (ch as u64)
                        .saturating_mul(side)
                        .saturating_mul(2 * c.layers_per_block as u64 + 1)
                })
                .fold(0u64, u64::saturating_add)
        }
    };
    floats.saturating_mul(4)
}

/// Activations kept for the backward pass, as a multiple of the forward feature maps.
pub const TRAIN_FACTOR: u64 = 4;

/// Estimated bytes for drawing `n` samples in batches of `batch` (the output plus one batch of
/// activations and the sampler's few copies of the state).
pub fn sampling_bytes(net: &NetworkConfig, sample: &[usize], n: usize, batch: usize) -> u64 {
    let per: u64 = sample
        .iter()
        .map(|&d| d as u64)
        .fold(4, u64::saturating_mul);
    let b = batch.min(n) as u64;
    (n as u64).saturating_mul(per).saturating_add(
        b.saturating_mul(activation_bytes(net, sample).saturating_add(per.saturating_mul(8))),
    )
}

/// Estimated bytes for a training step at `batch`: activations for the backward pass plus
/// five copies of the parameters (weights, gradients, two AdamW moments, EMA).
pub fn training_bytes(net: &NetworkConfig, sample: &[usize], batch: usize) -> u64 {
    (batch as u64)
        .saturating_mul(activation_bytes(net, sample).saturating_mul(TRAIN_FACTOR))
        .saturating_add(parameter_bytes(net).saturating_mul(5))
}

/// Check a training step at `batch` (`what` describes the batch) against available memory;
/// the advice says how large a batch would fit.
pub fn check_training(
    what: &str,
    net: &NetworkConfig,
    sample: &[usize],
    batch: usize,
    extra_advice: &str,
) -> Result<()> {
    let fixed = training_bytes(net, sample, 0);
    let per = training_bytes(net, sample, 1) - fixed;
    check(what, training_bytes(net, sample, batch), None, || {
        let fit = available().map_or(0, |m| largest_batch(per, m.saturating_sub(fixed)));
        format!("lower --batch-size (about {fit} fits){extra_advice}")
    })
}

/// A rough count of the network's parameters, in bytes (f32).
pub fn parameter_bytes(net: &NetworkConfig) -> u64 {
    let floats = match net {
        NetworkConfig::Mlp(c) => {
            let (d, h) = (c.in_dim as u64, c.hidden as u64);
            (2 * d * h)
                .saturating_add(h.saturating_mul(h).saturating_mul(2 * c.blocks as u64))
                .saturating_add((c.temb_dim as u64).saturating_mul(h))
        }
        NetworkConfig::Unet(c) => c
            .block_out_channels
            .iter()
            .map(|&ch| {
                (ch as u64)
                    .saturating_mul(ch as u64)
                    .saturating_mul(9 * 2 * (2 * c.layers_per_block as u64 + 2))
            })
            .fold(0u64, u64::saturating_add),
    };
    floats.saturating_mul(4)
}

/// The largest batch whose estimate fits in `avail` bytes.
pub fn largest_batch(per_item: u64, avail: u64) -> u64 {
    avail / per_item.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::mlp::MlpConfig;

    #[test]
    fn a_huge_request_is_refused_with_advice_and_a_small_one_passes() {
        let net = NetworkConfig::Mlp(MlpConfig {
            in_dim: 2,
            hidden: 128,
            blocks: 3,
            temb_dim: 64,
        });
        let small = sampling_bytes(&net, &[2], 2000, 64);
        assert!(check("sampling", small, Some(1 << 30), || "x".into()).is_ok());
        let huge = sampling_bytes(&net, &[2], usize::MAX / 2, 64);
        let e = check("sampling", huge, Some(1 << 30), || "lower --n".into()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("lower --n") && msg.contains("1.1 GB is available"),
            "{msg}"
        );
        assert_eq!(largest_batch(10, 105), 10);
    }
}
