//! The shell of the few server-made HTML pages (Slack's confirm page, the
//! sign-in pages): the dashboard's look (`/app.css` plus the small
//! `/slack/confirm.css`), no script, no inline style, and one escaper for
//! every untrusted value put in them.

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page around `main` (already escaped HTML). `referrer` is the page's
/// referrer policy; `foot` (HTML) closes the card, empty for none.
pub fn page(title: &str, head_extra: &str, main: &str, referrer: &str, foot: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="color-scheme" content="light dark">
  <meta name="referrer" content="{referrer}">
  <meta name="robots" content="noindex, nofollow">
  {head_extra}
  <title>{title} · Airlock</title>
  <link rel="icon" href="/favicon.svg" type="image/svg+xml">
  <link rel="stylesheet" href="/app.css">
  <link rel="stylesheet" href="/slack/confirm.css">
</head>
<body>
  <main class="confirm" id="main">
    <header class="confirm-brand"><img src="/favicon.svg" alt="" width="24" height="24"> Airlock</header>
{main}{foot}
  </main>
</body>
</html>
"#,
        title = esc(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_special_character_is_escaped_and_the_title_too() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let html = page("<b>", "", "<p>ok</p>", "no-referrer", "");
        assert!(html.contains("<title>&lt;b&gt; · Airlock</title>"));
        assert!(html.contains(r#"content="no-referrer""#));
    }
}
