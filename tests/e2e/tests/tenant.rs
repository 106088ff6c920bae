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

/// Status is the controller's: someone granted `patch` on stormservices/status (a custom role)
/// is refused by the shipped policy, as are RoleSet and PodSet status; the controller's identity is
/// not.
#[tokio::test]
async fn status_is_written_by_the_controller_only() -> Result<()> {
    let ns = TestNamespace::new("tenant-status").await?;
    let result = async {
        install(ns.cluster())?;
        admin_services(&ns, &["app-stable", "app-canary"], None)?;
        let out = run(
            ns.kubectl().args(["create", "-f", "-"]),
            Some(&storm_service("app-stable", "app-canary")),
        )?;
        ensure!(out.status.success(), "{}", text(&out));
        ns.cluster().kubectl_run([
            "-n",
            ns.name(),
            "create",
            "role",
            "status-writer",
            "--verb=get,patch,update",
            "--resource=stormservices.orchestration.aibrix.ai,stormservices.orchestration.aibrix.ai/status",
        ])?;
        let writer = tenant(
            &ns,
            "forger",
            &["role=status-writer"],
            "get",
            "stormservices.orchestration.aibrix.ai",
        )?;
        let forge = |user: &str| -> Result<Output> {
            let args = vec![
                "patch",
                "stormservice",
                "app",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"currentRevision":"forged","updateRevision":"forged"}}"#,
            ];
            kubectl_as(&ns, user, &args, None)
        };
        let message = settle("the status policy's denial", || {
            let out = forge(&writer)?;
            let message = text(&out);
            ensure!(!out.status.success(), "a forged status was stored: {message}");
            Ok(message
                .contains("ValidatingAdmissionPolicy 'storm-rollouts-status-writers'")
                .then_some(message))
        })?;
        for part in [
            "the status of StormServices is written by the Storm Rollouts controller only",
            &format!("not by user \"{writer}\""),
        ] {
            ensure!(message.contains(part), "{part:?} not in: {message}");
        }
        // The controller's identity may: a server-side dry-run status patch as it sends them
        // (it has no get on the status subresource, which kubectl patch would need).
        let mut config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(ns.cluster().kubeconfig())?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        config.auth_info.impersonate = Some(CONTROLLER_SA.to_string());
        let as_controller: kube::Api<storm_shared::StormService> =
            kube::Api::namespaced(kube::Client::try_from(config)?, ns.name());
        let mut params = kube::api::PatchParams::apply("storm-controller").force();
        params.dry_run = true;
        as_controller
            .patch_status(
                "app",
                &params,
                &kube::api::Patch::Apply(json!({
                    "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
                    "status": {"currentRevision": "from-the-controller"}
                })),
            )
            .await
            .context("the controller's status patch was refused")?;
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

/// What the "internal service" answers; never to be seen through the product.
const REPLY_SECRET: &str = "reply-s3cret-7f3a";
/// A header value the tenant keeps in a Secret; sent, never shown.
const HEADER_SECRET: &str = "Bearer header-s3cret-91c2";

/// A loopback stand-in for a service inside the cluster that answers anyone: its replies hold
/// [`REPLY_SECRET`] in every shape a provider reads. `/auth` answers only with [`HEADER_SECRET`].
fn internal_service() -> Result<(String, std::sync::Arc<Mutex<Vec<String>>>)> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = vec![0u8; 16 * 1024];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            if let Ok(mut l) = log.lock() {
                l.push(path.clone());
            }
            let authorized = request
                .lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("authorization: {HEADER_SECRET}")));
            let (status, body) = match path.split('?').next().unwrap_or("") {
                "/leak" => (
                    "200 OK",
                    json!({"token": REPLY_SECRET, "rate": 1}).to_string(),
                ),
                "/fail" => (
                    "500 Internal Server Error",
                    format!("<html>internal error, session {REPLY_SECRET}</html>"),
                ),
                "/api/v1/query" => (
                    "400 Bad Request",
                    json!({"status": "error", "errorType": REPLY_SECRET, "error": REPLY_SECRET})
                        .to_string(),
                ),
                "/auth" if authorized => ("200 OK", json!({"rate": 1}).to_string()),
                _ => ("401 Unauthorized", json!({"error": "no"}).to_string()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok((base, seen))
}

/// A tenant with the built-in edit role points analysis at a service that answers anyone, in
/// every shape (a text value, an error page, a Prometheus error, a CEL error over text) and with
/// a header from its own Secret: the measurements are taken, and neither the replies nor the
/// header value reach the StormService, the Events or the controller's log.
#[tokio::test]
async fn replies_and_secret_headers_never_reach_status_events_or_logs() -> Result<()> {
    let ns = TestNamespace::new("tenant-leak").await?;
    let controller = storm_test_support::process::Controller::start(ns.cluster(), ns.name())?;
    let result = async {
        install(ns.cluster())?;
        // The team may use Secrets in analysis: its admin granted the controller reading them.
        ns.grant_analysis_secrets()?;
        let user = tenant(
            &ns,
            "dev",
            &["clusterrole=edit"],
            "create",
            "stormservices.orchestration.aibrix.ai",
        )?;
        let (base, seen) = internal_service()?;
        let apply = |obj: Value| -> Result<()> {
            let out = kubectl_as(&ns, &user, &["apply", "-f", "-"], Some(&obj))?;
            ensure!(out.status.success(), "{}", text(&out));
            Ok(())
        };
        apply(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "probe-token"},
            "stringData": {"token": HEADER_SECRET}
        }))?;
        for name in ["app-stable", "app-canary"] {
            apply(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}
            }))?;
        }
        let web = |name: &str, path: &str, json_path: &str, condition: &str| {
            json!({
                "name": name,
                "provider": {"web": {"url": format!("{base}{path}"), "jsonPath": json_path}},
                "successCondition": condition,
                "count": 3, "interval": "1s", "consecutiveErrorLimit": 1
            })
        };
        let mut auth = web("auth", "/auth", "{$.rate}", "result < 5");
        auth["provider"]["web"]["headers"] = json!([{"key": "Authorization",
            "valueFrom": {"secretKeyRef": {"name": "probe-token", "key": "token"}}}]);
        let prom = json!({
            "name": "prom",
            "provider": {"prometheus": {"address": base, "query": "up"}},
            "successCondition": "result < 5",
            "count": 3, "interval": "1s", "consecutiveErrorLimit": 1
        });
        let template = |name: &str, metrics: Value| {
            json!({
                "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "AnalysisTemplate",
                "metadata": {"name": name}, "spec": {"metrics": metrics}
            })
        };
        // Step 0 succeeds: a text value (judged, never shown) and the Secret's header.
        apply(template(
            "readable",
            json!([web("text", "/leak", "{$.token}", "size(result) > 0"), auth]),
        ))?;
        // Step 1 errs three ways, each reply holding the secret.
        apply(template(
            "erring",
            json!([
                web("page", "/fail", "{$.rate}", "result < 5"),
                prom,
                web("cel", "/leak", "{$.token}", "result + 1 > 0"),
            ]),
        ))?;
        let mut obj = storm_service("app-stable", "app-canary");
        obj["spec"]["rolloutStrategy"]["canary"]["steps"] = json!([
            {"weight": 20, "analysis": {"templates": [{"name": "readable"}]}},
            {"weight": 50, "analysis": {"templates": [{"name": "erring"}]}},
            {"weight": 100}
        ]);
        apply(obj.clone())?;
        let stormservices = ns.api::<storm_shared::StormService>();
        let phase = |o: &storm_shared::StormService| {
            o.status
                .as_ref()
                .and_then(|s| s.rollout_status.as_ref())
                .and_then(|r| r.phase)
        };
        use storm_shared::types::stormservice::{AnalysisPhase, RolloutPhase};
        storm_test_support::wait_for("app healthy", Duration::from_secs(60), || async {
            let o = stormservices.get("app").await?;
            Ok((phase(&o) == Some(RolloutPhase::Healthy)).then_some(()))
        })
        .await?;
        obj["spec"]["template"]["spec"]["roles"][0]["template"]["spec"]["containers"][0]["image"] =
            json!("app:v2");
        apply(obj)?;
        let done = storm_test_support::wait_for(
            "step 1's analysis to end",
            Duration::from_secs(90),
            || async {
                let o = stormservices.get("app").await?;
                let runs = o
                    .status
                    .as_ref()
                    .and_then(|s| s.rollout_status.as_ref())
                    .map(|r| r.analysis_runs.clone())
                    .unwrap_or_default();
                Ok(runs
                    .iter()
                    .any(|r| r.name == "step-1" && r.phase != AnalysisPhase::Running)
                    .then_some(o))
            },
        )
        .await?;
        let runs = &done
            .status
            .as_ref()
            .and_then(|s| s.rollout_status.as_ref())
            .context("rollout status")?
            .analysis_runs;
        let run = |name: &str| runs.iter().find(|r| r.name == name).context("run");
        // The step-0 metrics were measured and passed: the text was judged, the header sent.
        let readable = run("step-0")?;
        ensure!(readable.phase == AnalysisPhase::Successful, "{readable:#?}");
        let text_metric = &readable.metrics[0];
        ensure!(
            text_metric.measurements[0].value.as_deref()
                == Some(&format!("a string of {} bytes (not shown)", REPLY_SECRET.len()) as &str),
            "{text_metric:#?}"
        );
        // Step 1: each error says what happened without the reply.
        let erring = run("step-1")?;
        ensure!(erring.phase == AnalysisPhase::Error, "{erring:#?}");
        for (metric, says) in [
            ("erring/page", "body (content not shown)"),
            ("erring/prom", "errorType unknown"),
            ("erring/cel", "could not be evaluated on result a string of"),
        ] {
            let m = erring
                .metrics
                .iter()
                .find(|m| m.name == metric)
                .with_context(|| format!("{metric} in {erring:#?}"))?;
            let message = m
                .measurements
                .first()
                .and_then(|x| x.message.clone())
                .with_context(|| format!("{metric} measured: {m:#?}"))?;
            ensure!(message.contains(says), "{metric}: {message}");
        }
        let paths = seen.lock().map(|s| s.clone()).unwrap_or_default();
        for path in ["/leak", "/fail", "/api/v1/query", "/auth"] {
            ensure!(
                paths.iter().any(|p| p.starts_with(path)),
                "{path} never requested: {paths:?}"
            );
        }
        // Neither secret anywhere a tenant (or anyone reading logs) can look.
        let status = serde_json::to_string(&stormservices.get("app").await?)?;
        let events = ns
            .cluster()
            .kubectl_run(["-n", ns.name(), "get", "events", "-o", "json"])?;
        let log = controller.process.log_tail(usize::MAX);
        for (place, content) in [
            ("status", &status),
            ("Events", &events),
            ("controller log", &log),
        ] {
            for secret in [REPLY_SECRET, "header-s3cret"] {
                ensure!(!content.contains(secret), "{secret} in the {place}");
            }
        }
        ensure!(
            events.contains("AnalysisError"),
            "no analysis Events to look in: {events}"
        );
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}

/// A tenant inflates objects the webhook watches cluster-wide (Services and Ingresses with
/// annotations near the API server's 256 KiB limit): the webhook keeps only what its rules read,
/// so its memory grows by a fraction of what was created (resident memory also keeps what the
/// allocator holds after decoding the watch events: well under half), within its 256 Mi limit.
#[tokio::test]
async fn the_webhook_stays_within_its_memory_limit_while_a_tenant_inflates_objects() -> Result<()> {
    const OBJECTS: usize = 600;
    const ANNOTATION: usize = 200 * 1024;
    const LIMIT: u64 = 256 * 1024 * 1024;
    let ns = TestNamespace::new("tenant-inflate").await?;
    let result = async {
        install(ns.cluster())?;
        let user = tenant(&ns, "big", &["clusterrole=edit"], "create", "services")?;
        let webhook = storm_test_support::webhook::running()?;
        let before = webhook
            .rss_bytes()
            .context("the webhook's resident memory (dev.sh knows its pid)")?;
        let filler = "x".repeat(ANNOTATION);
        for batch in 0..OBJECTS / 50 {
            let items: Vec<Value> = (batch * 50..(batch + 1) * 50)
                .map(|i| {
                    if i % 2 == 0 {
                        json!({"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": format!("big-{i}"), "annotations": {"filler": filler}},
                            "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}})
                    } else {
                        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                            "metadata": {"name": format!("big-{i}"), "annotations": {"filler": filler}},
                            "spec": {"defaultBackend": {"service": {"name": "big-0", "port": {"number": 80}}}}})
                    }
                })
                .collect();
            let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
            let out = kubectl_as(&ns, &user, &["create", "-f", "-"], Some(&list))?;
            ensure!(out.status.success(), "{}", text(&out));
        }
        // The webhook has seen the last Service once a StormService naming it draws no warning
        // that it does not exist.
        let last = format!("big-{}", OBJECTS - 2);
        settle("the webhook's cache to hold the inflated Services", || {
            let out = kubectl_as(
                &ns,
                &user,
                &["create", "--dry-run=server", "-f", "-"],
                Some(&storm_service(&last, "big-0")),
            )?;
            let t = text(&out);
            Ok((out.status.success() && !t.contains("not found") && !t.contains("does not exist"))
                .then_some(()))
        })?;
        let after = webhook.rss_bytes().context("the webhook's resident memory")?;
        let inflated = (OBJECTS * ANNOTATION) as u64;
        let grown = after.saturating_sub(before);
        eprintln!(
            "webhook memory: {} MiB before, {} MiB after {} MiB of annotations ({} Services and Ingresses); grew {} MiB",
            before >> 20,
            after >> 20,
            inflated >> 20,
            OBJECTS,
            grown >> 20
        );
        ensure!(after < LIMIT, "the webhook uses {} MiB, over its 256 Mi limit", after >> 20);
        ensure!(
            grown < inflated / 2,
            "the webhook grew {} MiB for {} MiB of annotations it does not read",
            grown >> 20,
            inflated >> 20
        );
        Ok(())
    }
    .await;
    dump_logs_on_error(result)?;
    ns.cleanup().await
}
