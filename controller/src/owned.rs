//! Watch caches grouped by the StormService each object belongs to, so a reconcile reads its own
//! RoleSets, Pods and revisions without walking (and cloning) every cached object of every
//! StormService: with kube-runtime's `Store`, each reconcile cost O(all objects), and a wave of
//! reconciles O(n²).

use kube::ResourceExt;
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use storm_shared::keys::{AIBRIX_LABEL_STORM_SERVICE_NAME, LABEL_NAME};

/// A StormService: namespace and name.
type Owner = (String, String);

/// Objects by the StormService they belong to ([`stormservice_of`]). Fed by a watch's events
/// ([`Owned::writer`]); cheap to clone (the clones share one cache).
pub struct Owned<K> {
    inner: Arc<RwLock<Groups<K>>>,
    listed: Arc<AtomicBool>,
}

impl<K> Clone for Owned<K> {
    fn clone(&self) -> Self {
        Owned {
            inner: self.inner.clone(),
            listed: self.listed.clone(),
        }
    }
}

impl<K> Default for Owned<K> {
    fn default() -> Self {
        Owned {
            inner: Arc::default(),
            listed: Arc::default(),
        }
    }
}

struct Groups<K> {
    by_owner: HashMap<Owner, BTreeMap<String, Arc<K>>>,
    /// Each object's owner, by namespace and object name.
    owner_of: HashMap<(String, String), Owner>,
    /// A relist in progress: it replaces everything at `InitDone`, as a `Store` does.
    relist: Option<Vec<Arc<K>>>,
}

impl<K> Default for Groups<K> {
    fn default() -> Self {
        Groups {
            by_owner: HashMap::new(),
            owner_of: HashMap::new(),
            relist: None,
        }
    }
}

/// The StormService an object belongs to: our name label, else AIBrix's `storm-service-name`
/// (objects AIBrix's controllers made are seen, to be adopted).
pub fn stormservice_of<K: ResourceExt>(obj: &K) -> Option<&String> {
    let labels = obj.labels();
    labels
        .get(LABEL_NAME)
        .or_else(|| labels.get(AIBRIX_LABEL_STORM_SERVICE_NAME))
}

fn owner_of<K: ResourceExt>(obj: &K) -> Option<Owner> {
    Some((
        obj.namespace().unwrap_or_default(),
        stormservice_of(obj)?.clone(),
    ))
}

impl<K: ResourceExt> Groups<K> {
    fn remove(&mut self, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        if let Some(owner) = self.owner_of.remove(&key)
            && let Some(group) = self.by_owner.get_mut(&owner)
        {
            group.remove(name);
            if group.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    fn insert(&mut self, obj: Arc<K>) {
        let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
        self.remove(&ns, &name);
        if let Some(owner) = owner_of(obj.as_ref()) {
            self.owner_of.insert((ns, name.clone()), owner.clone());
            self.by_owner.entry(owner).or_default().insert(name, obj);
        }
    }
}

impl<K: ResourceExt + Clone> Owned<K> {
    /// Applies one watch event, as `reflector::store::Writer` does.
    pub fn apply(&self, event: &watcher::Event<K>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Init => g.relist = Some(Vec::new()),
            watcher::Event::InitApply(obj) => {
                g.relist
                    .get_or_insert_with(Vec::new)
                    .push(Arc::new(obj.clone()));
            }
            watcher::Event::InitDone => {
                let objects = g.relist.take().unwrap_or_default();
                g.by_owner.clear();
                g.owner_of.clear();
                for obj in objects {
                    g.insert(obj);
                }
                self.listed.store(true, Ordering::Release);
            }
            watcher::Event::Apply(obj) => g.insert(Arc::new(obj.clone())),
            watcher::Event::Delete(obj) => {
                g.remove(&obj.namespace().unwrap_or_default(), &obj.name_any());
            }
        }
    }

    /// What feeds this cache from a watch stream (`.inspect_ok(cache.writer())`).
    pub fn writer(&self) -> impl FnMut(&watcher::Event<K>) + Send + 'static
    where
        K: Send + Sync + 'static,
    {
        let cache = self.clone();
        move |e| cache.apply(e)
    }

    /// The objects of StormService `ns/name`, by object name.
    pub fn owned_by(&self, ns: &str, name: &str) -> Vec<Arc<K>> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.by_owner
            .get(&(ns.to_string(), name.to_string()))
            .map(|group| group.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Object `ns/name`.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let owner = g.owner_of.get(&(ns.to_string(), name.to_string()))?;
        g.by_owner.get(owner)?.get(name).cloned()
    }

    /// Whether the first list has arrived.
    pub fn listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    /// A cache holding `objects`, listed (for tests).
    pub fn of(objects: impl IntoIterator<Item = K>) -> Self {
        let owned = Owned::default();
        owned.apply(&watcher::Event::Init);
        for obj in objects {
            owned.apply(&watcher::Event::InitApply(obj));
        }
        owned.apply(&watcher::Event::InitDone);
        owned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::core::ObjectMeta;

    fn pod(ns: &str, name: &str, owner: Option<(&str, &str)>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: owner.map(|(k, v)| [(k.to_string(), v.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(v: Vec<Arc<Pod>>) -> Vec<String> {
        v.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn objects_are_found_by_their_stormservice_and_namespace() {
        let c = Owned::of([
            pod("a", "p1", Some((LABEL_NAME, "svc"))),
            pod("a", "p2", Some((AIBRIX_LABEL_STORM_SERVICE_NAME, "svc"))),
            pod("a", "p3", Some((LABEL_NAME, "other"))),
            pod("b", "p4", Some((LABEL_NAME, "svc"))),
            pod("a", "p5", None),
        ]);
        assert!(c.listed());
        assert_eq!(names(c.owned_by("a", "svc")), ["p1", "p2"]);
        assert_eq!(names(c.owned_by("b", "svc")), ["p4"]);
        assert!(c.owned_by("a", "none").is_empty());
        assert!(c.get("a", "p3").is_some());
        assert!(c.get("a", "p5").is_none());
        assert!(c.get("b", "p1").is_none());
    }

    #[test]
    fn changes_deletions_and_relabels_move_objects_between_groups() {
        let c = Owned::of([pod("a", "p1", Some((LABEL_NAME, "svc")))]);
        c.apply(&watcher::Event::Apply(pod(
            "a",
            "p2",
            Some((LABEL_NAME, "svc")),
        )));
        assert_eq!(names(c.owned_by("a", "svc")), ["p1", "p2"]);
        // Relabelled to another StormService: it leaves the first group.
        c.apply(&watcher::Event::Apply(pod(
            "a",
            "p1",
            Some((LABEL_NAME, "x")),
        )));
        assert_eq!(names(c.owned_by("a", "svc")), ["p2"]);
        assert_eq!(names(c.owned_by("a", "x")), ["p1"]);
        c.apply(&watcher::Event::Delete(pod("a", "p2", None)));
        assert!(c.owned_by("a", "svc").is_empty());
        assert!(c.get("a", "p2").is_none());
    }

    #[test]
    fn a_relist_replaces_everything_once_it_is_done() {
        let c = Owned::of([pod("a", "gone", Some((LABEL_NAME, "svc")))]);
        c.apply(&watcher::Event::Init);
        c.apply(&watcher::Event::InitApply(pod(
            "a",
            "new",
            Some((LABEL_NAME, "svc")),
        )));
        // Until the relist is done, the old contents serve.
        assert_eq!(names(c.owned_by("a", "svc")), ["gone"]);
        c.apply(&watcher::Event::InitDone);
        assert_eq!(names(c.owned_by("a", "svc")), ["new"]);
        assert!(c.get("a", "gone").is_none());
    }

    #[test]
    fn nothing_is_listed_before_the_first_list() {
        let c = Owned::<Pod>::default();
        assert!(!c.listed());
        c.apply(&watcher::Event::Init);
        assert!(!c.listed());
    }
}
