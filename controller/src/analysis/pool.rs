//! Measurements taken outside the reconcile, with a global and a per-namespace concurrency limit.
//!
//! A reconcile never waits for a provider: [`super::Runner::advance`] starts the measurements that
//! are due as jobs here and returns; a job waits for a slot of its namespace, then for a global
//! slot, measures, keeps its result and wakes the StormService, whose next reconcile records it.
//! So a tenant whose metrics answer slowly (or never, until the timeout) fills only its own
//! namespace's slots; other namespaces' measurements, and every abort, rollback and step of every
//! rollout, go on.

use super::limits;
use super::provider::MeasureError;
use futures::channel::mpsc::UnboundedSender;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use storm_shared::types::stormservice::{AnalysisPhase, Measurement};
use tokio::sync::Semaphore;

/// A finished job not collected for this long is dropped (its run was decided or aborted).
const UNCOLLECTED_FOR: Duration = Duration::from_secs(600);

/// How many measurements may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// In the whole controller.
    pub global: usize,
    /// In one namespace.
    pub per_namespace: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            global: 32,
            per_namespace: 4,
        }
    }
}

/// One measurement of one metric of one run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobKey {
    /// The StormService's namespace.
    pub namespace: String,
    /// The StormService's name (woken when the job is done).
    pub owner: String,
    /// The run's name.
    pub run: String,
    /// The run's start, in seconds: a new run of the same name is another job.
    pub started: i64,
    /// The metric's name.
    pub metric: String,
}

/// What a measurement gave.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The provider's name, for the measurement counter.
    pub provider: &'static str,
    /// The measurement, judged.
    pub measurement: Measurement,
    /// The egress policy (or a header rule) refused the request: the metric ends at once.
    pub refused: bool,
}

impl Taken {
    /// A measurement that could not be taken.
    pub fn error(provider: &'static str, e: &MeasureError) -> Self {
        Self {
            provider,
            measurement: limits::measurement(
                AnalysisPhase::Error,
                None,
                Some(e.to_string()),
                k8s_openapi::jiff::Timestamp::now(),
            ),
            refused: matches!(e, MeasureError::Refused { .. }),
        }
    }
}

/// Where a job is.
#[derive(Debug)]
pub enum Polled {
    /// Not started.
    Absent,
    /// Waiting for a slot or measuring.
    Running,
    /// Finished: its result, handed over once.
    Done(Taken),
}

enum Job {
    Running,
    Done { taken: Taken, at: Instant },
}

/// The measurement jobs of the controller.
pub struct Pool {
    settings: PoolSettings,
    global: Arc<Semaphore>,
    namespaces: Mutex<HashMap<String, Arc<Semaphore>>>,
    jobs: Mutex<HashMap<JobKey, Job>>,
    wake: Option<UnboundedSender<(String, String)>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool; `wake` receives (namespace, name) of a StormService whose job finished.
    pub fn new(settings: PoolSettings, wake: Option<UnboundedSender<(String, String)>>) -> Self {
        let settings = PoolSettings {
            global: settings.global.max(1),
            per_namespace: settings.per_namespace.max(1),
        };
        Self {
            settings,
            global: Arc::new(Semaphore::new(settings.global)),
            namespaces: Mutex::default(),
            jobs: Mutex::default(),
            wake,
        }
    }

    /// Where the job `key` is; a finished job's result is handed over (and forgotten).
    pub fn poll(&self, key: &JobKey) -> Polled {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        match jobs.get(key) {
            None => Polled::Absent,
            Some(Job::Running) => Polled::Running,
            Some(Job::Done { .. }) => match jobs.remove(key) {
                Some(Job::Done { taken, .. }) => Polled::Done(taken),
                _ => Polled::Absent,
            },
        }
    }

    /// Starts job `key`: `work` runs once a slot of its namespace and a global slot are free.
    pub fn start<F>(self: &Arc<Self>, key: JobKey, work: F)
    where
        F: Future<Output = Taken> + Send + 'static,
    {
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            // Results nobody came for: their runs ended.
            jobs.retain(|_, j| match j {
                Job::Running => true,
                Job::Done { at, .. } => at.elapsed() < UNCOLLECTED_FOR,
            });
            jobs.insert(key.clone(), Job::Running);
        }
        let namespace = self.namespace(&key.namespace);
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let taken = {
                // Namespace first: a namespace's queue never holds a global slot while it waits.
                let Ok(_own) = namespace.acquire_owned().await else {
                    return;
                };
                let Ok(_any) = pool.global.clone().acquire_owned().await else {
                    return;
                };
                work.await
            };
            pool.jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    key.clone(),
                    Job::Done {
                        taken,
                        at: Instant::now(),
                    },
                );
            if let Some(wake) = &pool.wake {
                let _ = wake.unbounded_send((key.namespace, key.owner));
            }
        });
    }

    /// The semaphore of `namespace`.
    fn namespace(&self, namespace: &str) -> Arc<Semaphore> {
        let mut all = self
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Namespaces with nothing running hold no memory.
        let per = self.settings.per_namespace;
        all.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < per);
        all.entry(namespace.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(per)))
            .clone()
    }

    /// Jobs started and not yet collected (running or done).
    pub fn jobs(&self) -> usize {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(namespace: &str, metric: &str) -> JobKey {
        JobKey {
            namespace: namespace.into(),
            owner: "svc".into(),
            run: "step-1".into(),
            started: 0,
            metric: metric.into(),
        }
    }

    fn taken() -> Taken {
        Taken::error("web", &MeasureError::Config("x".into()))
    }

    /// A tenant whose jobs never finish holds its own namespace's slots only: another namespace's
    /// job runs at once, and the StormService is woken when it is done.
    #[tokio::test]
    async fn a_namespace_that_hangs_fills_only_its_own_slots() {
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        let pool = Arc::new(Pool::new(
            PoolSettings {
                global: 3,
                per_namespace: 2,
            },
            Some(tx),
        ));
        let started = Arc::new(AtomicUsize::new(0));
        for i in 0..10 {
            let started = started.clone();
            pool.start(key("tarpit", &format!("m{i}")), async move {
                started.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                taken()
            });
        }
        pool.start(key("other", "m"), async { taken() });
        let woken = futures::StreamExt::next(&mut rx).await;
        assert_eq!(woken, Some(("other".to_string(), "svc".to_string())));
        assert!(matches!(pool.poll(&key("other", "m")), Polled::Done(_)));
        // Handed over once.
        assert!(matches!(pool.poll(&key("other", "m")), Polled::Absent));
        assert_eq!(
            started.load(Ordering::SeqCst),
            2,
            "only the tarpit's own two slots"
        );
        assert!(matches!(pool.poll(&key("tarpit", "m0")), Polled::Running));
        assert_eq!(pool.jobs(), 10);
    }

    #[tokio::test]
    async fn the_global_limit_holds_across_namespaces() {
        let pool = Arc::new(Pool::new(
            PoolSettings {
                global: 2,
                per_namespace: 2,
            },
            None,
        ));
        let running = Arc::new(AtomicUsize::new(0));
        for ns in ["a", "b", "c"] {
            let running = running.clone();
            pool.start(key(ns, "m"), async move {
                running.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                taken()
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(running.load(Ordering::SeqCst), 2);
    }
}
