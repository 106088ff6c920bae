use super::*;
use crate::cache::CachedPod;
use crate::roleset::plan::plan_pods;
use crate::roleset::plan::tests::{existing, role, roleset, ts};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use storm_shared::types::roleset::RoleUpdateStrategy;

const NOW: &str = "2026-01-01T00:00:00Z";

/// A RoleSet at template 1 with every Pod Ready, then `change` applied to its spec.
fn updated(roles: Vec<RoleSpec>, change: impl Fn(&mut RoleSet)) -> (RoleSet, Vec<CachedPod>) {
    let rs = roleset(roles);
    let made = plan_pods(&rs, &[], ts(NOW)).unwrap().create;
    let pods: Vec<CachedPod> = made
        .iter()
        .map(|p| {
            let mut pod = existing(&rs, &p.name_any(), "Running", true);
            pod.metadata.labels = p.metadata.labels.clone();
            pod.metadata.annotations = p.metadata.annotations.clone();
            pod
        })
        .collect();
    let mut rs = rs;
    change(&mut rs);
    (rs, pods)
}

fn set_image(rs: &mut RoleSet, role: usize, image: &str) {
    std::sync::Arc::make_mut(&mut rs.spec.roles[role].template)
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some(image.into());
}

fn strategy(type_: &str, max_unavailable: Option<IntOrString>) -> Option<RoleUpdateStrategy> {
    Some(RoleUpdateStrategy {
        type_: Some(type_.into()),
        max_unavailable,
        max_surge: None,
    })
}

fn names(v: &[(String, Option<String>)]) -> Vec<&str> {
    v.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn an_unchanged_template_updates_nothing() {
    let (rs, pods) = updated(vec![role("decode", Some(3))], |_| {});
    let owned: Vec<&CachedPod> = pods.iter().collect();
    assert_eq!(plan_updates(&rs, &owned), Updates::default());
}

#[test]
fn outdated_pods_are_replaced_one_at_a_time_by_default() {
    let (rs, pods) = updated(vec![role("decode", Some(3))], |rs| set_image(rs, 0, "x:2"));
    let owned: Vec<&CachedPod> = pods.iter().collect();
    let u = plan_updates(&rs, &owned);
    assert_eq!(
        names(&u.replace),
        ["llm-abc123-0-decode-2"],
        "highest slot first, one at a time"
    );
    assert!(u.in_place.is_empty());
    // One Pod already down: nothing more goes until it is back.
    let mut down = pods.clone();
    down.retain(|p| p.name_any() != "llm-abc123-0-decode-2");
    let owned: Vec<&CachedPod> = down.iter().collect();
    assert!(plan_updates(&rs, &owned).replace.is_empty());
    // The plan deletes it with its reason.
    let owned: Vec<&CachedPod> = pods.iter().collect();
    let plan = plan_pods(&rs, &owned, ts(NOW)).unwrap();
    assert_eq!(plan.delete.len(), 1);
    assert_eq!(
        plan.delete[0].reason,
        crate::roleset::plan::DeleteReason::Outdated
    );
}

#[test]
fn max_unavailable_widens_the_budget() {
    let mut r = role("decode", Some(4));
    r.update_strategy = strategy("Recreate", Some(IntOrString::String("50%".into())));
    let (rs, pods) = updated(vec![r], |rs| set_image(rs, 0, "x:2"));
    let owned: Vec<&CachedPod> = pods.iter().collect();
    assert_eq!(plan_updates(&rs, &owned).replace.len(), 2);
}

#[test]
fn in_place_if_possible_patches_images_and_replaces_anything_else() {
    let mut r = role("decode", Some(2));
    r.update_strategy = strategy(IN_PLACE_IF_POSSIBLE, Some(IntOrString::Int(2)));
    let (rs, pods) = updated(vec![r.clone()], |rs| set_image(rs, 0, "x:2"));
    let owned: Vec<&CachedPod> = pods.iter().collect();
    let u = plan_updates(&rs, &owned);
    assert!(u.replace.is_empty());
    assert_eq!(u.in_place.len(), 2);
    assert_eq!(
        u.in_place[0].images.get("engine").map(String::as_str),
        Some("x:2")
    );
    assert_eq!(u.in_place[0].hash, role_template_hash(&rs.spec.roles[0]));
    // Args changed as well: not an image-only change, so replaced.
    let (rs, pods) = updated(vec![r], |rs| {
        set_image(rs, 0, "x:2");
        std::sync::Arc::make_mut(&mut rs.spec.roles[0].template)
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .args = Some(vec!["--x".into()]);
    });
    let owned: Vec<&CachedPod> = pods.iter().collect();
    let u = plan_updates(&rs, &owned);
    assert!(u.in_place.is_empty());
    assert_eq!(u.replace.len(), 2);
}

#[test]
fn sequential_roles_go_one_after_another_by_upgrade_order() {
    let mut prefill = role("prefill", Some(1));
    prefill.upgrade_order = Some(2);
    let mut decode = role("decode", Some(1));
    decode.upgrade_order = Some(1);
    let (rs, pods) = updated(vec![prefill.clone(), decode.clone()], |rs| {
        set_image(rs, 0, "x:2");
        set_image(rs, 1, "x:2");
    });
    let owned: Vec<&CachedPod> = pods.iter().collect();
    assert_eq!(
        names(&plan_updates(&rs, &owned).replace),
        ["llm-abc123-0-decode-0"]
    );
    // Parallel: both at once.
    let (mut rs, pods) = updated(vec![prefill, decode], |rs| {
        set_image(rs, 0, "x:2");
        set_image(rs, 1, "x:2");
    });
    rs.spec.update_strategy = Some(RoleSetUpdateStrategyType::Parallel);
    let owned: Vec<&CachedPod> = pods.iter().collect();
    assert_eq!(plan_updates(&rs, &owned).replace.len(), 2);
}

#[test]
fn pods_without_a_template_hash_count_as_current() {
    let (rs, mut pods) = updated(vec![role("decode", Some(2))], |rs| set_image(rs, 0, "x:2"));
    for p in &mut pods {
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(AIBRIX_LABEL_ROLE_TEMPLATE_HASH);
    }
    let owned: Vec<&CachedPod> = pods.iter().collect();
    assert_eq!(plan_updates(&rs, &owned), Updates::default());
}

#[test]
fn the_pod_cache_keeps_what_an_in_place_update_needs() {
    let mut r = role("decode", Some(1));
    r.update_strategy = strategy(IN_PLACE_IF_POSSIBLE, None);
    let (rs, mut pods) = updated(vec![r], |rs| set_image(rs, 0, "x:2"));
    crate::cache::slim_pod(&mut pods[0]);
    let owned: Vec<&CachedPod> = pods.iter().collect();
    assert_eq!(
        plan_updates(&rs, &owned).in_place.len(),
        1,
        "the cached Pod still qualifies"
    );
}

#[test]
fn interleave_moves_roles_in_lockstep_waves() {
    let (mut rs, pods) = updated(
        vec![role("prefill", Some(3)), role("decode", Some(3))],
        |rs| {
            set_image(rs, 0, "x:2");
            set_image(rs, 1, "x:2");
        },
    );
    rs.spec.update_strategy = Some(RoleSetUpdateStrategyType::Interleave);
    let owned: Vec<&CachedPod> = pods.iter().collect();
    let mut first = names(&plan_updates(&rs, &owned).replace)
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    first.sort();
    assert_eq!(
        first,
        ["llm-abc123-0-decode-2", "llm-abc123-0-prefill-2"],
        "wave 1: one Pod of each role"
    );
    // decode's new Pod is up and Ready, prefill's is not yet: decode waits for prefill.
    let current = plan_pods(&rs, &[], ts(NOW)).unwrap().create;
    let fresh = |name: &str, ready: bool| {
        let made = current.iter().find(|p| p.name_any() == name).unwrap();
        let mut pod = existing(&rs, name, "Running", ready);
        pod.metadata.labels = made.metadata.labels.clone();
        pod.metadata.annotations = made.metadata.annotations.clone();
        pod
    };
    let mut now: Vec<CachedPod> = pods
        .iter()
        .filter(|p| !p.name_any().ends_with("-2"))
        .cloned()
        .collect();
    now.push(fresh("llm-abc123-0-decode-2", true));
    now.push(fresh("llm-abc123-0-prefill-2", false));
    let owned: Vec<&CachedPod> = now.iter().collect();
    assert!(
        plan_updates(&rs, &owned).replace.is_empty(),
        "no role starts wave 2 before every role finished wave 1"
    );
    // Both Ready: wave 2 starts for both.
    now.pop();
    now.push(fresh("llm-abc123-0-prefill-2", true));
    let owned: Vec<&CachedPod> = now.iter().collect();
    let mut second: Vec<String> = names(&plan_updates(&rs, &owned).replace)
        .into_iter()
        .map(String::from)
        .collect();
    second.sort();
    assert_eq!(second, ["llm-abc123-0-decode-1", "llm-abc123-0-prefill-1"]);
    // Parallel would not have waited.
    let mut par = rs.clone();
    par.spec.update_strategy = Some(RoleSetUpdateStrategyType::Parallel);
    now.pop();
    now.push(fresh("llm-abc123-0-prefill-2", false));
    let owned: Vec<&CachedPod> = now.iter().collect();
    assert_eq!(
        names(&plan_updates(&par, &owned).replace),
        ["llm-abc123-0-decode-1"]
    );
}
