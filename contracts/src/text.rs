//! Text that crosses the boundary: values a caller sent, shown back in error messages and
//! headers.
//!
//! Rules:
//! - A value echoed into a message is quoted and cut to [`ECHO_CHARS`] characters (a 70 kB
//!   field must not make the reply exceed the server's payload limit).
//! - A header value never holds CR, LF or other control characters (the NATS client panics on
//!   CR/LF, and a header is one line) and is cut to [`HEADER_CHARS`] characters.
//! - Free-text request fields that end up in events or headers are bounded and single-line:
//!   [`check_token`] says what is wrong with one.

/// Characters of a caller's value shown in a message.
pub const ECHO_CHARS: usize = 64;
/// Characters of a header value (the first line of an error message, say).
pub const HEADER_CHARS: usize = 256;

/// A caller's value as a message shows it: quoted, control characters escaped, at most
/// [`ECHO_CHARS`] characters, with the full size said when it was cut.
pub fn echo(value: &str) -> String {
    let count = value.chars().count();
    if count <= ECHO_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(ECHO_CHARS).collect();
    format!("{head:?}… ({} bytes)", value.len())
}

/// `text` made fit for a header value: its first line, control characters dropped, at most
/// [`HEADER_CHARS`] characters.
pub fn header_value(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut value: String = line
        .chars()
        .filter(|c| !c.is_control())
        .take(HEADER_CHARS)
        .collect();
    if value.is_empty() {
        value.push_str("error");
    }
    value
}

/// Checks a free-text token a caller sent (an idempotency key, a correlation id): 1 to `max`
/// characters, printable, no spaces or line breaks. Returns what is wrong with it.
pub fn check_token(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.chars().count() > max {
        return Err(format!(
            "is {} characters long; at most {max} are accepted",
            value.chars().count()
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "contains {c:?}; only printable characters without spaces are accepted"
        ));
    }
    Ok(())
}

/// Checks a one-line free text (a cancel reason): at most `max` characters, no control
/// characters.
pub fn check_line(value: &str, max: usize) -> Result<(), String> {
    if value.chars().count() > max {
        return Err(format!(
            "is {} characters long; at most {max} are accepted",
            value.chars().count()
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_sized() {
        let long = "x".repeat(70_000);
        let shown = echo(&long);
        assert!(shown.len() < 120, "{shown}");
        assert!(shown.ends_with("(70000 bytes)"), "{shown}");
        assert_eq!(echo("EVENTS"), "\"EVENTS\"");
        assert_eq!(echo("a\nb"), "\"a\\nb\"");
    }

    #[test]
    fn header_values_are_one_clean_line() {
        assert_eq!(header_value("first\r\nsecond"), "first");
        assert_eq!(header_value("tab\there"), "tabhere");
        assert_eq!(header_value("\n"), "error");
        assert_eq!(header_value(&"y".repeat(1000)).len(), HEADER_CHARS);
    }

    #[test]
    fn tokens_are_bounded_and_printable() {
        assert!(check_token("req-1", 256).is_ok());
        assert!(check_token("", 256).unwrap_err().contains("empty"));
        assert!(check_token("a\nb", 256).unwrap_err().contains("\\n"));
        assert!(
            check_token(&"k".repeat(257), 256)
                .unwrap_err()
                .contains("257")
        );
        assert!(check_line("disk full, stopping", 1024).is_ok());
        assert!(check_line("two\rlines", 1024).is_err());
    }
}
