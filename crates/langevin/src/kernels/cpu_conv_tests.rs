//! Tests of the convolution arithmetic in `cpu_conv.rs`: every path (im2col, the transposed
//! convolution, the batch-1 row split) against the definitions summed term by term in f64, and
//! the same bits on 1, 2 and 3 threads.
use super::*;

/// (batch, channels, height, width, out channels, kernel, stride, padding): 3×3 at padding
/// 0, 1 and 2, 5×5, odd and 1×1 images, 1×1 kernels with and without padding, strides 2 and
/// 3, fewer, more and at least twice as many input as output channels.
const CASES: &[(usize, usize, usize, usize, usize, usize, usize, usize)] = &[
    (1, 3, 7, 5, 4, 3, 1, 1),
    (2, 2, 5, 7, 3, 3, 1, 0),
    (2, 3, 5, 5, 4, 3, 1, 2),
    (3, 4, 6, 6, 6, 1, 1, 0),
    (1, 5, 4, 3, 2, 1, 1, 1),
    (2, 3, 6, 9, 2, 5, 1, 2),
    (1, 2, 1, 1, 3, 3, 1, 1),
    (2, 5, 9, 8, 3, 3, 2, 1),
    (1, 16, 13, 11, 7, 3, 1, 1),
    (2, 6, 7, 5, 3, 3, 1, 1),
    (3, 7, 6, 8, 2, 3, 1, 0),
    (2, 3, 11, 8, 4, 3, 3, 1),
];

/// Deterministic values in [-1, 1) (SplitMix64), so the test needs no RNG crate.
fn values<T: Real>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            T::from_f64((z >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        })
        .collect()
}

/// dx[b, c, iy, ix] = Σ dy[b, o, oy, ox]·w[o, c, ky, kx] over iy = oy·s + ky − p,
/// ix = ox·s + kx − p: the definition, summed term by term in f64.
fn direct(dy: &[f64], wt: &[f64], g: &Geom) -> Vec<f64> {
    let mut dx = vec![0.0; g.b * g.c * g.hwi()];
    for b in 0..g.b {
        for o in 0..g.o {
            for c in 0..g.c {
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let w = wt[((o * g.c + c) * g.k + ky) * g.k + kx];
                        for oy in 0..g.ho {
                            for ox in 0..g.wo {
                                let iy = (oy * g.s + ky) as isize - g.p as isize;
                                let ix = (ox * g.s + kx) as isize - g.p as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let d = dy[((b * g.o + o) * g.ho + oy) * g.wo + ox];
                                dx[((b * g.c + c) * g.h + iy as usize) * g.w + ix as usize] +=
                                    d * w;
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

/// max |a − b| / max |b|; infinite if any value is not finite (`f64::max` would skip NaN).
fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn geom(
    &(b, c, h, w, o, k, s, p): &(usize, usize, usize, usize, usize, usize, usize, usize),
) -> Geom {
    Geom::new(&[b, c, h, w], &[o, c, k, k], s, p).unwrap()
}

/// y[b, o, oy, ox] = bias[o] + Σ x[b, c, iy, ix]·w[o, c, ky, kx] (same index map as
/// [`direct`]), term by term in f64.
fn direct_forward(x: &[f64], wt: &[f64], bias: &[f64], g: &Geom) -> Vec<f64> {
    let mut y = vec![0.0; g.b * g.o * g.hwo()];
    for b in 0..g.b {
        for o in 0..g.o {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut acc = bias[o];
                    for c in 0..g.c {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let iy = (oy * g.s + ky) as isize - g.p as isize;
                                let ix = (ox * g.s + kx) as isize - g.p as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                acc += x[((b * g.c + c) * g.h + iy as usize) * g.w + ix as usize]
                                    * wt[((o * g.c + c) * g.k + ky) * g.k + kx];
                            }
                        }
                    }
                    y[((b * g.o + o) * g.ho + oy) * g.wo + ox] = acc;
                }
            }
        }
    }
    y
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Both input-gradient paths (the convolution of dy with the flipped weights wherever the
/// geometry allows it, GEMM + col2im everywhere) and the dispatch between them give the
/// definition's values in f64, and agree to rounding in f32.
#[test]
fn input_gradient_paths_match_the_definition() {
    for (i, case) in CASES.iter().enumerate() {
        let g = geom(case);
        let conv_form = case.6 == 1 && case.7 < case.5 && case.5 > 1;
        assert_eq!(g.transposed().is_some(), conv_form, "case {i}");
        let dy = values::<f64>(g.b * g.o * g.hwo(), 2 * i as u64);
        let wt = values::<f64>(g.o * g.ckk(), 2 * i as u64 + 1);
        let reference = direct(&dy, &wt, &g);
        let mut paths = vec![
            ("col2im", transposed_conv(&dy, &wt, None, &g)),
            ("dispatch", backward_input(&dy, &wt, &g)),
        ];
        if let Some(gt) = g.transposed() {
            paths.push(("conv", forward_im2col(&dy, &flip(&wt, &g), None, &gt)));
            let (a, b) = (to32(&dy), to32(&wt));
            let by_conv = forward_im2col(&a, &flip(&b, &g), None, &gt);
            let by_col2im = transposed_conv(&a, &b, None, &g);
            let err = max_rel(&to64(&by_conv), &to64(&by_col2im));
            assert!(err < 1e-5, "case {i} {case:?}: f32 conv vs col2im {err}");
        }
        for (name, dx) in paths {
            assert_eq!(dx.len(), reference.len(), "case {i} {name}");
            let err = max_rel(&dx, &reference);
            assert!(err < 1e-13, "case {i} {case:?}: {name} {err}");
        }
    }
}

/// The forward by im2col, by the transposed convolution of the flipped weights (where the
/// geometry allows it) and the dispatch between them give the definition's values, bias
/// included, in f64, and agree to rounding in f32.
#[test]
fn forward_paths_match_the_definition() {
    for (i, case) in CASES.iter().enumerate() {
        let g = geom(case);
        let x = values::<f64>(g.b * g.c * g.hwi(), 3 * i as u64);
        let wt = values::<f64>(g.o * g.ckk(), 3 * i as u64 + 1);
        let bias = values::<f64>(g.o, 3 * i as u64 + 2);
        let reference = direct_forward(&x, &wt, &bias, &g);
        let mut paths = vec![
            ("im2col", forward_im2col(&x, &wt, Some(&bias), &g)),
            ("dispatch", forward(&x, &wt, Some(&bias), &g)),
        ];
        if let Some(gt) = g.transposed() {
            paths.push((
                "col2im",
                transposed_conv(&x, &flip(&wt, &g), Some(&bias), &gt),
            ));
            let (a, b, c) = (to32(&x), to32(&wt), to32(&bias));
            let by_col2im = transposed_conv(&a, &flip(&b, &g), Some(&c), &gt);
            let by_im2col = forward_im2col(&a, &b, Some(&c), &g);
            let err = max_rel(&to64(&by_col2im), &to64(&by_im2col));
            assert!(err < 1e-5, "case {i} {case:?}: f32 col2im vs im2col {err}");
        }
        for (name, y) in paths {
            assert_eq!(y.len(), reference.len(), "case {i} {name}");
            let err = max_rel(&y, &reference);
            assert!(err < 1e-13, "case {i} {case:?}: {name} {err}");
        }
    }
}

/// dw[o, c, ky, kx] = Σ dy[b, o, oy, ox]·x[b, c, iy, ix] (the index map of [`direct`]):
/// the weight gradient over its partial sums of images, against the definition in f64.
#[test]
fn weight_gradient_matches_the_definition() {
    for (i, case) in CASES.iter().enumerate() {
        let g = geom(case);
        let x = values::<f64>(g.b * g.c * g.hwi(), 5 * i as u64);
        let dy = values::<f64>(g.b * g.o * g.hwo(), 5 * i as u64 + 1);
        let mut reference = vec![0.0; g.o * g.ckk()];
        for (j, r) in reference.iter_mut().enumerate() {
            // The gradient along weight j is the forward with that single weight set to 1.
            let mut unit = vec![0.0; g.o * g.ckk()];
            unit[j] = 1.0;
            let y = direct_forward(&x, &unit, &vec![0.0; g.o], &g);
            *r = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
        }
        let dw = backward_weight(&x, &dy, &g);
        let err = max_rel(&dw, &reference);
        assert!(err < 1e-13, "case {i} {case:?}: {err}");
    }
}

/// The same bits on 1, 2 and 3 threads for the forward and the input gradient on every path
/// (C < O, C > O, C ≥ 2·O), in both work splits (batch 1: one image at a time with a
/// threaded GEMM; batch 5: images per worker).
#[test]
fn conv_paths_are_bit_identical_across_thread_counts() {
    for (b, c, o) in [
        (1, 4, 6),
        (1, 8, 6),
        (1, 12, 5),
        (5, 4, 6),
        (5, 8, 6),
        (5, 12, 5),
    ] {
        let g = Geom::new(&[b, c, 9, 7], &[o, c, 3, 3], 1, 1).unwrap();
        let x = values::<f32>(g.b * g.c * g.hwi(), 10);
        let dy = values::<f32>(g.b * g.o * g.hwo(), 11);
        let wt = values::<f32>(g.o * g.ckk(), 12);
        let bias = values::<f32>(g.o, 13);
        let run = |n: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap();
            let (y, dx) = pool.install(|| {
                (
                    forward(&x, &wt, Some(&bias), &g),
                    backward_input(&dy, &wt, &g),
                )
            });
            let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            (bits(y), bits(dx))
        };
        let one = run(1);
        assert_eq!(one, run(2), "{:?}", (b, c, o));
        assert_eq!(one, run(3), "{:?}", (b, c, o));
    }
}

/// On small maps several images share one GEMM ([`grouped`]): forward (im2col and, at
/// 2·O ≤ C, the transposed form) and input gradient at stride 1 and 2 give the same bits on
/// 1, 2, 3 and 5 threads (5: fewer groups than threads, `gemm` threaded inside), and each
/// image the values it gets alone (one GEMM of its own) to rounding; the groups run on these
/// shapes.
#[test]
fn grouped_images_are_bit_identical_across_thread_counts_and_match_one_image() {
    // (batch, channels, out channels, size, stride)
    for case in [
        (9, 64, 48, 4, 1),
        (7, 32, 64, 8, 2),
        (12, 96, 32, 6, 1),
        (8, 48, 40, 8, 1),
    ] {
        let (b, c, o, hw, s) = case;
        let g = Geom::new(&[b, c, hw, hw], &[o, c, 3, 3], s, 1).unwrap();
        assert!(grouped(&g).is_some(), "{case:?}");
        let x = values::<f32>(g.b * g.c * g.hwi(), 20);
        let dy = values::<f32>(g.b * g.o * g.hwo(), 21);
        let wt = values::<f32>(g.o * g.ckk(), 22);
        let bias = values::<f32>(g.o, 23);
        let run = |n: usize, x: &[f32], dy: &[f32], g: &Geom| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap();
            pool.install(|| {
                let y = forward(x, &wt, Some(&bias), g);
                [y, backward_input(dy, &wt, g)]
            })
        };
        let bits = |v: &[Vec<f32>; 2]| {
            v.each_ref()
                .map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
        };
        let all = run(1, &x, &dy, &g);
        for n in [2, 3, 5] {
            assert!(
                bits(&all) == bits(&run(n, &x, &dy, &g)),
                "{case:?} on {n} threads"
            );
        }
        let g1 = Geom { b: 1, ..g };
        let (xs, ys) = (g.c * g.hwi(), g.o * g.hwo());
        for i in 0..b {
            let alone = run(1, &x[i * xs..][..xs], &dy[i * ys..][..ys], &g1);
            for (k, n) in [g.o * g.hwo(), g.c * g.hwi()].into_iter().enumerate() {
                let err = max_rel(&to64(&all[k][i * n..][..n]), &to64(&alone[k]));
                assert!(err < 1e-5, "{case:?} image {i} output {k}: {err}");
            }
        }
    }
}

/// At batch 1 on several threads the image's GEMM is split by rows ([`row_split`]): the
/// split runs on these shapes (forward by im2col and by the transposed convolution, input
/// gradient both ways, stride 2, 1×1), gives the same bits on 1, 2 and 3 threads, and the
/// definition's values.
#[test]
fn batch_one_row_split_is_exact_and_bit_identical_across_thread_counts() {
    // (channels, out channels, size, kernel, stride, padding)
    let cases = [
        (64, 48, 16, 3, 1, 1),
        (48, 96, 16, 3, 1, 1),
        (96, 48, 16, 3, 1, 1),
        (64, 64, 17, 3, 2, 1),
        (64, 64, 16, 1, 1, 0),
    ];
    for (i, &(c, o, hw, k, s, p)) in cases.iter().enumerate() {
        let g = Geom::new(&[1, c, hw, hw], &[o, c, k, k], s, p).unwrap();
        let x = values::<f64>(g.c * g.hwi(), 20 + i as u64);
        let dy = values::<f64>(g.o * g.hwo(), 30 + i as u64);
        let wt = values::<f64>(g.o * g.ckk(), 40 + i as u64);
        let bias = values::<f64>(g.o, 50 + i as u64);
        let (x32, dy32, wt32, bias32) = (to32(&x), to32(&dy), to32(&wt), to32(&bias));
        let pool = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let split = pool(2).install(|| {
            let fwd = match g.transposed() {
                Some(gt) if g.c >= 2 * g.o && g.c <= 256 => row_split(gt.c, gt.hwo(), gt.o),
                _ => row_split(g.o, g.hwo(), g.ckk()),
            };
            let bwd = match g.transposed() {
                Some(gt) if g.c > g.o => row_split(gt.o, gt.hwo(), gt.ckk()),
                _ => row_split(g.c, g.hwo(), g.o),
            };
            (fwd.is_some(), bwd.is_some())
        });
        assert!(split.0 && (split.1 || s == 2), "case {i}: {split:?}");
        let run = |n: usize| {
            pool(n).install(|| {
                (
                    forward(&x32, &wt32, Some(&bias32), &g),
                    backward_input(&dy32, &wt32, &g),
                )
            })
        };
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let (y1, dx1) = run(1);
        for n in [2, 3] {
            let (y, dx) = run(n);
            assert_eq!(bits(&y1), bits(&y), "case {i}: forward on {n} threads");
            assert_eq!(
                bits(&dx1),
                bits(&dx),
                "case {i}: input gradient on {n} threads"
            );
        }
        let (y, dx) = pool(2).install(|| {
            (
                forward(&x, &wt, Some(&bias), &g),
                backward_input(&dy, &wt, &g),
            )
        });
        let y_ref = direct_forward(&x, &wt, &bias, &g);
        let dx_ref = direct(&dy, &wt, &g);
        assert!(max_rel(&y, &y_ref) < 1e-13, "case {i}: forward");
        assert!(max_rel(&dx, &dx_ref) < 1e-13, "case {i}: input gradient");
        assert!(max_rel(&to64(&y1), &y_ref) < 1e-5, "case {i}: forward f32");
        assert!(
            max_rel(&to64(&dx1), &dx_ref) < 1e-5,
            "case {i}: gradient f32"
        );
    }
}

/// dw[o, c, ky, kx] = Σ dy[b, o, oy, ox]·x[b, c, oy·s + ky − p, ox·s + kx − p]: the weight
/// gradient's definition, summed term by term in f64.
fn direct_weight_grad(x: &[f64], dy: &[f64], g: &Geom) -> Vec<f64> {
    let mut dw = vec![0.0; g.o * g.ckk()];
    for b in 0..g.b {
        for o in 0..g.o {
            for c in 0..g.c {
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let mut s = 0.0;
                        for oy in 0..g.ho {
                            for ox in 0..g.wo {
                                let iy = (oy * g.s + ky) as isize - g.p as isize;
                                let ix = (ox * g.s + kx) as isize - g.p as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                s += dy[((b * g.o + o) * g.ho + oy) * g.wo + ox]
                                    * x[((b * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                            }
                        }
                        dw[((o * g.c + c) * g.k + ky) * g.k + kx] += s;
                    }
                }
            }
        }
    }
    dw
}

/// The weight gradient (kept transposed while summing, see [`backward_weight`]) at UNet-like
/// sizes, where `gemm` takes its packed general kernel (the small [`CASES`] mostly take its
/// small-matrix kernels): the definition's values in f64 and f32, and the same bits on 1, 2
/// and 3 threads, with one image (a threaded GEMM), a batch split into per-thread groups, one
/// output channel (`gemm`'s matrix-vector path), a 1×1 kernel and stride 2.
#[test]
fn weight_gradient_at_unet_sizes_is_exact_and_bit_identical_across_thread_counts() {
    // (batch, channels, out channels, size, kernel, stride, padding)
    let cases = [
        (1, 32, 64, 14, 3, 1, 1),
        (5, 32, 32, 14, 3, 1, 1),
        (3, 16, 1, 28, 3, 1, 1),
        (4, 48, 64, 9, 1, 1, 0),
        (2, 32, 48, 15, 3, 2, 1),
        (9, 24, 40, 7, 3, 1, 1),
    ];
    for (i, &(b, c, o, hw, k, s, p)) in cases.iter().enumerate() {
        let g = Geom::new(&[b, c, hw, hw], &[o, c, k, k], s, p).unwrap();
        let x = values::<f64>(g.b * g.c * g.hwi(), 60 + i as u64);
        let dy = values::<f64>(g.b * g.o * g.hwo(), 70 + i as u64);
        let (x32, dy32) = (to32(&x), to32(&dy));
        let pool = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let reference = direct_weight_grad(&x, &dy, &g);
        let dw = pool(2).install(|| backward_weight(&x, &dy, &g));
        assert!(max_rel(&dw, &reference) < 1e-13, "case {i}: f64");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let one = pool(1).install(|| backward_weight(&x32, &dy32, &g));
        assert!(max_rel(&to64(&one), &reference) < 1e-5, "case {i}: f32");
        for n in [2, 3] {
            let dw = pool(n).install(|| backward_weight(&x32, &dy32, &g));
            assert_eq!(bits(&one), bits(&dw), "case {i}: {n} threads");
        }
    }
}

/// dL/dbias against its definition (Σ of dy over images and positions, in f64 term by term),
/// plane sizes that are and are not multiples of the 8 partial sums, and the same bits on 1, 2
/// and 3 threads.
#[test]
fn bias_gradient_matches_the_definition_and_thread_counts() {
    for (i, &(b, o, hw)) in [(3, 5, 7), (1, 9, 8), (4, 16, 5), (2, 3, 1)]
        .iter()
        .enumerate()
    {
        let g = Geom::new(&[b, 2, hw, hw], &[o, 2, 1, 1], 1, 0).unwrap();
        let dy = values::<f64>(b * o * hw * hw, 80 + i as u64);
        let mut reference = vec![0.0; o];
        for (j, v) in dy.iter().enumerate() {
            reference[(j / (hw * hw)) % o] += v;
        }
        let pool = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let db = pool(2).install(|| bias_grad(&dy, &g));
        assert!(max_rel(&db, &reference) < 1e-14, "case {i}");
        let dy32 = to32(&dy);
        let bits = |n: usize| {
            let v = pool(n).install(|| bias_grad(&dy32, &g));
            v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
        };
        assert!(max_rel(&to64(&pool(1).install(|| bias_grad(&dy32, &g))), &reference) < 1e-6);
        assert_eq!(bits(1), bits(2), "case {i}");
        assert_eq!(bits(1), bits(3), "case {i}");
    }
}
