//! What Airlock reads from a verified identity: the user's groups (from the
//! configured claim) and a name to record as the decider.

use serde_json::{Map, Value};

/// The claim at `path`: the literal key first (claim names may contain dots,
/// e.g. `https://example.com/groups`), else a dotted path into nested
/// objects (`realm_access.roles`).
pub fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// The user's groups: the claim's strings (an array, or one string).
/// None when the claim is absent.
pub fn groups(claims: &Map<String, Value>, path: &str) -> Option<Vec<String>> {
    match claim(claims, path)? {
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        Value::String(s) => Some(vec![s.clone()]),
        _ => Some(Vec::new()),
    }
}

/// Longest name recorded for a user.
const MAX_NAME: usize = 200;

/// Who the user is, for people: `email`, else `preferred_username`, else
/// `name`, else the subject. One line, at most 200 characters.
pub fn display_name(claims: &Map<String, Value>, subject: &str) -> String {
    let name = ["email", "preferred_username", "name"]
        .iter()
        .filter_map(|k| claims.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .find(|v| !v.is_empty())
        .unwrap_or(subject);
    name.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_NAME)
        .collect()
}

/// Whether the claims already say who the user is beyond the subject.
pub fn has_name(claims: &Map<String, Value>) -> bool {
    ["email", "preferred_username", "name"]
        .iter()
        .any(|k| claims.get(*k).and_then(Value::as_str).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn groups_come_from_arrays_strings_and_nested_claims() {
        let c = map(json!({
            "groups": ["a", 3, "b"],
            "role": "ops",
            "realm_access": { "roles": ["admins"] },
            "https://example.com/groups": ["ns"],
            "odd": { "x": 1 }
        }));
        assert_eq!(groups(&c, "groups").unwrap(), ["a", "b"]);
        assert_eq!(groups(&c, "role").unwrap(), ["ops"]);
        assert_eq!(groups(&c, "realm_access.roles").unwrap(), ["admins"]);
        assert_eq!(groups(&c, "https://example.com/groups").unwrap(), ["ns"]);
        assert_eq!(groups(&c, "odd").unwrap(), Vec::<String>::new());
        assert!(groups(&c, "missing").is_none());
        assert!(groups(&c, "realm_access.nope").is_none());
    }

    #[test]
    fn the_name_prefers_email_then_username_then_name_then_subject() {
        let all = map(json!({"email": "a@x", "preferred_username": "al", "name": "Al"}));
        assert_eq!(display_name(&all, "s1"), "a@x");
        let user = map(json!({"email": "", "preferred_username": "al", "name": "Al"}));
        assert_eq!(display_name(&user, "s1"), "al");
        assert_eq!(display_name(&map(json!({"name": "Al"})), "s1"), "Al");
        assert_eq!(display_name(&map(json!({})), "s1"), "s1");
        assert_eq!(
            display_name(&map(json!({"name": "a\nb"})), "s"),
            "a b",
            "one line"
        );
        assert!(has_name(&all) && !has_name(&map(json!({"sub": "x"}))));
    }
}
