//! Fuzzing every loader of user files: config.json, scheduler_config.json, safetensors, .npy,
//! IDX, CSV and PNG folders. Inputs are the checked-in corpus (`tests/fuzz/corpus/`) mutated
//! by a seeded mutator; every result must be `Ok` or `Err`, never a panic (an abort would end
//! the process and fail the test too). `LANGEVIN_FUZZ_ITERS` sets the executions per target
//! (default 300, a few seconds in all); `LANGEVIN_FUZZ_SEED` the seed; `LANGEVIN_FUZZ_CORPUS`
//! another corpus folder; `LANGEVIN_FUZZ_SECS` stops each target after that many seconds
//! (for long local runs). A crashing input is written to the temp dir and named in the failure.
mod fuzz;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::Device;
use langevin::data::images::{load_folder, Channels, LoadOptions, OnError};
use langevin::model::{DataInfo, Diffusion, NetworkConfig, Run, RunConfig};
use langevin::nn::mlp::MlpConfig;
use langevin::scheduler::{Scheduler, SchedulerConfig};
use langevin::train::{TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn iters() -> usize {
    std::env::var("LANGEVIN_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

fn seed() -> u64 {
    std::env::var("LANGEVIN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("langevin-fuzz-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let root = std::env::var_os("LANGEVIN_FUZZ_CORPUS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus"),
        PathBuf::from,
    );
    let dir = root.join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Run `exec` on `iters()` mutations of the corpus; JSON seeds are also mutated value-wise.
/// Returns (executions, how many loaded without error).
fn fuzz(
    target: &str,
    seeds: &[Vec<u8>],
    json: bool,
    exec: &mut dyn FnMut(&[u8]) -> bool,
) -> (usize, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed() ^ target.len() as u64 ^ (target.as_bytes()[0] as u64) << 8,
    );
    let parsed: Vec<Option<serde_json::Value>> = seeds
        .iter()
        .map(|s| json.then(|| serde_json::from_slice(s).ok()).flatten())
        .collect();
    let start = std::time::Instant::now();
    let (mut oks, n) = (0, iters());
    let budget = std::env::var("LANGEVIN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok());
    let mut done = 0;
    for i in 0..n {
        if budget.is_some_and(|b| start.elapsed().as_secs_f64() > b) {
            break;
        }
        done += 1;
        let k = rng.random_range(0..seeds.len());
        let input = match &parsed[k] {
            Some(v) if rng.random::<f64>() < 0.6 => {
                serde_json::to_vec(&fuzz::mutate::mutate_json(v, &mut rng)).unwrap()
            }
            _ if i < seeds.len() => seeds[i].clone(),
            _ => fuzz::mutate::mutate_bytes(&seeds[k], &mut rng),
        };
        match catch_unwind(AssertUnwindSafe(|| exec(&input))) {
            Ok(ok) => oks += ok as usize,
            Err(_) => {
                let path = std::env::temp_dir().join(format!("langevin-fuzz-crash-{target}-{i}"));
                std::fs::write(&path, &input).unwrap();
                panic!("{target}: input {i} panicked; saved to {}", path.display());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {target}: {done} executions in {secs:.0} s, {oks} loaded, 0 crashes, {:.0} exec/s",
        done as f64 / secs
    );
    (done, oks)
}

/// A tiny MLP run folder (config.json, weights, scheduler config, train state).
fn tiny_run(dir: &Path) {
    let run = RunConfig {
        network: NetworkConfig::Mlp(MlpConfig {
            in_dim: 2,
            hidden: 8,
            blocks: 1,
            temb_dim: 4,
        }),
        diffusion: Diffusion::default(),
        data: DataInfo {
            source: "toy:two-moons".into(),
            columns: vec!["x".into(), "y".into()],
            standardizer: Some(langevin::data::Standardizer {
                mean: vec![0.0, 1.0],
                std: vec![1.0, 2.0],
            }),
            ..Default::default()
        },
    };
    Trainer::new(run, TrainConfig::default(), &Device::Cpu)
        .unwrap()
        .save(dir)
        .unwrap();
}

#[test]
fn fuzz_config_json() {
    let dir = scratch("config");
    tiny_run(&dir);
    let mut seeds = corpus("config");
    seeds.push(std::fs::read(dir.join("config.json")).unwrap());
    let path = dir.join("config.json");
    let (_, oks) = fuzz("config", &seeds, true, &mut |b| {
        std::fs::write(&path, b).unwrap();
        let Ok(cfg) = RunConfig::load(&dir) else {
            return false;
        };
        let _ = cfg.sample_shape();
        let _ = cfg
            .diffusion
            .sigmas(5, langevin::model::Spacing::Exponential, (None, None));
        Run::load(&dir, &Device::Cpu).is_ok()
    });
    assert!(oks > 0, "no input loaded: the harness tests nothing");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fuzz_scheduler_config_json() {
    let seeds = corpus("scheduler");
    let (_, oks) = fuzz("scheduler", &seeds, true, &mut |b| {
        let Ok(text) = std::str::from_utf8(b) else {
            return false;
        };
        let Ok(cfg) = SchedulerConfig::from_json_str(text) else {
            return false;
        };
        let _ = Diffusion::from_scheduler_config(&cfg);
        let Ok(mut s) = Scheduler::new(cfg) else {
            return false;
        };
        s.set_timesteps(1).is_ok() & s.set_timesteps(7).is_ok()
    });
    assert!(oks > 0);
}

#[test]
fn fuzz_safetensors() {
    let dir = scratch("safetensors");
    let mut seeds = corpus("safetensors");
    let run = scratch("safetensors-run");
    tiny_run(&run);
    seeds.push(std::fs::read(run.join("train_state.safetensors")).unwrap());
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let (done, oks) = fuzz("safetensors", &seeds, false, &mut |b| {
        std::fs::write(&path, b).unwrap();
        let _ = langevin::train::checkpoint::recorded_step(&path);
        let _ = langevin::nn::unet::folder::read_unet_weights(&dir, &Device::Cpu);
        langevin::model::run::load_tensors(&path, &Device::Cpu).is_ok()
    });
    // A mutated train state must never resume into a run that panics later.
    let state = run.join("train_state.safetensors");
    let good = std::fs::read(&state).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    for _ in 0..done / 10 {
        std::fs::write(&state, fuzz::mutate::mutate_bytes(&good, &mut rng)).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            Trainer::resume(&run, None, &Device::Cpu).map(|_| ())
        }));
        assert!(r.is_ok(), "resume panicked on a mutated train state");
    }
    assert!(oks > 0);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&run).unwrap();
}

#[test]
fn fuzz_npy() {
    let dir = scratch("npy");
    let path = dir.join("x.npy");
    let (_, oks) = fuzz("npy", &corpus("npy"), false, &mut |b| {
        std::fs::write(&path, b).unwrap();
        let a = langevin::data::npy::load_npy(&path).is_ok();
        langevin::data::npy::load_npy_f32(&path).is_ok() | a
    });
    assert!(oks > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fuzz_idx() {
    let (_, oks) = fuzz("idx", &corpus("idx"), false, &mut |b| {
        langevin::data::images::idx::parse_idx(b, Path::new("x.idx")).is_ok()
    });
    assert!(oks > 0);
}

#[test]
fn fuzz_csv() {
    let dir = scratch("csv");
    let path = dir.join("x.csv");
    let (_, oks) = fuzz("csv", &corpus("csv"), false, &mut |b| {
        std::fs::write(&path, b).unwrap();
        langevin::data::load_table(&path).is_ok()
    });
    assert!(oks > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fuzz_png_folder() {
    let dir = scratch("png");
    let seeds = corpus("png");
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("a/good.png"), &seeds[0]).unwrap();
    let path = dir.join("b/x.png");
    let mut strict = false;
    let (_, oks) = fuzz("png", &seeds, false, &mut |b| {
        std::fs::write(&path, b).unwrap();
        strict = !strict;
        let opts = |size| LoadOptions {
            size,
            channels: if strict {
                Channels::Grey
            } else {
                Channels::Rgb
            },
            on_error: if strict { OnError::Stop } else { OnError::Skip },
        };
        let a = load_folder(&dir, opts(None)).is_ok();
        load_folder(&dir, opts(Some((3, 5)))).is_ok() | a
    });
    assert!(oks > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
