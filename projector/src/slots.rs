//! Per-entity storage keyed by registered component: a fixed array, iterated in id order.

use std::sync::OnceLock;

use theta_schemas::ComponentId;

use crate::values::descriptors;

/// Number of registered components.
pub(crate) const N: usize = 8;

struct Table {
    ids: [ComponentId; N],
    /// Slot indexes sorted by component id.
    order: [usize; N],
}

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| {
        let d = descriptors();
        assert_eq!(d.len(), N, "slot count matches the registry");
        let ids: [ComponentId; N] = std::array::from_fn(|i| d[i].id);
        let mut order: [usize; N] = std::array::from_fn(|i| i);
        order.sort_by_key(|i| ids[*i]);
        Table { ids, order }
    })
}

/// The slot of a registered component.
pub(crate) fn slot(id: ComponentId) -> Option<usize> {
    table().ids.iter().position(|x| *x == id)
}

/// One optional `T` per registered component.
#[derive(Debug, Clone)]
pub(crate) struct Slots<T>([Option<T>; N]);

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots(std::array::from_fn(|_| None))
    }
}

impl<T> Slots<T> {
    pub fn get(&self, id: &ComponentId) -> Option<&T> {
        self.0[slot(*id)?].as_ref()
    }

    pub fn contains_key(&self, id: &ComponentId) -> bool {
        self.get(id).is_some()
    }

    /// Sets the value of a registered component; panics on an unregistered id (callers
    /// check ids from outside with [`slot`] first).
    pub fn insert(&mut self, id: ComponentId, v: T) -> Option<T> {
        let i = slot(id).expect("registered component");
        self.0[i].replace(v)
    }

    pub fn remove(&mut self, id: &ComponentId) -> Option<T> {
        self.0[slot(*id)?].take()
    }

    /// Present entries in ascending component id order.
    pub fn iter(&self) -> impl Iterator<Item = (ComponentId, &T)> {
        let t = table();
        t.order.iter().filter_map(move |i| self.0[*i].as_ref().map(|v| (t.ids[*i], v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = ComponentId> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.iter().filter(|x| x.is_some()).count()
    }
}
