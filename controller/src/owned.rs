//! Watch caches grouped by owner, so a reconcile reads its own objects without walking (and
//! cloning) every cached object of every owner: with kube-runtime's `Store`, each reconcile cost
//! O(all objects), and a wave of reconciles O(n²). The StormService controller groups RoleSets,
//! Pods and revisions by the StormService they belong to ([`stormservice_of`]); the RoleSet and
//! PodSet controllers group Pods and PodSets by their controller ([`Owned::by_controller`]).

use kube::ResourceExt;
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use storm_shared::keys::{AIBRIX_LABEL_STORM_SERVICE_NAME, LABEL_NAME};

/// `namespace/name` as one shared string: an owner (the group key is a StormService's name or a
/// controller's UID), or an object. Neither part can contain `/`. Each object's key is held once,
/// by its group and by the index of owners; each owner's once, by its group and its members.
type Path = Arc<str>;

fn path(ns: &str, name: &str) -> String {
    let mut p = String::with_capacity(ns.len() + 1 + name.len());
    p.push_str(ns);
    p.push('/');
    p.push_str(name);
    p
}

/// What an object is grouped by, `None` for an object of no group (not cached).
type Key<K> = fn(&K) -> Option<String>;

/// Objects grouped by owner: by default the StormService they belong to ([`stormservice_of`]).
/// Fed by a watch's events ([`Owned::writer`]); cheap to clone (the clones share one cache).
pub struct Owned<K> {
    inner: Arc<RwLock<Groups<K>>>,
    listed: Arc<AtomicBool>,
    key: Key<K>,
}

impl<K> Clone for Owned<K> {
    fn clone(&self) -> Self {
        Owned {
            inner: self.inner.clone(),
            listed: self.listed.clone(),
            key: self.key,
        }
    }
}

impl<K: ResourceExt> Default for Owned<K> {
    /// Grouped by StormService.
    fn default() -> Self {
        Owned::grouped_by(|obj| stormservice_of(obj).cloned())
    }
}

impl<K: kube::Resource> Owned<K> {
    /// Grouped by the UID of the object's controller (its owner reference with `controller:
    /// true`): look a group up with the owner's namespace and UID.
    pub fn by_controller() -> Self {
        Owned::grouped_by(controller_uid)
    }
}

impl<K> Owned<K> {
    fn grouped_by(key: Key<K>) -> Self {
        Owned {
            inner: Arc::default(),
            listed: Arc::default(),
            key,
        }
    }
}

/// The UID of the object's controller.
fn controller_uid<K: kube::Resource>(obj: &K) -> Option<String> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

struct Groups<K> {
    /// Each owner's objects, by object path (one namespace per group: in name order).
    by_owner: HashMap<Path, BTreeMap<Path, Arc<K>>>,
    /// Each object's owner, by object path.
    owner_of: HashMap<Path, Path>,
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

impl<K: ResourceExt> Groups<K> {
    fn remove(&mut self, ns: &str, name: &str) {
        let object = path(ns, name);
        if let Some(owner) = self.owner_of.remove(object.as_str())
            && let Some(group) = self.by_owner.get_mut(&owner)
        {
            group.remove(object.as_str());
            if group.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    fn insert(&mut self, obj: Arc<K>, key: Key<K>) {
        let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
        self.remove(&ns, &name);
        if let Some(group) = key(obj.as_ref()) {
            let owner = path(&ns, &group);
            let owner: Path = match self.by_owner.get_key_value(owner.as_str()) {
                Some((held, _)) => held.clone(),
                None => owner.into(),
            };
            let object: Path = path(&ns, &name).into();
            self.owner_of.insert(object.clone(), owner.clone());
            self.by_owner.entry(owner).or_default().insert(object, obj);
        }
    }
}

impl<K: ResourceExt> Owned<K> {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Groups<K>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces one object (a [`crate::feeds::Feed`] shares its copy).
    pub fn insert(&self, obj: Arc<K>) {
        self.write().insert(obj, self.key);
    }

    /// Removes object `ns/name`.
    pub fn remove(&self, ns: &str, name: &str) {
        self.write().remove(ns, name);
    }

    /// Replaces everything with `objects` (a relist) and marks the cache listed.
    pub fn replace(&self, objects: impl IntoIterator<Item = Arc<K>>) {
        let mut g = self.write();
        g.relist = None;
        g.by_owner.clear();
        g.owner_of.clear();
        for obj in objects {
            g.insert(obj, self.key);
        }
        self.listed.store(true, Ordering::Release);
    }
}

impl<K: ResourceExt + Clone> Owned<K> {
    /// Applies one watch event, as `reflector::store::Writer` does.
    pub fn apply(&self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.write().relist = Some(Vec::new()),
            watcher::Event::InitApply(obj) => {
                self.write()
                    .relist
                    .get_or_insert_with(Vec::new)
                    .push(Arc::new(obj.clone()));
            }
            watcher::Event::InitDone => {
                let objects = self.write().relist.take().unwrap_or_default();
                self.replace(objects);
            }
            watcher::Event::Apply(obj) => self.insert(Arc::new(obj.clone())),
            watcher::Event::Delete(obj) => {
                self.remove(&obj.namespace().unwrap_or_default(), &obj.name_any());
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

    /// The objects of owner `ns/name` (a StormService's name, or a controller's UID for
    /// [`Owned::by_controller`]), by object name.
    pub fn owned_by(&self, ns: &str, name: &str) -> Vec<Arc<K>> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.by_owner
            .get(path(ns, name).as_str())
            .map(|group| group.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Object `ns/name`.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let object = path(ns, name);
        let owner = g.owner_of.get(object.as_str())?;
        g.by_owner.get(owner)?.get(object.as_str()).cloned()
    }

    /// Whether the first list has arrived.
    pub fn listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    /// A cache holding `objects`, listed (for tests).
    pub fn of(objects: impl IntoIterator<Item = K>) -> Self {
        Self::listed_with(Owned::default(), objects)
    }

    /// `cache` holding `objects`, listed (for tests).
    pub fn listed_with(cache: Self, objects: impl IntoIterator<Item = K>) -> Self {
        let owned = cache;
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
    fn by_controller_groups_by_the_controller_owner_reference_only() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owned = |ns: &str, name: &str, refs: &[(&str, bool)]| {
            let mut p = pod(ns, name, None);
            p.metadata.owner_references = Some(
                refs.iter()
                    .map(|(uid, controller)| OwnerReference {
                        uid: uid.to_string(),
                        controller: Some(*controller),
                        ..Default::default()
                    })
                    .collect(),
            );
            p
        };
        let c = Owned::listed_with(
            Owned::by_controller(),
            [
                owned("a", "p1", &[("u1", true)]),
                owned("a", "p2", &[("u2", false), ("u1", true)]),
                owned("a", "p3", &[("u1", false)]),
                owned("b", "p4", &[("u1", true)]),
                pod("a", "p5", Some((LABEL_NAME, "u1"))),
            ],
        );
        assert_eq!(names(c.owned_by("a", "u1")), ["p1", "p2"]);
        assert_eq!(names(c.owned_by("b", "u1")), ["p4"]);
        assert!(c.owned_by("a", "u2").is_empty());
        // A new controller (an adoption) moves the object.
        c.apply(&watcher::Event::Apply(owned("a", "p1", &[("u9", true)])));
        assert_eq!(names(c.owned_by("a", "u1")), ["p2"]);
        assert_eq!(names(c.owned_by("a", "u9")), ["p1"]);
    }

    #[test]
    fn nothing_is_listed_before_the_first_list() {
        let c = Owned::<Pod>::default();
        assert!(!c.listed());
        c.apply(&watcher::Event::Init);
        assert!(!c.listed());
    }
}
