//! End-to-end tests of the `langevin` binary: a temp dir per test and a command helper.
use std::path::{Path, PathBuf};

mod common;
use common::{fails_with, langevin, ok, tmp};

#[test]
fn schedule_prints_json_with_the_geometric_closed_form() {
    let d = tmp("schedule");
    let out = ok(&langevin(
        &[
            "schedule",
            "--schedule",
            "geometric",
            "--beta",
            "0.5",
            "--timesteps",
            "1000",
            "--json",
        ],
        &d,
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ab = v["terminal_alpha_bar"].as_f64().unwrap();
    assert!((ab - 0.288_788_095_086_602_4).abs() < 1e-12, "{ab}");
    assert_eq!(v["betas"].as_array().unwrap().len(), 1000);
    let csv = ok(&langevin(
        &["schedule", "--schedule", "cosine", "--csv"],
        &d,
    ));
    assert_eq!(csv.lines().count(), 1001);
    ok(&langevin(
        &["schedule", "--schedule", "geometric", "--plot", "g.png"],
        &d,
    ));
    for f in ["g.png", "g-alpha-bar.png", "g-sigma.png"] {
        assert!(d.join(f).metadata().unwrap().len() > 1000, "{f}");
    }
}

#[test]
fn bad_parameters_exit_2_with_a_one_line_error() {
    let d = tmp("bad");
    fails_with(
        &langevin(
            &["schedule", "--schedule", "geometric", "--beta", "1.5"],
            &d,
        ),
        &["--beta", "(0, 1)"],
    );
    fails_with(
        &langevin(&["schedule", "--timesteps", "0"], &d),
        &["--timesteps", "≥ 1"],
    );
    std::fs::write(d.join("bad.csv"), "a,b\n1,2\n3,oops\n").unwrap();
    fails_with(
        &langevin(
            &["train", "--data", "bad.csv", "--out", "r", "--steps", "5"],
            &d,
        ),
        &["bad.csv", "row 3", "column 2"],
    );
    std::fs::write(d.join("ragged.csv"), "1,2\n3\n").unwrap();
    fails_with(
        &langevin(
            &[
                "train",
                "--data",
                "ragged.csv",
                "--out",
                "r",
                "--steps",
                "5",
            ],
            &d,
        ),
        &["ragged.csv", "row 2"],
    );
    fails_with(
        &langevin(
            &[
                "train",
                "--data",
                "toy:spiral",
                "--out",
                "r",
                "--steps",
                "5",
            ],
            &d,
        ),
        &["spiral", "swiss-roll"],
    );
    fails_with(
        &langevin(&["sample", "--model", "nowhere", "--out", "s.csv"], &d),
        &["nowhere"],
    );
    // Devices and precisions: half precision needs a GPU; a CPU build says how to get CUDA.
    let toy = [
        "train",
        "--data",
        "toy:two-moons",
        "--out",
        "r",
        "--steps",
        "5",
    ];
    fails_with(
        &langevin(&[&toy[..], &["--dtype", "bf16"]].concat(), &d),
        &["bf16", "--device cuda"],
    );
    fails_with(
        &langevin(&[&toy[..], &["--device", "tpu"]].concat(), &d),
        &["tpu", "cuda:N"],
    );
    if !cfg!(feature = "cuda") {
        fails_with(
            &langevin(&[&toy[..], &["--device", "cuda:1"]].concat(), &d),
            &["cuda:1", "scripts/build-cuda.sh"],
        );
    }
    assert!(
        !d.join("r").exists(),
        "a refused run must not write its output folder"
    );
}

#[test]
fn train_sample_resume_and_eval_on_a_toy_set() {
    let d = tmp("flow");
    let train = [
        "train",
        "--data",
        "toy:8-gaussians",
        "--out",
        "run",
        "--steps",
        "40",
        "--batch-size",
        "64",
        "--hidden",
        "32",
        "--checkpoint-every",
        "20",
    ];
    ok(&langevin(&train, &d));
    for f in [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "scheduler_config.json",
        "train_state.safetensors",
        "loss.png",
    ] {
        assert!(d.join("run").join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["_class_name"], "LangevinMlp");
    assert_eq!(cfg["langevin"]["data"]["source"], "toy:8-gaussians");

    // Same seed, different batch size: identical rows.
    let s = |n: &str, bs: &str, out: &str| {
        langevin(
            &[
                "sample",
                "--model",
                "run",
                "--sampler",
                "euler-a",
                "--steps",
                "8",
                "--n",
                n,
                "--batch-size",
                bs,
                "--seed",
                "5",
                "--out",
                out,
            ],
            &d,
        )
    };
    ok(&s("6", "6", "a.csv"));
    ok(&s("6", "4", "b.csv"));
    let a = std::fs::read_to_string(d.join("a.csv")).unwrap();
    assert_eq!(a, std::fs::read_to_string(d.join("b.csv")).unwrap());
    assert_eq!(a.lines().count(), 7, "header + 6 rows");

    // A failing sample run leaves an existing output untouched.
    let before = std::fs::read(d.join("a.csv")).unwrap();
    let o = langevin(
        &[
            "sample",
            "--model",
            "run",
            "--sampler",
            "nope",
            "--out",
            "a.csv",
        ],
        &d,
    );
    fails_with(&o, &["nope"]);
    assert_eq!(std::fs::read(d.join("a.csv")).unwrap(), before);

    // Resume continues from step 40 to 60.
    let mut resume = train.to_vec();
    resume.extend(["--resume"]);
    resume[6] = "60";
    let out = ok(&langevin(&resume, &d));
    assert!(out.contains("trained 60 steps"), "{out}");

    let ev = ok(&langevin(
        &[
            "eval",
            "--model",
            "run",
            "--samplers",
            "heun,ddim",
            "--nfe",
            "9",
            "--n",
            "200",
            "--markdown",
            "t.md",
        ],
        &d,
    ));
    assert!(
        ev.contains("noise floor") && ev.contains("heun") && ev.contains("ddim"),
        "{ev}"
    );
    assert!(std::fs::read_to_string(d.join("t.md"))
        .unwrap()
        .contains("| heun |"));
    // NLL in bits/dim: finite, and above the entropy of the true 8-gaussians (about 2.05
    // bits/dim) minus sampling error: no model beats the data density in expectation.
    let nll = ok(&langevin(
        &["eval", "--model", "run", "--metric", "nll", "--n", "40"],
        &d,
    ));
    let v: f64 = nll
        .split("rows of toy:8-gaussians: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(v.is_finite() && v > 1.5, "{nll}");
}

#[test]
fn tabular_csv_round_trips_through_standardisation() {
    let d = tmp("csv");
    // Two columns on very different scales; samples must come back in data units.
    let mut csv = String::from("height,weight\n");
    for i in 0..400 {
        let t = i as f64 / 400.0;
        csv.push_str(&format!(
            "{},{}\n",
            150.0 + 40.0 * t,
            50_000.0 + 30_000.0 * (1.0 - t)
        ));
    }
    std::fs::write(d.join("t.csv"), csv).unwrap();
    ok(&langevin(
        &[
            "train", "--data", "t.csv", "--out", "run", "--steps", "300", "--hidden", "64",
        ],
        &d,
    ));
    ok(&langevin(
        &[
            "sample",
            "--model",
            "run",
            "--sampler",
            "heun",
            "--steps",
            "10",
            "--n",
            "200",
            "--out",
            "s.csv",
        ],
        &d,
    ));
    let s = std::fs::read_to_string(d.join("s.csv")).unwrap();
    let mut lines = s.lines();
    assert_eq!(lines.next().unwrap(), "height,weight");
    let rows: Vec<(f64, f64)> = lines
        .map(|l| {
            let mut p = l.split(',').map(|v| v.parse::<f64>().unwrap());
            (p.next().unwrap(), p.next().unwrap())
        })
        .collect();
    let mh = rows.iter().map(|r| r.0).sum::<f64>() / rows.len() as f64;
    let mw = rows.iter().map(|r| r.1).sum::<f64>() / rows.len() as f64;
    // Data means are 170 and 65 000; a short training run gets within a few percent.
    assert!((mh - 170.0).abs() < 5.0, "height mean {mh}");
    assert!((mw - 65_000.0).abs() < 3_000.0, "weight mean {mw}");
}

#[test]
fn demo_runs_and_beats_twice_the_noise_floor_with_heun() {
    let d = tmp("demo");
    let out = ok(&langevin(
        &[
            "demo",
            "--steps",
            "600",
            "--n",
            "500",
            "--data",
            "8-gaussians",
            "--out",
            "demo",
        ],
        &d,
    ));
    assert!(d.join("demo/demo.png").is_file());
    let heun = out.lines().find(|l| l.starts_with("Heun")).unwrap();
    let ratio: f64 = heun.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(ratio < 2.0, "{out}");
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../langevin/tests/fixtures/pipeline")
}

fn read_npy(p: &Path) -> Vec<f32> {
    let bytes = std::fs::read(p).unwrap();
    // Little-endian f32 .npy written by numpy or by us: the data follows the header.
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn sample_with_a_diffusers_scheduler_class_reproduces_diffusers_loop() {
    let d = tmp("pipeline");
    let f = fixtures();
    let model = f.join("model");
    let noise = f.join("noise.npy");
    let o = langevin(
        &[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--sampler",
            "DDIMScheduler",
            "--steps",
            "10",
            "--n",
            "2",
            "--init-noise",
            noise.to_str().unwrap(),
            "--npy",
            "out.npy",
            "--out",
            "grid.png",
        ],
        &d,
    );
    ok(&o);
    let got = read_npy(&d.join("out.npy"));
    let want = read_npy(&f.join("DDIMScheduler-10.npy"));
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err / scale <= 1e-3, "relative error {}", err / scale);
    assert!(d.join("grid.png").is_file());
    let sched = ok(&langevin(
        &[
            "schedule",
            "--config",
            model.join("scheduler_config.json").to_str().unwrap(),
            "--steps",
            "5",
        ],
        &d,
    ));
    let v: serde_json::Value = serde_json::from_str(&sched).unwrap();
    // DDPMScheduler, "leading" spacing: 1000/5 · [4, 3, 2, 1, 0].
    assert_eq!(v["timesteps"], serde_json::json!([800, 600, 400, 200, 0]));
}

#[test]
fn image_model_trains_resumes_and_samples_with_guidance() {
    let d = tmp("images");
    let train = [
        "train",
        "--data",
        "digits",
        "--out",
        "run",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--channels",
        "8,16",
        "--norm-groups",
        "4",
        "--class-cond",
        "--hflip",
        "--checkpoint-every",
        "2",
    ];
    ok(&langevin(&train, &d));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["_class_name"], "UNet2DModel");
    assert_eq!(cfg["num_class_embeds"], 11, "10 digits + the null class");
    assert_eq!(
        cfg["langevin"]["data"]["hflip"], true,
        "--resume must flip as the run did"
    );
    assert!(d.join("run/samples.png").is_file());
    let mut resume = train.to_vec();
    resume[6] = "4";
    resume.push("--resume");
    assert!(ok(&langevin(&resume, &d)).contains("trained 4 steps"));
    ok(&langevin(
        &[
            "sample",
            "--model",
            "run",
            "--sampler",
            "dpmpp-2m",
            "--steps",
            "4",
            "--n",
            "3",
            "--class",
            "7",
            "--guidance",
            "2",
            "--out",
            "g.png",
            "--out-dir",
            "each",
            "--npy",
            "s.npy",
        ],
        &d,
    ));
    assert_eq!(std::fs::read_dir(d.join("each")).unwrap().count(), 3);
    assert_eq!(read_npy(&d.join("s.npy")).len(), 3 * 64);
    fails_with(
        &langevin(
            &[
                "sample",
                "--model",
                "run",
                "--guidance",
                "2",
                "--out",
                "g.png",
            ],
            &d,
        ),
        &["--class"],
    );
}

fn grey_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

#[test]
fn inpaint_keeps_unmasked_pixels_and_img2img_strength_zero_returns_the_input() {
    let d = tmp("apps");
    ok(&langevin(
        &[
            "train",
            "--data",
            "digits",
            "--out",
            "run",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--channels",
            "8,16",
            "--norm-groups",
            "4",
        ],
        &d,
    ));
    grey_png(&d.join("in.png"), 8, 8, |x, y| (x * 30 + y * 3) as u8);
    grey_png(
        &d.join("mask.png"),
        8,
        8,
        |x, _| if x >= 4 { 255 } else { 0 },
    );
    // Projection alone, and RePaint (two passes through every stretch of two steps).
    for extra in [&[][..], &["--resample", "2", "--jump", "2"][..]] {
        let mut args = vec![
            "inpaint",
            "--model",
            "run",
            "--image",
            "in.png",
            "--mask",
            "mask.png",
            "--sampler",
            "euler",
            "--steps",
            "5",
            "--out",
            "out.png",
        ];
        args.extend_from_slice(extra);
        ok(&langevin(&args, &d));
        let out = image::open(d.join("out.png")).unwrap().to_luma8();
        for y in 0..8 {
            for x in 0..4 {
                assert_eq!(
                    out.get_pixel(x, y).0[0],
                    (x * 30 + y * 3) as u8,
                    "{extra:?}: pixel ({x}, {y}) changed"
                );
            }
        }
    }
    // Zero-shot super-resolution: a 4×4 input, the 8×8 model; the output box-downsamples to
    // the input (in floats, before 8-bit rounding; 1e-4 allows for f32 cancellation).
    grey_png(&d.join("low.png"), 4, 4, |x, y| (x * 60 + y * 20) as u8);
    ok(&langevin(
        &[
            "upscale",
            "--model",
            "run",
            "--image",
            "low.png",
            "--zero-shot",
            "--sampler",
            "heun",
            "--steps",
            "4",
            "--out",
            "up.png",
            "--npy",
            "up.npy",
        ],
        &d,
    ));
    let (shape, up) = langevin::data::npy::load_npy_f32(&d.join("up.npy")).unwrap();
    assert_eq!(shape, vec![1, 1, 8, 8]);
    for y in 0..4 {
        for x in 0..4 {
            let block: f32 = (0..4)
                .map(|k| up[(2 * y + k / 2) * 8 + 2 * x + k % 2])
                .sum::<f32>()
                / 4.0;
            let want = (x * 60 + y * 20) as f32 / 127.5 - 1.0;
            assert!(
                (block - want).abs() < 1e-4,
                "block ({x}, {y}): {block} vs {want}"
            );
        }
    }
    fails_with(
        &langevin(
            &[
                "upscale", "--model", "run", "--image", "low.png", "--out", "u.png",
            ],
            &d,
        ),
        &["--zero-shot"],
    );
    grey_png(&d.join("odd.png"), 3, 3, |_, _| 0);
    fails_with(
        &langevin(
            &[
                "upscale",
                "--model",
                "run",
                "--image",
                "odd.png",
                "--zero-shot",
                "--out",
                "u.png",
            ],
            &d,
        ),
        &["odd.png", "3×3", "integer factor"],
    );
    grey_png(&d.join("small.png"), 4, 4, |_, _| 0);
    fails_with(
        &langevin(
            &[
                "inpaint",
                "--model",
                "run",
                "--image",
                "in.png",
                "--mask",
                "small.png",
                "--out",
                "o.png",
            ],
            &d,
        ),
        &["small.png", "4×4", "8×8"],
    );
    ok(&langevin(
        &[
            "img2img",
            "--model",
            "run",
            "--image",
            "in.png",
            "--strength",
            "0",
            "--out",
            "same.png",
        ],
        &d,
    ));
    let same = image::open(d.join("same.png")).unwrap().to_luma8();
    for y in 0..8 {
        for x in 0..8 {
            assert_eq!(same.get_pixel(x, y).0[0], (x * 30 + y * 3) as u8);
        }
    }
    fails_with(
        &langevin(
            &[
                "img2img",
                "--model",
                "run",
                "--image",
                "in.png",
                "--strength",
                "1.5",
                "--out",
                "o.png",
            ],
            &d,
        ),
        &["strength"],
    );
}

#[test]
fn sr3_model_trains_and_upscales_and_wrong_modes_are_clear_errors() {
    let d = tmp("sr3");
    ok(&langevin(
        &[
            "train",
            "--data",
            "digits",
            "--out",
            "sr",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--channels",
            "8,16",
            "--norm-groups",
            "4",
            "--superres",
            "2",
        ],
        &d,
    ));
    let cfg = std::fs::read_to_string(d.join("sr/config.json")).unwrap();
    assert!(
        cfg.contains("\"in_channels\": 2") && cfg.contains("\"superres_scale\": 2"),
        "{cfg}"
    );
    grey_png(&d.join("low.png"), 4, 4, |x, y| (x * 60 + y * 20) as u8);
    ok(&langevin(
        &[
            "upscale", "--model", "sr", "--image", "low.png", "--steps", "3", "--out", "up.png",
        ],
        &d,
    ));
    let up = image::open(d.join("up.png")).unwrap();
    assert_eq!((up.width(), up.height()), (8, 8));
    fails_with(
        &langevin(
            &[
                "upscale",
                "--model",
                "sr",
                "--image",
                "low.png",
                "--zero-shot",
                "--out",
                "u.png",
            ],
            &d,
        ),
        &["SR3", "--zero-shot"],
    );
    fails_with(
        &langevin(
            &[
                "train",
                "--data",
                "digits",
                "--out",
                "bad",
                "--steps",
                "1",
                "--superres",
                "3",
            ],
            &d,
        ),
        &["--superres 3", "8×8"],
    );
}
