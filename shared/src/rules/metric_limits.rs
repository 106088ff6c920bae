//! What a metric may ask of the controller (issue #17): which headers it sends, where Datadog keys
//! go, how long a request may take, how often it runs and how large its expressions are. The
//! limits themselves are in `egress_rules`, shared with the controller, which enforces them again
//! at run time; here they deny at admission, with the field and the fix.

use super::egress_rules::{
    AnalysisBounds, DATADOG_SITES, MAX_CONDITION_LEN, MAX_EXPRESSION_DEPTH, MAX_JSON_PATH_LEN,
    datadog_site, refused_header,
};
use super::names;
use crate::errors::{FieldError, FieldPath, Report};
use crate::types::analysis::WebHeader;
use std::time::Duration;

/// The webhook flag that sets [`AnalysisBounds::max_timeout`], named in denials.
pub const MAX_TIMEOUT_FLAG: &str = "--analysis-max-timeout";
/// The webhook flag that sets [`AnalysisBounds::min_interval`], named in denials.
pub const MIN_INTERVAL_FLAG: &str = "--analysis-min-interval";

/// Longest key of a Secret's data, as the API server allows.
const MAX_SECRET_KEY_LEN: usize = 253;

/// Checks the headers of a web metric at `path` (`...web.headers`).
pub(super) fn check_headers(headers: &[WebHeader], path: &FieldPath, report: &mut Report) {
    for (i, h) in headers.iter().enumerate() {
        let hp = path.index(i);
        check_header_key(&h.key, hp.child("key"), report);
        let literal = !h.value.is_empty();
        match (&h.value_from, literal) {
            (Some(_), true) => report.error(FieldError::forbidden(
                hp.child("valueFrom"),
                "set value or valueFrom, not both",
            )),
            (None, false) => report.error(FieldError::required(
                hp.child("value"),
                "set value, or valueFrom.secretKeyRef (name and key of a Secret) for a credential",
            )),
            _ => {}
        }
        if let Some(from) = &h.value_from {
            let sp = hp.child("valueFrom").child("secretKeyRef");
            let r = &from.secret_key_ref;
            if let Some(why) = names::dns1123_subdomain(&r.name) {
                report.error(if r.name.is_empty() {
                    FieldError::required(sp.child("name"), "the name of a Secret in this namespace")
                } else {
                    FieldError::invalid(sp.child("name"), &r.name, why)
                });
            }
            if let Some(why) = secret_key(&r.key) {
                report.error(if r.key.is_empty() {
                    FieldError::required(sp.child("key"), "a key of the Secret's data")
                } else {
                    FieldError::invalid(sp.child("key"), &r.key, why)
                });
            }
        }
    }
}

fn check_header_key(key: &str, path: FieldPath, report: &mut Report) {
    if key.trim().is_empty() {
        report.error(FieldError::required(path, "a header name"));
    } else if let Some(why) = refused_header(key) {
        report.error(FieldError::forbidden(
            path,
            format!("header {key:?} may not be set by a metric: {why}"),
        ));
    } else if !is_http_token(key) {
        report.error(FieldError::invalid(
            path,
            key,
            "a header name is letters, digits and !#$%&'*+-.^_`|~ only (no spaces, colons or other separators)",
        ));
    }
}

/// Whether `s` is an HTTP token (RFC 9110 `tchar`s), the syntax of a header name.
fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why `key` is not a valid key of a Secret's data, or None when it is.
fn secret_key(key: &str) -> Option<String> {
    if key.is_empty() {
        Some("must not be empty".into())
    } else if key.len() > MAX_SECRET_KEY_LEN {
        Some(format!(
            "must be no more than {MAX_SECRET_KEY_LEN} characters (is {})",
            key.len()
        ))
    } else if key == "." || key == ".." {
        Some("must not be '.' or '..'".into())
    } else if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        Some("a Secret data key must consist of alphanumeric characters, '-', '_' or '.'".into())
    } else {
        None
    }
}

/// Checks a Datadog `address` that is already an http(s) URL: it must be one of Datadog's sites.
pub(super) fn check_datadog_address(address: &str, path: FieldPath, report: &mut Report) {
    if !datadog_site(address) {
        report.error(FieldError::invalid(
            path,
            address,
            format!(
                "must be one of Datadog's API sites ({}); to send the keys anywhere else, remove address and put the custom address in the key `address` of the Secret secretRef names, so only who may write the keys chooses where they go",
                DATADOG_SITES.join(", ")
            ),
        ));
    }
}

/// Denies a request `timeout` above the webhook's longest.
pub(super) fn check_timeout(
    text: &str,
    timeout: Duration,
    bounds: &AnalysisBounds,
    path: FieldPath,
    report: &mut Report,
) {
    if timeout > bounds.max_timeout {
        let max = show(bounds.max_timeout);
        report.error(FieldError::invalid(
            path,
            text,
            format!(
                "longer than the longest analysis request timeout, {max} (the webhook's {MAX_TIMEOUT_FLAG}); set at most {max}"
            ),
        ));
    }
}

/// Denies a metric `interval` below the webhook's shortest.
pub(super) fn check_interval(
    text: &str,
    interval: Duration,
    bounds: &AnalysisBounds,
    path: FieldPath,
    report: &mut Report,
) {
    if interval < bounds.min_interval {
        let min = show(bounds.min_interval);
        report.error(FieldError::invalid(
            path,
            text,
            format!(
                "shorter than the shortest analysis interval, {min} (the webhook's {MIN_INTERVAL_FLAG}); set at least {min}"
            ),
        ));
    }
}

/// Checks a web metric's `jsonPath` against the size caps; true when it is within them.
pub(super) fn check_json_path(text: &str, path: FieldPath, report: &mut Report) -> bool {
    check_expression(
        text,
        MAX_JSON_PATH_LEN,
        "a JSONPath",
        "select a shorter path to the value",
        path,
        report,
    )
}

/// Checks a CEL condition against the size caps; true when it is within them (and may be compiled:
/// a deeply nested expression must not reach the parser).
pub(super) fn check_condition(text: &str, path: FieldPath, report: &mut Report) -> bool {
    check_expression(
        text,
        MAX_CONDITION_LEN,
        "a CEL condition",
        "write a simpler condition over `result`",
        path,
        report,
    )
}

fn check_expression(
    text: &str,
    max_len: usize,
    what: &str,
    fix: &str,
    path: FieldPath,
    report: &mut Report,
) -> bool {
    if text.len() > max_len {
        report.error(FieldError::invalid(
            path,
            shorten(text),
            format!(
                "{what} may be at most {max_len} bytes, this one is {}; {fix}",
                text.len()
            ),
        ));
        return false;
    }
    let depth = expression_depth(text);
    if depth > MAX_EXPRESSION_DEPTH {
        report.error(FieldError::invalid(
            path,
            shorten(text),
            format!(
                "{what} may nest brackets and parentheses at most {MAX_EXPRESSION_DEPTH} deep, this one {depth}; {fix}"
            ),
        ));
        return false;
    }
    true
}

/// The deepest nesting of `(`, `[` and `{` in an expression, outside quoted strings.
pub fn expression_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A long value as shown in a denial: its start, so the message stays readable.
fn shorten(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// A bound as written in a flag: `30s`, `1m30s`, or milliseconds below a second.
fn show(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        crate::units::format_duration(d)
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(expression_depth("result < 0.05"), 0);
        assert_eq!(expression_depth("{$.data.result[0].value[1]}"), 2);
        assert_eq!(expression_depth("size(result) > 0 && result[0] < 1"), 1);
        assert_eq!(
            expression_depth("result == '((((' || result == \"[\\\"[\""),
            0
        );
        assert_eq!(expression_depth(&"(".repeat(40)), 40);
    }

    #[test]
    fn tokens_and_secret_keys() {
        assert!(is_http_token("X-Scope-OrgID"));
        assert!(!is_http_token("Bad Header"));
        assert!(!is_http_token("a:b"));
        assert_eq!(secret_key("api-key.v1_2"), None);
        assert!(secret_key("a/b").is_some());
        assert!(secret_key("..").is_some());
        assert!(secret_key(&"k".repeat(254)).is_some());
    }
}
