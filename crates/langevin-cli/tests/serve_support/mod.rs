//! Helpers for the `langevin serve` tests: a tiny trained model, the server as a child process
//! on a free port of 127.0.0.1, and a minimal HTTP/1.1 client (one request per connection,
//! bounded by timeouts) so the tests need no HTTP crate.
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{langevin, ok};

/// Train a 2-step 8×8 digits UNet into `runs/NAME` (a few seconds).
pub fn tiny_run(runs: &Path, name: &str, class_cond: bool) {
    std::fs::create_dir_all(runs).unwrap();
    let mut args = vec![
        "train",
        "--data",
        "digits",
        "--out",
        name,
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--channels",
        "8,16",
        "--norm-groups",
        "4",
    ];
    if class_cond {
        args.push("--class-cond");
    }
    ok(&langevin(&args, runs));
}

/// A grey PNG from `f(x, y)`.
pub fn grey_png(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]));
    let mut v = std::io::Cursor::new(Vec::new());
    img.write_to(&mut v, image::ImageFormat::Png).unwrap();
    v.into_inner()
}

/// The binary under test: `LANGEVIN_TEST_BIN` if set (a target folder shared between
/// checkouts may hold another checkout's `langevin`), else cargo's.
pub fn bin() -> PathBuf {
    std::env::var_os("LANGEVIN_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_langevin").into())
}

/// The server, killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub out: PathBuf,
}

impl Server {
    /// `langevin serve --runs RUNS --out OUT --port 0 EXTRA…`; waits for the address line.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let out = dir.join("out");
        let mut child = Command::new(bin())
            .args(["serve", "--runs", "runs", "--out", "out", "--port", "0"])
            .args(extra)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        // Keep reading what else the server prints, so it never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let port = line
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Server { child, port, out }
    }

    pub fn get(&self, path: &str) -> Reply {
        request(self.port, "GET", path, None, b"")
    }
    pub fn post(&self, path: &str, body: &[u8], content_type: &str) -> Reply {
        request(self.port, "POST", path, Some(content_type), body)
    }
    pub fn post_json(&self, path: &str, v: &serde_json::Value) -> Reply {
        self.post(path, v.to_string().as_bytes(), "application/json")
    }

    /// Poll job `id` until it has finished (at most `secs` seconds); its last snapshot.
    pub fn wait_job(&self, id: u64, secs: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.get(&format!("/api/jobs/{id}")).json();
            if ["done", "failed", "cancelled"].contains(&s["state"].as_str().unwrap_or("")) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} unfinished after {secs} s: {s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory of the server process, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The JSON error message of a 4xx/5xx reply.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One request on its own connection (`Connection: close`), read to the end; 60 s timeouts.
pub fn request(port: u16, method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Reply {
    request_to(
        &format!("127.0.0.1:{port}"),
        port,
        method,
        path,
        ctype,
        body,
    )
}

/// [`request`] with the Host header `host`.
pub fn request_to(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = ctype {
        head += &format!("Content-Type: {t}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    // Read to the end, or to Content-Length where given (some servers keep the connection).
    let (mut raw, mut buf) = (vec![], [0u8; 65536]);
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| raw.len() >= end + 4 + len) {
                break;
            }
        }
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header in {:?}", String::from_utf8_lossy(raw)));
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
    out
}
