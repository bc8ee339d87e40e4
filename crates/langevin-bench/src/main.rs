//! `langevin-bench`: langevin against PyTorch on the same workloads, weights, inputs and
//! thread count, in one run; prints Markdown tables of times, ratios and GFLOP/s.
//!
//! ```text
//! cargo run --release -p langevin-bench -- --threads 2 --python .venv-bench/bin/python
//! ```
//! See `docs/benchmarks.md` for results and `scripts/bench.sh` for the PyTorch install.
mod gpu_checks;
mod gpu_nhwc_checks;
mod gpu_train_checks;
mod kernels;
mod parity;
mod steal;
mod torch;
mod workloads;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use langevin::kernels::conv;
use langevin::nn::mlp::MlpConfig;
use langevin::nn::unet::UNet2DConfig;

use workloads::{prepare, Arch, Mode, Workload};

#[derive(Parser)]
#[command(about = "langevin against PyTorch on the same workloads, in one run")]
struct Args {
    /// Threads for both sides (rayon / torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed repetitions per workload (median reported); heavy workloads use at most 3.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Python with torch + diffusers + safetensors for the reference side.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the PyTorch reference.
    #[arg(long)]
    no_torch: bool,
    /// Time each workload in this many rounds, langevin and PyTorch in alternation (PyTorch's
    /// process kept running): the speed column is the median of the rounds' ratios, with
    /// their range, robust to a machine whose speed drifts between minutes. 1: every
    /// langevin workload, then every PyTorch one.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// With --rounds: a round during which the hypervisor stole more than this share of the
    /// CPU (percent, from /proc/stat) is timed again, up to three times as many rounds in all;
    /// the speed column then uses the rounds under it (or the least stolen ones).
    #[arg(long, default_value_t = 3.0)]
    max_steal: f64,
    /// Also time candle's own ops (the own kernels switched off: convolution, group norm, the
    /// fused MLP) on the residual-block and MLP workloads.
    #[arg(long)]
    candle: bool,
    /// Only workloads whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// With --only: the name must equal it.
    #[arg(long)]
    exact: bool,
    /// Tiny shapes, one repetition: a smoke test of the harness.
    #[arg(long)]
    quick: bool,
    /// Keep the weights and inputs here (default: a temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// cpu, cuda or cuda:N (a CUDA build: scripts/build-cuda.sh); PyTorch uses the same GPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The GPU workload set: ddpm-cifar10-32 UNet forward b256 and training b128 in f32 and
    /// bf16, the residual blocks in f32, and the bf16 matmul rate.
    #[arg(long)]
    gpu: bool,
    /// Also time the PyTorch side with torch.compile (GPU set).
    #[arg(long)]
    compile: bool,
    /// Instead of timing: run the diffusers parity fixtures on --device in f32 and bf16.
    #[arg(long)]
    parity: bool,
    /// The fixtures folder for --parity (the test suite's).
    #[arg(long, default_value = "crates/langevin/tests/fixtures")]
    fixtures: std::path::PathBuf,
}

fn unet(json: &str) -> Result<UNet2DConfig> {
    Ok(UNet2DConfig::from_json(
        json,
        std::path::Path::new("bench"),
    )?)
}

/// google/ddpm-cifar10-32's UNet2DModel configuration (35.7M parameters).
const CIFAR10: &str = r#"{"sample_size": 32, "in_channels": 3, "out_channels": 3,
 "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
 "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
 "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
 "attention_head_dim": null, "norm_num_groups": 32, "norm_eps": 1e-6, "act_fn": "silu",
 "time_embedding_type": "positional", "flip_sin_to_cos": false, "freq_shift": 1,
 "downsample_padding": 0, "center_input_sample": false}"#;

/// The same UNet with diffusers' default `attention_head_dim = 8` (32 heads of 8 channels at
/// 256 channels): the multi-head form most diffusers UNet2DModel configurations use.
const CIFAR10_MH: &str = r#"{"sample_size": 32, "in_channels": 3, "out_channels": 3,
 "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
 "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
 "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
 "attention_head_dim": 8, "norm_num_groups": 32, "norm_eps": 1e-6, "act_fn": "silu",
 "time_embedding_type": "positional", "flip_sin_to_cos": false, "freq_shift": 1,
 "downsample_padding": 0, "center_input_sample": false}"#;

/// The README's Fashion-MNIST model (`langevin train --data fashion-mnist` defaults).
const SMALL: &str = r#"{"sample_size": 32, "in_channels": 1, "out_channels": 1,
 "block_out_channels": [32, 64, 64], "layers_per_block": 1, "norm_num_groups": 8,
 "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
 "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}"#;

fn gpu_workloads(a: &Args) -> Result<Vec<Workload>> {
    use candle_core::DType::{BF16, F32};
    let w = |model: &str, arch: Arch, mode, batch, dtype| Workload {
        model: model.into(),
        arch,
        mode,
        batch,
        reps: a.reps,
        dtype,
    };
    let res = Arch::ResBlocks {
        blocks: 4,
        ch: 64,
        groups: 32,
        hw: 32,
    };
    let c = || -> Result<Arch> { Ok(Arch::Unet(Box::new(unet(CIFAR10)?))) };
    let mut v = vec![
        w("resblocks", res.clone(), Mode::Forward, 64, F32),
        w("resblocks", res, Mode::Train, 64, F32),
        w("unet-cifar10", c()?, Mode::Forward, 256, F32),
        w("unet-cifar10", c()?, Mode::Forward, 256, BF16),
        w(
            "unet-cifar10-heads8",
            Arch::Unet(Box::new(unet(CIFAR10_MH)?)),
            Mode::Forward,
            256,
            BF16,
        ),
        w("unet-cifar10", c()?, Mode::Train, 128, F32),
        w("unet-cifar10", c()?, Mode::Train, 128, BF16),
        w(
            "unet-small",
            Arch::Unet(Box::new(unet(SMALL)?)),
            Mode::Forward,
            256,
            F32,
        ),
        w(
            "unet-small",
            Arch::Unet(Box::new(unet(SMALL)?)),
            Mode::Forward,
            256,
            BF16,
        ),
        w(
            "unet-small",
            Arch::Unet(Box::new(unet(SMALL)?)),
            Mode::Train,
            128,
            F32,
        ),
        w(
            "unet-small",
            Arch::Unet(Box::new(unet(SMALL)?)),
            Mode::Train,
            128,
            BF16,
        ),
    ];
    v.retain(|w| {
        a.only
            .as_ref()
            .is_none_or(|o| w.name().contains(o.as_str()) && (!a.exact || w.name() == *o))
    });
    Ok(v)
}

fn workloads(a: &Args) -> Result<Vec<Workload>> {
    if a.gpu {
        return gpu_workloads(a);
    }
    let q = a.quick;
    let heavy = a.reps.min(3);
    let w = |model: &str, arch: Arch, mode, batch, reps| Workload {
        model: model.into(),
        arch,
        mode,
        batch,
        reps,
        dtype: candle_core::DType::F32,
    };
    let res = Arch::ResBlocks {
        blocks: 4,
        ch: if q { 32 } else { 64 },
        groups: 32,
        hw: if q { 8 } else { 32 },
    };
    let mut v = vec![
        w(
            "resblocks",
            res.clone(),
            Mode::Forward,
            if q { 4 } else { 64 },
            a.reps,
        ),
        w(
            "resblocks",
            res,
            Mode::Train,
            if q { 4 } else { 64 },
            a.reps,
        ),
    ];
    let mut cfgs = vec![("unet-small", unet(SMALL)?)];
    if !q {
        cfgs.insert(0, ("unet-cifar10", unet(CIFAR10)?));
        // diffusers' default multi-head attention (issue 17): sampling at batch 16.
        v.push(w(
            "unet-cifar10-mh",
            Arch::Unet(Box::new(unet(CIFAR10_MH)?)),
            Mode::Forward,
            16,
            heavy,
        ));
    }
    for (name, cfg) in cfgs {
        let big = name == "unet-cifar10";
        for b in if q { vec![1, 2] } else { vec![1, 16, 64] } {
            let reps = if big && b > 1 { heavy } else { a.reps };
            v.push(w(
                name,
                Arch::Unet(Box::new(cfg.clone())),
                Mode::Forward,
                b,
                reps,
            ));
        }
        let reps = if big { heavy } else { a.reps };
        v.push(w(
            name,
            Arch::Unet(Box::new(cfg)),
            Mode::Train,
            if q { 2 } else { 32 },
            reps,
        ));
    }
    let mlp = Arch::Mlp(MlpConfig::default());
    v.push(w(
        "mlp",
        mlp.clone(),
        Mode::Forward,
        if q { 64 } else { 4096 },
        a.reps,
    ));
    v.push(w(
        "mlp",
        mlp,
        Mode::Train,
        if q { 64 } else { 1024 },
        a.reps,
    ));
    // The network and batch of `langevin demo` (3 blocks of 128, batch 512).
    let demo = MlpConfig {
        in_dim: 2,
        hidden: 128,
        blocks: 3,
        temb_dim: 64,
    };
    v.push(w(
        "mlp-demo",
        Arch::Mlp(demo),
        Mode::Train,
        if q { 64 } else { 512 },
        a.reps,
    ));
    Ok(v.into_iter()
        .filter(|w| {
            a.only
                .as_ref()
                .is_none_or(|o| w.name().contains(o.as_str()) && (!a.exact || w.name() == *o))
        })
        .collect())
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

struct Row {
    name: String,
    batch: usize,
    ours: f64,
    candle: Option<f64>,
    torch: Option<f64>,
    diff: Option<f64>,
    /// FLOPs of one call (PyTorch's FLOP counter), for achieved TFLOP/s.
    gflop: Option<f64>,
    /// Further PyTorch variants: (label, ms).
    extra: Vec<(String, f64)>,
    /// PyTorch / langevin per round of `--rounds` (empty with one round).
    ratios: Vec<f64>,
    /// Percent of the CPU time stolen by the hypervisor while the row was timed.
    stolen: Option<f64>,
}

fn run(a: Args) -> Result<()> {
    if a.parity {
        return parity::run(&a.fixtures, &langevin::compute::device(&a.device)?);
    }
    // Before any pool exists: the thread pools as the CLI and the library's users get them
    // (rayon's global pool for ours, candle's and gemm's work; candle's elementwise pool).
    langevin::threads::setup(Some(a.threads));
    langevin::kernels::tune_allocator();
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let warmup = 1;
    let reps = if a.quick { 1 } else { a.reps };
    println!(
        "langevin-bench: {} threads on {}, {} cores visible\n",
        a.threads,
        cpu_name(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut rows = Vec::new();
    let mut jobs = Vec::new();
    let dev = langevin::compute::device(&a.device)?;
    let mut server = match (a.rounds > 1, a.no_torch) {
        (true, false) => Some(torch::Server::start(&a.python, a.threads, warmup, reps)?),
        _ => None,
    };
    for w in workloads(&a)? {
        eprintln!("langevin: {}", w.name());
        let mut p = prepare(&w, &dir, 0, &dev)?;
        let t0 = steal::CpuTimes::now();
        let ours = p.time(warmup, if a.quick { 1 } else { w.reps })?;
        if let Some(server) = server.as_mut() {
            // Rounds in alternation: (langevin, PyTorch) pairs minutes apart at most. A round
            // under more steal than --max-steal is timed again (the VM's stolen minutes moved
            // ratios by up to 2×), within three times the rounds asked for.
            let (mut pairs, mut round_steal) = (vec![], vec![]);
            let mut last = None;
            let mut start = t0;
            while steal::round_again(&round_steal, a.rounds, a.max_steal, 3 * a.rounds) {
                let o = match pairs.len() {
                    0 => ours,
                    _ => {
                        start = steal::CpuTimes::now();
                        p.time(warmup, if a.quick { 1 } else { w.reps })?
                    }
                };
                // Each side starts on a quiet machine: PyTorch's OpenMP threads spin for a
                // while after its job, and langevin's kernels would see a busy machine and give
                // cores back (`threads::adapt`); likewise the other way round.
                settle();
                let r = server.job(&p.job)?;
                settle();
                pairs.push((o, r.ms));
                round_steal.push(steal::since(start).unwrap_or(0.0));
                last = Some(r);
            }
            let kept = steal::kept_rounds(&round_steal, a.rounds, a.max_steal);
            if pairs.len() > a.rounds {
                eprintln!(
                    "  {} rounds timed for {} (stolen: {}); kept {:?}",
                    pairs.len(),
                    a.rounds,
                    round_steal
                        .iter()
                        .map(|s| format!("{s:.0}%"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    kept
                );
            }
            let pairs: Vec<_> = kept.iter().map(|&i| pairs[i]).collect();
            let kept_steal = kept.iter().map(|&i| round_steal[i]).fold(0.0, f64::max);
            let r = last.context("no rounds")?;
            let med = |v: Vec<f64>| workloads::median(&v);
            let ratios: Vec<f64> = pairs.iter().filter_map(|&(o, t)| Some(t? / o)).collect();
            rows.push(Row {
                name: w.name(),
                batch: w.batch,
                ours: med(pairs.iter().map(|p| p.0).collect()),
                candle: None,
                torch: r
                    .ms
                    .map(|_| med(pairs.iter().filter_map(|p| p.1).collect())),
                diff: r.max_rel_diff,
                gflop: r.gflop,
                extra: r.extra,
                ratios,
                stolen: t0.map(|_| kept_steal),
            });
            continue;
        }
        let candle = if a.candle && (w.model == "resblocks" || w.model.starts_with("mlp")) {
            conv::set_enabled(false);
            let t = p.time(
                0,
                if w.model.starts_with("mlp") {
                    w.reps
                } else {
                    1
                },
            );
            conv::set_enabled(true);
            Some(t?)
        } else {
            None
        };
        jobs.push(p.job);
        rows.push(Row {
            name: w.name(),
            batch: w.batch,
            ours,
            candle,
            torch: None,
            diff: None,
            gflop: None,
            extra: vec![],
            ratios: vec![],
            stolen: steal::since(t0),
        });
    }
    let torch_version = if let Some(server) = &server {
        Some(server.version.clone())
    } else if a.no_torch {
        println!("PyTorch reference skipped (--no-torch).\n");
        None
    } else {
        match torch::run(&a.python, &dir, a.threads, warmup, reps, &jobs, a.compile) {
            Ok((version, results)) => {
                for (row, r) in rows.iter_mut().zip(results) {
                    row.torch = r.ms;
                    row.diff = r.max_rel_diff;
                    row.gflop = r.gflop;
                    row.extra = r.extra;
                }
                Some(version)
            }
            Err(e) => {
                println!("PyTorch reference skipped: {e:#}\n");
                None
            }
        }
    };
    if let Some(v) = &torch_version {
        println!(
            "PyTorch {v}, same weights and inputs, {} threads.\n",
            a.threads
        );
    }
    print_table(&rows, a.candle);
    if !dev.is_cpu() {
        return gpu_tables(&rows, reps, &dev);
    }

    let mm = kernels::matmul(reps, 1024, candle_core::DType::F32, &dev)?;
    let (cb, cc, chw) = if a.quick { (4, 16, 8) } else { (64, 64, 32) };
    let convs = kernels::conv3x3(cb, cc, cc, chw, reps.min(3), a.candle)?;
    let peak = mm.gflop / mm.ms * 1e3;
    println!("\n| kernel | ms | GFLOP/s | of matmul rate | candle's op, ms |");
    println!("|---|---:|---:|---:|---:|");
    for k in std::iter::once(&mm).chain(&convs) {
        let rate = k.gflop / k.ms * 1e3;
        println!(
            "| {} | {} | {:.1} | {:.0}% | {} |",
            k.op,
            ms(k.ms),
            rate,
            100.0 * rate / peak,
            k.candle_ms.map_or("–".into(), |c| format!("{c:.1}"))
        );
    }
    Ok(())
}

/// The GPU extras: PyTorch's other variants beside ours, and achieved TFLOP/s against the
/// bf16 matmul rate measured in the same run.
fn gpu_tables(rows: &[Row], reps: usize, dev: &candle_core::Device) -> Result<()> {
    let mm = kernels::matmul(reps.max(10), 8192, candle_core::DType::BF16, dev)?;
    let peak = mm.gflop / mm.ms; // TFLOP/s
    let mm32 = kernels::matmul(reps.max(10), 8192, candle_core::DType::F32, dev)?;
    println!(
        "\nbf16 matmul 8192³ (cuBLAS through candle): {:.1} TFLOP/s; f32: {:.1} TFLOP/s\n",
        peak,
        mm32.gflop / mm32.ms
    );
    println!("| workload | variant | ms | items/s | TFLOP/s | of bf16 matmul rate | langevin speed vs this |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let mut variants = vec![("langevin".to_string(), r.ours)];
        if let Some(t) = r.torch {
            variants.push(("PyTorch eager".into(), t));
        }
        variants.extend(r.extra.iter().cloned());
        for (label, ms) in variants {
            let tf = r.gflop.map(|g| g / ms);
            println!(
                "| {} | {label} | {ms:.2} | {:.0} | {} | {} | {:.2}× |",
                r.name,
                r.batch as f64 / ms * 1e3,
                tf.map_or("–".into(), |t| format!("{t:.1}")),
                tf.map_or("–".into(), |t| format!("{:.1}%", 100.0 * t / peak)),
                ms / r.ours
            );
        }
    }
    Ok(())
}

/// Milliseconds with three significant digits below 1 ms (tiny shapes must not print 0.0).
fn ms(t: f64) -> String {
    if t < 1.0 {
        format!("{t:.3}")
    } else {
        format!("{t:.1}")
    }
}

fn print_table(rows: &[Row], candle: bool) {
    let c_head = if candle { " candle ops, ms |" } else { "" };
    let c_rule = if candle { "---:|" } else { "" };
    println!("| workload | langevin, ms | PyTorch, ms | speed vs PyTorch | langevin, items/s | PyTorch, items/s | output rel. diff | CPU stolen |{c_head}");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|{c_rule}");
    let dash = || "–".to_string();
    for r in rows {
        let ips = |ms: f64| format!("{:.1}", r.batch as f64 / ms * 1e3);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |{}",
            r.name,
            ms(r.ours),
            r.torch.map_or_else(dash, |t| format!("{t:.1}")),
            match (r.torch, r.ratios.len()) {
                (None, _) => dash(),
                (Some(t), 0 | 1) => format!("{:.2}×", t / r.ours),
                (Some(_), _) => {
                    let mut v = r.ratios.clone();
                    v.sort_by(f64::total_cmp);
                    let m = workloads::median(&v);
                    format!("{m:.2}× ({:.2}–{:.2})", v[0], v[v.len() - 1])
                }
            },
            ips(r.ours),
            r.torch.map_or_else(dash, ips),
            r.diff.map_or_else(dash, |d| format!("{d:.1e}")),
            r.stolen.map_or_else(dash, |s| format!("{s:.0}%")),
            if candle {
                format!(" {} |", r.candle.map_or_else(dash, |c| format!("{c:.1}")))
            } else {
                String::new()
            }
        );
    }
}

/// Wait (0.2–3 s) until no other process's threads are runnable, so that each side of an
/// alternating round starts on a quiet machine.
fn settle() {
    let start = std::time::Instant::now();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let quiet = langevin::threads::others_running().is_none_or(|n| n == 0);
        let waited = start.elapsed();
        if (quiet && waited.as_millis() >= 200) || waited.as_secs() >= 3 {
            return;
        }
    }
}

/// A folder under the system temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!("langevin-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("langevin-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
