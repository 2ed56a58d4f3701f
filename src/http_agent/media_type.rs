//! The `Content-Type` of an agent's POST, read exactly (RFC 9110 §8.3.1).
//!
//! `application/json` in any letter case, optionally followed by parameters
//! (`; charset=utf-8`). A prefix match would let `application/jsonfoo` or
//! `application/json-seq` through; those are refused like any other type.

/// Whitespace allowed around `;` (RFC 9110 OWS).
const OWS: [char; 2] = [' ', '\t'];

/// Whether a `Content-Type` value says JSON Airlock can read: the media type
/// is `application/json`, its parameters are well formed, and a `charset`
/// parameter, if present, is `utf-8` (MCP messages are UTF-8; Airlock reads
/// the body as UTF-8 and must not disagree with a peer about its text).
pub fn is_json(value: &str) -> bool {
    let value = value.trim_matches(OWS);
    let (essence, parameters) = match value.split_once(';') {
        Some((essence, rest)) => (essence.trim_end_matches(OWS), rest),
        None => (value, ""),
    };
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    let Some(parameters) = read_parameters(parameters) else {
        return false;
    };
    parameters
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("charset"))
        .all(|(_, value)| value.eq_ignore_ascii_case("utf-8"))
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// The parameters after the first `;` (`*( OWS ";" OWS [ parameter ] )`,
/// the first `;` already taken); `None` when they are malformed.
fn read_parameters(rest: &str) -> Option<Vec<(&str, String)>> {
    let mut out = Vec::new();
    let mut s = rest;
    let mut first = true;
    loop {
        if !first {
            s = s.trim_start_matches(OWS);
            if s.is_empty() {
                return Some(out);
            }
            s = s.strip_prefix(';')?;
        }
        first = false;
        s = s.trim_start_matches(OWS);
        if s.is_empty() || s.starts_with(';') {
            continue; // an empty parameter is allowed
        }
        let name_len = s.find(|c| !is_tchar(c)).unwrap_or(s.len());
        if name_len == 0 {
            return None;
        }
        let name = &s[..name_len];
        s = s[name_len..].strip_prefix('=')?;
        let value = if let Some(quoted) = s.strip_prefix('"') {
            let (value, after) = read_quoted(quoted)?;
            s = after;
            value
        } else {
            let len = s.find(|c| !is_tchar(c)).unwrap_or(s.len());
            if len == 0 {
                return None;
            }
            let value = s[..len].to_owned();
            s = &s[len..];
            value
        };
        out.push((name, value));
    }
}

/// A quoted-string's content (after its opening quote) and what follows it.
fn read_quoted(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c if c.is_control() && c != '\t' => return None,
            c => value.push(c),
        }
    }
    None // no closing quote
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_in_any_case_with_or_without_parameters_is_json() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json ; charset=\"utf-8\"",
            "application/json;",
            "application/json; ; q=1",
            "application/json; profile=\"a;b\"",
            "  application/json\t",
        ] {
            assert!(is_json(ok), "{ok}");
        }
    }

    #[test]
    fn other_types_sharing_the_prefix_are_not_json() {
        for bad in [
            "application/jsonfoo",
            "application/json-seq",
            "application/json+x",
            "application/json foo",
            "application/json/x",
            "application/jso",
            "application/ json",
            "text/json",
            "application/x-ndjson",
            "",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn malformed_parameters_or_another_charset_are_not_json() {
        for bad in [
            "application/json; charset=latin1",
            "application/json; charset=utf-16",
            "application/json; charset=utf-8; charset=utf-16",
            "application/json; charset",
            "application/json; =utf-8",
            "application/json; charset=",
            "application/json; charset=\"utf-8",
            "application/json; charset=utf-8 x",
            "application/json; a=b=c",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}
