//! Channels-last (NHWC) activations on the CUDA inference path (issue 13, item 3): the UNet's
//! feature maps stay [B, C, H, W] tensors for every caller, but their memory is NHWC (strides
//! [H·W·C, 1, W·C, C]), so cuDNN runs its tensor-core convolutions without the NCHW↔NHWC
//! transposes it wraps around NCHW bf16 inputs (docs/benchmarks.md). The fused kernels
//! (`cuda/nhwc.cu`) read and write that layout; any op without a channels-last form gets a
//! candle tensor it reads correctly through the strides (slower, never wrong).
//!
//! The layout is opt-out with `LANGEVIN_NHWC=0` (for comparisons) and needs the `cudnn` build.
use candle_core::{DType, Tensor};

use super::switch::{unless_zero, EnvSwitch};

static NHWC: EnvSwitch = EnvSwitch::new("LANGEVIN_NHWC", unless_zero);

/// Channels-last activations are used unless `LANGEVIN_NHWC=0` or [`set_enabled`]`(false)`
/// (in a `cudnn` build).
pub fn enabled() -> bool {
    cfg!(feature = "cudnn") && NHWC.get()
}

/// Switch channels-last activations on or off for later network evaluations (the GPU parity
/// run compares both).
pub fn set_enabled(on: bool) {
    NHWC.set(on);
}

/// `LANGEVIN_NHWC_TRACE=1`: print each fused op's input layout to stderr (to find the op that
/// leaves the channels-last path).
pub fn trace(op: &str, t: &Tensor) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var("LANGEVIN_NHWC_TRACE").is_ok_and(|v| v == "1")) {
        let l = if is_channels_last(t) { "NHWC" } else { "NCHW" };
        eprintln!("nhwc-trace {op} {:?} {l}", t.dims());
    }
}

/// Whether `t` is a [B, C, H, W] tensor stored channels-last (and not also plainly contiguous,
/// as maps of one position or one channel are).
pub fn is_channels_last(t: &Tensor) -> bool {
    let Ok((_, c, h, w)) = t.dims4() else {
        return false;
    };
    let l = t.layout();
    !l.is_contiguous() && l.stride() == [h * w * c, 1, w * c, c]
}

/// `t` [B, C, H, W] stored channels-last (one copy unless it already is).
pub fn to_channels_last(t: &Tensor) -> candle_core::Result<Tensor> {
    if is_channels_last(t) {
        return Ok(t.clone());
    }
    logical(&t.permute((0, 2, 3, 1))?.contiguous()?)
}

/// The memory of a channels-last `t` as the contiguous [B, H, W, C] tensor it is (no copy).
pub fn physical(t: &Tensor) -> candle_core::Result<Tensor> {
    let p = t.permute((0, 2, 3, 1))?;
    if !p.is_contiguous() {
        candle_core::bail!(
            "channels-last view of a tensor with strides {:?}",
            t.stride()
        )
    }
    Ok(p)
}

/// A contiguous [B, H, W, C] tensor seen as [B, C, H, W] (no copy).
pub fn logical(p: &Tensor) -> candle_core::Result<Tensor> {
    p.permute((0, 3, 1, 2))
}

/// `cat([a, b], 1)`: channels-last when either input is (a strided copy of rows of C_a and
/// C_b channels), candle's concatenation otherwise.
pub fn cat_channels(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if !(is_channels_last(a) || is_channels_last(b)) {
        return Tensor::cat(&[a, b], 1);
    }
    let (a, b) = (
        physical(&to_channels_last(a)?)?,
        physical(&to_channels_last(b)?)?,
    );
    if a.device().is_cuda() && a.dtype() == b.dtype() && fits(a.dtype()) {
        return logical(&imp::cat_channels(&a, &b)?);
    }
    logical(&Tensor::cat(&[&a, &b], 3)?)
}

/// `CL_R`, `CL_MAX_CH` in nhwc.cu: vectors per thread of the register-resident group norm,
/// channels per block at most.
const GN_REGISTERS: usize = 8;
const GN_MAX_CH: usize = 256;

/// How the group norm covers the map: `v`-element vectors; blocks of `ch` channels (whole
/// groups; `ch / v` threads across them, padded to a power of two ≤ 32) and `threads`
/// threads, `k` blocks (a thread-block cluster) sharing one (image, channel chunk), each with
/// a slice of the positions; whether the values fit in registers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub v: usize,
    pub ch: usize,
    pub threads: usize,
    pub k: usize,
    pub registers: bool,
}

/// The plan for `c` channels in `groups` groups over `s` positions of `size`-byte
/// elements, vectors of at most `max_v` (alignment); `None` if no geometry fits.
/// Preference: values in registers, wider vectors, more channels per block (up to
/// [`gn_row_bytes`] per position), then the smallest cluster (one block when the values fit
/// in 512 threads; clusters only extend the register-resident form to larger maps).
pub fn plan(c: usize, groups: usize, s: usize, size: usize, max_v: usize) -> Option<Plan> {
    let cg = c / groups;
    let mut looped = None;
    let mut v = (16 / size).min(max_v);
    let row = gn_row_bytes();
    while v >= 1 {
        let mut gc = 1;
        while gc < groups && gc * cg * size < row {
            gc *= 2;
        }
        while gc >= 1 {
            let ch = gc * cg;
            let tx = (ch / v).max(1).next_power_of_two(); // with the idle padding
            let ok = groups.is_multiple_of(gc)
                && c.is_multiple_of(v)
                && ch.is_multiple_of(v)
                && tx <= 32
                && ch <= GN_MAX_CH;
            if ok {
                for k in [1, 2, 4, 8] {
                    let sk = s.div_ceil(k);
                    let threads = (tx * sk.div_ceil(GN_REGISTERS))
                        .next_multiple_of(32)
                        .clamp(32, 512);
                    if (threads / tx) * GN_REGISTERS >= sk {
                        return Some(Plan {
                            v,
                            ch,
                            threads,
                            k,
                            registers: true,
                        });
                    }
                }
                let threads = (tx * s).next_multiple_of(32).clamp(32, 512);
                looped.get_or_insert(Plan {
                    v,
                    ch,
                    threads,
                    k: 1,
                    registers: false,
                });
            }
            gc /= 2;
        }
        v /= 2;
    }
    looped
}

/// Which channels-last group-norm kernel runs: the split form (statistics per chunk of
/// positions, their combination, then one normalising pass: three launches of small blocks
/// streaming contiguous memory) or the one-kernel form with the values in registers
/// ([`plan`]). `LANGEVIN_NHWC_GN=reg` picks the second (for comparisons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GnForm {
    Split,
    Registers,
}

/// On: the split form; `LANGEVIN_NHWC_GN=reg` turns it off.
static GN_SPLIT: EnvSwitch = EnvSwitch::new("LANGEVIN_NHWC_GN", |v| v != Some("reg"));

/// The group-norm form in use (see [`GnForm`]).
pub fn gn_form() -> GnForm {
    match GN_SPLIT.get() {
        true => GnForm::Split,
        false => GnForm::Registers,
    }
}

/// Choose the group-norm form for later calls (the GPU parity run checks both).
pub fn set_gn_form(f: GnForm) {
    GN_SPLIT.set(f == GnForm::Split);
}

/// Vectors a thread of the split group norm holds (`CL_SPLIT_R` in nhwc.cu).
const SPLIT_R: usize = 4;

/// The split group norm's geometry: `v`-element vectors, blocks of `threads` threads
/// (`ty = threads / (c / v)` positions a row, `p = SPLIT_R · ty` positions a block), `nchunk`
/// blocks an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitPlan {
    pub v: usize,
    pub threads: usize,
    pub p: usize,
    pub nchunk: usize,
}

/// The split plan for `c` channels over `s` positions of `size`-byte elements, vectors of at
/// most `max_v`; `None` when a position's vectors exceed one block (c / v > 256).
pub fn split_plan(c: usize, s: usize, size: usize, max_v: usize) -> Option<SplitPlan> {
    let mut v = (16 / size).min(max_v).max(1);
    while v > 1 && !c.is_multiple_of(v) {
        v /= 2;
    }
    let tx = c / v;
    if tx > 256 || s == 0 {
        return None;
    }
    let want = (tx * s.div_ceil(SPLIT_R)).next_multiple_of(32);
    let threads = want.clamp(tx.next_multiple_of(32), 256);
    let ty = threads / tx;
    let p = SPLIT_R * ty;
    Some(SplitPlan {
        v,
        threads,
        p,
        nchunk: s.div_ceil(p),
    })
}

/// Bytes of each position a group-norm block aims to cover: 64 unless
/// `LANGEVIN_NHWC_GN_BYTES` says otherwise. Measured on an H200 (ddpm-cifar10 bf16 forward,
/// batch 256): 8, 16, 32, 64 and 256 bytes gave 14.2, 15.9, 14.9, 12.6 and 14.9 ms.
fn gn_row_bytes() -> usize {
    static B: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *B.get_or_init(|| {
        let v = std::env::var("LANGEVIN_NHWC_GN_BYTES").ok();
        v.and_then(|v| v.parse().ok()).unwrap_or(64)
    })
}

fn fits(dt: DType) -> bool {
    matches!(dt, DType::F32 | DType::BF16)
}

/// `silu?(group_norm(x + shift) · γ + β)` for a channels-last `x` (as
/// [`super::gpu::group_norm`]); the result is channels-last.
///
/// # Shapes
/// `x`: [B, C, H, W] channels-last; `shift`: [B, C]; `gamma`, `beta`: [C].
pub fn group_norm(
    x: &Tensor,
    shift: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !fits(x.dtype()) || c % groups != 0 {
        candle_core::bail!(
            "channels-last group norm: {:?}, {c} channels, {groups} groups",
            x.dtype()
        )
    }
    let size = x.dtype().size_in_bytes();
    let planned = match gn_form() {
        GnForm::Split => split_plan(c, h * w, size, 16 / size).is_some(),
        GnForm::Registers => false,
    } || plan(c, groups, h * w, size, 16 / size).is_some();
    if !planned {
        // A channel geometry the kernel has no plan for: the channel-first kernel.
        let y = super::gpu::group_norm(&x.contiguous()?, shift, gamma, beta, groups, eps, silu)?;
        return to_channels_last(&y);
    }
    let shift = shift.map(|s| s.reshape((b, c))?.contiguous()).transpose()?;
    let (gamma, beta) = (gamma.contiguous()?, beta.contiguous()?);
    let y = imp::group_norm(
        &physical(x)?,
        &gamma,
        &beta,
        shift,
        groups,
        eps as f32,
        silu,
    )?;
    logical(&y)
}

/// `(x + bias[c] + residual) · scale` for a channels-last `x`; `residual` is brought to that
/// layout first. The result is channels-last.
pub fn bias_residual(
    x: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let residual = residual
        .map(|r| physical(&to_channels_last(r)?))
        .transpose()?;
    let bias = bias.map(|t| t.contiguous()).transpose()?;
    let y = imp::bias_residual(&physical(x)?, bias, residual, scale as f32)?;
    logical(&y)
}

/// `ph` rows and `pw` columns of zeros below and right of a channels-last [B, C, H, W] map:
/// [B, C, H + ph, W + pw], channels-last (one kernel on CUDA for f32/bf16; candle's
/// `pad_with_zeros` on the [B, H, W, C] memory otherwise).
pub fn pad_bottom_right(x: &Tensor, ph: usize, pw: usize) -> candle_core::Result<Tensor> {
    let p = physical(x)?;
    if p.device().is_cuda() && fits(p.dtype()) {
        return logical(&imp::pad_bottom_right(&p, ph, pw)?);
    }
    logical(&p.pad_with_zeros(1, 0, ph)?.pad_with_zeros(2, 0, pw)?)
}

/// Nearest-neighbour ×2 upsampling of a channels-last [B, C, H, W] → [B, C, 2H, 2W].
pub fn upsample2x(x: &Tensor) -> candle_core::Result<Tensor> {
    logical(&imp::upsample2x(&physical(x)?)?)
}

#[cfg(feature = "cuda")]
#[path = "gpu_nhwc_launch.rs"]
mod imp;

/// Without the `cuda` feature no tensor is ever channels-last on CUDA ([`enabled`] is false);
/// the launches only report that.
#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::{Result, Tensor};

    fn no_cuda<T>() -> Result<T> {
        candle_core::bail!("the channels-last kernels need a build with the `cuda` feature")
    }
    pub fn group_norm(
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: Option<Tensor>,
        _: usize,
        _: f32,
        _: bool,
    ) -> Result<Tensor> {
        no_cuda()
    }
    pub fn bias_residual(
        _: &Tensor,
        _: Option<Tensor>,
        _: Option<Tensor>,
        _: f32,
    ) -> Result<Tensor> {
        no_cuda()
    }
    pub fn upsample2x(_: &Tensor) -> Result<Tensor> {
        no_cuda()
    }
    pub fn cat_channels(_: &Tensor, _: &Tensor) -> Result<Tensor> {
        no_cuda()
    }
    pub fn pad_bottom_right(_: &Tensor, _: usize, _: usize) -> Result<Tensor> {
        no_cuda()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every plan respects the kernel's limits and covers the map, and the UNet geometries
    /// we benchmark get the register-resident form.
    #[test]
    fn group_norm_plans_fit_the_kernel() {
        for (c, g) in [
            (32, 32),
            (64, 32),
            (96, 32),
            (128, 32),
            (256, 32),
            (512, 32),
            (24, 8),
        ] {
            for s in [1, 16, 64, 49, 196, 256, 784, 1024, 4096, 16384] {
                for size in [2, 4] {
                    let Some(p) = plan(c, g, s, size, 16 / size) else {
                        continue;
                    };
                    let (cg, tx) = (c / g, (p.ch / p.v).next_power_of_two());
                    assert!(p.ch % cg == 0 && c % p.ch == 0 && c % p.v == 0, "{p:?}");
                    assert!(
                        tx <= 32 && p.threads % tx == 0 && p.ch <= GN_MAX_CH,
                        "{p:?}"
                    );
                    assert!(p.threads % 32 == 0 && p.threads <= 512, "{p:?}");
                    assert!([1, 2, 4, 8].contains(&p.k) && (p.registers || p.k == 1));
                    if p.registers {
                        let sk = s.div_ceil(p.k);
                        assert!((p.threads / tx) * GN_REGISTERS >= sk, "{p:?} for S {s}");
                    }
                }
            }
        }
        // The split form: whole positions in one block, chunks that cover the map exactly.
        for c in [1, 3, 16, 24, 32, 66, 128, 384, 512, 1024, 2048] {
            for s in [1, 5, 64, 1089, 16384] {
                for size in [2, 4] {
                    for max_v in [1, 2, 16 / size] {
                        let Some(p) = split_plan(c, s, size, max_v) else {
                            assert!(c / max_v.min(16 / size) > 256, "C {c}");
                            continue;
                        };
                        let tx = c / p.v;
                        assert!(c % p.v == 0 && p.v <= max_v, "{p:?}");
                        assert!(p.threads % 32 == 0 && tx <= p.threads && p.threads <= 256);
                        assert_eq!(p.p, SPLIT_R * (p.threads / tx), "{p:?}");
                        assert!(p.p * p.nchunk >= s && p.p * (p.nchunk - 1) < s, "{p:?}");
                    }
                }
            }
        }
        // ddpm-cifar10 (128–256 channels, 32×32 … 4×4) and the README's small UNet in bf16.
        for (c, s) in [
            (128, 1024),
            (256, 256),
            (256, 64),
            (256, 16),
            (384, 256),
            (512, 64),
            (64, 784),
            (32, 784),
            (192, 196),
        ] {
            let p = plan(c, 32, s, 2, 8).expect("a plan");
            assert!(p.registers, "C {c}, S {s}: {p:?}");
        }
        // ddpm-cifar10's 32×32 maps: 64-byte rows of 8 groups, one block of 512 threads.
        let p = plan(128, 32, 1024, 2, 8).unwrap();
        assert_eq!((p.ch, p.k, p.threads), (32, 1, 512), "{p:?}");
        // A 128×128 map: a cluster of blocks.
        assert!(plan(128, 32, 128 * 128, 2, 8).unwrap().k > 1);
        // A 256×256 map of 128 channels does not fit in registers: the three-pass form.
        assert!(!plan(128, 32, 256 * 256, 2, 8).unwrap().registers);
        // 33-channel groups have no geometry (the caller falls back to channel-first).
        assert_eq!(plan(66, 2, 64, 2, 8), None);
    }

    /// The layout helpers keep values: channels-last views, concatenation along channels in
    /// either layout, and the round trip.
    #[test]
    fn channels_last_views_keep_values() {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 5.0, &dev)
            .unwrap()
            .reshape((2, 3, 4, 5))
            .unwrap();
        let b = (a.narrow(1, 0, 2).unwrap() * 10.0).unwrap();
        let acl = to_channels_last(&a).unwrap();
        assert!(is_channels_last(&acl) && !is_channels_last(&a));
        assert_eq!(acl.dims(), a.dims());
        assert!(physical(&acl).unwrap().is_contiguous());
        let same = |x: &Tensor, y: &Tensor| {
            let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap() == 0.0
        };
        assert!(same(&acl, &a));
        let want = Tensor::cat(&[&a, &b], 1).unwrap();
        for (x, y) in [(&acl, &b), (&a, &to_channels_last(&b).unwrap())] {
            let got = cat_channels(x, y).unwrap();
            assert!(is_channels_last(&got) && same(&got, &want));
        }
        assert!(!is_channels_last(&cat_channels(&a, &b).unwrap()));
        // Bottom-right zeros (the CPU fallback of the CUDA kernel's layout contract).
        let want = a
            .pad_with_zeros(2, 0, 1)
            .unwrap()
            .pad_with_zeros(3, 0, 2)
            .unwrap();
        let got = pad_bottom_right(&acl, 1, 2).unwrap();
        assert!(is_channels_last(&got) && same(&got, &want));
        // One position: both layouts are the same memory; it counts as contiguous.
        let p = Tensor::zeros((2, 3, 1, 1), DType::F32, &dev).unwrap();
        assert!(!is_channels_last(&to_channels_last(&p).unwrap()));
    }
}
