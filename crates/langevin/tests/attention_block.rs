//! The CPU attention block as one op (`kernels::attention_block`) against the same block from
//! candle's ops (tokens transposed, four linear layers, softmax(q·kᵀ/√d)·v per head, the
//! residual, the rescale): its output, and in training every gradient (∂hs, ∂x, each weight
//! and bias) — ≤ 1e-5 relative in f32 and 1e-10 in f64 — on one and several heads, maps of
//! more query rows than the kernel's block, batches below and above the thread count; the
//! gradients bit-identical on 1, 2 and 3 threads.
use candle_core::{DType, Tensor, Var};
use langevin::kernels::attention_block::{attention_block, Packed};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{randn_scaled, rel};

struct Block {
    hs: Var,
    x: Var,
    /// W_q, W_k, W_v, W_o, then b_q, b_k, b_v, b_o.
    params: Vec<Var>,
    heads: usize,
    rescale: f64,
}

impl Block {
    fn new(dims: [usize; 4], heads: usize, rescale: f64, dtype: DType, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let c = dims[1];
        let var = |shape: &[usize], s: f64, rng: &mut ChaCha8Rng| {
            Var::from_tensor(&randn_scaled(shape, s, dtype, rng)).unwrap()
        };
        let w = 1.0 / (c as f64).sqrt();
        let mut params: Vec<Var> = (0..4).map(|_| var(&[c, c], 2.0 * w, &mut rng)).collect();
        params.extend((0..4).map(|_| var(&[c], 0.3, &mut rng)));
        Self {
            hs: var(&dims, 1.0, &mut rng),
            x: var(&dims, 1.0, &mut rng),
            params,
            heads,
            rescale,
        }
    }

    fn fused(&self) -> Tensor {
        let p: Vec<&Tensor> = self.params.iter().map(|v| v.as_tensor()).collect();
        attention_block(
            self.hs.as_tensor(),
            self.x.as_tensor(),
            [p[0], p[1], p[2], p[3]],
            [p[4], p[5], p[6], p[7]],
            self.heads,
            self.rescale,
            &Packed::default(),
        )
        .unwrap()
    }

    /// diffusers' `Attention` on [B, C, H, W] from candle's ops.
    fn composed(&self) -> Tensor {
        let (b, c, h, w) = self.hs.dims4().unwrap();
        let (n, heads) = (h * w, self.heads);
        let d = c / heads;
        let p = &self.params;
        let tokens = self.hs.reshape((b, c, n)).unwrap().transpose(1, 2).unwrap();
        // [B, N, C] → [B, N, C] through rows of [B·N, C].
        let linear = |t: &Tensor, i: usize| {
            let rows = t.contiguous().unwrap().reshape((b * n, c)).unwrap();
            rows.matmul(&p[i].t().unwrap())
                .unwrap()
                .broadcast_add(&p[i + 4])
                .unwrap()
                .reshape((b, n, c))
                .unwrap()
        };
        let split = |t: Tensor| {
            t.reshape((b, n, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (
            split(linear(&tokens, 0)),
            split(linear(&tokens, 1)),
            split(linear(&tokens, 2)),
        );
        let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let o = candle_nn::ops::softmax(&s, candle_core::D::Minus1)
            .unwrap()
            .matmul(&v)
            .unwrap();
        let o = o.transpose(1, 2).unwrap().reshape((b, n, c)).unwrap();
        let o = linear(&o, 3).transpose(1, 2).unwrap().reshape((b, c, h, w));
        ((o.unwrap() + self.x.as_tensor()).unwrap() / self.rescale).unwrap()
    }

    /// The gradients of Σ out∘r w.r.t. hs, x and the eight parameters.
    fn grads(&self, out: &Tensor, r: &Tensor) -> Vec<Tensor> {
        let loss = (out * r).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        [&self.hs, &self.x]
            .into_iter()
            .chain(&self.params)
            .enumerate()
            .map(|(i, v)| {
                g.get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient {i}"))
                    .clone()
            })
            .collect()
    }
}

/// ([B, C, H, W], heads, rescale): one and several heads (d from 1 to 34), 81 and 100 query
/// rows (two blocks of the kernel's 64), key counts that are not a multiple of 16, one image
/// (fewer than the threads).
const CASES: &[([usize; 4], usize, f64)] = &[
    ([2, 8, 4, 4], 2, 1.0),
    ([3, 16, 9, 9], 1, std::f64::consts::SQRT_2),
    ([1, 12, 10, 10], 3, 1.0),
    ([4, 8, 3, 5], 8, 2.0),
    ([2, 40, 9, 9], 2, 1.0),
    ([1, 34, 6, 6], 1, 1.0),
];

#[test]
fn attention_block_and_its_gradients_match_composed_ops() {
    for (i, &(dims, heads, rescale)) in CASES.iter().enumerate() {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-10)] {
            let blk = Block::new(dims, heads, rescale, dtype, i as u64);
            let (y, y0) = (blk.fused(), blk.composed());
            let e = rel(&y, &y0);
            assert!(e <= tol, "{dims:?} {dtype:?} output: {e:e}");
            let mut rng = ChaCha8Rng::seed_from_u64(100 + i as u64);
            let r = randn_scaled(&dims, 1.0, dtype, &mut rng);
            let (g, g0) = (blk.grads(&y, &r), blk.grads(&y0, &r));
            let db_q = g0[6].clone();
            let names = [
                "hs", "x", "W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o",
            ];
            let size = |t: &Tensor| {
                let t = t.to_dtype(DType::F64).unwrap().abs().unwrap();
                t.flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            for ((g, g0), name) in g.iter().zip(&g0).zip(names) {
                assert_eq!(g.dims(), g0.dims(), "{name}");
                if name == "b_k" {
                    // Zero in exact arithmetic (a shift of every key's score of a query row
                    // leaves its softmax unchanged): both at rounding level against ∂b_q.
                    let floor = 100.0 * tol * size(&db_q);
                    assert!(
                        size(g) <= floor && size(g0) <= floor,
                        "{dims:?} {dtype:?} ∂b_k"
                    );
                    continue;
                }
                let e = rel(g, g0);
                assert!(e <= tol, "{dims:?} {dtype:?} ∂{name}: {e:e}");
            }
        }
    }
}

#[test]
fn attention_block_gradients_are_bit_identical_across_thread_counts() {
    // Batch 2: one image per task on 1 and 2 threads, the GEMMs split on 3; heads of 8 and of
    // 40 channels.
    for (c, heads) in [(16, 2), (40, 1)] {
        let dims = [2, c, 9, 9];
        let blk = Block::new(dims, heads, 1.0, DType::F32, 7);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let r = randn_scaled(&dims, 1.0, DType::F32, &mut rng);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let y = blk.fused();
                let mut all = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for g in blk.grads(&y, &r) {
                    all.extend(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                }
                all.into_iter().map(f32::to_bits).collect::<Vec<_>>()
            })
        };
        let one = run(1);
        assert_eq!(one, run(2), "{c} channels, {heads} heads");
        assert_eq!(one, run(3), "{c} channels, {heads} heads");
    }
}

#[test]
fn untracked_inputs_take_no_gradient_and_inference_builds_no_graph() {
    let blk = Block::new([2, 8, 4, 4], 2, 1.0, DType::F32, 9);
    let plain = |t: &Var| t.as_tensor().detach();
    let p: Vec<Tensor> = blk.params.iter().map(plain).collect();
    let packed = Packed::default();
    let run = |hs: &Tensor, x: &Tensor| {
        attention_block(
            hs,
            x,
            [&p[0], &p[1], &p[2], &p[3]],
            [&p[4], &p[5], &p[6], &p[7]],
            2,
            1.0,
            &packed,
        )
        .unwrap()
    };
    let y = run(&plain(&blk.hs), &plain(&blk.x));
    assert!(!y.track_op());
    assert_eq!(rel(&y, &blk.fused()), 0.0);
    // Only the residual tracked: its gradient is ∂out, and hs gets none.
    let x = Var::from_tensor(&plain(&blk.x)).unwrap();
    let hs = plain(&blk.hs);
    let y = run(&hs, x.as_tensor());
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&hs).is_none());
    let dx = g.get(x.as_tensor()).unwrap();
    assert_eq!(
        dx.flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        1.0
    );
    assert_eq!(
        dx.flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        1.0
    );
}
