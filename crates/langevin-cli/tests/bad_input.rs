//! The bad-input suite: each case runs the binary on a prepared folder (a trained run, data
//! files, a file `augment` did not write, broken run folders) and asserts the exit code, that
//! the one-line error names the field or file and what was expected, and that every file that
//! existed before is byte-identical afterwards (and no file appeared).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;
use common::{fails_with, langevin, ok, tmp};

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

const TINY: [&str; 8] = [
    "--hidden",
    "16",
    "--blocks",
    "1",
    "--batch-size",
    "16",
    "--temb-dim",
    "8",
];

/// The folder every case runs in.
fn fixture() -> common::Tmp {
    let d = tmp("bad-input");
    ok(&langevin(
        &[
            &[
                "train",
                "--data",
                "toy:two-moons",
                "--out",
                "run",
                "--steps",
                "3",
                "--n-toy",
                "200",
            ][..],
            &TINY,
        ]
        .concat(),
        &d,
    ));
    std::fs::write(d.join("data.csv"), "a,b\n1,2\n3,4\n5,7\n").unwrap();
    std::fs::write(d.join("bad.csv"), "a,b\n1,2\n3,oops\n").unwrap();
    std::fs::write(d.join("existing.csv"), "x,y\n1,2\n").unwrap();
    std::fs::create_dir_all(d.join("notes")).unwrap();
    std::fs::write(d.join("notes/todo.txt"), "keep me").unwrap();
    // A run whose column statistics have fewer entries than columns.
    copy_dir(&d.join("run"), &d.join("badstd"));
    let cfg = std::fs::read_to_string(d.join("badstd/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["langevin"]["data"]["standardizer"]["mean"] = serde_json::json!([0.0]);
    std::fs::write(
        d.join("badstd/config.json"),
        serde_json::to_string(&v).unwrap(),
    )
    .unwrap();
    // A run with a config.json cut short, and one with truncated weights.
    copy_dir(&d.join("run"), &d.join("cut"));
    std::fs::write(d.join("cut/config.json"), &cfg[..cfg.len() / 2]).unwrap();
    copy_dir(&d.join("run"), &d.join("badweights"));
    let w = std::fs::read(d.join("run/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(
        d.join("badweights/diffusion_pytorch_model.safetensors"),
        &w[..w.len() / 3],
    )
    .unwrap();
    // One big image: at the default batch size (512) its training needs far more memory than
    // any machine has.
    std::fs::create_dir_all(d.join("big/cls")).unwrap();
    image::GrayImage::from_pixel(800, 500, image::Luma([90u8]))
        .save(d.join("big/cls/a.png"))
        .unwrap();
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// (arguments, words the error line must hold).
fn cases() -> Vec<(Vec<&'static str>, Vec<&'static str>)> {
    let train = |extra: &[&'static str]| -> Vec<&'static str> {
        [
            &["train", "--data", "toy:two-moons", "--out", "new"][..],
            extra,
        ]
        .concat()
    };
    let sample = |extra: &[&'static str]| -> Vec<&'static str> {
        [&["sample", "--model", "run", "--out", "s.csv"][..], extra].concat()
    };
    vec![
        // Numeric arguments, checked at parse time with the allowed range.
        (train(&["--lr", "-1"]), vec!["--lr", "> 0"]),
        (train(&["--lr", "nan"]), vec!["--lr", "finite"]),
        (train(&["--ema-decay", "2"]), vec!["--ema-decay", "[0, 1)"]),
        (train(&["--batch-size", "0"]), vec!["--batch-size", "≥ 1"]),
        (train(&["--steps", "0"]), vec!["--steps", "≥ 1"]),
        (train(&["--n-toy", "0"]), vec!["--n-toy", "≥ 1"]),
        (
            train(&["--weight-decay", "-0.1"]),
            vec!["--weight-decay", "≥ 0"],
        ),
        (train(&["--grad-clip", "-1"]), vec!["--grad-clip", "≥ 0"]),
        (train(&["--time-limit", "0"]), vec!["--time-limit", "> 0"]),
        (train(&["--hidden", "0"]), vec!["--hidden", "≥ 1"]),
        (train(&["--timesteps", "0"]), vec!["--timesteps", "≥ 1"]),
        (train(&["--beta", "1.5"]), vec!["--beta", "(0, 1)"]),
        (
            train(&["--label-dropout", "1.5"]),
            vec!["--label-dropout", "[0, 1]"],
        ),
        (train(&["--min-snr", "0"]), vec!["--min-snr", "> 0"]),
        (train(&["--superres", "1"]), vec!["--superres", "≥ 2"]),
        (train(&["--channels", "32,0"]), vec!["--channels", "≥ 1"]),
        (
            train(&["--warmup", "-5"]),
            vec!["--warmup", "whole number ≥ 0"],
        ),
        (sample(&["--n", "0"]), vec!["--n", "≥ 1"]),
        (sample(&["--batch-size", "0"]), vec!["--batch-size", "≥ 1"]),
        (sample(&["--steps", "0"]), vec!["--steps", "1..=100000"]),
        (
            sample(&["--langevin-steps", "0"]),
            vec!["--langevin-steps", "1..=100000"],
        ),
        (sample(&["--eta", "-1"]), vec!["--eta", "≥ 0"]),
        (sample(&["--guidance", "-2"]), vec!["--guidance", "≥ 0"]),
        (sample(&["--sigma-min", "0"]), vec!["--sigma-min", "> 0"]),
        (sample(&["--n", "-3"]), vec!["--n", "not a whole number"]),
        (
            vec!["eval", "--model", "run", "--n", "1"],
            vec!["--n", "≥ 2"],
        ),
        (
            vec!["eval", "--model", "run", "--metric", "nll", "--n", "0"],
            vec!["--n", "≥ 2"],
        ),
        (
            vec!["eval", "--model", "run", "--nfe", "0"],
            vec!["--nfe", "≥ 1"],
        ),
        (
            vec!["demo", "--n", "1", "--out", "demo"],
            vec!["--n", "≥ 2"],
        ),
        (
            vec![
                "img2img",
                "--model",
                "run",
                "--image",
                "x.png",
                "--out",
                "o.png",
                "--strength",
                "2",
            ],
            vec!["--strength", "[0, 1]"],
        ),
        (
            vec![
                "inpaint",
                "--model",
                "run",
                "--image",
                "x.png",
                "--mask",
                "m.png",
                "--out",
                "o.png",
                "--resample",
                "0",
            ],
            vec!["--resample", "≥ 1"],
        ),
        (
            vec!["augment", "--model", "run", "--n", "0", "--out", "aug.csv"],
            vec!["--n", "≥ 1"],
        ),
        (
            vec!["fid", "--a", "digits", "--b", "digits", "--n", "1"],
            vec!["--n", "≥ 2"],
        ),
        (
            vec!["schedule", "--steps", "0"],
            vec!["--steps", "1..=100000"],
        ),
        // Run folders are never replaced or reused by accident.
        (
            vec![
                "train",
                "--data",
                "toy:two-moons",
                "--out",
                "run",
                "--steps",
                "5",
            ],
            vec![
                "run",
                "already holds a run at step 3",
                "--resume",
                "--overwrite",
            ],
        ),
        (
            vec!["train", "--out", "run", "--resume", "--steps", "2"],
            vec!["--steps 2", "already at step 3"],
        ),
        (
            vec!["train", "--out", "run", "--resume", "--steps", "3"],
            vec!["--steps 3", "already at step 3"],
        ),
        (
            vec![
                "train",
                "--data",
                "toy:two-moons",
                "--out",
                "data.csv",
                "--steps",
                "2",
            ],
            vec!["data.csv", "not a folder"],
        ),
        (
            vec![
                "train",
                "--data",
                "toy:two-moons",
                "--out",
                "notes",
                "--steps",
                "2",
            ],
            vec!["notes", "not empty"],
        ),
        (
            vec!["train", "--out", "nothing", "--resume"],
            vec!["nothing", "no checkpoint to resume"],
        ),
        (
            vec![
                "train",
                "--data",
                "toy:two-moons",
                "--out",
                "x",
                "--resume",
                "--overwrite",
            ],
            vec!["--overwrite", "--resume"],
        ),
        // Files.
        (
            vec!["train", "--data", "missing.csv", "--out", "new"],
            vec!["missing.csv", "No such file"],
        ),
        (
            vec!["train", "--data", "bad.csv", "--out", "new"],
            vec!["bad.csv", "row 3", "column 2"],
        ),
        (
            vec![
                "augment",
                "--model",
                "run",
                "--n",
                "2",
                "--out",
                "existing.csv",
            ],
            vec!["existing.csv", "not written by"],
        ),
        (
            vec!["sample", "--model", "badstd", "--out", "s.csv"],
            vec!["config.json", "standardizer", "expected 2"],
        ),
        (
            vec!["sample", "--model", "cut", "--out", "s.csv"],
            vec!["cut/config.json", "invalid JSON"],
        ),
        (
            vec!["sample", "--model", "badweights", "--out", "s.csv"],
            vec!["diffusion_pytorch_model.safetensors"],
        ),
        (
            sample(&["--class", "3"]),
            vec!["--class 3", "not class-conditional"],
        ),
        // Sizes that would not fit in memory are refused before allocating.
        (
            vec!["train", "--data", "big", "--out", "new", "--steps", "2"],
            vec!["training batch of 512", "lower --batch-size"],
        ),
        (
            sample(&["--n", "1000000000000000"]),
            vec!["drawing 1000000000000000 samples", "lower --n"],
        ),
        (
            train(&["--n-toy", "1000000000000000"]),
            vec!["--n-toy 1000000000000000", "lower --n-toy"],
        ),
    ]
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let d = fixture();
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let before = snapshot(&d);
    for (args, needles) in &cases {
        eprintln!("case {args:?}");
        let o = langevin(args, &d);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        fails_with(&o, needles);
        let after = snapshot(&d);
        assert!(
            after == before,
            "{args:?} changed the folder: {:?}",
            after
                .keys()
                .filter(|k| before.get(*k) != after.get(*k))
                .collect::<Vec<_>>()
        );
    }
    // An OS error is printed once, after the file it concerns.
    let o = langevin(&["train", "--data", "missing.csv", "--out", "new"], &d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
