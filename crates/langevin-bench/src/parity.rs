//! `langevin-bench --parity`: the diffusers parity fixtures of the test suite
//! (crates/langevin/tests/fixtures, made by scripts/make_{unet,pipeline}_fixtures.py) on any
//! device and dtype, so the GPU path is checked against the same references as the CPU one.
//! f32 must stay within 1e-3 relative (max |Δ| / max |ref|); bf16 within 5e-2.
use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use langevin::data::npy::load_npy_f32;
use langevin::denoiser::Cond;
use langevin::model::pipeline::{diffusers_loop, folder_scheduler};
use langevin::model::Run;
use langevin::nn::unet::load_unet_as;
use langevin::rng::NoiseSource;
use langevin::sampler::{generate, Job, SamplerKind, SamplerOptions};
use langevin::scheduler::SchedulerClass;

const UNETS: [&str; 6] = [
    "plain",
    "attn_sharded",
    "fourier_scale_shift",
    "class_fp16",
    "class_timestep_mish",
    "learned_relu",
];

fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let d = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let m = b.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(d / m.max(1e-30))
}

fn bound(dt: DType) -> f64 {
    if dt == DType::F32 {
        1e-3
    } else {
        5e-2
    }
}

/// Prints one table row per check; fails if any check is over its bound.
pub fn run(fixtures: &Path, dev: &Device) -> Result<()> {
    let cpu = Device::Cpu;
    let mut rows: Vec<(String, &'static str, f64, f64)> = vec![];
    // candle's CPU backend has no bf16 matmul: bf16 is checked on GPUs only.
    let dtypes: &[DType] = if dev.is_cpu() {
        &[DType::F32]
    } else {
        &[DType::F32, DType::BF16]
    };
    for &dt in dtypes {
        for name in UNETS {
            let dir = fixtures.join("unet").join(name);
            let m = load_unet_as(&dir, dev, dt)?;
            let io = candle_core::safetensors::load(dir.join("io.safetensors"), &cpu)?;
            let x = io["x"].to_device(dev)?.to_dtype(dt)?;
            let t = io["timesteps"].to_device(dev)?;
            let labels = match io.get("labels") {
                Some(l) => Some(l.to_dtype(DType::U32)?.to_device(dev)?),
                None => None,
            };
            let y = m.forward_diffusers(&x, &t, labels.as_ref())?;
            rows.push((
                format!("UNet2DModel {name}"),
                dt.as_str(),
                rel_err(&y, &io["out"])?,
                bound(dt),
            ));
            if dev.is_cuda() && dt == DType::BF16 {
                // The channels-last path (the default for bf16 on CUDA; f32 stays channel-first)
                // against the channel-first one.
                use langevin::kernels::gpu_nhwc;
                let on = gpu_nhwc::enabled();
                gpu_nhwc::set_enabled(!on);
                let other = m.forward_diffusers(&x, &t, labels.as_ref());
                gpu_nhwc::set_enabled(on);
                let (cl, cf) = if on { (&y, &other?) } else { (&other?, &y) };
                rows.push((
                    format!("UNet2DModel {name}: NHWC vs NCHW activations"),
                    dt.as_str(),
                    crate::gpu_checks::rel(cl, cf)?,
                    bound(dt),
                ));
            }
            if dev.is_cuda() {
                rows.push(crate::gpu_checks::graph_replay(m, &x, &t, labels, name)?);
            }
        }
        let pipe = fixtures.join("pipeline");
        let npy = |f: &str| -> Result<Tensor> {
            let (shape, v) = load_npy_f32(pipe.join(f))?;
            Ok(Tensor::from_vec(v, shape.as_slice(), &cpu)?)
        };
        let run = Run::load_as(pipe.join("model"), dev, dt)?;
        let z = npy("noise.npy")?;
        for (class, steps) in [
            ("DDIMScheduler", 10),
            ("EulerDiscreteScheduler", 10),
            ("DPMSolverMultistepScheduler", 8),
        ] {
            let want = npy(&format!("{class}-{steps}.npy"))?;
            let mut sched = folder_scheduler(&run.dir, SchedulerClass::parse(class)?, steps)?;
            let mut noise = NoiseSource::consecutive(0, z.dim(0)?);
            let got = diffusers_loop(
                &mut sched,
                &run.denoiser.net,
                &z,
                &Cond::default(),
                &mut noise,
                &mut |_, _| {},
            )?;
            rows.push((
                format!("diffusers loop {class} {steps}"),
                dt.as_str(),
                rel_err(&got, &want)?,
                bound(dt),
            ));
        }
        // Our own sampler against the same run on the CPU in f32 (same seeds).
        let reference = Run::load(pipe.join("model"), &cpu)?;
        let sigmas = reference.config.diffusion.sigmas(
            20,
            langevin::model::Spacing::Karras { rho: 7.0 },
            (None, None),
        )?;
        let opts = SamplerOptions::default();
        let job = Job {
            kind: SamplerKind::Dpmpp2m,
            opts: &opts,
            sigmas: &sigmas,
            n: 4,
            seed: 7,
            batch_size: 4,
            sample_shape: reference.config.sample_shape()?,
            sigma_data: 1.0,
            init_noise: None,
        };
        let want = generate(&reference.denoiser, &Cond::default(), &job, &mut |_| {})?.0;
        let got = generate(&run.denoiser, &Cond::default(), &job, &mut |_| {})?.0;
        rows.push((
            "DPM-Solver++ 2M, 20 Karras steps, vs CPU f32".into(),
            dt.as_str(),
            rel_err(&got, &want)?,
            bound(dt),
        ));
        if dev.is_cuda() {
            // What `langevin sample` runs: the same sampler with the network replayed as a
            // CUDA graph must give the eager result bit for bit.
            let graphed = Run::load_for_sampling(pipe.join("model"), dev, Some(dt))?;
            let g = generate(&graphed.denoiser, &Cond::default(), &job, &mut |_| {})?.0;
            let stats = graphed.denoiser.net.graph_stats().unwrap_or_default();
            let e = match stats.replays >= 19 {
                true => rel_err(&g, &got)?,
                false => f64::INFINITY, // graphs not used: fail the row
            };
            rows.push((
                format!(
                    "same, CUDA graph replays ({} of 20 calls) vs eager",
                    stats.replays
                ),
                dt.as_str(),
                e,
                0.0,
            ));
        }
    }
    if dev.is_cuda() {
        rows.extend(crate::gpu_checks::run(dev)?);
        rows.extend(crate::gpu_nhwc_checks::run(dev)?);
        rows.extend(crate::gpu_train_checks::run(dev)?);
    }
    // Inception-v3 FID features against the TorchScript reference (when the weights exist).
    let w = langevin::metrics::fid_setup::weights_path();
    if w.is_file() {
        let stored = candle_core::safetensors::load(&w, &cpu)?;
        let half = stored.values().any(|t| t.dtype() == DType::F16);
        let net = langevin::metrics::inception::InceptionV3::load_on(&w, dev)?;
        let t = candle_core::safetensors::load(fixtures.join("fid/parity.safetensors"), &cpu)?;
        for k in ["grey", "rgb"] {
            let got = net.features(&t[k].to_device(dev)?)?;
            let e = rel_err(&got, &t[&format!("{k}_features")])?;
            // Weights stored in f16 (to fit the device transfer) round each weight by ≤ 5e-4.
            let (label, b) = if half {
                ("f32 (f16-stored weights)", 5e-3)
            } else {
                ("f32", 1e-4)
            };
            rows.push((format!("Inception-v3 FID features, {k}"), label, e, b));
        }
    } else {
        println!(
            "Inception weights not found at {}: FID feature check skipped",
            w.display()
        );
    }
    println!("\n| check on {dev:?} | dtype | max rel. error | bound | |\n|---|---|---:|---:|---|");
    let mut bad = 0;
    for (what, dt, e, b) in &rows {
        let ok = e.is_finite() && e <= b;
        bad += usize::from(!ok);
        println!(
            "| {what} | {dt} | {e:.2e} | {b:.0e} | {} |",
            if ok { "ok" } else { "FAIL" }
        );
    }
    if bad > 0 {
        bail!("{bad} parity check(s) over their bound");
    }
    println!("\nall {} parity checks within their bounds", rows.len());
    Ok(())
}
