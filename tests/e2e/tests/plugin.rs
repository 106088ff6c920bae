//! `kubectl storm` as users run it: through real kubectl's plugin lookup on PATH, against the
//! local control plane with the controller running.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use storm_shared::StormService;
use storm_shared::types::stormservice::RolloutPhase;
use storm_test_support::process::{Controller, binary};
use storm_test_support::{TestNamespace, wait_for};

const TIMEOUT: Duration = Duration::from_secs(90);

/// `kubectl storm ARGS -n NS`, with the plugin found on PATH as kubectl looks for it.
fn storm(ns: &TestNamespace, args: &[&str]) -> Result<Command> {
    let plugin = binary("storm-cli", "kubectl-storm")?;
    let dir = plugin.parent().context("plugin dir")?.to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![dir];
    dirs.extend(std::env::split_paths(&path));
    // kubectl takes no flags before a plugin's name: the namespace goes to the plugin.
    let mut cmd = ns.cluster().kubectl();
    cmd.env("PATH", std::env::join_paths(dirs)?)
        .arg("storm")
        .args(args)
        .args(["-n", ns.name()]);
    Ok(cmd)
}

fn run(ns: &TestNamespace, args: &[&str]) -> Result<Output> {
    Ok(storm(ns, args)?.stdin(Stdio::null()).output()?)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn setup(prefix: &str) -> Result<(TestNamespace, Controller, Api<StormService>)> {
    let ns = TestNamespace::new(prefix).await?;
    ns.cluster().install_crds()?;
    let controller = Controller::start(ns.cluster(), ns.name())?;
    let services: Api<Service> = ns.api();
    for name in ["app-stable", "app-canary"] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}
        }))?;
        services.create(&PostParams::default(), &svc).await?;
    }
    let obj: StormService = serde_json::from_value(json!({
        "apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "StormService",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"roles": [{"name": "server", "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {"containers": [{"name": "server", "image": "app:v1"}]}}}]}},
            "rolloutStrategy": {"type": "Canary", "canary": {
                "stableService": "app-stable", "canaryService": "app-canary",
                "steps": [{"weight": 50, "pause": {"untilApproval": true}}, {"weight": 100}]}}
        }
    }))?;
    let api: Api<StormService> = ns.api();
    api.create(&PostParams::default(), &obj).await?;
    Ok((ns, controller, api))
}

fn phase(obj: &StormService) -> Option<RolloutPhase> {
    obj.status.as_ref()?.rollout_status.as_ref()?.phase
}

async fn wait_phase(api: &Api<StormService>, want: RolloutPhase) -> Result<()> {
    wait_for(&format!("phase {want:?}"), TIMEOUT, || async {
        Ok((phase(&api.get("app").await?) == Some(want)).then_some(()))
    })
    .await
}

#[tokio::test]
async fn status_set_image_watch_and_promote() -> Result<()> {
    let (ns, _controller, api) = setup("plugin-flow").await?;
    let out = run(
        &ns,
        &["status", "app", "--wait-for", "Healthy", "--timeout", "60s"],
    )?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    ensure!(text(&out).contains("Phase:      Healthy"), "{}", text(&out));
    // Nothing waits for approval yet: promote refuses, exit 1, and says why.
    let out = run(&ns, &["promote", "app"])?;
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    ensure!(
        text(&out).contains("nothing is waiting for approval"),
        "{}",
        text(&out)
    );
    // set image starts a canary.
    let out = run(&ns, &["set", "image", "app", "server=app:v2"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    ensure!(
        text(&out).contains("role server container server: app:v1 -> app:v2"),
        "{}",
        text(&out)
    );
    ensure!(
        text(&out).contains("a Canary rollout starts"),
        "{}",
        text(&out)
    );
    // A live view of the rollout in progress, until it completes.
    let watch = storm(
        &ns,
        &[
            "status",
            "app",
            "-w",
            "--wait-for",
            "Completed",
            "--timeout",
            "80s",
        ],
    )?
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    wait_for("waiting for approval", TIMEOUT, || async {
        Ok(storm_shared::status::waiting_for_approval(&api.get("app").await?).then_some(()))
    })
    .await?;
    let out = run(&ns, &["promote", "app"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    ensure!(text(&out).contains("approved"), "{}", text(&out));
    let out = watch.wait_with_output()?;
    let view = text(&out);
    ensure!(
        out.status.code() == Some(0),
        "status -w exit {:?}:\n{view}",
        out.status.code()
    );
    ensure!(
        view.matches("\n---- ").count() >= 2,
        "several snapshots:\n{view}"
    );
    ensure!(
        view.contains("[=] 0  weight 50, pause until approval"),
        "the waiting step is marked:\n{view}"
    );
    ensure!(view.contains("Phase:      Completed"), "{view}");
    ensure!(view.contains("[x] 1  weight 100"), "{view}");
    ns.cleanup().await
}

#[tokio::test]
async fn pause_resume_abort_retry_and_exit_codes() -> Result<()> {
    let (ns, _controller, api) = setup("plugin-controls").await?;
    wait_phase(&api, RolloutPhase::Healthy).await?;
    // No rollout: abort and retry refuse.
    ensure!(run(&ns, &["abort", "app"])?.status.code() == Some(1));
    ensure!(run(&ns, &["retry", "app"])?.status.code() == Some(1));
    let out = run(&ns, &["set", "image", "app", "server=app:v2"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    wait_phase(&api, RolloutPhase::Paused).await?;
    let out = run(&ns, &["pause", "app"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    wait_for("paused by the user", TIMEOUT, || async {
        let obj = api.get("app").await?;
        let rs = obj
            .status
            .and_then(|s| s.rollout_status)
            .unwrap_or_default();
        Ok(rs
            .conditions
            .iter()
            .any(|c| c.type_ == "Paused" && c.reason.as_deref() == Some("PausedByUser"))
            .then_some(()))
    })
    .await?;
    let out = run(&ns, &["resume", "app"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    let out = run(&ns, &["abort", "app"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    wait_phase(&api, RolloutPhase::Aborted).await?;
    // Waiting for completion of an aborted rollout fails fast with exit 1.
    let out = run(
        &ns,
        &[
            "status",
            "app",
            "--wait-for",
            "Completed",
            "--timeout",
            "30s",
        ],
    )?;
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    let out = run(&ns, &["retry", "app"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    wait_phase(&api, RolloutPhase::Paused).await?;
    // A phase that does not come: exit 3 when the timeout passes.
    let out = run(
        &ns,
        &["status", "app", "--wait-for", "Healthy", "--timeout", "2s"],
    )?;
    ensure!(out.status.code() == Some(3), "{}", text(&out));
    // No such StormService, and a malformed image argument: exit 2, clear message.
    let out = run(&ns, &["status", "nope"])?;
    ensure!(
        out.status.code() == Some(2) && text(&out).contains("not found"),
        "{}",
        text(&out)
    );
    let out = run(&ns, &["set", "image", "app", "server"])?;
    ensure!(
        out.status.code() == Some(2) && text(&out).contains("expected ROLE=IMAGE"),
        "{}",
        text(&out)
    );
    let out = run(&ns, &["set", "image", "app", "router=x:1"])?;
    ensure!(
        out.status.code() == Some(2) && text(&out).contains("roles: server"),
        "{}",
        text(&out)
    );
    ns.cleanup().await
}

/// The stable revision's hash, once the rollout to the template at hand has completed.
async fn completed_revision(api: &Api<StormService>) -> Result<String> {
    wait_for("rollout completed", TIMEOUT, || async {
        let obj = api.get("app").await?;
        let status = obj.status.clone().unwrap_or_default();
        let done = matches!(
            phase(&obj),
            Some(RolloutPhase::Completed | RolloutPhase::Healthy)
        ) && status.current_revision.is_some()
            && status.current_revision == status.update_revision;
        Ok(done.then(|| status.current_revision.unwrap_or_default()))
    })
    .await
}

async fn approve(ns: &TestNamespace, api: &Api<StormService>) -> Result<()> {
    wait_for("waiting for approval", TIMEOUT, || async {
        Ok(storm_shared::status::waiting_for_approval(&api.get("app").await?).then_some(()))
    })
    .await?;
    let out = run(ns, &["promote", "app"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    Ok(())
}

#[tokio::test]
async fn history_and_undo_through_the_strategy() -> Result<()> {
    let (ns, _controller, api) = setup("plugin-undo").await?;
    let first = completed_revision(&api).await?;
    // One revision so far: nothing earlier to go back to (exit 1, says why).
    let out = run(&ns, &["undo", "app"])?;
    ensure!(
        out.status.code() == Some(1) && text(&out).contains("no earlier revision"),
        "{}",
        text(&out)
    );
    let out = run(&ns, &["set", "image", "app", "server=app:v2"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    approve(&ns, &api).await?;
    let second = completed_revision(&api).await?;
    ensure!(second != first, "a new revision: {first} then {second}");
    let out = run(&ns, &["history", "app"])?;
    let table = text(&out);
    ensure!(out.status.code() == Some(0), "{table}");
    let rows: Vec<&str> = table.lines().skip(1).collect();
    ensure!(rows.len() == 2, "two revisions:\n{table}");
    ensure!(
        rows[0].starts_with('1')
            && rows[0].contains(&first)
            && rows[0].contains("server/server=app:v1"),
        "{table}"
    );
    ensure!(
        rows[1].starts_with('2') && rows[1].contains(&second) && rows[1].contains("stable"),
        "{table}"
    );
    // Errors name the revisions there are.
    let out = run(&ns, &["undo", "app", "--to-revision", "7"])?;
    ensure!(
        out.status.code() == Some(1) && text(&out).contains("stored revisions: 1, 2"),
        "{}",
        text(&out)
    );
    // Undo to revision 1 goes through the canary: it waits for approval like any change.
    let out = run(&ns, &["undo", "app", "--to-revision", "1"])?;
    ensure!(
        out.status.code() == Some(0) && text(&out).contains("revision 1"),
        "{}",
        text(&out)
    );
    wait_phase(&api, RolloutPhase::Paused).await?;
    approve(&ns, &api).await?;
    let back = completed_revision(&api).await?;
    ensure!(back == first, "back on revision 1 ({first}), got {back}");
    let obj = api.get("app").await?;
    let image = obj
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.roles[0].template.spec.as_ref())
        .and_then(|p| p.containers[0].image.clone());
    ensure!(image.as_deref() == Some("app:v1"), "{image:?}");
    ns.cleanup().await
}

#[tokio::test]
async fn promote_full_skips_every_step_left() -> Result<()> {
    let (ns, _controller, api) = setup("plugin-full").await?;
    completed_revision(&api).await?;
    // Nothing to promote yet: refused, exit 1.
    let out = run(&ns, &["promote", "app", "--full"])?;
    ensure!(
        out.status.code() == Some(1) && text(&out).contains("acts on a running rollout"),
        "{}",
        text(&out)
    );
    // Steps that would hold the rollout for an hour and two approvals.
    let steps = json!({"spec": {"rolloutStrategy": {"canary": {"steps": [
        {"weight": 25, "pause": {"untilApproval": true}},
        {"weight": 50, "pause": {"untilApproval": true}},
        {"weight": 75, "pause": {"duration": "1h"}},
        {"weight": 100}
    ]}}}});
    api.patch(
        "app",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&steps),
    )
    .await?;
    let out = run(&ns, &["set", "image", "app", "server=app:v2"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));
    wait_for("waiting for approval at step 0", TIMEOUT, || async {
        let obj = api.get("app").await?;
        let step = obj
            .status
            .as_ref()
            .and_then(|s| s.rollout_status.as_ref())
            .and_then(|r| r.current_step_index);
        Ok((storm_shared::status::waiting_for_approval(&obj) && step == Some(0)).then_some(()))
    })
    .await?;
    let out = run(&ns, &["promote", "app", "--full"])?;
    ensure!(
        out.status.code() == Some(0) && text(&out).contains("full promotion requested"),
        "{}",
        text(&out)
    );
    let done = completed_revision(&api).await?;
    let obj = api.get("app").await?;
    ensure!(
        obj.annotations()
            .get(storm_shared::keys::ANNOTATION_PROMOTE_FULL)
            .is_none(),
        "the annotation is removed once acted on"
    );
    let rs = obj
        .status
        .and_then(|s| s.rollout_status)
        .unwrap_or_default();
    ensure!(
        rs.current_step_index == Some(4),
        "past the last step: {rs:?}"
    );
    ensure!(!done.is_empty());
    ns.cleanup().await
}
