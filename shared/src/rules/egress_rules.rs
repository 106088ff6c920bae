//! Bounds on what an analysis metric may ask of the controller: how long a request may take, how
//! often it may run, which headers it may send and where Datadog keys may go. Admission and the
//! controller read the same definitions.

use std::time::Duration;

/// Limits on analysis measurements, enforced at admission and at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnalysisBounds {
    /// Longest request `timeout` a Prometheus or web metric may set.
    pub max_timeout: Duration,
    /// Shortest `interval` between measurements.
    pub min_interval: Duration,
}

impl AnalysisBounds {
    /// Default longest request timeout: 30 s.
    pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default shortest interval: 10 s.
    pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(10);
}

impl Default for AnalysisBounds {
    fn default() -> Self {
        Self {
            max_timeout: Self::DEFAULT_MAX_TIMEOUT,
            min_interval: Self::DEFAULT_MIN_INTERVAL,
        }
    }
}

/// Longest JSONPath a web metric may set, in bytes.
pub const MAX_JSON_PATH_LEN: usize = 512;
/// Longest CEL condition, in bytes.
pub const MAX_CONDITION_LEN: usize = 2048;
/// Deepest nesting of brackets and parentheses in a JSONPath or CEL condition.
pub const MAX_EXPRESSION_DEPTH: usize = 32;

/// Why a request header may not be set by a metric, or None when it may.
///
/// `Host` would send the request to another virtual host than the URL names; hop-by-hop headers
/// belong to the connection, not the request; cloud metadata headers exist only to prove a
/// request is not forged, which is exactly what a metric must not be able to do.
pub fn refused_header(name: &str) -> Option<&'static str> {
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "host" => Some("the Host header is taken from the URL: put the host in the URL instead"),
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
        | "content-length" | "proxy-connection" => {
            Some("hop-by-hop and framing headers are set by the HTTP client")
        }
        "metadata-flavor"
        | "metadata"
        | "x-google-metadata-request"
        | "x-aws-ec2-metadata-token"
        | "x-aws-ec2-metadata-token-ttl-seconds" => Some(
            "cloud metadata headers are refused: analysis must not reach instance metadata services",
        ),
        _ if lower.starts_with("proxy-") => {
            Some("proxy headers are refused: analysis requests go straight to the URL")
        }
        _ => None,
    }
}

/// Datadog's API sites: a metric's `address` must be one of these unless it comes from its Secret.
pub const DATADOG_SITES: &[&str] = &[
    "https://api.datadoghq.com",
    "https://api.us3.datadoghq.com",
    "https://api.us5.datadoghq.com",
    "https://api.datadoghq.eu",
    "https://api.ap1.datadoghq.com",
    "https://api.ap2.datadoghq.com",
    "https://api.ddog-gov.com",
];

/// Whether `address` is one of [`DATADOG_SITES`] (a trailing slash allowed).
pub fn datadog_site(address: &str) -> bool {
    let a = address.trim().trim_end_matches('/');
    DATADOG_SITES.iter().any(|s| s.eq_ignore_ascii_case(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        for h in [
            "Host",
            " host",
            "Metadata-Flavor",
            "metadata",
            "X-Google-Metadata-Request",
            "X-aws-ec2-metadata-token",
            "Transfer-Encoding",
            "Proxy-Authorization",
        ] {
            assert!(refused_header(h).is_some(), "{h}");
        }
        for h in ["Authorization", "X-Scope-OrgID", "Accept", "Content-Type"] {
            assert_eq!(refused_header(h), None, "{h}");
        }
    }

    #[test]
    fn datadog_sites() {
        assert!(datadog_site("https://api.datadoghq.com"));
        assert!(datadog_site("https://api.datadoghq.eu/"));
        assert!(!datadog_site("http://api.datadoghq.com"));
        assert!(!datadog_site("https://api.datadoghq.com.evil.example"));
        assert!(!datadog_site("https://attacker.example"));
    }
}
