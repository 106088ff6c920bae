//! The traffic routers against the local control plane, with the projects' own CRDs (Istio,
//! Gateway API, SMI) installed: each router's object is created by the user with kubectl, with
//! extra routes, destinations and fields, and touched by another field manager; the routers
//! then set 10, 50, 100 and 0. After each, the object holds exactly those weights, the
//! router reads them back, and everything else — the user's fields and the other manager's —
//! is unchanged. The routers run as the controller's ServiceAccount (impersonated), so the
//! ClusterRole in manifests/controller/rbac.yaml is checked too.

use anyhow::{Context, Result, bail, ensure};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use std::io::Write;
use std::process::Stdio;
use std::sync::OnceLock;
use storm_controller::routers::{self, FIELD_MANAGER, Target};
use storm_shared::keys::LABEL_REVISION;
use storm_shared::types::stormservice::{
    GatewayApiRouting, IstioRouting, NginxRouting, SmiRouting, TrafficRouting,
};
use storm_test_support::{Cluster, TestNamespace};

const CONTROLLER_SA: &str = "system:serviceaccount:storm-system:storm-controller";
const OTHER_MANAGER: &str = "other-team";
const WEIGHTS: [i32; 4] = [10, 50, 100, 0];
const STABLE_REVISION: &str = "1111aaaa";
const CANARY_REVISION: &str = "2222bbbb";

/// Applies the controller's RBAC (once per process; the same file the Deployment uses).
fn install_controller_rbac(cluster: &Cluster) -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let run = || -> Result<()> {
            cluster.ensure_namespace("storm-system")?;
            cluster.kubectl_run([
                "apply",
                "-n",
                "storm-system",
                "-f",
                "manifests/controller/rbac.yaml",
            ])?;
            Ok(())
        };
        run().map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!("applying the controller RBAC: {e}"))
}

/// A client that acts as the controller's ServiceAccount (the admin may impersonate).
async fn controller_client(cluster: &Cluster) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig())?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.auth_info.impersonate = Some(CONTROLLER_SA.to_string());
    Ok(kube::Client::try_from(config)?)
}

struct Env {
    ns: TestNamespace,
    client: kube::Client,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
}

impl Env {
    async fn new(prefix: &str) -> Result<Self> {
        let ns = TestNamespace::new(prefix).await?;
        let cluster = ns.cluster();
        cluster.install_crds()?;
        cluster.install_thirdparty_crds()?;
        install_controller_rbac(cluster)?;
        let client = controller_client(cluster).await?;
        let env = Self {
            ns,
            client,
            owner: Default::default(),
        };
        // The StormService that owns generated objects; no controller runs in this suite.
        env.create(&json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1",
            "kind": "StormService",
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
                }
            }
        }))?;
        let ss = env.get("stormservices.orchestration.aibrix.ai", "app")?;
        let owner = serde_json::from_value(json!({
            "apiVersion": "orchestration.aibrix.ai/v1alpha1",
            "kind": "StormService",
            "name": "app",
            "uid": ss["metadata"]["uid"],
            "controller": true,
            "blockOwnerDeletion": true
        }))?;
        Ok(Self { owner, ..env })
    }

    fn target(&self) -> Target<'_> {
        Target {
            namespace: self.ns.name(),
            owner: self.owner.clone(),
            stable_service: "app-stable",
            canary_service: "app-canary",
            stable_revision: STABLE_REVISION,
            canary_revision: CANARY_REVISION,
        }
    }

    /// `kubectl <args> -f -` with `object` on stdin.
    fn kubectl_stdin(&self, args: &[&str], object: &Value) -> Result<()> {
        let mut child = self
            .ns
            .kubectl()
            .args(args)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(object.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The user creates an object (field manager `kubectl-create`).
    fn create(&self, object: &Value) -> Result<()> {
        self.kubectl_stdin(&["create"], object)
    }

    /// Another controller owns some fields by server-side apply.
    fn apply_as_other(&self, object: &Value) -> Result<()> {
        self.kubectl_stdin(
            &["apply", "--server-side", "--field-manager", OTHER_MANAGER],
            object,
        )
    }

    fn get(&self, resource: &str, name: &str) -> Result<Value> {
        let out = self
            .ns
            .kubectl()
            .args(["get", resource, name, "-o", "json", "--show-managed-fields"])
            .output()?;
        ensure!(
            out.status.success(),
            "kubectl get {resource} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    async fn set(&self, routing: &TrafficRouting, weight: i32) -> Result<()> {
        routers::set_weight(&self.client, routing, &self.target(), weight)
            .await
            .with_context(|| format!("set_weight({weight})"))
    }

    async fn read(&self, routing: &TrafficRouting) -> Result<Option<i32>> {
        Ok(routers::read_weight(&self.client, routing, &self.target()).await?)
    }
}

/// The object without what the API server changes on every write.
fn comparable(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["resourceVersion", "managedFields", "generation"] {
            meta.remove(key);
        }
    }
    object
}

fn managers(object: &Value) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str().map(String::from))
        .collect()
}

/// The fields `manager` owns (its `fieldsV1`), as one JSON string.
fn owned_by(object: &Value, manager: &str) -> String {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["manager"] == manager)
        .map(|m| m["fieldsV1"].to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets each of [`WEIGHTS`] and checks that the object then equals `before` with exactly the
/// weights `expect` writes into it, that the router reads the weight back, that the other
/// manager keeps its fields, and that setting the same weight again writes nothing.
async fn walk_weights(
    env: &Env,
    routing: &TrafficRouting,
    resource: &str,
    name: &str,
    expect: impl Fn(&mut Value, i32),
) -> Result<()> {
    let before = env.get(resource, name)?;
    let other_fields = owned_by(&before, OTHER_MANAGER);
    ensure!(!other_fields.is_empty(), "{OTHER_MANAGER} owns no fields");
    for weight in WEIGHTS {
        env.set(routing, weight).await?;
        let after = env.get(resource, name)?;
        let mut want = comparable(before.clone());
        expect(&mut want, weight);
        ensure!(
            comparable(after.clone()) == want,
            "{resource} {name} at weight {weight}:\n got {}\nwant {want}",
            comparable(after.clone())
        );
        ensure!(
            env.read(routing).await? == Some(weight),
            "read_weight after setting {weight}"
        );
        ensure!(
            owned_by(&after, OTHER_MANAGER) == other_fields,
            "{OTHER_MANAGER}'s fields changed: {}",
            owned_by(&after, OTHER_MANAGER)
        );
        ensure!(
            managers(&after).iter().any(|m| m == FIELD_MANAGER),
            "{FIELD_MANAGER} is not a manager of {resource} {name}"
        );
        // Idempotent: the same weight again is no write at all.
        env.set(routing, weight).await?;
        let again = env.get(resource, name)?;
        ensure!(
            again["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"],
            "setting {weight} twice wrote {resource} {name} twice"
        );
    }
    Ok(())
}

#[tokio::test]
async fn istio_virtual_service_by_host() -> Result<()> {
    let env = Env::new("routers-istio").await?;
    let ns = env.ns.name().to_string();
    let routing = TrafficRouting {
        istio: Some(IstioRouting {
            virtual_service: "vs".into(),
            destination_rule: None,
        }),
        ..TrafficRouting::default()
    };
    // Not there yet: nothing to read, and setting says what is missing.
    ensure!(env.read(&routing).await?.is_none());
    let err = env.set(&routing, 10).await.unwrap_err();
    ensure!(
        format!("{err:#}").contains(&format!("VirtualService {ns}/vs does not exist")),
        "{err:#}"
    );
    env.create(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vs", "labels": {"team": "payments"}},
        "spec": {
            "hosts": ["app.example.com"],
            "gateways": ["mesh"],
            "http": [
                {"name": "beta", "match": [{"headers": {"x-beta": {"exact": "1"}}}],
                 "route": [{"destination": {"host": "beta-svc"}}]},
                {"name": "primary",
                 "route": [
                     {"destination": {"host": "app-stable", "port": {"number": 80}}, "weight": 95},
                     {"destination": {"host": format!("app-canary.{ns}.svc.cluster.local"),
                                      "port": {"number": 80}}, "weight": 0},
                     {"destination": {"host": "third-svc"}, "weight": 5}
                 ],
                 "mirror": {"host": "shadow-svc"},
                 "retries": {"attempts": 3},
                 "timeout": "5s"},
                {"name": "fallback", "route": [{"destination": {"host": format!("app-stable.{ns}")}}]}
            ]
        }
    }))?;
    env.apply_as_other(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vs", "annotations": {"other-team/owner": "payments"}},
        "spec": {"exportTo": ["."]}
    }))?;
    walk_weights(
        &env,
        &routing,
        "virtualservices.networking.istio.io",
        "vs",
        |vs, w| {
            vs["spec"]["http"][1]["route"][0]["weight"] = json!(100 - w);
            vs["spec"]["http"][1]["route"][1]["weight"] = json!(w);
        },
    )
    .await?;
    env.ns.cleanup().await
}

#[tokio::test]
async fn istio_virtual_service_by_subset_with_destination_rule() -> Result<()> {
    let env = Env::new("routers-istio-dr").await?;
    let routing = TrafficRouting {
        istio: Some(IstioRouting {
            virtual_service: "vs".into(),
            destination_rule: Some("dr".into()),
        }),
        ..TrafficRouting::default()
    };
    env.create(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vs"},
        "spec": {"hosts": ["app"], "http": [
            {"match": [{"uri": {"prefix": "/legacy"}}],
             "route": [{"destination": {"host": "app", "subset": "legacy"}}]},
            {"route": [
                {"destination": {"host": "app", "subset": "stable"}, "weight": 100},
                {"destination": {"host": "app", "subset": "canary"}, "weight": 0}
            ]}
        ]}
    }))?;
    env.create(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "dr"},
        "spec": {
            "host": "app",
            "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
            "subsets": [{"name": "legacy", "labels": {"version": "v0"},
                         "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 10}}}}]
        }
    }))?;
    for resource in ["VirtualService", "DestinationRule"] {
        let name = if resource == "VirtualService" {
            "vs"
        } else {
            "dr"
        };
        env.apply_as_other(&json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": resource,
            "metadata": {"name": name, "annotations": {"other-team/owner": "payments"}},
            "spec": {"exportTo": ["."]}
        }))?;
    }
    // The subsets don't select the revisions yet: no weight to report.
    ensure!(env.read(&routing).await?.is_none());
    let dr_before = env.get("destinationrules.networking.istio.io", "dr")?;
    let dr_other = owned_by(&dr_before, OTHER_MANAGER);

    walk_weights(
        &env,
        &routing,
        "virtualservices.networking.istio.io",
        "vs",
        |vs, w| {
            vs["spec"]["http"][1]["route"][0]["weight"] = json!(100 - w);
            vs["spec"]["http"][1]["route"][1]["weight"] = json!(w);
        },
    )
    .await?;

    let dr_after = env.get("destinationrules.networking.istio.io", "dr")?;
    let mut want = comparable(dr_before);
    want["spec"]["subsets"]
        .as_array_mut()
        .context("subsets")?
        .extend([
            json!({"name": "stable", "labels": {LABEL_REVISION: STABLE_REVISION}}),
            json!({"name": "canary", "labels": {LABEL_REVISION: CANARY_REVISION}}),
        ]);
    ensure!(
        comparable(dr_after.clone()) == want,
        "DestinationRule:\n got {}\nwant {want}",
        comparable(dr_after.clone())
    );
    ensure!(owned_by(&dr_after, OTHER_MANAGER) == dr_other);
    env.ns.cleanup().await
}

#[tokio::test]
async fn smi_traffic_split() -> Result<()> {
    let env = Env::new("routers-smi").await?;
    let routing = TrafficRouting {
        smi: Some(SmiRouting {
            traffic_split: "split".into(),
            root_service: None,
        }),
        ..TrafficRouting::default()
    };
    // The version the installed CRD serves (OSM's: v1alpha2).
    let version = env
        .ns
        .cluster()
        .kubectl_run(["api-versions"])?
        .lines()
        .find(|l| l.starts_with("split.smi-spec.io/"))
        .context("split.smi-spec.io not served")?
        .to_string();
    env.create(&json!({
        "apiVersion": version,
        "kind": "TrafficSplit",
        "metadata": {"name": "split"},
        "spec": {"service": "app", "backends": [
            {"service": "app-stable", "weight": 100},
            {"service": "legacy-svc", "weight": 3},
            {"service": "app-canary", "weight": 0}
        ]}
    }))?;
    env.apply_as_other(&json!({
        "apiVersion": version,
        "kind": "TrafficSplit",
        "metadata": {"name": "split", "labels": {"team": "payments"},
                     "annotations": {"other-team/owner": "payments"}}
    }))?;
    walk_weights(
        &env,
        &routing,
        "trafficsplits.split.smi-spec.io",
        "split",
        |split, w| {
            split["spec"]["backends"][0]["weight"] = json!(100 - w);
            split["spec"]["backends"][2]["weight"] = json!(w);
        },
    )
    .await?;
    env.ns.cleanup().await
}

#[tokio::test]
async fn gateway_api_http_route() -> Result<()> {
    let env = Env::new("routers-gateway").await?;
    let routing = TrafficRouting {
        gateway_api: Some(GatewayApiRouting {
            http_route: "route".into(),
        }),
        ..TrafficRouting::default()
    };
    env.create(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "route"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                 "backendRefs": [{"name": "admin-svc", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                 "filters": [{"type": "RequestHeaderModifier",
                              "requestHeaderModifier": {"add": [{"name": "x-env", "value": "prod"}]}}],
                 "backendRefs": [
                     {"name": "app-stable", "port": 80},
                     {"name": "app-canary", "port": 80},
                     {"name": "mirror-svc", "port": 80, "weight": 2}
                 ]}
            ]
        }
    }))?;
    env.apply_as_other(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "route", "annotations": {"other-team/owner": "payments"}},
        "spec": {"hostnames": ["app.example.com"]}
    }))?;
    // Both at the default weight 1: not a split the router reports.
    ensure!(env.read(&routing).await?.is_none());
    walk_weights(
        &env,
        &routing,
        "httproutes.gateway.networking.k8s.io",
        "route",
        |route, w| {
            route["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(100 - w);
            route["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(w);
        },
    )
    .await?;
    env.ns.cleanup().await
}

#[tokio::test]
async fn nginx_canary_ingress() -> Result<()> {
    let env = Env::new("routers-nginx").await?;
    let ns = env.ns.name().to_string();
    let routing = TrafficRouting {
        nginx: Some(NginxRouting {
            ingress: "web".into(),
            service_port: 8080,
        }),
        ..TrafficRouting::default()
    };
    env.create(&json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web", "annotations": {
            "nginx.ingress.kubernetes.io/rewrite-target": "/",
            "nginx.ingress.kubernetes.io/server-snippet": "return 418;",
            "nginx.ingress.kubernetes.io/affinity": "cookie"
        }},
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["app.example.com"], "secretName": "app-tls"}],
            "rules": [{"host": "app.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "app-stable", "port": {"number": 80}}}},
                {"path": "/static", "pathType": "Prefix",
                 "backend": {"service": {"name": "static-svc", "port": {"number": 80}}}}
            ]}}]
        }
    }))?;
    env.apply_as_other(&json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web", "labels": {"team": "payments"}}
    }))?;
    let user_before = env.get("ingresses.networking.k8s.io", "web")?;
    ensure!(env.read(&routing).await?.is_none(), "no canary Ingress yet");

    let mut canary_rv = Value::Null;
    for weight in WEIGHTS {
        env.set(&routing, weight).await?;
        // The user's Ingress is never written.
        let user_after = env.get("ingresses.networking.k8s.io", "web")?;
        ensure!(user_after == user_before, "the user's Ingress changed");
        let canary = env.get("ingresses.networking.k8s.io", "web-canary")?;
        let want_spec = json!({
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["app.example.com"], "secretName": "app-tls"}],
            "rules": [{"host": "app.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "app-canary", "port": {"number": 8080}}}}
            ]}}]
        });
        ensure!(
            canary["spec"] == want_spec,
            "canary spec: {}",
            canary["spec"]
        );
        ensure!(
            canary["metadata"]["annotations"]
                // Only the annotations ingress-nginx reads from a canary Ingress are copied.
                == json!({
                    "nginx.ingress.kubernetes.io/affinity": "cookie",
                    "nginx.ingress.kubernetes.io/canary": "true",
                    "nginx.ingress.kubernetes.io/canary-weight": weight.to_string()
                }),
            "canary annotations: {}",
            canary["metadata"]["annotations"]
        );
        ensure!(
            canary["metadata"]["labels"]
                == json!({"stormservice.aibrix.ai/name": "app",
                          "app.kubernetes.io/managed-by": "storm-rollouts"}),
            "canary labels: {}",
            canary["metadata"]["labels"]
        );
        let owners = &canary["metadata"]["ownerReferences"];
        ensure!(
            owners.as_array().map(Vec::len) == Some(1)
                && owners[0]["kind"] == "StormService"
                && owners[0]["name"] == "app"
                && owners[0]["uid"] == json!(env.owner.uid)
                && owners[0]["controller"] == true,
            "canary ownerReferences: {owners}"
        );
        ensure!(
            canary["metadata"]["namespace"] == json!(ns),
            "canary namespace"
        );
        ensure!(
            env.read(&routing).await? == Some(weight),
            "read_weight {weight}"
        );
        ensure!(
            canary["metadata"]["resourceVersion"] != canary_rv,
            "canary not written"
        );
        canary_rv = canary["metadata"]["resourceVersion"].clone();
        env.set(&routing, weight).await?;
        let again = env.get("ingresses.networking.k8s.io", "web-canary")?;
        ensure!(
            again["metadata"]["resourceVersion"] == canary_rv,
            "setting {weight} twice wrote the canary twice"
        );
    }
    env.ns.cleanup().await
}

#[tokio::test]
async fn every_router_at_once_agrees() -> Result<()> {
    let env = Env::new("routers-all").await?;
    env.create(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "route"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [
            {"name": "app-stable", "port": 80}, {"name": "app-canary", "port": 80}]}]}
    }))?;
    env.create(&json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "vs"},
        "spec": {"hosts": ["app"], "http": [{"route": [
            {"destination": {"host": "app-stable"}, "weight": 100},
            {"destination": {"host": "app-canary"}, "weight": 0}]}]}
    }))?;
    let routing = TrafficRouting {
        istio: Some(IstioRouting {
            virtual_service: "vs".into(),
            destination_rule: None,
        }),
        gateway_api: Some(GatewayApiRouting {
            http_route: "route".into(),
        }),
        ..TrafficRouting::default()
    };
    // Istio holds 0, the HTTPRoute 1/1: they disagree.
    ensure!(env.read(&routing).await?.is_none());
    env.set(&routing, 30).await?;
    ensure!(env.read(&routing).await? == Some(30));
    env.ns.cleanup().await
}
