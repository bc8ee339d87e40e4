//! The benchmark workloads on the langevin side: each builds its network with seeded weights,
//! writes the weights and inputs for the PyTorch reference (`bench/torch_ref.py`), and times a
//! forward pass or a training step.
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use langevin::denoiser::Cond;
use langevin::kernels::cuda_graph::CudaGraphs;
use langevin::kernels::{conv2d, group_norm_act};
use langevin::model::run::save_tensors;
use langevin::nn::init::reinit_seeded;
use langevin::nn::mlp::{Mlp, MlpConfig};
use langevin::nn::unet::{save_unet, varmap_tensors, UNet2DConfig, UNet2DModel};
use langevin::nn::Network;
use langevin::train::adamw::{AdamW, AdamWConfig};
use langevin::train::graphed::GradGraph;
use langevin::train::CastVars;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde_json::{json, Value};

/// The network of a workload.
#[derive(Clone)]
pub enum Arch {
    /// `blocks` × (x + conv3×3(silu(group_norm(conv3×3(x))))) on `ch` channels of hw×hw.
    ResBlocks {
        blocks: usize,
        ch: usize,
        groups: usize,
        hw: usize,
    },
    Unet(Box<UNet2DConfig>),
    Mlp(MlpConfig),
}

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Forward,
    Train,
}

#[derive(Clone)]
pub struct Workload {
    pub model: String,
    pub arch: Arch,
    pub mode: Mode,
    pub batch: usize,
    pub reps: usize,
    /// Compute dtype of the network (training keeps f32 master weights).
    pub dtype: DType,
}

impl Workload {
    pub fn name(&self) -> String {
        let m = match self.mode {
            Mode::Forward => "forward",
            Mode::Train => "train step",
        };
        let dt = match self.dtype {
            DType::F32 => String::new(),
            d => format!(" {}", d.as_str()),
        };
        format!("{} {m} b{}{dt}", self.model, self.batch)
    }

    fn input_shape(&self) -> Vec<usize> {
        let b = self.batch;
        match &self.arch {
            Arch::ResBlocks { ch, hw, .. } => vec![b, *ch, *hw, *hw],
            Arch::Unet(c) => {
                use langevin::nn::unet::config::SampleSize;
                let (h, w) = match c.sample_size {
                    Some(SampleSize::Square(s)) => (s, s),
                    Some(SampleSize::Rect([h, w])) => (h, w),
                    None => (32, 32),
                };
                vec![b, c.in_channels, h, w]
            }
            Arch::Mlp(c) => vec![b, c.in_dim],
        }
    }
}

type Forward = Box<dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;

/// The network as a function of (x, t), its parameters read from `vb`.
fn build(arch: &Arch, vb: VarBuilder) -> Result<Forward> {
    Ok(match arch.clone() {
        Arch::ResBlocks {
            blocks, ch, groups, ..
        } => {
            let w = |vb: &VarBuilder, name: &str, shape: &[usize]| {
                let init = match shape.len() {
                    1 if name == "norm.weight" => Init::Const(1.0),
                    1 => Init::Const(0.0),
                    _ => candle_nn::init::DEFAULT_KAIMING_NORMAL,
                };
                let (module, p) = name.split_once('.').unwrap();
                vb.pp(module).get_with_hints(shape, p, init)
            };
            let params = (0..blocks)
                .map(|i| {
                    let vb = vb.pp("blocks").pp(i);
                    let conv = [ch, ch, 3, 3];
                    Ok([
                        w(&vb, "conv1.weight", &conv)?,
                        w(&vb, "conv1.bias", &[ch])?,
                        w(&vb, "norm.weight", &[ch])?,
                        w(&vb, "norm.bias", &[ch])?,
                        w(&vb, "conv2.weight", &conv)?,
                        w(&vb, "conv2.bias", &[ch])?,
                    ])
                })
                .collect::<Result<Vec<_>>>()?;
            Box::new(move |x, _t| {
                let mut x = x.clone();
                for [w1, b1, g, be, w2, b2] in &params {
                    let h = conv2d(&x, w1, Some(b1), 1, 1)?;
                    let h = group_norm_act(&h, g, be, groups, 1e-5, true)?;
                    let h = conv2d(&h, w2, Some(b2), 1, 1)?;
                    x = (x + h)?;
                }
                Ok(x)
            })
        }
        Arch::Unet(cfg) => {
            let m = UNet2DModel::new(*cfg, vb)?;
            Box::new(move |x, t| Ok(m.forward_diffusers(x, t, None)?))
        }
        Arch::Mlp(cfg) => {
            let m = Mlp::new(cfg, vb)?;
            Box::new(move |x, t| Ok(m.forward(x, t, &Cond::default())?))
        }
    })
}

fn randn(shape: &[usize], rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Median wall time of `f` in milliseconds after `warmup` calls. With
/// `LANGEVIN_PROFILE_TIMED=1` in a CUDA build, the timed calls are bracketed by the CUDA
/// profiler's start and stop, so `ncu --profile-from-start off` sees only them (not the
/// warm-up, whose first call also times cuDNN's algorithms).
pub fn median_ms(warmup: usize, reps: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    median_ms_profiled(warmup, reps, true, f)
}

/// [`median_ms`], with the profiler bracket only when `profile` (the matmul-rate reference
/// stays out of the per-kernel tables).
pub fn median_ms_profiled(
    warmup: usize,
    reps: usize,
    profile: bool,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let _profile = profile.then(Profile::start);
    let t = (0..reps.max(1))
        .map(|_| {
            let t0 = Instant::now();
            f()?;
            Ok(t0.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<Vec<f64>>>()?;
    Ok(median(&t))
}

/// The median of `v` (not empty): the middle value, or the mean of the two middle ones for an
/// even count (an upper middle value would report the better of two rounds).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n % 2 {
        1 => v[n / 2],
        _ => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// The CUDA profiler running while this lives (see [`median_ms`]).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Profile(bool);

impl Profile {
    fn start() -> Self {
        let on = std::env::var("LANGEVIN_PROFILE_TIMED").is_ok_and(|v| v == "1");
        #[cfg(feature = "cuda")]
        if on {
            let _ = candle_core::cuda_backend::cudarc::driver::profiler_start();
        }
        Self(on)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        if self.0 {
            let _ = candle_core::cuda_backend::cudarc::driver::profiler_stop();
        }
    }
}

/// A workload ready to run: its timed step and the job description for the PyTorch side.
pub struct Prepared {
    pub job: Value,
    step: Box<dyn FnMut() -> Result<()> + Send>,
}

impl Prepared {
    pub fn time(&mut self, warmup: usize, reps: usize) -> Result<f64> {
        // Each step on a worker of the pool, as the trainer and the samplers run theirs.
        let step = &mut self.step;
        median_ms(warmup, reps, || langevin::threads::on_pool(&mut *step))
    }
}

/// Build the network with seeded weights (on the CPU), write weights and inputs under `dir`,
/// and return the timed step on `dev` (each step ends with a device synchronisation).
pub fn prepare(w: &Workload, dir: &Path, seed: u64, dev: &Device) -> Result<Prepared> {
    let cpu = Device::Cpu;
    let dt = w.dtype;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vm = VarMap::new();
    // Creates the variables in `vm` (the returned network is not used).
    let _ = build(&w.arch, VarBuilder::from_varmap(&vm, DType::F32, &cpu))?;
    let mut vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    reinit_seeded(&vars, &mut rng)?;
    // Zero-initialised output layers (the MLP's) would make the output comparison vacuous.
    for (_, v) in &vars {
        if v.rank() >= 2 && v.abs()?.max_all()?.to_scalar::<f32>()? == 0.0 {
            let fan_in: usize = v.dims()[1..].iter().product();
            v.set(&(randn(v.dims(), &mut rng)? / (fan_in as f64).sqrt())?)?;
        }
    }
    let tensors = varmap_tensors(&vm);
    let tag = w.name().replace(' ', "-");
    let mut job = json!({"name": w.name(), "mode": match w.mode { Mode::Forward => "forward", Mode::Train => "train" }, "reps": w.reps,
        "device": if dev.is_cpu() { "cpu" } else { "cuda" }, "dtype": dt.as_str()});
    let model_path = match &w.arch {
        Arch::Unet(cfg) => {
            let p = dir.join(&tag);
            save_unet(&p, cfg, &tensors)?;
            job["kind"] = "unet".into();
            p
        }
        arch => {
            let p = dir.join(format!("{tag}.weights.safetensors"));
            save_tensors(&p, &tensors, None)?;
            match arch {
                Arch::ResBlocks {
                    blocks, ch, groups, ..
                } => {
                    job["kind"] = "resblocks".into();
                    job["blocks"] = (*blocks).into();
                    job["channels"] = (*ch).into();
                    job["groups"] = (*groups).into();
                }
                Arch::Mlp(c) => {
                    job["kind"] = "mlp".into();
                    job["in_dim"] = c.in_dim.into();
                    job["hidden"] = c.hidden.into();
                    job["mlp_blocks"] = c.blocks.into();
                    job["temb_dim"] = c.temb_dim.into();
                }
                Arch::Unet(_) => unreachable!(),
            }
            p
        }
    };
    job["model"] = model_path.display().to_string().into();

    let x = randn(&w.input_shape(), &mut rng)?;
    let t: Vec<f32> = (0..w.batch)
        .map(|_| rng.random_range(0..1000) as f32)
        .collect();
    let t = Tensor::from_vec(t, w.batch, &cpu)?;
    let mut inputs = HashMap::from([("x".to_string(), x.clone()), ("t".to_string(), t.clone())]);
    let (x, t) = (x.to_device(dev)?, t.to_device(dev)?);
    let sync = dev.clone();
    let step: Box<dyn FnMut() -> Result<()> + Send> = match w.mode {
        Mode::Forward => {
            // Plain tensors, not variables (a variable's tensor tracks gradients, and so does
            // its cast): inference builds no graph, as `langevin sample` loading a folder.
            let tensors = tensors.into_iter().map(|(k, t)| (k, t.detach())).collect();
            let plain = build(&w.arch, VarBuilder::from_tensors(tensors, dt, dev))?;
            let xd = x.to_dtype(dt)?;
            let y = plain(&xd, &t)?.to_dtype(DType::F32)?.to_device(&cpu)?;
            inputs.insert("y".into(), y);
            // As `langevin sample` runs it: replayed as a CUDA graph on CUDA (unless
            // LANGEVIN_CUDA_GRAPHS=0); the first timed warm-up call captures.
            let graphs = CudaGraphs::new();
            let graphed = move |x: &Tensor, t: &Tensor| -> Result<Tensor> {
                let f = |i: &[Tensor]| {
                    plain(&i[0], &i[1]).map_err(|e| candle_core::Error::Msg(e.to_string()).into())
                };
                let y = graphs.run(&[x, t], &f)?;
                Ok(y)
            };
            Box::new(move || {
                graphed(&xd, &t)?;
                Ok(sync.synchronize()?)
            })
        }
        Mode::Train => {
            let target = randn(&w.input_shape(), &mut rng)?;
            inputs.insert("target".into(), target.clone());
            let target = target.to_device(dev)?;
            // f32 master weights on the device; a bf16/f16 network is built once over shadow
            // copies that the optimiser rewrites each step (as the trainer does).
            let vars = vars
                .into_iter()
                .map(|(k, v)| Ok((k, Var::from_tensor(&v.as_tensor().to_device(dev)?)?)))
                .collect::<Result<Vec<_>>>()?;
            let shadows = vars
                .iter()
                .map(|(k, v)| Ok((k.clone(), Var::from_tensor(&v.as_tensor().to_dtype(dt)?)?)))
                .collect::<Result<Vec<_>>>()?;
            let vb =
                VarBuilder::from_backend(Box::new(CastVars::new(shadows.clone())), dt, dev.clone());
            let net = build(&w.arch, vb)?;
            let mut opt = AdamW::new(vars, AdamWConfig::default())?;
            if dt != DType::F32 {
                opt.set_shadows(shadows.into_iter().map(|(_, v)| v).collect())?;
            }
            let xd = x.to_dtype(dt)?;
            // As the trainer runs it: forward and backward replayed as a CUDA graph on CUDA
            // (unless LANGEVIN_CUDA_GRAPHS=0), the optimiser eager.
            let graph = GradGraph::new(opt.grad_keys());
            Box::new(move || {
                let f = |i: &[Tensor]| -> langevin::Result<Tensor> {
                    let y = net(&i[0], &i[1])
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
                        .to_dtype(DType::F32)?;
                    Ok((y - &i[2])?.sqr()?.mean_all()?)
                };
                let (_, grads) = graph.loss_and_grads(&[&xd, &t, &target], &f)?;
                opt.step(&grads, 1e-4, 1.0)?;
                Ok(sync.synchronize()?)
            })
        }
    };
    let ipath = dir.join(format!("{tag}.inputs.safetensors"));
    save_tensors(&ipath, &inputs, None)?;
    job["inputs"] = ipath.display().to_string().into();
    Ok(Prepared { job, step })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[1.5, 3.0]), 2.25);
        assert_eq!(median(&[7.0]), 7.0);
    }
}
