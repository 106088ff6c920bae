//! The Helm chart (charts/storm-rollouts) with a real `helm`, built from the Go module proxy by
//! tests/tools/helm.sh: lint, render against the kustomize base and a checked-in expectation,
//! install, upgrade and uninstall on the local control plane.

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use storm_test_support::{cluster, repo_root, unique_name, yaml_documents};

const CHART: &str = "charts/storm-rollouts";
/// What `helm template` assumes of the cluster (the chart needs 1.30 or later).
const KUBE_VERSION: &str = "1.34.0";
/// Labels the chart adds to every object for Helm users; the kustomize base has none of them.
const CHART_LABELS: [&str; 5] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/part-of",
];
/// The cluster-scoped kinds the chart creates.
const CLUSTER_KINDS: &str = "clusterroles.rbac.authorization.k8s.io,\
    clusterrolebindings.rbac.authorization.k8s.io,\
    validatingadmissionpolicies.admissionregistration.k8s.io,\
    validatingadmissionpolicybindings.admissionregistration.k8s.io,\
    mutatingwebhookconfigurations.admissionregistration.k8s.io,\
    validatingwebhookconfigurations.admissionregistration.k8s.io";

/// The cached helm binary (built on first use).
fn helm() -> Result<&'static Path> {
    static HELM: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("tests/tools/helm.sh"))
            .arg("--print")
            .output()
            .map_err(|e| format!("tests/tools/helm.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tests/tools/helm.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    })
    .as_deref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs helm in the repository root, failing with its output unless it succeeds.
fn helm_ok(args: &[&str]) -> Result<String> {
    let out = helm_run(args)?;
    ensure!(
        out.status.success(),
        "helm {} failed:\n{}",
        args.join(" "),
        text(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn helm_run(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(helm()?);
    cmd.args(args).current_dir(repo_root());
    // Helm keeps its own state (repositories, cache) under these; none of it is needed here.
    let home = repo_root().join("target/helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    if let Ok(c) = cluster_if_needed(args) {
        cmd.env("KUBECONFIG", c);
    }
    cmd.output().context("running helm")
}

/// The kubeconfig for the commands that talk to the cluster.
fn cluster_if_needed(args: &[&str]) -> Result<PathBuf> {
    let talks = matches!(
        args.first(),
        Some(&"install" | &"upgrade" | &"uninstall" | &"status" | &"history" | &"get")
    );
    ensure!(talks, "offline");
    Ok(cluster()?.kubeconfig().to_path_buf())
}

fn kustomize(dir: &str) -> Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(repo_root())
        .output()
        .context("running kubectl kustomize")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        text(&out)
    );
    yaml_documents(&String::from_utf8_lossy(&out.stdout))
}

type Key = (String, String, String);

/// Objects by kind, namespace and name, in the form both renderers are compared in: without the
/// chart's own labels, and with runs of whitespace in strings made one space (YAML folded scalars
/// of CEL expressions come out with different line breaks from Helm's raw text and from
/// kustomize's re-serialization; CEL does not care).
fn by_key(docs: Vec<Value>) -> Result<BTreeMap<Key, Value>> {
    let mut map = BTreeMap::new();
    for mut doc in docs {
        let kind = doc["kind"].as_str().context("kind")?.to_string();
        if kind == "CustomResourceDefinition" || kind == "Namespace" {
            continue;
        }
        strip_chart_labels(&mut doc["metadata"]);
        if let Some(template) = doc.pointer_mut("/spec/template/metadata") {
            strip_chart_labels(template);
        }
        squeeze(&mut doc);
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .context("name")?
            .to_string();
        // A later document replaces an earlier one (an overlay over the base).
        map.insert((kind, ns, name), doc);
    }
    Ok(map)
}

fn strip_chart_labels(meta: &mut Value) {
    if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
        labels.retain(|k, _| !CHART_LABELS.contains(&k.as_str()));
        if labels.is_empty() {
            meta.as_object_mut().map(|m| m.remove("labels"));
        }
    }
}

fn squeeze(v: &mut Value) {
    match v {
        Value::String(s) => *s = s.split_whitespace().collect::<Vec<_>>().join(" "),
        Value::Array(items) => items.iter_mut().for_each(squeeze),
        Value::Object(map) => map.values_mut().for_each(squeeze),
        _ => {}
    }
}

/// The differences between two renderings, one line per object, empty when they agree.
fn differences(chart: &BTreeMap<Key, Value>, base: &BTreeMap<Key, Value>) -> Vec<String> {
    let keys: BTreeSet<&Key> = chart.keys().chain(base.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        match (chart.get(key), base.get(key)) {
            (Some(_), None) => out.push(format!("only in the chart: {key:?}")),
            (None, Some(_)) => out.push(format!("missing from the chart: {key:?}")),
            (Some(a), Some(b)) if a != b => out.push(format!(
                "{key:?} differs:\n  chart:     {a}\n  kustomize: {b}"
            )),
            _ => {}
        }
    }
    out
}

fn render(extra: &[&str]) -> Result<String> {
    let mut args = vec![
        "template",
        "storm",
        CHART,
        "--namespace",
        "storm-system",
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend_from_slice(extra);
    helm_ok(&args)
}

#[test]
fn the_chart_lints_and_renders_what_kustomize_renders() -> Result<()> {
    let lint = helm_ok(&["lint", "--strict", CHART, "--kube-version", KUBE_VERSION])?;
    ensure!(lint.contains("0 chart(s) failed"), "{lint}");
    // Bad values: the chart's values.schema.json names the value and what it may be, and a
    // misspelt key is refused rather than ignored.
    for (set, says) in [
        (
            "certificates.mode=vault",
            "at '/certificates/mode': value must be one of 'selfManaged', 'certManager', 'manual'",
        ),
        (
            "rbac.scop=namespace",
            "at '/rbac': additional properties 'scop' not allowed",
        ),
    ] {
        let out = helm_run(&["lint", CHART, "--kube-version", KUBE_VERSION, "--set", set])?;
        ensure!(
            !out.status.success() && text(&out).contains(says),
            "helm lint --set {set}: {}",
            text(&out)
        );
    }
    let out = helm_run(&[
        "template",
        "storm",
        CHART,
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "certificates.mode=manual",
    ])?;
    ensure!(
        !out.status.success() && text(&out).contains("certificates.caBundle: Required value"),
        "{}",
        text(&out)
    );

    // The defaults: everything of the kustomize base with self-managed certificates.
    let chart = by_key(yaml_documents(&render(&[])?)?)?;
    let base = by_key(kustomize("certs/self-managed")?)?;
    let diff = differences(&chart, &base);
    ensure!(
        diff.is_empty(),
        "helm template (defaults) against kubectl kustomize certs/self-managed:\n{}",
        diff.join("\n")
    );
    ensure!(
        chart.len() >= 30,
        "only {} objects rendered: {:?}",
        chart.len(),
        chart.keys()
    );
    // cert-manager: the base with the certs/cert-manager overlay over its webhook part.
    let chart = by_key(yaml_documents(&render(&[
        "--set",
        "certificates.mode=certManager",
    ])?)?)?;
    let mut docs = kustomize("manifests")?;
    docs.extend(kustomize("certs/cert-manager")?);
    let base = by_key(docs)?;
    let diff = differences(&chart, &base);
    ensure!(
        diff.is_empty(),
        "helm template (certManager) against kubectl kustomize manifests + certs/cert-manager:\n{}",
        diff.join("\n")
    );
    // manual: the given CA in both configurations, the Secret mounted as it is.
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let manual = render(&[
        "--set",
        "certificates.mode=manual",
        "--set-string",
        &format!("certificates.caBundle={ca}"),
    ])?;
    let manual = by_key(yaml_documents(&manual)?)?;
    let bundle = json!(BASE64.encode(ca));
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let cfg = &manual[&(kind.into(), String::new(), "storm-webhook".into())];
        ensure!(
            cfg["webhooks"][0]["clientConfig"]["caBundle"] == bundle,
            "{kind}: {cfg}"
        );
    }

    // A namespace-scoped second install: the checked-in expectation beside its values.
    let golden = repo_root().join("tests/fixtures/helm/namespaced.yaml");
    let rendered = helm_ok(&[
        "template",
        "team-a-storm",
        CHART,
        "--namespace",
        "team-a-system",
        "--kube-version",
        KUBE_VERSION,
        "-f",
        "tests/fixtures/helm/namespaced-values.yaml",
    ])?;
    if std::env::var_os("STORM_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &rendered)?;
    }
    let expected = std::fs::read_to_string(&golden).with_context(|| {
        format!(
            "{}: run with STORM_UPDATE_GOLDEN=1 to write it",
            golden.display()
        )
    })?;
    if rendered != expected {
        let first = rendered
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(rendered.lines().count().min(expected.lines().count()));
        bail!(
            "helm template with tests/fixtures/helm/namespaced-values.yaml differs from {} at line {}:\n  rendered: {:?}\n  expected: {:?}\n(if the change is meant, run the test with STORM_UPDATE_GOLDEN=1 and review the diff)",
            golden.display(),
            first + 1,
            rendered.lines().nth(first),
            expected.lines().nth(first)
        );
    }
    // What that expectation says, checked here so a wrong expectation cannot be approved blindly.
    let objects = yaml_documents(&rendered)?;
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .with_context(|| format!("{kind} {name} not rendered"))
    };
    let role = find("Role", "team-a-storm-controller")?;
    ensure!(role["metadata"]["namespace"] == "team-a", "{role}");
    ensure!(
        !objects
            .iter()
            .any(|o| o["kind"] == "ClusterRole"
                && o["metadata"]["name"] == "team-a-storm-controller"),
        "namespace scope renders no ClusterRole for the controller"
    );
    let controller = find("Deployment", "team-a-storm-controller")?;
    let args = &controller["spec"]["template"]["spec"]["containers"][0]["args"];
    ensure!(
        args.as_array()
            .is_some_and(|a| a.contains(&json!("--namespace=team-a"))),
        "{args}"
    );
    let cfg = find("ValidatingWebhookConfiguration", "team-a-storm-webhook")?;
    ensure!(
        cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            == "team-a-system/team-a-storm-webhook-serving",
        "{cfg}"
    );
    ensure!(
        cfg["webhooks"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            == "team-a",
        "{cfg}"
    );
    find("ServiceMonitor", "team-a-storm-controller")?;
    Ok(())
}

fn kubectl_json(args: &[&str]) -> Result<Value> {
    let out = cluster()?
        .kubectl()
        .args(args)
        .args(["-o", "json"])
        .output()?;
    ensure!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        text(&out)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Names of the cluster-scoped objects of a release, as kind/name.
fn cluster_scoped(release: &str) -> Result<BTreeSet<String>> {
    let list = kubectl_json(&[
        "get",
        CLUSTER_KINDS,
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
    ])?;
    Ok(list["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect())
}

fn can_i(
    c: &storm_test_support::Cluster,
    user: &str,
    verb: &str,
    what: &str,
    ns: &str,
) -> Result<bool> {
    let out = c
        .kubectl()
        .args(["auth", "can-i", verb, what, "-n", ns, "--as", user])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
}

#[test]
fn install_upgrade_and_uninstall_on_the_cluster() -> Result<()> {
    let c = cluster()?;
    c.install_crds()?;
    // One release per run, named for its namespace, its objects named from it too: a second,
    // namespace-scoped install beside anything else on the cluster. Its webhook configurations
    // only see objects with a label nothing else carries, so the suites running beside it are
    // untouched.
    //
    // Without the tenancy policies: Kubernetes 1.34 (the local control plane's) stops the API
    // server's informer for a ConfigMap paramKind once no binding uses it, and never restarts it
    // (kubernetes/kubernetes#133827): after this release's uninstall removed the last such
    // binding, the tenant suite's policies would deny every RoleSet with "no params found" until
    // kube-apiserver restarts. The chart renders those policies as manifests/tenancy does
    // (the_chart_lints_and_renders_what_kustomize_renders); the tenant suite runs them.
    let ns = unique_name("helm");
    let values = json!({
        "namePrefix": ns,
        "rbac": {"scope": "namespace"},
        "webhook": {"objectSelector": {"matchLabels": {"storm-rollouts.test/helm": ns}}},
        "tenancy": {"enabled": false},
    });
    let values_file = repo_root().join(format!("target/{ns}-values.json"));
    std::fs::write(&values_file, serde_json::to_vec(&values)?)?;
    let values_path = values_file.to_string_lossy().into_owned();
    let result = install_upgrade_uninstall(c, &ns, &values_path);
    if result.is_err() {
        let _ = helm_run(&["uninstall", &ns, "--namespace", &ns, "--wait"]);
    }
    let _ = c
        .kubectl()
        .args([
            "delete",
            "namespace",
            &ns,
            "--wait=false",
            "--ignore-not-found",
        ])
        .output();
    let _ = std::fs::remove_file(&values_file);
    result
}

fn install_upgrade_uninstall(
    c: &storm_test_support::Cluster,
    ns: &str,
    values: &str,
) -> Result<()> {
    // kwok runs the Pods on its fake nodes: --wait sees both Deployments available.
    helm_ok(&[
        "install",
        ns,
        CHART,
        "--namespace",
        ns,
        "--create-namespace",
        "-f",
        values,
        "--wait",
        "--timeout",
        "180s",
    ])?;
    let webhook = kubectl_json(&["-n", ns, "get", "deployment", &format!("{ns}-webhook")])?;
    let controller = kubectl_json(&["-n", ns, "get", "deployment", &format!("{ns}-controller")])?;
    for d in [&webhook, &controller] {
        ensure!(
            d["status"]["availableReplicas"] == 2,
            "{}: {}",
            d["metadata"]["name"],
            d["status"]
        );
    }
    let args = webhook["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    for arg in [
        "--self-managed".to_string(),
        format!("--self-managed-secret={ns}/{ns}-webhook-tls"),
        format!("--webhook-configuration={ns}-webhook"),
        format!("--san={ns}-webhook.{ns}.svc"),
    ] {
        ensure!(
            args.as_array().is_some_and(|a| a.contains(&json!(arg))),
            "{arg} not in {args}"
        );
    }
    // Namespace scope, as the API server's authorizer sees it: the controller may make RoleSets
    // and Pods in its namespace, and nowhere else.
    let sa = format!("system:serviceaccount:{ns}:{ns}-controller");
    ensure!(can_i(
        c,
        &sa,
        "create",
        "rolesets.orchestration.aibrix.ai",
        ns
    )?);
    ensure!(can_i(c, &sa, "create", "pods", ns)?);
    ensure!(!can_i(
        c,
        &sa,
        "create",
        "rolesets.orchestration.aibrix.ai",
        "default"
    )?);
    ensure!(!can_i(c, &sa, "list", "pods", "kube-system")?);
    let installed = cluster_scoped(ns)?;
    for expected in [
        format!("ClusterRole/{ns}-webhook"),
        format!("ClusterRole/{ns}-webhook-cabundle"),
        format!("ClusterRole/{ns}-controller-analysis-secrets"),
        format!("ClusterRoleBinding/{ns}-webhook"),
        format!("MutatingWebhookConfiguration/{ns}-webhook"),
        format!("ValidatingWebhookConfiguration/{ns}-webhook"),
        format!("ValidatingAdmissionPolicy/{ns}-webhook-cabundle-only-validating"),
        format!("ValidatingAdmissionPolicyBinding/{ns}-webhook-cabundle-only-mutating"),
    ] {
        ensure!(
            installed.contains(&expected),
            "{expected} not among {installed:?}"
        );
    }
    ensure!(
        !installed.contains(&format!("ClusterRole/{ns}-controller")),
        "namespace scope made a ClusterRole for the controller"
    );

    // Upgrade: another image and replica count, the rest of the values kept.
    helm_ok(&[
        "upgrade",
        ns,
        CHART,
        "--namespace",
        ns,
        "--reuse-values",
        "--set",
        "controller.replicas=3",
        "--set",
        "images.controller.tag=0.1.1",
        "--wait",
        "--timeout",
        "180s",
    ])?;
    let controller = kubectl_json(&["-n", ns, "get", "deployment", &format!("{ns}-controller")])?;
    ensure!(
        controller["spec"]["replicas"] == 3
            && controller["status"]["availableReplicas"] == 3
            && controller["spec"]["template"]["spec"]["containers"][0]["image"]
                == "storm-controller:0.1.1",
        "{}",
        controller["spec"]
    );
    let history: Value =
        serde_json::from_str(&helm_ok(&["history", ns, "--namespace", ns, "-o", "json"])?)?;
    let states: Vec<&str> = history
        .as_array()
        .context("history")?
        .iter()
        .filter_map(|r| r["status"].as_str())
        .collect();
    ensure!(states == ["superseded", "deployed"], "{history}");
    // --reuse-values kept the install's values.
    let webhook = kubectl_json(&["-n", ns, "get", "deployment", &format!("{ns}-webhook")])?;
    ensure!(
        webhook["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(format!("--webhook-configuration={ns}-webhook")))),
        "{}",
        webhook["spec"]
    );

    // Uninstall: nothing of the release is left but the CRDs (Helm never deletes those).
    helm_ok(&[
        "uninstall",
        ns,
        "--namespace",
        ns,
        "--wait",
        "--timeout",
        "120s",
    ])?;
    let left = cluster_scoped(ns)?;
    ensure!(
        left.is_empty(),
        "left behind after helm uninstall: {left:?}"
    );
    let left = kubectl_json(&[
        "-n",
        ns,
        "get",
        "deployments,services,serviceaccounts,roles,rolebindings,configmaps,poddisruptionbudgets,networkpolicies",
        "-l",
        &format!("app.kubernetes.io/instance={ns}"),
    ])?;
    ensure!(
        left["items"].as_array().is_some_and(Vec::is_empty),
        "left behind in {ns}: {left}"
    );
    for crd in [
        "stormservices.orchestration.aibrix.ai",
        "rolesets.orchestration.aibrix.ai",
    ] {
        kubectl_json(&["get", "crd", crd])?;
    }
    Ok(())
}
