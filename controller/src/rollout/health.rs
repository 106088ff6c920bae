//! Health of canary Pods, for automatic rollback.

use super::plan::ObservedPod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Why a Pod counts as failing its health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodProblem {
    /// The Pod's phase is Failed.
    Failed,
    /// A container restarts over and over.
    CrashLooping,
    /// Not Ready for longer than the grace period.
    Unready,
}

impl PodProblem {
    /// A few words for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            PodProblem::Failed => "failed",
            PodProblem::CrashLooping => "crash-looping",
            PodProblem::Unready => "unready past its grace period",
        }
    }
}

/// A container restarted this often is crash-looping, whether or not the kubelet backs off yet.
pub const CRASH_LOOP_RESTARTS: i32 = 3;

/// The problem of one Pod, if any.
pub fn problem(pod: &ObservedPod, grace: SignedDuration, now: Timestamp) -> Option<PodProblem> {
    if pod.failed {
        return Some(PodProblem::Failed);
    }
    if pod.back_off || pod.restarts >= CRASH_LOOP_RESTARTS {
        return Some(PodProblem::CrashLooping);
    }
    if !pod.ready
        && let Some(since) = pod.unready_since
        && now.duration_since(since) > grace
    {
        return Some(PodProblem::Unready);
    }
    None
}

/// Health of a set of Pods: how many there are and which fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Pods looked at.
    pub total: usize,
    /// The failing ones: name and problem.
    pub failing: Vec<(String, PodProblem)>,
}

impl Health {
    /// Share of failing Pods, in percent.
    pub fn failing_percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.failing.len() as f64 * 100.0 / self.total as f64
        }
    }

    /// A sentence naming the first failing Pods.
    pub fn summary(&self) -> String {
        let named: Vec<String> = self
            .failing
            .iter()
            .take(3)
            .map(|(n, p)| format!("{n} {}", p.describe()))
            .collect();
        let more = self.failing.len().saturating_sub(3);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!(
            "{} of {} canary Pods failing: {}{tail}",
            self.failing.len(),
            self.total,
            named.join(", ")
        )
    }
}

/// Health of the Pods of one revision.
pub fn of_revision<'a>(
    pods: impl Iterator<Item = &'a ObservedPod>,
    revision: &str,
    grace: SignedDuration,
    now: Timestamp,
) -> Health {
    let mut h = Health::default();
    for pod in pods.filter(|p| p.revision == revision) {
        h.total += 1;
        if let Some(p) = problem(pod, grace, now) {
            h.failing.push((pod.name.clone(), p));
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ready: bool, since_secs_ago: i64, now: Timestamp) -> ObservedPod {
        ObservedPod {
            name: "p".into(),
            revision: "r".into(),
            ready,
            failed: false,
            restarts: 0,
            back_off: false,
            unready_since: Some(now - SignedDuration::from_secs(since_secs_ago)),
        }
    }

    #[test]
    fn unready_counts_only_after_grace() {
        let now = Timestamp::from_second(1_000_000).expect("ts");
        let grace = SignedDuration::from_secs(60);
        assert_eq!(problem(&pod(false, 30, now), grace, now), None);
        assert_eq!(
            problem(&pod(false, 61, now), grace, now),
            Some(PodProblem::Unready)
        );
        assert_eq!(problem(&pod(true, 600, now), grace, now), None);
        let mut failed = pod(true, 0, now);
        failed.failed = true;
        assert_eq!(problem(&failed, grace, now), Some(PodProblem::Failed));
    }

    #[test]
    fn percent_and_summary() {
        let now = Timestamp::from_second(1_000_000).expect("ts");
        let mut pods = [pod(true, 0, now), pod(false, 600, now)];
        pods[1].name = "bad".into();
        let h = of_revision(pods.iter(), "r", SignedDuration::from_secs(60), now);
        assert_eq!(h.failing_percent(), 50.0);
        assert!(
            h.summary()
                .starts_with("1 of 2 canary Pods failing: bad unready")
        );
    }
}
