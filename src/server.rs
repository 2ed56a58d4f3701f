//! The HTTP listener's routes: MCP endpoints, the approvers' API, the dashboard.

use axum::Router;

use crate::gateway::Gateway;

pub fn router(gw: Gateway) -> Router {
    Router::new()
        .merge(crate::http_agent::routes())
        .merge(crate::api::routes())
        .merge(crate::slack::routes())
        .merge(crate::oidc::routes())
        .merge(crate::dashboard::routes())
        .with_state(gw)
}
