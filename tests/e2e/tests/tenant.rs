//! Multi-tenant clusters (docs/multi-tenant.md): what a tenant with edit rights in one namespace
//! can and cannot make the product do, on the real API server with the webhook registered and
//! the shipped manifests/tenancy applied. Tenants are ServiceAccounts, acted as through kubectl's
//! impersonation (`--as`; the admin may impersonate).
//!
//! The RoleSet/PodSet policy is cluster-wide, so it is installed with the parameter the local
//! control plane needs (docs/multi-tenant.md#rolesets-and-podsets): the controller's
//! ServiceAccount, and the group system:masters, whose admin identity the other suites' controllers
//! and hand-made RoleSets use.

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use storm_shared::keys::ANNOTATION_MANAGED_BY;
use storm_test_support::{Cluster, TestNamespace, dump_logs_on_error};

const CONTROLLER_SA: &str = "system:serviceaccount:storm-system:storm-controller";
/// How long RBAC aggregation, the policy's activation or a webhook cache may take to catch up.
const SETTLE: Duration = Duration::from_secs(20);

/// Applies the tenancy manifests once per test process: the policy's parameter for this control
/// plane, the policy and its binding as shipped, the tenant roles as shipped, and the
/// controller's ServiceAccount and RBAC (it is one of the allowed creators).
fn install(cluster: &Cluster) -> Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().map_err(|_| anyhow::anyhow!("install lock"))?;
    if *done {
        return Ok(());
    }
    cluster.ensure_namespace("storm-system")?;
    // The parameter first: the binding denies every create while it is missing.
    let params = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "storm-rollouts-roleset-creators", "namespace": "storm-system"},
        "data": {"users": CONTROLLER_SA, "groups": "system:masters"}
    });
    let out = run(cluster.kubectl().args(["apply", "-f", "-"]), Some(&params))?;
    ensure!(out.status.success(), "parameter: {}", text(&out));
    cluster.kubectl_run([
        "apply",
        "-f",
        "manifests/tenancy/roleset-policy.yaml",
        "-f",
        "manifests/tenancy/roles.yaml",
        "-n",
        "storm-system",
        "-f",
        "manifests/controller/serviceaccount.yaml",
        "-f",
        "manifests/controller/rbac.yaml",
    ])?;
    *done = true;
    Ok(())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` with `stdin` as JSON input.
fn run(cmd: &mut Command, stdin: Option<&Value>) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl")?;
    let mut input = child.stdin.take().context("kubectl stdin")?;
    if let Some(v) = stdin {
        input.write_all(&serde_json::to_vec(v)?)?;
    }
    drop(input);
    Ok(child.wait_with_output()?)
}

/// kubectl in `ns` as `user`.
fn kubectl_as(
    ns: &TestNamespace,
    user: &str,
    args: &[&str],
    stdin: Option<&Value>,
) -> Result<Output> {
    run(ns.kubectl().arg(format!("--as={user}")).args(args), stdin)
}

/// Retries `attempt` until it returns `Some`, for up to [`SETTLE`].
fn settle<T>(what: &str, mut attempt: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(t) = attempt()? {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {SETTLE:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A ServiceAccount `name` in `ns`, bound there to each of `roles` (`clusterrole=NAME` or
/// `role=NAME`); returns its user name once the API server's authorizer says it may `verb`
/// `resource` (ClusterRole aggregation is asynchronous).
fn tenant(
    ns: &TestNamespace,
    name: &str,
    roles: &[&str],
    verb: &str,
    resource: &str,
) -> Result<String> {
    let c = ns.cluster();
    c.kubectl_run(["-n", ns.name(), "create", "serviceaccount", name])?;
    for (i, role) in roles.iter().enumerate() {
        c.kubectl_run([
            "-n",
            ns.name(),
            "create",
            "rolebinding",
            &format!("{name}-{i}"),
            &format!("--{role}"),
            &format!("--serviceaccount={}:{name}", ns.name()),
        ])?;
    }
    let user = format!("system:serviceaccount:{}:{name}", ns.name());
    settle(&format!("{user} may {verb} {resource}"), || {
        let out = c
            .kubectl()
            .args([
                "auth",
                "can-i",
                verb,
                resource,
                "-n",
                ns.name(),
                "--as",
                &user,
            ])
            .output()?;
        Ok((String::from_utf8_lossy(&out.stdout).trim() == "yes").then_some(()))
    })?;
    Ok(user)
}

/// A canary StormService `app` whose stable and canary Services are `stable` and `canary`.
fn storm_service(stable: &str, canary: &str) -> Value {
    json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {"roles": [{"name": "server", "replicas": 1, "template": {
                    "metadata": {"labels": {"app": "app"}},
                    "spec": {"containers": [{"name": "server", "image": "app:v1"}]}
                }}]}
            },
            "rolloutStrategy": {"type": "Canary", "canary": {
                "stableService": stable, "canaryService": canary,
                "steps": [{"weight": 50}, {"weight": 100}]
            }}
        }
    })
}

/// Services `names` in `ns`, created by the admin (the platform team), optionally opted in to
/// StormService `app`.
fn admin_services(ns: &TestNamespace, names: &[&str], opt_in: Option<&str>) -> Result<()> {
    for name in names {
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}
        });
        if let Some(storm) = opt_in {
            svc["metadata"]["annotations"] = json!({ANNOTATION_MANAGED_BY: storm});
        }
        let out = run(ns.kubectl().args(["apply", "-f", "-"]), Some(&svc))?;
        ensure!(out.status.success(), "Service {name}: {}", text(&out));
    }
    Ok(())
}

fn roleset() -> Value {
    json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RoleSet",
        "metadata": {"name": "by-hand", "labels": {"stormservice.aibrix.ai/name": "app"}},
        "spec": {"roles": [{"name": "server", "replicas": 1, "template": {
            "spec": {"containers": [{"name": "server", "image": "app:v1"}]}
        }}]}
    })
}

/// (i) and (iii): a tenant holding only the shipped storm-rollouts-edit role in its namespace (the
/// platform team owns the Services there) may not name a Service it cannot patch; it may once the
/// Service's owner opts in with the managed-by annotation.
#[tokio::test]
async fn a_tenant_names_only_services_it_may_patch_or_that_opted_in() -> Result<()> {
    let ns = TestNamespace::new("tenant-svc").await?;
    let result = async {
        install(ns.cluster())?;
        let user = tenant(
            &ns,
            "tenant",
            &[
                "clusterrole=storm-rollouts-edit",
                "clusterrole=storm-rollouts-view",
            ],
            "create",
            "stormservices.orchestration.aibrix.ai",
        )?;
        admin_services(&ns, &["admin-stable", "admin-canary"], None)?;
        // (i) Denied, naming each field, the object, the verb and the fixes.
        let out = kubectl_as(
            &ns,
            &user,
            &["create", "-f", "-"],
            Some(&storm_service("admin-stable", "admin-canary")),
        )?;
        let message = text(&out);
        ensure!(!out.status.success(), "admitted: {message}");
        for part in [
            "spec.rolloutStrategy.canary.stableService: Forbidden: user \"",
            "spec.rolloutStrategy.canary.canaryService: Forbidden: user \"",
            &format!("may not patch Service \"{}/admin-stable\"", ns.name()),
            "stormservice.aibrix.ai/managed-by=app",
        ] {
            ensure!(message.contains(part), "{part:?} not in: {message}");
        }
        // The tenant cannot work around it by patching the Service itself.
        let out = kubectl_as(
            &ns,
            &user,
            &[
                "annotate",
                "service",
                "admin-stable",
                &format!("{ANNOTATION_MANAGED_BY}=app"),
            ],
            None,
        )?;
        ensure!(
            !out.status.success(),
            "tenant annotated a Service: {}",
            text(&out)
        );
        // (iii) The platform team opts its Services in: accepted (once the webhook's cache has
        // seen the annotation).
        admin_services(&ns, &["admin-stable", "admin-canary"], Some("app"))?;
        settle("the opted-in StormService admitted", || {
            let out = kubectl_as(
                &ns,
                &user,
                &["create", "-f", "-"],
                Some(&storm_service("admin-stable", "admin-canary")),
            )?;
            Ok(out.status.success().then_some(()))
        })?;
        // Pointing an update at another Service is checked again; other updates are not.
        let out = kubectl_as(
            &ns,
            &user,
            &["annotate", "stormservice", "app", "team=a"],
            None,
        )?;
        ensure!(out.status.success(), "unrelated update: {}", text(&out));
        admin_services(&ns, &["admin-other"], None)?;
        let out = kubectl_as(
            &ns,
            &user,
            &[
                "patch",
                "stormservice",
                "app",
                "--type=merge",
                "-p",
                r#"{"spec":{"rolloutStrategy":{"canary":{"stableService":"admin-other"}}}}"#,
            ],
            None,
        )?;
        let message = text(&out);
        ensure!(!out.status.success(), "repointed: {message}");
        ensure!(
            message.contains("spec.rolloutStrategy.canary.stableService: Forbidden")
                && !message.contains("canaryService: Forbidden"),
            "{message}"
        );
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

/// (ii) RoleSets by hand: refused by RBAC to a tenant with edit rights, and by the shipped
/// ValidatingAdmissionPolicy to anyone who holds the verb but is not an allowed creator; the
/// controller's ServiceAccount may.
#[tokio::test]
async fn rolesets_are_created_by_the_controller_only() -> Result<()> {
    let ns = TestNamespace::new("tenant-rs").await?;
    let result = async {
        install(ns.cluster())?;
        let editor = tenant(
            &ns,
            "editor",
            &["clusterrole=edit"],
            "create",
            "stormservices.orchestration.aibrix.ai",
        )?;
        let out = kubectl_as(&ns, &editor, &["create", "-f", "-"], Some(&roleset()))?;
        let message = text(&out);
        ensure!(!out.status.success(), "edit created a RoleSet: {message}");
        ensure!(
            message.contains("cannot create resource \"rolesets\""),
            "{message}"
        );
        // Someone granted the verb (a custom role) is stopped by the policy, with its fix.
        ns.cluster().kubectl_run([
            "-n",
            ns.name(),
            "create",
            "role",
            "roleset-writer",
            "--verb=create",
            "--resource=rolesets.orchestration.aibrix.ai,podsets.orchestration.aibrix.ai",
        ])?;
        let writer = tenant(
            &ns,
            "writer",
            &["role=roleset-writer"],
            "create",
            "rolesets.orchestration.aibrix.ai",
        )?;
        let message = settle("the policy's denial", || {
            let out = kubectl_as(&ns, &writer, &["create", "-f", "-"], Some(&roleset()))?;
            let message = text(&out);
            ensure!(
                !out.status.success(),
                "policy admitted a hand-made RoleSet: {message}"
            );
            Ok(message
                .contains("ValidatingAdmissionPolicy 'storm-rollouts-roleset-creators'")
                .then_some(message))
        })?;
        for part in [
            "RoleSets are created by the Storm Rollouts controller only",
            &format!("not by user \"{writer}\""),
            "storm-system/storm-rollouts-roleset-creators",
        ] {
            ensure!(message.contains(part), "{part:?} not in: {message}");
        }
        let mut podset = roleset();
        podset["kind"] = json!("PodSet");
        podset["spec"] = json!({"podGroupSize": 2, "template": {
            "spec": {"containers": [{"name": "server", "image": "app:v1"}]}}});
        let out = kubectl_as(&ns, &writer, &["create", "-f", "-"], Some(&podset))?;
        let message = text(&out);
        ensure!(
            !out.status.success()
                && message.contains("PodSets are created by the Storm Rollouts controller only"),
            "{message}"
        );
        // The controller's identity may (a server dry run: admission runs, nothing is stored).
        let out = kubectl_as(
            &ns,
            CONTROLLER_SA,
            &["create", "--dry-run=server", "-f", "-"],
            Some(&roleset()),
        )?;
        ensure!(
            out.status.success(),
            "the controller was refused: {}",
            text(&out)
        );
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

/// The aggregated roles: a ServiceAccount bound to the built-in edit ClusterRole in its namespace
/// may create a StormService there (naming Services it may patch: edit covers them), may read
/// RoleSets but not write them, and can do nothing in another namespace.
#[tokio::test]
async fn the_builtin_edit_role_covers_stormservices_in_its_namespace_only() -> Result<()> {
    let ns = TestNamespace::new("tenant-edit").await?;
    let other = TestNamespace::new("tenant-other").await?;
    let result = async {
        install(ns.cluster())?;
        let user = tenant(
            &ns,
            "dev",
            &["clusterrole=edit"],
            "create",
            "stormservices.orchestration.aibrix.ai",
        )?;
        admin_services(&ns, &["app-stable", "app-canary"], None)?;
        let out = kubectl_as(
            &ns,
            &user,
            &["create", "-f", "-"],
            Some(&storm_service("app-stable", "app-canary")),
        )?;
        ensure!(
            out.status.success(),
            "edit could not create: {}",
            text(&out)
        );
        let c = ns.cluster();
        let g = "orchestration.aibrix.ai";
        // `resource` may be `plural/subresource`.
        let can = |verb: &str, resource: &str, namespace: &str| -> Result<bool> {
            let (resource, sub) = match resource.split_once('/') {
                Some((r, sub)) => (r, Some(sub)),
                None => (resource, None),
            };
            let resource = format!("{resource}.{g}");
            let mut cmd = c.kubectl();
            cmd.args([
                "auth", "can-i", verb, &resource, "-n", namespace, "--as", &user,
            ]);
            if let Some(sub) = sub {
                cmd.arg(format!("--subresource={sub}"));
            }
            let out = cmd.output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
        };
        for (verb, resource, want) in [
            ("get", "rolesets", true),
            ("list", "podsets", true),
            ("create", "rolesets", false),
            ("delete", "rolesets", false),
            ("patch", "podsets", false),
            ("patch", "stormservices/status", false),
            ("patch", "stormservices/scale", true),
            ("create", "analysistemplates", true),
            ("create", "rolloutpolicies", false),
        ] {
            let got = can(verb, resource, ns.name())?;
            ensure!(got == want, "{verb} {resource}: {got}, want {want}");
        }
        for verb in ["get", "create"] {
            ensure!(
                !can(verb, "stormservices", other.name())?,
                "{verb} stormservices in another namespace"
            );
        }
        let out = run(
            other
                .kubectl()
                .arg(format!("--as={user}"))
                .args(["create", "-f", "-"]),
            Some(&storm_service("app-stable", "app-canary")),
        )?;
        ensure!(
            !out.status.success() && text(&out).contains("forbidden"),
            "created in another namespace: {}",
            text(&out)
        );
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    other.cleanup().await?;
    ns.cleanup().await
}
