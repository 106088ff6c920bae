//! Analysis: AnalysisTemplate metrics measured through providers and judged by CEL conditions.
//!
//! The state machine puts a `Running` [`AnalysisRunStatus`] into the rollout status; on every
//! reconcile it calls [`Runner::advance`], which takes the measurements that are due, updates the run
//! in place and says when the next one is due. Everything needed to resume after a restart is in the
//! run: counts, the latest measurements with their `finishedAt`, and `startedAt`.
//!
//! A measurement is prepared only when one is due: while the run's recorded measurements say the
//! next one is in the future (and what it is planned from is unchanged), `advance` returns the
//! remaining wait without planning (module `schedule`). In the controller, templates come from a watch
//! cache and Datadog Secrets are read only when a Datadog metric is due ([`cache`]).
//!
//! - [`args`]: `{{args.NAME}}` substitution.
//! - [`cache`]: the AnalysisTemplate and Secret-metadata caches the controller gives the runner.
//! - [`condition`]: CEL conditions, and the shape of `result` per provider.
//! - [`limits`]: count, interval, initialDelay and the limits; metric and run phases (pure).
//! - [`provider`]: the [`provider::Provider`] trait; [`prometheus`], [`web`], [`datadog`] implement it.
//! - [`http`]: the HTTP(S) client (rustls on ring).

pub mod args;
pub mod cache;
pub mod condition;
pub mod datadog;
pub mod egress;
pub mod http;
pub mod limits;
pub mod pool;
pub mod prometheus;
pub mod provider;
mod schedule;
pub mod web;

use crate::metrics::Metrics;
pub use cache::Caches;
use cache::SecretSeen;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use limits::{Limits, LimitsError, Purpose};
use provider::{MeasureError, Provider};
use schedule::{Inputs, Schedules};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use storm_shared::types::analysis::{AnalysisTemplate, Metric};
use storm_shared::types::stormservice::{
    AnalysisPhase, AnalysisRef, AnalysisRunStatus, Measurement, MetricStatus,
};
use tracing::{debug, info, warn};

/// Name of the error-rate metric in a run.
pub const ERROR_RATE_METRIC: &str = "errorRate";
/// Wait before trying again when the API server could not be read (a template, a Secret).
pub const API_RETRY: Duration = Duration::from_secs(10);
/// Added to the timeout cap for the look at a run whose measurement is in the pool, should its
/// wake-up be lost.
const POOL_RECHECK: Duration = Duration::from_secs(5);
/// How long the conditions of one measurement may take to evaluate.
pub const CONDITION_BUDGET: Duration = Duration::from_secs(1);
/// Most list elements a `result` may hold.
pub const MAX_RESULT_VALUES: usize = 1000;

/// What a run measures.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// Templates referenced by a canary step or blue-green pre/post-promotion analysis.
    Templates(&'a AnalysisRef),
    /// autoRollback.onFailure.errorRate: the canary's error rate in percent; a measurement fails when
    /// it exceeds `threshold` (percent). It keeps measuring every interval for as long as the run is
    /// Running unless the metric sets `count`.
    ErrorRate {
        /// The metric measuring the error rate in percent.
        metric: &'a Metric,
        /// `errorThreshold` in percent.
        threshold: f64,
    },
}

/// Building the runner failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP client could not be configured.
    #[error(transparent)]
    Client(#[from] http::ClientError),
}

/// Takes measurements for analysis runs. Built once; holds the HTTP client, the caches it reads
/// templates and Secrets' metadata from (without them it reads both from the API server, as the
/// e2e suites do), the runs' schedules and the Datadog keys last read.
pub struct Runner {
    http: http::HttpClient,
    metrics: Option<Arc<Metrics>>,
    caches: Option<Caches>,
    schedules: Schedules,
    /// Secrets (Datadog keys, header values) by (namespace, name), with the resourceVersion they
    /// were read at: used again while the Secret cache shows that version. Never logged.
    secrets: Mutex<HashMap<(String, String), ReadSecret>>,
    /// Timeout cap and interval floor.
    bounds: storm_shared::rules::AnalysisBounds,
    /// Where measurements run when they do not run inside `advance` (the controller's way).
    pool: Option<Arc<pool::Pool>>,
    /// Runs planned (templates looked up, arguments substituted): tests count them.
    plans: AtomicUsize,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

/// A Secret as read, with the resourceVersion it was read at.
type ReadSecret = (String, Arc<Secret>);

/// One metric of a run, ready to measure: arguments substituted, conditions final.
#[derive(Debug, Clone)]
struct Planned {
    name: String,
    metric: Metric,
    purpose: Purpose,
}

/// The run cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PlanError {
    /// It cannot run as configured: the run ends `Error` with this message.
    Fatal(String),
    /// The API server could not be read: try again later.
    Transient(String),
}

impl Runner {
    /// A runner with its HTTP client, which connects only where `egress` allows.
    pub fn new(egress: egress::EgressPolicy) -> Result<Self, Error> {
        Ok(Self {
            http: http::HttpClient::new(egress)?,
            metrics: None,
            caches: None,
            schedules: Schedules::default(),
            secrets: Mutex::default(),
            bounds: storm_shared::rules::AnalysisBounds::default(),
            pool: None,
            plans: AtomicUsize::new(0),
        })
    }

    /// Cuts request timeouts to `bounds.max_timeout` and raises intervals to `bounds.min_interval`.
    pub fn with_bounds(mut self, bounds: storm_shared::rules::AnalysisBounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// Takes measurements in `pool`, outside `advance`: `advance` starts the due ones and records
    /// them once done (the pool wakes the StormService). Without a pool, `advance` measures in place.
    pub fn with_pool(mut self, pool: Arc<pool::Pool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Reads AnalysisTemplates, and whether Datadog Secrets exist, from `caches` instead of the API
    /// server (the Secrets' keys are still read from the API server, when a Datadog metric is due).
    pub fn with_caches(mut self, caches: Caches) -> Self {
        self.caches = Some(caches);
        self
    }

    /// Whether the caches have listed the templates (true without caches).
    pub fn caches_ready(&self) -> bool {
        self.caches.as_ref().is_none_or(Caches::ready)
    }

    /// Counts measurements in `storm_analysis_measurements_total{provider,phase}`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Takes the measurements of `run` that are due at `now`, updates `run` (metrics, counts, phases,
    /// bounded measurements, message), and returns when the next is due (None once the run is decided).
    ///
    /// `namespace` is the StormService's: templates and Datadog Secrets are read there. A template
    /// named in another namespace, a missing template, a missing argument or an unreadable Secret
    /// ends the run `Error` with a message naming it; an API server that cannot be reached leaves
    /// the run `Running` and retries.
    ///
    /// When nothing is due the run is not planned again (module `schedule`): only its message is
    /// set, to the same one planning would give.
    pub async fn advance(
        &self,
        client: &kube::Client,
        namespace: &str,
        source: Source<'_>,
        run: &mut AnalysisRunStatus,
        now: Timestamp,
    ) -> Option<Duration> {
        self.advance_for(client, namespace, "", source, run, now)
            .await
    }

    /// [`Runner::advance`] for the StormService `owner`, which the pool wakes when a measurement
    /// it started is done.
    pub async fn advance_for(
        &self,
        client: &kube::Client,
        namespace: &str,
        owner: &str,
        source: Source<'_>,
        run: &mut AnalysisRunStatus,
        now: Timestamp,
    ) -> Option<Duration> {
        if run.phase != AnalysisPhase::Running {
            return None;
        }
        if let Some(next) =
            self.schedules
                .not_due(namespace, source, self.caches.as_ref(), run, now)
        {
            run.message = Some(running_message(&run.metrics, Some(next)));
            return Some(limits::until(now, next));
        }
        self.plans.fetch_add(1, Ordering::Relaxed);
        let (planned, inputs) = match self.plan(client, namespace, source).await {
            Ok(p) => p,
            Err(PlanError::Fatal(message)) => {
                warn!(%namespace, run = %run.name, %message, "analysis cannot run");
                self.schedules.forget(namespace, run);
                run.phase = AnalysisPhase::Error;
                run.message = Some(message);
                return None;
            }
            Err(PlanError::Transient(message)) => {
                warn!(%namespace, run = %run.name, %message, "analysis waits for the API server");
                run.message = Some(format!("{message}; retrying in {}s", API_RETRY.as_secs()));
                return Some(API_RETRY);
            }
        };
        let started = run.started_at.get_or_insert(Time(now)).0;
        sync_statuses(run, &planned);
        let all_limits: Vec<Result<Limits, LimitsError>> = planned
            .iter()
            .map(|p| Limits::of(&p.metric, p.purpose).map(|l| l.floored(self.bounds.min_interval)))
            .collect();

        // Decide which metrics are due; unusable limits end the metric right away.
        let mut due: Vec<(usize, &Planned, Limits)> = Vec::new();
        for (i, (p, l)) in planned.iter().zip(&all_limits).enumerate() {
            let status = &mut run.metrics[i];
            if status.phase != AnalysisPhase::Running {
                continue;
            }
            match l {
                Err(e) => {
                    status.phase = AnalysisPhase::Error;
                    status.message = Some(format!("metric {} cannot be measured: {e}", p.name));
                }
                Ok(l) => {
                    if limits::next_due(status, l, started) <= now {
                        due.push((i, p, l.clone()));
                    }
                }
            }
        }

        // In the pool, a due metric is started, or still running, or done: only done ones are
        // recorded now, and only metrics not yet started need their Secrets.
        let mut taken: Vec<(usize, pool::Taken)> = Vec::new();
        let mut flying: std::collections::BTreeSet<usize> = std::collections::BTreeSet::new();
        let run_name = run.name.clone();
        let key = |p: &Planned| pool::JobKey {
            namespace: namespace.to_string(),
            owner: owner.to_string(),
            run: run_name.clone(),
            started: started.as_second(),
            metric: p.name.clone(),
        };
        if let Some(pool) = &self.pool {
            due.retain(|(i, p, _)| match pool.poll(&key(p)) {
                pool::Polled::Absent => true,
                pool::Polled::Running => {
                    flying.insert(*i);
                    false
                }
                pool::Polled::Done(t) => {
                    taken.push((*i, t));
                    false
                }
            });
        }
        let credentials = match self.secrets(client, namespace, &due).await {
            Ok(k) => k,
            Err(PlanError::Fatal(message)) => {
                warn!(%namespace, run = %run.name, %message, "analysis cannot run");
                self.schedules.forget(namespace, run);
                run.phase = AnalysisPhase::Error;
                run.message = Some(message);
                return None;
            }
            Err(PlanError::Transient(message)) => {
                run.message = Some(format!("{message}; retrying in {}s", API_RETRY.as_secs()));
                return Some(API_RETRY);
            }
        };

        match &self.pool {
            Some(pool) => {
                for (i, p, _) in &due {
                    let job = key(p);
                    let (http, metric, credentials, bounds) = (
                        self.http.clone(),
                        p.metric.clone(),
                        credentials.clone(),
                        self.bounds,
                    );
                    pool.start(job, async move {
                        measure(&http, &metric, &credentials, bounds, Timestamp::now()).await
                    });
                    flying.insert(*i);
                }
            }
            None => {
                let done = futures::future::join_all(due.iter().map(|(i, p, _)| async {
                    (
                        *i,
                        measure(&self.http, &p.metric, &credentials, self.bounds, now).await,
                    )
                }))
                .await;
                taken.extend(done);
            }
        }
        for (i, t) in taken {
            let p = &planned[i];
            let Ok(l) = &all_limits[i] else { continue };
            let pool::Taken {
                provider,
                measurement: m,
                refused,
            } = t;
            debug!(%namespace, run = %run.name, metric = %p.name, phase = ?m.phase,
                   value = m.value.as_deref().unwrap_or(""), "analysis measurement");
            if let Some(metrics) = &self.metrics {
                metrics.analysis_measurement(provider, m.phase.as_str());
            }
            let message = m.message.clone();
            limits::record(&mut run.metrics[i], m, l);
            // A refused destination is refused every time: no point in trying again.
            if refused {
                warn!(%namespace, run = %run.name, metric = %p.name,
                      message = message.as_deref().unwrap_or(""), "analysis destination refused");
                let status = &mut run.metrics[i];
                status.phase = AnalysisPhase::Error;
                status.message = message;
            }
        }

        run.phase = limits::run_phase(&run.metrics);
        if run.phase != AnalysisPhase::Running {
            let deciding = run.metrics.iter().find(|m| m.phase == run.phase);
            run.message = Some(match deciding {
                Some(m) => format!(
                    "{} {}: {}",
                    m.name,
                    m.phase.as_str().to_lowercase(),
                    m.message.as_deref().unwrap_or("")
                ),
                None => format!("analysis {}", run.phase.as_str().to_lowercase()),
            });
            info!(%namespace, run = %run.name, phase = ?run.phase,
                  message = run.message.as_deref().unwrap_or(""), "analysis decided");
            self.schedules.forget(namespace, run);
            return None;
        }
        let next = all_limits
            .iter()
            .zip(&run.metrics)
            .enumerate()
            .filter(|(i, (_, s))| s.phase == AnalysisPhase::Running && !flying.contains(i))
            .filter_map(|(_, (l, s))| Some(limits::next_due(s, l.as_ref().ok()?, started)))
            .min();
        // A measurement in the pool wakes the StormService when done; look again after the
        // longest it may take anyway.
        let next = if flying.is_empty() {
            next
        } else {
            let fallback = limits::after(now, self.bounds.max_timeout + POOL_RECHECK);
            Some(next.map_or(fallback, |n| n.min(fallback)))
        };
        run.message = Some(running_message(&run.metrics, next));
        let schedule = planned
            .into_iter()
            .zip(all_limits)
            .map(|(p, l)| (p.name, l.ok()))
            .collect();
        self.schedules.record(namespace, run, inputs, schedule);
        next.map(|due| limits::until(now, due))
    }

    /// Reads the Secrets the due metrics use, once per Secret: Datadog keys, and header values
    /// from `valueFrom.secretKeyRef`.
    async fn secrets(
        &self,
        client: &kube::Client,
        namespace: &str,
        due: &[(usize, &Planned, Limits)],
    ) -> Result<Credentials, PlanError> {
        let mut out = Credentials::default();
        for (_, p, _) in due {
            if let Some(d) = &p.metric.provider.datadog {
                let name = &d.secret_ref.name;
                if out.datadog.contains_key(name) {
                    continue;
                }
                let hint = format!(
                    "create it with the keys api-key and app-key (kubectl create secret generic {name} -n {namespace} --from-literal=api-key=... --from-literal=app-key=...)"
                );
                let secret = self.secret(client, namespace, &p.name, name, &hint).await?;
                let k = datadog::Keys::from_secret(&secret)
                    .map_err(|e| PlanError::Fatal(format!("metric {}: {e}", p.name)))?;
                out.datadog.insert(name.clone(), k);
            }
            for h in p.metric.provider.web.iter().flat_map(|w| &w.headers) {
                let Some(from) = &h.value_from else { continue };
                let r = &from.secret_key_ref;
                let id = (r.name.clone(), r.key.clone());
                if out.headers.contains_key(&id) {
                    continue;
                }
                let hint = format!(
                    "create it with the key {:?} (kubectl create secret generic {} -n {namespace} --from-literal={}=...)",
                    r.key, r.name, r.key
                );
                let secret = self
                    .secret(client, namespace, &p.name, &r.name, &hint)
                    .await?;
                let value = header_value(&secret, &r.key).map_err(|why| {
                    PlanError::Fatal(format!(
                        "metric {}: header {:?}: Secret {namespace}/{} {why}",
                        p.name, h.key, r.name
                    ))
                })?;
                out.headers.insert(id, value);
            }
        }
        Ok(out)
    }

    /// Secret `namespace/name`, for metric `metric`. With a Secret cache that has listed, a Secret
    /// it does not know is missing without a read, and a Secret read at the resourceVersion it
    /// shows is used again; otherwise the Secret is read. `hint` says how to create it.
    async fn secret(
        &self,
        client: &kube::Client,
        namespace: &str,
        metric: &str,
        name: &str,
        hint: &str,
    ) -> Result<Arc<Secret>, PlanError> {
        let not_found = || {
            PlanError::Fatal(format!(
                "metric {metric}: Secret {namespace}/{name} not found: {hint}"
            ))
        };
        let id = (namespace.to_string(), name.to_string());
        let seen = self
            .caches
            .as_ref()
            .map_or(SecretSeen::Unknown, |c| c.secret(namespace, name));
        {
            let mut known = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
            match &seen {
                SecretSeen::Unknown => {}
                SecretSeen::Absent => {
                    known.remove(&id);
                    return Err(not_found());
                }
                SecretSeen::Present(version) => {
                    if let Some((v, s)) = known.get(&id)
                        && version.as_ref() == Some(v)
                    {
                        return Ok(s.clone());
                    }
                }
            }
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = match api.get_opt(name).await {
            Ok(Some(s)) => Arc::new(s),
            Ok(None) => return Err(not_found()),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(PlanError::Fatal(format!(
                    "metric {metric}: reading Secret {namespace}/{name} is forbidden: the controller reads analysis Secrets only in namespaces whose admin grants it (kubectl -n {namespace} create rolebinding storm-controller-analysis-secrets --clusterrole=storm-controller-analysis-secrets --serviceaccount=storm-system:storm-controller)"
                )));
            }
            Err(e) => return Err(api_error(&format!("Secret {namespace}/{name}"), &e)),
        };
        if seen != SecretSeen::Unknown
            && let Some(version) = secret.metadata.resource_version.clone()
        {
            self.secrets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, (version, secret.clone()));
        }
        Ok(secret)
    }

    /// The metrics of a run, and what they were planned from: the templates' metrics with their
    /// arguments, or the error-rate metric.
    async fn plan(
        &self,
        client: &kube::Client,
        namespace: &str,
        source: Source<'_>,
    ) -> Result<(Vec<Planned>, Inputs), PlanError> {
        match source {
            Source::ErrorRate { metric, threshold } => Ok((
                vec![Planned {
                    name: ERROR_RATE_METRIC.to_string(),
                    metric: error_rate_metric(metric, threshold).map_err(|e| {
                        PlanError::Fatal(format!("autoRollback.onFailure.errorRate: {e}"))
                    })?,
                    purpose: Purpose::ErrorRate,
                }],
                Inputs::ErrorRate {
                    metric: Box::new(metric.clone()),
                    threshold,
                },
            )),
            Source::Templates(analysis) => {
                if analysis.templates.is_empty() {
                    return Err(PlanError::Fatal(
                        "the analysis lists no templates: name at least one AnalysisTemplate"
                            .into(),
                    ));
                }
                if let Some(refused) = foreign_template(analysis, namespace) {
                    return Err(refused);
                }
                let mut planned: Vec<Planned> = Vec::new();
                let mut templates = Vec::with_capacity(analysis.templates.len());
                for r in &analysis.templates {
                    let Some(template) = self.template(client, namespace, &r.name).await? else {
                        return Err(PlanError::Fatal(format!(
                            "AnalysisTemplate {namespace}/{} not found: create it, or fix the template name in the StormService's analysis",
                            r.name
                        )));
                    };
                    planned.extend(template_metrics(&r.name, &template, analysis)?);
                    templates.push(template);
                }
                // The same template listed twice measures once.
                let mut seen = std::collections::BTreeSet::new();
                planned.retain(|p| seen.insert(p.name.clone()));
                Ok((
                    planned,
                    Inputs::Templates {
                        analysis: analysis.clone(),
                        templates,
                    },
                ))
            }
        }
    }

    /// The AnalysisTemplate `namespace/name`: from the cache, or read from the API server without one.
    async fn template(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<AnalysisTemplate>>, PlanError> {
        if let Some(caches) = &self.caches {
            return Ok(caches.template(namespace, name));
        }
        let api: Api<AnalysisTemplate> = Api::namespaced(client.clone(), namespace);
        api.get_opt(name)
            .await
            .map(|t| t.map(Arc::new))
            .map_err(|e| api_error(&format!("AnalysisTemplate {namespace}/{name}"), &e))
    }

    /// Sends one provider request and returns `result`, unjudged: one query, no status (for tests
    /// and diagnostics).
    pub async fn query(
        &self,
        provider: &dyn Provider,
        now: Timestamp,
    ) -> Result<Json, MeasureError> {
        query(&self.http, provider, self.bounds, now).await
    }
}

/// The Secrets a measurement uses, read before it starts.
#[derive(Debug, Clone, Default)]
struct Credentials {
    /// Datadog keys by Secret name.
    datadog: BTreeMap<String, datadog::Keys>,
    /// Header values by (Secret name, key).
    headers: web::HeaderSecrets,
}

/// The value of `key` in `secret` as a sensitive header value, or why not.
fn header_value(secret: &Secret, key: &str) -> Result<::http::HeaderValue, String> {
    let text = provider::secret_text(secret, key)
        .ok_or_else(|| format!("has no key {key:?}: add it, or fix secretKeyRef.key"))?;
    provider::sensitive_header(&text).ok_or_else(|| {
        format!(
            "key {key:?} is not a valid header value: remove line breaks and control characters"
        )
    })
}

/// Takes one measurement of `metric` at `now` and judges it (the conditions off the async
/// workers, within [`CONDITION_BUDGET`]).
async fn measure(
    http: &http::HttpClient,
    metric: &Metric,
    credentials: &Credentials,
    bounds: storm_shared::rules::AnalysisBounds,
    now: Timestamp,
) -> pool::Taken {
    let (provider, result) = if let Some(spec) = &metric.provider.prometheus {
        let p = prometheus::Prometheus { spec };
        (p.name(), query(http, &p, bounds, now).await)
    } else if let Some(spec) = &metric.provider.web {
        let p = web::Web {
            spec,
            secrets: &credentials.headers,
        };
        (p.name(), query(http, &p, bounds, now).await)
    } else if let Some(spec) = &metric.provider.datadog {
        match credentials.datadog.get(&spec.secret_ref.name) {
            Some(keys) => {
                let p = datadog::Datadog { spec, keys };
                (p.name(), query(http, &p, bounds, now).await)
            }
            None => (
                "datadog",
                Err(MeasureError::Config(format!(
                    "the keys of Secret {} were not read",
                    spec.secret_ref.name
                ))),
            ),
        }
    } else {
        (
            "none",
            Err(MeasureError::Config(
                "the metric names no provider: set prometheus, web or datadog".into(),
            )),
        )
    };
    let refused = matches!(result, Err(MeasureError::Refused { .. }));
    let owned = metric.clone();
    let judging = tokio::task::spawn_blocking(move || judged(&owned, result, now));
    let measurement = match tokio::time::timeout(CONDITION_BUDGET, judging).await {
        Ok(Ok(m)) => m,
        Ok(Err(_)) => limits::measurement(
            AnalysisPhase::Error,
            None,
            Some("evaluating the conditions failed".into()),
            now,
        ),
        Err(_) => limits::measurement(
            AnalysisPhase::Error,
            None,
            Some(format!(
                "the conditions took longer than {}s to evaluate: simplify them, or select fewer values with jsonPath",
                CONDITION_BUDGET.as_secs()
            )),
            now,
        ),
    };
    pool::Taken {
        provider,
        measurement,
        refused,
    }
}

/// One provider request, its timeout cut to the bound, and its `result` (size-checked).
async fn query(
    http: &http::HttpClient,
    provider: &dyn Provider,
    bounds: storm_shared::rules::AnalysisBounds,
    now: Timestamp,
) -> Result<Json, MeasureError> {
    let mut request = provider.request(now)?;
    request.timeout = request.timeout.min(bounds.max_timeout);
    let (status, body) = http.send(request).await?;
    let value = provider.parse(status, &body)?;
    let values = count_values(&value);
    if values > MAX_RESULT_VALUES {
        return Err(MeasureError::Response {
            provider: provider.name(),
            reason: format!(
                "the result holds {values} values, more than {MAX_RESULT_VALUES}: select the value the conditions need (jsonPath, or an aggregating query)"
            ),
        });
    }
    Ok(value)
}

/// How many values (list elements and object fields, at any depth) a result holds.
fn count_values(value: &Json) -> usize {
    match value {
        Json::Array(items) => items.len() + items.iter().map(count_values).sum::<usize>(),
        Json::Object(map) => map.len() + map.values().map(count_values).sum::<usize>(),
        _ => 0,
    }
}

/// The measurement for a provider's answer: judged by the conditions, or an error.
fn judged(metric: &Metric, result: Result<Json, MeasureError>, now: Timestamp) -> Measurement {
    match result {
        Err(e) => limits::measurement(AnalysisPhase::Error, None, Some(e.to_string()), now),
        Ok(value) => {
            let shown = (!condition::is_empty(&value)).then(|| condition::shown(&value));
            match condition::judge(metric, &value) {
                Ok(AnalysisPhase::Inconclusive) if shown.is_none() => limits::measurement(
                    AnalysisPhase::Inconclusive,
                    None,
                    Some("no value (empty result)".into()),
                    now,
                ),
                Ok(phase) => limits::measurement(phase, shown, None, now),
                Err(e) => {
                    limits::measurement(AnalysisPhase::Error, shown, Some(e.to_string()), now)
                }
            }
        }
    }
}

/// The message of a run still measuring. It names the time the next measurement is due, never a
/// countdown: the message flows into the rollout status and its conditions, and must stay the same
/// on every reconcile until something happens, or each one would write the status again.
fn running_message(metrics: &[MetricStatus], next: Option<Timestamp>) -> String {
    let decided = metrics
        .iter()
        .filter(|m| m.phase != AnalysisPhase::Running)
        .count();
    let progress = format!("measuring: {decided} of {} metrics decided", metrics.len());
    match next {
        Some(due) => format!(
            "{progress}; next measurement at {}",
            due.strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        None => progress,
    }
}

/// A template named in another namespace than the StormService's ends the run: the controller's
/// cluster-wide rights must not let a StormService use another namespace's templates (and the
/// Secrets they name). Admission refuses it too; this catches objects stored before that rule.
fn foreign_template(analysis: &AnalysisRef, namespace: &str) -> Option<PlanError> {
    let (i, r) = analysis
        .templates
        .iter()
        .enumerate()
        .find(|(_, r)| storm_shared::rules::names_foreign_namespace(r, Some(namespace)))?;
    Some(PlanError::Fatal(format!(
        "analysis templates[{i}].namespace is \"{}\" but the StormService is in \"{namespace}\": {}",
        r.namespace.as_deref().unwrap_or_default(),
        storm_shared::rules::FOREIGN_TEMPLATE
    )))
}

/// The metrics of one template with the arguments substituted, named `<template>/<metric>`.
fn template_metrics(
    name: &str,
    template: &AnalysisTemplate,
    analysis: &AnalysisRef,
) -> Result<Vec<Planned>, PlanError> {
    if template.spec.metrics.is_empty() {
        return Err(PlanError::Fatal(format!(
            "AnalysisTemplate {name} has no metrics: add at least one"
        )));
    }
    let values = args::resolve(&template.spec.args, &analysis.args)
        .map_err(|e| PlanError::Fatal(format!("AnalysisTemplate {name}: {e}")))?;
    template
        .spec
        .metrics
        .iter()
        .map(|m| {
            let metric = args::apply(m, &values).map_err(|e| {
                PlanError::Fatal(format!("AnalysisTemplate {name} metric {}: {e}", m.name))
            })?;
            Ok(Planned {
                name: format!("{name}/{}", m.name),
                metric,
                purpose: Purpose::Gate,
            })
        })
        .collect()
}

/// The error-rate metric as measured: its failure condition also fails above `threshold` percent.
pub fn error_rate_metric(metric: &Metric, threshold: f64) -> Result<Metric, args::ArgError> {
    let mut m = args::apply(metric, &BTreeMap::new())?;
    let over = format!("result > {threshold:?}");
    m.failure_condition = Some(match &metric.failure_condition {
        Some(own) if !own.trim().is_empty() => format!("({over}) || ({own})"),
        _ => over,
    });
    Ok(m)
}

/// Keeps one status per planned metric, in plan order: existing ones (with their counts) by name,
/// new ones `Running`. Statuses of metrics no longer planned (a template edited mid-run) are dropped.
fn sync_statuses(run: &mut AnalysisRunStatus, planned: &[Planned]) {
    let mut old: BTreeMap<String, MetricStatus> = std::mem::take(&mut run.metrics)
        .into_iter()
        .map(|m| (m.name.clone(), m))
        .collect();
    run.metrics = planned
        .iter()
        .map(|p| {
            old.remove(&p.name).unwrap_or_else(|| MetricStatus {
                name: p.name.clone(),
                phase: AnalysisPhase::Running,
                ..MetricStatus::default()
            })
        })
        .collect();
}

/// A failed API read: not found is handled by the caller; forbidden and other client errors end
/// the run, the rest (server errors, connection problems) are retried.
fn api_error(what: &str, e: &kube::Error) -> PlanError {
    match e {
        kube::Error::Api(s) if s.code == 403 => PlanError::Fatal(format!(
            "reading {what} is forbidden: the storm-controller ClusterRole must allow get on it ({})",
            s.message
        )),
        kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429 => {
            PlanError::Fatal(format!("reading {what} failed: {}", s.message))
        }
        other => PlanError::Transient(format!("reading {what} failed: {other}")),
    }
}

#[cfg(test)]
mod tests;
