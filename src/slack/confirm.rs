//! `GET /approve/{token}` shows the call; only `POST` decides.
//!
//! Link unfurlers, chat previews and mail scanners fetch links with GET (and
//! HEAD), so GET never changes anything. The POST must carry the CSRF token
//! of a page this gateway served for the same token (and the same login,
//! when `slack.link_requires_login`), come from this origin, and ask for an
//! action the token allows. Used, expired, forged and foreign tokens get a
//! page saying which; forged ones also leave an audit row.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::links::Claims;
use super::page::{self, Tone};
use super::{Slack, ago, form_pairs, form_value};
use crate::audit::{AuditError, Filter, Record};
use crate::gateway::Gateway;
use crate::hold::{self, Choice, DecideError, PendingItem, Verdict};
use crate::login;

/// The channel decisions made through links are recorded under.
pub const CHANNEL: &str = "slack-link";
/// Longest name a link user may type.
const MAX_NAME: usize = 64;
const MAX_COMMENT: usize = 4096;

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The token is in the URL: keep the page out of caches and indexes.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-robots-tag",
        HeaderValue::from_static("noindex, nofollow"),
    );
    crate::dashboard::harden(&mut response);
    // Not `no-referrer`: with it, browsers send `Origin: null` on the form's
    // POST. `same-origin` still keeps the token away from every other site.
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn notice(status: StatusCode, tone: Tone, heading: &str, details: &[&str]) -> Response {
    let details: Vec<String> = details.iter().map(|d| (*d).to_owned()).collect();
    html(status, page::notice(tone, heading, &details))
}

/// `GET /slack/confirm.css`.
pub async fn stylesheet() -> Response {
    let mut response = include_str!("confirm.css").into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    crate::dashboard::harden(&mut response);
    response
}

fn not_configured() -> Response {
    notice(
        StatusCode::NOT_FOUND,
        Tone::Bad,
        "This link is not valid",
        &["Slack links are not enabled on this gateway."],
    )
}

/// The claims of a token; `None` after recording a forgery (see [`forged_page`]).
fn verify(
    gw: &Gateway,
    slack: &Slack,
    token: &str,
    method: &Method,
    peer: Option<SocketAddr>,
) -> Option<Claims> {
    if let Some(claims) = slack.key.verify(token) {
        return Some(claims);
    }
    let from = peer
        .map(|p| p.ip().to_string())
        .unwrap_or_else(|| "unknown address".into());
    tracing::warn!("decision link with a bad signature ({method} from {from})");
    if slack.may_record_forgery() {
        let record = Record {
            decision: "forged_link",
            reason: Some(format!(
                "a decision link with a bad signature was opened ({method} from {from})"
            )),
            channel: Some(CHANNEL.into()),
            ..Default::default()
        };
        let gw = gw.clone();
        tokio::spawn(async move { gw.audit.record(record).await });
    }
    None
}

fn forged_page() -> Response {
    notice(
        StatusCode::FORBIDDEN,
        Tone::Bad,
        "This link is not valid",
        &["It was not issued by this Airlock, or it was changed on the way. Nothing was decided."],
    )
}

fn audit_unreadable(e: AuditError) -> Response {
    notice(
        StatusCode::SERVICE_UNAVAILABLE,
        Tone::Bad,
        "The audit history cannot be read",
        &[&e.to_string(), "Try again in a moment."],
    )
}

/// What a valid token's call has become.
enum LinkState {
    Open(Box<PendingItem>),
    /// Decided by someone: "approved by bob", when.
    Decided(String, DateTime<Utc>),
    /// Timed out (or the link's time is up); what happened, if known.
    Expired(Option<(String, DateTime<Utc>)>),
    /// Left open by a gateway that stopped.
    Abandoned,
    /// Signed with our key but never held here (e.g. a key shared with another gateway).
    Unknown,
}

/// How an audit decision reads after "already".
fn audit_describe(decision: &str, decider: Option<&str>) -> Option<String> {
    let verb = match decision {
        "approved" => "approved",
        "denied_by_human" => "denied",
        "cancelled" => "cancelled",
        "denied" => "denied (the gateway shut down)",
        "timed_out" => "timed out",
        _ => return None,
    };
    Some(match decider {
        Some(who) => format!("{verb} by {who}"),
        None => verb.to_owned(),
    })
}

async fn link_state(
    gw: &Gateway,
    claims: &Claims,
    now: DateTime<Utc>,
) -> Result<LinkState, AuditError> {
    let id = &claims.pending_id;
    if let Some(r) = hold::resolution(gw, id).await {
        return Ok(match r.verdict {
            Verdict::TimedOut => LinkState::Expired(Some((r.describe(), r.at))),
            _ => LinkState::Decided(r.describe(), r.at),
        });
    }
    if let Some(item) = gw.holds.get(id) {
        return Ok(if now > claims.expires {
            LinkState::Expired(None)
        } else {
            LinkState::Open(Box::new(item))
        });
    }
    let filter = Filter {
        pending_id: Some(id.clone()),
        ..Default::default()
    };
    let rows = gw.audit.query(filter, true).await?;
    if rows.is_empty() {
        return Ok(LinkState::Unknown);
    }
    for row in &rows {
        let when = DateTime::parse_from_rfc3339(&row.at)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now);
        if row.decision == "abandoned" {
            return Ok(LinkState::Abandoned);
        }
        if let Some(line) = audit_describe(&row.decision, row.decider.as_deref()) {
            return Ok(if row.decision == "timed_out" {
                LinkState::Expired(Some((line, when)))
            } else {
                LinkState::Decided(line, when)
            });
        }
    }
    // Requested, never decided, not held: the gateway stopped without recording it.
    Ok(if now > claims.expires {
        LinkState::Expired(None)
    } else {
        LinkState::Abandoned
    })
}

/// The page for every state but `Open`.
fn closed_page(state: LinkState, now: DateTime<Utc>) -> Response {
    match state {
        LinkState::Open(_) => unreachable!("open links get the confirm page"),
        LinkState::Decided(line, when) => notice(
            StatusCode::CONFLICT,
            Tone::Info,
            &format!("Already {line} {}", ago(when, now)),
            &["Each request is decided once; nothing was changed."],
        ),
        LinkState::Expired(what) => {
            let detail = match what {
                Some((line, when)) => format!(
                    "The request {line} {}; nothing can be decided any more.",
                    ago(when, now)
                ),
                None => "The request's time to decide is over; nothing can be decided any more."
                    .to_owned(),
            };
            notice(
                StatusCode::GONE,
                Tone::Warn,
                "This link has expired",
                &[&detail],
            )
        }
        LinkState::Abandoned => notice(
            StatusCode::GONE,
            Tone::Warn,
            "This request is no longer pending",
            &[
                "The gateway restarted before anyone decided, so the call was not run. The agent can ask again.",
            ],
        ),
        LinkState::Unknown => notice(
            StatusCode::NOT_FOUND,
            Tone::Bad,
            "This link is not valid",
            &["This Airlock never held the request it names. Nothing was decided."],
        ),
    }
}

/// `GET /approve/{token}`: shows the call; never decides.
pub async fn show(
    State(gw): State<Gateway>,
    Path(token): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let Some(slack) = gw.slack.clone() else {
        return not_configured();
    };
    let Some(claims) = verify(&gw, &slack, &token, &Method::GET, peer.map(|p| p.0.0)) else {
        return forged_page();
    };
    let now = Utc::now();
    let item = match link_state(&gw, &claims, now).await {
        Ok(LinkState::Open(item)) => item,
        Ok(other) => return closed_page(other, now),
        Err(e) => return audit_unreadable(e),
    };
    let session = login::from_cookie(&gw, &headers);
    if slack.config.link_requires_login && session.is_none() {
        let again = query
            .as_deref()
            .is_some_and(|q| q.split('&').any(|kv| kv == "again=1"));
        if !again {
            return html(
                StatusCode::OK,
                page::reload(&format!("/approve/{token}?again=1")),
            );
        }
        return html(StatusCode::UNAUTHORIZED, page::login_needed());
    }
    let login = session.filter(|_| slack.config.link_requires_login);
    let csrf = slack
        .key
        .page_csrf(&token, login.as_ref().map(|s| s.csrf.as_str()), now);
    let path = format!("/approve/{token}");
    html(
        StatusCode::OK,
        page::confirm(&page::Confirm {
            item: &item,
            actions: claims.actions,
            action_path: &path,
            csrf: &csrf,
            ask_name: !slack.config.link_requires_login,
            approver: login.as_ref().map(|s| s.approver.as_str()),
            now,
        }),
    )
}

/// A typed name, cleaned: no control characters, at most 64 characters.
fn clean_name(name: &str) -> Option<String> {
    let name: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// `POST /approve/{token}`: decides, once.
pub async fn decide(
    State(gw): State<Gateway>,
    Path(token): Path<String>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Response {
    let Some(slack) = gw.slack.clone() else {
        return not_configured();
    };
    let Some(claims) = verify(&gw, &slack, &token, &Method::POST, peer.map(|p| p.0.0)) else {
        return forged_page();
    };
    let refused = |detail: &str| {
        notice(
            StatusCode::FORBIDDEN,
            Tone::Bad,
            "Nothing was decided",
            &[detail, "Open the link from Slack again."],
        )
    };
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    let same_origin = fetch_site == Some(b"same-origin".as_slice());
    if fetch_site == Some(b"cross-site".as_slice())
        || (!same_origin && login::check_same_origin(&gw, &headers).is_err())
    {
        return refused("The form was sent from another site.");
    }
    let session = login::from_cookie(&gw, &headers);
    if slack.config.link_requires_login && session.is_none() {
        return html(StatusCode::UNAUTHORIZED, page::login_needed());
    }
    let login = session.filter(|_| slack.config.link_requires_login);
    if let Some(s) = &login
        && s.role(&gw.config) == crate::config::Role::Viewer
    {
        return refused("Your Airlock role is viewer: you can see held calls but not decide them.");
    }
    let form = form_pairs(&body);
    let now = Utc::now();
    let csrf = form_value(&form, "csrf").unwrap_or("");
    if !slack
        .key
        .check_csrf(&token, login.as_ref().map(|s| s.csrf.as_str()), csrf, now)
    {
        return refused(
            "The form did not come from this link's page, or the page is more than an hour old.",
        );
    }
    let verdict = match form_value(&form, "action") {
        Some("approve") if claims.actions.allows_approve() => Choice::Approve,
        Some("approve") => return refused("This link can only deny."),
        Some("deny") => Choice::Deny,
        _ => return refused("Choose Approve or Deny."),
    };
    let comment = form_value(&form, "comment")
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if comment.is_some_and(|c| c.len() > MAX_COMMENT) {
        return refused("The comment is longer than 4096 bytes.");
    }
    match link_state(&gw, &claims, now).await {
        Ok(LinkState::Open(_)) => {}
        Ok(other) => return closed_page(other, now),
        Err(e) => return audit_unreadable(e),
    }
    let decider = match &login {
        Some(s) => s.approver.clone(),
        None => match form_value(&form, "name").and_then(clean_name) {
            Some(name) => format!("{name} (Slack link)"),
            None => "Slack link".to_owned(),
        },
    };
    let id = &claims.pending_id;
    if login.is_none() && crate::quorum::needs_named_approvers(&gw, id) {
        // Without a login the name is whatever the clicker typed: it cannot
        // count as one of several approvers, nor prove a group.
        return notice(
            StatusCode::FORBIDDEN,
            Tone::Bad,
            "Nothing was decided",
            &[&format!(
                "`{decider}` is not signed in; this call needs approvers signed in by name (several approvers, or approver groups). Decide it on the dashboard, or ask an admin to set link_requires_login."
            )],
        );
    }
    let decider = crate::quorum::Decider {
        name: decider,
        voter: login.as_ref().map(|s| s.voter()),
        groups: login
            .as_ref()
            .map(|s| s.groups(&gw.config))
            .unwrap_or_default(),
    };
    let decided = match crate::quorum::decide_as(
        &gw,
        id,
        verdict,
        decider,
        CHANNEL,
        comment.map(str::to_owned),
    )
    .await
    {
        Ok(crate::quorum::Decided::Vote { approvals, needed }) => {
            let counted = format!(
                "{} of {needed} approvals so far ({}). The call stays held until {needed} different approvers approve.",
                approvals.len(),
                approvals.join(", ")
            );
            return notice(
                StatusCode::OK,
                Tone::Ok,
                "Your approval counts",
                &[&counted],
            );
        }
        Ok(crate::quorum::Decided::Final(r)) => Ok(r),
        Err(crate::quorum::QuorumError::Decide(e)) => Err(e),
        Err(e) => {
            return notice(
                StatusCode::FORBIDDEN,
                Tone::Bad,
                "Nothing was decided",
                &[&e.to_string()],
            );
        }
    };
    match decided {
        Ok(r) => {
            let (tone, heading, detail) = match verdict {
                Choice::Approve => (
                    Tone::Ok,
                    format!("Approved by {}", r.decider.unwrap_or_default()),
                    "The call has been released to the upstream.",
                ),
                _ => (
                    Tone::Ok,
                    format!("Denied by {}", r.decider.unwrap_or_default()),
                    "The agent has been told the call was denied.",
                ),
            };
            notice(StatusCode::OK, tone, &heading, &[detail])
        }
        Err(DecideError::AlreadyDecided(r)) => closed_page(
            match r.verdict {
                Verdict::TimedOut => LinkState::Expired(Some((r.describe(), r.at))),
                _ => LinkState::Decided(r.describe(), r.at),
            },
            now,
        ),
        Err(DecideError::NotFound(_)) => match link_state(&gw, &claims, now).await {
            Ok(LinkState::Open(_)) | Err(_) => closed_page(LinkState::Abandoned, now),
            Ok(other) => closed_page(other, now),
        },
        Err(e @ DecideError::AgentUserOnly(_)) => notice(
            StatusCode::FORBIDDEN,
            Tone::Bad,
            "Nothing was decided",
            &[&e.to_string()],
        ),
        Err(e @ DecideError::Audit(_)) => notice(
            StatusCode::SERVICE_UNAVAILABLE,
            Tone::Bad,
            "Not recorded: the call was refused",
            &[&e.to_string()],
        ),
        Err(e @ DecideError::Store(_)) => notice(
            StatusCode::SERVICE_UNAVAILABLE,
            Tone::Bad,
            "Nothing was decided",
            &[&e.to_string(), "Try again once the approval store is back."],
        ),
    }
}
