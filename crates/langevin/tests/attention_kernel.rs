//! The fused CPU attention against softmax(q·kᵀ·scale)·v from candle's ops (≤ 1e-5 relative
//! in f32, ≤ 1e-12 in f64) on single- and multi-head shapes, query counts that are not a
//! multiple of the kernel's row block, and cross-attention lengths; bit-identical on 1 and 3
//! threads; and the composed path whenever a gradient is tracked.
use candle_core::{DType, Tensor, Var};
use langevin::kernels::attention::{attention, fused};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{randn_scaled, rel};

fn randn(shape: &[usize], dtype: DType, rng: &mut ChaCha8Rng) -> Tensor {
    randn_scaled(shape, 2.0, dtype, rng)
}

fn composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
    candle_nn::ops::softmax_last_dim(&s)
        .unwrap()
        .matmul(v)
        .unwrap()
}

/// (batch, heads, queries, keys, head dim)
const CASES: &[(usize, usize, usize, usize, usize)] = &[
    (2, 4, 16, 16, 8),
    (1, 1, 64, 64, 64),
    (3, 2, 70, 70, 8),
    (1, 3, 129, 33, 5),
    (2, 1, 1, 7, 4),
];

#[test]
fn fused_attention_matches_composed_ops() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &(b, h, n, m, d) in CASES {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let q = randn(&[b, h, n, d], dtype, &mut rng);
            let k = randn(&[b, h, m, d], dtype, &mut rng);
            let v = randn(&[b, h, m, d], dtype, &mut rng);
            let scale = 1.0 / (d as f64).sqrt();
            assert!(fused(&q, &k, &v));
            let y = attention(&q, &k, &v, scale).unwrap();
            let y0 = composed(&q, &k, &v, scale);
            assert_eq!(y.dims(), y0.dims());
            let e = rel(&y, &y0);
            assert!(e <= tol, "{:?} {dtype:?}: {e:e}", (b, h, n, m, d));
        }
    }
}

#[test]
fn fused_attention_is_bit_identical_across_thread_counts() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (q, k, v) = (
        randn(&[2, 8, 100, 8], DType::F32, &mut rng),
        randn(&[2, 8, 100, 8], DType::F32, &mut rng),
        randn(&[2, 8, 100, 8], DType::F32, &mut rng),
    );
    let run = |n: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap();
        pool.install(|| {
            attention(&q, &k, &v, 0.3)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn tracked_inputs_take_the_composed_path() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let q = Var::from_tensor(&randn(&[1, 2, 4, 4], DType::F32, &mut rng)).unwrap();
    let k = randn(&[1, 2, 4, 4], DType::F32, &mut rng);
    assert!(!fused(q.as_tensor(), &k, &k));
    assert!(fused(&k, &k, &k));
}
