//! `langevin.train`: a run folder from a source name, a table [N, D] or images [N, C, H, W].
use std::path::PathBuf;

use langevin::api::{DataInput, TrainOptions};
use langevin::data::images::ImageSet;
use langevin::data::Table;
use numpy::{PyReadonlyArray2, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::observer::PyObserver;

fn table(a: &PyReadonlyArray2<'_, f32>) -> PyResult<Table> {
    let (rows, cols) = (a.shape()[0], a.shape()[1]);
    if rows < 2 || cols == 0 {
        return Err(PyValueError::new_err(format!(
            "data: expected a table [N, D] with N >= 2 and D >= 1, got [{rows}, {cols}]"
        )));
    }
    let v: Vec<f64> = a.as_array().iter().map(|&x| x as f64).collect();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(PyValueError::new_err("data: holds NaN or infinite values"));
    }
    let columns = (0..cols).map(|j| format!("x{j}")).collect();
    Table::new(columns, v).map_err(crate::errors::to_py)
}

fn images(
    a: &PyReadonlyArray4<'_, f32>,
    labels: Option<Vec<u32>>,
    class_names: Option<Vec<String>>,
) -> PyResult<ImageSet> {
    let s = a.shape();
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let v: Vec<f32> = a.as_array().iter().copied().collect();
    if v.iter().any(|x| !x.is_finite() || x.abs() > 1.0) {
        return Err(PyValueError::new_err(
            "data: images must hold finite values in [-1, 1]",
        ));
    }
    let labels = labels.unwrap_or_else(|| vec![0; n]);
    if labels.len() != n {
        return Err(PyValueError::new_err(format!(
            "labels: expected one label per image ({n}), got {}",
            labels.len()
        )));
    }
    let k = labels.iter().max().map_or(1, |&m| m as usize + 1);
    let class_names = class_names.unwrap_or_else(|| (0..k).map(|i| i.to_string()).collect());
    let set = ImageSet {
        images: v,
        labels,
        n,
        channels: c,
        height: h,
        width: w,
        class_names,
    };
    set.validate().map_err(crate::errors::to_py)?;
    Ok(set)
}

/// Train (or resume) the run in `out`. Returns (step, seconds, final loss).
#[pyfunction]
#[pyo3(signature = (out, steps, seed=0, source=None, table_data=None, image_data=None, labels=None, class_names=None, options=None, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn train(
    py: Python<'_>,
    out: PathBuf,
    steps: u64,
    seed: u64,
    source: Option<String>,
    table_data: Option<PyReadonlyArray2<'_, f32>>,
    image_data: Option<PyReadonlyArray4<'_, f32>>,
    labels: Option<Vec<u32>>,
    class_names: Option<Vec<String>>,
    options: Option<Bound<'_, PyDict>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<(u64, f64, f64)> {
    let mut o = TrainOptions {
        out,
        steps: Some(steps),
        seed,
        ..Default::default()
    };
    crate::options::train_options(&mut o, options.as_ref())?;
    let data = match (source, &table_data, &image_data) {
        (Some(s), None, None) => Some(DataInput::Spec(s)),
        (None, Some(t), None) => Some(DataInput::Table(table(t)?)),
        (None, None, Some(i)) => Some(DataInput::Images(images(i, labels, class_names)?)),
        (None, None, None) => None,
        _ => return Err(PyValueError::new_err("data: give one source")),
    };
    let obs = PyObserver::new(progress);
    let r = py.detach(|| langevin::api::train(&o, data, &obs));
    match r {
        Ok(s) => Ok((s.step, s.secs, s.final_loss)),
        Err(e) => Err(obs.error(e)),
    }
}
