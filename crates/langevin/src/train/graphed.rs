//! A training step's forward and backward pass as one CUDA graph (issue 16, item 5): captured
//! once for the step's shapes, then replayed with the new minibatch, noise and σ copied into
//! the graph's input buffers. The optimiser stays outside (a few launches, and the host reads
//! the loss and the gradient norm before any weight changes, so a diverging step still leaves
//! the weights as they were).
//!
//! Why: a UNet training step is ~1,500 launches, and candle spends host time on each; for the
//! README's small UNet the GPU waited on the host for most of the step (docs/benchmarks.md).
//! A replay runs the same kernels on the same buffers as the eager step, so the results are
//! bit-identical.
//!
//! What a graph needs from the caller: the parameters (and bf16 shadows) keep their storage
//! for the graph's lifetime, i.e. the optimiser updates them in place ([`super::adamw::AdamW`]'s
//! fused CUDA kernels do), and the loss reads nothing back to the host and uploads nothing
//! that changes between steps ([`super::loss::LossInputs`] is built for that).
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::kernels::cuda_graph::{CudaGraphs, GraphStats};
use crate::Result;

/// Loss and gradients through a captured graph, for a fixed list of gradient keys (the
/// tensors the network computes with: parameters or their low-precision shadows).
pub struct GradGraph {
    graphs: CudaGraphs,
    keys: Vec<Tensor>,
    /// Which keys got a gradient in the eager run (a parameter the loss does not reach has
    /// none, and the optimiser skips it): the graph returns only those.
    present: Mutex<Option<Vec<bool>>>,
}

impl GradGraph {
    pub fn new(keys: Vec<Tensor>) -> Self {
        Self {
            graphs: CudaGraphs::new(),
            keys,
            present: Mutex::new(None),
        }
    }

    pub fn stats(&self) -> GraphStats {
        self.graphs.stats()
    }

    /// `loss_fn(inputs)` and its gradients with respect to the keys. On CUDA the first call
    /// runs eagerly and captures, later calls replay; the returned gradients live in the
    /// graph's buffers and are overwritten by the next call.
    pub fn loss_and_grads(
        &self,
        inputs: &[&Tensor],
        loss_fn: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    ) -> Result<(Tensor, GradStore)> {
        let f = |t: &[Tensor]| -> Result<Vec<Tensor>> {
            let loss = loss_fn(t)?;
            let grads = loss.backward()?;
            let found: Vec<Option<&Tensor>> = self.keys.iter().map(|k| grads.get(k)).collect();
            let mut present = self.present.lock().unwrap_or_else(|p| p.into_inner());
            let mask: Vec<bool> = found.iter().map(|g| g.is_some()).collect();
            if present.as_ref().is_some_and(|p| *p != mask) {
                return Err(candle_core::Error::Msg(
                    "training graph: a different set of gradients than when captured".into(),
                )
                .into());
            }
            *present = Some(mask);
            let mut out = vec![loss.detach()];
            out.extend(found.into_iter().flatten().cloned());
            Ok(out)
        };
        let mut out = self.graphs.run_many(inputs, &f, false)?.into_iter();
        let loss = out.next().ok_or_else(|| {
            crate::Error::from(candle_core::Error::Msg("training graph: no loss".into()))
        })?;
        let present = self.present.lock().unwrap_or_else(|p| p.into_inner());
        let mut store = GradStore::default();
        let mask = present.as_deref().unwrap_or(&[]);
        for (k, _) in self.keys.iter().zip(mask).filter(|(_, &p)| p) {
            let g = out.next().ok_or_else(|| {
                crate::Error::from(candle_core::Error::Msg(
                    "training graph: a gradient is missing".into(),
                ))
            })?;
            store.insert(k, g);
        }
        Ok((loss, store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Off CUDA it is the plain loss and backward pass: the same gradients, keyed by the
    /// tensors given, and none for a key the loss does not reach.
    #[test]
    fn gradients_match_the_plain_backward_pass() {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, -2., 3.], &dev).unwrap();
        let unused = Var::new(&[5f32], &dev).unwrap();
        let x = Tensor::new(&[0.5f32, 1.5, -1.0], &dev).unwrap();
        let g = GradGraph::new(vec![w.as_tensor().clone(), unused.as_tensor().clone()]);
        let wt = w.as_tensor().clone();
        let f = move |t: &[Tensor]| Ok((&t[0] * &wt)?.sqr()?.sum_all()?);
        for _ in 0..2 {
            let (loss, grads) = g.loss_and_grads(&[&x], &f).unwrap();
            let want_loss = (&x * w.as_tensor())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let want = want_loss.backward().unwrap();
            assert_eq!(
                loss.to_scalar::<f32>().unwrap(),
                want_loss.to_scalar::<f32>().unwrap()
            );
            let got: Vec<f32> = grads.get(w.as_tensor()).unwrap().to_vec1().unwrap();
            let exp: Vec<f32> = want.get(w.as_tensor()).unwrap().to_vec1().unwrap();
            assert_eq!(got, exp);
            // d/dw Σ (x w)² = 2 x² w
            assert_eq!(got, vec![0.5, -9.0, 6.0]);
            assert!(grads.get(unused.as_tensor()).is_none());
        }
        assert_eq!(g.stats().eager, 2);
    }
}
