//! The admission webhook against the local control plane: real kubectl, real HTTPS, the webhook
//! registered in URL mode.
//!
//! The webhook runs as the dev stack does (`tests/dev/dev.sh up`): built once by the harness, started
//! detached on a free loopback port, registered cluster-wide, and reused by later test processes
//! (webhook configurations are cluster-wide, so one webhook serves every suite; `make dev-down`
//! removes it). Each test has its own namespace; RolloutPolicies are cluster-scoped, so each test's
//! policies select only its own namespace by a label unique to the test.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use storm_test_support::{TestNamespace, cluster, dump_logs_on_error, process};

use storm_test_support::webhook::{Webhook, running};

/// The running webhook (started once, shared by every suite).
fn webhook() -> Result<&'static Webhook> {
    running()
}

/// A namespace for one test, with the webhook running.
async fn namespace(prefix: &str) -> Result<TestNamespace> {
    webhook()?;
    TestNamespace::new(prefix).await
}

fn fixture(rel: &str) -> Result<String> {
    let path = storm_test_support::repo_root()
        .join("tests/fixtures")
        .join(rel);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Runs kubectl with `stdin` as the manifest (`-f -`).
fn kubectl_stdin(mut cmd: Command, args: &[&str], stdin: &str) -> Result<Output> {
    use std::io::Write;
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("running {shown}"))?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl apply -f -` in the namespace, with extra flags.
fn apply(ns: &TestNamespace, manifest: &str, extra: &[&str]) -> Result<Output> {
    let mut args = vec!["apply", "-f", "-"];
    args.extend_from_slice(extra);
    kubectl_stdin(ns.kubectl(), &args, manifest)
}

/// Applies until `done` accepts the result (the webhook's caches follow the cluster within moments).
fn apply_until(
    ns: &TestNamespace,
    manifest: &str,
    extra: &[&str],
    what: &str,
    done: impl Fn(&Output) -> bool,
) -> Result<Output> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = apply(ns, manifest, extra)?;
        if done(&out) {
            return Ok(out);
        }
        if Instant::now() > deadline {
            let (o, e) = text(&out);
            bail!("timed out waiting until {what}; last output:\n{o}{e}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// many-faults.yaml with its two schema-level faults (weight 150, servicePort 70000) made
/// schema-valid, so the object reaches the validating webhook with every other fault intact.
fn many_faults_for_the_webhook() -> Result<String> {
    let original = fixture("invalid/many-faults.yaml")?;
    let changed = original
        .replace("weight: 150", "weight: 100")
        .replace("servicePort: 70000", "servicePort: 8080");
    ensure!(
        changed.matches("weight: 100").count() == 1 && changed.contains("servicePort: 8080"),
        "many-faults.yaml changed shape; update this test"
    );
    Ok(changed)
}

/// Every fault of many-faults.yaml that the API server's schema lets through.
const WEBHOOK_PATHS: &[&str] = &[
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

fn assert_denied_with_paths(out: &Output, paths: &[&str]) -> Result<()> {
    let (stdout, stderr) = text(out);
    ensure!(
        !out.status.success(),
        "kubectl succeeded:\n{stdout}{stderr}"
    );
    ensure!(
        stderr.contains("The StormService \"broken\" is invalid"),
        "{stderr}"
    );
    for p in paths {
        ensure!(
            stderr.contains(&format!("* {p}: ")),
            "{p} missing from:\n{stderr}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn broken_storm_services_are_denied_with_every_field_path() -> Result<()> {
    let ns = namespace("wh-deny").await?;
    let result = async {
        // As written: weight 150 and port 70000 break the schema, which the API server checks after
        // mutating webhooks and before validating ones. The mutating answer already names them and
        // every other fault, so the user sees everything in one denial.
        let out = apply(&ns, &fixture("invalid/many-faults.yaml")?, &[])?;
        let (_, stderr) = text(&out);
        ensure!(!out.status.success(), "{stderr}");
        for p in [
            "spec.rolloutStrategy.canary.steps[1].weight",
            "spec.rolloutStrategy.canary.trafficRouting.nginx.servicePort",
        ] {
            ensure!(stderr.contains(p), "{p} missing from:\n{stderr}");
        }
        assert_denied_with_paths(&out, WEBHOOK_PATHS)?;
        // Schema-valid but wrong in every other way: the webhook names every field in one answer,
        // for a real apply and for a server-side dry run alike.
        let manifest = many_faults_for_the_webhook()?;
        for extra in [&[][..], &["--dry-run=server"][..]] {
            let out = apply(&ns, &manifest, extra)?;
            assert_denied_with_paths(&out, WEBHOOK_PATHS).with_context(|| format!("{extra:?}"))?;
            // The ConfigMap beside it is admitted: the webhook sees only StormServices.
            ensure!(
                text(&out).0.contains("configmap/ignored"),
                "{:?}",
                text(&out)
            );
        }
        let out = ns
            .kubectl()
            .args([
                "get",
                "stormservice",
                "broken",
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .output()?;
        ensure!(text(&out).0.trim().is_empty(), "a denied object exists");

        // Blue-green with both blocks and one Service for both roles.
        let bg = r#"
apiVersion: orchestration.aibrix.ai/v1alpha1
kind: StormService
metadata:
  name: broken
spec:
  replicas: 2
  selector: {matchLabels: {app: bg}}
  template:
    metadata: {labels: {app: bg}}
    spec:
      roles:
      - name: server
        template:
          metadata: {labels: {app: bg}}
          spec: {containers: [{name: app, image: app:v1}]}
  rolloutStrategy:
    type: BlueGreen
    canary:
      steps: [{weight: 10}]
    blueGreen:
      activeService: bg
      previewService: bg
"#;
        let out = apply(&ns, bg, &[])?;
        assert_denied_with_paths(
            &out,
            &[
                "spec.rolloutStrategy.canary",
                "spec.rolloutStrategy.blueGreen.previewService",
            ],
        )?;

        // AIBrix workloads that cannot be made valid: an unknown scheduler, and a group role in
        // a second PodGroup of the RoleSet's scheduler. Denied whole, nothing half-made.
        let gang = r#"
apiVersion: orchestration.aibrix.ai/v1alpha1
kind: StormService
metadata:
  name: broken
spec:
  replicas: 1
  selector: {matchLabels: {app: tp}}
  template:
    metadata: {labels: {app: tp}}
    spec:
      schedulingStrategy: {coschedulingSchedulingStrategy: {minMember: 4}}
      roles:
      - name: prefill
        podGroupSize: 2
        schedulingStrategy: {coschedulingSchedulingStrategy: {minMember: 2}}
        template:
          spec: {containers: [{name: engine, image: engine:v1}]}
      - name: decode
        schedulingStrategy: {kueueSchedulingStrategy: {}}
        template:
          spec: {containers: [{name: engine, image: engine:v1}]}
"#;
        let out = apply(&ns, gang, &[])?;
        assert_denied_with_paths(
            &out,
            &[
                "spec.template.spec.roles[0].schedulingStrategy",
                "spec.template.spec.roles[1].schedulingStrategy.kueueSchedulingStrategy",
            ],
        )?;
        ensure!(
            text(&out).1.contains("keep this one"),
            "the fix is named: {:?}",
            text(&out)
        );
        // A GPU budget the rollout cannot fit: kubectl apply answers with the arithmetic.
        let out = apply(&ns, &fixture("invalid/gpu-budget-too-small.yaml")?, &[])?;
        let (_, stderr) = text(&out);
        ensure!(!out.status.success(), "{stderr}");
        ensure!(
            stderr.contains("The StormService \"llama\" is invalid: spec.rolloutStrategy.capacityBudget.maxExtra: Invalid value: 2: too small for this rollout: one RoleSet holds 2 nvidia.com/gpu")
                && stderr.contains("4 RoleSets × 2 = 8 above steady state; set canary.dynamicStableScale: true"),
            "the arithmetic and the fix: {stderr}"
        );
        // A name whose RoleSet names could not be valid label values.
        let long = bg.replace("name: broken", &format!("name: broken{}", "x".repeat(50)));
        let out = apply(&ns, &long, &[])?;
        let (_, stderr) = text(&out);
        ensure!(!out.status.success(), "{stderr}");
        ensure!(stderr.contains("metadata.name"), "{stderr}");
        let out = ns
            .kubectl()
            .args(["get", "rolesets", "-o", "name"])
            .output()?;
        ensure!(text(&out).0.trim().is_empty(), "nothing half-applied");
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

fn get_json(ns: &TestNamespace, args: &[&str]) -> Result<Value> {
    let mut cmd = ns.kubectl();
    cmd.args(args).args(["-o", "json"]);
    let out = cmd.output()?;
    let (o, e) = text(&out);
    ensure!(out.status.success(), "kubectl {args:?}: {e}");
    serde_json::from_str(&o).context("parsing kubectl output")
}

fn assert_defaulted(obj: &Value) -> Result<()> {
    let rs = &obj["spec"]["rolloutStrategy"];
    let ar = &rs["autoRollback"];
    ensure!(ar["enabled"] == true, "{rs}");
    ensure!(ar["onFailure"]["healthCheckFailure"] == true, "{rs}");
    ensure!(ar["onFailure"]["analysisFailure"] == true, "{rs}");
    ensure!(ar["onTimeout"] == "30m", "{rs}");
    ensure!(rs["canary"].get("autoRollback").is_none(), "{rs}");
    Ok(())
}

const MOVED_WARNING: &str = "Warning: spec.rolloutStrategy.canary.autoRollback: autoRollback belongs at spec.rolloutStrategy.autoRollback";

#[tokio::test]
async fn a_valid_storm_service_is_admitted_defaulted_and_warned_about() -> Result<()> {
    let ns = namespace("wh-admit").await?;
    let result = async {
        let manifest = fixture("seed/13-migration-after.yaml")?;
        // Dry run first: same answer, defaults visible in the returned object, nothing created.
        let out = apply(&ns, &manifest, &["--dry-run=server", "-o", "json"])?;
        let (stdout, stderr) = text(&out);
        ensure!(out.status.success(), "{stderr}");
        ensure!(stderr.contains(MOVED_WARNING), "{stderr}");
        assert_defaulted(&serde_json::from_str(&stdout)?)?;
        let out = ns
            .kubectl()
            .args([
                "get",
                "stormservice",
                "my-app",
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .output()?;
        ensure!(text(&out).0.trim().is_empty(), "dry run created the object");

        let out = apply(&ns, &manifest, &[])?;
        let (stdout, stderr) = text(&out);
        ensure!(out.status.success(), "{stdout}{stderr}");
        ensure!(stderr.contains(MOVED_WARNING), "{stderr}");
        ensure!(
            stdout.contains("stormservice.orchestration.aibrix.ai/my-app created"),
            "{stdout}"
        );
        assert_defaulted(&get_json(&ns, &["get", "stormservice", "my-app"])?)?;

        // Applying the same manifest again is an UPDATE: still admitted, still defaulted.
        let out = apply(&ns, &manifest, &[])?;
        ensure!(out.status.success(), "{:?}", text(&out));
        assert_defaulted(&get_json(&ns, &["get", "stormservice", "my-app"])?)?;

        // An update that breaks a rule is denied and leaves the stored object alone.
        let broken = manifest.replace("weight: 50", "weight: 10");
        ensure!(broken != manifest, "fixture changed shape");
        let out = apply(&ns, &broken, &[])?;
        let (_, stderr) = text(&out);
        ensure!(!out.status.success(), "{stderr}");
        ensure!(
            stderr.contains("spec.rolloutStrategy.canary.steps[1].weight"),
            "{stderr}"
        );
        let stored = get_json(&ns, &["get", "stormservice", "my-app"])?;
        ensure!(
            stored["spec"]["rolloutStrategy"]["canary"]["steps"][1]["weight"] == 50,
            "{stored}"
        );
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn seed_and_aibrix_fixtures_apply_unchanged_under_strict_validation() -> Result<()> {
    let ns = namespace("wh-fixtures").await?;
    let result = async {
        let root = storm_test_support::repo_root();
        let mut files: Vec<PathBuf> = Vec::new();
        // AIBrix's samples stay in ../shared beside the checkout. Only the top level: the
        // with-autoscaler/ sample also holds AIBrix PodAutoscalers, whose CRD is not installed here.
        for dir in ["../shared/fixtures/aibrix", "tests/fixtures/seed"] {
            let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect();
            found.sort();
            files.extend(found);
        }
        ensure!(files.len() >= 10, "fixtures missing: {files:?}");
        for file in &files {
            let out = ns
                .kubectl()
                .args(["apply", "--dry-run=server", "--validate=strict", "-f"])
                .arg(file)
                .output()?;
            let (stdout, stderr) = text(&out);
            ensure!(
                out.status.success(),
                "{} refused:\n{stdout}{stderr}",
                file.display()
            );
        }
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

/// A cluster-scoped RolloutPolicy that selects only namespaces with a label unique to one test;
/// deleted when dropped.
struct Policy {
    name: String,
}

impl Policy {
    fn create(ns: &TestNamespace, name: &str, spec: Value) -> Result<Self> {
        let label = format!("storm.test/policy-{name}");
        let out = ns
            .cluster()
            .kubectl()
            .args(["label", "namespace", ns.name(), &format!("{label}=on")])
            .output()?;
        ensure!(out.status.success(), "{:?}", text(&out));
        let mut spec = spec;
        spec["namespaceSelector"] = serde_json::json!({"matchLabels": {label: "on"}});
        let policy = serde_json::json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1",
            "kind": "RolloutPolicy",
            "metadata": {"name": name},
            "spec": spec,
        });
        let out = kubectl_stdin(
            ns.cluster().kubectl(),
            &["apply", "-f", "-"],
            &policy.to_string(),
        )?;
        ensure!(out.status.success(), "{:?}", text(&out));
        Ok(Self { name: name.into() })
    }

    fn patch(&self, ns: &TestNamespace, patch: Value) -> Result<()> {
        let out = ns
            .cluster()
            .kubectl()
            .args([
                "patch",
                "rolloutpolicy",
                &self.name,
                "--type=merge",
                "-p",
                &patch.to_string(),
            ])
            .output()?;
        ensure!(out.status.success(), "{:?}", text(&out));
        Ok(())
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        if let Ok(c) = cluster() {
            let _ = c
                .kubectl()
                .args([
                    "delete",
                    "rolloutpolicy",
                    &self.name,
                    "--ignore-not-found",
                    "--wait=false",
                ])
                .output();
        }
    }
}

fn unique(prefix: &str, ns: &TestNamespace) -> String {
    // The namespace name is already unique; reuse its suffix.
    format!("{prefix}-{}", ns.name().rsplit('-').next().unwrap_or("x"))
}

#[tokio::test]
async fn rollout_policies_enforce_or_warn_in_the_namespaces_they_select() -> Result<()> {
    let ns = namespace("wh-policy").await?;
    let other = namespace("wh-policy-other").await?;
    let result = async {
        let manifest = fixture("seed/13-migration-after.yaml")?; // first step: weight 20
        let policy = Policy::create(
            &ns,
            &unique("first-step", &ns),
            serde_json::json!({"mode": "Enforce", "maxFirstStepWeight": 10}),
        )?;
        let out = apply_until(
            &ns,
            &manifest,
            &["--dry-run=server"],
            "the Enforce policy denies",
            |o| !o.status.success(),
        )?;
        let (_, stderr) = text(&out);
        ensure!(
            stderr.contains(&format!(
                "spec.rolloutStrategy.canary.steps[0].weight: Forbidden: violates RolloutPolicy {}",
                policy.name
            )),
            "{stderr}"
        );
        // The same object in a namespace the policy doesn't select is admitted.
        let out = apply(&other, &manifest, &[])?;
        ensure!(out.status.success(), "{:?}", text(&out));

        policy.patch(&ns, serde_json::json!({"spec": {"mode": "Warn"}}))?;
        let out = apply_until(&ns, &manifest, &[], "the Warn policy admits", |o| {
            o.status.success()
        })?;
        let (_, stderr) = text(&out);
        ensure!(
            stderr.contains(&format!(
                "Warning: spec.rolloutStrategy.canary.steps[0].weight: violates RolloutPolicy {}",
                policy.name
            )),
            "{stderr}"
        );
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    other.cleanup().await?;
    ns.cleanup().await
}

#[tokio::test]
async fn missing_references_warn_and_are_denied_when_a_policy_requires_them() -> Result<()> {
    let ns = namespace("wh-refs").await?;
    let result = async {
        let manifest = fixture("seed/04-routing-nginx.yaml")?;
        let out = apply(&ns, &manifest, &["--dry-run=server"])?;
        let (_, stderr) = text(&out);
        ensure!(out.status.success(), "{stderr}");
        for w in [
            "Warning: spec.rolloutStrategy.canary.stableService: Service \"my-app-stable\" does not exist",
            "Warning: spec.rolloutStrategy.canary.canaryService: Service \"my-app-canary\" does not exist",
            "Warning: spec.rolloutStrategy.canary.trafficRouting.nginx.ingress: Ingress \"my-app-ingress\" does not exist",
        ] {
            ensure!(stderr.contains(w), "{w} missing from:\n{stderr}");
        }

        let policy = Policy::create(
            &ns,
            &unique("refs", &ns),
            serde_json::json!({"mode": "Enforce", "requireReferencedObjects": true}),
        )?;
        let out = apply_until(
            &ns,
            &manifest,
            &["--dry-run=server"],
            "requireReferencedObjects denies",
            |o| !o.status.success(),
        )?;
        let (_, stderr) = text(&out);
        for p in [
            "spec.rolloutStrategy.canary.stableService",
            "spec.rolloutStrategy.canary.canaryService",
            "spec.rolloutStrategy.canary.trafficRouting.nginx.ingress",
        ] {
            ensure!(
                stderr.contains(&format!("{p}: Forbidden: violates RolloutPolicy {}", policy.name)),
                "{p} missing from:\n{stderr}"
            );
        }

        // Create what it references: then it is admitted without warnings about them.
        let objects = r#"
apiVersion: v1
kind: Service
metadata: {name: my-app-stable}
spec: {selector: {app: my-app}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: my-app-canary}
spec: {selector: {app: my-app}, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: my-app-ingress}
spec:
  rules:
  - http:
      paths:
      - path: /
        pathType: Prefix
        backend: {service: {name: my-app-stable, port: {number: 80}}}
"#;
        let out = apply(&ns, objects, &[])?;
        ensure!(out.status.success(), "{:?}", text(&out));
        let out = apply_until(&ns, &manifest, &[], "the references are found", |o| {
            o.status.success()
        })?;
        let (_, stderr) = text(&out);
        ensure!(!stderr.contains("does not exist"), "{stderr}");
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn analysis_templates_and_rollout_policies_are_validated() -> Result<()> {
    let ns = namespace("wh-kinds").await?;
    let result = async {
        let template = r#"
apiVersion: orchestration.aibrix.ai/v1alpha1
kind: AnalysisTemplate
metadata: {name: broken}
spec:
  args: [{name: service}, {name: service}]
  metrics: []
"#;
        let out = apply(&ns, template, &["--dry-run=server"])?;
        let (_, stderr) = text(&out);
        ensure!(!out.status.success(), "{stderr}");
        for p in ["spec.args[1].name", "spec.metrics"] {
            ensure!(stderr.contains(p), "{p} missing from:\n{stderr}");
        }
        let policy = r#"
apiVersion: orchestration.aibrix.ai/v1alpha1
kind: RolloutPolicy
metadata: {name: broken-policy-e2e}
spec:
  minOnTimeout: 1h
  maxOnTimeout: 10m
  allowedRouters: []
"#;
        let out = kubectl_stdin(
            ns.cluster().kubectl(),
            &["apply", "--dry-run=server", "-f", "-"],
            policy,
        )?;
        let (_, stderr) = text(&out);
        ensure!(!out.status.success(), "{stderr}");
        for p in ["spec.minOnTimeout", "spec.allowedRouters"] {
            ensure!(stderr.contains(p), "{p} missing from:\n{stderr}");
        }
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

#[tokio::test]
async fn analysis_metrics_may_not_ask_what_the_controller_must_not_do() -> Result<()> {
    let ns = namespace("wh-analysis").await?;
    let result = async {
        // Every fault at once: a Host and a metadata header, a 60s timeout (the webhook's limit
        // is 30s) and a Datadog address that is not a Datadog site.
        let unsafe_template = r#"
apiVersion: orchestration.aibrix.ai/v1alpha1
kind: AnalysisTemplate
metadata: {name: unsafe}
spec:
  metrics:
  - name: web
    successCondition: result < 1
    provider:
      web:
        url: https://metrics.example.com/rate
        timeout: 60s
        headers:
        - {key: Host, value: internal.example}
        - {key: Metadata-Flavor, value: Google}
  - name: dd
    successCondition: result < 1
    provider:
      datadog:
        query: avg:errors{*}
        address: https://attacker.example
        secretRef: {name: datadog}
"#;
        let out = apply(&ns, unsafe_template, &["--dry-run=server"])?;
        let (_, stderr) = text(&out);
        ensure!(!out.status.success(), "{stderr}");
        for (field, says) in [
            ("spec.metrics[0].provider.web.headers[0].key: Forbidden", "put the host in the URL"),
            ("spec.metrics[0].provider.web.headers[1].key: Forbidden", "cloud metadata headers are refused"),
            ("spec.metrics[0].provider.web.timeout: Invalid value: \"60s\"", "--analysis-max-timeout"),
            ("spec.metrics[1].provider.datadog.address: Invalid value: \"https://attacker.example\"", "key `address` of the Secret"),
        ] {
            let line = stderr
                .lines()
                .find(|l| l.contains(field))
                .with_context(|| format!("{field} missing from:\n{stderr}"))?;
            ensure!(line.contains(says), "{line:?} does not say {says:?}");
        }

        // What the same metrics look like done right is admitted: a credential from a Secret,
        // Datadog's own site (the suites' webhook admits 1s intervals, as their controllers run).
        let safe_template = r#"
apiVersion: orchestration.aibrix.ai/v1alpha1
kind: AnalysisTemplate
metadata: {name: safe}
spec:
  metrics:
  - name: web
    successCondition: result < 1
    interval: 1s
    count: 2
    provider:
      web:
        url: https://metrics.example.com/rate
        timeout: 30s
        headers:
        - key: Authorization
          valueFrom: {secretKeyRef: {name: metrics-token, key: token}}
  - name: dd
    successCondition: result < 1
    provider:
      datadog:
        query: avg:errors{*}
        address: https://api.datadoghq.eu
        secretRef: {name: datadog}
"#;
        let out = apply(&ns, safe_template, &[])?;
        ensure!(out.status.success(), "{:?}", text(&out));

        // A RolloutPolicy selecting this namespace allows Prometheus only: a new template with
        // the web provider is denied, naming the provider and the policy. (The stored one stays:
        // on its updates, faults it already had are warnings.)
        let renamed = safe_template.replace("name: safe", "name: under-policy");
        let policy = Policy::create(
            &ns,
            &unique("prom-only", &ns),
            serde_json::json!({"mode": "Enforce", "allowedAnalysisProviders": ["prometheus"]}),
        )?;
        let out = apply_until(
            &ns,
            &renamed,
            &["--dry-run=server"],
            "the policy denies the web provider",
            |o| !o.status.success(),
        )?;
        let (_, stderr) = text(&out);
        ensure!(
            stderr.contains(&format!(
                "spec.metrics[0].provider.web: Forbidden: violates RolloutPolicy {}: analysis provider web is not allowed in this namespace; allowed: prometheus",
                policy.name
            )),
            "{stderr}"
        );
        ensure!(
            stderr.contains("spec.metrics[1].provider.datadog: Forbidden"),
            "{stderr}"
        );
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

/// `curl` a path of the running webhook; returns (HTTP status, body).
fn curl(w: &Webhook, method: &str, path: &str, body: Option<&Path>) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(&w.ca)
        .args(["-X", method, "-H", "Content-Type: application/json"]);
    // Acting as the API server: its client certificate for webhooks.
    if let Some((cert, key)) = &w.client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    if let Some(b) = body {
        cmd.arg("--data-binary").arg(format!("@{}", b.display()));
    }
    let out = cmd.arg(format!("{}{path}", w.url)).output()?;
    let (stdout, stderr) = text(&out);
    ensure!(out.status.success(), "curl {path}: {stderr}");
    let (body, code) = stdout.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse()?, body.to_string()))
}

#[tokio::test]
async fn bad_input_over_https_gets_a_clear_answer() -> Result<()> {
    let w = webhook()?;
    let dir = std::env::temp_dir().join(format!("storm-e2e-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("garbage", b"not json".to_vec(), 400, "not valid JSON"),
        ("invalid-utf8", b"{\"a\":\"\xff\"}".to_vec(), 400, "not valid JSON"),
        ("deep", "[".repeat(100_000).into_bytes(), 400, "request body is not"),
        ("pod", br#"{"apiVersion":"v1","kind":"Pod"}"#.to_vec(), 400, "expected apiVersion"),
        (
            "no-object",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE","kind":{"group":"orchestration.aibrix.ai","version":"v1alpha1","kind":"StormService"}}}"#.to_vec(),
            200,
            "request.object is missing",
        ),
        ("too-big", vec![b' '; 4 * 1024 * 1024], 413, "length limit exceeded"),
    ];
    for (name, body, want, needle) in cases {
        let file = dir.join(name);
        std::fs::write(&file, body)?;
        for path in ["/validate", "/mutate"] {
            let (code, body) = curl(w, "POST", path, Some(&file))?;
            ensure!(code == want, "{name} {path}: HTTP {code}: {body}");
            ensure!(body.contains(needle), "{name} {path}: {body}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (code, _) = curl(w, "GET", "/healthz", None)?;
    ensure!(code == 200);
    let (code, _) = curl(w, "GET", "/readyz", None)?;
    ensure!(code == 200);
    let (code, metrics) = curl(w, "GET", "/metrics", None)?;
    ensure!(code == 200);
    ensure!(
        metrics.contains("storm_webhook_requests_total{")
            && metrics.contains("result=\"bad_request\""),
        "{metrics}"
    );
    Ok(())
}

/// A kubeconfig for the cluster that authenticates with `token`.
fn token_kubeconfig(token: &str, dir: &Path) -> Result<PathBuf> {
    let c = cluster()?;
    let raw = c.kubectl_run([
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ])?;
    let admin: Value = serde_json::from_str(&raw)?;
    let cl = &admin["clusters"][0]["cluster"];
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": cl["server"],
            "certificate-authority-data": cl["certificate-authority-data"],
        }}],
        "users": [{"name": "storm-webhook", "user": {"token": token}}],
        "contexts": [{"name": "storm-webhook", "context": {"cluster": "local", "user": "storm-webhook"}}],
        "current-context": "storm-webhook",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, config.to_string())?;
    Ok(path)
}

/// The shipped RBAC (manifests/webhook/rbac.yaml) is enough for every watch cache: the webhook
/// running as its ServiceAccount becomes ready and logs no `forbidden`.
#[tokio::test]
async fn the_webhook_is_ready_under_its_own_least_privilege_role() -> Result<()> {
    let w = webhook()?;
    let c = cluster()?;
    let result = async {
        let manifests = c.repo_root().join("manifests/webhook");
        for f in ["namespace.yaml", "rbac.yaml"] {
            let file = manifests.join(f);
            c.kubectl_run([OsStr::new("apply"), OsStr::new("-f"), file.as_os_str()])?;
        }
        let token = c.kubectl_run([
            "-n",
            "storm-system",
            "create",
            "token",
            "storm-webhook",
            "--duration=1h",
        ])?;
        let dir =
            std::env::temp_dir().join(format!("storm-e2e-webhook-rbac-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = token_kubeconfig(token.trim(), &dir)?;
        let port_file = dir.join("port");
        let certs = w.ca.parent().context("certs dir")?;
        let bin = process::binary("storm-webhook", "storm-webhook")?;
        let mut p = process::Process::start(
            "webhook-rbac",
            bin,
            vec![
                "--listen=127.0.0.1:0".into(),
                format!("--port-file={}", port_file.display()),
                format!("--tls-cert={}", certs.join("tls.crt").display()),
                format!("--tls-key={}", certs.join("tls.key").display()),
            ],
            vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = loop {
            p.ensure_running()?;
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                let local = Webhook {
                    url: format!("https://127.0.0.1:{}", port.trim()),
                    ca: w.ca.clone(),
                    pid: p.pid(),
                    client: w.client.clone(),
                };
                if let Ok((200, _)) = curl(&local, "GET", "/readyz", None) {
                    break true;
                }
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let log = p.log_tail(200);
        ensure!(ready, "not ready within 60s as its ServiceAccount:\n{log}");
        ensure!(
            !log.to_lowercase().contains("forbidden"),
            "RBAC denied a watch:\n{log}"
        );
        for kind in [
            "Service",
            "Ingress",
            "Namespace",
            "AnalysisTemplate",
            "RolloutPolicy",
        ] {
            ensure!(
                log.contains(&format!("watch cache synced kind=\"{kind}\"")),
                "{kind} cache never synced:\n{log}"
            );
        }
        // The access check works under the shipped role too (create subjectaccessreviews): a
        // review naming a Service as a user without rights on it is denied with the field; the
        // same review as a user the API server's RBAC lets patch it (edit in the namespace) is
        // admitted.
        let local = Webhook {
            url: format!(
                "https://127.0.0.1:{}",
                std::fs::read_to_string(&port_file)?.trim()
            ),
            ca: w.ca.clone(),
            pid: None,
            client: w.client.clone(),
        };
        let review = |user: Value| -> Result<Value> {
            let body = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "u", "operation": "CREATE", "namespace": "default", "name": "app",
                    "kind": {"group": "orchestration.aibrix.ai", "version": "v1alpha1", "kind": "StormService"},
                    "userInfo": user,
                    "object": {
                        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
                        "metadata": {"name": "app", "namespace": "default"},
                        "spec": {"selector": {"matchLabels": {"app": "a"}},
                                 "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"roles": [
                                     {"name": "r", "replicas": 1, "template": {
                                         "metadata": {"labels": {"app": "a"}},
                                         "spec": {"containers": [{"name": "c", "image": "i"}]}}}]}},
                                 "rolloutStrategy": {"type": "BlueGreen", "blueGreen": {
                                     "activeService": "kubernetes", "previewService": "app-preview"}}}
                    }
                }
            });
            let file = dir.join("review.json");
            std::fs::write(&file, serde_json::to_vec(&body)?)?;
            let (code, text) = curl(&local, "POST", "/validate", Some(&file))?;
            ensure!(code == 200, "{code}: {text}");
            Ok(serde_json::from_str::<Value>(&text)?["response"].clone())
        };
        let denied = review(serde_json::json!({"username": "e2e-nobody", "groups": ["system:authenticated"]}))?;
        ensure!(denied["allowed"] == false, "{denied}");
        let message = denied["status"]["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("spec.rolloutStrategy.blueGreen.activeService: Forbidden: user \"e2e-nobody\" may not patch Service \"default/kubernetes\""),
            "{message}"
        );
        let bound = c.kubectl_run([
            "-n",
            "default",
            "create",
            "rolebinding",
            "e2e-webhook-editor",
            "--clusterrole=edit",
            "--user=e2e-editor",
            "--dry-run=client",
            "-o",
            "yaml",
        ])?;
        let file = dir.join("binding.yaml");
        std::fs::write(&file, bound)?;
        c.kubectl_run([OsStr::new("apply"), OsStr::new("-f"), file.as_os_str()])?;
        let admitted = review(
            serde_json::json!({"username": "e2e-editor", "groups": ["system:authenticated"]}),
        )?;
        ensure!(admitted["allowed"] == true, "{admitted}");
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
    .await;
    dump_logs_on_error(result)
}

/// The suites' webhook runs with `--client-ca` (the local control plane gives the API server a
/// client certificate for webhooks, from a CA of its own): every review in every suite comes
/// through it. A client without that certificate gets 401 for reviews; one with a certificate
/// from another CA (the cluster admin's) fails the handshake; probes need none.
#[tokio::test]
async fn reviews_need_the_api_servers_client_certificate() -> Result<()> {
    let w = webhook()?;
    let client = w
        .client
        .clone()
        .context("the local control plane's webhook client certificate")?;
    let dir = std::env::temp_dir().join(format!("storm-e2e-client-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let review = dir.join("review.json");
    std::fs::write(
        &review,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE","kind":{"group":"orchestration.aibrix.ai","version":"v1alpha1","kind":"StormService"}}}"#,
    )?;
    let anonymous = Webhook {
        url: w.url.clone(),
        ca: w.ca.clone(),
        pid: None,
        client: None,
    };
    let (code, body) = curl(&anonymous, "POST", "/validate", Some(&review))?;
    ensure!(
        code == 401 && body.contains("client certificate"),
        "{code}: {body}"
    );
    let (code, _) = curl(&anonymous, "GET", "/readyz", None)?;
    ensure!(code == 200, "readyz without a certificate: {code}");
    let (code, body) = curl(w, "POST", "/validate", Some(&review))?;
    ensure!(
        code == 200,
        "with the API server's certificate: {code}: {body}"
    );
    // A certificate from the cluster CA (any user's) is not the API server's.
    let pki = client.0.parent().context("pki dir")?.to_path_buf();
    let admin = Webhook {
        url: w.url.clone(),
        ca: w.ca.clone(),
        pid: None,
        client: Some((pki.join("admin.crt"), pki.join("admin.key"))),
    };
    let refused = curl(&admin, "POST", "/validate", Some(&review));
    ensure!(
        refused.is_err() || refused.as_ref().is_ok_and(|(c, _)| *c == 401),
        "a user's certificate was accepted: {refused:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
