//! The Python module `langevin._langevin`: a thin layer that converts arguments, releases the
//! GIL around each call into the library's API (`langevin::api`), and maps its errors onto
//! Python exceptions. No algorithm lives here; `langevin/__init__.py` adds the Python face.
mod errors;
mod model;
mod observer;
mod options;
mod train;

use numpy::{PyArray1, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use langevin::api::{ScheduleName, ScheduleOptions};

/// `schedule(kind, timesteps, beta, beta_start, beta_end)`: the discrete schedule's
/// arrays (betas, alpha_bar, sigmas, log_snr) and its terminal values.
#[pyfunction]
#[pyo3(signature = (kind="linear", timesteps=1000, beta=0.5, beta_start=1e-4, beta_end=0.02))]
fn schedule<'py>(
    py: Python<'py>,
    kind: &str,
    timesteps: usize,
    beta: f64,
    beta_start: f64,
    beta_end: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = ScheduleOptions {
        kind: kind.parse::<ScheduleName>().map_err(errors::to_py)?,
        timesteps,
        beta,
        beta_start,
        beta_end,
    };
    options::check_schedule(&opts)?;
    let s = opts.table().map_err(errors::to_py)?;
    let d = PyDict::new(py);
    d.set_item("betas", PyArray1::from_slice(py, &s.betas))?;
    d.set_item("alpha_bar", PyArray1::from_slice(py, &s.alphas_cumprod))?;
    d.set_item("sigmas", PyArray1::from_slice(py, &s.sigmas))?;
    d.set_item("log_snr", PyArray1::from_vec(py, s.log_snr()))?;
    d.set_item("terminal_alpha_bar", s.terminal_alpha_bar())?;
    d.set_item("terminal_snr", s.terminal_snr())?;
    Ok(d)
}

fn dims4(a: &PyReadonlyArray4<'_, f32>) -> (usize, usize, usize, usize) {
    let s = a.shape();
    (s[0], s[1], s[2], s[3])
}

/// `fid(a, b, device, batch_size)`: FID between two image arrays [N, C, H, W] in [-1, 1].
#[pyfunction]
#[pyo3(signature = (a, b, device="cpu", batch_size=100))]
fn fid(
    py: Python<'_>,
    a: PyReadonlyArray4<'_, f32>,
    b: PyReadonlyArray4<'_, f32>,
    device: &str,
    batch_size: usize,
) -> PyResult<f64> {
    let dev = langevin::compute::device(device).map_err(errors::to_py)?;
    let (sa, sb) = (dims4(&a), dims4(&b));
    let va: Vec<f32> = a.as_array().iter().copied().collect();
    let vb: Vec<f32> = b.as_array().iter().copied().collect();
    py.detach(|| {
        langevin::api::metrics::fid_of_images((&va, sa), (&vb, sb), &dev, batch_size.max(1))
    })
    .map_err(errors::to_py)
}

#[pymodule]
fn _langevin(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LangevinError", m.py().get_type::<errors::LangevinError>())?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(schedule, m)?)?;
    m.add_function(wrap_pyfunction!(fid, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    Ok(())
}
