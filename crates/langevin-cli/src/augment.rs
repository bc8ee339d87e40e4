//! `langevin augment`: N labelled synthetic samples streamed to disk — PNGs in one subfolder
//! per class (image models) or CSV rows (tabular models) — with memory independent of N, and
//! resumable: sample i depends only on seed + i, so a rerun with the same settings continues
//! where an interrupted one stopped.
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args as ClapArgs;
use langevin::data::csv::{header_line, row_line};
use langevin::data::images::class_dir_name;
use langevin::data::Table;
use langevin::denoiser::{Cond, Denoiser, Guided};
use langevin::io::atomic::write_atomic_bytes;
use langevin::model::Run;
use serde_json::json;

use crate::progress::bar;
use crate::sample::{draw, draw_with, SamplerArgs};
use langevin::api::null_label;

#[derive(ClapArgs)]
pub struct Args {
    /// Run directory written by `langevin train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Number of samples (of every class with --per-class).
    #[arg(long, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub n: usize,
    /// N samples of every class (class-conditional models); otherwise N in all, the labels
    /// taking turns.
    #[arg(long)]
    pub per_class: bool,
    /// Classifier-free guidance scale for class-conditional models.
    #[arg(long, default_value_t = 1.0, value_parser = crate::ranges::non_negative, allow_negative_numbers = true)]
    pub guidance: f64,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub compute: crate::common::ComputeArgs,
    /// Sample i uses seed + i.
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub seed: u64,
    #[arg(long, default_value_t = 64, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// A folder (image models: `CLASS/000123.png`) or a .csv file (tabular models).
    #[arg(long)]
    pub out: PathBuf,
}

/// The settings a resumed run must share with the interrupted one.
fn manifest(a: &Args) -> serde_json::Value {
    json!({
        "model": a.model.canonicalize().unwrap_or(a.model.clone()).display().to_string(),
        "n": a.n, "per_class": a.per_class, "guidance": a.guidance, "seed": a.seed,
        "sampler": a.sampler.sampler.name(), "steps": a.sampler.steps,
    })
}

/// Write the manifest, or check it against the one a previous run left. An existing output
/// without a manifest was not written by `augment`, and is left alone.
fn check_manifest(path: &Path, a: &Args) -> Result<()> {
    let want = manifest(a);
    let out_has_data = if a.out.is_dir() {
        fs::read_dir(&a.out)?.next().is_some()
    } else {
        a.out.exists()
    };
    if !path.exists() && out_has_data {
        bail!(
            "{}: already exists and was not written by `langevin augment` (no {}); choose another --out, or move the file away",
            a.out.display(),
            path.display()
        );
    }
    if path.exists() {
        let text = fs::read_to_string(path)?;
        let have: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        if have != want {
            bail!(
                "{}: the output was started with other settings ({have}); use the same settings to resume, or another --out",
                path.display()
            );
        }
        return Ok(());
    }
    write_atomic_bytes(path, serde_json::to_string_pretty(&want)?.as_bytes())?;
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let run = a.compute.load_run(&a.model)?;
    if run.config.data.standardizer.is_some() {
        return tabular(&run, &a);
    }
    images(&run, &a)
}

fn tabular(run: &Run, a: &Args) -> Result<()> {
    if a.out.extension().and_then(|e| e.to_str()) != Some("csv") {
        bail!("{}: a tabular model writes a .csv file", a.out.display());
    }
    if a.per_class || a.guidance != 1.0 {
        bail!("--per-class and --guidance need a class-conditional image model");
    }
    let mut name = a.out.as_os_str().to_owned();
    name.push(".augment.json");
    check_manifest(Path::new(&name), a)?;
    let columns = &run.config.data.columns;
    let done = complete_rows(&a.out, columns)?;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.out)
        .with_context(|| format!("{}: cannot open", a.out.display()))?;
    if done == 0 && f.metadata()?.len() == 0 {
        writeln!(f, "{}", header_line(columns))?;
    }
    let pb = bar(a.n as u64, "augment");
    pb.set_position(done as u64);
    for start in (done..a.n).step_by(a.batch_size) {
        let b = a.batch_size.min(a.n - start);
        let (t, _): (Table, usize) = draw(
            run,
            &a.sampler,
            b,
            a.seed + start as u64,
            a.batch_size,
            None,
        )?;
        let mut text = String::new();
        for row in t.data.chunks_exact(t.cols) {
            text.push_str(&row_line(row));
            text.push('\n');
        }
        // One write per batch, flushed: an interruption leaves whole batches plus at most one
        // partial line, which the next run drops.
        f.write_all(text.as_bytes())?;
        f.flush()?;
        pb.set_position((start + b) as u64);
    }
    pb.finish_and_clear();
    println!(
        "{}: {} rows ({} new)",
        a.out.display(),
        a.n,
        a.n - done.min(a.n)
    );
    Ok(())
}

/// Rows already in a CSV written by an earlier run (after checking its header); a partial last
/// line is cut off.
fn complete_rows(path: &Path, columns: &[String]) -> Result<usize> {
    if !path.exists() {
        return Ok(0);
    }
    let file = fs::File::open(path)?;
    let mut r = BufReader::new(file);
    let (mut line, mut good_len, mut rows) = (String::new(), 0u64, 0usize);
    let mut first = true;
    loop {
        line.clear();
        let k = r.read_line(&mut line)?;
        if k == 0 || !line.ends_with('\n') {
            break;
        }
        if first {
            if line.trim_end() != header_line(columns) {
                bail!(
                    "{}: exists with another header; expected {}",
                    path.display(),
                    header_line(columns)
                );
            }
            first = false;
        } else {
            rows += 1;
        }
        good_len += k as u64;
    }
    OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(good_len)?;
    Ok(rows)
}

fn images(run: &Run, a: &Args) -> Result<()> {
    let names = &run.config.data.class_names;
    let conditional = !names.is_empty() && run.config.network.is_class_conditional();
    if (a.per_class || a.guidance != 1.0) && !conditional {
        bail!(
            "{}: --per-class and --guidance need a class-conditional model",
            run.dir.display()
        );
    }
    let k = if conditional { names.len() } else { 1 };
    let total = if a.per_class { a.n * k } else { a.n };
    let label = |i: usize| if a.per_class { i / a.n } else { i % k };
    let path = |i: usize| {
        if conditional {
            a.out
                .join(class_dir_name(&names[label(i)]))
                .join(format!("{i:06}.png"))
        } else {
            a.out.join(format!("{i:06}.png"))
        }
    };
    check_manifest(&a.out.join("augment.json"), a)?;
    fs::create_dir_all(&a.out).with_context(|| format!("{}: cannot create", a.out.display()))?;
    if conditional {
        for n in names {
            fs::create_dir_all(a.out.join(class_dir_name(n)))?;
        }
    }
    // Files are written atomically, so an existing one is complete.
    let done = (0..total).find(|&i| !path(i).exists()).unwrap_or(total);
    let guided;
    let den: &dyn Denoiser = if a.guidance != 1.0 {
        guided = Guided {
            inner: &run.denoiser,
            null_label: null_label(run)?,
            scale: a.guidance,
        };
        &guided
    } else {
        &run.denoiser
    };
    let pb = bar(total as u64, "augment");
    pb.set_position(done as u64);
    for start in (done..total).step_by(a.batch_size) {
        let b = a.batch_size.min(total - start);
        let cond = if conditional {
            let labels: Vec<u32> = (start..start + b).map(|i| label(i) as u32).collect();
            Cond {
                labels: Some(Tensor::new(labels.as_slice(), &Device::Cpu)?),
                image: None,
            }
        } else {
            Cond::default()
        };
        let (x, _) = draw_with(
            run,
            den,
            &a.sampler,
            b,
            a.seed + start as u64,
            a.batch_size,
            None,
            &cond,
        )?;
        let (c, h, w) = x.dims4().map(|(_, c, h, w)| (c, h, w))?;
        let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
        for (j, img) in v.chunks_exact(c * h * w).enumerate() {
            langevin::data::images::save_png(path(start + j), img, c, h, w)?;
        }
        pb.set_position((start + b) as u64);
    }
    pb.finish_and_clear();
    println!(
        "{}: {total} images{} ({} new)",
        a.out.display(),
        if conditional {
            format!(" in {k} class folders")
        } else {
            String::new()
        },
        total - done
    );
    Ok(())
}
