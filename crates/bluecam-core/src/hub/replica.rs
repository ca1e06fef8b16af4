//! The cluster side of [`Hub`]: the room replicas of a cluster node (peers of other nodes,
//! as the directory records them), joins and claims answered by the directory, room events from
//! other nodes, snapshots, and moves.

use super::*;

/// A peer of a room as the cluster directory records it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RemotePeer {
    pub info: PeerInfo,
    pub node: NodeId,
    /// Join order in the cluster.
    pub seq: u64,
}

/// What the cluster directory answered to a join or a resume: the room's membership at the
/// version `ver`, and this peer's place in it.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub ver: u64,
    /// This peer's join order.
    pub seq: u64,
    /// The peers of the room on *other* nodes, per the directory (this node knows its own;
    /// the joiner, if listed, is skipped).
    pub peers: Vec<RemotePeer>,
    /// For a resume on a node that does not hold the session: the session as stored.
    pub claimed: Option<ClaimedSession>,
    /// Peers the directory places on *this* node that this node may not hold yet (their own
    /// join or resume here is a step behind this one): the joiner must still list them, and
    /// frames for them go round through the node's own channel until they are admitted.
    pub pending_here: Vec<RemotePeer>,
    /// For a new peer: the seats of its identity the directory let go for it (`replaced`):
    /// those of this node are closed here ([`crate::directory::admit`]).
    pub replaced: Vec<PeerId>,
}

/// A session taken over from another node.
#[derive(Clone, Debug)]
pub struct ClaimedSession {
    pub info: PeerInfo,
    pub session: SessionId,
    pub secret: SessionSecret,
    pub permissions: Permissions,
}

/// What another node of the cluster says about a room.
#[derive(Clone, Debug)]
pub enum RoomEvent {
    /// A peer joined on another node.
    Joined(RemotePeer),
    /// A peer of another node left (or its node died).
    Left { peer: PeerId, reason: LeaveReason },
    /// A peer resumed its session on another node (`peer.node`).
    Moved(RemotePeer),
    /// A frame for peers of this room, `from` already written.
    Frame { to: Vec<PeerId>, frame: Frame },
}

impl RoomEvent {
    pub(super) fn is_membership(&self) -> bool {
        !matches!(self, Self::Frame { .. })
    }
}

/// A peer of this node with what the directory records of it.
#[derive(Clone, Debug)]
pub struct LocalPeer {
    pub room: RoomId,
    /// The membership version this node's replica of the room has reached.
    pub room_ver: u64,
    pub info: PeerInfo,
    pub permissions: Permissions,
    pub seq: u64,
    pub session: SessionId,
    pub secret: SessionSecret,
}

impl Hub {
    /// Cluster: a join into `room` is about to ask the directory. Until the join is handled
    /// (or [`Hub::end_cluster_join`] is called), events for the room are kept rather than
    /// dropped, so none published between the directory's answer and this node's handling of
    /// it is lost.
    pub fn begin_cluster_join(&mut self, room: &RoomId) {
        self.pending.entry(room.clone()).or_default().joins += 1;
    }

    /// Whether a join into `room` is waiting for the directory.
    pub fn has_pending_join(&self, room: &RoomId) -> bool {
        self.pending.contains_key(room)
    }

    /// Cluster: the rooms a join is waiting for the directory into.
    pub fn joining_rooms(&self) -> impl Iterator<Item = &RoomId> {
        self.pending.keys()
    }

    /// Cluster: a join begun with [`Hub::begin_cluster_join`] ended without reaching
    /// [`Hub::handle_join`].
    pub fn end_cluster_join(&mut self, room: &RoomId) {
        if let Some(p) = self.pending.get_mut(room) {
            p.joins = p.joins.saturating_sub(1);
            if p.joins == 0 {
                self.pending.remove(room);
                self.drop_if_no_local_peers(room);
            }
        }
    }

    /// Creates the room's replica if needed and adds the peers of a directory snapshot that
    /// it does not hold (a join's own snapshot: they are not announced, the joiner gets them in
    /// `joined` and the others heard of them already).
    pub(super) fn replica(
        &mut self,
        summary: RoomSummary,
        view: Option<&ClusterView>,
        joiner: &PeerId,
    ) -> &mut RoomState {
        let id = summary.id.clone();
        match (self.rooms.get_mut(&id), view) {
            (Some(room), Some(view)) if view.ver > room.ver => {
                // The directory's answer can overtake events on the subscription: bring the
                // replica to the answer's version as a snapshot would (announcing what the
                // peers here missed), so later events at or below it are rightly ignored.
                let mut peers: Vec<RemotePeer> = view
                    .peers
                    .iter()
                    .filter(|p| p.info.id != *joiner)
                    .cloned()
                    .collect();
                // A session being claimed is in the replica already, on its old node: it is
                // not gone, it is coming here.
                if let Some(p) = room.peers.get(joiner)
                    && let At::There(node) = &p.at
                {
                    peers.push(RemotePeer {
                        info: p.info.clone(),
                        node: node.clone(),
                        seq: p.seq,
                    });
                }
                let here: Vec<PeerId> = view
                    .pending_here
                    .iter()
                    .map(|p| p.info.id.clone())
                    .collect();
                self.handle_room_snapshot_with(&id, view.ver, peers, &here);
            }
            _ => {}
        }
        if !self.rooms.contains_key(&id) {
            // No replica yet, or the snapshot above let go of its last local peer and
            // dropped it: built from the view, never empty when the view is not.
            let mut room = RoomState {
                summary: summary.clone(),
                peers: super::peers::PeerMap::default(),
                ver: 0,
            };
            if let Some(view) = view {
                room.ver = view.ver;
                for p in view.peers.iter().filter(|p| p.info.id != *joiner) {
                    room.peers.insert(PeerState::remote(p.clone()));
                }
            }
            self.rooms.insert(id.clone(), room);
        }
        // Just inserted or found above; a snapshot never drops a room with a local peer, and
        // a replica without one is dropped only after this join adds its peer.
        let room = self.rooms.entry(id.clone()).or_insert_with(|| RoomState {
            summary: summary.clone(),
            peers: super::peers::PeerMap::default(),
            ver: 0,
        });
        // Peers on their way onto this node (a join or claim here that the directory has
        // answered and this hub not yet admitted): in the room for the joiner too, and
        // announced to the peers already here (their own join event, older than this answer,
        // will be ignored). Their own admission replaces the entry.
        // (Not one taken over by a newer session since the directory answered: the answer
        // is older than that, and its join here will be refused.)
        let replaced = self
            .pending
            .get(&id)
            .map(|p| p.replaced.as_slice())
            .unwrap_or_default();
        let mut arriving = Vec::new();
        for p in view.map(|v| v.pending_here.as_slice()).unwrap_or_default() {
            if p.info.id != *joiner
                && !room.peers.contains_key(&p.info.id)
                && !replaced.contains(&p.info.id)
            {
                room.peers.insert(PeerState::remote(p.clone()));
                arriving.push(p.info.clone());
            }
        }
        for info in arriving {
            let Some(room) = self.rooms.get(&id) else {
                break;
            };
            let announce = Frame::new(&ServerMessage::PeerJoined(PeerJoined { peer: info }));
            let conns = attached_conns(room, None);
            let detached = detached_peers(room);
            self.push_deliver(conns, announce.clone());
            self.buffer_for(&id, &detached, &announce);
        }
        // (Still there: announcing drops nothing.)
        let room = self.rooms.entry(id).or_insert_with(|| RoomState {
            summary: summary.clone(),
            peers: super::peers::PeerMap::default(),
            ver: 0,
        });
        // The latest stored room wins (name or limits may have changed).
        room.summary = summary;
        room
    }

    /// Cluster: resumes a session that lived on another node. The directory has moved it
    /// here already; frames its old node still held follow as [`RoomEvent::Frame`]s.
    pub(super) fn claim(
        &mut self,
        req: JoinRequest,
        creds: ResumeCredentials,
        view: ClusterView,
    ) -> Result<PeerId, JoinRejected> {
        let Some(claimed) = view.claimed.clone() else {
            return Err(JoinRejected::SessionExpired);
        };
        if claimed.session != creds.session || !claimed.secret.matches(&creds.secret) {
            return Err(JoinRejected::SessionExpired);
        }
        if claimed.info.identity != req.identity {
            return Err(JoinRejected::Unauthorized);
        }
        let room_id = req.room.summary.id.clone();
        let peer_id = claimed.info.id.clone();
        // It expired here while the directory answered: the shell takes its seat (recorded on
        // this node by the claim) out of the directory, which tells the other nodes. This one
        // is told nothing, so a copy of it here, put back by a move heard meanwhile, goes now.
        if matches!(self.ended.get(&creds.session), Some(Ended::Expired)) {
            if matches!(
                self.rooms.get(&room_id).and_then(|r| r.peers.get(&peer_id)),
                Some(PeerState {
                    at: At::There(_),
                    ..
                })
            ) {
                self.remove_peer(&room_id, &peer_id, LeaveReason::Timeout);
            }
            return Err(JoinRejected::SessionExpired);
        }
        // A move of this session elsewhere heard since the directory answered (another node
        // claimed it after this one did): the answer is stale, the session is there now. The
        // client tries again, and its next claim takes the session back.
        let moved_since = |ver: u64| ver > view.ver;
        if let Some(Ended::HandedOver { ver }) = self.ended.get(&creds.session)
            && moved_since(*ver)
        {
            return Err(JoinRejected::Overtaken);
        }
        if let Some(p) = self.rooms.get(&room_id).and_then(|r| r.peers.get(&peer_id))
            && matches!(p.at, At::There(_))
            && moved_since(p.moved_ver)
        {
            return Err(JoinRejected::Overtaken);
        }
        let resume_window_secs = self.config.resume_window.as_secs();
        let room = self.replica(req.room.summary, Some(&view), &peer_id);
        // A peer this replica never heard of (its join is still on the way here, behind the
        // claim's answer): the others here learn of it now, since the event that would have
        // told them will be older than the replica and ignored.
        let unheard = !room.peers.contains_key(&peer_id);
        let announce = unheard.then(|| {
            Frame::new(&ServerMessage::PeerJoined(PeerJoined {
                peer: claimed.info.clone(),
            }))
        });
        room.peers.insert(PeerState {
            info: claimed.info.clone(),
            permissions: claimed.permissions,
            seq: view.seq,
            at: At::Here {
                session: claimed.session.clone(),
                secret: Secret::Plain(claimed.secret.clone()),
                link: Link::Attached(req.conn),
            },
            moved_ver: 0,
            out: None,
        });
        let joined = Joined {
            self_: claimed.info,
            room: room.summary.clone(),
            peers: sorted_peers(room)
                .into_iter()
                .filter(|p| p.id != peer_id)
                .collect(),
            session: SessionInfo {
                id: claimed.session.clone(),
                secret: claimed.secret,
                resume_window_secs,
            },
            ice_servers: req.ice_servers,
            limits: req.limits,
            resumed: true,
        };
        self.conns
            .insert(req.conn, (room_id.clone(), peer_id.clone()));
        self.sessions
            .insert(claimed.session, (room_id.clone(), peer_id.clone()));
        self.push_deliver(
            vec![req.conn],
            Frame::new(&ServerMessage::Joined(Box::new(joined))),
        );
        if let (Some(announce), Some(room)) = (announce, self.rooms.get(&room_id)) {
            let conns = attached_conns(room, Some(&peer_id));
            let detached = detached_peers(room);
            self.push_deliver(conns, announce.clone());
            self.buffer_for(&room_id, &detached, &announce);
        }
        Ok(peer_id)
    }

    /// Cluster: applies what another node says about a room. Membership events older than
    /// the replica (`ver` at most its version) are ignored; events for a room with a join in
    /// flight are kept until the join is handled; others for unknown rooms are dropped (a
    /// frame among them is reported as [`Output::Undeliverable`]).
    pub fn handle_room_event(&mut self, room_id: &RoomId, ver: u64, event: RoomEvent) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            // Membership events are few and must not be lost; frames are bounded.
            if let Some(pending) = self.pending.get_mut(room_id)
                && (event.is_membership() || pending.events.len() < MAX_PENDING_EVENTS)
            {
                pending.events.push((ver, event));
            } else if let RoomEvent::Frame { to, .. } = event {
                self.outputs.push_back(Output::Undeliverable {
                    room: room_id.clone(),
                    peers: to.len(),
                });
            }
            return;
        };
        // Noted while joins are in flight, whatever the version (a replaced peer is tombstoned,
        // never stale; the replica may be past it through another join's answer): it may be one
        // of those joins, taken over before it was admitted, and an answer older than the
        // takeover may still list it as on its way here.
        if let RoomEvent::Left {
            peer,
            reason: LeaveReason::Replaced,
        } = &event
            && let Some(pending) = self.pending.get_mut(room_id)
            && !pending.replaced.contains(peer)
        {
            pending.replaced.push(peer.clone());
        }
        if event.is_membership() {
            if ver <= room.ver {
                return;
            }
            room.ver = ver;
        }
        match event {
            RoomEvent::Joined(p) => self.add_remote(room_id, p),
            RoomEvent::Left { peer, reason } => match room.peers.get(&peer).map(|p| &p.at) {
                Some(At::There(_)) => self.remove_peer(room_id, &peer, reason),
                // A new session of its identity took its seat on another node.
                Some(At::Here { .. }) if reason == LeaveReason::Replaced => {
                    self.supersede(room_id, &[peer]);
                }
                _ => {}
            },
            RoomEvent::Moved(p) => {
                if let Some(peer) = room.peers.get_mut(&p.info.id) {
                    peer.moved_ver = ver;
                    self.moved(room_id, &p.info.id, p.node, ver);
                } else {
                    // Gone from here already (its session expired here as it resumed there):
                    // it is back.
                    self.add_remote(room_id, p);
                }
            }
            RoomEvent::Frame { to, frame } => {
                // Only peers of this node: a frame from another node is never published again
                // (two nodes that disagree for a moment on where a peer is must not bounce it
                // between them). One that missed its peer is counted; the SDK's acks resend it.
                let mut missing = 0;
                let targets: Vec<PeerId> = to
                    .into_iter()
                    .filter(|p| {
                        let here =
                            matches!(room.peers.get(p).map(|s| &s.at), Some(At::Here { .. }));
                        missing += usize::from(!here);
                        here
                    })
                    .collect();
                if missing > 0 {
                    self.outputs.push_back(Output::Undeliverable {
                        room: room_id.clone(),
                        peers: missing,
                    });
                }
                if frame.is_server_message() {
                    // The backend's messages another node forwarded after a peer that moved
                    // here: kept until acknowledged, as this node's own are.
                    self.adopt_server_message(room_id, &targets, frame);
                } else {
                    self.route(
                        room_id,
                        super::routing::Targets::Peers(&targets),
                        frame,
                        None,
                    );
                }
            }
        }
    }

    /// A peer resumed on `node`. If it was here, this node lets go of it: an open connection
    /// is replaced, and frames kept for it go after it to its new node.
    pub(super) fn moved(&mut self, room_id: &RoomId, peer_id: &PeerId, node: NodeId, ver: u64) {
        let Some(peer) = self
            .rooms
            .get_mut(room_id)
            .and_then(|r| r.peers.get_mut(peer_id))
        else {
            return;
        };
        let old = std::mem::replace(&mut peer.at, At::There(node.clone()));
        let unacked: Vec<Frame> = peer
            .out
            .take()
            .map(|o| o.unacked.into_iter().map(|(_, _, f)| f).collect())
            .unwrap_or_default();
        let At::Here { session, link, .. } = old else {
            return;
        };
        self.sessions.remove(&session);
        self.ended(session.clone(), Ended::HandedOver { ver });
        let kept = match link {
            Link::Attached(conn) => {
                self.conns.remove(&conn);
                self.outputs.push_back(Output::Close {
                    conn,
                    code: CloseCode::Replaced,
                });
                VecDeque::new()
            }
            Link::Detached {
                expires, buffer, ..
            } => {
                self.expiries.remove(&(expires, session));
                *buffer
            }
        };
        // What was kept for it goes after it, except membership changes (its `joined` on the
        // new node lists the room as it is, and this node's view may be stale: it was cut off,
        // and announced as gone a peer that had moved on meanwhile); then every message of the
        // backend it has not acknowledged (its new node numbers the next ones in a sequence
        // space of its own).
        let after = kept
            .into_iter()
            .filter(|f| !f.is_membership() && !f.is_server_message())
            .chain(unacked);
        for frame in after {
            self.outputs.push_back(Output::Publish {
                node: node.clone(),
                room: room_id.clone(),
                to: vec![peer_id.clone()],
                frame,
                origin: None,
            });
        }
        self.drop_if_no_local_peers(room_id);
    }

    /// Cluster: reconciles a room's replica with the directory's list of the peers of *other*
    /// nodes (after Redis came back): peers it lost are announced as left (timeout), peers it
    /// missed as joined, and a peer of this node that the directory places elsewhere is let go.
    pub fn handle_room_snapshot(
        &mut self,
        room_id: &RoomId,
        ver: u64,
        peers: Vec<RemotePeer>,
    ) -> bool {
        self.handle_room_snapshot_with(room_id, ver, peers, &[])
    }

    /// [`Hub::handle_room_snapshot`], where `here` names the peers the directory places on
    /// this node: one this hub has not admitted yet (its join or resume here is a step behind
    /// the snapshot) is on its way, not gone, and is not announced as leaving.
    ///
    /// A snapshot older than the replica (its version below the replica's: events published
    /// after it was read were applied first) would undo them: it is skipped, and `false` says
    /// so (the shell reads another). The directory's version never goes below a replica's
    /// (re-registering a peer raises it), so only a stale read is ever lower.
    pub fn handle_room_snapshot_with(
        &mut self,
        room_id: &RoomId,
        ver: u64,
        peers: Vec<RemotePeer>,
        here: &[PeerId],
    ) -> bool {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return true;
        };
        if ver < room.ver {
            return false;
        }
        room.ver = ver;
        let listed: HashMap<PeerId, RemotePeer> =
            peers.into_iter().map(|p| (p.info.id.clone(), p)).collect();
        let gone: Vec<PeerId> = room
            .peers
            .iter()
            .filter(|(id, p)| {
                matches!(p.at, At::There(_)) && !listed.contains_key(*id) && !here.contains(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut elsewhere = Vec::new();
        for (id, p) in &listed {
            // (A peer found on another node than the replica had it moved at this version at
            // the latest.)
            match room.peers.get_mut(id).map(|s| {
                if matches!(&s.at, At::There(node) if *node != p.node) {
                    s.moved_ver = ver;
                }
                &mut s.at
            }) {
                Some(At::There(node)) => *node = p.node.clone(),
                // An orphan (its node was reaped while this node was cut off) that this node
                // holds is still this node's: its next resync takes it back.
                Some(At::Here { .. }) if p.node.as_str() == crate::cluster::ORPHAN_NODE => {}
                // The snapshot lists only peers of other nodes: this one resumed there.
                Some(At::Here { .. }) => elsewhere.push((id.clone(), p.node.clone())),
                None => {}
            }
        }
        let new: Vec<RemotePeer> = listed
            .into_values()
            .filter(|p| !room.peers.contains_key(&p.info.id))
            .collect();
        for peer in gone {
            self.remove_peer(room_id, &peer, LeaveReason::Timeout);
        }
        for (peer, node) in elsewhere {
            self.moved(room_id, &peer, node, ver);
        }
        if !self.rooms.contains_key(room_id) {
            return true;
        }
        let mut new = new;
        new.sort_by_key(|p| p.seq);
        for p in new {
            self.add_remote(room_id, p);
        }
        true
    }

    /// A peer joined on another node: added to the replica and announced here.
    pub(super) fn add_remote(&mut self, room_id: &RoomId, p: RemotePeer) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        if room.peers.contains_key(&p.info.id) {
            return;
        }
        let announce = Frame::new(&ServerMessage::PeerJoined(PeerJoined {
            peer: p.info.clone(),
        }));
        room.peers.insert(PeerState::remote(p));
        let conns = attached_conns(room, None);
        let detached = detached_peers(room);
        self.push_deliver(conns, announce.clone());
        self.buffer_for(room_id, &detached, &announce);
    }

    /// Rooms this node holds local peers in.
    pub fn local_rooms(&self) -> Vec<RoomId> {
        self.rooms.keys().cloned().collect()
    }

    /// This node's peers, for re-registering them with the directory.
    pub fn local_peers(&self) -> Vec<LocalPeer> {
        let mut out = Vec::with_capacity(self.sessions.len());
        for (room_id, room) in &self.rooms {
            for p in room.peers.values() {
                if let At::Here {
                    session,
                    secret: Secret::Plain(secret),
                    ..
                } = &p.at
                {
                    out.push(LocalPeer {
                        room: room_id.clone(),
                        room_ver: room.ver,
                        info: p.info.clone(),
                        permissions: p.permissions,
                        seq: p.seq,
                        session: session.clone(),
                        secret: secret.clone(),
                    });
                }
            }
        }
        out
    }

    /// Cluster: the directory says that a peer of this node left for good elsewhere while this
    /// node was cut off (it resumed on another node and left there, or its resume window passed
    /// as an orphan), and this node missed it. Its session here ends (an attached connection is
    /// closed with 4010, session expired) and the others here see it leave (`timeout`).
    pub fn handle_peer_gone(&mut self, room_id: &RoomId, peer_id: &PeerId) {
        let at = self
            .rooms
            .get(room_id)
            .and_then(|r| r.peers.get(peer_id))
            .map(|p| &p.at);
        let conn = match at {
            Some(At::Here {
                link: Link::Attached(conn),
                ..
            }) => Some(*conn),
            Some(At::Here { .. }) => None,
            _ => return,
        };
        self.remove_peer(room_id, peer_id, LeaveReason::Timeout);
        if let Some(conn) = conn {
            self.outputs.push_back(Output::Close {
                conn,
                code: CloseCode::SessionExpired,
            });
        }
    }
}
