//! Datadog metrics queries (API v1): `GET {address}/api/v1/query?from=&to=&query=` with the keys
//! from a Secret in the `DD-API-KEY` and `DD-APPLICATION-KEY` headers.
//!
//! `result` is the latest non-null point of the query's single series (`null` when there is no
//! series or no point). A query that returns several series is an error: aggregate it into one
//! (`sum:...`, `avg:...` without `by {...}`).

use super::provider::{self, MeasureError, Provider, Request};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value as Json;
use std::time::Duration;
use storm_shared::types::analysis::DatadogMetric;

/// Datadog's API when `address` is not set.
pub const DEFAULT_ADDRESS: &str = "https://api.datadoghq.com";
/// The query window when `interval` is not set.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Secret key holding the API key.
pub const API_KEY: &str = "api-key";
/// Secret key holding the application key.
pub const APP_KEY: &str = "app-key";
/// Optional Secret key holding the address the keys are sent to, when it is not one of Datadog's
/// sites (a proxy, a test server): only who may write the keys chooses where they go.
pub const ADDRESS_KEY: &str = "address";

const NAME: &str = "datadog";

/// The API and application keys read from a Secret. Debug output never shows them.
#[derive(Clone)]
pub struct Keys {
    api: HeaderValue,
    app: HeaderValue,
    /// The Secret's `address`, when it has one.
    address: Option<String>,
    /// The Secret's name, for messages.
    secret: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys { <redacted> }")
    }
}

/// The Secret does not hold usable Datadog keys. Messages name the Secret and key, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// A key is absent or empty.
    #[error(
        "Secret {secret} has no {key:?} key: put the Datadog {what} under {key:?} (kubectl create secret generic {secret} --from-literal=api-key=... --from-literal=app-key=...)"
    )]
    Missing {
        /// The Secret's name.
        secret: String,
        /// `api-key` or `app-key`.
        key: &'static str,
        /// `API key` or `application key`.
        what: &'static str,
    },
    /// A key holds bytes that cannot be sent in an HTTP header (a stray newline, for example).
    #[error(
        "Secret {secret} key {key:?} is not a valid header value: remove line breaks and control characters"
    )]
    Invalid {
        /// The Secret's name.
        secret: String,
        /// `api-key` or `app-key`.
        key: &'static str,
    },
}

impl Keys {
    /// Reads `api-key` and `app-key` from a Secret (surrounding whitespace, such as the newline a
    /// file-based `kubectl create secret` keeps, is dropped).
    pub fn from_secret(secret: &Secret) -> Result<Self, KeysError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let read = |key: &str| provider::secret_text(secret, key).unwrap_or_default();
        let get = |key: &'static str, what: &'static str| -> Result<HeaderValue, KeysError> {
            let text = read(key);
            if text.is_empty() {
                return Err(KeysError::Missing {
                    secret: name.clone(),
                    key,
                    what,
                });
            }
            provider::sensitive_header(&text).ok_or_else(|| KeysError::Invalid {
                secret: name.clone(),
                key,
            })
        };
        let address = read(ADDRESS_KEY);
        Ok(Self {
            api: get(API_KEY, "API key")?,
            app: get(APP_KEY, "application key")?,
            address: (!address.is_empty()).then_some(address),
            secret: name,
        })
    }

    /// Where the keys go: the Secret's `address`; else the metric's `address` when it is one of
    /// Datadog's sites; else the default site. A metric naming any other address is refused, so a
    /// tenant who may edit AnalysisTemplates but not the Secret cannot send its keys elsewhere.
    pub fn address<'a>(&'a self, spec: &'a DatadogMetric) -> Result<&'a str, MeasureError> {
        if let Some(own) = &self.address {
            return Ok(own);
        }
        match spec.address.as_deref() {
            None => Ok(DEFAULT_ADDRESS),
            Some(a) if storm_shared::rules::datadog_site(a) => Ok(a),
            Some(a) => Err(MeasureError::Refused {
                url: provider::shown_url(a),
                reason: format!(
                    "address is not one of Datadog's sites ({}): a custom address goes under the key \"{ADDRESS_KEY}\" of Secret {}, next to the keys it receives",
                    storm_shared::rules::DATADOG_SITES.join(", "),
                    self.secret
                ),
            }),
        }
    }
}

/// A Datadog metric with its arguments substituted, and its keys.
#[derive(Debug, Clone)]
pub struct Datadog<'a> {
    /// The metric's provider settings.
    pub spec: &'a DatadogMetric,
    /// The keys from `secretRef`.
    pub keys: &'a Keys,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    series: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    pointlist: Vec<Vec<Option<f64>>>,
}

#[derive(Deserialize)]
struct Errors {
    errors: Vec<String>,
}

impl Provider for Datadog<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request(&self, now: Timestamp) -> Result<Request, MeasureError> {
        let base = provider::base_url(self.keys.address(self.spec)?)?;
        let window = match self.spec.interval.as_deref() {
            None => DEFAULT_WINDOW,
            Some(text) => storm_shared::units::parse_wait(text)
                .map_err(|e| MeasureError::Config(format!("datadog interval {text:?}: {e}")))?,
        };
        let to = now.as_second();
        let from = to.saturating_sub(i64::try_from(window.as_secs()).unwrap_or(i64::MAX));
        let (from, to) = (from.to_string(), to.to_string());
        Ok(Request {
            method: Method::GET,
            url: format!(
                "{base}/api/v1/query?{}",
                provider::query_string(&[
                    ("from", &from),
                    ("to", &to),
                    ("query", &self.spec.query)
                ])
            ),
            headers: vec![
                (HeaderName::from_static("dd-api-key"), self.keys.api.clone()),
                (
                    HeaderName::from_static("dd-application-key"),
                    self.keys.app.clone(),
                ),
                (
                    http::header::ACCEPT,
                    HeaderValue::from_static("application/json"),
                ),
            ],
            body: None,
            timeout: provider::DEFAULT_TIMEOUT,
        })
    }

    fn parse(&self, status: StatusCode, body: &[u8]) -> Result<Json, MeasureError> {
        parse(status, body, &self.spec.secret_ref.name)
    }
}

/// Reads a v1 query response; `secret` names the keys' Secret in messages about rejected keys.
pub fn parse(status: StatusCode, body: &[u8], secret: &str) -> Result<Json, MeasureError> {
    if !status.is_success() {
        let detail = serde_json::from_slice::<Errors>(body)
            .map(|e| e.errors.join("; "))
            .unwrap_or_else(|_| provider::body_summary(body));
        let detail = if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            format!("{detail} (check the api-key and app-key in Secret {secret})")
        } else {
            detail
        };
        return Err(MeasureError::Status {
            provider: NAME,
            status: status.as_u16(),
            detail,
        });
    }
    let response: Response = serde_json::from_slice(body).map_err(|e| MeasureError::Response {
        provider: NAME,
        reason: format!(
            "not a metrics query response ({}): {}",
            provider::json_error(&e),
            provider::body_summary(body)
        ),
    })?;
    if response.status.as_deref() == Some("error") || response.error.is_some() {
        return Err(MeasureError::Query {
            provider: NAME,
            reason: response
                .error
                .unwrap_or_else(|| "status \"error\" without a message".into()),
        });
    }
    match response.series.as_slice() {
        [] => Ok(Json::Null),
        [one] => Ok(one
            .pointlist
            .iter()
            .rev()
            .filter_map(|p| p.get(1).copied().flatten())
            .find_map(provider::number)
            .unwrap_or(Json::Null)),
        many => Err(MeasureError::Query {
            provider: NAME,
            reason: format!(
                "the query returned {} series; aggregate them into one (for example sum:... without \"by {{...}}\")",
                many.len()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;
    use storm_shared::types::analysis::SecretRef;

    fn secret(api: Option<&str>, app: Option<&str>) -> Secret {
        let mut s = secret_at(api, app, None);
        s.data.as_mut().unwrap().remove(ADDRESS_KEY);
        s
    }

    fn secret_at(api: Option<&str>, app: Option<&str>, address: Option<&str>) -> Secret {
        let mut data = std::collections::BTreeMap::new();
        if let Some(a) = address {
            data.insert(ADDRESS_KEY.to_string(), ByteString(a.as_bytes().to_vec()));
        }
        if let Some(a) = api {
            data.insert(API_KEY.to_string(), ByteString(a.as_bytes().to_vec()));
        }
        if let Some(a) = app {
            data.insert(APP_KEY.to_string(), ByteString(a.as_bytes().to_vec()));
        }
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("dd".into()),
                ..Default::default()
            },
            data: Some(data),
            ..Secret::default()
        }
    }

    fn spec() -> DatadogMetric {
        DatadogMetric {
            query: "avg:trace.errors{service:llm}".into(),
            interval: Some("10m".into()),
            address: Some("https://api.datadoghq.eu/".into()),
            secret_ref: SecretRef { name: "dd".into() },
        }
    }

    #[test]
    fn keys_come_from_the_secret_and_never_show() {
        let keys = Keys::from_secret(&secret_at(
            Some("API123\n"),
            Some("APP456"),
            Some("http://dd.local/\n"),
        ))
        .unwrap();
        assert!(!format!("{keys:?}").contains("API123"));
        let s = spec();
        let r = Datadog {
            spec: &s,
            keys: &keys,
        }
        .request(Timestamp::from_second(1_700_000_600).unwrap())
        .unwrap();
        assert_eq!(
            r.url,
            "http://dd.local/api/v1/query?from=1700000000&to=1700000600&query=avg%3Atrace.errors%7Bservice%3Allm%7D"
        );
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(header("DD-API-KEY"), "API123");
        assert_eq!(header("DD-APPLICATION-KEY"), "APP456");
        assert!(header("DD-API-KEY").is_sensitive());
        assert!(!format!("{r:?}").contains("API123"));
    }

    #[test]
    fn missing_keys_name_the_secret_and_key() {
        let err = Keys::from_secret(&secret(Some("a"), None)).unwrap_err();
        assert_eq!(
            err,
            KeysError::Missing {
                secret: "dd".into(),
                key: "app-key",
                what: "application key"
            }
        );
        assert!(
            err.to_string().contains("Secret dd has no \"app-key\""),
            "{err}"
        );
        let err = Keys::from_secret(&secret(Some("a\nb"), Some("c"))).unwrap_err();
        assert!(!err.to_string().contains("a\nb"));
    }

    #[test]
    fn the_keys_go_only_to_a_datadog_site_or_the_secrets_own_address() {
        let keys = Keys::from_secret(&secret(Some("a"), Some("b"))).unwrap();
        let at = |address: &str| {
            let s = DatadogMetric {
                address: Some(address.into()),
                ..spec()
            };
            Datadog {
                spec: &s,
                keys: &keys,
            }
            .request(Timestamp::from_second(1000).unwrap())
            .map(|r| r.url)
        };
        assert!(
            at("https://api.datadoghq.eu")
                .unwrap()
                .starts_with("https://api.datadoghq.eu/api/v1/query?")
        );
        let err = at("http://attacker.example:8080").unwrap_err();
        assert!(matches!(err, MeasureError::Refused { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("key \"address\" of Secret dd"), "{text}");
        let own = Keys::from_secret(&secret_at(Some("a"), Some("b"), Some("http://proxy.local")))
            .unwrap();
        let s = DatadogMetric {
            address: Some("http://attacker.example:8080".into()),
            ..spec()
        };
        let r = Datadog {
            spec: &s,
            keys: &own,
        }
        .request(Timestamp::from_second(1000).unwrap())
        .unwrap();
        assert!(
            r.url.starts_with("http://proxy.local/api/v1/query?"),
            "{}",
            r.url
        );
    }

    #[test]
    fn default_address_and_window() {
        let keys = Keys::from_secret(&secret(Some("a"), Some("b"))).unwrap();
        let s = DatadogMetric {
            address: None,
            interval: None,
            ..spec()
        };
        let r = Datadog {
            spec: &s,
            keys: &keys,
        }
        .request(Timestamp::from_second(1000).unwrap())
        .unwrap();
        assert!(
            r.url
                .starts_with("https://api.datadoghq.com/api/v1/query?from=700&to=1000&"),
            "{}",
            r.url
        );
    }

    #[test]
    fn the_latest_non_null_point_of_the_series() {
        let body = json!({"status": "ok", "res_type": "time_series", "series": [{
            "metric": "trace.errors", "scope": "service:llm",
            "pointlist": [[1700000000000.0, 0.5], [1700000060000.0, 1.5], [1700000120000.0, null]]
        }]});
        assert_eq!(
            parse(StatusCode::OK, body.to_string().as_bytes(), "dd").unwrap(),
            json!(1.5)
        );
    }

    #[test]
    fn no_series_is_null_and_several_are_an_error() {
        let empty = json!({"status": "ok", "series": []});
        assert_eq!(
            parse(StatusCode::OK, empty.to_string().as_bytes(), "dd").unwrap(),
            Json::Null
        );
        let two = json!({"status": "ok", "series": [{"pointlist": [[1.0, 1.0]]}, {"pointlist": [[1.0, 2.0]]}]});
        let err = parse(StatusCode::OK, two.to_string().as_bytes(), "dd").unwrap_err();
        assert!(err.to_string().contains("2 series"), "{err}");
    }

    #[test]
    fn errors_and_rejected_keys() {
        let err = parse(
            StatusCode::FORBIDDEN,
            br#"{"errors": ["Forbidden"]}"#,
            "dd-keys",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "datadog answered HTTP 403: Forbidden (check the api-key and app-key in Secret dd-keys)"
        );
        let err = parse(
            StatusCode::OK,
            br#"{"status": "error", "error": "Error parsing query"}"#,
            "dd",
        )
        .unwrap_err();
        assert!(matches!(err, MeasureError::Query { .. }), "{err:?}");
    }
}
