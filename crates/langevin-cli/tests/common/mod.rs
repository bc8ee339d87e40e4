//! Helpers shared by the end-to-end tests: a temp dir per test and a command helper.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("langevin-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn langevin(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_langevin"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit code 2 and a one-line error containing each of `needles`.
pub fn fails_with(o: &Output, needles: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in {err}"));
    for n in needles {
        assert!(line.contains(n), "'{n}' not in: {line}");
    }
}
