//! The arithmetic of a metric's measurements: when the next one is due, what a new one does to the
//! counts, and when a metric (and a run) is decided. Pure: no clock, no I/O; everything it needs is
//! in the status, so a restarted controller resumes where the last one stopped.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::time::Duration;
use storm_shared::types::analysis::Metric;
use storm_shared::types::stormservice::{AnalysisPhase, Measurement, MetricStatus};

/// Measurements kept per metric in the status (the newest).
pub const MAX_MEASUREMENTS: usize = 10;
/// Default `consecutiveErrorLimit`.
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: u32 = 4;
/// Default interval of the error-rate metric.
pub const ERROR_RATE_INTERVAL: Duration = Duration::from_secs(30);
/// Wait before retrying a failed query when the metric has no interval.
pub const ERROR_RETRY: Duration = Duration::from_secs(10);

/// What a metric is measured for: a gate (canary step, pre/post-promotion) measures `count` times;
/// the error-rate metric keeps measuring until the run is stopped, unless it sets `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A canary step or blue-green pre/post-promotion analysis.
    Gate,
    /// `autoRollback.onFailure.errorRate`.
    ErrorRate,
}

/// A metric's limits with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Measurements with a value to take; `None` keeps measuring.
    pub count: Option<u32>,
    /// Time between measurements (zero for a single measurement).
    pub interval: Duration,
    /// Wait before the first measurement.
    pub initial_delay: Duration,
    /// Failed measurements tolerated; `None` tolerates any number (`-1`).
    pub failure_limit: Option<u32>,
    /// Inconclusive measurements tolerated.
    pub inconclusive_limit: u32,
    /// Query errors in a row tolerated.
    pub consecutive_error_limit: u32,
}

/// A metric's limits are unusable. Admission refuses these; a template edited around the webhook
/// still ends the run with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A duration does not parse.
    #[error("{field} {value:?}: {reason}")]
    Duration {
        /// `interval` or `initialDelay`.
        field: &'static str,
        /// The text.
        value: String,
        /// Why.
        reason: String,
    },
    /// `count` above 1 without an interval, or below 1.
    #[error("{0}")]
    Count(String),
    /// A negative limit (other than failureLimit -1).
    #[error("{field} {value} must be at least {min}")]
    Limit {
        /// The field.
        field: &'static str,
        /// Its value.
        value: i32,
        /// The smallest allowed value.
        min: i32,
    },
}

fn duration(field: &'static str, text: Option<&str>) -> Result<Option<Duration>, LimitsError> {
    text.map(|t| {
        storm_shared::units::parse_duration(t).map_err(|e| LimitsError::Duration {
            field,
            value: t.to_string(),
            reason: e.to_string(),
        })
    })
    .transpose()
}

fn non_negative(field: &'static str, value: Option<i32>, default: u32) -> Result<u32, LimitsError> {
    match value {
        None => Ok(default),
        Some(v) => u32::try_from(v).map_err(|_| LimitsError::Limit {
            field,
            value: v,
            min: 0,
        }),
    }
}

impl Limits {
    /// The limits of `metric` for `purpose`, with defaults: count 1 (unbounded for the error rate),
    /// interval required above count 1 (30s for the error rate), initialDelay 0, failureLimit 0,
    /// inconclusiveLimit 0, consecutiveErrorLimit 4.
    pub fn of(metric: &Metric, purpose: Purpose) -> Result<Self, LimitsError> {
        let interval = duration("interval", metric.interval.as_deref())?;
        let count = match metric.count {
            None if purpose == Purpose::ErrorRate => None,
            None => Some(1),
            Some(c) if c < 1 => {
                return Err(LimitsError::Count(format!("count {c} must be at least 1")));
            }
            Some(c) => Some(c.unsigned_abs()),
        };
        let interval = match (interval, purpose, count) {
            (Some(i), _, _) if !i.is_zero() => i,
            (_, Purpose::ErrorRate, _) => ERROR_RATE_INTERVAL,
            (_, Purpose::Gate, Some(c)) if c > 1 => {
                return Err(LimitsError::Count(format!(
                    "count is {c}: set interval, the time between measurements (e.g. 1m)"
                )));
            }
            _ => Duration::ZERO,
        };
        let failure_limit = match metric.failure_limit {
            None => Some(0),
            Some(-1) => None,
            Some(v) => Some(u32::try_from(v).map_err(|_| LimitsError::Limit {
                field: "failureLimit",
                value: v,
                min: -1,
            })?),
        };
        Ok(Self {
            count,
            interval,
            initial_delay: duration("initialDelay", metric.initial_delay.as_deref())?
                .unwrap_or_default(),
            failure_limit,
            inconclusive_limit: non_negative("inconclusiveLimit", metric.inconclusive_limit, 0)?,
            consecutive_error_limit: non_negative(
                "consecutiveErrorLimit",
                metric.consecutive_error_limit,
                DEFAULT_CONSECUTIVE_ERROR_LIMIT,
            )?,
        })
    }
}

impl Limits {
    /// The same limits with `interval` raised to `floor` (a zero interval, for a single
    /// measurement, stays zero): no metric measures more often than the controller allows.
    pub fn floored(mut self, floor: Duration) -> Self {
        if !self.interval.is_zero() && self.interval < floor {
            self.interval = floor;
        }
        self
    }
}

/// `t + d`, saturating at the end of time.
pub fn after(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// How long from `now` until `due`; zero when it is due already.
pub fn until(now: Timestamp, due: Timestamp) -> Duration {
    Duration::try_from(due.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// When the next measurement of `status` is due: `initialDelay` after the run started for the first
/// one, then `interval` after the latest (an error is retried after `interval`, or 10s without one).
pub fn next_due(status: &MetricStatus, limits: &Limits, started_at: Timestamp) -> Timestamp {
    let Some(last) = status.measurements.last() else {
        return after(started_at, limits.initial_delay);
    };
    let finished = last.finished_at.as_ref().map_or(started_at, |t| t.0);
    let wait = if last.phase == AnalysisPhase::Error && limits.interval.is_zero() {
        ERROR_RETRY
    } else {
        limits.interval
    };
    after(finished, wait)
}

/// Measurements that returned a value (all but query errors): these count toward `count`.
pub fn valued(status: &MetricStatus) -> i32 {
    status.successful + status.failed + status.inconclusive
}

/// Adds a measurement to `status`: counts, the error streak, the bounded list, the phase, the message.
pub fn record(status: &mut MetricStatus, measurement: Measurement, limits: &Limits) {
    status.count += 1;
    match measurement.phase {
        AnalysisPhase::Successful => status.successful += 1,
        AnalysisPhase::Failed => status.failed += 1,
        AnalysisPhase::Inconclusive => status.inconclusive += 1,
        AnalysisPhase::Error => status.error += 1,
        AnalysisPhase::Running => {}
    }
    if measurement.phase == AnalysisPhase::Error {
        status.consecutive_error += 1;
    } else {
        status.consecutive_error = 0;
    }
    let latest = describe(&measurement);
    status.measurements.push(measurement);
    let excess = status.measurements.len().saturating_sub(MAX_MEASUREMENTS);
    status.measurements.drain(..excess);
    status.phase = decide(status, limits);
    status.message = Some(message(status, limits, &latest));
}

/// The phase of a metric from its counts: `Error` past consecutiveErrorLimit, `Failed` past
/// failureLimit, `Inconclusive` past inconclusiveLimit, `Successful` once `count` measurements with a
/// value were taken, `Running` until then.
pub fn decide(status: &MetricStatus, limits: &Limits) -> AnalysisPhase {
    let over = |n: i32, limit: u32| i64::from(n) > i64::from(limit);
    if over(status.consecutive_error, limits.consecutive_error_limit) {
        AnalysisPhase::Error
    } else if limits
        .failure_limit
        .is_some_and(|limit| over(status.failed, limit))
    {
        AnalysisPhase::Failed
    } else if over(status.inconclusive, limits.inconclusive_limit) {
        AnalysisPhase::Inconclusive
    } else if limits
        .count
        .is_some_and(|count| i64::from(valued(status)) >= i64::from(count))
    {
        AnalysisPhase::Successful
    } else {
        AnalysisPhase::Running
    }
}

/// The phase of a run from its metrics: `Failed` if any failed, else `Error` if any errored, else
/// `Inconclusive` if any is, else `Successful` when all are (and there is at least one), else
/// `Running`.
pub fn run_phase(metrics: &[MetricStatus]) -> AnalysisPhase {
    let any = |p: AnalysisPhase| metrics.iter().any(|m| m.phase == p);
    if any(AnalysisPhase::Failed) {
        AnalysisPhase::Failed
    } else if any(AnalysisPhase::Error) {
        AnalysisPhase::Error
    } else if any(AnalysisPhase::Inconclusive) {
        AnalysisPhase::Inconclusive
    } else if !metrics.is_empty() && metrics.iter().all(|m| m.phase == AnalysisPhase::Successful) {
        AnalysisPhase::Successful
    } else {
        AnalysisPhase::Running
    }
}

/// A measurement taken at `now`.
pub fn measurement(
    phase: AnalysisPhase,
    value: Option<String>,
    message: Option<String>,
    now: Timestamp,
) -> Measurement {
    Measurement {
        phase,
        value,
        finished_at: Some(Time(now)),
        message,
    }
}

fn describe(m: &Measurement) -> String {
    match (m.phase, &m.value, &m.message) {
        (AnalysisPhase::Error, _, Some(msg)) => format!("query failed: {msg}"),
        (phase, Some(v), Some(msg)) => format!("{} with value {v} ({msg})", phase_word(phase)),
        (phase, Some(v), None) => format!("{} with value {v}", phase_word(phase)),
        (phase, None, Some(msg)) => format!("{} ({msg})", phase_word(phase)),
        (phase, None, None) => phase_word(phase).to_string(),
    }
}

fn phase_word(p: AnalysisPhase) -> &'static str {
    match p {
        AnalysisPhase::Running => "running",
        AnalysisPhase::Successful => "successful",
        AnalysisPhase::Failed => "failed",
        AnalysisPhase::Inconclusive => "inconclusive",
        AnalysisPhase::Error => "error",
    }
}

fn message(status: &MetricStatus, limits: &Limits, latest: &str) -> String {
    let of = limits
        .count
        .map_or_else(String::new, |c| format!(" of {c}"));
    let progress = format!(
        "{} measured{of}: {} successful, {} failed, {} inconclusive, {} errors",
        valued(status),
        status.successful,
        status.failed,
        status.inconclusive,
        status.error
    );
    let verdict = match status.phase {
        AnalysisPhase::Error => format!(
            "{} query errors in a row, more than consecutiveErrorLimit {}",
            status.consecutive_error, limits.consecutive_error_limit
        ),
        AnalysisPhase::Failed => format!(
            "{} failed measurements, more than failureLimit {}",
            status.failed,
            limits.failure_limit.unwrap_or_default()
        ),
        AnalysisPhase::Inconclusive => format!(
            "{} inconclusive measurements, more than inconclusiveLimit {}",
            status.inconclusive, limits.inconclusive_limit
        ),
        AnalysisPhase::Successful | AnalysisPhase::Running => String::new(),
    };
    if verdict.is_empty() {
        format!("latest {latest}; {progress}")
    } else {
        format!("{verdict}; latest {latest}; {progress}")
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
