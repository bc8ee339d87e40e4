//! The HTTP API and the page. Every handler checks its input and answers 4xx with a JSON
//! `{"error": message}` when it is wrong; jobs go to the queue and report through
//! server-sent events.
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use langevin::sampler::SamplerKind;
use serde_json::json;

use super::jobs::{Queue, Snapshot};
use super::{assets, paths, requests};

/// Largest upload accepted; larger bodies are read to the end and discarded (up to
/// [`DRAIN_LIMIT`]) so the client still receives the 413.
pub const MAX_UPLOAD: usize = 2 << 20;
const DRAIN_LIMIT: usize = 64 << 20;
/// Largest uploaded image side.
pub const MAX_SIDE: u32 = 1024;

pub struct App {
    /// Canonical --runs folder.
    pub runs: PathBuf,
    /// Canonical output folder (one subfolder per client).
    pub out: PathBuf,
    pub device: String,
    pub queue: Arc<Queue>,
    pub uploads: AtomicU64,
    /// Bound to a loopback address: answer only requests addressed to this machine by name
    /// (a Host header of localhost, 127.0.0.1 or [::1]), which a web page elsewhere cannot
    /// make through DNS rebinding.
    pub loopback: bool,
}

/// An HTTP error with a message for the page.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub msg: String,
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            msg: msg.into(),
        }
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            msg: msg.into(),
        }
    }
    pub fn context(self, what: &str) -> Self {
        Self {
            msg: format!("{what}: {}", self.msg),
            ..self
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.msg }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { assets::page() }))
        .route("/app.js", get(|| async { assets::script() }))
        .route("/style.css", get(|| async { assets::style() }))
        .route("/api/info", get(info))
        .route("/api/runs", get(runs))
        .route("/api/runs/{run}/{file}", get(run_file))
        .route("/api/clients/{client}/uploads", post(upload))
        .route("/api/clients/{client}/files", get(client_files))
        .route("/api/clients/{client}/files/{name}", get(client_file))
        .route("/api/jobs", post(submit))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/events", get(events))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .fallback(|| async { ApiError::not_found("no such page or endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            local_only,
        ))
        .with_state(app)
}

/// Refuse requests whose Host names another machine while serving loopback only.
async fn local_only(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let name = host.map(|h| h.rsplit_once(':').map_or(h, |(n, _)| n));
    if app.loopback && !matches!(name, Some("localhost" | "127.0.0.1" | "[::1]")) {
        return ApiError {
            status: StatusCode::FORBIDDEN,
            msg: format!("Host {host:?}: this server answers requests to localhost only"),
        }
        .into_response();
    }
    next.run(req).await
}

async fn info(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let samplers: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
    Json(json!({
        "samplers": samplers,
        "device": app.device,
        "max_steps": requests::MAX_STEPS,
        "max_count": requests::MAX_COUNT,
        "max_guidance": requests::MAX_GUIDANCE,
        "max_upload": MAX_UPLOAD,
        "max_side": MAX_SIDE,
        "waiting": app.queue.waiting(),
    }))
}

async fn runs(State(app): State<Arc<App>>) -> Json<Vec<paths::RunInfo>> {
    let runs = app.runs.clone();
    Json(
        blocking(move || Ok(paths::list_runs(&runs)))
            .await
            .unwrap_or_default(),
    )
}

fn png(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/png")], bytes).into_response()
}

async fn run_file(
    State(app): State<Arc<App>>,
    Path((run, file)): Path<(String, String)>,
) -> ApiResult<Response> {
    if !matches!(file.as_str(), "samples.png" | "loss.png") {
        return Err(ApiError::not_found(format!(
            "{file:?}: a run serves samples.png and loss.png"
        )));
    }
    let dir = paths::run_dir(&app.runs, &run)?;
    let bytes = tokio::fs::read(dir.join(&file))
        .await
        .map_err(|_| ApiError::not_found(format!("run {run} has no {file}")))?;
    Ok(png(bytes))
}

async fn client_file(
    State(app): State<Arc<App>>,
    Path((client, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let path = paths::client_file(&app.out, &client, &name)?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::not_found(format!("no file {name:?}")))?;
    Ok(png(bytes))
}

/// Most files listed for a client (the newest).
const MAX_LISTED: usize = 200;

/// The client's images, oldest first: `[{name, url}]`.
async fn client_files(
    State(app): State<Arc<App>>,
    Path(client): Path<String>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    paths::check_client(&client)?;
    let dir = app.out.join(&client);
    let mut files: Vec<(std::time::SystemTime, String)> = blocking(move || {
        Ok(std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        let ok = paths::plain_name(&name) && name.ends_with(".png");
                        ok.then_some((e.metadata().ok()?.modified().ok()?, name))
                    })
                    .collect()
            })
            .unwrap_or_default())
    })
    .await?;
    files.sort();
    let skip = files.len().saturating_sub(MAX_LISTED);
    Ok(Json(
        files[skip..]
            .iter()
            .map(|(_, name)| json!({"name": name, "url": format!("/api/clients/{client}/files/{name}")}))
            .collect(),
    ))
}

/// Run blocking work (file system, image decoding) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        msg: e.to_string(),
    })?
}

/// A PNG or JPEG image as the body; stored (as PNG) in the client's folder. The content type
/// must say so: an image type is not one a cross-site form may send without the browser
/// asking this server first (which it never allows).
async fn upload(
    State(app): State<Arc<App>>,
    Path(client): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    paths::check_client(&client)?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !matches!(ctype, Some("image/png" | "image/jpeg")) {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            msg: format!("upload: Content-Type must be image/png or image/jpeg, got {ctype:?}"),
        });
    }
    let mut stream = body.into_data_stream();
    let (mut data, mut total) = (Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk.map_err(|e| ApiError::bad(format!("upload: {e}")))?;
        total += chunk.len();
        if total > DRAIN_LIMIT {
            break;
        }
        if total <= MAX_UPLOAD {
            data.extend_from_slice(&chunk);
        }
    }
    if total > MAX_UPLOAD {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            msg: format!("upload of {total} bytes or more; the limit is {MAX_UPLOAD} bytes"),
        });
    }
    let n = app.uploads.fetch_add(1, Ordering::Relaxed);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = format!("upload-{stamp}-{n}.png");
    let path = paths::client_file(&app.out, &client, &name)?;
    let (w, h) = blocking(move || {
        let mut r = image::ImageReader::new(std::io::Cursor::new(&data))
            .with_guessed_format()
            .map_err(|e| ApiError::bad(format!("upload: {e}")))?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        r.limits(limits);
        let img = r
            .decode()
            .map_err(|e| ApiError::bad(format!("upload: not a readable PNG/JPEG image of at most {MAX_SIDE}×{MAX_SIDE} pixels ({e})")))?;
        let internal = |e: String| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            msg: e,
        };
        std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| internal(e.to_string()))?;
        img.save_with_format(&path, image::ImageFormat::Png)
            .map_err(|e| internal(e.to_string()))?;
        Ok((img.width(), img.height()))
    })
    .await?;
    let url = format!("/api/clients/{client}/files/{name}");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "url": url, "width": w, "height": h })),
    ))
}

async fn submit(
    State(app): State<Arc<App>>,
    req: Result<Json<requests::JobRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Snapshot>)> {
    let Json(req) = req.map_err(|e| ApiError {
        status: e.status(),
        msg: e.body_text(),
    })?;
    let (runs, out) = (app.runs.clone(), app.out.clone());
    let (client, task) = blocking(move || requests::task(&runs, &out, req)).await?;
    let job = app.queue.push(client, task).map_err(|full| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        msg: format!(
            "{} jobs are waiting; try again when some have finished",
            full.0
        ),
    })?;
    let snap = job.snap.borrow().clone();
    Ok((StatusCode::ACCEPTED, Json(snap)))
}

fn find(app: &App, id: &str) -> ApiResult<Arc<super::jobs::Job>> {
    id.parse::<u64>()
        .ok()
        .and_then(|id| app.queue.get(id))
        .ok_or_else(|| ApiError::not_found(format!("no job {id:?}")))
}

async fn job(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Snapshot>> {
    Ok(Json(find(&app, &id)?.snap.borrow().clone()))
}

async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Snapshot>> {
    let job = find(&app, &id)?;
    app.queue.cancel(job.id);
    let snap = job.snap.borrow().clone();
    Ok(Json(snap))
}

/// The job's snapshot now and after every change, until it has finished.
async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let rx = find(&app, &id)?.snap.subscribe();
    let stream =
        futures_util::stream::unfold((rx, true, false), |(mut rx, first, done)| async move {
            if done || (!first && rx.changed().await.is_err()) {
                return None;
            }
            let snap = rx.borrow_and_update().clone();
            let finished = snap.state.finished();
            let ev = Event::default()
                .event("job")
                .json_data(&snap)
                .unwrap_or_else(|_| Event::default().data("{}"));
            Some((Ok(ev), (rx, false, finished)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
