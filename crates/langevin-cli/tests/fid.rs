//! `langevin fid` and `eval --metric fid` end to end on tiny sets. Needs the converted
//! Inception weights (`langevin fid-setup`; CI runs it); without them it says so and skips.
mod common;
use common::{langevin, ok, tmp};

fn weights_present() -> bool {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")));
    base.is_some_and(|b| b.join("langevin/inception-fid.safetensors").exists())
}

/// The number after `label` in `text`.
fn number_after(text: &str, label: &str) -> f64 {
    let rest = &text[text
        .find(label)
        .unwrap_or_else(|| panic!("no '{label}' in {text}"))
        + label.len()..];
    rest.split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches([',', ';'])
        .parse()
        .unwrap()
}

#[test]
fn fid_of_a_set_with_itself_is_zero_and_eval_scores_a_model() {
    if !weights_present() {
        langevin::data::skip_missing_test_data(
            "fid CLI test",
            "no Inception weights; run `langevin fid-setup`",
        );
        return;
    }
    let d = tmp("fid");
    let out = ok(&langevin(
        &["fid", "--a", "digits", "--b", "digits", "--n", "8"],
        &d,
    ));
    let fid = number_after(&out, "FID");
    assert!(fid.abs() < 1e-2, "FID of a set with itself: {fid}\n{out}");
    ok(&langevin(
        &[
            "train",
            "--data",
            "digits",
            "--out",
            "run",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--channels",
            "8,16",
            "--norm-groups",
            "4",
            "--class-cond",
        ],
        &d,
    ));
    let out = ok(&langevin(
        &[
            "eval",
            "--model",
            "run",
            "--metric",
            "fid",
            "--n",
            "16",
            "--data",
            "digits",
            "--sampler",
            "euler",
            "--steps",
            "2",
        ],
        &d,
    ));
    // An untrained model's samples are far from the digits.
    let fid = number_after(&out, "FID");
    assert!(fid.is_finite() && fid > 10.0, "{out}");
}
