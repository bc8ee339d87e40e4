//! [`Table`]: a dense row-major matrix of `f64` with named columns, and the per-column
//! [`Standardizer`].
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A dense `rows × cols` matrix of `f64`, row-major, with one name per column.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub rows: usize,
    pub cols: usize,
    /// Row-major values: element `(i, j)` is `data[i * cols + j]`.
    pub data: Vec<f64>,
    pub columns: Vec<String>,
}

impl Table {
    /// A table with the given column names; `data` is row-major and its length must be a
    /// multiple of `columns.len()` (which must be at least 1).
    pub fn new(columns: Vec<String>, data: Vec<f64>) -> Result<Self> {
        let cols = columns.len();
        if cols == 0 {
            return Err(Error::config("table", "a table needs at least one column"));
        }
        if !data.len().is_multiple_of(cols) {
            return Err(Error::config(
                "table",
                format!("{} values do not fill rows of {cols} columns", data.len()),
            ));
        }
        Ok(Self {
            rows: data.len() / cols,
            cols,
            data,
            columns,
        })
    }

    /// A table whose columns are named `c1, c2, …, c{cols}`.
    pub fn unnamed(cols: usize, data: Vec<f64>) -> Result<Self> {
        Self::new(default_columns(cols), data)
    }

    /// Row `i` as a slice of `cols` values. Panics if `i >= rows`.
    pub fn row(&self, i: usize) -> &[f64] {
        assert!(i < self.rows, "row {i} out of range for {} rows", self.rows);
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Column `j` copied out. Panics if `j >= cols`.
    pub fn column(&self, j: usize) -> Vec<f64> {
        assert!(
            j < self.cols,
            "column {j} out of range for {} columns",
            self.cols
        );
        (0..self.rows)
            .map(|i| self.data[i * self.cols + j])
            .collect()
    }

    /// A new table made of the given rows, in the given order (repeats allowed).
    /// Panics if an index is out of range.
    pub fn select_rows(&self, idx: &[usize]) -> Table {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Table {
            rows: idx.len(),
            cols: self.cols,
            data,
            columns: self.columns.clone(),
        }
    }

    /// Shuffle the rows with `rng` and split them into `(train, heldout)`, the held-out part
    /// holding `round(holdout_frac · rows)` rows. `holdout_frac` must lie in `[0, 1]`.
    pub fn split(&self, holdout_frac: f64, rng: &mut impl rand::Rng) -> Result<(Table, Table)> {
        if !(0.0..=1.0).contains(&holdout_frac) {
            return Err(Error::config(
                "holdout_frac",
                format!("must lie in [0, 1], got {holdout_frac}"),
            ));
        }
        let mut idx: Vec<usize> = (0..self.rows).collect();
        idx.shuffle(rng);
        let n_hold = ((holdout_frac * self.rows as f64).round() as usize).min(self.rows);
        let (hold, train) = idx.split_at(n_hold);
        Ok((self.select_rows(train), self.select_rows(hold)))
    }

    /// The values as `f32`, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    /// An `f32` tensor of shape `(rows, cols)` on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.to_f32(),
            (self.rows, self.cols),
            device,
        )?)
    }
}

/// Column names `c1, c2, …, c{cols}` for data that carries none.
pub fn default_columns(cols: usize) -> Vec<String> {
    (1..=cols).map(|j| format!("c{j}")).collect()
}

/// Per-column affine standardisation `z = (x − mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Standardizer {
    /// Column means and population standard deviations of `t`. A column whose standard
    /// deviation is zero (or not finite) gets std 1, so it is only centred. An empty table
    /// gives mean 0, std 1.
    pub fn fit(t: &Table) -> Self {
        let n = t.rows as f64;
        let mut mean = vec![0.0; t.cols];
        let mut std = vec![1.0; t.cols];
        if t.rows == 0 {
            return Self { mean, std };
        }
        for row in t.data.chunks_exact(t.cols) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; t.cols];
        for row in t.data.chunks_exact(t.cols) {
            for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v - m) * (v - m);
            }
        }
        for (s, v) in std.iter_mut().zip(var) {
            let sd = (v / n).sqrt();
            *s = if sd > 0.0 && sd.is_finite() { sd } else { 1.0 };
        }
        Self { mean, std }
    }

    /// Number of columns this standardizer was fitted on.
    pub fn dims(&self) -> usize {
        self.mean.len()
    }

    fn check(&self, t: &Table) -> Result<()> {
        if t.cols != self.dims() {
            return Err(Error::config(
                "standardizer",
                format!("fitted on {} columns, table has {}", self.dims(), t.cols),
            ));
        }
        Ok(())
    }

    fn map(&self, t: &Table, f: impl Fn(f64, f64, f64) -> f64) -> Result<Table> {
        self.check(t)?;
        let mut out = t.clone();
        for row in out.data.chunks_exact_mut(t.cols) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = f(*v, *m, *s);
            }
        }
        Ok(out)
    }

    /// `(x − mean) / std`, column by column.
    pub fn transform(&self, t: &Table) -> Result<Table> {
        self.map(t, |v, m, s| (v - m) / s)
    }

    /// `z · std + mean`, column by column: the inverse of [`Standardizer::transform`].
    pub fn inverse(&self, t: &Table) -> Result<Table> {
        self.map(t, |v, m, s| v * s + m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;

    fn t3x2() -> Table {
        Table::new(
            vec!["a".into(), "b".into()],
            vec![1.0, 10.0, 2.0, 10.0, 3.0, 10.0],
        )
        .unwrap()
    }

    #[test]
    fn new_checks_shape() {
        let t = t3x2();
        assert_eq!((t.rows, t.cols), (3, 2));
        assert_eq!(t.row(1), &[2.0, 10.0]);
        assert_eq!(t.column(0), vec![1.0, 2.0, 3.0]);
        assert!(Table::new(vec!["a".into(), "b".into()], vec![1.0; 3]).is_err());
        assert!(Table::new(vec![], vec![]).is_err());
        assert_eq!(
            Table::unnamed(3, vec![]).unwrap().columns,
            ["c1", "c2", "c3"]
        );
    }

    #[test]
    fn select_rows_and_f32() {
        let t = t3x2().select_rows(&[2, 0, 2]);
        assert_eq!(t.rows, 3);
        assert_eq!(t.data, vec![3.0, 10.0, 1.0, 10.0, 3.0, 10.0]);
        assert_eq!(t.to_f32(), vec![3.0f32, 10.0, 1.0, 10.0, 3.0, 10.0]);
        let x = t.to_tensor(&Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[3, 2]);
    }

    #[test]
    fn split_partitions_rows_and_is_seeded() {
        let t = Table::unnamed(1, (0..100).map(|i| i as f64).collect()).unwrap();
        let (tr, ho) = t.split(0.2, &mut seeded(7)).unwrap();
        assert_eq!((tr.rows, ho.rows), (80, 20));
        let mut all: Vec<f64> = tr.data.iter().chain(&ho.data).copied().collect();
        all.sort_by(f64::total_cmp);
        assert_eq!(all, t.data, "split must be a partition");
        assert_ne!(
            ho.data,
            (0..20).map(|i| i as f64).collect::<Vec<_>>(),
            "not shuffled"
        );
        let (tr2, ho2) = t.split(0.2, &mut seeded(7)).unwrap();
        assert_eq!((tr2, ho2), (tr, ho));
        assert_eq!(t.split(0.0, &mut seeded(1)).unwrap().1.rows, 0);
        assert_eq!(t.split(1.0, &mut seeded(1)).unwrap().0.rows, 0);
        assert!(t.split(1.5, &mut seeded(1)).is_err());
    }

    #[test]
    fn standardizer_fits_and_inverts() {
        let t = t3x2();
        let s = Standardizer::fit(&t);
        assert_eq!(s.mean, vec![2.0, 10.0]);
        assert!((s.std[0] - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.std[1], 1.0, "constant column gets std 1");
        let z = s.transform(&t).unwrap();
        assert!((z.data[0] + 1.224744871391589).abs() < 1e-12);
        assert_eq!(z.column(1), vec![0.0; 3]);
        let back = s.inverse(&z).unwrap();
        for (a, b) in back.data.iter().zip(&t.data) {
            assert!((a - b).abs() < 1e-12);
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Standardizer>(&json).unwrap(), s);
        assert!(s
            .transform(&Table::unnamed(3, vec![0.0; 3]).unwrap())
            .is_err());
    }
}
