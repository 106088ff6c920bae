//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several controller replicas
//! exactly one reconciles. The decision (take, renew, wait) is the pure [`decide`]; [`spawn`] runs
//! the loop that applies it with optimistic concurrency (a `replace` carrying the `resourceVersion`
//! that was read: when two candidates race, the API server lets one win and answers 409 to the other).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Name of the Lease the controller replicas compete for.
pub const LEASE_NAME: &str = "storm-controller";
/// How long a Lease stays valid after its last renewal; a crashed leader is replaced after this.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews (and a candidate retries).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(2);
/// A leader that could not renew for this long steps down: well before [`LEASE_DURATION`] ends, so
/// it has stopped before any other replica can legitimately take over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// Longest one read-and-write round may take; well under [`RENEW_DEADLINE`].
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(4);

/// What a candidate does with the Lease as it finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it, holding it.
    Create,
    /// The Lease is free or expired: take it over.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it until `expires`.
    Wait {
        /// The current holder.
        holder: String,
        /// When the holder's claim runs out unless renewed.
        expires: Timestamp,
    },
}

/// Decides what `identity` does about `lease` (`None`: no Lease object) at `now`.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    // A released Lease has no holder (or an empty one).
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return Decision::Acquire;
    };
    let duration = spec
        .lease_duration_seconds
        .map(|s| SignedDuration::from_secs(i64::from(s)))
        .unwrap_or_else(|| SignedDuration::from_secs(LEASE_DURATION.as_secs() as i64));
    match renewed.checked_add(duration) {
        Ok(expires) if expires >= now => Decision::Wait {
            holder: holder.to_string(),
            expires,
        },
        _ => Decision::Acquire,
    }
}

/// The Lease spec to write after `decision` (one of `Create`, `Acquire`, `Renew`).
pub fn claimed_spec(
    current: Option<&LeaseSpec>,
    decision: &Decision,
    identity: &str,
    now: Timestamp,
) -> LeaseSpec {
    let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
    let mut spec = current.cloned().unwrap_or_default();
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
    spec.renew_time = Some(MicroTime(now));
    if *decision != Decision::Renew {
        spec.acquire_time = Some(MicroTime(now));
        // Counts changes of holder; creating the Lease is not one.
        spec.lease_transitions = Some(if current.is_some() {
            transitions.saturating_add(1)
        } else {
            0
        });
    }
    spec
}

/// Identity of this candidate: the Pod name (`POD_NAME`, from the downward API) when set, else
/// `<hostname>-<pid>`, unique per process on a machine.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "storm-controller".to_string());
    format!("{host}-{}", std::process::id())
}

/// A Lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Reading the Lease failed.
    #[error("reading Lease {LEASE_NAME}: {0}")]
    Read(#[source] kube::Error),
    /// Creating, taking over or renewing the Lease failed (other than losing a race).
    #[error("writing Lease {LEASE_NAME}: {0}")]
    Write(#[source] kube::Error),
    /// A round took longer than [`ROUND_TIMEOUT`].
    #[error("renewing Lease {LEASE_NAME}: no answer within {ROUND_TIMEOUT:?}")]
    TimedOut,
}

/// A candidate for the Lease in one namespace.
#[derive(Clone)]
pub struct Candidate {
    api: Api<Lease>,
    identity: String,
}

impl Candidate {
    /// A candidate named `identity` for the Lease in `namespace`.
    pub fn new(client: Client, namespace: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: read the Lease, then create, take over or renew it if [`decide`] says so.
    /// `Ok(true)`: we hold it now. `Ok(false)`: someone else does (or won the race just now).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let current = self
            .api
            .get_opt(LEASE_NAME)
            .await
            .map_err(LeaseError::Read)?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.identity, Timestamp::now());
        let claimed = claimed_spec(spec, &decision, &self.identity, Timestamp::now());
        let result = match (&decision, current) {
            (Decision::Wait { .. }, _) => return Ok(false),
            (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.to_string()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(claimed),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (_, Some(mut lease)) => {
                // metadata.resourceVersion is the one read: a concurrent write makes this a 409.
                lease.spec = Some(claimed);
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => {
                if decision != Decision::Renew {
                    info!(identity = %self.identity, ?decision, "acquired leadership");
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(LeaseError::Write(e)),
        }
    }

    /// Gives the Lease up if we hold it, so a successor need not wait for it to expire. Best effort.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(identity = %self.identity, "released leadership"),
            Err(e) => warn!(identity = %self.identity, error = %e, "releasing the Lease failed"),
        }
    }
}

/// Runs `candidate` until `stop` turns true or leadership is lost. The receiver says whether we
/// lead; once it has been `true`, it turning `false` means leadership is lost for good (the loop
/// ends) and the process must stop reconciling.
pub fn spawn(
    candidate: Candidate,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (leading_tx, leading_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            let leading = *leading_tx.borrow();
            // A hung request must not outlive the renew deadline unnoticed.
            let round = tokio::time::timeout(ROUND_TIMEOUT, candidate.try_acquire_or_renew())
                .await
                .unwrap_or(Err(LeaseError::TimedOut));
            match round {
                Ok(true) => {
                    last_renewal = Some(tokio::time::Instant::now());
                    leading_tx.send_if_modified(|l| !std::mem::replace(l, true));
                }
                Ok(false) if leading => {
                    warn!(identity = %candidate.identity(), "another replica holds the Lease now");
                    let _ = leading_tx.send(false);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(identity = %candidate.identity(), error = %e, "leader election round failed");
                    let overdue = last_renewal.is_none_or(|t| t.elapsed() >= RENEW_DEADLINE);
                    if leading && overdue {
                        warn!(identity = %candidate.identity(), "could not renew the Lease in time");
                        let _ = leading_tx.send(false);
                        return;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RENEW_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
    (leading_rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn held_by(holder: &str, renewed: &str, seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            renew_time: Some(MicroTime(ts(renewed))),
            acquire_time: Some(MicroTime(ts("2026-01-01T00:00:00Z"))),
            lease_duration_seconds: seconds,
            lease_transitions: Some(4),
            ..LeaseSpec::default()
        }
    }

    const NOW: &str = "2026-01-01T00:01:00Z";

    #[test]
    fn no_lease_means_create() {
        assert_eq!(decide(None, "me", ts(NOW)), Decision::Create);
    }

    #[test]
    fn our_own_lease_is_renewed_even_if_expired() {
        let spec = held_by("me", "2026-01-01T00:00:00Z", Some(15));
        assert_eq!(decide(Some(&spec), "me", ts(NOW)), Decision::Renew);
    }

    #[test]
    fn a_live_lease_of_another_holder_means_wait() {
        let spec = held_by("other", "2026-01-01T00:00:50Z", Some(15));
        assert_eq!(
            decide(Some(&spec), "me", ts(NOW)),
            Decision::Wait {
                holder: "other".to_string(),
                expires: ts("2026-01-01T00:01:05Z")
            }
        );
        // Exactly at expiry it is still theirs; a moment later it is free.
        let spec = held_by("other", "2026-01-01T00:00:45Z", Some(15));
        assert!(matches!(
            decide(Some(&spec), "me", ts(NOW)),
            Decision::Wait { .. }
        ));
        assert_eq!(
            decide(Some(&spec), "me", ts("2026-01-01T00:01:00.001Z")),
            Decision::Acquire
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        let spec = held_by("other", "2026-01-01T00:00:30Z", Some(15));
        assert_eq!(decide(Some(&spec), "me", ts(NOW)), Decision::Acquire);
    }

    #[test]
    fn missing_duration_falls_back_to_ours() {
        let spec = held_by("other", "2026-01-01T00:00:50Z", None);
        assert!(matches!(
            decide(Some(&spec), "me", ts(NOW)),
            Decision::Wait { .. }
        ));
        let spec = held_by("other", "2026-01-01T00:00:40Z", None);
        assert_eq!(decide(Some(&spec), "me", ts(NOW)), Decision::Acquire);
    }

    #[test]
    fn released_or_never_renewed_leases_are_free() {
        let mut released = held_by("other", "2026-01-01T00:00:59Z", Some(1));
        released.holder_identity = None;
        assert_eq!(decide(Some(&released), "me", ts(NOW)), Decision::Acquire);
        released.holder_identity = Some(String::new());
        assert_eq!(decide(Some(&released), "me", ts(NOW)), Decision::Acquire);
        let mut never = held_by("other", NOW, Some(15));
        never.renew_time = None;
        assert_eq!(decide(Some(&never), "me", ts(NOW)), Decision::Acquire);
    }

    #[test]
    fn claiming_sets_holder_times_and_counts_transitions() {
        let now = ts(NOW);
        let created = claimed_spec(None, &Decision::Create, "me", now);
        assert_eq!(created.holder_identity.as_deref(), Some("me"));
        assert_eq!(created.lease_duration_seconds, Some(15));
        assert_eq!(created.acquire_time, Some(MicroTime(now)));
        assert_eq!(created.renew_time, Some(MicroTime(now)));
        assert_eq!(created.lease_transitions, Some(0));

        let theirs = held_by("other", "2026-01-01T00:00:30Z", Some(15));
        let taken = claimed_spec(Some(&theirs), &Decision::Acquire, "me", now);
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_transitions, Some(5));

        let ours = held_by("me", "2026-01-01T00:00:58Z", Some(15));
        let renewed = claimed_spec(Some(&ours), &Decision::Renew, "me", now);
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.acquire_time, ours.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(4));
    }

    #[test]
    fn identity_prefers_the_pod_name() {
        // POD_NAME is unset in unit tests (and not set here: env writes race other tests).
        if std::env::var_os("POD_NAME").is_none() {
            let id = identity();
            assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        }
    }
}
