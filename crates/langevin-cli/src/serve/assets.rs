//! The page: plain HTML, JavaScript and CSS compiled into the binary (no build step, nothing
//! fetched from the network).
use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

fn text(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub fn page() -> Response {
    text("text/html; charset=utf-8", PAGE)
}
pub fn script() -> Response {
    text("text/javascript; charset=utf-8", SCRIPT)
}
pub fn style() -> Response {
    text("text/css; charset=utf-8", STYLE)
}
