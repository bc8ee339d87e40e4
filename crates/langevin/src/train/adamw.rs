//! AdamW (Loshchilov & Hutter 2019) with its moments exposed, so a checkpoint can hold them and
//! `--resume` continues bit-identically. On CUDA the update, and the gradient norm, run as one
//! multi-tensor kernel launch each over all parameters (`kernels::gpu_optim`); elsewhere as
//! candle ops per tensor. Both compute the same f32 expressions.
use candle_core::{backprop::GradStore, DType, Tensor, Var};

use super::cpu_optim;
use crate::kernels::{gpu_optim, gpu_train};
use crate::Result;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// (name, parameter, first moment, second moment), in name order.
    pub params: Vec<(String, Var, Tensor, Tensor)>,
    /// Steps taken so far.
    pub t: u64,
    /// Low-precision copies of the parameters that the network computes with (mixed
    /// precision): gradients are read for these, and each step writes the updated f32 weight
    /// into them, rounded. `None`: the network uses the f32 parameters.
    shadows: Option<Vec<Var>>,
    /// Use the one-pass update (CUDA kernel or CPU loop) where it applies; `false` keeps the
    /// composed candle form (the reference the fused ones are tested against).
    pub fused: bool,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(n, v)| {
                // Two buffers: the CUDA kernel updates the moments in place.
                let (m, v2) = (v.as_tensor().zeros_like()?, v.as_tensor().zeros_like()?);
                Ok((n, v, m, v2))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            params,
            t: 0,
            shadows: None,
            fused: true,
        })
    }

    /// Let the network compute with `shadows` (one per parameter, in order, of the parameter's
    /// shape and a lower precision): gradients are taken for them, and every step rounds the
    /// updated f32 weights into them.
    pub fn set_shadows(&mut self, shadows: Vec<Var>) -> Result<()> {
        if shadows.len() != self.params.len()
            || shadows
                .iter()
                .zip(&self.params)
                .any(|(s, p)| s.shape() != p.1.shape())
        {
            return Err(candle_core::Error::Msg(
                "AdamW shadows must match the parameters one to one".into(),
            )
            .into());
        }
        self.shadows = Some(shadows);
        Ok(())
    }

    /// Back to computing with the f32 parameters.
    pub fn clear_shadows(&mut self) {
        self.shadows = None;
    }

    /// The tensors the network computes with, in parameter order (the gradients' keys).
    pub fn grad_keys(&self) -> Vec<Tensor> {
        (0..self.params.len())
            .map(|i| self.computed(i).clone())
            .collect()
    }

    /// Whether a step runs as the fused CUDA kernels, which update the weights (and shadows)
    /// in their storage: what a captured training graph ([`super::graphed`]) relies on.
    pub fn updates_in_place(&self) -> bool {
        self.fused
            && self
                .params
                .first()
                .is_some_and(|p| gpu_train::available(p.1.as_tensor()))
            && (self.params.iter())
                .all(|(_, v, _, _)| v.dtype() == DType::F32 && v.device().is_cuda())
    }

    /// The tensor the network computes with for parameter `i` (its gradient's key).
    fn computed(&self, i: usize) -> &Tensor {
        match &self.shadows {
            Some(s) => s[i].as_tensor(),
            None => self.params[i].1.as_tensor(),
        }
    }

    /// The gradients in parameter order, when the whole update can run as the CUDA
    /// multi-tensor kernels: f32 parameters on CUDA, gradients of one dtype.
    fn cuda_grads(&self, grads: &GradStore) -> Result<Option<Vec<(usize, Tensor)>>> {
        let Some(first) = self.params.first() else {
            return Ok(None);
        };
        if !self.fused || !gpu_train::available(first.1.as_tensor()) {
            return Ok(None);
        }
        let mut out = vec![];
        let mut dtype = None;
        for (i, (_, v, _, _)) in self.params.iter().enumerate() {
            if v.dtype() != DType::F32 || !v.device().is_cuda() {
                return Ok(None);
            }
            if let Some(g) = grads.get(self.computed(i)) {
                if *dtype.get_or_insert(g.dtype()) != g.dtype() {
                    return Ok(None);
                }
                out.push((i, g.contiguous()?));
            }
        }
        Ok(Some(out))
    }

    /// The gradients in parameter order when every tensor involved is contiguous f32 on the
    /// CPU and no shadows are used: the one-pass CPU update applies.
    fn cpu_grads(&self, grads: &GradStore) -> Result<Option<Vec<(usize, Tensor)>>> {
        if !self.fused || self.shadows.is_some() {
            return Ok(None);
        }
        let mut out = vec![];
        for (i, (_, v, m, s)) in self.params.iter().enumerate() {
            if ![v.as_tensor(), m, s].into_iter().all(cpu_optim::eligible) {
                return Ok(None);
            }
            if let Some(g) = grads.get(v.as_tensor()) {
                let g = g.contiguous()?;
                if !cpu_optim::eligible(&g) {
                    return Ok(None);
                }
                out.push((i, g));
            }
        }
        Ok(Some(out))
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        if let Some(gs) = self.cuda_grads(grads)? {
            let refs: Vec<&Tensor> = gs.iter().map(|(_, g)| g).collect();
            return Ok(gpu_optim::sum_squares(&refs)?.sqrt());
        }
        if let Some(gs) = self.cpu_grads(grads)? {
            // Each tensor's sum on its own thread, then added in order: the serial loop's bits.
            let sums = cpu_optim::per_tensor(&gs, |(_, g)| cpu_optim::sum_squares(g))?;
            return Ok(sums.iter().fold(0f64, |sq, s| sq + s).sqrt());
        }
        let mut sq = 0f64;
        for i in 0..self.params.len() {
            if let Some(g) = grads.get(self.computed(i)) {
                sq += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update with learning rate `lr`, gradients scaled by `grad_scale` (for clipping).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step_averaged(grads, lr, grad_scale, None).map(|_| ())
    }

    /// [`Self::step`], and with `ema` = (the averages, one per parameter in this optimiser's
    /// order, and the decay d) the averages e ← e·d + θ'·(1 − d) of the updated weights θ' in
    /// the same pass, where the one-pass CPU update applies. Returns whether the averages were
    /// updated; if not, the caller updates them (`Ema::update`).
    pub fn step_averaged(
        &mut self,
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
        ema: Option<(&mut [(String, Tensor)], f64)>,
    ) -> Result<bool> {
        self.t += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        // The step's constants, for the one-pass forms (the composed form below spells them).
        let k = gpu_optim::AdamStep {
            grad_scale,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            bc1,
            bc2,
            lr,
            weight_decay: c.weight_decay,
        };
        if let Some(gs) = self.cuda_grads(grads)? {
            let rows: Vec<gpu_optim::AdamRow> = gs
                .iter()
                .map(|(i, g)| {
                    let (_, var, m, v) = &self.params[*i];
                    gpu_optim::AdamRow {
                        theta: var.as_tensor(),
                        m,
                        v,
                        grad: g,
                        shadow: self.shadows.as_ref().map(|s| s[*i].as_tensor()),
                    }
                })
                .collect();
            gpu_optim::adamw(&rows, k)?;
            return Ok(false);
        }
        if let Some(gs) = self.cpu_grads(grads)? {
            // The averages in the same pass when they line up with the parameters.
            let ema = ema.filter(|(w, _)| {
                w.len() == self.params.len()
                    && w.iter().zip(&self.params).all(|((we, e), (n, v, _, _))| {
                        we == n && cpu_optim::eligible(e) && e.shape() == v.shape()
                    })
            });
            // One task per tensor (no sum crosses tensors, so the bits do not depend on the
            // threads): this pass was a serial ~0.5 ms of the demo's step.
            let params = &self.params;
            let averages = ema.as_ref().map(|(w, d)| (&**w, *d));
            let news = cpu_optim::per_tensor(&gs, |(i, g)| {
                let (_, var, m, v) = &params[*i];
                let e = averages.map(|(w, d)| (&w[*i].1, d));
                cpu_optim::adamw(var, m, v, g, &k, e)
            })?;
            // The new averages by parameter (none where a parameter had no gradient).
            let mut new_avg: Vec<Option<Tensor>> = vec![None; self.params.len()];
            for ((i, _), (m2, v2, e2)) in gs.iter().zip(news) {
                let (_, _, m, v) = &mut self.params[*i];
                (*m, *v) = (m2, v2);
                new_avg[*i] = e2;
            }
            let Some((w, d)) = ema else {
                return Ok(false);
            };
            for (i, e2) in new_avg.into_iter().enumerate() {
                w[i].1 = match e2 {
                    Some(e2) => e2,
                    // No gradient: θ is unchanged, and its average still moves toward it.
                    None => cpu_optim::ema(&w[i].1, self.params[i].1.as_tensor(), d)?,
                };
            }
            return Ok(true);
        }
        for i in 0..self.params.len() {
            let Some(g) = grads.get(self.computed(i)) else {
                continue;
            };
            let g = (g.to_dtype(DType::F32)? * grad_scale)?;
            let (_, var, m, v) = &mut self.params[i];
            *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + c.eps)?)?;
            let theta = var.as_tensor();
            let decayed = (theta * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            if let Some(s) = &self.shadows {
                s[i].set(&self.params[i].1.as_tensor().to_dtype(s[i].dtype())?)?;
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A hand-computed first step: m̂ = g, v̂ = g², so θ ← θ(1 - lr·wd) - lr·g/(|g| + ε).
    #[test]
    fn first_step_matches_the_closed_form() {
        let w = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let loss = (w.as_tensor().sqr().unwrap() * 3.0)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg).unwrap();
        opt.step(&grads, 0.01, 1.0).unwrap();
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        for (i, th) in [1.0f64, -2.0].iter().enumerate() {
            let g = 6.0 * th;
            let want = th * (1.0 - 0.01 * 0.1) - 0.01 * g / (g.abs() + 1e-8);
            assert!((got[i] as f64 - want).abs() < 1e-6, "{} vs {want}", got[i]);
        }
        assert!((opt.grad_norm(&grads).unwrap() - (36.0f64 + 144.0).sqrt()).abs() < 1e-4);
    }

    /// The one-pass CPU update (and gradient norm) gives the composed form's bits, over
    /// steps with clipping and weight decay.
    #[test]
    fn fused_cpu_step_is_bit_identical_to_the_composed_one() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut randn =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect() };
        let shapes: [&[usize]; 3] = [&[7, 5], &[33], &[2, 3, 4]];
        let init: Vec<Vec<f32>> = shapes.iter().map(|s| randn(s.iter().product())).collect();
        let mk = || -> Vec<(String, Var)> {
            init.iter()
                .zip(shapes)
                .enumerate()
                .map(|(i, (v, s))| {
                    let t = Tensor::from_vec(v.clone(), s, &Device::Cpu).unwrap();
                    (format!("p{i}"), Var::from_tensor(&t).unwrap())
                })
                .collect()
        };
        let cfg = AdamWConfig {
            weight_decay: 0.05,
            ..Default::default()
        };
        let (va, vb) = (mk(), mk());
        let mut a = AdamW::new(va.clone(), cfg).unwrap();
        let mut b = AdamW::new(vb.clone(), cfg).unwrap();
        b.fused = false;
        for step in 0..6 {
            let loss = |vars: &[(String, Var)]| {
                let mut l = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
                for (i, (_, v)) in vars.iter().enumerate() {
                    let w =
                        (v.as_tensor().sqr().unwrap() * (1.0 + i as f64 + step as f64)).unwrap();
                    l = (l + (w.sum_all().unwrap() + v.as_tensor().sum_all().unwrap()).unwrap())
                        .unwrap();
                }
                l
            };
            let (ga, gb) = (loss(&va).backward().unwrap(), loss(&vb).backward().unwrap());
            let (na, nb) = (a.grad_norm(&ga).unwrap(), b.grad_norm(&gb).unwrap());
            assert!((na - nb).abs() <= 1e-6 * nb, "norm {na} vs {nb}");
            let scale = if step % 2 == 0 { 0.5 } else { 1.0 };
            a.step(&ga, 0.01, scale).unwrap();
            b.step(&gb, 0.01, scale).unwrap();
        }
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        for (pa, pb) in a.params.iter().zip(&b.params) {
            assert_eq!(
                bits(pa.1.as_tensor()),
                bits(pb.1.as_tensor()),
                "{}: weights",
                pa.0
            );
            assert_eq!(bits(&pa.2), bits(&pb.2), "{}: first moment", pa.0);
            assert_eq!(bits(&pa.3), bits(&pb.3), "{}: second moment", pa.0);
        }
    }

    /// The averages folded into the optimiser's pass give the bits of a step followed by
    /// `Ema::update`, including a parameter that gets no gradient (its average still moves).
    #[test]
    fn averaged_step_matches_step_then_ema_update() {
        use super::super::ema::Ema;
        let mk = || -> Vec<(String, Var)> {
            [vec![0.3f32, -1.2, 2.0, 0.7], vec![0.5f32, -0.25]]
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        format!("p{i}"),
                        Var::new(v.as_slice(), &Device::Cpu).unwrap(),
                    )
                })
                .collect()
        };
        let (va, vb) = (mk(), mk());
        let (mut a, mut b) = (
            AdamW::new(va.clone(), AdamWConfig::default()).unwrap(),
            AdamW::new(vb.clone(), AdamWConfig::default()).unwrap(),
        );
        let (mut ea, mut eb) = (Ema::new(&va, 0.9).unwrap(), Ema::new(&vb, 0.9).unwrap());
        for step in 1..=4u64 {
            // Only p0 enters the loss: p1 has no gradient.
            let loss = |v: &[(String, Var)]| {
                (v[0].1.as_tensor().sqr().unwrap() * step as f64)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let (ga, gb) = (loss(&va).backward().unwrap(), loss(&vb).backward().unwrap());
            let d = ea.decay_at(step);
            assert!(a
                .step_averaged(&ga, 0.05, 0.7, Some((&mut ea.weights, d)))
                .unwrap());
            b.step(&gb, 0.05, 0.7).unwrap();
            eb.update(&vb, step).unwrap();
        }
        let bits = |t: &Tensor| -> Vec<u32> {
            t.to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        for i in 0..2 {
            assert_eq!(
                bits(va[i].1.as_tensor()),
                bits(vb[i].1.as_tensor()),
                "weights {i}"
            );
            assert_eq!(
                bits(&ea.weights[i].1),
                bits(&eb.weights[i].1),
                "average {i}"
            );
        }
        // p0's average lags its weights (the pass did average, not copy).
        assert_ne!(bits(&ea.weights[0].1), bits(va[0].1.as_tensor()));
    }

    #[test]
    fn minimises_a_quadratic() {
        let w = Var::new(&[3.0f32, -4.0, 0.5], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default()).unwrap();
        for _ in 0..500 {
            let loss = (w.as_tensor() - 1.0)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            opt.step(&loss.backward().unwrap(), 0.05, 1.0).unwrap();
        }
        let v: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        assert!(v.iter().all(|x| (x - 1.0).abs() < 1e-2), "{v:?}");
    }
}
