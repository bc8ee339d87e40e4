//! Compiles the own CUDA kernels (`src/kernels/cuda/*.cu`) to PTX with nvcc when the `cuda`
//! feature is on, as candle-kernels does for candle's; CPU builds need no CUDA toolkit.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    const SOURCES: [&str; 4] = ["fused", "train", "attention", "nhwc"];
    for name in SOURCES {
        println!("cargo:rerun-if-changed=src/kernels/cuda/{name}.cu");
    }
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for name in SOURCES {
        let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join(format!("{name}.ptx"));
        let src = format!("src/kernels/cuda/{name}.cu");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "--use_fast_math"])
            .arg(format!("-arch=sm_{cap}"))
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("running {nvcc} (scripts/build-cuda.sh sets it up): {e}"));
        assert!(status.success(), "nvcc failed on {src}");
    }
}
