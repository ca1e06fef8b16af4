//! A room's peers: a vector searched in order, rather than a hash map. Rooms are small (50
//! peers by default), a peer is looked up by comparing ids, and the vector holds exactly its
//! peers: a hash map of a room of ten kept sixteen slots of about 220 bytes each, the largest
//! share of what the core holds per idle connection (BENCHMARKS.md).

use super::PeerState;
use bluecam_proto::PeerId;

/// Rooms up to this many peers grow their vector one slot at a time.
const EXACT_UP_TO: usize = 16;

#[derive(Debug, Default)]
pub(super) struct PeerMap {
    entries: Vec<(PeerId, PeerState)>,
}

impl PeerMap {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn get(&self, id: &PeerId) -> Option<&PeerState> {
        self.entries.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    pub(super) fn get_mut(&mut self, id: &PeerId) -> Option<&mut PeerState> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k == id)
            .map(|(_, v)| v)
    }

    pub(super) fn contains_key(&self, id: &PeerId) -> bool {
        self.entries.iter().any(|(k, _)| k == id)
    }

    /// Sets `id`'s state; the state it replaces, if any.
    pub(super) fn insert(&mut self, id: PeerId, state: PeerState) -> Option<PeerState> {
        if let Some(old) = self.get_mut(&id) {
            return Some(std::mem::replace(old, state));
        }
        // One slot more at a time while the room is small (most are): its vector holds its
        // peers and no spare slots. A large room grows by doubling, so that filling it is
        // not quadratic.
        if self.entries.len() < EXACT_UP_TO {
            self.entries.reserve_exact(1);
        }
        self.entries.push((id, state));
        None
    }

    pub(super) fn remove(&mut self, id: &PeerId) -> Option<PeerState> {
        let i = self.entries.iter().position(|(k, _)| k == id)?;
        let (_, state) = self.entries.swap_remove(i);
        if self.entries.capacity() > 2 * self.entries.len() + 4 {
            self.entries.shrink_to_fit();
        }
        Some(state)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&PeerId, &PeerState)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &PeerId> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &PeerState> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub(super) fn into_values(self) -> impl Iterator<Item = PeerState> {
        self.entries.into_iter().map(|(_, v)| v)
    }
}

impl<'a> IntoIterator for &'a PeerMap {
    type Item = (&'a PeerId, &'a PeerState);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (PeerId, PeerState)>,
        fn(&'a (PeerId, PeerState)) -> (&'a PeerId, &'a PeerState),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}
