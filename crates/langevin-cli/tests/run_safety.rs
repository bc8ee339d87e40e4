//! A user's work survives: signals write a checkpoint, a second writer is refused, a killed
//! writer's lock and temp files do not block the next run, a mixed checkpoint is repaired, a
//! diverging run keeps its last checkpoint, and relative data paths resume from anywhere.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fails_with, langevin, ok, tmp};

const TINY: [&str; 10] = [
    "--hidden",
    "16",
    "--blocks",
    "1",
    "--batch-size",
    "16",
    "--temb-dim",
    "8",
    "--n-toy",
    "200",
];

fn spawn(args: &[&str], dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_langevin"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A long training into `out`, returned once it holds the run folder's lock (training started).
fn start_long_training(dir: &Path, out: &str) -> Child {
    let args = [
        &[
            "train",
            "--data",
            "toy:two-moons",
            "--out",
            out,
            "--steps",
            "10000000",
            "--checkpoint-every",
            "0",
        ][..],
        &TINY,
    ]
    .concat();
    let child = spawn(&args, dir);
    let lock = dir.join(out).join(".langevin.lock");
    let t0 = Instant::now();
    while !lock.exists()
        || std::fs::read_to_string(&lock).unwrap_or_default().trim() != child.id().to_string()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// A safetensors file as (header JSON, tensor bytes): equal files hold the same tensors and
/// metadata (the header's key order is not fixed).
fn contents(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&b[8..8 + n]).unwrap(),
        b[8 + n..].to_vec(),
    )
}

/// The step recorded in a safetensors file's metadata.
fn step_of(path: &Path) -> u64 {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    h["__metadata__"]["step"].as_str().unwrap().parse().unwrap()
}

#[test]
fn sigterm_and_sigint_write_a_checkpoint_and_resume_continues() {
    let d = tmp("signal");
    for (sig, code, name) in [
        (libc::SIGTERM, 143, "SIGTERM"),
        (libc::SIGINT, 130, "SIGINT"),
    ] {
        let out = format!("run-{code}");
        let child = start_long_training(&d, &out);
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{err}");
        assert!(
            err.contains(&format!("{name}")) && err.contains("continue with --resume"),
            "{err}"
        );
        let state = d.join(&out).join("train_state.safetensors");
        let step = step_of(&state);
        assert!(step >= 1, "no step saved");
        assert_eq!(
            step_of(&d.join(&out).join("diffusion_pytorch_model.safetensors")),
            step
        );
        let more = (step + 2).to_string();
        let r = langevin(&["train", "--out", &out, "--resume", "--steps", &more], &d);
        ok(&r);
        assert!(String::from_utf8_lossy(&r.stderr).contains(&format!("at step {step} of {more}")));
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_second_writer_is_refused_and_a_killed_writers_lock_and_temps_are_cleared() {
    let d = tmp("lock");
    let first = start_long_training(&d, "run");
    // The folder holds only the lock, so the second run passes the folder check and is stopped
    // by the lock, naming the holder.
    let o = langevin(
        &[
            &[
                "train",
                "--data",
                "toy:two-moons",
                "--out",
                "run",
                "--steps",
                "5",
            ][..],
            &TINY,
        ]
        .concat(),
        &d,
    );
    fails_with(
        &o,
        &[
            "run",
            "another langevin process",
            &format!("pid {}", first.id()),
        ],
    );
    // kill -9: no checkpoint, but the kernel drops the lock; a temp file of a killed save is
    // cleaned by the next writer.
    signal(&first, libc::SIGKILL);
    first.wait_with_output().unwrap();
    std::fs::write(
        d.join("run/.train_state.safetensors.tmp-4242"),
        vec![0u8; 1000],
    )
    .unwrap();
    let o = langevin(
        &[
            &[
                "train",
                "--data",
                "toy:two-moons",
                "--out",
                "run",
                "--steps",
                "3",
            ][..],
            &TINY,
        ]
        .concat(),
        &d,
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains(".train_state.safetensors.tmp-4242"));
    assert!(!d.join("run/.train_state.safetensors.tmp-4242").exists());
    assert_eq!(step_of(&d.join("run/train_state.safetensors")), 3);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_unwritable_out_fails_before_training() {
    let d = tmp("unwritable");
    std::fs::write(d.join("file"), "x").unwrap();
    let t0 = Instant::now();
    let o = langevin(
        &[
            &[
                "train",
                "--data",
                "toy:two-moons",
                "--out",
                "file/run",
                "--steps",
                "100000000",
            ][..],
            &TINY,
        ]
        .concat(),
        &d,
    );
    fails_with(&o, &["file/run"]);
    assert!(t0.elapsed() < Duration::from_secs(30), "it trained first");
    assert_eq!(std::fs::read(d.join("file")).unwrap(), b"x");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A kill between the train state and the weights file leaves them at different steps; resume
/// rewrites the weights from the checkpoint and continues exactly as an uninterrupted run.
#[test]
fn a_mixed_checkpoint_is_repaired_and_resume_matches_an_uninterrupted_run() {
    let d = tmp("mixed");
    let train = |out: &'static str, steps: &'static str| -> Vec<&'static str> {
        [
            &[
                "train",
                "--data",
                "toy:two-moons",
                "--out",
                out,
                "--steps",
                steps,
            ][..],
            &TINY,
        ]
        .concat()
    };
    for out in ["straight", "broken"] {
        ok(&langevin(&train(out, "4"), &d));
        ok(&langevin(
            &["train", "--out", out, "--resume", "--steps", "8"],
            &d,
        ));
    }
    ok(&langevin(
        &["train", "--out", "straight", "--resume", "--steps", "12"],
        &d,
    ));
    // As if a save was cut between the two renames: the weights file holds another step
    // (here the uninterrupted run's step 12) than the train state (step 8).
    let w = "diffusion_pytorch_model.safetensors";
    std::fs::copy(d.join("straight").join(w), d.join("broken").join(w)).unwrap();
    let o = langevin(
        &["train", "--out", "broken", "--resume", "--steps", "12"],
        &d,
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("held step 12 but the checkpoint is at step 8"),
        "{err}"
    );
    for f in [w, "train_state.safetensors"] {
        assert!(
            contents(&d.join("straight").join(f)) == contents(&d.join("broken").join(f)),
            "{f} differs from the uninterrupted run"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_diverging_run_stops_with_a_diagnosis_and_keeps_its_last_checkpoint() {
    let d = tmp("nan");
    let o = langevin(
        &[
            &[
                "train",
                "--data",
                "toy:two-moons",
                "--out",
                "run",
                "--steps",
                "50",
                "--lr",
                "1e30",
            ][..],
            &[
                "--grad-clip",
                "0",
                "--warmup",
                "0",
                "--checkpoint-every",
                "1",
            ],
            &TINY,
        ]
        .concat(),
        &d,
    );
    fails_with(
        &o,
        &[
            "training diverged",
            "lower --lr",
            "keeps its last checkpoint",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let state = d.join("run/train_state.safetensors");
    let step = step_of(&state);
    assert!(err.contains(&format!("(step {step})")), "{err}");
    assert!(err.contains(&format!("at step {}", step + 1)), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn overwrite_replaces_a_run_and_relative_data_resumes_from_another_directory() {
    let d = tmp("paths");
    std::fs::create_dir_all(d.join("work")).unwrap();
    let rows: String = (0..64).map(|i| format!("{},{}\n", i % 7, i % 5)).collect();
    std::fs::write(d.join("work/t.csv"), format!("a,b\n{rows}")).unwrap();
    let train = [
        &["train", "--data", "t.csv", "--out", "run", "--steps", "3"][..],
        &TINY,
    ]
    .concat();
    ok(&langevin(&train, &d.join("work")));
    let cfg = std::fs::read_to_string(d.join("work/run/config.json")).unwrap();
    assert!(
        cfg.contains(&format!(
            "{}",
            d.join("work/t.csv").canonicalize().unwrap().display()
        )),
        "{cfg}"
    );
    // From the parent directory: the stored absolute path is found.
    ok(&langevin(
        &["train", "--out", "work/run", "--resume", "--steps", "5"],
        &d,
    ));
    assert_eq!(step_of(&d.join("work/run/train_state.safetensors")), 5);
    // --overwrite starts again at step 0.
    ok(&langevin(
        &[&train[..], &["--overwrite"]].concat(),
        &d.join("work"),
    ));
    assert_eq!(step_of(&d.join("work/run/train_state.safetensors")), 3);
    std::fs::remove_dir_all(&d).unwrap();
}
