//! The own CPU kernels against candle's reference ops on random shapes (odd sizes, stride 2,
//! padding, batch 1, 1×1): forward values and the gradients of a random linear functional
//! of the output, to ≤ 1e-5 relative in f32; and central finite differences in f64.
use candle_core::{DType, Tensor, Var};
use langevin::kernels::conv::conv2d_gemm;
use langevin::kernels::group_norm::shifted_group_norm_act;
use langevin::kernels::{conv2d, group_norm_act};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{randn, rel};

/// [`rel`] of the outputs, then of each gradient.
fn rel_all(y: &Tensor, g: &[Tensor], y0: &Tensor, g0: &[Tensor]) -> Vec<f64> {
    std::iter::once(rel(y, y0))
        .chain(g.iter().zip(g0).map(|(a, b)| rel(a, b)))
        .collect()
}

/// (output, gradients of Σ y·r w.r.t. each input) for `f`.
fn value_and_grads(
    f: impl Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    r_seed: u64,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let r = randn(y.dims(), y.dtype(), &mut ChaCha8Rng::seed_from_u64(r_seed));
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let grads = ts.iter().map(|t| g.get(t).unwrap().clone()).collect();
    (y, grads)
}

/// (batch, channels, height, width, out channels, kernel, stride, padding)
const CONV_CASES: &[(usize, usize, usize, usize, usize, usize, usize, usize)] = &[
    (1, 3, 7, 5, 4, 3, 1, 1),
    (2, 5, 9, 8, 3, 3, 2, 1),
    (3, 4, 6, 6, 6, 1, 1, 0),
    (2, 3, 8, 8, 5, 3, 2, 0),
    (1, 2, 5, 7, 3, 3, 1, 0),
    (5, 8, 16, 16, 8, 3, 1, 1),
    (2, 3, 6, 9, 2, 1, 2, 0),
    (3, 2, 9, 11, 4, 5, 1, 2),
    (1, 16, 13, 13, 7, 3, 2, 1),
    // Winograd: F(4×4, 3×3) at 32×32 (forward and input gradient) beside the F(3×3, 2×2)
    // weight gradient; below 8×8 the forward is im2col while the weight gradient stays
    // Winograd.
    (2, 16, 32, 32, 24, 3, 1, 1),
    (3, 16, 4, 4, 16, 3, 1, 1),
];

#[test]
fn conv2d_matches_candle_forward_and_backward() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (i, &(b, c, h, w, o, k, s, p)) in CONV_CASES.iter().enumerate() {
        let x = randn(&[b, c, h, w], DType::F32, &mut rng);
        let wt = randn(&[o, c, k, k], DType::F32, &mut rng);
        let bias = randn(&[o], DType::F32, &mut rng);
        let inputs = [x, wt, bias];
        if (h + 2 * p - k) % s != 0 || (w + 2 * p - k) % s != 0 {
            // candle 0.11.1's own conv2d backward fails on some of these shapes (9×8 at stride
            // 2: a shape mismatch in its transposed convolution); compare the forward pass here and rely on
            // the finite differences below for the gradient.
            let y1 = conv2d(&inputs[0], &inputs[1], None, s, p).unwrap();
            let y0 = inputs[0].conv2d(&inputs[1], p, s, 1, 1).unwrap();
            assert!(rel(&y1, &y0) <= 1e-5, "case {i}: forward {}", rel(&y1, &y0));
            continue;
        }
        let (y1, g1) = value_and_grads(
            |t| conv2d(&t[0], &t[1], Some(&t[2]), s, p).unwrap(),
            &inputs,
            i as u64,
        );
        let (y0, g0) = value_and_grads(
            |t| {
                let y = t[0].conv2d(&t[1], p, s, 1, 1).unwrap();
                y.broadcast_add(&t[2].reshape((1, (), 1, 1)).unwrap())
                    .unwrap()
            },
            &inputs,
            i as u64,
        );
        assert_eq!(y1.dims(), y0.dims(), "case {i}");
        let errs = rel_all(&y1, &g1, &y0, &g0);
        assert!(
            errs.iter().all(|&e| e <= 1e-5),
            "case {i} {:?}: forward, dx, dw, dbias relative errors {errs:?}",
            CONV_CASES[i]
        );
    }
}

/// The backward pass computes only the gradients that are asked for: with the input untracked
/// (a network's first convolution) there is no input gradient, and the weight and bias
/// gradients have the bits they have when the input is a variable too.
#[test]
fn conv2d_backward_skips_the_input_gradient_of_an_untracked_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = randn(&[3, 4, 9, 8], DType::F32, &mut rng);
    let (w, b) = (
        Var::from_tensor(&randn(&[6, 4, 3, 3], DType::F32, &mut rng)).unwrap(),
        Var::from_tensor(&randn(&[6], DType::F32, &mut rng)).unwrap(),
    );
    let grads = |x: &Tensor| {
        let y = conv2d(x, w.as_tensor(), Some(b.as_tensor()), 1, 1).unwrap();
        (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap()
    };
    let xv = Var::from_tensor(&x).unwrap();
    let (with_x, without_x) = (grads(xv.as_tensor()), grads(&x));
    assert!(with_x.get(xv.as_tensor()).is_some());
    assert!(without_x.get(&x).is_none());
    for t in [w.as_tensor(), b.as_tensor()] {
        let bits = |g: &candle_core::backprop::GradStore| {
            let v: Vec<f32> = g.get(t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(bits(&with_x), bits(&without_x));
    }
}

/// candle's sum over leading dimensions (a bias's gradient; third_party/candle-core-reduce.patch
/// adds whole rows instead of indexing each element) gives the bits of the row-by-row sum in
/// order, on a contiguous tensor and on a strided view (upstream's per-element path).
#[test]
fn candle_sum_over_leading_dims_adds_rows_in_order() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x = randn(&[5, 7, 9], DType::F32, &mut rng);
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let mut want = vec![0f32; 9];
    for row in v.chunks(9) {
        for (w, &r) in want.iter_mut().zip(row) {
            *w += r;
        }
    }
    let bits = |t: Tensor| -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|f| f.to_bits()).collect()
    };
    let want: Vec<u32> = want.iter().map(|f| f.to_bits()).collect();
    assert_eq!(bits(x.sum_keepdim((0, 1)).unwrap()), want);
    // The same sum over a strided view: [5, 9, 7] transposed back to [5, 7, 9].
    let strided = x.t().unwrap().contiguous().unwrap().t().unwrap();
    assert!(!strided.is_contiguous());
    assert_eq!(bits(strided.sum_keepdim((0, 1)).unwrap()), want);
    let partial = x.sum_keepdim(0).unwrap();
    assert_eq!(partial.dims(), &[1, 7, 9]);
    assert_eq!(bits(partial), bits(strided.sum_keepdim(0).unwrap()));
}

/// The GEMM form used for training on GPUs gives the own kernel's output and all three
/// gradients on every shape (odd sizes and stride 2 included).
#[test]
fn conv2d_gemm_matches_the_kernel_forward_and_backward() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (i, &(b, c, h, w, o, k, s, p)) in CONV_CASES.iter().enumerate() {
        let inputs = [
            randn(&[b, c, h, w], DType::F32, &mut rng),
            randn(&[o, c, k, k], DType::F32, &mut rng),
            randn(&[o], DType::F32, &mut rng),
        ];
        let (y1, g1) = value_and_grads(
            |t| conv2d_gemm(&t[0], &t[1], Some(&t[2]), s, p).unwrap(),
            &inputs,
            i as u64,
        );
        let (y0, g0) = value_and_grads(
            |t| conv2d(&t[0], &t[1], Some(&t[2]), s, p).unwrap(),
            &inputs,
            i as u64,
        );
        assert_eq!(y1.dims(), y0.dims(), "case {i}");
        let errs = rel_all(&y1, &g1, &y0, &g0);
        assert!(
            errs.iter().all(|&e| e <= 1e-5),
            "case {i} {:?}: forward, dx, dw, dbias relative errors {errs:?}",
            CONV_CASES[i]
        );
    }
}

#[test]
fn conv2d_of_a_strided_view_equals_conv2d_of_its_copy() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x = randn(&[2, 3, 6, 5], DType::F32, &mut rng);
    let xt = x.transpose(2, 3).unwrap();
    let w = randn(&[4, 3, 3, 3], DType::F32, &mut rng);
    let a = conv2d(&xt, &w, None, 1, 1).unwrap();
    let b = conv2d(&xt.contiguous().unwrap(), &w, None, 1, 1).unwrap();
    assert_eq!(rel(&a, &b), 0.0);
}

/// Central differences of L = Σ f(inputs)·r along one random direction per input, in f64.
fn finite_difference_check(f: impl Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], seed: u64) {
    let (_, grads) = value_and_grads(&f, inputs, seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
    let loss = |ts: &[Tensor]| {
        let y = f(ts);
        let r = randn(y.dims(), y.dtype(), &mut ChaCha8Rng::seed_from_u64(seed));
        (&y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let eps = 1e-6;
    for (i, g) in grads.iter().enumerate() {
        let d = randn(inputs[i].dims(), DType::F64, &mut rng);
        let mut plus = inputs.to_vec();
        let mut minus = inputs.to_vec();
        plus[i] = (&inputs[i] + (&d * eps).unwrap()).unwrap();
        minus[i] = (&inputs[i] - (&d * eps).unwrap()).unwrap();
        let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps);
        let analytic = (g * &d)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let err = (numeric - analytic).abs() / analytic.abs().max(1e-8);
        assert!(
            err < 1e-6,
            "input {i}: analytic {analytic}, numeric {numeric}, rel {err}"
        );
    }
}

#[test]
fn conv2d_gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &(b, c, h, w, o, k, s, p) in CONV_CASES {
        let x = randn(&[b, c, h, w], DType::F64, &mut rng);
        let wt = randn(&[o, c, k, k], DType::F64, &mut rng);
        let bias = randn(&[o], DType::F64, &mut rng);
        finite_difference_check(
            |t| conv2d(&t[0], &t[1], Some(&t[2]), s, p).unwrap(),
            &[x, wt, bias],
            7,
        );
    }
}

/// (batch, channels, height, width, groups)
const GN_CASES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 4, 3, 5, 2),
    (3, 6, 7, 7, 3),
    (2, 32, 8, 8, 32),
    (2, 64, 5, 4, 32),
    (4, 8, 1, 1, 1),
];

fn gn_reference(t: &[Tensor], groups: usize, silu: bool) -> Tensor {
    let c = t[0].dim(1).unwrap();
    let gn = candle_nn::GroupNorm::new(t[1].clone(), t[2].clone(), c, groups, 1e-5).unwrap();
    let y = candle_core::Module::forward(&gn, &t[0]).unwrap();
    if silu {
        y.silu().unwrap()
    } else {
        y
    }
}

#[test]
fn group_norm_act_matches_candle_forward_and_backward() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (i, &(b, c, h, w, g)) in GN_CASES.iter().enumerate() {
        for silu in [false, true] {
            // A shifted, scaled input so that the mean and variance matter.
            let x = ((randn(&[b, c, h, w], DType::F32, &mut rng) * 3.0).unwrap() + 1.5).unwrap();
            let gamma = (randn(&[c], DType::F32, &mut rng) * 0.5)
                .unwrap()
                .affine(1.0, 1.0)
                .unwrap();
            let beta = randn(&[c], DType::F32, &mut rng);
            let inputs = [x, gamma, beta];
            let (y1, g1) = value_and_grads(
                |t| group_norm_act(&t[0], &t[1], &t[2], g, 1e-5, silu).unwrap(),
                &inputs,
                i as u64,
            );
            let (y0, g0) = value_and_grads(|t| gn_reference(t, g, silu), &inputs, i as u64);
            let errs = rel_all(&y1, &g1, &y0, &g0);
            assert!(
                errs.iter().all(|&e| e <= 1e-5),
                "case {i} {:?} silu {silu}: y, dx, dγ, dβ relative errors {errs:?}",
                GN_CASES[i]
            );
        }
    }
}

#[test]
fn group_norm_act_gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for &(b, c, h, w, g) in &GN_CASES[..3] {
        for silu in [false, true] {
            let x = randn(&[b, c, h, w], DType::F64, &mut rng);
            let gamma = (randn(&[c], DType::F64, &mut rng) * 0.5)
                .unwrap()
                .affine(1.0, 1.0)
                .unwrap();
            let beta = randn(&[c], DType::F64, &mut rng);
            finite_difference_check(
                |t| group_norm_act(&t[0], &t[1], &t[2], g, 1e-5, silu).unwrap(),
                &[x, gamma, beta],
                9,
            );
        }
    }
}

#[test]
fn shifted_group_norm_matches_add_then_norm_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (b, c, h, w, g) = (3, 8, 5, 6, 4);
    let x = randn(&[b, c, h, w], DType::F32, &mut rng);
    let t = randn(&[b, c], DType::F32, &mut rng);
    let gamma = (randn(&[c], DType::F32, &mut rng) * 0.5)
        .unwrap()
        .affine(1.0, 1.0)
        .unwrap();
    let beta = randn(&[c], DType::F32, &mut rng);
    let inputs = [x, t, gamma, beta];
    let fused = |t: &[Tensor]| {
        shifted_group_norm_act(&t[0], Some(&t[1]), &t[2], &t[3], g, 1e-5, true).unwrap()
    };
    let (y1, g1) = value_and_grads(fused, &inputs, 1);
    let (y0, g0) = value_and_grads(
        |t| {
            let xs = t[0]
                .broadcast_add(&t[1].reshape((b, c, 1, 1)).unwrap())
                .unwrap();
            gn_reference(&[xs, t[2].clone(), t[3].clone()], g, true)
        },
        &inputs,
        1,
    );
    let errs = rel_all(&y1, &g1, &y0, &g0);
    assert!(
        errs.iter().all(|&e| e <= 1e-5),
        "y, dx, dshift, dγ, dβ: {errs:?}"
    );
    let f64s: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F64).unwrap())
        .collect();
    finite_difference_check(fused, &f64s, 11);
}

/// Convolution and group norm, forward and backward, give the same bits on 1, 2 and 3 threads
/// (the thread count may change between calls while other processes share the cores).
#[test]
fn conv_and_group_norm_are_bit_identical_across_thread_counts() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let inputs = [
        randn(&[5, 8, 9, 9], DType::F32, &mut rng),
        randn(&[8, 8, 3, 3], DType::F32, &mut rng),
        randn(&[8], DType::F32, &mut rng),
        randn(&[8], DType::F32, &mut rng),
    ];
    let run = |n: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap();
        pool.install(|| {
            let (y, g) = value_and_grads(
                |t| {
                    let y = conv2d(&t[0], &t[1], Some(&t[2]), 1, 1).unwrap();
                    group_norm_act(&y, &t[3], &t[2], 4, 1e-5, true).unwrap()
                },
                &inputs,
                3,
            );
            std::iter::once(y)
                .chain(g)
                .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

/// candle's large elementwise ops (≥ 64 Ki values go to its parallel path) give the same bits
/// when called from a worker of a rayon pool, where third_party/candle-core-pool.patch splits
/// them over that pool, as from a thread outside any pool (candle's own barrier pool): every
/// value written once, whatever the pool's size.
#[test]
fn candle_elementwise_ops_on_a_pool_worker_match_the_calling_thread() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    // 3·5·97·131 = 190,605 values: several chunks, a ragged last one.
    let x = randn(&[3, 5, 97, 131], DType::F32, &mut rng);
    let y = randn(&[3, 5, 97, 131], DType::F32, &mut rng);
    let s = randn(&[1, 5, 1, 131], DType::F32, &mut rng);
    let ops = || {
        [
            x.exp().unwrap(),
            (&x * &y).unwrap(),
            x.broadcast_add(&s).unwrap(),
            x.silu().unwrap(),
        ]
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    };
    assert!(rayon::current_thread_index().is_none());
    let outside = ops();
    for n in [1, 2, 3, 5] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap();
        let inside = pool.install(|| {
            assert!(rayon::current_thread_index().is_some());
            ops()
        });
        for (k, (a, b)) in outside.iter().zip(&inside).enumerate() {
            assert!(a == b, "op {k} on a pool of {n}: values differ");
        }
    }
    // A reference value, so that both paths cannot agree on something wrong.
    let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let i = v.len() - 1;
    assert_eq!(outside[0][i], v[i].exp());
}

/// candle-core-copy.patch: large copies (a channel concatenation, `contiguous` after a narrow
/// over channels and over columns) split over the pool on its workers: every element where the
/// serial copy puts it, on pools of 1, 2, 3 and 5 threads, and the concatenation checked
/// against its parts.
#[test]
fn candle_copies_on_a_pool_worker_put_every_element_in_place() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Batch 1 and 3 (fewer rows than some pools' threads: pieces of rows) and batch 9 (rows);
    // the column narrow copies thousands of short rows.
    let cases = [[1usize, 9, 97, 67], [3, 7, 61, 67], [9, 5, 33, 31]];
    for dims in cases {
        let a = randn(&dims, DType::F32, &mut rng);
        let mut d2 = dims;
        d2[1] = 4;
        let b = randn(&d2, DType::F32, &mut rng);
        let ops = || {
            [
                Tensor::cat(&[&a, &b], 1).unwrap(),
                a.narrow(1, 1, dims[1] - 2).unwrap().contiguous().unwrap(),
                a.narrow(3, 2, dims[3] - 5).unwrap().contiguous().unwrap(),
            ]
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        };
        let outside = ops();
        // The concatenation against its parts, element by element.
        let (av, bv) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let (ca, cb) = (av.len() / dims[0], bv.len() / dims[0]);
        for i in 0..dims[0] {
            assert_eq!(&outside[0][i * (ca + cb)..][..ca], &av[i * ca..][..ca]);
            assert_eq!(&outside[0][i * (ca + cb) + ca..][..cb], &bv[i * cb..][..cb]);
        }
        for n in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap();
            let inside = pool.install(ops);
            for (k, (x, y)) in outside.iter().zip(&inside).enumerate() {
                assert!(x == y, "{dims:?} copy {k} on a pool of {n}: values differ");
            }
        }
    }
}
