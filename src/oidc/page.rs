//! The few pages of the sign-in flow (errors, "signed in"), in the look of
//! the Slack confirm page (`/app.css` + `/slack/confirm.css`): no script, no
//! inline style, every value from the provider escaped.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use crate::html::esc;

fn layout(title: &str, head_extra: &str, main: &str) -> String {
    crate::html::page(title, head_extra, main, "no-referrer", "")
}

/// A page with `status`, never cached, with the dashboard's security headers.
pub fn respond(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    crate::dashboard::harden(&mut response);
    response
}

/// Why a sign-in did not work, and a way to try again. `detail` is shown as text.
pub fn problem(title: &str, message: &str, detail: Option<&str>) -> String {
    let detail = detail
        .map(|d| format!("\n      <pre class=\"oidc-detail\">{}</pre>", esc(d)))
        .unwrap_or_default();
    let main = format!(
        r#"    <article class="card confirm-card notice notice-error" aria-labelledby="problem">
      <h1 id="problem">{title}</h1>
      <p>{message}</p>{detail}
      <p><a class="btn btn-primary" href="/login">Back to sign-in</a></p>
    </article>"#,
        title = esc(title),
        message = esc(message),
    );
    layout(title, "", &main)
}

/// Signed in: the browser moves on to the dashboard. A page rather than a
/// redirect because the login cookie is `SameSite=Strict`: a browser leaves
/// it off a redirect chain that started at the provider (another site), and
/// the dashboard would ask to log in again.
pub fn signed_in(who: &str, role: &str) -> String {
    let main = format!(
        r#"    <article class="card confirm-card notice notice-ok" aria-labelledby="done">
      <h1 id="done">Signed in</h1>
      <p>Signed in as <strong>{who}</strong> ({role}). Opening the dashboard…</p>
      <p><a class="btn btn-primary" href="/" id="continue">Open the dashboard</a></p>
    </article>"#,
        who = esc(who),
        role = esc(role),
    );
    layout(
        "Signed in",
        r#"<meta http-equiv="refresh" content="0; url=/">"#,
        &main,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_text_is_escaped() {
        let html = problem(
            "No role",
            "groups: <script>alert(1)</script>",
            Some("\"><img src=x onerror=alert(1)>"),
        );
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        let html = signed_in("<b>eve</b>@example.com (oidc)", "viewer");
        assert!(html.contains("&lt;b&gt;eve"), "{html}");
        assert!(!html.contains("style="), "{html}");
    }
}
