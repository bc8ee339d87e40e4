//! `langevin augment` end to end: exactly N readable, labelled files; resuming after an
//! interruption gives the same bytes as an uninterrupted run; memory does not grow with N.
//! (Its own test binary: the memory test reads the peak RSS of this process's children.)
mod common;
use common::{fails_with, langevin, ok, tmp};

/// Peak resident memory of any finished child of this process, in KiB.
fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut u), 0);
        u.ru_maxrss
    }
}

#[test]
fn augment_images_tabular_resume_and_flat_memory() {
    let d = tmp("augment");
    // Tabular first, so that the memory readings come before any larger child.
    let cols = 256;
    let mut csv = (0..cols)
        .map(|j| format!("c{j}"))
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for i in 0..64 {
        let row: Vec<String> = (0..cols)
            .map(|j| format!("{}", ((i * 7 + j * 3) % 11) as f64 / 3.0))
            .collect();
        csv += &(row.join(",") + "\n");
    }
    std::fs::write(d.join("wide.csv"), csv).unwrap();
    ok(&langevin(
        &[
            "train",
            "--data",
            "wide.csv",
            "--out",
            "tab",
            "--steps",
            "2",
            "--batch-size",
            "16",
        ],
        &d,
    ));
    let aug = |n: &str, out: &str| {
        langevin(
            &[
                "augment",
                "--model",
                "tab",
                "--n",
                n,
                "--sampler",
                "euler",
                "--steps",
                "1",
                "--batch-size",
                "64",
                "--out",
                out,
            ],
            &d,
        )
    };
    ok(&aug("256", "small.csv"));
    let small = children_max_rss_kib();
    ok(&aug("4096", "big.csv"));
    let big = children_max_rss_kib();
    // Holding 4096 × 256 samples would take 4 MiB as f32 and 8 MiB more as the f64 table.
    assert!(
        big < small + 3 * 1024,
        "peak RSS grew from {small} KiB (N = 256) to {big} KiB (N = 4096)"
    );
    let text = std::fs::read_to_string(d.join("big.csv")).unwrap();
    assert_eq!(text.lines().count(), 4097, "header + N rows");
    assert!(text.lines().skip(1).all(|l| l.split(',').count() == cols));
    // Interrupt: cut the file mid-row; the rerun completes it to the same bytes.
    let cut = text.len() / 3 + 5;
    std::fs::write(d.join("cut.csv"), &text[..cut]).unwrap();
    std::fs::copy(
        d.join("big.csv.augment.json"),
        d.join("cut.csv.augment.json"),
    )
    .unwrap();
    ok(&aug("4096", "cut.csv"));
    assert_eq!(std::fs::read_to_string(d.join("cut.csv")).unwrap(), text);
    // Other settings on the same output are refused.
    fails_with(
        &aug("100", "cut.csv"),
        &["cut.csv.augment.json", "other settings"],
    );

    // Images: a class-conditional digits model, 2 per class.
    ok(&langevin(
        &[
            "train",
            "--data",
            "digits",
            "--out",
            "img",
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
    let aug_img = || {
        langevin(
            &[
                "augment",
                "--model",
                "img",
                "--n",
                "2",
                "--per-class",
                "--sampler",
                "euler",
                "--steps",
                "2",
                "--batch-size",
                "6",
                "--out",
                "aug",
            ],
            &d,
        )
    };
    ok(&aug_img());
    let mut files = vec![];
    for class in 0..10 {
        let dir = d.join("aug").join(class.to_string());
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "class {class}: {names:?}");
        for p in names {
            let img = image::open(&p).unwrap();
            assert_eq!((img.width(), img.height()), (8, 8));
            files.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    assert_eq!(files.len(), 20);
    for (p, _) in &files[13..] {
        std::fs::remove_file(p).unwrap();
    }
    ok(&aug_img());
    for (p, bytes) in &files {
        assert_eq!(
            &std::fs::read(p).unwrap(),
            bytes,
            "{} differs after resuming",
            p.display()
        );
    }
}
