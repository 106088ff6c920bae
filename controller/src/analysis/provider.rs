//! The one trait every metric provider implements. A provider is sans-I/O: it builds the HTTP
//! request for a measurement and reads the response into the JSON value `result`; the engine sends
//! the request. So every provider is tested on plain bytes.

use http::{HeaderName, HeaderValue, Method, StatusCode};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value as Json;
use std::time::Duration;

/// Default timeout of one provider request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP request of a measurement.
#[derive(Debug, Clone)]
pub struct Request {
    /// GET or POST.
    pub method: Method,
    /// Absolute `http://` or `https://` URL with its query string.
    pub url: String,
    /// Headers; credentials are marked sensitive so they never show in debug output.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body, for POST.
    pub body: Option<String>,
    /// How long the whole exchange may take.
    pub timeout: Duration,
}

/// A measurement could not be taken. Counts toward `consecutiveErrorLimit`. Messages never hold
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    /// The URL (after argument substitution) is not usable.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A setting of the metric is not usable (a header, a duration, a JSONPath).
    #[error("{0}")]
    Config(String),
    /// Connecting or reading failed.
    #[error("request to {url} failed: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// The error chain.
        reason: String,
    },
    /// The controller's egress policy refuses the destination: the metric ends `Error` at once
    /// (it would be refused every time).
    #[error("request to {url} refused: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// The policy's refusal, naming the setting that would allow it.
        reason: String,
    },
    /// The exchange took longer than the timeout.
    #[error("request to {url} timed out after {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The server answered with a non-success status.
    #[error("{provider} answered HTTP {status}: {detail}")]
    Status {
        /// `prometheus`, `web` or `datadog`.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// The server's error, or the start of the body.
        detail: String,
    },
    /// The response is not what the provider's API returns.
    #[error("{provider} response not understood: {reason}")]
    Response {
        /// `prometheus`, `web` or `datadog`.
        provider: &'static str,
        /// Why.
        reason: String,
    },
    /// The query itself failed (`status: error`).
    #[error("{provider} query failed: {reason}")]
    Query {
        /// `prometheus`, `web` or `datadog`.
        provider: &'static str,
        /// The server's error message.
        reason: String,
    },
}

/// A metric provider: builds the request for a measurement and reads the response into `result`
/// (see [`super::condition`] for its shape). `null` means no value.
pub trait Provider: Send + Sync {
    /// `prometheus`, `web` or `datadog`: the `provider` label of the measurement counters.
    fn name(&self) -> &'static str;
    /// The request for a measurement taken at `now`.
    fn request(&self, now: Timestamp) -> Result<Request, MeasureError>;
    /// The value of `result` from the response.
    fn parse(&self, status: StatusCode, body: &[u8]) -> Result<Json, MeasureError>;
}

/// A timeout setting, or the default.
pub fn timeout(setting: Option<&str>) -> Result<Duration, MeasureError> {
    match setting {
        None => Ok(DEFAULT_TIMEOUT),
        Some(text) => storm_shared::units::parse_wait(text)
            .map_err(|e| MeasureError::Config(format!("timeout {text:?}: {e}"))),
    }
}

/// Checks a base URL and drops its trailing slashes.
pub fn base_url(address: &str) -> Result<String, MeasureError> {
    let trimmed = address.trim().trim_end_matches('/');
    if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
        return Err(MeasureError::InvalidUrl {
            url: shown_url(address),
            reason: "must start with http:// or https://".into(),
        });
    }
    trimmed
        .parse::<http::Uri>()
        .map_err(|e| MeasureError::InvalidUrl {
            url: shown_url(address),
            reason: e.to_string(),
        })?;
    Ok(trimmed.to_string())
}

/// A URL as shown in messages: without user info and query string, which may hold credentials
/// (`https://user:token@host/path?api_key=...` is shown as `https://host/path`).
pub fn shown_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => without_query.to_string(),
    }
}

/// A `k=v&...` query string with every value percent-encoded.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A response body in an error message: its size, never its content. Whatever a server answers
/// stays out of status, Events and logs, so a metric cannot be used to read a reply it should not
/// (an internal service's page, a metadata credential) through the StormService's status.
pub fn body_summary(body: &[u8]) -> String {
    if body.is_empty() {
        "an empty body".to_string()
    } else {
        format!("a {}-byte body (content not shown)", body.len())
    }
}

/// A JSON decoding error without the text it quotes (serde quotes the strings it rejects): its
/// category, and where in the body it happened.
pub fn json_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected shape",
        serde_json::error::Category::Eof => "unexpected end",
    };
    if e.line() == 0 {
        what.to_string()
    } else {
        format!("{what} at line {} column {}", e.line(), e.column())
    }
}

/// The text under `key` in a Secret (`data`, else `stringData`), without surrounding whitespace
/// (the newline a file-based `kubectl create secret` keeps); None when absent.
pub fn secret_text(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Option<String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })?;
    Some(String::from_utf8_lossy(&bytes).trim().to_string())
}

/// A credential as a header value marked sensitive (never shown in debug output); None when it
/// holds bytes a header cannot carry (a line break, a control character).
pub fn sensitive_header(text: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::try_from(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A finite number as JSON; NaN and infinities are no value.
pub fn number(value: f64) -> Option<Json> {
    serde_json::Number::from_f64(value).map(Json::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_hide_user_info_and_query() {
        assert_eq!(
            shown_url("https://user:t0ken@metrics.local:8443/api/rate?api_key=s3cret#x"),
            "https://metrics.local:8443/api/rate"
        );
        assert_eq!(shown_url("http://prom:9090"), "http://prom:9090");
        assert_eq!(shown_url("not a url?k=v"), "not a url");
    }

    #[test]
    fn base_urls_and_timeouts() {
        assert_eq!(base_url("http://prom:9090//").unwrap(), "http://prom:9090");
        assert!(base_url("ftp://x").is_err());
        assert_eq!(timeout(None).unwrap(), DEFAULT_TIMEOUT);
        assert!(timeout(Some("soon")).is_err());
    }
}
