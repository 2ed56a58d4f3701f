//! The HTTP listener's routes: MCP endpoints plus health.

use axum::Router;
use axum::routing::get;

use crate::gateway::Gateway;

pub fn router(gw: Gateway) -> Router {
    Router::new()
        .merge(crate::http_agent::routes())
        .route("/healthz", get(healthz))
        .with_state(gw)
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}
