//! Web metrics: an HTTP GET or POST whose JSON response holds the value, selected by a JSONPath.
//!
//! `result` is the value at `jsonPath` (`{$.data.errorRate}` or `$.data.errorRate`); several
//! matches are a list, no match is `null`. Without `jsonPath` it is the whole body.

use super::provider::{self, MeasureError, Provider, Request};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use jsonpath_rust::JsonPath;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use storm_shared::types::analysis::{WebMethod, WebMetric};

/// Header values read from Secrets, by (Secret name, key). Marked sensitive: never shown.
pub type HeaderSecrets = BTreeMap<(String, String), HeaderValue>;

/// Most values a JSONPath may select: a descendant path over a large body would otherwise copy
/// every match, and CEL would then walk them all.
pub const MAX_MATCHES: usize = 1000;

/// A web metric with its arguments substituted, and the Secret values its headers name.
#[derive(Debug, Clone)]
pub struct Web<'a> {
    /// The metric's provider settings.
    pub spec: &'a WebMetric,
    /// Values of the headers' `valueFrom.secretKeyRef`s.
    pub secrets: &'a HeaderSecrets,
}

static NO_SECRETS: HeaderSecrets = BTreeMap::new();

impl<'a> Web<'a> {
    /// A web metric whose headers name no Secret.
    pub fn plain(spec: &'a WebMetric) -> Self {
        Self {
            spec,
            secrets: &NO_SECRETS,
        }
    }
}

const NAME: &str = "web";

impl Provider for Web<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request(&self, _now: Timestamp) -> Result<Request, MeasureError> {
        let url = self.spec.url.trim();
        provider::base_url(url).map_err(|_| MeasureError::InvalidUrl {
            url: provider::shown_url(url),
            reason: "must be an absolute http:// or https:// URL".into(),
        })?;
        let mut headers = Vec::with_capacity(self.spec.headers.len());
        for h in &self.spec.headers {
            // Admission refuses these too; a template stored before that rule is refused here.
            if let Some(why) = storm_shared::rules::refused_header(&h.key) {
                return Err(MeasureError::Refused {
                    url: provider::shown_url(url),
                    reason: format!("header {:?}: {why}", h.key),
                });
            }
            let name = HeaderName::try_from(h.key.as_str())
                .map_err(|e| MeasureError::Config(format!("header name {:?}: {e}", h.key)))?;
            // Header values may carry tokens: never echo them, mark them sensitive.
            let mut value = match &h.value_from {
                Some(from) => {
                    let r = &from.secret_key_ref;
                    self.secrets
                        .get(&(r.name.clone(), r.key.clone()))
                        .cloned()
                        .ok_or_else(|| {
                            MeasureError::Config(format!(
                                "header {:?}: key {:?} of Secret {} was not read",
                                h.key, r.key, r.name
                            ))
                        })?
                }
                None => HeaderValue::try_from(h.value.as_str()).map_err(|_| {
                    MeasureError::Config(format!(
                        "header {:?}: the value is not a valid HTTP header value",
                        h.key
                    ))
                })?,
            };
            value.set_sensitive(true);
            headers.push((name, value));
        }
        let method = match self.spec.method {
            Some(WebMethod::Post) => Method::POST,
            Some(WebMethod::Get) | None => Method::GET,
        };
        if method == Method::POST
            && self.spec.body.is_some()
            && !headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE)
        {
            headers.push((
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
        }
        Ok(Request {
            method,
            url: url.to_string(),
            headers,
            body: self.spec.body.clone(),
            timeout: provider::timeout(self.spec.timeout.as_deref())?,
        })
    }

    fn parse(&self, status: StatusCode, body: &[u8]) -> Result<Json, MeasureError> {
        if !status.is_success() {
            return Err(MeasureError::Status {
                provider: NAME,
                status: status.as_u16(),
                detail: provider::body_summary(body),
            });
        }
        let doc: Json = serde_json::from_slice(body).map_err(|e| MeasureError::Response {
            provider: NAME,
            reason: format!(
                "the body is not JSON ({}): {}",
                provider::json_error(&e),
                provider::body_summary(body)
            ),
        })?;
        match self.spec.json_path.as_deref() {
            None => Ok(doc),
            Some(path) => select(&doc, path),
        }
    }
}

/// The value at a JSONPath; braces around it (`{$.a}`, Kubernetes style) are accepted.
pub fn select(doc: &Json, path: &str) -> Result<Json, MeasureError> {
    // Admission refuses these; a template stored before that rule is refused here.
    if path.len() > storm_shared::rules::MAX_JSON_PATH_LEN
        || storm_shared::rules::metric_limits::expression_depth(path)
            > storm_shared::rules::MAX_EXPRESSION_DEPTH
    {
        return Err(MeasureError::Config(format!(
            "jsonPath is longer than {} bytes or nested deeper than {}: select the value directly (e.g. \"{{$.data.errorRate}}\")",
            storm_shared::rules::MAX_JSON_PATH_LEN,
            storm_shared::rules::MAX_EXPRESSION_DEPTH
        )));
    }
    let trimmed = path.trim();
    let inner = trimmed
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(trimmed)
        .trim();
    let found = doc.query(inner).map_err(|e| {
        MeasureError::Config(format!(
            "jsonPath {path:?} is not a valid JSONPath (e.g. \"{{$.data.errorRate}}\"): {e}"
        ))
    })?;
    if found.len() > MAX_MATCHES {
        return Err(MeasureError::Response {
            provider: NAME,
            reason: format!(
                "jsonPath {path:?} selects {} values, more than {MAX_MATCHES}: select the value itself (e.g. \"{{$.data.errorRate}}\")",
                found.len()
            ),
        });
    }
    let mut values: Vec<Json> = found.into_iter().cloned().collect();
    Ok(match values.len() {
        0 => Json::Null,
        1 => values.remove(0),
        _ => Json::Array(values),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use storm_shared::types::analysis::WebHeader;

    fn spec(path: Option<&str>) -> WebMetric {
        WebMetric {
            url: "http://metrics.local/rate?svc=llm".into(),
            json_path: path.map(str::to_string),
            ..WebMetric::default()
        }
    }

    #[test]
    fn json_path_with_and_without_braces() {
        let doc = json!({"data": {"errorRate": 0.02, "pods": [{"r": 1}, {"r": 2}]}});
        assert_eq!(select(&doc, "{$.data.errorRate}").unwrap(), json!(0.02));
        assert_eq!(select(&doc, "$.data.errorRate").unwrap(), json!(0.02));
        assert_eq!(select(&doc, "$.data.pods[*].r").unwrap(), json!([1, 2]));
        assert_eq!(select(&doc, "$.data.missing").unwrap(), Json::Null);
        assert!(matches!(
            select(&doc, "$.data[").unwrap_err(),
            MeasureError::Config(_)
        ));
    }

    #[test]
    fn parse_reads_json_and_refuses_errors() {
        let web = spec(Some("{$.data.errorRate}"));
        let web = Web::plain(&web);
        assert_eq!(
            web.parse(StatusCode::OK, br#"{"data":{"errorRate":3}}"#)
                .unwrap(),
            json!(3)
        );
        let err = web
            .parse(StatusCode::SERVICE_UNAVAILABLE, b"try later")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "web answered HTTP 503: a 9-byte body (content not shown)"
        );
        let text = web
            .parse(StatusCode::OK, b"{\"token\": s3cret}")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("syntax error at line 1") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(matches!(
            web.parse(StatusCode::OK, b"<html/>").unwrap_err(),
            MeasureError::Response { .. }
        ));
        let whole = spec(None);
        assert_eq!(
            Web::plain(&whole).parse(StatusCode::OK, b"0.5").unwrap(),
            json!(0.5)
        );
    }

    #[test]
    fn post_with_headers_and_body() {
        let mut s = spec(None);
        s.method = Some(WebMethod::Post);
        s.body = Some("{\"q\":1}".into());
        s.headers = vec![WebHeader {
            key: "Authorization".into(),
            value: "Bearer secret-token".into(),
            ..WebHeader::default()
        }];
        s.timeout = Some("2s".into());
        let r = Web::plain(&s).request(Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.body.as_deref(), Some("{\"q\":1}"));
        assert_eq!(r.timeout, std::time::Duration::from_secs(2));
        let (_, auth) = &r.headers[0];
        assert!(auth.is_sensitive());
        assert!(!format!("{r:?}").contains("secret-token"));
        assert!(
            r.headers
                .iter()
                .any(|(n, v)| n == http::header::CONTENT_TYPE && v == "application/json")
        );
        s.headers[0].value = "bad\nvalue secret".into();
        let err = Web::plain(&s)
            .request(Timestamp::UNIX_EPOCH)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
