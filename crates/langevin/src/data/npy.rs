//! NumPy `.npy` files through `npyz`: 1-D/2-D numeric arrays as [`Table`]s, and any-rank
//! `f32` arrays (image tensors) with their shapes.
//!
//! Readable dtypes: float (4, 8 bytes), signed and unsigned integers (1–8 bytes) and bool, in
//! either byte order; values are converted to `f64` / `f32`. Fortran-order arrays are
//! transposed into C order on load. Writes are always little-endian `f32`, C order.
use std::io::Write;
use std::path::Path;

use npyz::{DType, NpyFile, TypeChar, WriterBuilder};

use super::table::{default_columns, Table};
use crate::io::write_atomic;
use crate::{Error, Result};

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::DataFile {
        file: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Read every element as `f64`, in file order, with the shape and whether it is Fortran order.
fn read_any(path: &Path) -> Result<(Vec<usize>, Vec<f64>, bool)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let npy = NpyFile::new(&bytes[..])
        .map_err(|e| file_err(path, format!("not a valid .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fortran = npy.order() == npyz::Order::Fortran;
    let dtype = npy.dtype();
    let DType::Plain(ts) = &dtype else {
        return Err(file_err(
            path,
            format!(
                "unsupported dtype {}: structured arrays are not supported",
                dtype.descr()
            ),
        ));
    };
    let bad = |e: std::io::Error| file_err(path, format!("reading data: {e}"));
    fn conv<T: npyz::Deserialize>(
        npy: NpyFile<&[u8]>,
        f: impl Fn(T) -> f64,
    ) -> std::io::Result<Vec<f64>> {
        Ok(npy.into_vec::<T>()?.into_iter().map(f).collect())
    }
    let data = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => conv(npy, |v: f32| v as f64),
        (TypeChar::Float, 8) => conv(npy, |v: f64| v),
        (TypeChar::Int, 1) => conv(npy, |v: i8| v as f64),
        (TypeChar::Int, 2) => conv(npy, |v: i16| v as f64),
        (TypeChar::Int, 4) => conv(npy, |v: i32| v as f64),
        (TypeChar::Int, 8) => conv(npy, |v: i64| v as f64),
        (TypeChar::Uint, 1) => conv(npy, |v: u8| v as f64),
        (TypeChar::Uint, 2) => conv(npy, |v: u16| v as f64),
        (TypeChar::Uint, 4) => conv(npy, |v: u32| v as f64),
        (TypeChar::Uint, 8) => conv(npy, |v: u64| v as f64),
        (TypeChar::Bool, 1) => conv(npy, |v: bool| v as u8 as f64),
        _ => {
            return Err(file_err(
                path,
                format!("unsupported dtype '{ts}': expected a float, integer or bool array"),
            ))
        }
    }
    .map_err(bad)?;
    Ok((shape, data, fortran))
}

/// Reorder Fortran-order (first index fastest) data into C order (last index fastest).
fn fortran_to_c(shape: &[usize], data: &[f64]) -> Vec<f64> {
    let n = data.len();
    let mut f_strides = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        f_strides[k] = f_strides[k - 1] * shape[k - 1];
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        out.push(
            data[idx
                .iter()
                .zip(&f_strides)
                .map(|(i, s)| i * s)
                .sum::<usize>()],
        );
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// Load a 1-D (`n` → `n × 1`) or 2-D (`n × d`) numeric array as a table with columns
/// `c1 … cd`. NaN and infinite values are an error naming their 1-based row and column.
pub fn load_npy(path: impl AsRef<Path>) -> Result<Table> {
    let path = path.as_ref();
    let (shape, mut data, fortran) = read_any(path)?;
    let cols = match shape[..] {
        [_] => 1,
        [_, d] => d,
        _ => {
            return Err(file_err(
                path,
                format!("expected a 1-D or 2-D array, got shape {shape:?}"),
            ))
        }
    };
    if cols == 0 {
        return Err(file_err(
            path,
            format!("array of shape {shape:?} has no columns"),
        ));
    }
    if fortran {
        data = fortran_to_c(&shape, &data);
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::DataCell {
            file: path.to_path_buf(),
            row: i / cols + 1,
            col: i % cols + 1,
            msg: format!("non-finite value {}", data[i]),
        });
    }
    Table::new(default_columns(cols), data)
}

/// Load an array of any rank as `f32`, C order, with its shape. NaN and infinite values are an
/// error naming their (0-based) index.
pub fn load_npy_f32(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f32>)> {
    let path = path.as_ref();
    let (shape, mut data, fortran) = read_any(path)?;
    if fortran {
        data = fortran_to_c(&shape, &data);
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        let mut index = vec![0; shape.len()];
        let mut rest = i;
        for (k, &d) in shape.iter().enumerate().rev() {
            index[k] = rest % d;
            rest /= d;
        }
        return Err(file_err(
            path,
            format!("non-finite value {} at index {index:?}", data[i]),
        ));
    }
    Ok((shape, data.into_iter().map(|v| v as f32).collect()))
}

/// Write `data` as a little-endian `f32` C-order array of `shape`, atomically. The product of
/// `shape` must equal `data.len()` (an empty shape is a scalar holding one value).
pub fn save_npy(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(Error::config(
            "npy shape",
            format!("shape {shape:?} holds {n} values, got {}", data.len()),
        ));
    }
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let io = |e| Error::io(path, e);
    write_atomic(path, |w: &mut dyn Write| {
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(w)
            .begin_nd()
            .map_err(io)?;
        writer.extend(data.iter().copied()).map_err(io)?;
        writer.finish().map_err(io)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::scratch_dir;

    /// A hand-built version-1.0 `.npy` file.
    fn raw_npy(descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(payload);
        out
    }

    #[test]
    fn f32_round_trip_any_rank() {
        let dir = scratch_dir("npy-rt");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let p = dir.join("x.npy");
        save_npy(&p, &[2, 3, 4], &data).unwrap();
        assert_eq!(load_npy_f32(&p).unwrap(), (vec![2, 3, 4], data.clone()));
        let e = load_npy(&p).unwrap_err().to_string();
        assert!(e.contains("1-D or 2-D") && e.contains("[2, 3, 4]"), "{e}");
        save_npy(&p, &[6, 4], &data).unwrap();
        let t = load_npy(&p).unwrap();
        assert_eq!((t.rows, t.cols), (6, 4));
        assert_eq!(t.row(1), &[-1.0, -0.5, 0.0, 0.5]);
        assert_eq!(t.columns, ["c1", "c2", "c3", "c4"]);
        assert!(save_npy(&p, &[5, 5], &data).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_other_dtypes_and_orders() {
        let dir = scratch_dir("npy-dtypes");
        let p = dir.join("a.npy");
        let f64s: Vec<u8> = [1.5f64, -2.0, 3.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&p, raw_npy("<f8", false, "(3,)", &f64s)).unwrap();
        let t = load_npy(&p).unwrap();
        assert_eq!(
            (t.rows, t.cols, t.data.clone()),
            (3, 1, vec![1.5, -2.0, 3.25])
        );

        let i64s: Vec<u8> = [1i64, 2, 3, 4, 5, 6]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        std::fs::write(&p, raw_npy(">i8", false, "(2, 3)", &i64s)).unwrap();
        assert_eq!(
            load_npy(&p).unwrap().data,
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );

        // Fortran order: stored column by column.
        let i32s: Vec<u8> = [1i32, 4, 2, 5, 3, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&p, raw_npy("<i4", true, "(2, 3)", &i32s)).unwrap();
        assert_eq!(
            load_npy(&p).unwrap().data,
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );

        std::fs::write(&p, raw_npy("|u1", false, "(2, 2)", &[0, 255, 7, 9])).unwrap();
        assert_eq!(load_npy(&p).unwrap().data, vec![0.0, 255.0, 7.0, 9.0]);
        assert_eq!(
            load_npy_f32(&p).unwrap(),
            (vec![2, 2], vec![0.0, 255.0, 7.0, 9.0])
        );

        // Fortran order in rank 3: element (i, j, k) at i + 2j + 4k.
        let vals: Vec<u8> = (0..8u8).collect();
        std::fs::write(&p, raw_npy("|u1", true, "(2, 2, 2)", &vals)).unwrap();
        let (_, c) = load_npy_f32(&p).unwrap();
        assert_eq!(c, vec![0.0, 4.0, 2.0, 6.0, 1.0, 5.0, 3.0, 7.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clear_errors() {
        let dir = scratch_dir("npy-errors");
        let p = dir.join("bad.npy");
        save_npy(&p, &[2, 2], &[1.0, 2.0, f32::NAN, 4.0]).unwrap();
        match load_npy(&p) {
            Err(Error::DataCell { row, col, msg, .. }) => {
                assert_eq!((row, col), (2, 1));
                assert!(msg.contains("NaN"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        let e = load_npy_f32(&p).unwrap_err().to_string();
        assert!(e.contains("[1, 0]"), "{e}");

        std::fs::write(&p, raw_npy("<U3", false, "(1,)", &[0; 12])).unwrap();
        let e = load_npy(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad.npy") && e.contains("unsupported dtype"),
            "{e}"
        );
        std::fs::write(&p, raw_npy("<c16", false, "(1,)", &[0; 16])).unwrap();
        assert!(load_npy(&p)
            .unwrap_err()
            .to_string()
            .contains("unsupported dtype"));
        std::fs::write(&p, b"not numpy").unwrap();
        let e = load_npy(&p).unwrap_err().to_string();
        assert!(e.contains("not a valid .npy"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
