//! Sinusoidal noise-level embedding (Vaswani et al. 2017; diffusers' `get_timestep_embedding`).
use candle_core::{DType, Tensor};

use crate::Result;

/// [B] → [B, dim]: [sin(t·f_k), cos(t·f_k)] with f_k = exp(-ln(max_period)·k/(half - shift)).
/// `flip_sin_to_cos` puts cos first; `shift` is diffusers' `downscale_freq_shift`.
pub fn timestep_embedding(
    t: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    max_period: f64,
) -> Result<Tensor> {
    let freqs = frequencies(dim / 2, shift, max_period);
    if !t.device().is_cpu() || t.rank() != 1 {
        return composed(t, freqs, dim, flip_sin_to_cos);
    }
    // On the CPU one pass over the rows ([`row`]; the same bits as the composed form, tested):
    // its five ops and their buffers were ~2% of the demo's training step, all of it on the
    // thread the others wait for.
    let ts: Vec<f32> = t.to_dtype(DType::F32)?.to_vec1()?;
    let key = (dim, flip_sin_to_cos, shift.to_bits(), max_period.to_bits());
    let mut out = Vec::with_capacity(ts.len() * dim);
    // A training batch draws its rows from ~1000 discrete timesteps, so most rows were
    // computed in an earlier step (the sines of ~400 new rows per 512 were still ~1.5% of the
    // demo's step on the serial path): rows are kept per t for the last (dim, flip, shift,
    // max_period) used, cleared when a call finds MEMO_ROWS or more. Another thread holding
    // the memo just means computing without it.
    let mut lock = MEMO.try_lock().ok();
    let mut memo = lock.as_deref_mut().map(|m| {
        if m.as_ref()
            .is_none_or(|m| m.key != key || m.index.len() >= MEMO_ROWS)
        {
            *m = Some(Memo::new(key));
        }
        m.as_mut().expect("set just above")
    });
    for &tv in &ts {
        if let Some(m) = memo.as_deref() {
            if let Some(&r) = m.index.get(&tv.to_bits()) {
                out.extend_from_slice(&m.rows[r * dim..(r + 1) * dim]);
                continue;
            }
        }
        let start = out.len();
        row(&mut out, tv, &freqs, dim, flip_sin_to_cos);
        if let Some(m) = memo.as_deref_mut() {
            m.index.insert(tv.to_bits(), m.index.len());
            m.rows.extend_from_slice(&out[start..]);
        }
    }
    Ok(Tensor::from_vec(out, (ts.len(), dim), t.device())?)
}

/// The embedding rows computed so far for one (dim, flip, shift bits, max_period bits).
struct Memo {
    key: (usize, bool, u64, u64),
    /// Row number in `rows` per t's bits.
    index: std::collections::HashMap<u32, usize>,
    rows: Vec<f32>,
}

impl Memo {
    fn new(key: (usize, bool, u64, u64)) -> Self {
        Self {
            key,
            index: Default::default(),
            rows: vec![],
        }
    }
}

/// The memo's size bound in rows (4096 rows of dim 128: 2 MiB), checked at each call's start.
const MEMO_ROWS: usize = 4096;

static MEMO: std::sync::Mutex<Option<Memo>> = std::sync::Mutex::new(None);

/// Appends the embedding of `t` (`dim` values) to `out`, with the composed form's f32
/// products and sin / cos.
fn row(out: &mut Vec<f32>, t: f32, freqs: &[f32], dim: usize, flip_sin_to_cos: bool) {
    type Wave = fn(f32) -> f32;
    let (first, second): (Wave, Wave) = match flip_sin_to_cos {
        true => (f32::cos, f32::sin),
        false => (f32::sin, f32::cos),
    };
    out.extend(freqs.iter().map(|&f| first(t * f)));
    out.extend(freqs.iter().map(|&f| second(t * f)));
    if dim % 2 == 1 {
        out.push(0.0);
    }
}

/// f_k = exp(-ln(max_period)·k/(half - shift)), k < half.
fn frequencies(half: usize, shift: f64, max_period: f64) -> Vec<f32> {
    (0..half)
        .map(|k| (-(max_period.ln()) * k as f64 / (half as f64 - shift)).exp() as f32)
        .collect()
}

/// The embedding from candle's ops (any device; the reference of the CPU pass).
fn composed(t: &Tensor, freqs: Vec<f32>, dim: usize, flip_sin_to_cos: bool) -> Result<Tensor> {
    let half = freqs.len();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let (s, c) = (args.sin()?, args.cos()?);
    let mut emb = if flip_sin_to_cos {
        Tensor::cat(&[c, s], 1)?
    } else {
        Tensor::cat(&[s, c], 1)?
    };
    if dim % 2 == 1 {
        emb = emb.pad_with_zeros(1, 0, 1)?;
    }
    Ok(emb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cpu_pass_has_the_composed_ops_bits() {
        // Repeated values (copied rows in the CPU pass) and a −0 beside a 0.
        let t = [
            0f32, 1.0, 17.5, 250.0, 999.0, -3.25, 17.5, 0.0, 999.0, -0.0, 17.5,
        ];
        let t = Tensor::new(&t, &Device::Cpu).unwrap();
        // Each configuration twice in a row (the second call from the memo of rows) and
        // again after the others (the memo rebuilt for it).
        let configs = [(64, true, 0.0), (8, false, 1.0), (7, true, 1.0)];
        for (dim, flip, shift) in configs.iter().flat_map(|&c| [c, c]).chain(configs) {
            let fast = timestep_embedding(&t, dim, flip, shift, 10000.0).unwrap();
            let slow = composed(&t, frequencies(dim / 2, shift, 10000.0), dim, flip).unwrap();
            let bits = |x: &Tensor| -> Vec<u32> {
                let v: Vec<Vec<f32>> = x.to_vec2().unwrap();
                v.concat().iter().map(|f| f.to_bits()).collect()
            };
            assert_eq!(fast.dims(), slow.dims());
            assert_eq!(bits(&fast), bits(&slow), "dim {dim} flip {flip}");
        }
    }

    /// More distinct t than the memo keeps: still the composed ops' bits, on the call that
    /// fills the memo past its bound and on the next one, which starts a new memo.
    #[test]
    fn past_the_memo_bound_the_bits_stay_the_same() {
        let t: Vec<f32> = (0..MEMO_ROWS + 300).map(|i| i as f32 * 0.25).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
        let slow: Vec<Vec<f32>> = composed(&t, frequencies(16, 0.0, 10000.0), 32, true)
            .unwrap()
            .to_vec2()
            .unwrap();
        for _ in 0..2 {
            let fast: Vec<Vec<f32>> = timestep_embedding(&t, 32, true, 0.0, 10000.0)
                .unwrap()
                .to_vec2()
                .unwrap();
            let bits = |v: &[Vec<f32>]| v.concat().iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert!(bits(&fast) == bits(&slow));
        }
    }

    #[test]
    fn matches_the_closed_form() {
        let t = Tensor::new(&[0f32, 1.0, 250.0], &Device::Cpu).unwrap();
        let e: Vec<Vec<f32>> = timestep_embedding(&t, 8, false, 1.0, 10000.0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, tv) in [0f64, 1.0, 250.0].iter().enumerate() {
            for k in 0..4 {
                let f = (-(10000f64.ln()) * k as f64 / 3.0).exp();
                assert!((e[i][k] as f64 - (tv * f).sin()).abs() < 1e-4);
                assert!((e[i][4 + k] as f64 - (tv * f).cos()).abs() < 1e-4);
            }
        }
    }
}
