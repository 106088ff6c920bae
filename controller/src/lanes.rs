//! One reconcile of an object at a time across lanes.
//!
//! The StormService controller runs two lanes: the ordinary one, and an urgent one for aborts and
//! analysis verdicts, so that an abort does not queue behind a wave of ordinary reconciles. Each
//! lane is a kube-runtime `Controller`, which never runs two reconciles of one object at once; the
//! lanes together must not either (two interleaved decisions would flip a Service between
//! revisions). [`Locks`] holds one lock per object while it is reconciled, in whichever lane.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// A lock per key, held only while used: the map keeps no entry for a key nobody holds or waits for.
pub struct Locks<Key> {
    held: Arc<Mutex<HashMap<Key, Arc<AsyncMutex<()>>>>>,
}

impl<Key> Default for Locks<Key> {
    fn default() -> Self {
        Locks {
            held: Arc::default(),
        }
    }
}

/// The lock of one key; released when dropped.
pub struct Guard<Key: Eq + Hash> {
    held: Arc<Mutex<HashMap<Key, Arc<AsyncMutex<()>>>>>,
    key: Key,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<Key: Eq + Hash + Clone> Locks<Key> {
    /// Waits until nobody holds `key`'s lock, then holds it until the guard is dropped.
    pub async fn lock(&self, key: Key) -> Guard<Key> {
        let lock = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        Guard {
            held: self.held.clone(),
            key,
            guard: Some(guard),
        }
    }

    /// How many keys are held or waited for (for tests).
    pub fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no key is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<Key: Eq + Hash> Drop for Guard<Key> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's reference is the last one: nobody else holds or waits for this key. (A waiter
        // holds a clone of the Arc, taken under this same map lock.)
        if held
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            held.remove(&self.key);
        }
    }
}

/// Keys handed to a lane and not yet taken up there; cheap to clone (the clones share one set).
/// A key counts as pending for [`PENDING_FOR`] at most: one the lane never takes up (its object
/// was deleted meanwhile) must not hold anything back for good.
pub struct Pending<Key> {
    keys: Arc<Mutex<HashMap<Key, Instant>>>,
}

/// How long a key handed to a lane counts as pending at most.
pub const PENDING_FOR: Duration = Duration::from_secs(2);

impl<Key> Default for Pending<Key> {
    fn default() -> Self {
        Pending {
            keys: Arc::default(),
        }
    }
}

impl<Key> Clone for Pending<Key> {
    fn clone(&self) -> Self {
        Pending {
            keys: self.keys.clone(),
        }
    }
}

impl<Key: Eq + Hash> Pending<Key> {
    /// Marks `key` as handed over.
    pub fn insert(&self, key: Key) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Instant::now());
    }

    /// Takes `key` up: whether it was pending.
    pub fn remove(&self, key: &Key) -> bool {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .is_some_and(|at| at.elapsed() < PENDING_FOR)
    }

    /// Whether `key` is pending (and not for too long: then it is dropped).
    pub fn contains(&self, key: &Key) -> bool {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        match keys.get(key) {
            Some(at) if at.elapsed() < PENDING_FOR => true,
            Some(_) => {
                keys.remove(key);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pending_keys_are_taken_up_once_and_expire() {
        let p = Pending::<&str>::default();
        assert!(!p.contains(&"a"));
        p.insert("a");
        assert!(p.contains(&"a") && p.clone().contains(&"a"));
        assert!(p.remove(&"a"));
        assert!(!p.remove(&"a") && !p.contains(&"a"));
        p.keys
            .lock()
            .unwrap()
            .insert("old", Instant::now() - PENDING_FOR);
        assert!(
            !p.contains(&"old"),
            "a key pending too long no longer holds back"
        );
        assert!(p.keys.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn one_holder_per_key_and_no_entry_left_behind() {
        let locks = Arc::new(Locks::<&'static str>::default());
        let a = locks.lock("a").await;
        // Another key is not held back.
        let b = tokio::time::timeout(Duration::from_millis(100), locks.lock("b"))
            .await
            .expect("another key's lock is free");
        // The same key waits until the first holder is done.
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _g = locks.lock("a").await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second holder of the same key");
        assert_eq!(locks.len(), 2);
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter gets the lock once it is released")
            .unwrap();
        drop(b);
        assert!(locks.is_empty(), "entries are removed once unused");
    }
}
