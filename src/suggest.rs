//! "Did you mean …?" for unknown keys and values in policies and configs.

/// Splits "unknown field `x`, expected one of `a`, `b`" into ("x", ["a", "b"]).
pub fn parse_unknown(message: &str, prefix: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix(prefix)?;
    let (name, tail) = rest.split_once('`')?;
    let expected = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((name.to_owned(), expected))
}

pub fn suggestion(got: &str, known: &[String]) -> String {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(got, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!(", did you mean `{k}`?"))
        .unwrap_or_default()
}
