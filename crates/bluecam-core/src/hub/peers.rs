//! A room's peers: a vector searched in order, rather than a hash map. Rooms are small (50
//! peers by default), a peer is looked up by comparing ids, and the vector holds exactly its
//! peers: a hash map of a room of ten kept sixteen slots of about 220 bytes each, the largest
//! share of what the core holds per idle connection (BENCHMARKS.md). A peer's id is the one in
//! its record (`info.id`), not kept a second time as a key. A large room (the limit
//! can be raised) gets an index by id, so that a broadcast, which looks up every peer, is not
//! quadratic.

use super::{HashMap, PeerState};
use bluecam_proto::PeerId;

/// Rooms up to this many peers grow their vector one slot at a time.
const EXACT_UP_TO: usize = 16;

/// Rooms of more than this many peers have an index by id (dropped again below half of it).
const INDEX_FROM: usize = 32;

#[derive(Debug, Default)]
pub(super) struct PeerMap {
    entries: Vec<PeerState>,
    /// Each peer's place in `entries`, in a large room.
    index: Option<Box<HashMap<PeerId, usize>>>,
}

impl PeerMap {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    fn position(&self, id: &PeerId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(id).copied(),
            None => self.entries.iter().position(|p| p.info.id == *id),
        }
    }

    pub(super) fn get(&self, id: &PeerId) -> Option<&PeerState> {
        self.position(id).map(|i| &self.entries[i])
    }

    /// (The state's `info.id` is its key: not to be changed through this.)
    pub(super) fn get_mut(&mut self, id: &PeerId) -> Option<&mut PeerState> {
        self.position(id).map(|i| &mut self.entries[i])
    }

    pub(super) fn contains_key(&self, id: &PeerId) -> bool {
        self.position(id).is_some()
    }

    /// Sets the state of its peer (`state.info.id`); the state it replaces, if any.
    pub(super) fn insert(&mut self, state: PeerState) -> Option<PeerState> {
        let id = &state.info.id;
        if let Some(old) = self.get_mut(id) {
            return Some(std::mem::replace(old, state));
        }
        // One slot more at a time while the room is small (most are): its vector holds its
        // peers and no spare slots. A large room grows by doubling, so that filling it is
        // not quadratic.
        if self.entries.len() < EXACT_UP_TO {
            self.entries.reserve_exact(1);
        }
        if let Some(index) = &mut self.index {
            index.insert(id.clone(), self.entries.len());
        }
        self.entries.push(state);
        if self.index.is_none() && self.entries.len() > INDEX_FROM {
            let index = self.entries.iter().enumerate();
            self.index = Some(Box::new(
                index.map(|(i, p)| (p.info.id.clone(), i)).collect(),
            ));
        }
        None
    }

    pub(super) fn remove(&mut self, id: &PeerId) -> Option<PeerState> {
        let i = self.position(id)?;
        let state = self.entries.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(id);
            // The last peer took the removed one's place.
            if let Some(moved) = self.entries.get(i) {
                index.insert(moved.info.id.clone(), i);
            }
            if self.entries.len() <= INDEX_FROM / 2 {
                self.index = None;
            }
        }
        if self.entries.capacity() > 2 * self.entries.len() + 4 {
            self.entries.shrink_to_fit();
        }
        Some(state)
    }

    /// Each peer is found where it is (by its id, through the index of a large room); for the
    /// hub's invariants.
    pub(super) fn check(&self) -> Result<(), String> {
        for (i, p) in self.entries.iter().enumerate() {
            if self.position(&p.info.id) != Some(i) {
                return Err(format!("{} is not found at its place", p.info.id));
            }
        }
        match &self.index {
            Some(index) if index.len() != self.entries.len() => {
                Err("the index and the peers differ in number".into())
            }
            _ => Ok(()),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&PeerId, &PeerState)> {
        self.entries.iter().map(|p| (&p.info.id, p))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &PeerId> {
        self.entries.iter().map(|p| &p.info.id)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &PeerState> {
        self.entries.iter()
    }

    pub(super) fn into_values(self) -> impl Iterator<Item = PeerState> {
        self.entries.into_iter()
    }
}

impl<'a> IntoIterator for &'a PeerMap {
    type Item = (&'a PeerId, &'a PeerState);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, PeerState>,
        fn(&'a PeerState) -> (&'a PeerId, &'a PeerState),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|p| (&p.info.id, p))
    }
}

#[cfg(test)]
mod tests {
    use super::{INDEX_FROM, PeerMap};
    use crate::hub::{PeerState, replica::RemotePeer};
    use bluecam_proto::{Identity, NodeId, PeerId, PeerInfo};

    fn state(id: &str, seq: u64) -> PeerState {
        PeerState::remote(RemotePeer {
            info: PeerInfo {
                id: PeerId::new(id),
                identity: Identity::new(id),
                name: None,
                metadata: None,
            },
            node: NodeId::new("n"),
            seq,
        })
    }

    /// The map answers as a hash map would, small and large (with its index), through joins
    /// and leaves in any order.
    #[test]
    fn answers_as_a_map_small_and_large() {
        let mut map = PeerMap::default();
        let mut model = std::collections::BTreeMap::new();
        let id = |n: u64| PeerId::new(format!("p{n}"));
        // Grow past the index's threshold, shrink below half of it, grow again.
        let steps = (0..3 * INDEX_FROM as u64)
            .map(|n| (n, true))
            .chain((0..3 * INDEX_FROM as u64).step_by(2).map(|n| (n, false)))
            .chain((1..3 * INDEX_FROM as u64).step_by(2).map(|n| (n, false)))
            .chain((0..INDEX_FROM as u64 + 5).map(|n| (n, true)));
        for (n, join) in steps {
            if join {
                let replaced = map.insert(state(&format!("p{n}"), n));
                assert_eq!(replaced.is_some(), model.insert(n, n).is_some());
            } else {
                let removed = map.remove(&id(n)).map(|s| s.seq);
                assert_eq!(removed, model.remove(&n));
            }
            assert_eq!(map.len(), model.len());
            map.check().unwrap();
            for k in 0..3 * INDEX_FROM as u64 {
                assert_eq!(
                    map.get(&id(k)).map(|s| s.seq),
                    model.get(&k).copied(),
                    "p{k}"
                );
            }
            let mut keys: Vec<String> = map.keys().map(|k| k.as_str().to_owned()).collect();
            keys.sort();
            let mut want: Vec<String> = model.keys().map(|k| format!("p{k}")).collect();
            want.sort();
            assert_eq!(keys, want);
        }
        // Replacing a peer's state keeps one entry.
        let before = map.len();
        assert!(map.insert(state("p0", 99)).is_some());
        assert_eq!(
            (map.len(), map.get(&id(0)).map(|s| s.seq)),
            (before, Some(99))
        );
    }
}
