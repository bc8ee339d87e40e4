//! Tests of `winograd.rs` and `winograd4.rs`: each transform path against the convolution and
//! its weight gradient summed term by term in f64, and the same bits on 1, 2 and 3 threads.
use super::super::winograd4::F4;
use super::super::winograd_grad::{backward_weight, backward_weight_with};
use super::*;
use rand::{Rng, SeedableRng};

/// The forward convolution with the tiling `W`, its filters transformed for this call.
fn conv_with<W: Tiling, T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    forward_with::<W, T>(x, &W::filter(wt, g.o, g.c), bias, None, g)
}

/// `f(x index, y index, w index)` for every tap of a padding-1 3×3 convolution that
/// reads inside the image.
fn taps(g: &Geom, mut f: impl FnMut(usize, usize, usize)) {
    for n in 0..g.b {
        for o in 0..g.o {
            for c in 0..g.c {
                for (ky, kx, oy, ox) in (0..9)
                    .flat_map(|k| (0..g.h * g.w).map(move |p| (k / 3, k % 3, p / g.w, p % g.w)))
                {
                    let (iy, ix) = (oy + ky, ox + kx);
                    if iy < 1 || ix < 1 || iy > g.h || ix > g.w {
                        continue;
                    }
                    f(
                        ((n * g.c + c) * g.h + iy - 1) * g.w + ix - 1,
                        ((n * g.o + o) * g.h + oy) * g.w + ox,
                        ((o * g.c + c) * 3 + ky) * 3 + kx,
                    );
                }
            }
        }
    }
}

/// The convolution by its definition, in f64.
fn direct(x: &[f64], w: &[f64], b: &[f64], g: &Geom) -> Vec<f64> {
    let plane = g.h * g.w;
    let mut y: Vec<f64> = (0..g.b * g.o * plane).map(|i| b[i / plane % g.o]).collect();
    taps(g, |xi, yi, wi| y[yi] += x[xi] * w[wi]);
    y
}

/// dL/dw by its definition, in f64.
fn direct_dw(x: &[f64], dy: &[f64], g: &Geom) -> Vec<f64> {
    let mut dw = vec![0f64; g.o * g.c * 9];
    taps(g, |xi, yi, wi| dw[wi] += x[xi] * dy[yi]);
    dw
}

/// max |got − want|.
fn max_err<T: Real>(got: &[T], want: &[f64]) -> f64 {
    (got.iter().zip(want))
        .map(|(a, b)| (a.to_f64() - b).abs())
        .fold(0f64, f64::max)
}

/// `run` in f32 on 1, 2 and 3 threads: within `rel` of the largest reference value, and
/// the same bits every time.
fn f32_on_threads(want: &[f64], rel: f64, what: &str, run: impl Fn() -> Vec<f32> + Send + Sync) {
    let scale = want.iter().map(|v| v.abs()).fold(0f64, f64::max);
    let mut bits = None;
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let got = pool.install(&run);
        let err = max_err(&got, want);
        assert!(err < rel * scale, "f32 {what}: {err} of {scale}");
        let b: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        assert!(
            bits.get_or_insert(b.clone()) == &b,
            "{what}: {threads} threads changed bits"
        );
    }
}

fn random(rng: &mut impl Rng, n: usize, r: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-r..r)).collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&v| v as f32).collect()
}

#[test]
fn weight_gradient_matches_the_definition_in_both_tilings_on_any_thread_count() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    // Odd sizes (tiles past the image in both tilings), rows wide enough for the vectorised
    // deinterleaves (33, 40) and for F(4×4)'s eight-lane row loop (32, 40).
    for &(b, c, o, h, w) in &[
        (1, 16, 16, 5, 7),
        (5, 24, 16, 8, 8),
        (3, 16, 40, 9, 4),
        (2, 16, 16, 5, 33),
        (3, 16, 24, 32, 32),
        (2, 24, 16, 13, 40),
    ] {
        let what = format!("{b}×{c}→{o} {h}×{w}");
        let g = Geom::new(&[b, c, h, w], &[o, c, 3, 3], 1, 1).unwrap();
        let x = random(&mut rng, b * c * h * w, 1.0);
        let dy = random(&mut rng, b * o * h * w, 1.0);
        let want = direct_dw(&x, &dy, &g);
        let full = (1 << 17, 256);
        let err = max_err(&backward_weight_with::<F2, _>(&x, &dy, &g, 4, full), &want);
        assert!(err < 1e-11, "f64 F2 {what}: {err}");
        let err = max_err(&backward_weight_with::<F4, _>(&x, &dy, &g, 4, full), &want);
        assert!(err < 1e-11, "f64 F4 {what}: {err}");
        // One image per GEMM (a budget below one image's V and Z): the same sums.
        let err = max_err(
            &backward_weight_with::<F2, _>(&x, &dy, &g, 1, (1, 1)),
            &want,
        );
        assert!(err < 1e-11, "f64 F2 stepped {what}: {err}");
        let err = max_err(
            &backward_weight_with::<F4, _>(&x, &dy, &g, 1, (1, 1)),
            &want,
        );
        assert!(err < 1e-11, "f64 F4 stepped {what}: {err}");
        let (x32, dy32) = (f32s(&x), f32s(&dy));
        f32_on_threads(&want, 4e-6, &format!("F2 {what}"), || {
            backward_weight_with::<F2, _>(&x32, &dy32, &g, 4, full)
        });
        // F(4×4)'s transforms scale terms by up to 8 (A) and 1/24 (G): more rounding.
        f32_on_threads(&want, 2e-5, &format!("F4 {what}"), || {
            backward_weight_with::<F4, _>(&x32, &dy32, &g, 4, full)
        });
        f32_on_threads(&want, 2e-5, &format!("chosen {what}"), || {
            backward_weight(&x32, &dy32, &g, 4)
        });
    }
}

#[test]
fn both_tilings_match_the_definition_at_odd_and_even_sizes_on_any_thread_count() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    // (batch, C, O, H, W): odd sizes, one image (split stages), several (per image). Rows
    // wide enough for the vectorised deinterleaves too (F(2×2): 33 → 17 tiles, two 8-wide
    // steps; F(4×4): 32 and 40 wide, one 8-wide step of the 4-way split read from the row).
    for &(b, c, o, h, w) in &[
        (1, 16, 16, 5, 7),
        (3, 24, 16, 8, 8),
        (2, 16, 40, 9, 4),
        (1, 16, 16, 6, 33),
        (3, 16, 16, 4, 32),
        (1, 16, 24, 13, 29),
        (3, 16, 16, 8, 40),
    ] {
        let what = format!("{b}×{c}→{o} {h}×{w}");
        let g = Geom::new(&[b, c, h, w], &[o, c, 3, 3], 1, 1).unwrap();
        let x = random(&mut rng, b * c * h * w, 1.0);
        let wt = random(&mut rng, o * c * 9, 0.3);
        let bias = random(&mut rng, o, 1.0);
        let want = direct(&x, &wt, &bias, &g);
        let (x32, w32, b32) = (f32s(&x), f32s(&wt), f32s(&bias));
        // F(2×2, 3×3): 2e-6 of the scale in f32; F(4×4, 3×3) rounds more (terms scaled by
        // up to 8 in the transforms): 1e-5.
        let err = max_err(&conv_with::<F2, _>(&x, &wt, Some(&bias), &g), &want);
        assert!(err < 1e-12, "f64 F2 {what}: {err}");
        f32_on_threads(&want, 2e-6, &format!("F2 {what}"), || {
            conv_with::<F2, _>(&x32, &w32, Some(&b32), &g)
        });
        let err = max_err(&conv_with::<F4, _>(&x, &wt, Some(&bias), &g), &want);
        assert!(err < 1e-12, "f64 F4 {what}: {err}");
        f32_on_threads(&want, 1e-5, &format!("F4 {what}"), || {
            conv_with::<F4, _>(&x32, &w32, Some(&b32), &g)
        });
    }
}

/// Image i of a batch gets the same bits as the same image alone: the batch runs image by
/// image or, below 64 tiles per image, in groups side by side (16×13 and 8×8: groups of 3, of
/// 4 then 1 at batch 5), a single image in split stages (channel runs, products, output runs)
/// on the threads; both tilings, f32, 2 threads.
#[test]
fn both_tilings_give_each_image_the_same_bits_at_any_batch_size() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for &(b, c, o, h, w) in &[(3, 16, 24, 32, 32), (3, 24, 16, 16, 13), (5, 16, 24, 8, 8)] {
        let g = Geom::new(&[b, c, h, w], &[o, c, 3, 3], 1, 1).unwrap();
        let one = Geom::new(&[1, c, h, w], &[o, c, 3, 3], 1, 1).unwrap();
        let x = f32s(&random(&mut rng, b * c * h * w, 1.0));
        let wt = f32s(&random(&mut rng, o * c * 9, 0.3));
        let bias = f32s(&random(&mut rng, o, 1.0));
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let (batch2, batch4) = pool.install(|| {
            (
                conv_with::<F2, _>(&x, &wt, Some(&bias), &g),
                conv_with::<F4, _>(&x, &wt, Some(&bias), &g),
            )
        });
        for (i, xi) in x.chunks(c * h * w).enumerate() {
            let (alone2, alone4) = pool.install(|| {
                (
                    conv_with::<F2, _>(xi, &wt, Some(&bias), &one),
                    conv_with::<F4, _>(xi, &wt, Some(&bias), &one),
                )
            });
            let part = |v: &[f32]| bits(&v[i * o * h * w..(i + 1) * o * h * w]);
            assert_eq!(
                part(&batch2),
                bits(&alone2),
                "F2 image {i} of {c}→{o} {h}×{w}"
            );
            assert_eq!(
                part(&batch4),
                bits(&alone4),
                "F4 image {i} of {c}→{o} {h}×{w}"
            );
        }
    }
}
