//! The manual control annotations: each acts at most once, even across a crash.
//!
//! A control takes effect in the status the controller writes, and that same status lists it in
//! `acknowledgedControls`. Only then is the annotation removed. If the controller dies in between,
//! the next decision finds the annotation still there but acknowledged, and removes it without
//! acting again. Once the annotation is gone, the acknowledgement is dropped.

use super::Machine;
use storm_shared::keys::{
    ANNOTATION_ABORT, ANNOTATION_APPROVAL, ANNOTATION_PAUSE, ANNOTATION_PROMOTE_FULL,
    ANNOTATION_RESUME, ANNOTATION_RETRY, CONTROL_ANNOTATIONS, CONTROL_VALUE,
};
use storm_shared::status::Reason;

/// Controls that arrived and have not acted yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Controls {
    pub abort: bool,
    pub retry: bool,
    pub pause: bool,
    pub resume: bool,
    pub approval: bool,
    pub promote_full: bool,
}

/// Reads the control annotations, updating the acknowledgements and the annotations to remove.
pub(crate) fn take(m: &mut Machine) -> Controls {
    let mut c = Controls::default();
    let annotations = m.input.annotations;
    for key in CONTROL_ANNOTATIONS {
        let present = annotations.get(key).is_some_and(|v| v == CONTROL_VALUE);
        let acknowledged = m.rs.acknowledged_controls.iter().any(|a| a == key);
        match (present, acknowledged) {
            (true, true) => m.remove.push(key.to_string()),
            (true, false) => {
                m.rs.acknowledged_controls.push(key.to_string());
                m.remove.push(key.to_string());
                match key {
                    ANNOTATION_ABORT => c.abort = true,
                    ANNOTATION_RETRY => c.retry = true,
                    ANNOTATION_PAUSE => c.pause = true,
                    ANNOTATION_RESUME => c.resume = true,
                    ANNOTATION_APPROVAL => c.approval = true,
                    ANNOTATION_PROMOTE_FULL => c.promote_full = true,
                    _ => {}
                }
            }
            (false, true) => m.rs.acknowledged_controls.retain(|a| a != key),
            (false, false) => {}
        }
    }
    m.rs.acknowledged_controls.sort();
    c
}

impl Controls {
    /// Drops every control that arrived, with a Warning event saying why.
    pub(crate) fn ignore_all(self, m: &mut Machine, why: &str) {
        for (set, key) in [
            (self.abort, ANNOTATION_ABORT),
            (self.retry, ANNOTATION_RETRY),
            (self.pause, ANNOTATION_PAUSE),
            (self.resume, ANNOTATION_RESUME),
            (self.approval, ANNOTATION_APPROVAL),
            (self.promote_full, ANNOTATION_PROMOTE_FULL),
        ] {
            if set {
                ignore(m, key, why);
            }
        }
    }
}

/// Drops one control with a Warning event.
pub(crate) fn ignore(m: &mut Machine, key: &str, why: &str) {
    m.note(
        true,
        Reason::ControlIgnored,
        format!("{key} ignored: {why}"),
    );
}
