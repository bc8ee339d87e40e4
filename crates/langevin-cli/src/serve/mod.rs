//! `langevin serve`: a local web studio over the library — sampling, inpainting with a
//! painted mask, upscaling and image-to-image, with progress and cancel. A thin layer: the
//! page ([`assets`]) calls the HTTP API ([`routes`]), which checks each request
//! ([`requests`], [`paths`]) and queues it ([`jobs`]) for one worker per device ([`work`]).
mod assets;
mod jobs;
mod paths;
mod requests;
mod routes;
mod work;

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

#[derive(ClapArgs)]
pub struct Args {
    /// Folder whose subfolders are run directories (langevin train) or diffusers model folders.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Where uploads and results go, one subfolder per browser client.
    #[arg(long, default_value = "langevin-serve")]
    pub out: PathBuf,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Address to listen on; the default serves this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[command(flatten)]
    pub compute: crate::common::ComputeArgs,
    /// Most jobs waiting at once; more are refused with 503 until some finish.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
}

pub fn run(a: Args) -> Result<()> {
    let runs = a
        .runs
        .canonicalize()
        .with_context(|| format!("--runs {}: not a folder", a.runs.display()))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let out = a.out.canonicalize()?;
    a.compute.device()?;
    let queue = Arc::new(jobs::Queue::new(a.max_queue.max(1)));
    work::Worker::new(a.compute.clone(), out.clone()).spawn(queue.clone());
    let app = Arc::new(routes::App {
        runs: runs.clone(),
        out: out.clone(),
        device: a.compute.device.clone(),
        queue,
        uploads: Default::default(),
        loopback: a.host.is_loopback(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host, a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        println!(
            "langevin serve: http://{addr}/ (runs from {}, results in {})",
            runs.display(),
            out.display()
        );
        std::io::stdout().flush()?;
        axum::serve(listener, routes::router(app)).await?;
        Ok(())
    })
}
