//! What the runner remembers of a run between reconciles so that a measurement is prepared only
//! when one is due: the names and limits of its metrics as last planned, and what they were planned
//! from. When a run is reconciled and those inputs are unchanged (the same `errorRate` metric, or
//! the same analysis with the same templates in the cache), the next due time follows from the
//! run's recorded measurements ([`limits::next_due`]) without planning again: no argument
//! substitution, no Secret. A measurement due, a new run, changed inputs, statuses that do not
//! match the plan, or no memory of the run (a restarted controller) plan as before.

use super::Source;
use super::cache::Caches;
use super::limits::{self, Limits};
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use storm_shared::types::analysis::{AnalysisTemplate, Metric};
use storm_shared::types::stormservice::{AnalysisPhase, AnalysisRef, AnalysisRunStatus};

/// A schedule not looked at for this long is dropped (runs are reconciled at least every 5 minutes
/// while they measure; a dropped one is only planned again).
const UNUSED_FOR: Duration = Duration::from_secs(3600);

/// What a run was planned from. The plan is a function of these (and the namespace): equal inputs,
/// equal plan.
#[derive(Debug, Clone)]
pub(super) enum Inputs {
    /// The `errorRate` metric and threshold.
    ErrorRate {
        /// The metric as in the StormService (boxed: it is much larger than the other variant).
        metric: Box<Metric>,
        /// `errorThreshold`.
        threshold: f64,
    },
    /// An analysis block and the templates it named, as read from the cache (in its order).
    Templates {
        /// The analysis block.
        analysis: AnalysisRef,
        /// One per `analysis.templates` entry.
        templates: Vec<Arc<AnalysisTemplate>>,
    },
}

impl Inputs {
    /// Whether `source` would be planned from the same inputs now. Templates are compared with the
    /// cache's current objects; without a cache they cannot be, and count as changed.
    fn unchanged(&self, namespace: &str, source: Source<'_>, caches: Option<&Caches>) -> bool {
        match (self, source) {
            (
                Inputs::ErrorRate { metric, threshold },
                Source::ErrorRate {
                    metric: m,
                    threshold: t,
                },
            ) => **metric == *m && threshold.to_bits() == t.to_bits(),
            (
                Inputs::Templates {
                    analysis,
                    templates,
                },
                Source::Templates(a),
            ) => {
                let Some(caches) = caches else {
                    return false;
                };
                analysis == a
                    && templates.len() == a.templates.len()
                    && a.templates.iter().zip(templates).all(|(r, old)| {
                        caches
                            .template(namespace, &r.name)
                            .is_some_and(|now| Arc::ptr_eq(&now, old) || now.spec == old.spec)
                    })
            }
            _ => false,
        }
    }
}

/// A run's metrics as last planned.
#[derive(Debug)]
struct Schedule {
    /// The run's `startedAt`: another start is another run.
    started: Timestamp,
    inputs: Inputs,
    /// Name and limits (None when unusable) of each metric, in plan order.
    metrics: Vec<(String, Option<Limits>)>,
    used: Instant,
}

/// namespace, run name, revision.
type Key = (String, String, String);

fn key(namespace: &str, run: &AnalysisRunStatus) -> Key {
    (
        namespace.to_string(),
        run.name.clone(),
        run.revision.clone(),
    )
}

/// The runs' schedules, shared by concurrent reconciles.
#[derive(Debug, Default)]
pub(super) struct Schedules(Mutex<HashMap<Key, Schedule>>);

impl Schedules {
    /// When nothing of `run` is due at `now` and it is planned from unchanged inputs: when its next
    /// measurement is due. None when it must be planned (something is due, or the schedule does not
    /// fit the run).
    pub(super) fn not_due(
        &self,
        namespace: &str,
        source: Source<'_>,
        caches: Option<&Caches>,
        run: &AnalysisRunStatus,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let started = run.started_at.as_ref()?.0;
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let schedule = all.get_mut(&key(namespace, run))?;
        if schedule.started != started
            || schedule.metrics.len() != run.metrics.len()
            || !schedule
                .metrics
                .iter()
                .zip(&run.metrics)
                .all(|((name, _), status)| *name == status.name)
            || limits::run_phase(&run.metrics) != AnalysisPhase::Running
            || !schedule.inputs.unchanged(namespace, source, caches)
        {
            return None;
        }
        let mut next: Option<Timestamp> = None;
        for ((_, l), status) in schedule.metrics.iter().zip(&run.metrics) {
            if status.phase != AnalysisPhase::Running {
                continue;
            }
            let due = limits::next_due(status, l.as_ref()?, started);
            if due <= now {
                return None;
            }
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        schedule.used = Instant::now();
        next
    }

    /// Remembers how `run` was just planned; forgets it once the run is decided.
    pub(super) fn record(
        &self,
        namespace: &str,
        run: &AnalysisRunStatus,
        inputs: Inputs,
        metrics: Vec<(String, Option<Limits>)>,
    ) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = key(namespace, run);
        let started = run.started_at.as_ref().map(|t| t.0);
        let Some(started) = started.filter(|_| run.phase == AnalysisPhase::Running) else {
            all.remove(&key);
            return;
        };
        all.retain(|_, s| s.used.elapsed() < UNUSED_FOR);
        all.insert(
            key,
            Schedule {
                started,
                inputs,
                metrics,
                used: Instant::now(),
            },
        );
    }

    /// Forgets `run` (it ended, or could not be planned).
    pub(super) fn forget(&self, namespace: &str, run: &AnalysisRunStatus) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key(namespace, run));
    }

    /// How many runs are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}
