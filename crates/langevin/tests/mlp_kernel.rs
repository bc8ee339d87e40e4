//! The fused residual-MLP kernel against the same network composed from candle's ops: values
//! and gradients (input, embedding, every packed parameter) to ≤ 1e-5 relative in f32, central
//! finite differences in f64, bit-identical results on 1, 2 and 3 threads (one and several
//! row blocks), the shared-noise-level (sampling) path against the per-row one, batches whose
//! rows repeat noise levels (the time path once per level), and the `nn::mlp` network's fused
//! forward against its composed one; inference (nothing kept) with the training forward's bits.
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use langevin::denoiser::Cond;
use langevin::kernels::mlp::{residual_mlp, MlpDims};
use langevin::nn::embedding::timestep_embedding;
use langevin::nn::mlp::{Mlp, MlpConfig};
use langevin::nn::Network;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{randn_scaled, rel};

/// The residual MLP from candle's ops on the packed parameters (the reference).
fn composed(x: &Tensor, emb: &Tensor, p: &Tensor, d: MlpDims) -> Tensor {
    let mut off = 0;
    let mut lin = |a: &Tensor, inp: usize, out: usize| {
        let w = p
            .narrow(0, off, out * inp)
            .unwrap()
            .reshape((out, inp))
            .unwrap();
        let b = p.narrow(0, off + out * inp, out).unwrap();
        off += out * (inp + 1);
        a.matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
    };
    let h = d.hidden;
    let t = lin(emb, d.temb_dim, h).silu().unwrap();
    let e = lin(&t, h, h).silu().unwrap();
    let mut hs = lin(x, d.in_dim, h);
    for _ in 0..d.blocks {
        let u = (lin(&hs.silu().unwrap(), h, h) + lin(&e, h, h)).unwrap();
        hs = (&hs + lin(&u.silu().unwrap(), h, h)).unwrap();
    }
    lin(&hs.silu().unwrap(), h, d.in_dim)
}

/// (output, gradients of Σ y·r w.r.t. x, emb, params).
fn value_and_grads(
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    inputs: [&Tensor; 3],
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let y = f(
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
    );
    let r = randn_scaled(y.dims(), 1.0, y.dtype(), &mut ChaCha8Rng::seed_from_u64(7));
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    // An input the output does not depend on (the embedding without blocks) has no gradient.
    let grads = vars
        .iter()
        .map(|v| match g.get(v.as_tensor()) {
            Some(t) => t.clone(),
            None => v.as_tensor().zeros_like().unwrap(),
        })
        .collect();
    (y, grads)
}

fn inputs(b: usize, d: MlpDims, dtype: DType, seed: u64) -> [Tensor; 3] {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    [
        randn_scaled(&[b, d.in_dim], 1.0, dtype, &mut rng),
        randn_scaled(&[b, d.temb_dim], 1.0, dtype, &mut rng),
        randn_scaled(&[d.packed_len()], 0.3, dtype, &mut rng),
    ]
}

const CASES: &[(usize, MlpDims)] = &[
    (
        7,
        MlpDims {
            in_dim: 3,
            hidden: 16,
            blocks: 2,
            temb_dim: 8,
        },
    ),
    (
        1,
        MlpDims {
            in_dim: 2,
            hidden: 32,
            blocks: 3,
            temb_dim: 16,
        },
    ),
    (
        65,
        MlpDims {
            in_dim: 5,
            hidden: 24,
            blocks: 1,
            temb_dim: 6,
        },
    ),
    (
        4,
        MlpDims {
            in_dim: 2,
            hidden: 8,
            blocks: 0,
            temb_dim: 4,
        },
    ),
];

#[test]
fn fused_mlp_matches_composed_ops_values_and_gradients() {
    for (i, &(b, d)) in CASES.iter().enumerate() {
        let [x, e, p] = inputs(b, d, DType::F32, i as u64);
        let (y, g) = value_and_grads(|x, e, p| residual_mlp(x, e, p, d).unwrap(), [&x, &e, &p]);
        let (y0, g0) = value_and_grads(|x, e, p| composed(x, e, p, d), [&x, &e, &p]);
        assert!(rel(&y, &y0) < 1e-5, "{d:?}: output {}", rel(&y, &y0));
        for (k, (a, b)) in g.iter().zip(&g0).enumerate() {
            assert!(rel(a, b) < 1e-5, "{d:?}: gradient {k}: {}", rel(a, b));
        }
    }
}

#[test]
fn fused_mlp_gradients_match_finite_differences() {
    let (b, d) = CASES[0];
    let [x, e, p] = inputs(b, d, DType::F64, 11);
    let (_, g) = value_and_grads(|x, e, p| residual_mlp(x, e, p, d).unwrap(), [&x, &e, &p]);
    let r = {
        let y = residual_mlp(&x, &e, &p, d).unwrap();
        randn_scaled(y.dims(), 1.0, DType::F64, &mut ChaCha8Rng::seed_from_u64(7))
    };
    let loss = |ins: &[Tensor]| -> f64 {
        let y = residual_mlp(&ins[0], &ins[1], &ins[2], d).unwrap();
        (&y * &r).unwrap().sum_all().unwrap().to_scalar().unwrap()
    };
    let base = [x, e, p];
    for (k, t) in base.iter().enumerate() {
        let v: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
        let gk: Vec<f64> = g[k].flatten_all().unwrap().to_vec1().unwrap();
        // Every 7th entry, first and last included.
        for j in (0..v.len()).step_by(7).chain([v.len() - 1]) {
            let h = 1e-6;
            let at = |dv: f64| {
                let mut w = v.clone();
                w[j] += dv;
                let mut ins = base.clone();
                ins[k] = Tensor::from_vec(w, t.shape(), &Device::Cpu).unwrap();
                loss(&ins)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let tol = 1e-6 * (1.0 + fd.abs());
            assert!(
                (fd - gk[j]).abs() < tol,
                "input {k}[{j}]: fd {fd} vs {}",
                gk[j]
            );
        }
    }
}

#[test]
fn fused_mlp_is_bit_identical_on_one_and_two_threads() {
    let d = MlpDims {
        in_dim: 2,
        hidden: 128,
        blocks: 3,
        temb_dim: 64,
    };
    let [x, e, p] = inputs(512, d, DType::F32, 3);
    let run = |n: usize| fused_on_threads(n, d, [&x, &e, &p]);
    assert_eq!(run(1), run(2));
}

/// Several row blocks with a short last one (the kernel's blocks are 256 rows): the composed
/// ops' values and gradients, and the same bits on 1, 2 and 3 threads.
#[test]
fn fused_mlp_over_several_row_blocks_matches_and_is_thread_independent() {
    let d = MlpDims {
        in_dim: 2,
        hidden: 32,
        blocks: 2,
        temb_dim: 16,
    };
    let [x, e, p] = inputs(600, d, DType::F32, 21);
    let (y, g) = value_and_grads(|x, e, p| residual_mlp(x, e, p, d).unwrap(), [&x, &e, &p]);
    let (y0, g0) = value_and_grads(|x, e, p| composed(x, e, p, d), [&x, &e, &p]);
    assert!(rel(&y, &y0) < 1e-5, "output {}", rel(&y, &y0));
    for (k, (a, b)) in g.iter().zip(&g0).enumerate() {
        assert!(rel(a, b) < 1e-5, "gradient {k}: {}", rel(a, b));
    }
    let run = |n: usize| fused_on_threads(n, d, [&x, &e, &p]);
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

/// Every row at one noise level without gradients (a sampler step): the time MLP runs once.
/// Same values as the composed ops and as the per-row path (taken when the embedding tracks
/// a gradient, which is per row); the one-row products may round differently in the last bits.
#[test]
fn shared_noise_level_path_matches_the_per_row_path() {
    let d = MlpDims {
        in_dim: 3,
        hidden: 24,
        blocks: 3,
        temb_dim: 8,
    };
    let [x, e, p] = inputs(300, d, DType::F32, 33);
    let e = e.narrow(0, 7, 1).unwrap().repeat((300, 1)).unwrap();
    let shared = residual_mlp(&x, &e, &p, d).unwrap();
    let y0 = composed(&x, &e, &p, d);
    assert!(rel(&shared, &y0) < 1e-5, "{}", rel(&shared, &y0));
    let ev = Var::from_tensor(&e).unwrap();
    let per_row = residual_mlp(&x, ev.as_tensor(), &p, d).unwrap();
    assert!(rel(&shared, &per_row) < 1e-6, "{}", rel(&shared, &per_row));
}

/// `rows` embedding rows drawn from `levels` distinct ones (a training batch at discrete
/// timesteps), with every level used.
fn repeated_levels(rows: usize, levels: usize, d: MlpDims, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let table = randn_scaled(&[levels, d.temb_dim], 1.0, DType::F32, &mut rng);
    let idx: Vec<u32> = (0..rows as u32)
        .map(|r| match r < levels as u32 {
            true => r * 7919 % levels as u32,
            false => (r * 7 + r * r / 3) % levels as u32,
        })
        .collect();
    assert!((0..levels as u32).all(|l| idx.contains(&l)));
    let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
    table.index_select(&idx, 0).unwrap()
}

/// (output, gradients w.r.t. x and params) with the embedding a constant (as in training):
/// rows at the same noise level share one time-path evaluation.
fn value_and_grads_const_emb(
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    [x, e, p]: [&Tensor; 3],
) -> Vec<Tensor> {
    let (xv, pv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(p).unwrap());
    let y = f(xv.as_tensor(), e, pv.as_tensor());
    let r = randn_scaled(y.dims(), 1.0, y.dtype(), &mut ChaCha8Rng::seed_from_u64(7));
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = g.get(xv.as_tensor()).unwrap().clone();
    let gp = g.get(pv.as_tensor()).unwrap().clone();
    vec![y, gx, gp]
}

/// Training-like batches whose rows repeat noise levels (the time path runs once per level,
/// its gradient summed over the level's rows): the composed ops' values and gradients, with
/// the embedding constant and with it tracked (then every row is its own level), and the same
/// bits on 1, 2 and 3 threads. 600 rows over 3 row blocks; 5 levels (one chunk) and 530
/// levels (three chunks of levels).
#[test]
fn repeated_noise_levels_match_composed_ops_and_are_thread_independent() {
    let d = MlpDims {
        in_dim: 2,
        hidden: 32,
        blocks: 3,
        temb_dim: 16,
    };
    for (levels, seed) in [(5, 41), (530, 42)] {
        let [x, _, p] = inputs(600, d, DType::F32, seed);
        let e = repeated_levels(600, levels, d, seed);
        let got =
            value_and_grads_const_emb(|x, e, p| residual_mlp(x, e, p, d).unwrap(), [&x, &e, &p]);
        let want = value_and_grads_const_emb(|x, e, p| composed(x, e, p, d), [&x, &e, &p]);
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                rel(a, b) < 1e-5,
                "{levels} levels, output {k}: {}",
                rel(a, b)
            );
        }
        // Tracked embedding: per-row gradients, the composed ops' to 1e-5.
        let (y, g) = value_and_grads(|x, e, p| residual_mlp(x, e, p, d).unwrap(), [&x, &e, &p]);
        let (y0, g0) = value_and_grads(|x, e, p| composed(x, e, p, d), [&x, &e, &p]);
        assert!(rel(&y, &y0) < 1e-5);
        for (k, (a, b)) in g.iter().zip(&g0).enumerate() {
            assert!(
                rel(a, b) < 1e-5,
                "{levels} levels, tracked: gradient {k}: {}",
                rel(a, b)
            );
        }
        let run = |n: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap();
            pool.install(|| {
                value_and_grads_const_emb(|x, e, p| residual_mlp(x, e, p, d).unwrap(), [&x, &e, &p])
                    .iter()
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let one = run(1);
        assert_eq!(one, run(2), "{levels} levels");
        assert_eq!(one, run(3), "{levels} levels");
    }
}

#[test]
fn mlp_network_uses_the_fused_kernel_with_the_same_result() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = MlpConfig {
        in_dim: 3,
        hidden: 32,
        blocks: 2,
        temb_dim: 16,
    };
    let net = Mlp::new(cfg.clone(), vb).unwrap();
    // The output layer starts at zero; give every parameter random values.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for v in varmap.all_vars() {
        v.set(&randn_scaled(v.dims(), 0.3, DType::F32, &mut rng))
            .unwrap();
    }
    let x = randn_scaled(&[9, 3], 1.0, DType::F32, &mut rng);
    let c = randn_scaled(&[9], 1.0, DType::F32, &mut rng);
    let y = net.forward(&x, &c, &Cond::default()).unwrap();
    let e = timestep_embedding(&c, cfg.temb_dim, true, 0.0, 10000.0).unwrap();
    let y0 = net.forward_composed(&x, &e).unwrap();
    assert!(rel(&y, &y0) < 1e-5, "{}", rel(&y, &y0));
    assert!(
        y.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 1e-3
    );
}

#[test]
fn fast_exp_is_within_a_few_ulp_of_exp() {
    use langevin::kernels::mlp::exp_f32;
    let mut worst = 0f64;
    for i in -86_999..88_000 {
        let x = i as f32 * 1e-3 + 1.234e-4;
        let want = (x as f64).exp();
        worst = worst.max((exp_f32(x) as f64 - want).abs() / want);
    }
    assert!(
        worst < 3.0 * f32::EPSILON as f64,
        "relative error {worst:e}"
    );
    assert_eq!(exp_f32(0.0), 1.0);
    assert!(exp_f32(-200.0) < 1e-37 && exp_f32(200.0) > 1e38 && exp_f32(200.0).is_finite());
}

/// The fused MLP's output and gradients (flattened) computed on a pool of `n` threads.
fn fused_on_threads(n: usize, d: MlpDims, [x, e, p]: [&Tensor; 3]) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap();
    pool.install(|| {
        let (y, g) = value_and_grads(|x, e, p| residual_mlp(x, e, p, d).unwrap(), [x, e, p]);
        std::iter::once(y)
            .chain(g)
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    })
}

#[test]
fn inference_forward_has_the_bits_of_the_training_forward() {
    // Untracked inputs take the pass that keeps no activations (silu fused with the
    // time-path add); the same values, bit for bit, as the forward pass of training — over
    // several row blocks and the small cases.
    let big = MlpDims {
        in_dim: 2,
        hidden: 32,
        blocks: 2,
        temb_dim: 8,
    };
    for (i, &(b, d)) in CASES.iter().chain(&[(600, big)]).enumerate() {
        let [x, e, p] = inputs(b, d, DType::F32, 50 + i as u64);
        let plain = residual_mlp(&x, &e, &p, d).unwrap();
        assert!(!plain.track_op());
        let pv = Var::from_tensor(&p).unwrap();
        let tracked = residual_mlp(&x, &e, pv.as_tensor(), d).unwrap();
        assert!(tracked.track_op());
        let bits = |t: &Tensor| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.into_iter().map(f32::to_bits).collect::<Vec<_>>()
        };
        assert_eq!(bits(&plain), bits(&tracked), "{d:?} batch {b}");
    }
}
