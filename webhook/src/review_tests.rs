//! Unit tests of the review handler: wire format, every kind, policies, references, bad input.

use super::*;
use crate::access::Decided;
use serde_json::json;
use storm_shared::ownership::TrafficKind;
use storm_shared::references::{Presence, RouteInfo, ServiceInfo};

/// Every access question answered "allowed": the rules' tests are about the rules; the access
/// checks have their own tests below, through [`handle_with`].
struct AllowAll;

impl Decisions for AllowAll {
    fn decision(&self, _: &AccessRequest) -> Option<Decision> {
        Some(Decision::Allowed)
    }
}

/// [`super::handle`] with every access question allowed.
fn handle(endpoint: Endpoint, body: &[u8], cluster: &dyn ClusterView) -> Answer {
    handle_with(endpoint, body, cluster, &Settings::default(), &AllowAll)
}

/// A cluster made of maps.
#[derive(Default)]
struct FakeCluster {
    services: BTreeMap<(String, String), ServiceInfo>,
    templates: Vec<(String, String)>,
    policies: Vec<RolloutPolicy>,
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// When false, every lookup is `Unknown` (caches not synced / kind not installed).
    known: bool,
    /// `managed-by` annotations by (kind, namespace, name).
    managed_by: BTreeMap<(TrafficKind, String, String), String>,
    /// Why the caches cannot be trusted yet.
    unsynced: Option<String>,
}

impl ClusterLookup for FakeCluster {
    fn service(&self, namespace: &str, name: &str) -> Presence<ServiceInfo> {
        if !self.known {
            return Presence::Unknown;
        }
        match self.services.get(&(namespace.into(), name.into())) {
            Some(s) => Presence::Found(s.clone()),
            None => Presence::Missing,
        }
    }
    fn ingress(&self, _: &str, _: &str) -> Presence<RouteInfo> {
        Presence::Unknown
    }
    fn virtual_service(&self, _: &str, _: &str) -> Presence<RouteInfo> {
        Presence::Unknown
    }
    fn destination_rule(&self, _: &str, _: &str) -> Presence<()> {
        Presence::Unknown
    }
    fn traffic_split(&self, _: &str, _: &str) -> Presence<RouteInfo> {
        Presence::Unknown
    }
    fn http_route(&self, _: &str, _: &str) -> Presence<RouteInfo> {
        Presence::Unknown
    }
    fn analysis_template(&self, namespace: &str, name: &str) -> Presence<()> {
        if !self.known {
            return Presence::Unknown;
        }
        if self
            .templates
            .contains(&(namespace.to_string(), name.to_string()))
        {
            Presence::Found(())
        } else {
            Presence::Missing
        }
    }
    fn managed_by(&self, kind: TrafficKind, namespace: &str, name: &str) -> Option<String> {
        self.managed_by
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }
}

impl ClusterView for FakeCluster {
    fn unsynced(&self) -> Option<String> {
        self.unsynced.clone()
    }
    fn policies(&self) -> Vec<RolloutPolicy> {
        self.policies.clone()
    }
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespace_labels
            .get(namespace)
            .cloned()
            .unwrap_or_default()
    }
}

fn fixture(rel: &str) -> Value {
    let path = format!("{}/../tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let first = serde_yaml_ng::Deserializer::from_str(&text).next().unwrap();
    serde::Deserialize::deserialize(first).unwrap()
}

fn review_of(operation: &str, kind: &str, object: Option<Value>, old: Option<Value>) -> Vec<u8> {
    let mut request = json!({
        "uid": "0000-1111",
        "kind": {"group": GROUP, "version": "v1alpha1", "kind": kind},
        "resource": {"group": GROUP, "version": "v1alpha1", "resource": "whatever"},
        "namespace": "team-a",
        "name": object.as_ref().and_then(|o| o.pointer("/metadata/name")).cloned().unwrap_or(Value::Null),
        "operation": operation,
        "userInfo": {"username": "someone"},
    });
    if let Some(o) = object {
        request["object"] = o;
    }
    if let Some(o) = old {
        request["oldObject"] = o;
    }
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    }))
    .unwrap()
}

/// The response of a review answered with HTTP 200.
fn response(answer: &Answer) -> Value {
    assert_eq!(
        answer.http_status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let v: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "0000-1111");
    v["response"].clone()
}

fn warnings(resp: &Value) -> Vec<String> {
    resp["warnings"]
        .as_array()
        .map(|w| w.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn validate(cluster: &FakeCluster, object: Value) -> Value {
    response(&handle(
        Endpoint::Validate,
        &review_of("CREATE", "StormService", Some(object), None),
        cluster,
    ))
}

/// The paths the webhook must name for `many-faults.yaml` (schema-level faults excluded: the API
/// server's schema check reports those before any validating webhook runs).
const MANY_FAULTS_PATHS: &[&str] = &[
    "spec.template.metadata.labels",
    "spec.rolloutStrategy.canary.stableService",
    "spec.rolloutStrategy.canary.canaryService",
    "spec.rolloutStrategy.canary.steps[2].weight",
    "spec.rolloutStrategy.canary.steps[2].pause",
    "spec.rolloutStrategy.canary.steps[3]",
    "spec.rolloutStrategy.canary.steps[4].replicas",
    "spec.rolloutStrategy.canary.steps[5].pause.duration",
    "spec.rolloutStrategy.canary.trafficRouting",
    "spec.rolloutStrategy.autoRollback.onFailure.errorThreshold",
    "spec.rolloutStrategy.autoRollback.onTimeout",
    "metadata.annotations[stormservice.aibrix.ai/rollout-resume]",
];

#[test]
fn many_faults_are_denied_all_at_once() {
    let resp = validate(&FakeCluster::default(), fixture("invalid/many-faults.yaml"));
    assert_eq!(resp["allowed"], false);
    let status = &resp["status"];
    assert_eq!(status["code"], 422);
    assert_eq!(status["reason"], "Invalid");
    let message = status["message"].as_str().unwrap();
    let causes = status["details"]["causes"].as_array().unwrap();
    assert_eq!(status["details"]["kind"], "StormService");
    assert_eq!(status["details"]["name"], "broken");
    for path in MANY_FAULTS_PATHS {
        assert!(
            message.contains(&format!("{path}:")),
            "{path} missing from {message}"
        );
        assert!(
            causes.iter().any(|c| c["field"] == *path),
            "{path} missing from causes {causes:?}"
        );
    }
    // The message is exactly what the shared rules say; causes carry one error each, without the path.
    let obj: StormService = rules::parse(&fixture("invalid/many-faults.yaml")).unwrap();
    let mut obj = obj;
    obj.metadata.namespace = Some("team-a".into());
    let report = rules::validate_storm_service(&obj, None, &AnalysisBounds::default());
    assert_eq!(message, report.denial_message());
    assert_eq!(causes.len(), report.errors.len());
    for c in causes {
        let m = c["message"].as_str().unwrap();
        assert!(!m.starts_with(c["field"].as_str().unwrap()), "{m}");
    }
}

#[test]
fn a_valid_storm_service_is_allowed_and_defaulted() {
    let obj = fixture("seed/13-migration-after.yaml");
    let cluster = FakeCluster::default();
    assert_eq!(validate(&cluster, obj.clone())["allowed"], true);

    let answer = handle(
        Endpoint::Mutate,
        &review_of("CREATE", "StormService", Some(obj.clone()), None),
        &cluster,
    );
    assert_eq!(answer.outcome.result, ResultLabel::Patched);
    let resp = response(&answer);
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut patched = obj.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    let ar = &patched["spec"]["rolloutStrategy"]["autoRollback"];
    assert_eq!(ar["enabled"], true);
    assert_eq!(ar["onFailure"]["healthCheckFailure"], true);
    assert_eq!(ar["onFailure"]["analysisFailure"], true);
    assert_eq!(ar["onTimeout"], "30m");
    assert!(
        patched["spec"]["rolloutStrategy"]["canary"]
            .get("autoRollback")
            .is_none()
    );
    let w = warnings(&resp);
    assert!(
        w.iter()
            .any(|w| w.starts_with("spec.rolloutStrategy.canary.autoRollback: ")),
        "{w:?}"
    );
    // Idempotent: the defaulted object needs no patch.
    let again = handle(
        Endpoint::Mutate,
        &review_of("CREATE", "StormService", Some(patched.clone()), None),
        &cluster,
    );
    let resp = response(&again);
    assert!(resp.get("patch").is_none(), "{resp}");
    assert_eq!(again.outcome.result, ResultLabel::Allowed);
    assert_eq!(validate(&cluster, patched)["allowed"], true);
}

/// `kubectl apply` of the migration manifest a second time: the patch re-adds `canary.autoRollback`
/// beside the block the first admission moved. The block under canary wins, moved again.
#[test]
fn reapplying_a_manifest_with_autorollback_under_canary_is_defaulted_again() {
    let cluster = FakeCluster::default();
    let mut stored = fixture("seed/13-migration-after.yaml");
    defaults::apply_defaults(&mut stored).unwrap();
    let mut reapplied = stored.clone();
    let legacy = json!({"enabled": false, "onFailure": {"healthCheckFailure": true}});
    reapplied["spec"]["rolloutStrategy"]["canary"]["autoRollback"] = legacy;
    let answer = handle(
        Endpoint::Mutate,
        &review_of(
            "UPDATE",
            "StormService",
            Some(reapplied.clone()),
            Some(stored.clone()),
        ),
        &cluster,
    );
    let resp = response(&answer);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut patched = reapplied.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    let ar = &patched["spec"]["rolloutStrategy"]["autoRollback"];
    assert_eq!(ar["enabled"], false, "{patched}");
    assert_eq!(ar["onTimeout"], "30m");
    assert!(
        patched["spec"]["rolloutStrategy"]["canary"]
            .get("autoRollback")
            .is_none()
    );
    let resp = response(&handle(
        Endpoint::Validate,
        &review_of(
            "UPDATE",
            "StormService",
            Some(patched),
            Some(stored.clone()),
        ),
        &cluster,
    ));
    assert_eq!(resp["allowed"], true, "{resp}");
    // On create, two different blocks are ambiguous: defaulting leaves them alone, and the mutating
    // answer already carries the validation's denial (it judges the defaulted object).
    let answer = handle(
        Endpoint::Mutate,
        &review_of("CREATE", "StormService", Some(reapplied.clone()), None),
        &cluster,
    );
    assert_eq!(answer.outcome.result, ResultLabel::Denied);
    assert_eq!(validate(&cluster, reapplied)["allowed"], false);
}

/// Every StormService, AnalysisTemplate and RolloutPolicy of the seed document and AIBrix's samples
/// (which stay in ../shared beside the checkout; subdirectories included, its CRDs are not samples).
fn sample_objects() -> Vec<(std::path::PathBuf, Value)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut objects = Vec::new();
    for dir in ["tests/fixtures/seed", "../shared/fixtures/aibrix"] {
        let mut files = Vec::new();
        let mut dirs = vec![root.join(dir)];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    if !path.ends_with("crds") {
                        dirs.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    files.push(path);
                }
            }
        }
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc).unwrap();
                if ["StormService", "AnalysisTemplate", "RolloutPolicy"]
                    .contains(&v["kind"].as_str().unwrap_or_default())
                {
                    objects.push((file.clone(), v));
                }
            }
        }
    }
    objects
}

/// The StormServices among [`sample_objects`].
fn sample_storm_services() -> Vec<Value> {
    sample_objects()
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == "StormService")
        .collect()
}

/// A cluster that knows every object, with one enforcing RolloutPolicy that most samples break.
fn strict_policy_cluster() -> FakeCluster {
    let mut cluster = FakeCluster {
        known: true,
        ..FakeCluster::default()
    };
    cluster.policies.push(policy(
        "strict",
        json!({"maxFirstStepWeight": 5, "requireAnalysisAboveWeight": 10, "requireAutoRollback": true}),
    ));
    cluster
}

#[test]
fn every_seed_and_aibrix_fixture_passes() {
    let mut seen = 0;
    for (file, v) in sample_objects() {
        let kind = v["kind"].as_str().unwrap();
        seen += 1;
        let cluster = FakeCluster::default();
        // What the API server stores is the defaulted object.
        let mut obj = v.clone();
        if kind == "StormService" {
            defaults::apply_defaults(&mut obj).unwrap();
        }
        let resp = response(&handle(
            Endpoint::Validate,
            &review_of("CREATE", kind, Some(obj), None),
            &cluster,
        ));
        assert_eq!(resp["allowed"], true, "{}: {resp}", file.display());
    }
    assert!(seen > 10, "only {seen} objects found");
}

/// The webhook parses Pod templates lean (only what the rules read): on every sample, and on
/// variants that break template rules, the rules, references and policies must report exactly
/// what they report on the object parsed whole. A rule that starts reading a Pod template field
/// the lean parse drops fails here.
#[test]
fn lean_pod_templates_judge_like_whole_ones() {
    let bench: Value =
        serde_json::from_str(include_str!("../bench/review.json")).expect("bench review");
    let mut objects = sample_storm_services();
    objects.push(bench["request"]["object"].clone());
    let mut variants = Vec::new();
    for v in &objects {
        let mut no_containers = v.clone();
        no_containers["spec"]["template"]["spec"]["roles"][0]["template"]["spec"]["containers"] =
            json!([]);
        let mut relabelled = v.clone();
        relabelled["spec"]["template"]["spec"]["roles"][0]["template"]["metadata"]["labels"] =
            json!({"other": "x"});
        relabelled["spec"]["template"]["metadata"]["labels"] = json!({"other": "x"});
        let mut no_spec = v.clone();
        if let Some(t) = no_spec
            .pointer_mut("/spec/template/spec/roles/0/template")
            .and_then(Value::as_object_mut)
        {
            t.remove("spec");
        }
        variants.extend([no_containers, relabelled, no_spec]);
    }
    objects.extend(variants);
    let with_policy = strict_policy_cluster();
    let mut compared = 0;
    for v in &objects {
        let text = v.to_string();
        let whole: StormService = serde_json::from_str(&text).expect("parses whole");
        let lean: StormService =
            storm_shared::types::lean::from_str_lean(&text).expect("parses lean");
        for cluster in [&FakeCluster::default(), &with_policy] {
            let a = evaluate(&whole, None, cluster, &Settings::default());
            let b = evaluate(&lean, None, cluster, &Settings::default());
            assert_eq!(a, b, "{text}");
            compared += 1;
        }
    }
    assert!(compared > 40, "only {compared} comparisons");
}

/// The validating webhook reads a StormService in the envelope's pass (see [`Pass`]): on every
/// sample, on variants the rules deny, on type errors (answered from the raw read), on updates
/// whose stored object no longer parses or is `null`, and with `request.kind` after the object,
/// the answer must be byte for byte the raw read's.
#[test]
fn the_one_pass_read_answers_like_the_raw_read() {
    let mut objects = sample_storm_services();
    objects.push(fixture("invalid/many-faults.yaml"));
    let mut wrong_type = nginx_service();
    wrong_type["spec"]["rolloutStrategy"]["canary"]["steps"][0]["weight"] = json!("ten");
    objects.push(wrong_type.clone());
    let mut deleting = fixture("invalid/many-faults.yaml");
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    objects.push(deleting);
    let with_policy = strict_policy_cluster();
    let mut bodies = Vec::new();
    for v in &objects {
        bodies.push(review_of("CREATE", "StormService", Some(v.clone()), None));
        bodies.push(review_of(
            "UPDATE",
            "StormService",
            Some(v.clone()),
            Some(nginx_service()),
        ));
        bodies.push(review_of(
            "UPDATE",
            "StormService",
            Some(nginx_service()),
            Some(v.clone()),
        ));
    }
    bodies.push(review_of(
        "UPDATE",
        "StormService",
        Some(nginx_service()),
        Some(wrong_type.clone()),
    ));
    let mut null_old: Value = serde_json::from_slice(&bodies[0]).unwrap();
    null_old["request"]["operation"] = json!("UPDATE");
    null_old["request"]["oldObject"] = Value::Null;
    bodies.push(serde_json::to_vec(&null_old).unwrap());
    // The API server writes `kind` before the objects; a client that does not is read raw.
    let mut review: Value = serde_json::from_slice(&review_of(
        "CREATE",
        "StormService",
        Some(nginx_service()),
        None,
    ))
    .unwrap();
    let kind = review["request"]
        .as_object_mut()
        .unwrap()
        .remove("kind")
        .unwrap();
    let late_kind = review.to_string().replacen(
        r#""uid":"0000-1111""#,
        &format!(r#""uid":"0000-1111","kind":{kind}"#),
        1,
    );
    let at = |what: &str| late_kind.find(what).unwrap();
    assert!(at(r#""kind":{"group""#) > at(r#""object""#), "{late_kind}");
    bodies.push(late_kind.clone().into_bytes());

    let read = |body: &[u8]| {
        let request = parse_review(body, Pass::StormService).unwrap();
        matches!(request.object, ObjectIn::Storm(Some(_)))
    };
    assert!(read(&bodies[0]), "the sample was not read in one pass");
    assert!(
        !read(late_kind.as_bytes()),
        "an object before its kind was read typed"
    );
    let mut compared = 0;
    for body in &bodies {
        for cluster in [&FakeCluster::default(), &with_policy] {
            let [one, raw] = [Pass::StormService, Pass::Raw].map(|pass| {
                let settings = Settings::default();
                handle_read(Endpoint::Validate, body, pass, cluster, &settings, &Unasked)
            });
            let text = String::from_utf8_lossy(body);
            assert_eq!(one.http_status, raw.http_status, "{text}");
            assert_eq!(
                String::from_utf8_lossy(&one.body),
                String::from_utf8_lossy(&raw.body),
                "{text}"
            );
            assert_eq!(one.outcome, raw.outcome, "{text}");
            assert_eq!(one.authorize, raw.authorize, "{text}");
            compared += 1;
        }
    }
    assert!(compared > 60, "only {compared} comparisons");
    // A type error read in one pass is answered with its field, not as a bad review.
    let resp = validate(&FakeCluster::default(), wrong_type);
    assert_eq!(resp["allowed"], false, "{resp}");
    assert_eq!(
        resp["status"]["details"]["causes"][0]["field"],
        "spec.rolloutStrategy.canary.steps[0].weight",
        "{resp}"
    );
}

fn service(selector: &[(&str, &str)], ports: &[i32]) -> ServiceInfo {
    ServiceInfo {
        selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: ports.to_vec(),
    }
}

fn policy(name: &str, spec: Value) -> RolloutPolicy {
    serde_json::from_value(json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1",
        "kind": "RolloutPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn nginx_service() -> Value {
    let mut obj = fixture("seed/04-routing-nginx.yaml");
    defaults::apply_defaults(&mut obj).unwrap();
    obj
}

#[test]
fn missing_references_warn_and_deny_under_a_policy() {
    let mut cluster = FakeCluster {
        known: true,
        ..FakeCluster::default()
    };
    cluster.services.insert(
        ("team-a".into(), "my-app-stable".into()),
        service(&[("app", "my-app")], &[80]),
    );
    let resp = validate(&cluster, nginx_service());
    assert_eq!(resp["allowed"], true, "{resp}");
    let w = warnings(&resp);
    assert!(
        w.iter().any(|w| w.starts_with(
            "spec.rolloutStrategy.canary.canaryService: Service \"my-app-canary\" does not exist"
        )),
        "{w:?}"
    );

    cluster.policies.push(policy(
        "strict-refs",
        json!({"requireReferencedObjects": true}),
    ));
    let resp = validate(&cluster, nginx_service());
    assert_eq!(resp["allowed"], false, "{resp}");
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.rolloutStrategy.canary.canaryService: Forbidden: violates RolloutPolicy strict-refs"),
        "{message}"
    );

    cluster.services.insert(
        ("team-a".into(), "my-app-canary".into()),
        service(&[("app", "my-app")], &[80]),
    );
    let resp = validate(&cluster, nginx_service());
    assert_eq!(resp["allowed"], true, "{resp}");
}

/// The manifest names no namespace: the request's ("team-a") is the StormService's, and a template
/// may only come from there.
#[test]
fn analysis_templates_from_another_namespace_are_denied() {
    let with_template_namespace = |ns: &str| {
        let mut obj = fixture("seed/01-canary.yaml");
        obj["spec"]["rolloutStrategy"]["canary"]["steps"][1]["analysis"]["templates"][0]["namespace"] =
            json!(ns);
        obj
    };
    let cluster = FakeCluster::default();
    assert_eq!(
        validate(&cluster, with_template_namespace("team-a"))["allowed"],
        true
    );
    let resp = validate(&cluster, with_template_namespace("team-b"));
    assert_eq!(resp["allowed"], false, "{resp}");
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.rolloutStrategy.canary.steps[1].analysis.templates[0].namespace: Forbidden: AnalysisTemplates are read from the StormService's own namespace; remove namespace or copy the template"),
        "{message}"
    );
}

#[test]
fn policies_enforce_or_warn_in_the_namespaces_they_select() {
    let mut cluster = FakeCluster::default();
    cluster.namespace_labels.insert(
        "team-a".into(),
        [("tier".to_string(), "prod".to_string())].into(),
    );
    let selector = json!({"matchLabels": {"tier": "prod"}});
    cluster.policies.push(policy(
        "small-first-step",
        json!({"namespaceSelector": selector, "mode": "Enforce", "maxFirstStepWeight": 10}),
    ));
    cluster.policies.push(policy(
        "want-approval",
        json!({"namespaceSelector": selector, "mode": "Warn", "requireApprovalBeforePromotion": true}),
    ));
    // First step 20% (over the limit), and no approval step.
    let mut obj = nginx_service();
    obj["spec"]["rolloutStrategy"]["canary"]["steps"] = json!([{"weight": 20}, {"weight": 60}]);
    let resp = validate(&cluster, obj.clone());
    assert_eq!(resp["allowed"], false, "{resp}");
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(message.contains("small-first-step"), "{message}");
    assert!(
        warnings(&resp)
            .iter()
            .any(|w| w.contains("violates RolloutPolicy want-approval")),
        "{resp}"
    );

    // Another namespace: neither policy applies.
    cluster.namespace_labels.insert(
        "team-a".into(),
        [("tier".to_string(), "dev".to_string())].into(),
    );
    let resp = validate(&cluster, obj);
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(
        warnings(&resp).iter().all(|w| !w.contains("RolloutPolicy")),
        "{resp}"
    );
}

#[test]
fn updates_keep_old_problems_as_warnings_and_deny_new_ones() {
    let cluster = FakeCluster::default();
    let mut old = nginx_service();
    // Stored before the rule existed: duplicate Service names.
    old["spec"]["rolloutStrategy"]["canary"]["canaryService"] = json!("my-app-stable");
    let mut new = old.clone();
    new["metadata"]["annotations"] = json!({"team": "a"});
    let resp = response(&handle(
        Endpoint::Validate,
        &review_of(
            "UPDATE",
            "StormService",
            Some(new.clone()),
            Some(old.clone()),
        ),
        &cluster,
    ));
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(
        warnings(&resp)
            .iter()
            .any(|w| w.contains("already true of the stored object")),
        "{resp}"
    );
    // A new error on top is denied, and only the new one is reported as an error.
    new["spec"]["rolloutStrategy"]["canary"]["steps"] = json!([{"weight": 20}, {"weight": 10}]);
    let resp = response(&handle(
        Endpoint::Validate,
        &review_of("UPDATE", "StormService", Some(new), Some(old.clone())),
        &cluster,
    ));
    assert_eq!(resp["allowed"], false, "{resp}");
    let causes = resp["status"]["details"]["causes"].as_array().unwrap();
    assert!(
        causes
            .iter()
            .all(|c| c["field"] != "spec.rolloutStrategy.canary.canaryService"),
        "{causes:?}"
    );
    // UPDATE without oldObject is refused; a finalizer-removing update of a deleted object passes.
    let resp = response(&handle(
        Endpoint::Validate,
        &review_of("UPDATE", "StormService", Some(old.clone()), None),
        &cluster,
    ));
    assert_eq!(resp["allowed"], false);
    assert_eq!(resp["status"]["code"], 400);
    let mut deleting = fixture("invalid/many-faults.yaml");
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let resp = response(&handle(
        Endpoint::Validate,
        &review_of(
            "UPDATE",
            "StormService",
            Some(deleting.clone()),
            Some(deleting),
        ),
        &cluster,
    ));
    assert_eq!(resp["allowed"], true, "{resp}");
}

#[test]
fn delete_connect_and_subresources_are_allowed() {
    let cluster = FakeCluster::default();
    for op in ["DELETE", "CONNECT"] {
        let resp = response(&handle(
            Endpoint::Validate,
            &review_of(op, "StormService", None, Some(json!({}))),
            &cluster,
        ));
        assert_eq!(resp["allowed"], true, "{op}");
    }
    let mut body: Value = serde_json::from_slice(&review_of(
        "UPDATE",
        "StormService",
        Some(json!({"x": 1})),
        None,
    ))
    .unwrap();
    body["request"]["subResource"] = json!("status");
    let resp = response(&handle(
        Endpoint::Validate,
        &serde_json::to_vec(&body).unwrap(),
        &cluster,
    ));
    assert_eq!(resp["allowed"], true);
}

#[test]
fn analysis_templates_and_policies_are_validated() {
    let cluster = FakeCluster::default();
    let bad_template = json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "t", "namespace": "team-a"},
        "spec": {"metrics": []}
    });
    let resp = response(&handle(
        Endpoint::Validate,
        &review_of("CREATE", "AnalysisTemplate", Some(bad_template), None),
        &cluster,
    ));
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.metrics: Required value"),
        "{resp}"
    );
    assert_eq!(resp["status"]["details"]["kind"], "AnalysisTemplate");

    let bad_policy = json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "p"},
        "spec": {"minOnTimeout": "1h", "maxOnTimeout": "10m", "allowedRouters": []}
    });
    let resp = response(&handle(
        Endpoint::Validate,
        &review_of("CREATE", "RolloutPolicy", Some(bad_policy), None),
        &cluster,
    ));
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.minOnTimeout") && msg.contains("spec.allowedRouters"),
        "{msg}"
    );
    // A type error is a denial naming the field, not a 400.
    let typed = json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "p"},
        "spec": {"maxFirstStepWeight": "ten"}
    });
    let resp = response(&handle(
        Endpoint::Validate,
        &review_of("CREATE", "RolloutPolicy", Some(typed), None),
        &cluster,
    ));
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("maxFirstStepWeight"),
        "{resp}"
    );
    // Mutating the other kinds is a no-op.
    let resp = response(&handle(
        Endpoint::Mutate,
        &review_of("CREATE", "RolloutPolicy", Some(json!({"spec": {}})), None),
        &cluster,
    ));
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
}

/// Bodies that are not reviews get a 400 with a reason; reviews that can't be judged are denied
/// with code 400. Never a panic.
#[test]
fn bad_input_gets_a_clear_answer() {
    let cluster = FakeCluster::default();
    let deep = "[".repeat(100_000);
    let deep_object = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"1","operation":"CREATE","kind":{{"group":"{GROUP}","kind":"StormService"}},"object":{}{}}}}}"#,
        "{\"a\":".repeat(200),
        "1}".repeat(200)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "not valid JSON"),
        ("garbage", b"hello".to_vec(), "not valid JSON"),
        (
            "invalid utf-8",
            b"{\"apiVersion\":\"\xff\xfe\"}".to_vec(),
            "not UTF-8",
        ),
        ("deep nesting", deep.into_bytes(), "request body is not"),
        ("deep object", deep_object.into_bytes(), "not valid JSON"),
        ("array", b"[1,2]".to_vec(), "not an admission.k8s.io/v1"),
        (
            "wrong types",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":5}}"#
                .to_vec(),
            "not an admission.k8s.io/v1",
        ),
        (
            "other version",
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"1"}}"#
                .to_vec(),
            "admissionReviewVersions",
        ),
        (
            "a pod",
            br#"{"apiVersion":"v1","kind":"Pod"}"#.to_vec(),
            "expected apiVersion",
        ),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "no request",
        ),
        (
            "no uid",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#
                .to_vec(),
            "uid",
        ),
    ];
    for (name, body, expect) in cases {
        for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
            let answer = handle(endpoint, &body, &cluster);
            assert_eq!(answer.http_status, 400, "{name}");
            assert_eq!(answer.outcome.result, ResultLabel::BadRequest, "{name}");
            let status: Value = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(status["kind"], "Status", "{name}");
            assert_eq!(status["code"], 400, "{name}");
            let msg = status["message"].as_str().unwrap();
            assert!(msg.contains(expect), "{name}: {msg}");
        }
    }

    let refused: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "missing object",
            review_of("CREATE", "StormService", None, None),
            "request.object is missing",
        ),
        (
            "object not an object",
            review_of("CREATE", "StormService", Some(json!([1])), None),
            "not a JSON object",
        ),
        (
            "unknown kind",
            review_of("CREATE", "Widget", Some(json!({})), None),
            "not orchestration.aibrix.ai \"Widget\"",
        ),
        (
            "unknown operation",
            review_of("PATCH", "StormService", Some(json!({})), None),
            "PATCH",
        ),
    ];
    for (name, body, expect) in refused {
        for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
            let resp = response(&handle(endpoint, &body, &cluster));
            assert_eq!(resp["allowed"], false, "{name}");
            assert_eq!(resp["status"]["code"], 400, "{name}");
            let msg = resp["status"]["message"].as_str().unwrap();
            assert!(msg.contains(expect), "{name}: {msg}");
        }
    }
    // A pod review sent here by a misconfigured rule: denied, saying why.
    let mut pod: Value =
        serde_json::from_slice(&review_of("CREATE", "Pod", Some(json!({})), None)).unwrap();
    pod["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});
    let resp = response(&handle(
        Endpoint::Validate,
        &serde_json::to_vec(&pod).unwrap(),
        &cluster,
    ));
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not core \"Pod\""),
        "{resp}"
    );
}

#[test]
fn warnings_are_single_lines() {
    let w = [Warning::new(
        storm_shared::errors::FieldPath::new("spec"),
        "line one\nline two\r\tend",
    )];
    assert_eq!(render_warnings(&w), ["spec: line one line two  end"]);
}

#[test]
fn noop_is_a_fixed_allowed_review() {
    let a = noop_answer();
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["response"]["allowed"], true);
}

#[test]
fn the_mutating_answer_denies_with_every_problem_before_the_schema_speaks() {
    let cluster = FakeCluster::default();
    // Weight 150 and port 70000 break the CRD schema, which the API server checks after mutating
    // webhooks: the mutating answer must already name them and every other fault.
    let doc = fixture("invalid/many-faults.yaml");
    let answer = handle(
        Endpoint::Mutate,
        &review_of("CREATE", "StormService", Some(doc), None),
        &cluster,
    );
    assert_eq!(answer.outcome.result, ResultLabel::Denied);
    let message = answer.outcome.denial.unwrap();
    for path in [
        "spec.rolloutStrategy.canary.steps[1].weight",
        "spec.rolloutStrategy.canary.trafficRouting.nginx.servicePort",
        "spec.template.metadata.labels",
        "spec.rolloutStrategy.autoRollback.onTimeout",
    ] {
        assert!(message.contains(path), "{path} missing from {message}");
    }
    // A type error stays the schema's to report: defaulting is allowed through.
    let mut typed_wrong = fixture("seed/01-canary.yaml");
    typed_wrong["spec"]["rolloutStrategy"]["canary"]["steps"][0]["weight"] = json!("ten");
    let answer = handle(
        Endpoint::Mutate,
        &review_of("CREATE", "StormService", Some(typed_wrong), None),
        &cluster,
    );
    assert_ne!(answer.outcome.result, ResultLabel::Denied);
}

// ---------------------------------------------------------------------------------------------
// Who may name which Service or router object, and caches that have not listed.

/// The seed canary (Services my-app-stable/my-app-canary, Ingress my-app-ingress) reviewed as
/// `system:serviceaccount:team-a:tenant`.
fn tenant_review(operation: &str, object: Value, old: Option<Value>) -> Vec<u8> {
    let body = review_of(operation, "StormService", Some(object), old);
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["request"]["userInfo"] = json!({
        "username": "system:serviceaccount:team-a:tenant", "uid": "u-1",
        "groups": ["system:serviceaccounts", "system:authenticated"],
        "extra": {"authentication.kubernetes.io/credential-id": ["JTI=1"]}
    });
    serde_json::to_vec(&v).unwrap()
}

fn canary_seed() -> Value {
    fixture("seed/01-canary.yaml")
}

fn causes(resp: &Value) -> Vec<(String, String)> {
    resp["status"]["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["field"].as_str().unwrap().to_string(),
                c["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_create_asks_whether_the_author_may_patch_every_named_object() {
    let cluster = FakeCluster::default();
    let body = tenant_review("CREATE", canary_seed(), None);
    let first = handle_with(
        Endpoint::Validate,
        &body,
        &cluster,
        &Settings::default(),
        &Unasked,
    );
    // Unanswered questions are denied (fail closed) and handed to the caller to ask.
    assert!(!response(&first)["allowed"].as_bool().unwrap());
    let asked: Vec<(TrafficKind, &str)> = first
        .authorize
        .iter()
        .map(|r| (r.kind, r.name.as_str()))
        .collect();
    assert_eq!(
        asked,
        [
            (TrafficKind::Service, "my-app-stable"),
            (TrafficKind::Service, "my-app-canary"),
            (TrafficKind::Ingress, "my-app-ingress"),
        ]
    );
    let user = &first.authorize[0].user;
    assert_eq!(user.username, "system:serviceaccount:team-a:tenant");
    assert_eq!(user.uid, "u-1");
    assert_eq!(user.groups.len(), 2);
    assert_eq!(user.extra.len(), 1);
    assert!(first.authorize.iter().all(|r| r.namespace == "team-a"));
    // Answered: the one denied object is denied with its field, the others pass.
    let mut decided = Decided::default();
    for r in &first.authorize {
        let d = if r.name == "my-app-stable" {
            Decision::Denied("RBAC: no rule".into())
        } else {
            Decision::Allowed
        };
        decided.0.insert(r.clone(), d);
    }
    let second = handle_with(
        Endpoint::Validate,
        &body,
        &cluster,
        &Settings::default(),
        &decided,
    );
    assert!(second.authorize.is_empty());
    let resp = response(&second);
    assert!(!resp["allowed"].as_bool().unwrap());
    let denied = causes(&resp);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].0, "spec.rolloutStrategy.canary.stableService");
    for part in [
        "user \"system:serviceaccount:team-a:tenant\" may not patch Service \"team-a/my-app-stable\" (RBAC: no rule)",
        "get patch rights on services \"my-app-stable\" in namespace \"team-a\"",
        "stormservice.aibrix.ai/managed-by=my-app",
    ] {
        assert!(denied[0].1.contains(part), "{part} not in {}", denied[0].1);
    }
    // A failed check is refused too, saying it could not be checked.
    for d in decided.0.values_mut() {
        *d = Decision::Failed("SubjectAccessReview did not answer within 2s".into());
    }
    let resp = response(&handle_with(
        Endpoint::Validate,
        &body,
        &cluster,
        &Settings::default(),
        &decided,
    ));
    let failed = causes(&resp);
    assert_eq!(failed.len(), 3);
    assert!(failed[0].1.contains("could not check"), "{failed:?}");
    assert!(
        failed[0].1.contains("did not answer within 2s"),
        "{failed:?}"
    );
}

#[test]
fn members_of_system_masters_are_not_asked_about() {
    // The API server's authorizer allows them everything: asking would only cost a round trip.
    let body = review_of("CREATE", "StormService", Some(canary_seed()), None);
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["request"]["userInfo"] =
        json!({"username": "admin", "groups": ["system:masters", "system:authenticated"]});
    let body = serde_json::to_vec(&v).unwrap();
    let answer = handle_with(
        Endpoint::Validate,
        &body,
        &FakeCluster::default(),
        &Settings::default(),
        &Unasked,
    );
    assert!(answer.authorize.is_empty());
    assert!(response(&answer)["allowed"].as_bool().unwrap());
}

#[test]
fn an_owner_opt_in_needs_no_access_check() {
    let mut cluster = FakeCluster::default();
    for (kind, name) in [
        (TrafficKind::Service, "my-app-stable"),
        (TrafficKind::Service, "my-app-canary"),
        (TrafficKind::Ingress, "my-app-ingress"),
    ] {
        cluster
            .managed_by
            .insert((kind, "team-a".into(), name.into()), "my-app".into());
    }
    // The canary Service's opt-in names another StormService: that one is still asked.
    cluster.managed_by.insert(
        (
            TrafficKind::Service,
            "team-a".into(),
            "my-app-canary".into(),
        ),
        "someone-else".into(),
    );
    let body = tenant_review("CREATE", canary_seed(), None);
    let answer = handle_with(
        Endpoint::Validate,
        &body,
        &cluster,
        &Settings::default(),
        &Unasked,
    );
    let asked: Vec<&str> = answer.authorize.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(asked, ["my-app-canary"]);
}

#[test]
fn updates_that_keep_the_named_objects_ask_nothing() {
    let cluster = FakeCluster::default();
    let old = canary_seed();
    let mut new = old.clone();
    new["metadata"]["annotations"] = json!({"stormservice.aibrix.ai/rollout-pause": "true"});
    new["spec"]["replicas"] = json!(3);
    let answer = handle_with(
        Endpoint::Validate,
        &tenant_review("UPDATE", new.clone(), Some(old.clone())),
        &cluster,
        &Settings::default(),
        &Unasked,
    );
    assert!(answer.authorize.is_empty());
    assert!(response(&answer)["allowed"].as_bool().unwrap());
    // Changing one Service asks about that one only.
    new["spec"]["rolloutStrategy"]["canary"]["stableService"] = json!("other-stable");
    let answer = handle_with(
        Endpoint::Validate,
        &tenant_review("UPDATE", new, Some(old)),
        &cluster,
        &Settings::default(),
        &Unasked,
    );
    let asked: Vec<&str> = answer.authorize.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(asked, ["other-stable"]);
    // The mutating endpoint never asks: access is judged once, by the validating webhook.
    let answer = handle_with(
        Endpoint::Mutate,
        &tenant_review("CREATE", canary_seed(), None),
        &cluster,
        &Settings::default(),
        &Unasked,
    );
    assert!(answer.authorize.is_empty());
    assert!(response(&answer)["allowed"].as_bool().unwrap());
}

#[test]
fn reviews_are_refused_until_the_caches_have_listed() {
    let cluster = FakeCluster {
        unsynced: Some("watch caches not listed yet: RolloutPolicy".into()),
        ..FakeCluster::default()
    };
    for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
        let resp = response(&handle(
            endpoint,
            &review_of("CREATE", "StormService", Some(canary_seed()), None),
            &cluster,
        ));
        assert_eq!(resp["allowed"], false);
        assert_eq!(resp["status"]["code"], 503);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(message.contains("RolloutPolicy"), "{message}");
        assert!(message.contains("Retry"), "{message}");
    }
}

/// AnalysisTemplates: the webhook's analysis bounds, and the RolloutPolicies selecting their
/// namespace (Enforce denies, Warn warns; updates ratcheted like StormServices).
#[test]
fn analysis_templates_meet_the_bounds_and_the_policies_of_their_namespace() {
    let template = |timeout: &str, url: &str| {
        json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "t", "namespace": "team-a"},
            "spec": {"metrics": [{"name": "m", "successCondition": "result < 1",
                "provider": {"web": {"url": url, "timeout": timeout}}}]}
        })
    };
    let judge = |cluster: &FakeCluster, settings: &Settings, object: Value, old: Option<Value>| {
        let op = if old.is_some() { "UPDATE" } else { "CREATE" };
        response(&handle_with(
            Endpoint::Validate,
            &review_of(op, "AnalysisTemplate", Some(object), old),
            cluster,
            settings,
            &AllowAll,
        ))
    };
    let ok = template("10s", "https://metrics.example.com/q");
    let slow = template("60s", "https://metrics.example.com/q");
    let mut cluster = FakeCluster::default();
    let settings = Settings::default();
    assert_eq!(
        judge(&cluster, &settings, ok.clone(), None)["allowed"],
        true
    );
    let resp = judge(&cluster, &settings, slow.clone(), None);
    assert_eq!(resp["allowed"], false);
    let denied = causes(&resp);
    assert_eq!(denied[0].0, "spec.metrics[0].provider.web.timeout");
    assert!(denied[0].1.contains("--analysis-max-timeout"), "{denied:?}");
    // The webhook's setting decides.
    let generous = Settings {
        analysis_bounds: AnalysisBounds {
            max_timeout: std::time::Duration::from_secs(60),
            ..AnalysisBounds::default()
        },
    };
    assert_eq!(judge(&cluster, &generous, slow, None)["allowed"], true);

    // A policy selecting team-a's namespace allows only Prometheus.
    let policy: RolloutPolicy = serde_json::from_value(json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "prom-only"},
        "spec": {"namespaceSelector": {"matchLabels": {"tier": "prod"}},
                 "allowedAnalysisProviders": ["prometheus"]}
    }))
    .unwrap();
    cluster.policies = vec![policy.clone()];
    assert_eq!(
        judge(&cluster, &settings, ok.clone(), None)["allowed"],
        true
    );
    cluster.namespace_labels.insert(
        "team-a".into(),
        [("tier".to_string(), "prod".to_string())].into(),
    );
    let resp = judge(&cluster, &settings, ok.clone(), None);
    assert_eq!(resp["allowed"], false);
    let denied = causes(&resp);
    assert_eq!(denied[0].0, "spec.metrics[0].provider.web");
    assert!(
        denied[0].1.contains("violates RolloutPolicy prom-only"),
        "{denied:?}"
    );
    // An update of a template stored before the policy is admitted, with a warning.
    let mut relabelled = ok.clone();
    relabelled["metadata"]["labels"] = json!({"team": "a"});
    let resp = judge(&cluster, &settings, relabelled, Some(ok.clone()));
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(
        warnings(&resp)
            .iter()
            .any(|w| w.contains("already true of the stored object")),
        "{resp}"
    );
    // Warn mode admits with a warning.
    let mut warn = policy;
    warn.spec.mode = Some(storm_shared::types::policy::PolicyMode::Warn);
    cluster.policies = vec![warn];
    let resp = judge(&cluster, &settings, ok, None);
    assert_eq!(resp["allowed"], true);
    assert!(
        warnings(&resp)
            .iter()
            .any(|w| w.starts_with("spec.metrics[0].provider.web: violates RolloutPolicy")),
        "{resp}"
    );
}
