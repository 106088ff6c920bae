//! Kubernetes name formats.

/// Checks a label-shaped name: at most 63 characters of lowercase alphanumerics or '-', a first
/// character `first_ok` accepts, an alphanumeric last character; `why` explains the format.
fn label(name: &str, first_ok: fn(u8) -> bool, why: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 63 {
        return Some(format!(
            "must be no more than 63 characters (is {})",
            name.len()
        ));
    }
    let bytes = name.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = bytes.iter().all(|b| alnum(*b) || *b == b'-')
        && first_ok(bytes[0])
        && alnum(bytes[bytes.len() - 1]);
    if ok { None } else { Some(why.into()) }
}

/// Why a name is not a DNS-1035 label, or `None` when it is. At most 63 lowercase alphanumerics or
/// '-', starting with a letter, ending alphanumeric. Service names must be DNS-1035 labels.
pub fn dns1035_label(name: &str) -> Option<String> {
    label(
        name,
        |b| b.is_ascii_lowercase(),
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an \
         alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123')",
    )
}

/// A DNS-1123 label (role names): like DNS-1035 but may start with a digit.
pub fn dns1123_label(name: &str) -> Option<String> {
    label(
        name,
        |b| b.is_ascii_lowercase() || b.is_ascii_digit(),
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must \
         start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')",
    )
}

/// A DNS-1123 subdomain (names of most objects: Ingresses, VirtualServices, AnalysisTemplates).
pub fn dns1123_subdomain(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 253 {
        return Some(format!(
            "must be no more than 253 characters (is {})",
            name.len()
        ));
    }
    if name.split('.').all(|part| dns1123_label(part).is_none()) {
        None
    } else {
        Some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and \
             must start and end with an alphanumeric character (e.g. 'example.com')"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1035() {
        assert!(dns1035_label("my-app-stable").is_none());
        assert!(dns1035_label("1app").is_some());
        assert!(dns1035_label("My-App").is_some());
        assert!(dns1035_label("app-").is_some());
        assert!(dns1035_label(&"a".repeat(64)).is_some());
        assert!(dns1035_label("").is_some());
    }

    #[test]
    fn dns1123() {
        assert!(dns1123_label("1p1d").is_none());
        assert!(dns1123_label("pre_fill").is_some());
        assert!(dns1123_subdomain("my.app-1").is_none());
        assert!(dns1123_subdomain("my..app").is_some());
    }
}
