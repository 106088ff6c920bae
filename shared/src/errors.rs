//! Field errors and warnings in the style of Kubernetes' `field.ErrorList`.
//!
//! Every problem names the field it is about (`spec.rolloutStrategy.canary.steps[1].weight`) and says
//! what is wrong and, where it helps, how to fix it. Errors deny an object; warnings are returned to
//! the user (kubectl prints them) and never deny on their own.

use std::fmt;

/// A path to a field, rendered as `spec.template.spec.roles[0].name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FieldPath(String);

impl FieldPath {
    /// A path starting at a top-level field such as `spec` or `metadata`.
    pub fn new(root: &str) -> Self {
        Self(root.to_string())
    }

    /// The path of a child field.
    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            return Self(name.to_string());
        }
        // Paths are built for every field a rule looks at, error or not: plain appends, not `format!`.
        let mut s = String::with_capacity(self.0.len() + 1 + name.len());
        s.push_str(&self.0);
        s.push('.');
        s.push_str(name);
        Self(s)
    }

    /// The path of a list element.
    pub fn index(&self, i: usize) -> Self {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = i;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let digits = std::str::from_utf8(&digits[at..]).unwrap_or_default();
        self.bracketed(digits)
    }

    /// The path of a map entry, as Kubernetes writes it: `metadata.annotations[key]`.
    pub fn key(&self, key: &str) -> Self {
        self.bracketed(key)
    }

    fn bracketed(&self, inner: &str) -> Self {
        let mut s = String::with_capacity(self.0.len() + 2 + inner.len());
        s.push_str(&self.0);
        s.push('[');
        s.push_str(inner);
        s.push(']');
        Self(s)
    }

    /// The rendered path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of problem a field has; rendered with Kubernetes' wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// A value is present but wrong; holds the offending value, rendered as JSON.
    Invalid(String),
    /// A value is missing.
    Required,
    /// A value is not allowed here (or not together with another one).
    Forbidden,
    /// A value repeats one given earlier in the same list.
    Duplicate(String),
    /// A value is not one of the supported ones.
    NotSupported {
        value: String,
        supported: Vec<String>,
    },
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field.
    pub path: FieldPath,
    /// What kind of problem.
    pub kind: ErrorKind,
    /// What is wrong and how to fix it.
    pub detail: String,
}

impl FieldError {
    /// `path: Invalid value: VALUE: detail`.
    pub fn invalid(
        path: FieldPath,
        value: impl serde::Serialize,
        detail: impl Into<String>,
    ) -> Self {
        let value = serde_json::to_string(&value).unwrap_or_else(|_| "<unprintable>".into());
        Self {
            path,
            kind: ErrorKind::Invalid(value),
            detail: detail.into(),
        }
    }

    /// `path: Required value: detail`.
    pub fn required(path: FieldPath, detail: impl Into<String>) -> Self {
        Self {
            path,
            kind: ErrorKind::Required,
            detail: detail.into(),
        }
    }

    /// `path: Forbidden: detail`.
    pub fn forbidden(path: FieldPath, detail: impl Into<String>) -> Self {
        Self {
            path,
            kind: ErrorKind::Forbidden,
            detail: detail.into(),
        }
    }

    /// `path: Duplicate value: VALUE`.
    pub fn duplicate(
        path: FieldPath,
        value: impl serde::Serialize,
        detail: impl Into<String>,
    ) -> Self {
        let value = serde_json::to_string(&value).unwrap_or_else(|_| "<unprintable>".into());
        Self {
            path,
            kind: ErrorKind::Duplicate(value),
            detail: detail.into(),
        }
    }

    /// `path: Unsupported value: VALUE: supported values: "a", "b"`.
    pub fn not_supported(path: FieldPath, value: &str, supported: &[&str]) -> Self {
        Self {
            path,
            kind: ErrorKind::NotSupported {
                value: serde_json::to_string(value).unwrap_or_default(),
                supported: supported.iter().map(|s| format!("\"{s}\"")).collect(),
            },
            detail: String::new(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = |f: &mut fmt::Formatter<'_>| {
            if self.detail.is_empty() {
                Ok(())
            } else {
                write!(f, ": {}", self.detail)
            }
        };
        match &self.kind {
            ErrorKind::Invalid(v) => {
                write!(f, "{}: Invalid value: {v}", self.path)?;
                sep(f)
            }
            ErrorKind::Required => {
                write!(f, "{}: Required value", self.path)?;
                sep(f)
            }
            ErrorKind::Forbidden => {
                write!(f, "{}: Forbidden", self.path)?;
                sep(f)
            }
            ErrorKind::Duplicate(v) => {
                write!(f, "{}: Duplicate value: {v}", self.path)?;
                sep(f)
            }
            ErrorKind::NotSupported { value, supported } => {
                write!(
                    f,
                    "{}: Unsupported value: {value}: supported values: {}",
                    self.path,
                    supported.join(", ")
                )?;
                sep(f)
            }
        }
    }
}

/// A soft problem: returned to the user, never a denial by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The field it is about.
    pub path: FieldPath,
    /// What may be wrong and what to do.
    pub message: String,
}

impl Warning {
    /// A warning about a field.
    pub fn new(path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            path,
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything found about one object: errors deny it, warnings are passed on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Problems that make the object invalid.
    pub errors: Vec<FieldError>,
    /// Problems worth telling the user about.
    pub warnings: Vec<Warning>,
}

impl Report {
    /// True when nothing denies the object.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    /// Records an error.
    pub fn error(&mut self, e: FieldError) {
        self.errors.push(e);
    }

    /// Records a warning.
    pub fn warn(&mut self, path: FieldPath, message: impl Into<String>) {
        self.warnings.push(Warning::new(path, message));
    }

    /// Adds everything another report found.
    pub fn merge(&mut self, other: Report) {
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
    }

    /// The errors joined the way the API server joins field errors in a denial.
    pub fn denial_message(&self) -> String {
        let parts: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        match parts.len() {
            0 => String::new(),
            1 => parts[0].clone(),
            _ => format!("[{}]", parts.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_kubernetes() {
        let p = FieldPath::new("spec")
            .child("rolloutStrategy")
            .child("canary")
            .child("steps")
            .index(1)
            .child("weight");
        let e = FieldError::invalid(p, 150, "must be between 0 and 100");
        assert_eq!(
            e.to_string(),
            "spec.rolloutStrategy.canary.steps[1].weight: Invalid value: 150: must be between 0 and 100"
        );
        let r = FieldError::required(FieldPath::new("spec").child("x"), "");
        assert_eq!(r.to_string(), "spec.x: Required value");
        let n = FieldError::not_supported(
            FieldPath::new("spec").child("type"),
            "Foo",
            &["Canary", "BlueGreen"],
        );
        assert_eq!(
            n.to_string(),
            "spec.type: Unsupported value: \"Foo\": supported values: \"Canary\", \"BlueGreen\""
        );
        let k = FieldPath::new("metadata").child("annotations").key("a/b");
        assert_eq!(k.as_str(), "metadata.annotations[a/b]");
        for i in [0, 7, 10, 99, 1234, usize::MAX] {
            assert_eq!(FieldPath::new("l").index(i).as_str(), format!("l[{i}]"));
        }
        assert_eq!(FieldPath::default().child("spec").as_str(), "spec");
    }

    #[test]
    fn denial_joins_all_errors() {
        let mut r = Report::default();
        r.error(FieldError::required(FieldPath::new("a"), "x"));
        r.error(FieldError::forbidden(FieldPath::new("b"), "y"));
        assert_eq!(
            r.denial_message(),
            "[a: Required value: x, b: Forbidden: y]"
        );
    }
}
