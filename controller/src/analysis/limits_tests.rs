use super::*;
use AnalysisPhase::{Error, Failed, Inconclusive, Running, Successful};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn metric() -> Metric {
    Metric {
        name: "m".into(),
        success_condition: Some("result < 1".into()),
        ..Metric::default()
    }
}

fn limits(m: Metric) -> Limits {
    Limits::of(&m, Purpose::Gate).unwrap()
}

/// Records measurements of the given phases, one second apart, and returns the metric's phases
/// after each.
fn play(limits: &Limits, phases: &[AnalysisPhase]) -> (MetricStatus, Vec<AnalysisPhase>) {
    let mut status = MetricStatus {
        name: "m".into(),
        ..MetricStatus::default()
    };
    let mut seen = Vec::new();
    for (i, p) in phases.iter().enumerate() {
        let value = (*p != Error).then(|| "0.5".to_string());
        let msg = (*p == Error).then(|| "connection refused".to_string());
        record(
            &mut status,
            measurement(*p, value, msg, t(i as i64)),
            limits,
        );
        seen.push(status.phase);
    }
    (status, seen)
}

#[test]
fn defaults_for_a_gate_and_for_the_error_rate() {
    assert_eq!(
        limits(metric()),
        Limits {
            count: Some(1),
            interval: Duration::ZERO,
            initial_delay: Duration::ZERO,
            failure_limit: Some(0),
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
        }
    );
    let rate = Limits::of(&metric(), Purpose::ErrorRate).unwrap();
    assert_eq!(rate.count, None);
    assert_eq!(rate.interval, ERROR_RATE_INTERVAL);
    let counted = Limits::of(
        &Metric {
            count: Some(3),
            interval: Some("1m".into()),
            ..metric()
        },
        Purpose::ErrorRate,
    )
    .unwrap();
    assert_eq!(counted.count, Some(3));
    assert_eq!(counted.interval, Duration::from_secs(60));
}

#[test]
fn unusable_limits_are_errors() {
    let no_interval = Metric {
        count: Some(3),
        ..metric()
    };
    assert!(
        Limits::of(&no_interval, Purpose::Gate)
            .unwrap_err()
            .to_string()
            .contains("set interval")
    );
    let bad = Metric {
        initial_delay: Some("soon".into()),
        ..metric()
    };
    assert!(matches!(
        Limits::of(&bad, Purpose::Gate),
        Err(LimitsError::Duration {
            field: "initialDelay",
            ..
        })
    ));
    let negative = Metric {
        failure_limit: Some(-2),
        ..metric()
    };
    assert!(Limits::of(&negative, Purpose::Gate).is_err());
    assert_eq!(
        Limits::of(
            &Metric {
                failure_limit: Some(-1),
                ..metric()
            },
            Purpose::Gate
        )
        .unwrap()
        .failure_limit,
        None
    );
}

#[test]
fn count_successes_decide_success() {
    let l = limits(Metric {
        count: Some(3),
        interval: Some("10s".into()),
        ..metric()
    });
    let (status, seen) = play(&l, &[Successful, Successful, Successful]);
    assert_eq!(seen, vec![Running, Running, Successful]);
    assert_eq!((status.count, status.successful, status.failed), (3, 3, 0));
    assert!(
        status
            .message
            .as_deref()
            .unwrap()
            .contains("3 measured of 3"),
        "{:?}",
        status.message
    );
}

#[test]
fn one_failure_fails_by_default_and_failure_limit_tolerates() {
    let strict = limits(Metric {
        count: Some(3),
        interval: Some("10s".into()),
        ..metric()
    });
    assert_eq!(
        play(&strict, &[Successful, Failed]).1,
        vec![Running, Failed]
    );
    let tolerant = limits(Metric {
        count: Some(3),
        interval: Some("10s".into()),
        failure_limit: Some(1),
        ..metric()
    });
    assert_eq!(
        play(&tolerant, &[Failed, Successful, Successful]).1,
        vec![Running, Running, Successful]
    );
    assert_eq!(play(&tolerant, &[Failed, Failed]).1, vec![Running, Failed]);
    let (status, _) = play(&strict, &[Failed]);
    assert!(
        status
            .message
            .as_deref()
            .unwrap()
            .starts_with("1 failed measurements, more than failureLimit 0"),
        "{:?}",
        status.message
    );
}

#[test]
fn failure_limit_minus_one_never_fails() {
    let l = limits(Metric {
        count: Some(3),
        interval: Some("10s".into()),
        failure_limit: Some(-1),
        ..metric()
    });
    assert_eq!(
        play(&l, &[Failed, Failed, Failed]).1,
        vec![Running, Running, Successful]
    );
}

#[test]
fn errors_only_end_in_error_and_never_count_toward_success() {
    let l = limits(metric());
    let (status, seen) = play(&l, &[Error, Error, Error, Error, Error]);
    assert_eq!(seen, vec![Running, Running, Running, Running, Error]);
    assert_eq!(
        (status.count, status.error, status.consecutive_error),
        (5, 5, 5)
    );
    assert_eq!(valued(&status), 0);
    let l = limits(Metric {
        consecutive_error_limit: Some(0),
        ..metric()
    });
    assert_eq!(play(&l, &[Error]).1, vec![Error]);
}

#[test]
fn a_value_resets_the_error_streak() {
    let l = limits(Metric {
        count: Some(2),
        interval: Some("10s".into()),
        ..metric()
    });
    let (status, seen) = play(
        &l,
        &[
            Error, Error, Error, Error, Successful, Error, Error, Error, Error, Successful,
        ],
    );
    assert!(seen[..9].iter().all(|p| *p == Running), "{seen:?}");
    assert_eq!(seen[9], Successful);
    assert_eq!(status.consecutive_error, 0);
    assert_eq!((status.count, status.error), (10, 8));
}

#[test]
fn inconclusive_only() {
    let l = limits(metric());
    assert_eq!(play(&l, &[Inconclusive]).1, vec![Inconclusive]);
    let tolerant = limits(Metric {
        count: Some(2),
        interval: Some("10s".into()),
        inconclusive_limit: Some(1),
        ..metric()
    });
    assert_eq!(
        play(&tolerant, &[Inconclusive, Successful]).1,
        vec![Running, Successful]
    );
    assert_eq!(
        play(&tolerant, &[Inconclusive, Inconclusive]).1,
        vec![Running, Inconclusive]
    );
}

#[test]
fn unbounded_error_rate_keeps_running_until_a_failure() {
    let l = Limits::of(&metric(), Purpose::ErrorRate).unwrap();
    let mut phases = vec![Successful; 25];
    phases.push(Failed);
    let (status, seen) = play(&l, &phases);
    assert!(seen[..25].iter().all(|p| *p == Running));
    assert_eq!(seen[25], Failed);
    assert_eq!(status.measurements.len(), MAX_MEASUREMENTS);
    assert_eq!(status.count, 26);
    assert_eq!(
        status.measurements.last().unwrap().finished_at,
        Some(Time(t(25)))
    );
}

#[test]
fn due_times_follow_initial_delay_and_interval() {
    let l = limits(Metric {
        count: Some(3),
        interval: Some("1m".into()),
        initial_delay: Some("30s".into()),
        ..metric()
    });
    let mut status = MetricStatus::default();
    assert_eq!(next_due(&status, &l, t(0)), t(30));
    record(
        &mut status,
        measurement(Successful, Some("0".into()), None, t(31)),
        &l,
    );
    assert_eq!(next_due(&status, &l, t(0)), t(91));
    assert_eq!(
        until(t(61), next_due(&status, &l, t(0))),
        Duration::from_secs(30)
    );
    assert_eq!(until(t(100), next_due(&status, &l, t(0))), Duration::ZERO);
    // An error is retried after the interval when there is one ...
    record(
        &mut status,
        measurement(Error, None, Some("timeout".into()), t(91)),
        &l,
    );
    assert_eq!(next_due(&status, &l, t(0)), t(151));
    // ... and after ERROR_RETRY when a single measurement has none.
    let single = limits(metric());
    let mut status = MetricStatus::default();
    assert_eq!(next_due(&status, &single, t(5)), t(5));
    record(
        &mut status,
        measurement(Error, None, Some("refused".into()), t(7)),
        &single,
    );
    assert_eq!(next_due(&status, &single, t(5)), t(17));
}

#[test]
fn a_restart_resumes_from_the_serialized_status() {
    let l = limits(Metric {
        count: Some(3),
        interval: Some("1m".into()),
        ..metric()
    });
    let mut status = MetricStatus {
        name: "tmpl/m".into(),
        ..MetricStatus::default()
    };
    record(
        &mut status,
        measurement(Successful, Some("0.1".into()), None, t(0)),
        &l,
    );
    record(
        &mut status,
        measurement(Error, None, Some("refused".into()), t(60)),
        &l,
    );
    // The controller restarts: all it has is what server-side apply stored.
    let stored = serde_json::to_string(&status).unwrap();
    let mut resumed: MetricStatus = serde_json::from_str(&stored).unwrap();
    assert_eq!(resumed, status);
    assert_eq!(next_due(&resumed, &l, t(0)), t(120));
    assert_eq!(resumed.consecutive_error, 1);
    record(
        &mut resumed,
        measurement(Successful, Some("0.1".into()), None, t(120)),
        &l,
    );
    assert_eq!(resumed.phase, Running);
    record(
        &mut resumed,
        measurement(Successful, Some("0.1".into()), None, t(180)),
        &l,
    );
    assert_eq!(resumed.phase, Successful);
    assert_eq!(
        (resumed.count, resumed.successful, resumed.error),
        (4, 3, 1)
    );
}

#[test]
fn run_phase_combines_metrics() {
    let m = |phase| MetricStatus {
        phase,
        ..MetricStatus::default()
    };
    assert_eq!(run_phase(&[]), Running);
    assert_eq!(run_phase(&[m(Successful), m(Running)]), Running);
    assert_eq!(run_phase(&[m(Successful), m(Successful)]), Successful);
    assert_eq!(
        run_phase(&[m(Successful), m(Inconclusive), m(Running)]),
        Inconclusive
    );
    assert_eq!(run_phase(&[m(Error), m(Inconclusive)]), Error);
    assert_eq!(run_phase(&[m(Error), m(Failed)]), Failed);
}
