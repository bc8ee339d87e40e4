//! CUDA graphs for a fixed-shape network evaluation: captured once, replayed every sampler step.
//!
//! Why own code: a UNet forward is ~600 launches, and candle spends host time on each
//! (allocation, layout, argument packing); on an H200 the GPU then waits on the host, most for
//! small models (measured in docs/benchmarks.md, issue 13). A captured graph replays every
//! launch with one call. The inputs are copied into the graph's own buffers before a replay and
//! the output is copied out, so callers see an ordinary function of their tensors.
//!
//! Capture works because of three things, and fails cleanly without them: candle's capture
//! cache (`enable_cuda_graph_htod_cache`) serves the small host→device uploads the forward
//! makes (layouts, constants) from device copies that the eager warm-up run in the same thread
//! made; nothing in the forward synchronises with the host (the one check that did, the class
//! label range, is skipped while [`capturing`] and done by the caller); and the cuDNN workspace
//! a graph uses is never freed while graphs exist ([`super::cudnn_conv::pin_workspaces`]).
//! Allocations inside the capture become the graph's own memory (stream-ordered allocation).
//! If capture fails anyway, that evaluation runs eagerly from then on, after one warning.
//!
//! `LANGEVIN_CUDA_GRAPHS=0` turns graphs off (the eager path, for comparison and debugging).
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use super::switch::{unless_zero, EnvSwitch};
use crate::Result;

/// At most this many captured shapes per network (each holds its activations' memory).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const MAX_GRAPHS: usize = 4;

static GRAPHS: EnvSwitch = EnvSwitch::new("LANGEVIN_CUDA_GRAPHS", unless_zero);

/// Whether graphs are allowed (`LANGEVIN_CUDA_GRAPHS=0` or [`set_enabled`]`(false)` forbids
/// them).
pub fn enabled() -> bool {
    GRAPHS.get()
}

/// Allow or forbid graphs for later captures (the GPU parity run compares both).
pub fn set_enabled(on: bool) {
    GRAPHS.set(on);
}

/// Whether `dev`'s stream is being captured into a graph right now (work is recorded, not
/// run: nothing may be read back to the host).
pub fn capturing(dev: &Device) -> bool {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        use candle_core::cuda_backend::cudarc::driver::sys::CUstreamCaptureStatus as S;
        return matches!(d.cuda_stream().capture_status(), Ok(s) if s != S::CU_STREAM_CAPTURE_STATUS_NONE);
    }
    let _ = dev;
    false
}

/// The shapes and dtypes of a call's inputs: one graph per distinct key.
type Key = Vec<(Vec<usize>, DType)>;

/// Counters for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Graphs captured.
    pub captured: u64,
    /// Calls answered by replaying a graph.
    pub replays: u64,
    /// Calls that ran eagerly (not CUDA, graphs off, first call of a shape, or capture failed).
    pub eager: u64,
}

/// A cache of captured graphs for one function of tensors (a network's forward).
#[derive(Default)]
pub struct CudaGraphs {
    state: Mutex<State>,
}

#[derive(Default)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct State {
    /// Least recently used first.
    entries: Vec<Entry>,
    /// Capture failed once: run eagerly from then on.
    failed: bool,
    stats: GraphStats,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Entry {
    key: Key,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    #[cfg(feature = "cuda")]
    graph: candle_core::cuda_backend::cudarc::driver::CudaGraph,
}

// SAFETY: a `CudaGraph` holds raw driver handles that must not be used from two threads at
// once; every use goes through `CudaGraphs::state`'s mutex.
unsafe impl Send for Entry {}

impl std::fmt::Debug for CudaGraphs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaGraphs({:?})", self.stats())
    }
}

impl CudaGraphs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> GraphStats {
        self.state.lock().map(|s| s.stats).unwrap_or_default()
    }

    /// `f(inputs)`, through a graph captured for these input shapes on CUDA. The first call
    /// of a shape runs `f` eagerly (that result is returned) and then captures it; later calls
    /// replay. `f` must be a pure function of its inputs and must not read anything back to
    /// the host; its result is bit-identical either way (the same kernels run).
    pub fn run(
        &self,
        inputs: &[&Tensor],
        f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let many = |t: &[Tensor]| Ok(vec![f(t)?]);
        let mut out = self.run_many(inputs, &many, true)?;
        Ok(out.remove(0))
    }

    /// [`CudaGraphs::run`] for a function with several results (a loss and its gradients).
    /// With `copy_out == false` a replay returns the graph's own output buffers, which the
    /// next replay overwrites: the caller must be done with them by then (a training step
    /// reads its gradients once).
    pub fn run_many(
        &self,
        inputs: &[&Tensor],
        f: &dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>,
        copy_out: bool,
    ) -> Result<Vec<Tensor>> {
        let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        #[cfg(feature = "cuda")]
        if let Some(Device::Cuda(dev)) = inputs.first().map(|t| t.device()) {
            if enabled() && !st.failed {
                let dev = dev.clone();
                return capture_or_replay(&mut st, &dev, &owned, f, copy_out);
            }
        }
        let _ = copy_out;
        st.stats.eager += 1;
        drop(st);
        f(&owned)
    }
}

#[cfg(feature = "cuda")]
fn capture_or_replay(
    st: &mut State,
    dev: &candle_core::CudaDevice,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>,
    copy_out: bool,
) -> Result<Vec<Tensor>> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let key: Key = inputs
        .iter()
        .map(|t| (t.dims().to_vec(), t.dtype()))
        .collect();
    if let Some(i) = st.entries.iter().position(|e| e.key == key) {
        let e = st.entries.remove(i);
        for (dst, src) in e.inputs.iter().zip(inputs) {
            // Flattened views share the buffers (a rank-0 input becomes [1]).
            dst.flatten_all()?
                .slice_set(&src.contiguous()?.flatten_all()?, 0, 0)?;
        }
        e.graph.launch().map_err(driver)?;
        let out = match copy_out {
            true => (e.outputs.iter())
                .map(|o| o.copy())
                .collect::<candle_core::Result<_>>()?,
            false => e.outputs.clone(),
        };
        st.entries.push(e);
        st.stats.replays += 1;
        return Ok(out);
    }
    st.stats.eager += 1;
    // The eager warm-up: fills candle's upload cache and picks the cuDNN algorithms.
    let _cache = dev.enable_cuda_graph_htod_cache();
    let y = f(inputs)?;
    let statics = (inputs.iter())
        .map(|t| Ok(t.contiguous()?.copy()?))
        .collect::<Result<Vec<_>>>()?;
    let outputs = (y.iter())
        .map(|y| Tensor::zeros(y.shape(), y.dtype(), y.device()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    super::cudnn_conv::pin_workspaces();
    use candle_core::backend::BackendDevice;
    dev.synchronize()?;
    let stream = dev.cuda_stream();
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(driver)?;
    // Everything `f` allocates is dropped inside the capture, so the graph owns it.
    let run = (|| -> Result<()> {
        let o = f(&statics)?;
        if o.len() != outputs.len() {
            return Err(candle_core::Error::Msg("a different number of results".into()).into());
        }
        for (dst, o) in outputs.iter().zip(&o) {
            dst.flatten_all()?
                .slice_set(&o.contiguous()?.flatten_all()?, 0, 0)?;
        }
        Ok(())
    })();
    // Instantiated and uploaded (its memory reserved) now, so that a graph that does not fit
    // falls back here instead of failing a later call.
    let graph = (stream.end_capture(sys::CUgraphInstantiate_flags(0)))
        .and_then(|g| g.map(|g| g.upload().map(|()| g)).transpose());
    match (run, graph) {
        (Ok(()), Ok(Some(graph))) => {
            if st.entries.len() == MAX_GRAPHS {
                st.entries.remove(0);
            }
            st.entries.push(Entry {
                key,
                inputs: statics,
                outputs,
                graph,
            });
            st.stats.captured += 1;
        }
        (run, graph) => {
            // Errors that the capture left behind in drops (freeing inside an invalidated
            // capture) are cleared so that they do not surface in an unrelated later call.
            let _ = stream.context().check_err();
            let why = match (run, graph) {
                (Err(e), _) => e.to_string(),
                (_, Err(e)) => e.to_string(),
                _ => "the capture was empty".into(),
            };
            eprintln!("langevin: CUDA graph capture failed ({why}); evaluating without graphs");
            st.failed = true;
        }
    }
    Ok(y)
}

#[cfg(feature = "cuda")]
fn driver(e: candle_core::cuda_backend::cudarc::driver::DriverError) -> crate::Error {
    crate::Error::from(candle_core::Error::Msg(format!("CUDA graph: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off CUDA the cache is a plain call: same value, counted as eager, nothing captured.
    #[test]
    fn on_the_cpu_it_is_the_function_itself() {
        let g = CudaGraphs::new();
        let x = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        let f = |t: &[Tensor]| Ok((&t[0] * 2.0)?);
        for _ in 0..3 {
            let y = g.run(&[&x], &f).unwrap();
            assert_eq!(y.to_vec1::<f32>().unwrap(), vec![2., 4., 6.]);
        }
        let s = g.stats();
        assert_eq!((s.captured, s.replays, s.eager), (0, 0, 3));
        assert!(!capturing(&Device::Cpu));
    }
}
