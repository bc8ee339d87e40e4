//! HTTP-level tests of `langevin serve`: every endpoint, its errors, the job queue, cancel,
//! server-sent events, and 50 concurrent requests. All on 127.0.0.1 with tiny models.
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
mod serve_support;
use common::{langevin, ok, tmp};
use serve_support::{grey_png, tiny_run, Server};

fn decode(bytes: &[u8]) -> image::GrayImage {
    image::load_from_memory(bytes).unwrap().to_luma8()
}

fn upload(s: &Server, client: &str, png: &[u8]) -> String {
    let r = s.post(&format!("/api/clients/{client}/uploads"), png, "image/png");
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["name"].as_str().unwrap().to_string()
}

/// Submit a job, expecting 202; its id.
fn submit(s: &Server, body: Value) -> u64 {
    let r = s.post_json("/api/jobs", &body);
    assert_eq!(r.status, 202, "{body}: {}", r.text());
    r.json()["id"].as_u64().unwrap()
}

fn done_images(s: &Server, id: u64) -> Vec<image::GrayImage> {
    let snap = s.wait_job(id, 120);
    assert_eq!(snap["state"], "done", "{snap}");
    snap["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let r = s.get(u.as_str().unwrap());
            assert_eq!(r.status, 200);
            assert!(r.headers.contains("image/png"));
            decode(&r.body)
        })
        .collect()
}

#[test]
fn serve_pages_runs_and_uploads_with_4xx_for_bad_input() {
    let d = tmp("serve-http");
    tiny_run(&d.join("runs"), "digits", true);
    // A folder without config.json is not a run; a file is not either.
    std::fs::create_dir_all(d.join("runs/empty")).unwrap();
    std::fs::write(d.join("secret.png"), grey_png(8, 8, |_, _| 9)).unwrap();
    let s = Server::start(&d, &[]);

    let page = s.get("/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("langevin studio") && page.text().contains("/app.js"));
    for (path, kind) in [("/app.js", "javascript"), ("/style.css", "text/css")] {
        let r = s.get(path);
        assert!(r.status == 200 && r.headers.contains(kind), "{path}: {r:?}");
    }
    assert_eq!(s.get("/nope").status, 404);
    // A page elsewhere reaching this port through DNS rebinding names its own host.
    let rebound =
        serve_support::request_to("evil.example:80", s.port, "GET", "/api/runs", None, b"");
    assert_eq!(rebound.status, 403, "{}", rebound.text());
    assert_eq!(
        serve_support::request_to("localhost", s.port, "GET", "/", None, b"").status,
        200
    );
    let info = s.get("/api/info").json();
    assert!(info["samplers"]
        .as_array()
        .unwrap()
        .contains(&json!("dpmpp-2m")));

    let runs = s.get("/api/runs").json();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let r = &runs[0];
    assert_eq!(
        (&r["name"], &r["shape"]),
        (&json!("digits"), &json!([1, 8, 8]))
    );
    assert_eq!((&r["classes"], &r["guidance"]), (&json!(10), &json!(true)));
    assert_eq!(r["config"]["_class_name"], "UNet2DModel");
    assert_eq!(r["samples_png"], true);
    let grid = s.get("/api/runs/digits/samples.png");
    assert_eq!((grid.status, &grid.body[1..4]), (200, &b"PNG"[..]));
    assert_eq!(s.get("/api/runs/digits/config.json").status, 404);
    assert_eq!(s.get("/api/runs/nope/samples.png").status, 404);
    assert_eq!(s.get("/api/runs/..%2F..%2Fsecret/samples.png").status, 400);

    // Uploads round-trip exactly; bad ones are refused with a message.
    let img = grey_png(8, 8, |x, y| (x * 30 + y * 3) as u8);
    let name = upload(&s, "t1", &img);
    let back = s.get(&format!("/api/clients/t1/files/{name}"));
    assert_eq!(decode(&back.body), decode(&img));
    assert!(
        d.join("out/t1").join(&name).is_file(),
        "one folder per client"
    );
    let bad = s.post("/api/clients/t1/uploads", b"not an image", "image/png");
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("PNG/JPEG"), "{}", bad.error());
    let huge = s.post("/api/clients/t1/uploads", &vec![0u8; 3 << 20], "image/png");
    assert_eq!(huge.status, 413);
    assert!(huge.error().contains("limit"), "{}", huge.error());
    let wide = s.post(
        "/api/clients/t1/uploads",
        &grey_png(2000, 1, |_, _| 0),
        "image/png",
    );
    assert_eq!(wide.status, 400, "{}", wide.text());
    assert_eq!(
        s.post("/api/clients/a.b/uploads", &img, "image/png").status,
        400
    );
    let plain = s.post("/api/clients/t1/uploads", &img, "text/plain");
    assert_eq!(plain.status, 415, "{}", plain.text());
    // Names that would leave the client's folder never reach the file system.
    for path in [
        "/api/clients/t1/files/..%2F..%2Fsecret.png",
        "/api/clients/..%2F..%2Fruns/files/x.png",
        "/api/clients/t1/files/x.txt",
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    assert_eq!(s.get("/api/clients/t1/files/none.png").status, 404);
    let listed = s.get("/api/clients/t1/files").json();
    assert_eq!(
        listed,
        json!([{"name": name, "url": format!("/api/clients/t1/files/{name}")}])
    );
    assert_eq!(s.get("/api/clients/nobody/files").json(), json!([]));
    assert_eq!(s.get("/api/clients/a.b/files").status, 400);
    assert_eq!(s.get("/api/jobs/999").status, 404);
    assert_eq!(s.get("/api/jobs/999/events").status, 404);
    assert_eq!(
        s.post("/api/jobs/abc/cancel", b"", "text/plain").status,
        404
    );
}

#[test]
fn serve_jobs_run_the_library_and_bad_jobs_are_refused() {
    let d = tmp("serve-jobs");
    tiny_run(&d.join("runs"), "digits", true);
    // A diffusers model folder (RGB 8×8) is listed and samples; a symbolic link that leads
    // out of --runs is neither listed nor served.
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../langevin/tests/fixtures/pipeline/model");
    std::fs::create_dir_all(d.join("runs/unet")).unwrap();
    for f in [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "scheduler_config.json",
    ] {
        std::fs::copy(fixture.join(f), d.join("runs/unet").join(f)).unwrap();
    }
    std::os::unix::fs::symlink(&fixture, d.join("runs/linked")).unwrap();
    let s = Server::start(&d, &[]);
    let c = "t2";
    let runs = s.get("/api/runs").json();
    let names: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["digits", "unet"]);
    assert_eq!(
        (&runs[1]["diffusers"], &runs[1]["shape"]),
        (&json!(true), &json!([3, 8, 8]))
    );
    let linked = s.post_json(
        "/api/jobs",
        &json!({"client": c, "run": "linked", "kind": "sample"}),
    );
    assert_eq!(linked.status, 404, "{}", linked.text());
    let rgb = s.wait_job(
        submit(
            &s,
            json!({"client": c, "run": "unet", "kind": "sample", "steps": 3}),
        ),
        60,
    );
    assert_eq!(rgb["state"], "done", "{rgb}");
    let px = image::load_from_memory(&s.get(rgb["images"][0].as_str().unwrap()).body).unwrap();
    assert_eq!((px.color(), px.width()), (image::ColorType::Rgb8, 8));
    let gradient = |x: u32, y: u32| (x * 30 + y * 3) as u8;
    let img = upload(&s, c, &grey_png(8, 8, gradient));
    let mask = upload(&s, c, &grey_png(8, 8, |x, _| if x >= 4 { 255 } else { 0 }));
    let big = upload(&s, c, &grey_png(16, 16, |_, _| 0));
    let low = upload(&s, c, &grey_png(4, 4, |x, y| (x * 60 + y * 20) as u8));
    let base = json!({"client": c, "run": "digits", "sampler": "euler", "steps": 3, "seed": 5});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };

    // Refused before queueing, each with its reason.
    for (body, status, needle) in [
        (
            with(json!({"kind": "sample", "run": "nope"})),
            404,
            "unknown run",
        ),
        (
            with(json!({"kind": "sample", "run": "../runs/digits"})),
            400,
            "run name",
        ),
        (
            with(json!({"kind": "sample", "run": "/etc"})),
            400,
            "run name",
        ),
        (
            with(json!({"kind": "sample", "client": "../x"})),
            400,
            "client id",
        ),
        (with(json!({"kind": "sample", "steps": 0})), 400, "steps"),
        (with(json!({"kind": "sample", "steps": 5000})), 400, "steps"),
        (with(json!({"kind": "sample", "count": 500})), 400, "count"),
        (
            with(json!({"kind": "sample", "class": 10})),
            400,
            "class 10 out of range",
        ),
        (
            with(json!({"kind": "sample", "guidance": 3.0})),
            400,
            "guidance needs a class",
        ),
        (
            with(json!({"kind": "sample", "class": 1, "guidance": 99.0})),
            400,
            "guidance",
        ),
        (
            with(json!({"kind": "sample", "sampler": "magic"})),
            422,
            "unknown variant",
        ),
        (with(json!({"kind": "paint"})), 422, "unknown variant"),
        (
            with(json!({"kind": "inpaint", "image": img, "mask": "missing.png"})),
            404,
            "upload it first",
        ),
        (
            with(json!({"kind": "inpaint", "image": big, "mask": mask})),
            400,
            "16×16, the model takes 8×8",
        ),
        (
            with(
                json!({"kind": "inpaint", "image": img, "mask": mask, "repaint": {"jump": 9, "count": 2}}),
            ),
            400,
            "repaint.jump",
        ),
        (
            with(json!({"kind": "img2img", "image": img, "strength": 1.5})),
            400,
            "strength",
        ),
        (
            with(json!({"kind": "img2img", "image": "../../secret.png", "strength": 0.5})),
            400,
            "file name",
        ),
        (
            with(json!({"kind": "upscale", "image": img})),
            400,
            "does not upscale",
        ),
    ] {
        let r = s.post_json("/api/jobs", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.error().contains(needle), "{body}: {}", r.error());
    }
    let r = s.post("/api/jobs", b"{not json", "application/json");
    assert_eq!(r.status, 400, "{}", r.text());

    // Sampling: image i uses seed + i, so job (seed 5, 3 images) ends with job (seed 7, 1).
    let a = done_images(
        &s,
        submit(
            &s,
            with(json!({"kind": "sample", "count": 3, "class": 7, "guidance": 2.0})),
        ),
    );
    let b = done_images(
        &s,
        submit(
            &s,
            with(json!({"kind": "sample", "count": 1, "class": 7, "guidance": 2.0, "seed": 7})),
        ),
    );
    assert_eq!((a.len(), a[0].dimensions()), (3, (8, 8)));
    assert_eq!(a[2], b[0]);
    assert_ne!(a[0], a[1]);

    // Inpainting (projection and RePaint) keeps the unmasked half exactly.
    for repaint in [Value::Null, json!({"jump": 1, "count": 2})] {
        let id = submit(
            &s,
            with(json!({"kind": "inpaint", "image": img, "mask": mask, "repaint": repaint})),
        );
        let out = &done_images(&s, id)[0];
        for y in 0..8 {
            for x in 0..4 {
                assert_eq!(
                    out.get_pixel(x, y).0[0],
                    gradient(x, y),
                    "{repaint}: ({x}, {y})"
                );
            }
        }
    }
    // Image-to-image at strength 0 returns the input.
    let same = done_images(
        &s,
        submit(
            &s,
            with(json!({"kind": "img2img", "image": img, "strength": 0.0})),
        ),
    );
    assert_eq!(same[0], decode(&grey_png(8, 8, gradient)));
    // Zero-shot upscaling gives exactly what `langevin upscale` gives (the server adds no
    // numerics of its own).
    let up = &done_images(
        &s,
        submit(&s, with(json!({"kind": "upscale", "image": low}))),
    )[0];
    std::fs::copy(d.join("out").join(c).join(&low), d.join("low.png")).unwrap();
    ok(&langevin(
        &[
            "upscale",
            "--model",
            "runs/digits",
            "--image",
            "low.png",
            "--zero-shot",
            "--sampler",
            "euler",
            "--steps",
            "3",
            "--seed",
            "5",
            "--out",
            "cli-up.png",
        ],
        &d,
    ));
    assert_eq!(up, &image::open(d.join("cli-up.png")).unwrap().to_luma8());
}

#[test]
fn serve_streams_progress_queues_and_cancels() {
    let d = tmp("serve-queue");
    tiny_run(&d.join("runs"), "digits", false);
    let s = Server::start(&d, &["--max-queue", "2"]);
    let job = |steps: usize, count: usize| json!({"client": "q", "run": "digits", "kind": "sample", "sampler": "euler", "steps": steps, "count": count});
    // Server-sent events: snapshots until the job is done, then the stream ends.
    let id = submit(&s, job(300, 2));
    let sse = s.get(&format!("/api/jobs/{id}/events"));
    assert!(sse.headers.contains("text/event-stream"), "{}", sse.headers);
    let snaps: Vec<Value> = sse
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = snaps.last().unwrap();
    assert_eq!(
        (&last["state"], &last["progress"]),
        (&json!("done"), &json!(1.0))
    );
    assert_eq!(last["images"].as_array().unwrap().len(), 2);
    let p: Vec<f64> = snaps
        .iter()
        .map(|s| s["progress"].as_f64().unwrap())
        .collect();
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {p:?}"
    );
    assert!(
        p.iter().any(|&v| v > 0.0 && v < 1.0),
        "no intermediate progress: {p:?}"
    );

    // One job runs, two wait, the next is refused; cancel stops waiting and running jobs.
    let long = submit(&s, job(1000, 64));
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.get(&format!("/api/jobs/{long}")).json()["state"] != "running" {
        assert!(Instant::now() < deadline, "the long job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let w1 = submit(&s, job(2, 1));
    let w2 = submit(&s, job(2, 1));
    assert_eq!(s.get(&format!("/api/jobs/{w2}")).json()["position"], 1);
    let full = s.post_json("/api/jobs", &job(2, 1));
    assert_eq!(full.status, 503, "{}", full.text());
    assert!(full.error().contains("waiting"), "{}", full.error());
    let c = s.post(&format!("/api/jobs/{w1}/cancel"), b"", "text/plain");
    assert_eq!((c.status, &c.json()["state"]), (200, &json!("cancelled")));
    assert_eq!(s.get(&format!("/api/jobs/{w2}")).json()["position"], 0);
    let t = Instant::now();
    assert_eq!(
        s.post(&format!("/api/jobs/{long}/cancel"), b"", "text/plain")
            .status,
        200
    );
    let snap = s.wait_job(long, 30);
    assert_eq!(snap["state"], "cancelled", "{snap}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        t.elapsed()
    );
    assert!(snap["images"].as_array().unwrap().len() < 64);
    // The queue moves on.
    assert_eq!(s.wait_job(w2, 60)["state"], "done");
}

#[test]
fn serve_under_load_answers_every_request_and_finishes_every_job() {
    let d = tmp("serve-load");
    tiny_run(&d.join("runs"), "digits", false);
    let s = Server::start(&d, &[]);
    let port = s.port;
    let before = s.rss_kib();
    let png = grey_png(8, 8, |x, y| (x + y) as u8);
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let png = png.clone();
            std::thread::spawn(move || {
                use serve_support::request;
                let job = |run: &str, steps: usize| {
                    json!({"client": format!("load{}", i % 5), "run": run, "kind": "sample", "sampler": "euler", "steps": steps, "seed": i}).to_string()
                };
                let (r, want) = match i % 5 {
                    0 | 1 => (request(port, "POST", "/api/jobs", Some("application/json"), job("digits", 2).as_bytes()), 202),
                    2 => (request(port, "POST", &format!("/api/clients/load{i}/uploads"), Some("image/png"), &png), 201),
                    3 => match i % 3 {
                        0 => (request(port, "POST", "/api/jobs", Some("application/json"), job("nope", 2).as_bytes()), 404),
                        1 => (request(port, "POST", "/api/jobs", Some("application/json"), job("digits", 0).as_bytes()), 400),
                        _ => (request(port, "POST", "/api/clients/x/uploads", Some("image/png"), &vec![1u8; 3 << 20]), 413),
                    },
                    _ => (request(port, "GET", "/api/runs", None, b""), 200),
                };
                assert_eq!(r.status, want, "request {i}: {}", String::from_utf8_lossy(&r.body));
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                v["id"].as_u64()
            })
        })
        .collect();
    let ids: Vec<u64> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(ids.len(), 20);
    for id in ids {
        assert_eq!(s.wait_job(id, 300)["state"], "done", "job {id}");
    }
    let after = s.rss_kib();
    // Ten 3 MiB uploads were refused without being kept, 20 tiny jobs ran: growth stays far
    // below what buffering them all would take.
    assert!(
        after < before + 200 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert_eq!(
        std::fs::read_dir(d.join("out")).unwrap().count(),
        2 + 10,
        "one folder per client"
    );
}
