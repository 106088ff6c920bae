//! AdmissionReview in, AdmissionReview out.
//!
//! [`handle`] is the whole admission decision as a plain function: the request body and a view of
//! the cluster (watch caches in production, maps in tests) go in, the HTTP status and the response
//! body come out. No I/O, no clock, no API server calls, so it is unit-tested and fuzzed directly.
//! Every rule comes from `storm_shared`; this module only routes by kind and speaks the wire format.

use crate::access::{AccessRequest, Decision, Decisions, Unasked, UserInfo};
use crate::metrics::{KindLabel, OperationLabel, Outcome, ResultLabel};
use base64::Engine;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use storm_shared::errors::{ErrorKind, FieldError, Report, Warning};
use storm_shared::references::ClusterLookup;
use storm_shared::rules::{self, AnalysisBounds, analysis, policy_spec};
use storm_shared::types::GROUP;
use storm_shared::{
    AnalysisTemplate, RolloutPolicy, StormService, defaults, ownership, policy, references,
};

/// `apiVersion` of the only AdmissionReview version served (the configurations ask for `v1`).
pub const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of an AdmissionReview.
pub const REVIEW_KIND: &str = "AdmissionReview";

/// What the review handler needs to know about the cluster beyond single objects.
pub trait ClusterView: ClusterLookup {
    /// Every RolloutPolicy in the cluster.
    fn policies(&self) -> Vec<RolloutPolicy>;
    /// The labels of a namespace (at least `kubernetes.io/metadata.name` when it is not cached).
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String>;
    /// Why the view cannot be trusted yet (watch caches that have not listed), or `None` once it
    /// can. While it cannot, reviews are refused: an unsynced cache would read as "no policies"
    /// and "nothing exists", and admit what a synced one denies.
    fn unsynced(&self) -> Option<String> {
        None
    }
}

/// The webhook's own settings that the rules read (from its flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// Longest analysis request timeout and shortest measurement interval admitted
    /// (`--analysis-max-timeout`, `--analysis-min-interval`).
    pub analysis_bounds: AnalysisBounds,
}

/// Which webhook a review was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Defaulting (JSON Patch).
    Mutate,
    /// Validation and policies.
    Validate,
}

/// The answer to one HTTP request: status, JSON body and what to count and log.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status: 200 for every well-formed review (allowed or not), 400 for a body that isn't one.
    pub http_status: u16,
    /// JSON body: an AdmissionReview, or a `Status` explaining why the body was refused.
    pub body: Vec<u8>,
    /// Metric labels and log fields.
    pub outcome: Outcome,
    /// Questions the answer is waiting for: when not empty, the body refuses (fail closed) and the
    /// caller should ask them ([`crate::access::Authorizer`]) and call [`handle_with`] again.
    pub authorize: Vec<AccessRequest>,
}

/// Why a request body is not a review this server can answer.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    /// Not UTF-8, so not JSON.
    #[error("request body is not valid JSON: not UTF-8: {0}")]
    NotUtf8(std::str::Utf8Error),
    /// Not JSON (syntax error, too deeply nested, truncated).
    #[error("request body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    /// JSON, but not shaped like an AdmissionReview.
    #[error("request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    NotAReview(serde_json::Error),
    /// An AdmissionReview of another version or kind.
    #[error(
        "expected apiVersion {REVIEW_API_VERSION:?} kind {REVIEW_KIND:?}, got apiVersion {api_version:?} kind {kind:?}; configure admissionReviewVersions: [v1]"
    )]
    WrongType {
        /// The `apiVersion` sent.
        api_version: String,
        /// The `kind` sent.
        kind: String,
    },
    /// An AdmissionReview without `request`.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// A request without `uid`, which the response must echo.
    #[error("request.uid is missing or empty")]
    NoUid,
}

/// An AdmissionReview as read: its type, and the request.
struct ReviewIn<'a> {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<RequestIn<'a>>,
}

/// The request. `object` and `oldObject` are read as [`Pass`] says: raw JSON parsed later, once,
/// straight into the type the rules want, or on the validating webhook's hot path parsed in the
/// envelope's own pass.
struct RequestIn<'a> {
    uid: String,
    kind: Gvk,
    sub_resource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    operation: String,
    object: ObjectIn<'a>,
    old_object: ObjectIn<'a>,
    user_info: UserInfo,
}

/// How a review's `object` and `oldObject` are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Kept as raw JSON, to be parsed by what the kind needs. Every review reads so.
    Raw,
    /// A StormService (named as such by `request.kind`, which the API server writes before the
    /// objects) is parsed lean straight into its type in the envelope's pass, instead of scanned
    /// once raw and parsed again; anything else stays raw. If that pass fails (a type error, whose
    /// answer names its field), the review is read again [`Pass::Raw`] and answered from that.
    StormService,
}

/// `request.object` or `request.oldObject`.
enum ObjectIn<'a> {
    /// Raw JSON; `None` when absent or `null`.
    Raw(Option<&'a RawValue>),
    /// A StormService parsed (lean) in the envelope's pass; `None` for `null`.
    Storm(Option<Box<StormService>>),
}

impl Default for ObjectIn<'_> {
    fn default() -> Self {
        Self::Raw(None)
    }
}

impl<'a> ObjectIn<'a> {
    /// The raw JSON of a present, non-`null` object read raw. Only the validating StormService
    /// path reads objects parsed in the envelope's pass; every other path reads them raw.
    fn raw(&self) -> Option<&'a RawValue> {
        match self {
            Self::Raw(raw) => present(*raw),
            Self::Storm(_) => None,
        }
    }

    /// Whether the object is absent or `null`.
    fn missing(&self) -> bool {
        match self {
            Self::Raw(raw) => present(*raw).is_none(),
            Self::Storm(parsed) => parsed.is_none(),
        }
    }
}

/// Reads a review (the body is UTF-8), its objects as `pass` says.
fn read_review(body: &str, pass: Pass) -> serde_json::Result<ReviewIn<'_>> {
    let mut de = serde_json::Deserializer::from_str(body);
    let review = ReviewSeed(pass).deserialize(&mut de)?;
    de.end()?;
    Ok(review)
}

/// `apiVersion`, `kind` and `request` of an AdmissionReview; other fields are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ReviewField {
    ApiVersion,
    Kind,
    Request,
    #[serde(other)]
    Other,
}

/// The request fields read; other fields are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum RequestField {
    Uid,
    Kind,
    SubResource,
    Namespace,
    Name,
    Operation,
    Object,
    OldObject,
    UserInfo,
    #[serde(other)]
    Other,
}

/// Reads the value of `field` through `seed` into `slot`; a field given twice fails, as with a
/// derived `Deserialize`.
fn set<'de, A: MapAccess<'de>, S: DeserializeSeed<'de>>(
    map: &mut A,
    slot: &mut Option<S::Value>,
    seed: S,
    field: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(serde::de::Error::duplicate_field(field));
    }
    *slot = Some(map.next_value_seed(seed)?);
    Ok(())
}

struct ReviewSeed(Pass);

impl<'de> DeserializeSeed<'de> for ReviewSeed {
    type Value = ReviewIn<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReviewSeed {
    type Value = ReviewIn<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an AdmissionReview object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut api_version, mut kind, mut request) = (None, None, None);
        while let Some(field) = map.next_key()? {
            match field {
                ReviewField::ApiVersion => {
                    set(&mut map, &mut api_version, PhantomData, "apiVersion")?
                }
                ReviewField::Kind => set(&mut map, &mut kind, PhantomData, "kind")?,
                ReviewField::Request => set(
                    &mut map,
                    &mut request,
                    Nullable(RequestSeed(self.0)),
                    "request",
                )?,
                ReviewField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(ReviewIn {
            api_version: api_version.flatten(),
            kind: kind.flatten(),
            request: request.flatten(),
        })
    }
}

struct RequestSeed(Pass);

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = RequestIn<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = RequestIn<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an AdmissionRequest object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut uid, mut kind, mut sub_resource, mut namespace, mut name) =
            (None, None, None, None, None);
        let (mut operation, mut object, mut old_object, mut user_info) = (None, None, None, None);
        while let Some(field) = map.next_key()? {
            match field {
                RequestField::Uid => set(&mut map, &mut uid, PhantomData, "uid")?,
                RequestField::Kind => set(&mut map, &mut kind, PhantomData, "kind")?,
                RequestField::SubResource => {
                    set(&mut map, &mut sub_resource, PhantomData, "subResource")?
                }
                RequestField::Namespace => set(&mut map, &mut namespace, PhantomData, "namespace")?,
                RequestField::Name => set(&mut map, &mut name, PhantomData, "name")?,
                RequestField::Operation => set(&mut map, &mut operation, PhantomData, "operation")?,
                RequestField::Object | RequestField::OldObject => {
                    let seed = ObjectSeed {
                        storm: self.0 == Pass::StormService
                            && kind.as_ref().is_some_and(|k: &Gvk| {
                                k.group == GROUP && k.kind == "StormService"
                            }),
                    };
                    match field {
                        RequestField::Object => set(&mut map, &mut object, seed, "object")?,
                        _ => set(&mut map, &mut old_object, seed, "oldObject")?,
                    }
                }
                RequestField::UserInfo => set(&mut map, &mut user_info, PhantomData, "userInfo")?,
                RequestField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(RequestIn {
            uid: uid.unwrap_or_default(),
            kind: kind.unwrap_or_default(),
            sub_resource: sub_resource.flatten(),
            namespace: namespace.flatten(),
            name: name.flatten(),
            operation: operation.unwrap_or_default(),
            object: object.unwrap_or_default(),
            old_object: old_object.unwrap_or_default(),
            user_info: user_info.unwrap_or_default(),
        })
    }
}

/// `request.object` or `request.oldObject`: a StormService parsed in the envelope's pass when
/// `storm` (see [`Pass`]), raw JSON otherwise.
struct ObjectSeed {
    storm: bool,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = ObjectIn<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.storm {
            Nullable(StormSeed).deserialize(d).map(ObjectIn::Storm)
        } else {
            Option::<&RawValue>::deserialize(d).map(ObjectIn::Raw)
        }
    }
}

/// `null` as `None`, anything else through the inner seed.
struct Nullable<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object or null")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// A StormService, parsed lean ([`storm_shared::types::lean`]), from a JSON object only.
struct StormSeed;

impl<'de> DeserializeSeed<'de> for StormSeed {
    type Value = Box<StormService>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        storm_shared::types::lean::lean(|| d.deserialize_map(self)).map(Box::new)
    }
}

impl<'de> Visitor<'de> for StormSeed {
    type Value = StormService;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a StormService object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        StormService::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

/// A raw JSON value that is present and not `null`.
fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

/// A raw JSON value as a tree (it was valid JSON when the envelope parsed).
fn tree(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// Parses an object into a typed resource: straight from the raw text when it fits (the common
/// case), through the shared `parse` for the field path of the first type error when it doesn't.
/// Pod templates are parsed lean ([`storm_shared::types::lean`]): only what the rules read.
fn typed<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, FieldError> {
    match storm_shared::types::lean::from_str_lean(raw.get()) {
        Ok(t) => Ok(t),
        Err(_) => rules::parse::<T>(&tree(raw)),
    }
}

#[derive(Deserialize, Default)]
struct Gvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// A `metav1.Status`, as carried in a review response or as a 400 body.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct StatusOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<DetailsOut>,
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct DetailsOut {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    group: &'static str,
    kind: &'static str,
    causes: Vec<CauseOut>,
}

#[derive(Serialize, Debug, Clone)]
struct CauseOut {
    reason: &'static str,
    message: String,
    field: String,
}

/// The decision about one object, before it is put on the wire.
#[derive(Debug, Default)]
struct Verdict {
    denial: Option<StatusOut>,
    patch: Option<Vec<u8>>,
    warnings: Vec<String>,
    /// Access questions that had no answer (their fields are denied meanwhile).
    authorize: Vec<AccessRequest>,
}

impl Verdict {
    fn allow(warnings: Vec<String>) -> Self {
        Self {
            warnings,
            ..Self::default()
        }
    }

    /// Denies with HTTP-like `code` 400: the review itself can't be judged (no object, wrong kind).
    fn refuse(message: String) -> Self {
        Self {
            denial: Some(StatusOut {
                api_version: None,
                kind: None,
                status: "Failure",
                code: 400,
                reason: "BadRequest",
                message,
                details: None,
            }),
            ..Self::default()
        }
    }

    /// Denies with code 503: the webhook cannot judge yet; the API server applies the
    /// configuration's failurePolicy to nothing, the user reads why and retries.
    fn unavailable(message: String) -> Self {
        Self {
            denial: Some(StatusOut {
                api_version: None,
                kind: None,
                status: "Failure",
                code: 503,
                reason: "ServiceUnavailable",
                message,
                details: None,
            }),
            ..Self::default()
        }
    }

    /// Allows or denies from a report: errors deny (all of them, in one answer), warnings pass on.
    fn from_report(report: Report, kind: &'static str, name: &str) -> Self {
        let warnings = render_warnings(&report.warnings);
        if report.errors.is_empty() {
            return Self::allow(warnings);
        }
        let causes = report.errors.iter().map(cause).collect();
        Self {
            denial: Some(StatusOut {
                api_version: None,
                kind: None,
                status: "Failure",
                code: 422,
                reason: "Invalid",
                message: report.denial_message(),
                details: Some(DetailsOut {
                    name: name.to_string(),
                    group: GROUP,
                    kind,
                    causes,
                }),
            }),
            warnings,
            patch: None,
            authorize: Vec::new(),
        }
    }
}

fn cause(e: &FieldError) -> CauseOut {
    let reason = match e.kind {
        ErrorKind::Invalid(_) => "FieldValueInvalid",
        ErrorKind::Required => "FieldValueRequired",
        ErrorKind::Forbidden => "FieldValueForbidden",
        ErrorKind::Duplicate(_) => "FieldValueDuplicate",
        ErrorKind::NotSupported { .. } => "FieldValueNotSupported",
    };
    let field = e.path.as_str().to_string();
    let full = e.to_string();
    let message = full
        .strip_prefix(&field)
        .and_then(|rest| rest.strip_prefix(": "))
        .map(str::to_string)
        .unwrap_or(full);
    CauseOut {
        reason,
        message,
        field,
    }
}

/// Warnings as kubectl prints them, `path: message`, one line each, duplicates dropped.
fn render_warnings(warnings: &[Warning]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(warnings.len());
    for w in warnings {
        let text = sanitize(&w.to_string());
        if !out.contains(&text) {
            out.push(text);
        }
    }
    out
}

/// Warnings travel in HTTP headers: no control characters (newlines would be cut or rejected).
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Answers one request body sent to `endpoint`, with no access question answered yet: a review
/// that needs one comes back refused, naming the questions in [`Answer::authorize`].
pub fn handle(
    endpoint: Endpoint,
    body: &[u8],
    cluster: &dyn ClusterView,
    settings: &Settings,
) -> Answer {
    handle_with(endpoint, body, cluster, settings, &Unasked)
}

/// Answers one request body sent to `endpoint`, reading access answers from `decisions`.
pub fn handle_with(
    endpoint: Endpoint,
    body: &[u8],
    cluster: &dyn ClusterView,
    settings: &Settings,
    decisions: &dyn Decisions,
) -> Answer {
    // Only the validating webhook reads StormServices straight into their type: defaulting
    // patches the JSON as sent.
    let pass = match endpoint {
        Endpoint::Validate => Pass::StormService,
        Endpoint::Mutate => Pass::Raw,
    };
    handle_read(endpoint, body, pass, cluster, settings, decisions)
}

fn handle_read(
    endpoint: Endpoint,
    body: &[u8],
    pass: Pass,
    cluster: &dyn ClusterView,
    settings: &Settings,
    decisions: &dyn Decisions,
) -> Answer {
    let mut request = match parse_review(body, pass) {
        Ok(r) => r,
        Err(e) => return bad_review(&e),
    };
    let kind = kind_label(&request.kind);
    let operation = OperationLabel::from_operation(&request.operation);
    let verdict = decide(
        endpoint,
        &mut request,
        kind,
        operation,
        cluster,
        settings,
        decisions,
    );
    let authorize = verdict.authorize;
    let result = match (&verdict.denial, &verdict.patch) {
        (Some(_), _) => ResultLabel::Denied,
        (None, Some(_)) => ResultLabel::Patched,
        (None, None) => ResultLabel::Allowed,
    };
    let denial = verdict.denial.as_ref().map(|d| d.message.clone());
    let response = ResponseOut {
        uid: &request.uid,
        allowed: verdict.denial.is_none(),
        status: verdict.denial,
        patch_type: verdict.patch.as_ref().map(|_| "JSONPatch"),
        patch: verdict
            .patch
            .map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
        warnings: verdict.warnings,
    };
    let body = serde_json::to_vec(&ReviewOut {
        api_version: REVIEW_API_VERSION,
        kind: REVIEW_KIND,
        response,
    })
    .unwrap_or_else(|e| {
        // Serializing plain structs of strings can't fail; if it ever does, deny rather than allow.
        format!(
            r#"{{"apiVersion":"{REVIEW_API_VERSION}","kind":"{REVIEW_KIND}","response":{{"uid":{},"allowed":false,"status":{{"code":500,"message":"storm-webhook could not encode its answer: {}"}}}}}}"#,
            serde_json::to_string(&request.uid).unwrap_or_else(|_| "\"\"".into()),
            sanitize(&e.to_string()).replace('"', "'"),
        )
        .into_bytes()
    });
    Answer {
        http_status: 200,
        body,
        outcome: Outcome {
            kind,
            operation,
            result,
            namespace: request.namespace.clone().unwrap_or_default(),
            name: request.name.clone().unwrap_or_default(),
            denial,
        },
        authorize,
    }
}

/// The fixed answer of the `/noop` endpoint: an allowed review with a constant uid. The benchmark's
/// ceiling: same server, TLS and body handling, no admission work.
pub fn noop_answer() -> Answer {
    let body = format!(
        r#"{{"apiVersion":"{REVIEW_API_VERSION}","kind":"{REVIEW_KIND}","response":{{"uid":"noop","allowed":true}}}}"#
    );
    Answer {
        http_status: 200,
        body: body.into_bytes(),
        outcome: Outcome::bare(ResultLabel::Allowed),
        authorize: Vec::new(),
    }
}

fn parse_review(body: &[u8], pass: Pass) -> Result<RequestIn<'_>, BadReview> {
    // Checked up front: serde_json skips unknown fields without looking inside their strings.
    let body = std::str::from_utf8(body).map_err(BadReview::NotUtf8)?;
    let review = match read_review(body, pass) {
        Ok(review) => Ok(review),
        // What the failure was is answered from the raw pass, which every review goes through.
        Err(_) if pass != Pass::Raw => read_review(body, Pass::Raw),
        Err(e) => Err(e),
    }
    .map_err(|e| {
        if e.is_data() {
            BadReview::NotAReview(e)
        } else {
            BadReview::NotJson(e)
        }
    })?;
    let api_version = review.api_version.unwrap_or_default();
    let kind = review.kind.unwrap_or_default();
    if api_version != REVIEW_API_VERSION || kind != REVIEW_KIND {
        return Err(BadReview::WrongType { api_version, kind });
    }
    let request = review.request.ok_or(BadReview::NoRequest)?;
    if request.uid.is_empty() {
        return Err(BadReview::NoUid);
    }
    Ok(request)
}

fn bad_review(e: &BadReview) -> Answer {
    let status = StatusOut {
        api_version: Some("v1"),
        kind: Some("Status"),
        status: "Failure",
        code: 400,
        reason: "BadRequest",
        message: sanitize(&e.to_string()),
        details: None,
    };
    let body = serde_json::to_vec(&status).unwrap_or_else(|_| b"{}".to_vec());
    Answer {
        http_status: 400,
        body,
        outcome: Outcome {
            denial: Some(status.message),
            ..Outcome::bare(ResultLabel::BadRequest)
        },
        authorize: Vec::new(),
    }
}

fn kind_label(gvk: &Gvk) -> KindLabel {
    if gvk.group != GROUP {
        return KindLabel::Other;
    }
    match gvk.kind.as_str() {
        "StormService" => KindLabel::StormService,
        "AnalysisTemplate" => KindLabel::AnalysisTemplate,
        "RolloutPolicy" => KindLabel::RolloutPolicy,
        _ => KindLabel::Other,
    }
}

fn decide(
    endpoint: Endpoint,
    req: &mut RequestIn<'_>,
    kind: KindLabel,
    operation: OperationLabel,
    cluster: &dyn ClusterView,
    settings: &Settings,
    decisions: &dyn Decisions,
) -> Verdict {
    if matches!(kind, KindLabel::Other | KindLabel::None) {
        let group = if req.kind.group.is_empty() {
            "core"
        } else {
            &req.kind.group
        };
        return Verdict::refuse(format!(
            "storm-webhook handles StormService, AnalysisTemplate and RolloutPolicy of {GROUP}, not {group} {:?}; check the rules of the webhook configuration",
            req.kind.kind
        ));
    }
    // Status and scale writes come from controllers; the rules are about the spec and metadata.
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return Verdict::allow(Vec::new());
    }
    match operation {
        OperationLabel::Create | OperationLabel::Update => {}
        OperationLabel::Delete | OperationLabel::Connect => return Verdict::allow(Vec::new()),
        OperationLabel::Other => {
            return Verdict::refuse(format!(
                "request.operation {:?} is not one of CREATE, UPDATE, DELETE, CONNECT",
                req.operation
            ));
        }
    }
    if let Some(why) = cluster.unsynced() {
        return Verdict::unavailable(format!(
            "storm-webhook is starting: {why}; it refuses to judge against caches that have not listed (they would read as no RolloutPolicies and no objects). Retry in a few seconds; if this persists, check the webhook's logs and its RBAC (get/list/watch)"
        ));
    }
    if req.object.missing() {
        return Verdict::refuse(format!(
            "request.object is missing: a {} review must carry the object",
            req.operation
        ));
    }
    if let ObjectIn::Raw(Some(raw)) = req.object
        && !raw.get().starts_with('{')
    {
        return Verdict::refuse("request.object is not a JSON object".into());
    }
    // Raw unless the envelope's pass parsed a StormService for validation (see [`Pass`]).
    let object = req.object.raw();
    match (endpoint, kind, object) {
        (Endpoint::Validate, KindLabel::StormService, _) => {
            validate_storm_review(req, operation, cluster, settings, decisions)
        }
        (_, _, None) => Verdict::refuse("request.object could not be read".into()),
        (Endpoint::Mutate, KindLabel::StormService, Some(object)) => {
            let old = req.old_object.raw();
            let verdict = mutate_storm_service(&tree(object), old.map(tree).as_ref());
            // The API server checks the CRD schema after mutating webhooks and before validating
            // ones: an object with one out-of-range weight would get only the schema's complaint and
            // none of ours. Judging the defaulted object here answers with every problem at once.
            let namespace = req.namespace.as_deref();
            match judge_defaulted(object, &verdict, old, namespace, cluster, settings) {
                Some(denial) => denial,
                None => verdict,
            }
        }
        // Nothing to default on the other kinds.
        (Endpoint::Mutate, _, _) => Verdict::allow(Vec::new()),
        (Endpoint::Validate, KindLabel::AnalysisTemplate, Some(object)) => {
            let old = match operation {
                OperationLabel::Update => req.old_object.raw(),
                _ => None,
            };
            let namespace = req.namespace.as_deref();
            validate_analysis_template(object, old, namespace, cluster, settings)
        }
        (Endpoint::Validate, KindLabel::RolloutPolicy, Some(object)) => {
            match typed::<RolloutPolicy>(object) {
                Ok(p) => Verdict::from_report(
                    policy_spec::validate_rollout_policy(&p),
                    "RolloutPolicy",
                    p.metadata.name.as_deref().unwrap_or_default(),
                ),
                Err(e) => parse_denial(e, "RolloutPolicy", &tree(object)),
            }
        }
        (Endpoint::Validate, KindLabel::Other | KindLabel::None, _) => Verdict::allow(Vec::new()),
    }
}

/// The validating webhook's StormService review: the object (and on update the stored one)
/// parsed in the envelope's pass or, when read raw, here.
fn validate_storm_review(
    req: &mut RequestIn<'_>,
    operation: OperationLabel,
    cluster: &dyn ClusterView,
    settings: &Settings,
    decisions: &dyn Decisions,
) -> Verdict {
    if operation == OperationLabel::Update && req.old_object.missing() {
        return Verdict::refuse(
            "request.oldObject is missing: an UPDATE review must carry the stored object".into(),
        );
    }
    let object = match std::mem::take(&mut req.object) {
        ObjectIn::Storm(Some(parsed)) => *parsed,
        read => match read.raw().map(|raw| (raw, typed::<StormService>(raw))) {
            Some((_, Ok(parsed))) => parsed,
            Some((raw, Err(e))) => return parse_denial(e, "StormService", &tree(raw)),
            None => return Verdict::refuse("request.object could not be read".into()),
        },
    };
    // The stored object was admitted once; if it no longer parses, judge the update as a create.
    let old = match (operation, std::mem::take(&mut req.old_object)) {
        (OperationLabel::Update, ObjectIn::Storm(parsed)) => parsed.map(|o| *o),
        (OperationLabel::Update, read) => read
            .raw()
            .and_then(|o| storm_shared::types::lean::from_str_lean(o.get()).ok()),
        _ => None,
    };
    let access = Access {
        user: &req.user_info,
        decisions,
    };
    let namespace = req.namespace.as_deref();
    validate_parsed_storm_service(object, old, namespace, cluster, settings, Some(access))
}

fn object_name(object: &Value) -> String {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn parse_denial(e: FieldError, kind: &'static str, object: &Value) -> Verdict {
    Verdict::from_report(
        Report {
            errors: vec![e],
            warnings: Vec::new(),
        },
        kind,
        &object_name(object),
    )
}

const LEGACY_AUTO_ROLLBACK: &str = "/spec/rolloutStrategy/canary/autoRollback";
const AUTO_ROLLBACK: &str = "/spec/rolloutStrategy/autoRollback";

/// On an update, whether `canary.autoRollback` is the user's newest word and the canonical block
/// a leftover of an earlier move. `kubectl apply` of a manifest that keeps `autoRollback` under
/// `canary` re-adds it on every apply (it is in the last-applied configuration, not in the live
/// object), beside the block the first admission moved and defaulted. When this update left the
/// canonical block as stored, the block under `canary` is what the user means now.
fn legacy_replaces_canonical(object: &Value, old: &Value) -> bool {
    let set = |v: &Value, p: &str| v.pointer(p).filter(|v| !v.is_null()).cloned();
    match (
        set(object, LEGACY_AUTO_ROLLBACK),
        set(object, AUTO_ROLLBACK),
    ) {
        (Some(legacy), Some(canonical)) => {
            legacy != canonical && set(old, AUTO_ROLLBACK).as_ref() == Some(&canonical)
        }
        _ => false,
    }
}

/// The validating verdict on the object as defaulting leaves it, when that verdict is a denial.
fn judge_defaulted(
    object: &RawValue,
    defaulting: &Verdict,
    old: Option<&RawValue>,
    namespace: Option<&str>,
    cluster: &dyn ClusterView,
    settings: &Settings,
) -> Option<Verdict> {
    if defaulting.denial.is_some() {
        return None;
    }
    let mut doc = tree(object);
    if let Some(patch) = &defaulting.patch {
        let ops: json_patch::Patch = serde_json::from_slice(patch).ok()?;
        json_patch::patch(&mut doc, &ops).ok()?;
    }
    let raw = serde_json::value::to_raw_value(&doc).ok()?;
    // A type error (a string where a number goes) is the schema's to report, with all its others.
    typed::<StormService>(&raw).ok()?;
    // Access is checked by the validating webhook only: once per write, on the final object.
    let mut verdict = validate_storm_service(&raw, old, namespace, cluster, settings, None);
    verdict.denial.as_ref()?;
    let mut warnings = defaulting.warnings.clone();
    warnings.append(&mut verdict.warnings);
    verdict.warnings = warnings;
    Some(verdict)
}

fn mutate_storm_service(object: &Value, old: Option<&Value>) -> Verdict {
    let mut patch = Vec::new();
    let mut doc = std::borrow::Cow::Borrowed(object);
    if old.is_some_and(|old| legacy_replaces_canonical(object, old)) {
        patch.push(json_patch::PatchOperation::Remove(
            json_patch::RemoveOperation {
                path: json_patch::jsonptr::PointerBuf::from_tokens([
                    "spec",
                    "rolloutStrategy",
                    "autoRollback",
                ]),
            },
        ));
        if let Some(strategy) = doc
            .to_mut()
            .pointer_mut("/spec/rolloutStrategy")
            .and_then(Value::as_object_mut)
        {
            strategy.remove("autoRollback");
        }
    }
    // Defaulting then moves the block under canary to the canonical place and fills it in.
    let defaulted = defaults::default_storm_service(&doc);
    patch.extend(defaulted.patch);
    let warnings = render_warnings(&defaulted.warnings);
    if patch.is_empty() {
        return Verdict::allow(warnings);
    }
    match serde_json::to_vec(&patch) {
        Ok(patch) => Verdict {
            denial: None,
            patch: Some(patch),
            warnings,
            authorize: Vec::new(),
        },
        Err(e) => Verdict::refuse(format!("could not encode the defaulting patch: {e}")),
    }
}

/// Who wrote the object under review, and the access answers known so far.
#[derive(Clone, Copy)]
struct Access<'a> {
    user: &'a UserInfo,
    decisions: &'a dyn Decisions,
}

fn validate_storm_service(
    object: &RawValue,
    old_object: Option<&RawValue>,
    request_namespace: Option<&str>,
    cluster: &dyn ClusterView,
    settings: &Settings,
    access: Option<Access<'_>>,
) -> Verdict {
    let obj = match typed::<StormService>(object) {
        Ok(o) => o,
        Err(e) => return parse_denial(e, "StormService", &tree(object)),
    };
    // The stored object was admitted once; if it no longer parses, judge the update as a create.
    let old = old_object.and_then(|o| storm_shared::types::lean::from_str_lean(o.get()).ok());
    validate_parsed_storm_service(obj, old, request_namespace, cluster, settings, access)
}

/// [`validate_storm_service`] of objects already parsed.
fn validate_parsed_storm_service(
    mut obj: StormService,
    old: Option<StormService>,
    request_namespace: Option<&str>,
    cluster: &dyn ClusterView,
    settings: &Settings,
    access: Option<Access<'_>>,
) -> Verdict {
    let name = obj.metadata.name.clone().unwrap_or_default();
    if obj.metadata.namespace.is_none() {
        obj.metadata.namespace = request_namespace.map(str::to_string);
    }
    // A stored object that fails newer rules must still be deletable: finalizer removal is an UPDATE.
    if obj.metadata.deletion_timestamp.is_some() {
        return Verdict::allow(Vec::new());
    }
    let old = old.map(|mut o| {
        if o.metadata.namespace.is_none() {
            o.metadata.namespace = obj.metadata.namespace.clone();
        }
        o
    });
    let mut report = evaluate(&obj, old.as_ref(), cluster, settings);
    if let Some(old) = &old
        && !report.errors.is_empty()
    {
        ratchet(&mut report, &evaluate(old, None, cluster, settings));
    }
    // After the ratchet: a field whose value changed was never judged on the stored object.
    let mut unanswered = Vec::new();
    if let Some(access) = access {
        unanswered = authorize(&obj, old.as_ref(), access, cluster, &mut report);
    }
    let mut verdict = Verdict::from_report(report, "StormService", &name);
    verdict.authorize = unanswered;
    verdict
}

/// Denies every Service or router object `obj` newly names that its author may not patch and
/// whose owner did not opt in; returns the questions that have no answer yet (denied meanwhile).
fn authorize(
    obj: &StormService,
    old: Option<&StormService>,
    access: Access<'_>,
    cluster: &dyn ClusterView,
    report: &mut Report,
) -> Vec<AccessRequest> {
    let namespace = obj.metadata.namespace.as_deref().unwrap_or("default");
    let storm = obj.metadata.name.as_deref().unwrap_or_default();
    let user = access.user.username.as_str();
    let mut unanswered = Vec::new();
    if access.user.unconditionally_allowed() {
        return unanswered;
    }
    for object in ownership::newly_named(obj, old) {
        let managed_by = cluster.managed_by(object.kind, namespace, &object.name);
        if ownership::opted_in(managed_by.as_deref(), storm) {
            continue;
        }
        let request = AccessRequest {
            user: access.user.clone(),
            namespace: namespace.to_string(),
            kind: object.kind,
            name: object.name.clone(),
        };
        match access.decisions.decision(&request) {
            Some(Decision::Allowed) => {}
            Some(Decision::Denied(reason)) => report.error(ownership::not_allowed(
                &object, namespace, storm, user, &reason,
            )),
            Some(Decision::Failed(error)) => {
                report.error(ownership::not_checked(&object, namespace, user, &error))
            }
            None => {
                report.error(ownership::not_checked(
                    &object,
                    namespace,
                    user,
                    "not asked yet",
                ));
                if !unanswered.contains(&request) {
                    unanswered.push(request);
                }
            }
        }
    }
    unanswered
}

/// Rules, references and policies for one StormService.
fn evaluate(
    obj: &StormService,
    old: Option<&StormService>,
    cluster: &dyn ClusterView,
    settings: &Settings,
) -> Report {
    let mut report = rules::validate_storm_service(obj, old, &settings.analysis_bounds);
    let refs = references::check_references(obj, cluster);
    let namespace = obj.metadata.namespace.as_deref().unwrap_or("default");
    let labels = cluster.namespace_labels(namespace);
    let policies = cluster.policies();
    report.merge(policy::apply(&policies, &labels, obj, &refs));
    report
}

/// An AnalysisTemplate: its rules, with the webhook's analysis bounds, and the analysis rules of
/// the RolloutPolicies that select its namespace (as for a StormService there).
fn validate_analysis_template(
    object: &RawValue,
    old_object: Option<&RawValue>,
    request_namespace: Option<&str>,
    cluster: &dyn ClusterView,
    settings: &Settings,
) -> Verdict {
    let t = match typed::<AnalysisTemplate>(object) {
        Ok(t) => t,
        Err(e) => return parse_denial(e, "AnalysisTemplate", &tree(object)),
    };
    let name = t.metadata.name.clone().unwrap_or_default();
    if t.metadata.deletion_timestamp.is_some() {
        return Verdict::allow(Vec::new());
    }
    let namespace = t
        .metadata
        .namespace
        .as_deref()
        .or(request_namespace)
        .unwrap_or("default");
    let labels = cluster.namespace_labels(namespace);
    let policies = cluster.policies();
    let judge = |t: &AnalysisTemplate| {
        let mut report = analysis::validate_analysis_template(t, &settings.analysis_bounds);
        report.merge(policy::apply_to_template(&policies, &labels, t));
        report
    };
    let mut report = judge(&t);
    // As for StormServices: a rule or policy newer than the stored template must not block
    // unrelated updates (labels, annotations); what the update changes is judged in full.
    if !report.errors.is_empty()
        && let Some(old) =
            old_object.and_then(|o| serde_json::from_str::<AnalysisTemplate>(o.get()).ok())
    {
        ratchet(&mut report, &judge(&old));
    }
    Verdict::from_report(report, "AnalysisTemplate", &name)
}

/// On update, errors the stored object already had become warnings: a rule or policy added after
/// an object was stored must not block unrelated updates (annotations, finalizers, scaling).
fn ratchet(report: &mut Report, old: &Report) {
    let before: std::collections::HashSet<String> =
        old.errors.iter().map(ToString::to_string).collect();
    let (kept, existing): (Vec<_>, Vec<_>) = std::mem::take(&mut report.errors)
        .into_iter()
        .partition(|e| !before.contains(&e.to_string()));
    report.errors = kept;
    for e in existing {
        let c = cause(&e);
        report.warn(
            e.path.clone(),
            format!(
                "{} (already true of the stored object; admitted, but fix it)",
                c.message
            ),
        );
    }
}

#[cfg(test)]
#[path = "review_tests.rs"]
mod tests;
