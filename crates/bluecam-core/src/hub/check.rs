//! [`Hub::check_invariants`]: the invariants of the module doc, checked by the tests.

use super::*;

impl Hub {
    /// Checks the invariants of the module doc; for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut attached = 0;
        let mut detached = 0;
        let mut local = 0;
        for (room_id, room) in &self.rooms {
            if !self.pending.contains_key(room_id)
                && !room.peers.values().any(|p| matches!(p.at, At::Here { .. }))
            {
                return Err(format!("room {room_id} has no local peer but is kept"));
            }
            room.peers
                .check()
                .map_err(|e| format!("room {room_id}: {e}"))?;
            for (peer_id, peer) in &room.peers {
                let At::Here {
                    session,
                    link,
                    secret,
                } = &peer.at
                else {
                    continue;
                };
                local += 1;
                // A cluster's node registers its peers' secrets again after the directory lost
                // its data (`local_peers`): it keeps them, not their digests.
                if room.ver > 0 && matches!(secret, Secret::Digest(_)) {
                    return Err(format!("{peer_id} of a cluster's room keeps only a digest"));
                }
                if self.sessions.get(session) != Some(&(room_id.clone(), peer_id.clone())) {
                    return Err(format!("session of {peer_id} does not map back"));
                }
                match link {
                    Link::Attached(conn) => {
                        attached += 1;
                        if self.conns.get(conn) != Some(&(room_id.clone(), peer_id.clone())) {
                            return Err(format!("conn of {peer_id} does not map back"));
                        }
                    }
                    Link::Detached {
                        expires,
                        buffer,
                        bytes,
                    } => {
                        detached += 1;
                        if !self.expiries.contains(&(*expires, session.clone())) {
                            return Err(format!("{peer_id} is detached without expiry"));
                        }
                        if buffer.len() > self.config.resume_buffer_frames
                            || *bytes > self.config.resume_buffer_bytes
                            || *bytes != buffer.iter().map(Frame::len).sum::<usize>()
                        {
                            return Err(format!("resume buffer of {peer_id} out of bounds"));
                        }
                    }
                }
            }
        }
        if local != self.sessions.len() || attached != self.conns.len() {
            return Err("sessions or conns hold entries for no peer".into());
        }
        if detached != self.expiries.len() {
            return Err("expiries hold entries for no detached peer".into());
        }
        Ok(())
    }
}
