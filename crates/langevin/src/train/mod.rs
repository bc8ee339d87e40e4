//! Training: denoising score matching on any prediction target, AdamW with warmup + cosine
//! learning rate, gradient clipping, EMA, atomic checkpoints and bit-identical resume.
pub mod adamw;
pub mod checkpoint;
mod cpu_optim;
pub mod ema;
pub mod graphed;
pub mod loss;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::denoiser::{Cond, Precond};
use crate::model::{Net, RunConfig};
use crate::schedule::Schedule;
use crate::{Error, Result};
use adamw::{AdamW, AdamWConfig};
use ema::Ema;

/// Optimisation settings (saved with the checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `lr` at the end of the cosine decay.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    pub ema_decay: f64,
    pub seed: u64,
    /// Write a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Probability of replacing a class label by the null class (classifier-free guidance).
    #[serde(default)]
    pub label_dropout: f64,
    /// Per-noise-level loss weighting.
    #[serde(default)]
    pub loss_weighting: loss::LossWeighting,
}

/// Training data in memory: [N, ...] samples (standardised tables, or images in [-1, 1]).
pub struct TrainData {
    pub x: Tensor,
    /// Class labels [N] (u32).
    pub labels: Option<Tensor>,
    /// The label that means "no class" (trained with probability `label_dropout`).
    pub null_label: Option<u32>,
    /// Random horizontal flips of images.
    pub hflip: bool,
}

impl TrainData {
    pub fn unlabelled(x: Tensor) -> Self {
        Self {
            x,
            labels: None,
            null_label: None,
            hflip: false,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 10_000,
            batch_size: 512,
            lr: 2e-3,
            warmup_steps: 200,
            min_lr_ratio: 0.05,
            weight_decay: 0.0,
            grad_clip: 1.0,
            ema_decay: 0.999,
            seed: 0,
            checkpoint_every: 0,
            label_dropout: 0.0,
            loss_weighting: loss::LossWeighting::Uniform,
        }
    }
}

impl TrainConfig {
    /// Linear warmup, then cosine decay to `min_lr_ratio·lr`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let p = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cos)
    }
}

/// What a training step reports.
pub struct StepReport {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

pub struct Trainer {
    pub run: RunConfig,
    pub cfg: TrainConfig,
    pub model: Precond<Net>,
    vars: Vec<(String, Var)>,
    opt: AdamW,
    ema: Ema,
    rng: ChaCha8Rng,
    schedule: Option<Schedule>,
    /// (step, loss) history.
    pub losses: Vec<(u64, f64)>,
    dev: Device,
    /// The network's compute dtype; the weights, gradients and optimiser stay f32.
    compute: DType,
    /// For a compute dtype other than f32: the network built once over low-precision copies
    /// of the weights, which the optimiser refreshes every step (mixed precision).
    low_precision: Option<Precond<Net>>,
    /// On CUDA, from the second step of this process on: forward and backward as one
    /// captured graph (`LANGEVIN_CUDA_GRAPHS=0` turns it off).
    graph: Option<graphed::GradGraph>,
    /// Steps taken by this `Trainer` (not restored on resume).
    steps_here: u64,
}

/// The f32 training variables seen through a cast: a network built from this backend computes
/// in the requested dtype, and its gradients flow back through the cast to the f32 variables
/// (mixed-precision training with f32 master weights).
pub struct CastVars(HashMap<String, Var>);

impl CastVars {
    pub fn new(vars: impl IntoIterator<Item = (String, Var)>) -> Self {
        Self(vars.into_iter().collect())
    }
}

impl candle_nn::var_builder::SimpleBackend for CastVars {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("{name}: shape {:?}, expected {s:?}", t.shape())
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let v = self
            .0
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })?;
        v.as_tensor().to_dtype(dtype)?.to_device(dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl Trainer {
    /// A fresh model initialised from `cfg.seed`.
    pub fn new(run: RunConfig, cfg: TrainConfig, dev: &Device) -> Result<Self> {
        run.network.check_sizes()?;
        crate::memory::check(
            "the network's weights, gradients, AdamW moments and EMA",
            crate::memory::parameter_bytes(&run.network).saturating_mul(5),
            None,
            || "make the network smaller (--hidden, --blocks, --channels)".into(),
        )?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let net = run.network.build(vb)?;
        let vars = sorted_vars(&varmap);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        // The fourier time projection is a fixed random feature map, not a parameter to redraw.
        let redraw: Vec<(String, Var)> = vars
            .iter()
            .filter(|(n, _)| !n.starts_with("time_proj."))
            .cloned()
            .collect();
        crate::nn::init::reinit_seeded(&redraw, &mut rng)?;
        let opt = AdamW::new(
            vars.clone(),
            AdamWConfig {
                weight_decay: cfg.weight_decay,
                ..Default::default()
            },
        )?;
        let ema = Ema::new(&vars, cfg.ema_decay)?;
        let model = Precond {
            net,
            prediction: run.diffusion.prediction,
            noise_cond: run.diffusion.noise_cond()?,
        };
        let schedule = run.diffusion.discrete()?;
        Ok(Self {
            rng,
            run,
            cfg,
            model,
            vars,
            opt,
            ema,
            schedule,
            losses: vec![],
            dev: dev.clone(),
            compute: DType::F32,
            low_precision: None,
            graph: None,
            steps_here: 0,
        })
    }

    /// Compute the network in `dtype` (bf16/f16 mixed precision: f32 master weights, f32 loss,
    /// optimiser and EMA); f32 is the default. The network is built once over `dtype` copies
    /// of the current weights, which every optimiser step rewrites from the f32 weights (on
    /// CUDA inside the fused AdamW kernel): nothing is rebuilt or cast per step.
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<()> {
        self.compute = dtype;
        self.graph = None;
        if dtype == DType::F32 {
            self.low_precision = None;
            self.opt.clear_shadows();
            return Ok(());
        }
        let shadows = self
            .vars
            .iter()
            .map(|(n, v)| {
                Ok((
                    n.clone(),
                    Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let vb = VarBuilder::from_backend(
            Box::new(CastVars::new(shadows.iter().cloned())),
            dtype,
            self.dev.clone(),
        );
        self.low_precision = Some(Precond {
            net: self.run.network.build(vb)?,
            prediction: self.model.prediction,
            noise_cond: self.model.noise_cond.clone(),
        });
        self.opt
            .set_shadows(shadows.into_iter().map(|(_, v)| v).collect())
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    pub fn step(&self) -> u64 {
        self.opt.t
    }

    /// Number of trained parameters.
    /// The f32 weights by name, in name order.
    pub fn parameters(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor()))
    }

    pub fn model_parameters(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// One optimisation step on a minibatch drawn from `data`.
    pub fn train_step(&mut self, data: &TrainData) -> Result<StepReport> {
        let n = data.x.dim(0)?;
        let b = self.cfg.batch_size;
        let idx: Vec<u32> = (0..b).map(|_| self.rng.random_range(0..n as u32)).collect();
        let idx = Tensor::new(idx.as_slice(), data.x.device())?;
        let mut x0 = data.x.index_select(&idx, 0)?;
        if data.hflip && x0.rank() == 4 {
            let flips: Vec<f32> = (0..b)
                .map(|_| if self.rng.random::<bool>() { 1.0 } else { 0.0 })
                .collect();
            x0 = loss::hflip_rows(&x0, &flips)?;
        }
        let labels = match &data.labels {
            Some(l) => Some(l.index_select(&idx, 0)?),
            None => None,
        };
        self.train_step_batch(&x0, labels.as_ref(), data.null_label)
    }

    /// One optimisation step on a given minibatch `x0` [B, ...] with optional labels [B].
    pub fn train_step_batch(
        &mut self,
        x0: &Tensor,
        labels: Option<&Tensor>,
        null_label: Option<u32>,
    ) -> Result<StepReport> {
        let b = x0.dim(0)?;
        let x0 = &x0.to_device(&self.dev)?.to_dtype(DType::F32)?;
        let labels = match labels {
            Some(l) => {
                let l: Vec<u32> = l.to_vec1()?;
                // Label dropout for classifier-free guidance: the null class trains D(x, σ).
                let l: Vec<u32> = l
                    .into_iter()
                    .map(|y| match null_label {
                        Some(nl) if self.rng.random::<f64>() < self.cfg.label_dropout => nl,
                        _ => y,
                    })
                    .collect();
                Some(Tensor::new(l.as_slice(), &self.dev)?)
            }
            None => None,
        };
        let sigmas = self
            .run
            .diffusion
            .sample_sigmas(b, self.schedule.as_ref(), &mut self.rng);
        let eps = loss::randn(&mut self.rng, x0.dims(), &self.dev)?;
        let weights = self
            .cfg
            .loss_weighting
            .weights(self.model.prediction, &sigmas);
        let cond = Cond {
            labels,
            image: match self.run.data.superres_scale {
                Some(s) => Some(crate::data::images::low_resolution(x0, s)?),
                None => None,
            },
        };
        let inputs = {
            let model = self.low_precision.as_ref().unwrap_or(&self.model);
            loss::LossInputs::new(model, x0, &sigmas, &eps, cond, weights.as_deref())?
        };
        let (loss, grads) = self.loss_and_grads(&inputs)?;

        let step = self.opt.t;
        let lr = self.cfg.lr_at(step);
        // A non-finite loss or gradient stops training before it reaches the weights, so the
        // model in memory and every checkpoint on disk stay as they were.
        let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss_value.is_finite() {
            return Err(Error::Diverged {
                quantity: "loss",
                value: loss_value,
                step: step + 1,
                lr,
            });
        }
        let grad_norm = self.opt.grad_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(Error::Diverged {
                quantity: "gradient norm",
                value: grad_norm,
                step: step + 1,
                lr,
            });
        }
        let scale = if self.cfg.grad_clip > 0.0 && grad_norm > self.cfg.grad_clip {
            self.cfg.grad_clip / grad_norm
        } else {
            1.0
        };
        // The averages in the optimiser's pass where it can (the CPU one-pass update).
        let d = self.ema.decay_at(self.opt.t + 1);
        let averaged =
            (self.opt).step_averaged(&grads, lr, scale, Some((&mut self.ema.weights, d)))?;
        if !averaged {
            self.ema.update(&self.vars, self.opt.t)?;
        }
        let loss = loss_value;
        self.losses.push((step + 1, loss));
        Ok(StepReport {
            step: step + 1,
            loss,
            lr,
            grad_norm,
        })
    }

    /// The loss of `inputs` and its gradients: eagerly, or on CUDA from this trainer's second
    /// step on through a captured graph ([`graphed`]) when the optimiser updates the weights
    /// in place (the fused CUDA AdamW).
    fn loss_and_grads(
        &mut self,
        inputs: &loss::LossInputs,
    ) -> Result<(Tensor, candle_core::backprop::GradStore)> {
        self.steps_here += 1;
        if self.graph.is_none()
            && self.steps_here >= 2
            && self.dev.is_cuda()
            && crate::kernels::cuda_graph::enabled()
            && self.opt.updates_in_place()
        {
            self.graph = Some(graphed::GradGraph::new(self.opt.grad_keys()));
        }
        let model = self.low_precision.as_ref().unwrap_or(&self.model);
        if let Some(g) = &self.graph {
            let f = |t: &[Tensor]| inputs.with_tensors(t)?.loss(model);
            return g.loss_and_grads(&inputs.tensors(), &f);
        }
        let loss = inputs.loss(model)?;
        let grads = loss.backward()?;
        Ok((loss, grads))
    }

    /// Counters of the training graph (captures, replays), if one is in use.
    pub fn graph_stats(&self) -> Option<crate::kernels::cuda_graph::GraphStats> {
        self.graph.as_ref().map(|g| g.stats())
    }

    /// The EMA weights as a denoiser (what gets sampled).
    pub fn ema_denoiser(&self) -> Result<Precond<Net>> {
        // Copies: on CUDA the averages are updated in place as training goes on.
        let map = self
            .ema
            .weights
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.copy()?)))
            .collect::<Result<HashMap<String, Tensor>>>()?;
        let vb = VarBuilder::from_tensors(map, DType::F32, &self.dev);
        Ok(Precond {
            net: self.run.network.build(vb)?,
            prediction: self.model.prediction,
            noise_cond: self.model.noise_cond.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
