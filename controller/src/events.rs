//! Kubernetes Events, folded into series as kube-runtime's `Recorder` does, with a small cache.
//!
//! An event that repeats (same type, reason, action and object) within six minutes becomes a
//! `series` on the Event first written (count and last time), not a new Event. kube-runtime's
//! `Recorder` does that by keeping every Event object it wrote for six minutes and scanning all of
//! them on each publish: measured with a heap profiler at 100 StormServices during a rollout, it
//! held more memory than any cache of the controller's (3 MB of 20), growing with the fleet. This
//! keeps only what a series needs (the Event's name, its count and when it was last seen), expires
//! entries in time order at O(1) each, and is bounded.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How long a repeat joins the series of the Event first written (as kube-runtime and client-go).
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);
/// The most series remembered; past it the oldest are forgotten (their next repeat starts a new
/// Event, which is all that is lost).
const MAX_SERIES: usize = 20_000;

/// What makes two events the same series (type, reason, action and the object), as a 128-bit
/// digest: a series costs 16 bytes of key, not eight strings. Two digests are computed with
/// different seeds; a collision (two series sharing an Event) needs both to collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key(u128);

impl Key {
    fn of(ev: &Event, regarding: &ObjectReference) -> Self {
        use std::hash::{Hash, Hasher};
        let half = |seed: u8| {
            let mut h = std::hash::DefaultHasher::new();
            seed.hash(&mut h);
            matches!(ev.type_, EventType::Warning).hash(&mut h);
            ev.reason.hash(&mut h);
            ev.action.hash(&mut h);
            regarding.api_version.hash(&mut h);
            regarding.kind.hash(&mut h);
            regarding.namespace.hash(&mut h);
            regarding.name.hash(&mut h);
            regarding.uid.hash(&mut h);
            h.finish()
        };
        Key(u128::from(half(0)) << 64 | u128::from(half(1)))
    }
}

/// A series: the Event written first, how often it happened, when last.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Series {
    event: String,
    count: i32,
    last: Timestamp,
}

/// Series by key, and their keys in the order they were last seen (for expiry).
#[derive(Default)]
struct Cache {
    series: HashMap<Key, Series>,
    seen: VecDeque<(Timestamp, Key)>,
}

impl Cache {
    /// Forgets series not seen within the TTL, and the oldest beyond the bound.
    fn expire(&mut self, now: Timestamp) {
        while let Some((at, key)) = self.seen.front() {
            let stale = self.series.get(key).is_none_or(|s| s.last != *at);
            if !(stale || *at + SERIES_TTL <= now || self.series.len() > MAX_SERIES) {
                break;
            }
            if !stale {
                self.series.remove(key);
            }
            self.seen.pop_front();
        }
    }

    fn get(&mut self, key: &Key, now: Timestamp) -> Option<Series> {
        self.expire(now);
        self.series.get(key).cloned()
    }

    fn put(&mut self, key: Key, series: Series) {
        self.seen.push_back((series.last, key));
        self.series.insert(key, series);
        self.expire(Timestamp::MIN);
    }
}

/// Publishes Events for the controllers.
pub struct Publisher {
    client: kube::Client,
    reporter: Reporter,
    cache: Mutex<Cache>,
}

impl Publisher {
    /// A publisher reporting as `reporter`.
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Publisher {
            client,
            reporter,
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `ev` about `regarding`: a new Event, or one more in the series of the same event
    /// written within six minutes.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key::of(ev, regarding);
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let existing = self.cache().get(&key, now);
        if let Some(series) = existing {
            let count = series.count + 1;
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) }
            });
            match api
                .patch(
                    &series.event,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    let event = series.event;
                    self.cache().put(
                        key,
                        Series {
                            event,
                            count,
                            last: now,
                        },
                    );
                    return Ok(());
                }
                // Deleted meanwhile (Events expire on the server too): start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.event(ev, regarding, now);
        let name = event.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &event).await?;
        self.cache().put(
            key,
            Series {
                event: name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    /// A new `events.k8s.io/v1` Event.
    fn event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            related: ev.secondary.clone(),
            ..K8sEvent::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(type_: EventType, reason: &str, action: &str) -> Event {
        Event {
            type_,
            reason: reason.into(),
            note: None,
            action: action.into(),
            secondary: None,
        }
    }

    fn object(name: &str) -> ObjectReference {
        ObjectReference {
            name: Some(name.into()),
            ..ObjectReference::default()
        }
    }

    fn key(name: &str) -> Key {
        Key::of(&event(EventType::Normal, "R", "A"), &object(name))
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    fn series(event: &str, count: i32, last: Timestamp) -> Series {
        Series {
            event: event.into(),
            count,
            last,
        }
    }

    #[test]
    fn a_series_lasts_six_minutes_from_its_last_event() {
        let mut c = Cache::default();
        c.put(key("a"), series("a.1", 1, at(0)));
        assert_eq!(c.get(&key("a"), at(300)), Some(series("a.1", 1, at(0))));
        c.put(key("a"), series("a.1", 2, at(300)));
        // Six minutes after the first event, but not after the last: still the same series.
        assert_eq!(c.get(&key("a"), at(400)).map(|s| s.count), Some(2));
        assert_eq!(c.get(&key("a"), at(300 + 360)), None, "expired");
        assert!(
            c.series.is_empty() && c.seen.is_empty(),
            "nothing left behind"
        );
    }

    #[test]
    fn other_objects_reasons_and_actions_are_other_series() {
        let mut c = Cache::default();
        c.put(key("a"), series("a.1", 1, at(0)));
        assert_eq!(c.get(&key("b"), at(1)), None);
        let a = object("a");
        for other in [
            Key::of(&event(EventType::Normal, "Other", "A"), &a),
            Key::of(&event(EventType::Normal, "R", "Other"), &a),
            Key::of(&event(EventType::Warning, "R", "A"), &a),
            Key::of(
                &event(EventType::Normal, "R", "A"),
                &ObjectReference {
                    uid: Some("u".into()),
                    ..a.clone()
                },
            ),
            // A field's text moved into the next field is another series too.
            Key::of(&event(EventType::Normal, "RA", ""), &a),
        ] {
            assert_eq!(c.get(&other, at(1)), None, "{other:?}");
        }
        assert!(c.get(&key("a"), at(1)).is_some());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut c = Cache::default();
        for i in 0..MAX_SERIES + 10 {
            c.put(key(&i.to_string()), series("e", 1, at(0)));
        }
        assert!(c.series.len() <= MAX_SERIES + 1, "{}", c.series.len());
        assert!(c.seen.len() <= MAX_SERIES + 1, "{}", c.seen.len());
        assert_eq!(c.get(&key("0"), at(1)), None, "the oldest went first");
        assert!(c.get(&key(&(MAX_SERIES + 9).to_string()), at(1)).is_some());
    }
}
