//! `langevin.Model`: a loaded run folder (or diffusers model folder) and its sampling calls.
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use langevin::api::apps::{img2img_image, inpaint_image, upscale_image};
use langevin::api::sample::{sample, SampleRequest};
use langevin::apps::inpaint::Resample;
use langevin::model::Run;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;

use crate::errors::to_py;
use crate::observer::PyObserver;
use crate::options::{check, sample_options};

#[pyclass(module = "langevin._langevin", name = "Model", frozen)]
pub struct Model {
    run: Run,
}

fn tensor(a: &PyReadonlyArrayDyn<'_, f32>) -> PyResult<Tensor> {
    let dims = a.shape().to_vec();
    let v: Vec<f32> = a.as_array().iter().copied().collect();
    Tensor::from_vec(v, dims, &Device::Cpu).map_err(|e| to_py(e.into()))
}

fn array<'py>(py: Python<'py>, x: &Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let dims = x.dims().to_vec();
    let v: Vec<f32> = (|| -> langevin::Result<Vec<f32>> {
        Ok(x.to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    })()
    .map_err(to_py)?;
    PyArray1::from_vec(py, v).reshape(dims)
}

#[pymethods]
impl Model {
    /// Load a run folder written by `langevin train` (or a diffusers UNet2DModel folder).
    #[staticmethod]
    #[pyo3(signature = (path, device="cpu", dtype=None))]
    fn load(py: Python<'_>, path: PathBuf, device: &str, dtype: Option<&str>) -> PyResult<Model> {
        if !path.exists() {
            return Err(PyFileNotFoundError::new_err(format!(
                "{}: no such model folder",
                path.display()
            )));
        }
        let dev = langevin::compute::device(device).map_err(to_py)?;
        let dtype = dtype
            .map(|s| s.parse::<langevin::compute::Precision>())
            .transpose()
            .map_err(to_py)?
            .map(|p| p.dtype());
        if let Some(d) = dtype {
            langevin::compute::check(&dev, d).map_err(to_py)?;
        }
        let run = py
            .detach(|| Run::load_for_sampling(&path, &dev, dtype))
            .map_err(to_py)?;
        Ok(Model { run })
    }

    /// The run's config.json as a JSON string.
    #[getter]
    fn config_json(&self) -> PyResult<String> {
        let p = self.run.dir.join(langevin::model::run::CONFIG);
        std::fs::read_to_string(&p).map_err(|e| to_py(langevin::Error::io(p, e)))
    }

    /// The shape of one sample: [D] for tabular models, [C, H, W] for image models.
    #[getter]
    fn sample_shape(&self) -> PyResult<Vec<usize>> {
        self.run.config.sample_shape().map_err(to_py)
    }

    /// Number of classes of a class-conditional model (0 otherwise).
    #[getter]
    fn num_classes(&self) -> usize {
        langevin::api::class_range(&self.run).0
    }

    /// The folder the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.run.dir.clone()
    }

    #[pyo3(signature = (n, sampler="dpmpp-2m", steps=20, seed=0, labels=None, guidance=1.0, init_noise=None, batch_size=64, spacing="auto", eta=None, churn=0.0, langevin_steps=10, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        n: usize,
        sampler: &str,
        steps: usize,
        seed: u64,
        labels: Option<Vec<u32>>,
        guidance: f64,
        init_noise: Option<PyReadonlyArrayDyn<'py, f32>>,
        batch_size: usize,
        spacing: &str,
        eta: Option<f64>,
        churn: f64,
        langevin_steps: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        check("n", n, |v| v >= 1, "an integer >= 1")?;
        check(
            "guidance",
            guidance,
            |v| v >= 0.0 && v.is_finite(),
            "a number >= 0",
        )?;
        let s = sample_options(
            sampler,
            steps,
            spacing,
            eta,
            churn,
            langevin_steps,
            batch_size,
        )?;
        let req = SampleRequest {
            n,
            seed,
            class: None,
            labels,
            guidance,
            init_noise: init_noise.as_ref().map(tensor).transpose()?,
        };
        let obs = PyObserver::new(progress);
        let run = &self.run;
        let (x, _) = py
            .detach(|| sample(run, &s, &req, &obs))
            .map_err(|e| obs.error(e))?;
        array(py, &x)
    }

    #[pyo3(signature = (image, keep, sampler="dpmpp-2m", steps=20, seed=0, label=None, guidance=1.0, resample=1, jump=1, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn inpaint<'py>(
        &self,
        py: Python<'py>,
        image: PyReadonlyArrayDyn<'py, f32>,
        keep: PyReadonlyArrayDyn<'py, f32>,
        sampler: &str,
        steps: usize,
        seed: u64,
        label: Option<u32>,
        guidance: f64,
        resample: usize,
        jump: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        check("resample", resample, |v| v >= 1, "an integer >= 1")?;
        check("jump", jump, |v| v >= 1, "an integer >= 1")?;
        let s = sample_options(sampler, steps, "auto", None, 0.0, 10, 1)?;
        let (x, k) = (tensor(&image)?, tensor(&keep)?);
        let obs = PyObserver::new(progress);
        let run = &self.run;
        let rs = Resample {
            jump,
            count: resample,
        };
        let out = py
            .detach(|| inpaint_image(run, &s, &x, &k, label, guidance, seed, rs, &obs))
            .map_err(|e| obs.error(e))?;
        array(py, &out)
    }

    #[pyo3(signature = (image, strength, sampler="dpmpp-2m", steps=20, seed=0, label=None, guidance=1.0, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn img2img<'py>(
        &self,
        py: Python<'py>,
        image: PyReadonlyArrayDyn<'py, f32>,
        strength: f64,
        sampler: &str,
        steps: usize,
        seed: u64,
        label: Option<u32>,
        guidance: f64,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(PyValueError::new_err(format!(
                "strength: expected a number in (0, 1], got {strength}"
            )));
        }
        let s = sample_options(sampler, steps, "auto", None, 0.0, 10, 1)?;
        let x = tensor(&image)?;
        let obs = PyObserver::new(progress);
        let run = &self.run;
        let out = py
            .detach(|| img2img_image(run, &s, &x, strength, label, guidance, seed, &obs))
            .map_err(|e| obs.error(e))?;
        array(py, &out)
    }

    #[pyo3(signature = (image, zero_shot=false, sampler="dpmpp-2m", steps=20, seed=0, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn upscale<'py>(
        &self,
        py: Python<'py>,
        image: PyReadonlyArrayDyn<'py, f32>,
        zero_shot: bool,
        sampler: &str,
        steps: usize,
        seed: u64,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let s = sample_options(sampler, steps, "auto", None, 0.0, 10, 1)?;
        let x = tensor(&image)?;
        if x.rank() != 4 || x.dims()[0] != 1 {
            return Err(PyValueError::new_err(format!(
                "image: expected one image [1, C, h, w], got {:?}",
                x.dims()
            )));
        }
        let obs = PyObserver::new(progress);
        let run = &self.run;
        let out = py
            .detach(|| upscale_image(run, &s, &x, zero_shot, seed, &obs))
            .map_err(|e| obs.error(e))?;
        array(py, &out)
    }
}
