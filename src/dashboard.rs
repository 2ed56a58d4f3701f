//! The dashboard's static files (`web/`), embedded into the binary and
//! served at `/` with a strict Content-Security-Policy: no inline scripts or
//! styles, connections only to this origin.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

use crate::gateway::Gateway;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Assets;

pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Page paths that all load the single-page app.
const PAGES: [&str; 5] = ["/", "/login", "/history", "/pending", "/tools"];

pub fn routes() -> Router<Gateway> {
    let mut router = Router::new();
    for page in PAGES {
        router = router.route(page, get(|| async { asset("index.html") }));
    }
    // Any other path is a file of `web/` (e.g. /app.css, /js/app.js) or 404.
    router.fallback(|uri: axum::http::Uri| async move {
        match uri.path() {
            p if p.starts_with("/api/") => crate::api::not_found(p),
            p => asset(p.trim_start_matches('/')),
        }
    })
}

/// Security headers every dashboard response carries.
pub fn harden(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn asset(path: &str) -> Response {
    let Some(file) = Assets::get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mime = file.metadata.mimetype();
    let mut response = Response::new(Body::from(file.data.into_owned()));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    // index.html always revalidates; assets are small and also revalidate by ETag.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&format!(
        "\"{}\"",
        hex::encode(&file.metadata.sha256_hash()[..8])
    )) {
        h.insert(header::ETAG, etag);
    }
    harden(&mut response);
    response
}
