//! Which argument keys are stored as `"[redacted]"` (and hidden from Slack).
//!
//! Patterns are globs (`*`, `?`, `[abc]`) matched against the whole key,
//! case-insensitively, at any depth: in nested objects and in objects inside
//! arrays. A key that matches has its whole value replaced, whatever it is.
//! The patterns are compiled once into a [`Redactor`]; the writer thread and
//! Slack share it.

use std::borrow::Cow;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::Value;

/// What a redacted value becomes.
pub const REDACTED: &str = "[redacted]";

/// The built-in patterns, applied unless `[audit] redact_defaults = false`.
///
/// Chosen to catch the usual spellings of credentials (`password`,
/// `db_password`, `clientSecret`, `access_token`, `x-api-key`, `Authorization`,
/// `private_key`, `credentials`) without swallowing ordinary arguments: a
/// token *count* (`max_tokens`, `token_count`) is not a secret, so `token` is
/// only matched at the end of a key (`*token`), not anywhere in it.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "*password*",
    "*passwd*",
    "pwd",
    "*passphrase*",
    "*secret*",
    "*token",
    "*api_key*",
    "*api-key*",
    "*apikey*",
    "*access_key*",
    "*accesskey*",
    "*private_key*",
    "*private-key*",
    "*privatekey*",
    "*authorization",
    "*cookie*",
    "*credential*",
    "*session_key*",
    "*sessionkey*",
    "*connection_string*",
    "*connectionstring*",
];

/// A compiled set of key patterns.
#[derive(Clone, Default)]
pub struct Redactor {
    set: GlobSet,
    /// The patterns as given (lower-cased), for `Debug` and docs.
    patterns: Vec<String>,
}

/// A pattern that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("`{pattern}` is not a valid pattern: {reason}")]
pub struct BadPattern {
    pub pattern: String,
    pub reason: String,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Redactor").field(&self.patterns).finish()
    }
}

impl Redactor {
    /// Compiles `patterns`, after the built-in ones when `defaults` is true.
    pub fn new<S: AsRef<str>>(patterns: &[S], defaults: bool) -> Result<Redactor, BadPattern> {
        let builtin = DEFAULT_PATTERNS.iter().filter(|_| defaults).copied();
        let all: Vec<String> = builtin
            .chain(patterns.iter().map(AsRef::as_ref))
            // Keys are lower-cased before matching, so the patterns are too
            // (and case-sensitive globs keep globset's fast literal paths).
            .map(str::to_lowercase)
            .collect();
        let mut builder = GlobSetBuilder::new();
        for pattern in &all {
            let glob = Glob::new(pattern).map_err(|e| BadPattern {
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| BadPattern {
            pattern: e.glob().unwrap_or_default().to_owned(),
            reason: e.kind().to_string(),
        })?;
        Ok(Redactor { set, patterns: all })
    }

    /// Only the built-in patterns.
    pub fn defaults() -> Redactor {
        Redactor::new::<&str>(&[], true).expect("the built-in patterns are valid globs")
    }

    /// No redaction at all.
    pub fn none() -> Redactor {
        Redactor::default()
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether values under `key` are redacted.
    pub fn matches(&self, key: &str) -> bool {
        if self.set.is_empty() {
            return false;
        }
        let key: Cow<'_, str> = if key.chars().any(char::is_uppercase) {
            Cow::Owned(key.to_lowercase())
        } else {
            Cow::Borrowed(key)
        };
        self.set.is_match(key.as_ref())
    }

    /// Replaces the value of every matching key, at any depth; returns
    /// whether anything was replaced.
    pub fn redact(&self, value: &mut Value) -> bool {
        if self.set.is_empty() {
            return false;
        }
        let mut changed = false;
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if self.matches(k) {
                        if v.as_str() != Some(REDACTED) {
                            *v = Value::String(REDACTED.into());
                        }
                        changed = true;
                    } else {
                        changed |= self.redact(v);
                    }
                }
            }
            Value::Array(items) => {
                for v in items {
                    changed |= self.redact(v);
                }
            }
            _ => {}
        }
        changed
    }
}

/// [`Redactor::redact`] as a function (Slack and the writer call it so).
pub fn redact(value: &mut Value, redactor: &Redactor) -> bool {
    redactor.redact(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exact_names_match_case_insensitively_at_any_depth() {
        let r = Redactor::new(&["password", "token"], false).unwrap();
        let mut v = json!({"user": "bob", "Password": "x", "nested": [{"TOKEN": "t", "ok": 1}]});
        assert!(r.redact(&mut v));
        assert_eq!(
            v,
            json!({"user": "bob", "Password": "[redacted]", "nested": [{"TOKEN": "[redacted]", "ok": 1}]})
        );
        assert!(!Redactor::new(&["secret"], false).unwrap().redact(&mut v));
    }

    #[test]
    fn globs_match_the_whole_key() {
        let r = Redactor::new(&["*secret*", "api_?ey"], false).unwrap();
        for key in [
            "secret_value",
            "ClientSecret",
            "SECRET",
            "api_key",
            "API_KEY",
            "api_Xey",
        ] {
            assert!(r.matches(key), "{key}");
        }
        for key in ["api_keys", "my_api_key", "secre", "id"] {
            assert!(!r.matches(key), "{key}");
        }
    }

    #[test]
    fn the_defaults_catch_common_credential_names_but_not_token_counts() {
        let r = Redactor::defaults();
        for key in [
            "password",
            "db_password",
            "passwd",
            "PWD",
            "passphrase",
            "secret",
            "secret_value",
            "clientSecret",
            "token",
            "access_token",
            "refreshToken",
            "api_key",
            "apiKey",
            "x-api-key",
            "openai_api_key",
            "aws_secret_access_key",
            "private_key",
            "privateKey",
            "Authorization",
            "proxy-authorization",
            "cookie",
            "Set-Cookie",
            "credentials",
            "credential_id",
            "connection_string",
        ] {
            assert!(r.matches(key), "{key} should be redacted");
        }
        for key in [
            "id",
            "max_tokens",
            "token_count",
            "tokens",
            "user",
            "query",
            "keyword",
            "author",
            "cwd",
        ] {
            assert!(!r.matches(key), "{key} should be kept");
        }
    }

    #[test]
    fn user_patterns_add_to_the_defaults_unless_they_are_turned_off() {
        let with = Redactor::new(&["ssn"], true).unwrap();
        assert!(with.matches("ssn") && with.matches("password"));
        let without = Redactor::new(&["ssn"], false).unwrap();
        assert!(without.matches("ssn") && !without.matches("password"));
        let mut v = json!({"password": "x"});
        assert!(!Redactor::none().redact(&mut v));
    }

    #[test]
    fn whole_values_are_replaced_inside_arrays_of_objects() {
        let r = Redactor::defaults();
        let mut v = json!({
            "accounts": [
                {"name": "a", "api_key": "k1", "auth": {"passwd": "p", "secret_value": ["s"]}},
                {"name": "b", "credentials": {"user": "u", "pass": "p"}}
            ]
        });
        assert!(r.redact(&mut v));
        assert_eq!(
            v,
            json!({
                "accounts": [
                    {"name": "a", "api_key": "[redacted]", "auth": {"passwd": "[redacted]", "secret_value": "[redacted]"}},
                    {"name": "b", "credentials": "[redacted]"}
                ]
            })
        );
    }

    #[test]
    fn a_bad_glob_is_named() {
        let e = Redactor::new(&["pass[word"], false).unwrap_err();
        assert_eq!(e.pattern, "pass[word");
    }
}
