//! Prometheus instant queries: `GET {address}/api/v1/query?query=...`.
//!
//! `result` is a number for a scalar or a one-sample vector, a list of numbers for a vector of
//! several samples, and `null` for an empty vector. NaN and infinite samples are left out (a rate
//! over no traffic is NaN: no value, so inconclusive rather than judged).

use super::provider::{self, MeasureError, Provider, Request};
use http::{Method, StatusCode};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value as Json;
use storm_shared::types::analysis::PrometheusMetric;

/// A Prometheus metric with its arguments substituted.
#[derive(Debug, Clone)]
pub struct Prometheus<'a> {
    /// The metric's provider settings.
    pub spec: &'a PrometheusMetric,
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Json,
}

#[derive(Deserialize)]
struct Sample {
    /// `[<unix time>, "<value>"]`
    value: (Json, String),
}

const NAME: &str = "prometheus";

impl Provider for Prometheus<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request(&self, _now: Timestamp) -> Result<Request, MeasureError> {
        let base = provider::base_url(&self.spec.address)?;
        Ok(Request {
            method: Method::GET,
            url: format!(
                "{base}/api/v1/query?{}",
                provider::query_string(&[("query", &self.spec.query)])
            ),
            headers: Vec::new(),
            body: None,
            timeout: provider::timeout(self.spec.timeout.as_deref())?,
        })
    }

    fn parse(&self, status: StatusCode, body: &[u8]) -> Result<Json, MeasureError> {
        parse(status, body)
    }
}

/// The `errorType`s Prometheus answers with.
const ERROR_TYPES: &[&str] = &[
    "timeout",
    "canceled",
    "execution",
    "bad_data",
    "internal",
    "unavailable",
    "not_found",
    "not_acceptable",
];

/// Reads a `/api/v1/query` response.
pub fn parse(status: StatusCode, body: &[u8]) -> Result<Json, MeasureError> {
    let envelope: Result<Envelope, _> = serde_json::from_slice(body);
    let envelope = match envelope {
        Ok(e) => e,
        Err(_) if !status.is_success() => {
            return Err(MeasureError::Status {
                provider: NAME,
                status: status.as_u16(),
                detail: provider::body_summary(body),
            });
        }
        Err(e) => {
            return Err(MeasureError::Response {
                provider: NAME,
                reason: format!(
                    "not a Prometheus API response ({}): {}",
                    provider::json_error(&e),
                    provider::body_summary(body)
                ),
            });
        }
    };
    if envelope.status != "success" || !status.is_success() {
        // Prometheus's own error text is reply text: only its errorType, from the fixed set
        // Prometheus uses, is shown.
        let kind = envelope
            .error_type
            .as_deref()
            .filter(|t| ERROR_TYPES.contains(t))
            .unwrap_or("unknown");
        let reason = format!(
            "errorType {kind}, HTTP {} (the server's error text is not shown: run the query in the Prometheus UI to see it)",
            status.as_u16()
        );
        return Err(MeasureError::Query {
            provider: NAME,
            reason,
        });
    }
    let data = envelope.data.ok_or_else(|| MeasureError::Response {
        provider: NAME,
        reason: "no data in a successful response".into(),
    })?;
    match data.result_type.as_str() {
        "scalar" => {
            let (_, value): (Json, String) =
                serde_json::from_value(data.result).map_err(|e| MeasureError::Response {
                    provider: NAME,
                    reason: format!("scalar result: {}", provider::json_error(&e)),
                })?;
            Ok(provider::number(sample_value(&value)?).unwrap_or(Json::Null))
        }
        "vector" => {
            let samples: Vec<Sample> =
                serde_json::from_value(data.result).map_err(|e| MeasureError::Response {
                    provider: NAME,
                    reason: format!("vector result: {}", provider::json_error(&e)),
                })?;
            let mut values = Vec::with_capacity(samples.len());
            for s in &samples {
                if let Some(n) = provider::number(sample_value(&s.value.1)?) {
                    values.push(n);
                }
            }
            Ok(match values.len() {
                0 => Json::Null,
                1 => values.remove(0),
                _ => Json::Array(values),
            })
        }
        other => Err(MeasureError::Query {
            provider: NAME,
            reason: format!(
                "the query returned a {other}; write an instant query that returns a scalar or a vector (e.g. wrap a range selector in rate() or sum())"
            ),
        }),
    }
}

/// A sample value as Prometheus writes it: a decimal, `NaN`, `+Inf` or `-Inf`.
fn sample_value(text: &str) -> Result<f64, MeasureError> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text.parse::<f64>().map_err(|_| MeasureError::Response {
            provider: NAME,
            reason: format!("a sample value ({} bytes) is not a number", text.len()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(body: Json) -> Result<Json, MeasureError> {
        parse(StatusCode::OK, body.to_string().as_bytes())
    }

    #[test]
    fn request_encodes_the_query() {
        let spec = PrometheusMetric {
            address: "http://prom:9090/".into(),
            query: "sum(rate(x{a=\"b c\"}[1m]))".into(),
            timeout: Some("3s".into()),
        };
        let r = Prometheus { spec: &spec }
            .request(Timestamp::UNIX_EPOCH)
            .unwrap();
        assert_eq!(r.method, Method::GET);
        assert_eq!(
            r.url,
            "http://prom:9090/api/v1/query?query=sum%28rate%28x%7Ba%3D%22b+c%22%7D%5B1m%5D%29%29"
        );
        assert_eq!(r.timeout, std::time::Duration::from_secs(3));
        let default = PrometheusMetric {
            timeout: None,
            ..spec.clone()
        };
        assert_eq!(
            Prometheus { spec: &default }
                .request(Timestamp::UNIX_EPOCH)
                .unwrap()
                .timeout,
            provider::DEFAULT_TIMEOUT
        );
        let bad = PrometheusMetric {
            address: "prom:9090".into(),
            ..spec
        };
        assert!(matches!(
            Prometheus { spec: &bad }.request(Timestamp::UNIX_EPOCH),
            Err(MeasureError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn one_sample_vector_is_a_number() {
        let v = ok(json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {"revision": "abc"}, "value": [1700000000.1, "0.025"]}]}}));
        assert_eq!(v.unwrap(), json!(0.025));
    }

    #[test]
    fn several_samples_are_a_list() {
        let v = ok(
            json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"pod": "a"}, "value": [1700000000, "1"]},
            {"metric": {"pod": "b"}, "value": [1700000000, "NaN"]},
            {"metric": {"pod": "c"}, "value": [1700000000, "2.5"]}]}}),
        );
        assert_eq!(v.unwrap(), json!([1.0, 2.5]));
    }

    #[test]
    fn scalar_is_a_number_and_nan_is_no_value() {
        let v = ok(json!({"status": "success", "data": {"resultType": "scalar",
            "result": [1700000000.5, "3"]}}));
        assert_eq!(v.unwrap(), json!(3.0));
        let v = ok(json!({"status": "success", "data": {"resultType": "scalar",
            "result": [1700000000.5, "NaN"]}}));
        assert_eq!(v.unwrap(), Json::Null);
    }

    #[test]
    fn empty_vector_is_null() {
        let v = ok(json!({"status": "success", "data": {"resultType": "vector", "result": []}}));
        assert_eq!(v.unwrap(), Json::Null);
    }

    #[test]
    fn errors_name_the_error_type_but_never_quote_the_reply() {
        let body = json!({"status": "error", "errorType": "bad_data",
            "error": "invalid parameter \"query\": 1:5: parse error"});
        let err = parse(StatusCode::BAD_REQUEST, body.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, MeasureError::Query { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("errorType bad_data, HTTP 400"), "{text}");
        assert!(!text.contains("invalid parameter"), "{text}");
        // An errorType outside Prometheus's set is reply text too.
        let body = json!({"status": "error", "errorType": "s3cret-token", "error": "x"});
        let text = parse(StatusCode::OK, body.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("errorType unknown") && !text.contains("s3cret"),
            "{text}"
        );

        let err = parse(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>").unwrap_err();
        assert_eq!(
            err,
            MeasureError::Status {
                provider: "prometheus",
                status: 502,
                detail: "a 24-byte body (content not shown)".into()
            }
        );
        // serde quotes strings it rejects; the message must not.
        let body = json!({"status": "success", "data": {"resultType": "scalar", "result": [1, {"k": "s3cret"}]}});
        let text = parse(StatusCode::OK, body.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(!text.contains("s3cret"), "{text}");
        let err = parse(StatusCode::OK, b"not json").unwrap_err();
        assert!(matches!(err, MeasureError::Response { .. }), "{err:?}");
    }

    #[test]
    fn matrix_results_are_refused_with_advice() {
        let err = ok(json!({"status": "success", "data": {"resultType": "matrix",
            "result": [{"metric": {}, "values": [[1, "1"]]}]}}))
        .unwrap_err();
        assert!(err.to_string().contains("instant query"), "{err}");
    }
}
