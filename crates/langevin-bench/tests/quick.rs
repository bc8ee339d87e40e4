//! The benchmark harness runs end to end on tiny shapes (no PyTorch): every workload gets a
//! table row with a positive time, and the kernel table reports a matmul rate.
use std::process::Command;

#[test]
fn quick_run_prints_every_table_row() {
    let out = Command::new(env!("CARGO_BIN_EXE_langevin-bench"))
        .args(["--quick", "--no-torch", "--threads", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("PyTorch reference skipped (--no-torch)"),
        "{text}"
    );
    for row in [
        "resblocks forward b4",
        "resblocks train step b4",
        "unet-small forward b1",
        "unet-small train step b2",
        "mlp forward b64",
        "mlp train step b64",
        "matmul 1024³",
        "conv3×3 forward",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("| {row}")))
            .unwrap_or_else(|| panic!("no row '{row}' in\n{text}"));
        let ms: f64 = line.split('|').nth(2).unwrap().trim().parse().unwrap();
        assert!(ms > 0.0, "{line}");
    }
}

/// The GPU parity run works on the CPU too: the test suite's diffusers fixtures through the same
/// tool, every check within its bound (f32 only: the CPU has no bf16 matmul).
#[test]
fn parity_run_passes_on_the_cpu() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../langevin/tests/fixtures");
    let out = Command::new(env!("CARGO_BIN_EXE_langevin-bench"))
        .args(["--parity", "--device", "cpu", "--fixtures", fixtures])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = text.lines().filter(|l| l.ends_with("| ok |")).count();
    assert!(rows >= 10, "expected at least 10 passing checks:\n{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.contains("parity checks within their bounds"), "{text}");
}
