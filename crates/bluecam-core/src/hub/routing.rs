//! How [`Hub`] routes what a peer sends: who may send, to whom, and the frames for peers
//! here, detached or on other nodes.

use super::*;

impl Hub {
    /// Routes one frame from a joined connection. Frames from unknown connections are ignored
    /// (the shell only passes frames after a successful join).
    pub fn handle_message(&mut self, conn: ConnId, msg: bluecam_proto::ClientMessage<'_>) {
        use bluecam_proto::ClientMessage as M;
        let Some((room_id, from)) = self.conns.get(&conn).cloned() else {
            return;
        };
        match msg {
            M::Join { .. } => self.push_error(
                conn,
                ErrorFrame::new(ErrorCode::BadRequest, "this connection has joined already"),
            ),
            M::Signal {
                to,
                data,
                reference,
            } => {
                if to == from || !self.in_room(&room_id, &to) {
                    if to != from {
                        self.outputs.push_back(Output::UnknownPeers {
                            room: room_id.clone(),
                            peers: 1,
                        });
                    }
                    self.push_error(conn, unknown_peers(vec![to], reference));
                    return;
                }
                let frame = Frame::new(&ServerMessage::Signal(SignalFrame {
                    from,
                    data: Cow::Borrowed(&*data),
                }));
                let origin = Some(Origin { conn, reference });
                self.route(&room_id, Targets::Peers(&[to]), frame, origin);
            }
            M::Send { to, msg, reference } => {
                if !self.may_send_data(&room_id, &from) {
                    self.push_error(
                        conn,
                        ErrorFrame::new(
                            ErrorCode::PermissionDenied,
                            "the token does not allow sending data",
                        )
                        .with_ref(reference),
                    );
                    return;
                }
                let origin = Some(Origin { conn, reference });
                let message = |from| {
                    Frame::new(&ServerMessage::Message(MessageFrame {
                        from,
                        msg: Cow::Borrowed(&*msg),
                    }))
                };
                let Some(to) = to else {
                    // To everyone else: the room's peers are gone through once, in place
                    // (most messages; the sender is in the room, so one more means someone).
                    if self.rooms.get(&room_id).is_some_and(|r| r.peers.len() > 1) {
                        let frame = message(from.clone());
                        self.route(&room_id, Targets::AllBut(&from), frame, origin);
                    }
                    return;
                };
                let (targets, unknown) = self.targets(&room_id, &from, Some(to));
                if !targets.is_empty() {
                    let frame = message(from);
                    self.route(&room_id, Targets::Peers(&targets), frame, origin);
                }
                if !unknown.is_empty() {
                    self.outputs.push_back(Output::UnknownPeers {
                        room: room_id.clone(),
                        peers: unknown.len(),
                    });
                    self.push_error(conn, unknown_peers(unknown, reference));
                }
            }
            M::ServerAck { e, s } => self.server_ack(&room_id, &from, e, s),
            M::Leave => {
                self.remove_peer(&room_id, &from, LeaveReason::Left);
                self.outputs.push_back(Output::Close {
                    conn,
                    code: CloseCode::Normal,
                });
            }
            M::Ping => self.push_deliver(vec![conn], Frame::new(&ServerMessage::Pong)),
            M::Pong => {}
        }
    }

    pub(super) fn in_room(&self, room: &RoomId, peer: &PeerId) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.peers.contains_key(peer))
    }

    pub(super) fn may_send_data(&self, room: &RoomId, peer: &PeerId) -> bool {
        self.rooms
            .get(room)
            .and_then(|r| r.peers.get(peer))
            .is_some_and(|p| p.permissions.send_data)
    }

    /// Splits a `send.to` into peers of the room and ids that are not (self counts as unknown).
    pub(super) fn targets(
        &self,
        room_id: &RoomId,
        from: &PeerId,
        to: Option<Vec<PeerId>>,
    ) -> (Vec<PeerId>, Vec<PeerId>) {
        let Some(room) = self.rooms.get(room_id) else {
            return (Vec::new(), to.unwrap_or_default());
        };
        match to {
            None => (
                room.peers.keys().filter(|p| *p != from).cloned().collect(),
                Vec::new(),
            ),
            Some(mut list) => {
                list.sort();
                list.dedup();
                list.into_iter()
                    .partition(|p| p != from && room.peers.contains_key(p))
            }
        }
    }

    /// Delivers to attached targets, keeps the frame for detached ones, and publishes it once
    /// per other node for targets there.
    pub(super) fn route(
        &mut self,
        room_id: &RoomId,
        targets: Targets<'_>,
        frame: Frame,
        origin: Option<Origin>,
    ) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let mut conns = Vec::with_capacity(match targets {
            Targets::Peers(list) => list.len(),
            Targets::AllBut(_) => room.peers.len().saturating_sub(1),
        });
        let mut detached = Vec::new();
        let mut remote: Vec<(NodeId, Vec<PeerId>)> = Vec::new();
        let mut sort = |target: &PeerId, at: &At| match at {
            At::Here {
                link: Link::Attached(conn),
                ..
            } => conns.push(*conn),
            At::Here {
                link: Link::Detached { .. },
                ..
            } => detached.push(target.clone()),
            At::There(node) => match remote.iter_mut().find(|(n, _)| n == node) {
                Some((_, to)) => to.push(target.clone()),
                None => remote.push((node.clone(), vec![target.clone()])),
            },
        };
        match targets {
            Targets::Peers(list) => {
                for target in list {
                    if let Some(peer) = room.peers.get(target) {
                        sort(target, &peer.at);
                    }
                }
            }
            Targets::AllBut(from) => {
                for (target, peer) in &room.peers {
                    if target != from {
                        sort(target, &peer.at);
                    }
                }
            }
        }
        for (node, to) in remote {
            self.outputs.push_back(Output::Publish {
                node,
                room: room_id.clone(),
                to,
                frame: frame.clone(),
                origin,
            });
        }
        self.push_deliver(conns, frame.clone());
        self.buffer_for(room_id, &detached, &frame);
    }

    /// Keeps `frame` for detached peers; a peer whose buffer would overflow loses its session
    /// (its sender learns through `peer_left`: nothing is dropped silently).
    pub(super) fn buffer_for(&mut self, room_id: &RoomId, peers: &[PeerId], frame: &Frame) {
        if peers.is_empty() {
            return;
        }
        let mut overflowed = Vec::new();
        if let Some(room) = self.rooms.get_mut(room_id) {
            for peer_id in peers {
                if let Some(Link::Detached { buffer, bytes, .. }) =
                    room.peers.get_mut(peer_id).and_then(PeerState::link_mut)
                {
                    if buffer.len() < self.config.resume_buffer_frames
                        && *bytes + frame.len() <= self.config.resume_buffer_bytes
                    {
                        *bytes += frame.len();
                        buffer.push_back(frame.clone());
                    } else {
                        overflowed.push(peer_id.clone());
                    }
                }
            }
        }
        for peer in overflowed {
            // Removing an earlier one keeps its peer_left for this one, which may overflow
            // (and be removed and reported) there already.
            if !self.in_room(room_id, &peer) {
                continue;
            }
            self.outputs.push_back(Output::ResumeBufferOverflow {
                room: room_id.clone(),
                peer: peer.clone(),
            });
            self.remove_peer(room_id, &peer, LeaveReason::Timeout);
        }
    }
}

impl Hub {
    /// A message from the app's backend (`POST /v1/rooms/{id}/messages`) to the peers `to` of
    /// this node, or to every peer of this node in the room. Each peer gets it as number `s` of
    /// its own sequence space (`epoch` starts one for a peer that has none here: a fresh value
    /// from the shell), through its connection (a detached peer gets it with the others not
    /// acknowledged when it resumes), and this node keeps it until the peer acknowledges it. A
    /// peer with [`CoreConfig::resume_buffer_frames`] (or `resume_buffer_bytes`) of them not
    /// acknowledged gets no more until it acknowledges some: it is not among the peers
    /// returned, which the sender is told.
    pub fn handle_server_message(
        &mut self,
        room_id: &RoomId,
        to: Option<&[PeerId]>,
        msg_type: &str,
        data: &RawValue,
        epoch: u64,
    ) -> Vec<PeerId> {
        let Some(room) = self.rooms.get(room_id) else {
            return Vec::new();
        };
        let is_here =
            |p: &PeerId| matches!(room.peers.get(p).map(|s| &s.at), Some(At::Here { .. }));
        let mut here: Vec<PeerId> = match to {
            Some(to) => to.iter().filter(|p| is_here(p)).cloned().collect(),
            None => sorted_peers(room)
                .into_iter()
                .map(|p| p.id)
                .filter(|p| is_here(p))
                .collect(),
        };
        // (An id named twice gets it once.)
        let mut seen = std::collections::HashSet::new();
        here.retain(|p| seen.insert(p.clone()));
        let (max_frames, max_bytes) = (
            self.config.resume_buffer_frames,
            self.config.resume_buffer_bytes,
        );
        let mut sent = Vec::with_capacity(here.len());
        for peer_id in here {
            let Some(peer) = self
                .rooms
                .get_mut(room_id)
                .and_then(|r| r.peers.get_mut(&peer_id))
            else {
                continue;
            };
            let out = peer.out.get_or_insert_with(ServerOut::new);
            if out.epoch == 0 {
                out.epoch = epoch;
            }
            let s = out.last + 1;
            let frame = Frame::new(&ServerMessage::ServerMessage(
                bluecam_proto::ServerMessageFrame {
                    e: out.epoch,
                    s,
                    msg_type: Cow::Borrowed(msg_type),
                    data: Cow::Borrowed(data),
                },
            ));
            if out.unacked.len() >= max_frames || out.bytes + frame.len() > max_bytes {
                continue;
            }
            out.last = s;
            out.bytes += frame.len();
            out.unacked.push_back((out.epoch, s, frame.clone()));
            if let Some(Link::Attached(conn)) = peer.link() {
                let conn = *conn;
                self.push_deliver(vec![conn], frame);
            }
            sent.push(peer_id);
        }
        sent
    }

    /// The backend's messages another node forwarded after `peers` (which moved here): kept
    /// as this node's own until acknowledged, and delivered to those connected.
    pub(super) fn adopt_server_message(
        &mut self,
        room_id: &RoomId,
        peers: &[PeerId],
        frame: Frame,
    ) {
        let Ok(parsed) =
            serde_json::from_str::<bluecam_proto::ServerMessageFrame<'_>>(frame.as_str())
        else {
            return;
        };
        let (e, s) = (parsed.e, parsed.s);
        let mut conns = Vec::new();
        for peer_id in peers {
            let Some(peer) = self
                .rooms
                .get_mut(room_id)
                .and_then(|r| r.peers.get_mut(peer_id))
            else {
                continue;
            };
            let out = peer.out.get_or_insert_with(ServerOut::new);
            if out.unacked.iter().any(|(ue, us, _)| *ue == e && *us == s) {
                continue;
            }
            out.bytes += frame.len();
            out.unacked.push_back((e, s, frame.clone()));
            if let Some(Link::Attached(conn)) = peer.link() {
                conns.push(*conn);
            }
        }
        self.push_deliver(conns, frame);
    }

    /// `server_ack`: the peer has every message of its sequence space `epoch` up to `s`.
    fn server_ack(&mut self, room_id: &RoomId, peer_id: &PeerId, epoch: u64, s: u64) {
        let Some(out) = self
            .rooms
            .get_mut(room_id)
            .and_then(|r| r.peers.get_mut(peer_id))
            .and_then(|p| p.out.as_mut())
        else {
            return;
        };
        let mut freed = 0;
        out.unacked.retain(|(e, n, frame)| {
            let acked = *e == epoch && *n <= s;
            if acked {
                freed += frame.len();
            }
            !acked
        });
        out.bytes -= freed;
    }

    /// The backend's messages a peer has not acknowledged, in order (sent again after a
    /// resume or a move).
    pub(super) fn unacked_server_messages(&self, room_id: &RoomId, peer_id: &PeerId) -> Vec<Frame> {
        self.rooms
            .get(room_id)
            .and_then(|r| r.peers.get(peer_id))
            .and_then(|p| p.out.as_ref())
            .map(|o| o.unacked.iter().map(|(_, _, f)| f.clone()).collect())
            .unwrap_or_default()
    }
}

/// The peers of a room a frame goes to.
#[derive(Clone, Copy)]
pub(super) enum Targets<'a> {
    /// These (ids not in the room are passed over).
    Peers(&'a [PeerId]),
    /// Every peer of the room but this one.
    AllBut(&'a PeerId),
}
