use super::*;
use crate::roleset::plan::tests::{existing, role, roleset, ts};

const NOW: &str = "2026-01-01T00:10:00.700Z";

fn ready_condition_of(status: &RoleSetStatus) -> &Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
}

#[test]
fn counts_per_role_and_overall() {
    let rs = roleset(vec![role("prefill", Some(2)), role("decode", Some(1))]);
    let p0 = existing(&rs, "llm-abc123-0-prefill-0", "Running", true);
    let p1 = existing(&rs, "llm-abc123-0-prefill-1", "Pending", false);
    let d0 = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    let status = compute_status(&rs, &[&p0, &p1, &d0], &[], ts(NOW));
    assert_eq!(status.replicas, 3);
    assert_eq!(status.ready_replicas, 2);
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(
        status.roles,
        [
            RoleStatus {
                name: "prefill".to_string(),
                replicas: 2,
                ready_replicas: 1,
                not_ready_replicas: 1,
                updated_replicas: 2,
                updated_ready_replicas: 1,
            },
            RoleStatus {
                name: "decode".to_string(),
                replicas: 1,
                ready_replicas: 1,
                not_ready_replicas: 0,
                updated_replicas: 1,
                updated_ready_replicas: 1,
            },
        ]
    );
    let ready = ready_condition_of(&status);
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("PodsNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("2/3 Pods ready; waiting for prefill: 1/2")
    );
    // Whole seconds, so the value read back from the API server compares equal.
    assert_eq!(
        ready.last_transition_time,
        Some(Time(ts("2026-01-01T00:10:01Z")))
    );
}

#[test]
fn ready_when_every_desired_pod_is_ready() {
    let rs = roleset(vec![role("prefill", Some(1)), role("decode", Some(1))]);
    let p0 = existing(&rs, "llm-abc123-0-prefill-0", "Running", true);
    let d0 = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    let status = compute_status(&rs, &[&p0, &d0], &[], ts(NOW));
    let ready = ready_condition_of(&status);
    assert_eq!(ready.status, "True");
    assert_eq!(ready.reason.as_deref(), Some("AllPodsReady"));
    assert_eq!(ready.message.as_deref(), Some("2/2 Pods ready"));
}

#[test]
fn missing_and_failed_pods_are_not_ready() {
    let rs = roleset(vec![role("decode", Some(2))]);
    let d0 = existing(&rs, "llm-abc123-0-decode-0", "Failed", false);
    let status = compute_status(&rs, &[&d0], &[], ts(NOW));
    assert_eq!(status.roles[0].replicas, 1);
    assert_eq!(status.roles[0].not_ready_replicas, 1);
    assert_eq!(ready_condition_of(&status).status, "False");
}

#[test]
fn an_extra_ready_pod_does_not_make_up_for_a_missing_slot() {
    // Scaling down from 3 to 2 while slot 1 is not ready: slot 2 is ready but on its way out.
    let rs = roleset(vec![role("decode", Some(2))]);
    let d0 = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    let d1 = existing(&rs, "llm-abc123-0-decode-1", "Pending", false);
    let d2 = existing(&rs, "llm-abc123-0-decode-2", "Running", true);
    let status = compute_status(&rs, &[&d0, &d1, &d2], &[], ts(NOW));
    assert_eq!(status.roles[0].replicas, 3);
    assert_eq!(status.roles[0].ready_replicas, 2);
    assert_eq!(ready_condition_of(&status).status, "False");
}

#[test]
fn terminating_pods_do_not_count() {
    let rs = roleset(vec![role("decode", Some(1))]);
    let mut d0 = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    d0.metadata.deletion_timestamp = Some(Time(ts(NOW)));
    let status = compute_status(&rs, &[&d0], &[], ts(NOW));
    assert_eq!(status.roles[0].replicas, 0);
    assert_eq!(status.ready_replicas, 0);
    assert_eq!(ready_condition_of(&status).status, "False");
}

#[test]
fn an_empty_roleset_is_trivially_ready() {
    let rs = roleset(vec![]);
    let status = compute_status(&rs, &[], &[], ts(NOW));
    assert_eq!(status.replicas, 0);
    assert_eq!(ready_condition_of(&status).status, "True");
}

#[test]
fn unchanged_status_keeps_its_timestamps_so_nothing_is_rewritten() {
    let mut rs = roleset(vec![role("decode", Some(1))]);
    let d0 = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    let first = compute_status(&rs, &[&d0], &[], ts(NOW));
    rs.status = Some(first.clone());
    let later = compute_status(&rs, &[&d0], &[], ts("2026-01-01T01:00:00Z"));
    assert_eq!(
        later, first,
        "a second reconcile must produce an identical status"
    );
}

#[test]
fn transition_time_moves_only_when_the_status_flips() {
    let mut rs = roleset(vec![role("decode", Some(2))]);
    let d0 = existing(&rs, "llm-abc123-0-decode-0", "Running", true);
    let d1 = existing(&rs, "llm-abc123-0-decode-1", "Running", true);
    rs.status = Some(compute_status(&rs, &[], &[], ts("2026-01-01T00:00:00Z")));

    // Still not ready, different message: the update time moves, the transition time stays.
    let partly = compute_status(&rs, &[&d0], &[], ts("2026-01-01T00:01:00Z"));
    let c = ready_condition_of(&partly);
    assert_eq!(c.status, "False");
    assert_eq!(
        c.last_transition_time,
        Some(Time(ts("2026-01-01T00:00:00Z")))
    );
    assert_eq!(c.last_update_time, Some(Time(ts("2026-01-01T00:01:00Z"))));
    rs.status = Some(partly);

    // Now ready: both move.
    let all = compute_status(&rs, &[&d0, &d1], &[], ts("2026-01-01T00:02:00Z"));
    let c = ready_condition_of(&all);
    assert_eq!(c.status, "True");
    assert_eq!(
        c.last_transition_time,
        Some(Time(ts("2026-01-01T00:02:00Z")))
    );
    assert_eq!(c.last_update_time, Some(Time(ts("2026-01-01T00:02:00Z"))));
}
