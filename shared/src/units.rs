//! Durations and percentages as users write them.
//!
//! Durations use Go's syntax (`30s`, `5m`, `1h30m`, `1.5h`) through kube's Go-compatible parser; a bare
//! integer is read as seconds, as many users write it.

use std::time::Duration;

/// Longest duration any rollout setting may ask for: seven days. Anything longer is a typo or a unit
/// mistake (`5000h`), and a rollout that waits that long is better modelled as a manual approval.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is not a duration at all.
    #[error("must be a duration such as \"30s\", \"5m\" or \"1h30m\" (or whole seconds)")]
    Syntax(String),
    /// The duration is zero or negative.
    #[error("must be greater than zero")]
    NotPositive,
    /// The duration is longer than [`MAX_DURATION`].
    #[error("must be at most 168h (7 days)")]
    TooLong,
}

/// Parses a duration written Go-style (`5m`, `1h30m`) or as whole seconds (`300`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Syntax("empty".into()));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| DurationError::Syntax(e.to_string()));
    }
    let parsed: kube::core::Duration = text
        .parse()
        .map_err(|e: kube::core::duration::ParseError| DurationError::Syntax(e.to_string()))?;
    if parsed.is_negative() {
        return Err(DurationError::NotPositive);
    }
    Ok(parsed.into())
}

/// Parses a duration that configures a wait: it must be positive and at most [`MAX_DURATION`].
pub fn parse_wait(text: &str) -> Result<Duration, DurationError> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err(DurationError::NotPositive);
    }
    if d > MAX_DURATION {
        return Err(DurationError::TooLong);
    }
    Ok(d)
}

/// Formats a duration the way Go prints one (`1h30m0s` style, without zero parts: `1h30m`).
pub fn format_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Why a percentage was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PercentError {
    /// Not a number followed by an optional `%`.
    #[error("must be a percentage such as \"5%\" or \"0.5%\"")]
    Syntax,
}

/// Parses `"5%"`, `"0.5%"` or `"5"` into a number of percent. The range is the caller's rule.
pub fn parse_percent(text: &str) -> Result<f64, PercentError> {
    let t = text.trim();
    let number = t.strip_suffix('%').unwrap_or(t).trim();
    let value: f64 = number.parse().map_err(|_| PercentError::Syntax)?;
    if !value.is_finite() {
        return Err(PercentError::Syntax);
    }
    Ok(value)
}

/// Reads an int-or-string percentage (`5` or `"5%"`) as a number of percent.
pub fn int_or_string_percent(
    v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> Result<f64, PercentError> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match v {
        IntOrString::Int(i) => Ok(f64::from(*i)),
        IntOrString::String(s) => parse_percent(s),
    }
}

/// Resolves an int-or-string against a total, as Kubernetes does for `maxSurge`/`maxUnavailable`:
/// an integer is taken as is, a percentage of `total` is rounded up (`round_up`) or down.
pub fn scaled_value(
    v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    total: i32,
    round_up: bool,
) -> Result<i32, PercentError> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            if !s.trim().ends_with('%') {
                return Err(PercentError::Syntax);
            }
            let pct = parse_percent(s)?;
            let exact = pct * f64::from(total) / 100.0;
            let rounded = if round_up {
                exact.ceil()
            } else {
                exact.floor()
            };
            // Clamped: the result is a replica count, and the percentage may be absurd.
            Ok(rounded.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_go_style_and_seconds() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(matches!(
            parse_duration("5 minutes"),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(parse_duration(""), Err(DurationError::Syntax(_))));
        assert_eq!(parse_duration("-5m"), Err(DurationError::NotPositive));
    }

    #[test]
    fn waits_are_positive_and_bounded() {
        assert_eq!(parse_wait("0s"), Err(DurationError::NotPositive));
        assert_eq!(parse_wait("0"), Err(DurationError::NotPositive));
        assert_eq!(parse_wait("169h"), Err(DurationError::TooLong));
        assert_eq!(parse_wait("168h"), Ok(MAX_DURATION));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(format_duration(Duration::from_secs(5430)), "1h30m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("5%"), Ok(5.0));
        assert_eq!(parse_percent(" 0.5 % "), Ok(0.5));
        assert_eq!(parse_percent("5"), Ok(5.0));
        assert_eq!(parse_percent("five"), Err(PercentError::Syntax));
        assert_eq!(parse_percent("NaN%"), Err(PercentError::Syntax));
    }

    #[test]
    fn scaled_values_round_like_kubernetes() {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        assert_eq!(
            scaled_value(&IntOrString::String("25%".into()), 10, true),
            Ok(3)
        );
        assert_eq!(
            scaled_value(&IntOrString::String("25%".into()), 10, false),
            Ok(2)
        );
        assert_eq!(scaled_value(&IntOrString::Int(2), 10, false), Ok(2));
        assert!(scaled_value(&IntOrString::String("2".into()), 10, false).is_err());
    }
}
