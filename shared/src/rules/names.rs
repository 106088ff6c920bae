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

/// Characters a RoleSet name adds to its StormService's: `-<revision (10)>-<index (up to 3)>`.
pub const ROLESET_SUFFIX: usize = 15;
/// Characters a Pod name adds to its RoleSet's besides the role name: `-<role>-<index (up to 3)>`.
pub const POD_SUFFIX: usize = 5;

/// The names the controller derives from a StormService must be valid: RoleSet names are label
/// values (`roleset-name`, at most 63), stateful Pods' names are their hostnames (at most 63), and
/// the headless Service `<name>` (per-Pod DNS) needs a DNS-1035 name. A name that cannot be is
/// denied here, with the field and the fix, rather than shortened into names nobody can predict.
pub(super) fn check_derived(
    obj: &crate::types::stormservice::StormService,
    report: &mut crate::errors::Report,
) {
    use crate::errors::{FieldError, FieldPath};
    let Some(name) = obj.metadata.name.as_deref() else {
        return;
    };
    let max_name = 63 - ROLESET_SUFFIX;
    if name.len() > max_name {
        report.error(FieldError::invalid(
            FieldPath::new("metadata").child("name"),
            name,
            format!(
                "must be no more than {max_name} characters (is {}): RoleSets are named <name>-<revision>-<index> and that name is a label value of at most 63 characters; choose a shorter name",
                name.len()
            ),
        ));
        return;
    }
    if dns1035_label(name).is_some() {
        report.warn(
            FieldPath::new("metadata").child("name"),
            format!(
                "\"{name}\" is not a DNS-1035 label (it must start with a letter), so the headless Service {name} that gives each Pod a DNS name cannot be created; choose a name that starts with a letter if the engines rendezvous by Pod DNS name"
            ),
        );
    }
    let roles = || {
        FieldPath::new("spec")
            .child("template")
            .child("spec")
            .child("roles")
    };
    for (i, role) in obj
        .spec
        .template
        .spec
        .iter()
        .flat_map(|s| s.roles.iter())
        .enumerate()
        .filter(|(_, r)| r.stateful == Some(true))
    {
        let max_role = 63 - ROLESET_SUFFIX - POD_SUFFIX - name.len();
        if role.name.len() > max_role {
            report.error(FieldError::invalid(
                roles().index(i).child("name"),
                &role.name,
                format!(
                    "must be no more than {max_role} characters with a StormService named \"{name}\": a stateful role's Pods are named <name>-<revision>-<index>-<role>-<index> and use that name as their hostname (at most 63); shorten the role name or the StormService's"
                ),
            ));
        }
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
