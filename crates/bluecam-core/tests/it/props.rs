//! Property test: random sequences of joins, leaves, disconnects, resumes, sends, signals, time
//! and room closures, checked after every step against the hub's own invariants and against a
//! model of who must see what.
//!
//! The model mirrors membership (with the resume window and the resume buffer's frame count)
//! and checks, for every peer: every `message`/`signal` addressed to it arrives exactly once,
//! in send order, from the right sender of its own room (kept ones on resume); its view of the
//! room built from `joined`/`peer_joined`/`peer_left` matches the room; nothing reaches a
//! connection that is gone. Closes, `RoomVacated`, `ResumeBufferOverflow` and errors must be
//! exactly the expected ones.

use crate::support::{Seen, client, decode, join_request, room, send_frame, signal_frame};
use bluecam_core::{ConnId, CoreConfig, Hub, HubStats, JoinRejected, JoinRequest, Output};
use bluecam_proto::{
    CloseCode, ErrorCode, Identity, LeaveReason, PeerId, ResumeCredentials, RoomId, SessionId,
    SessionSecret,
};
use proptest::{prelude::*, sample::Index};
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

const ROOMS: usize = 3;
const MAX_PEERS: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);
/// Small, so that overflows happen often.
const BUFFER_FRAMES: usize = 2;

#[derive(Clone, Debug)]
enum Target {
    /// A peer of the sender's room (possibly the sender itself).
    Member(Index),
    Myself,
    Ghost(u8),
    /// A peer of another room, or one whose session ended.
    Stranger(Index),
}

#[derive(Clone, Debug)]
enum BadResume {
    WrongSecret,
    OtherIdentity,
    OtherRoom,
    /// Correct credentials of a session that has ended.
    Ended,
}

#[derive(Clone, Debug)]
enum Op {
    Join {
        room: usize,
        send_data: bool,
    },
    Leave(Index),
    /// The backend removes a peer, attached or detached.
    Kick(Index),
    Disconnect(Index),
    /// Resume a live session with its credentials: a detached one when `detached` and there is
    /// one, else any (an attached one is a takeover).
    Resume {
        pick: Index,
        detached: bool,
    },
    BadResume(Index, BadResume),
    /// A second join on an attached connection.
    JoinAgain(Index),
    /// A fresh join (new connection, no resume) by the identity of a live peer, attached or
    /// not: a reload. It takes that peer's seat (reason `replaced`).
    Rejoin(Index),
    Send {
        from: Index,
        to: Option<Vec<Target>>,
    },
    Signal {
        from: Index,
        to: Target,
    },
    /// Advance the clock by this many milliseconds and run `handle_timeout`.
    Advance(u64),
    CloseRoom(usize),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => any::<Index>().prop_map(Target::Member),
        1 => Just(Target::Myself),
        1 => (0u8..3).prop_map(Target::Ghost),
        1 => any::<Index>().prop_map(Target::Stranger),
    ]
}

fn bad_resume() -> impl Strategy<Value = BadResume> {
    prop_oneof![
        Just(BadResume::WrongSecret),
        Just(BadResume::OtherIdentity),
        Just(BadResume::OtherRoom),
        Just(BadResume::Ended),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Room 0 is the busy one, so that it fills up.
        5 => (prop_oneof![2 => Just(0), 1 => Just(1), 1 => Just(2)], prop::bool::weighted(0.85))
            .prop_map(|(room, send_data)| Op::Join { room, send_data }),
        1 => any::<Index>().prop_map(Op::Leave),
        1 => any::<Index>().prop_map(Op::Kick),
        5 => any::<Index>().prop_map(Op::Disconnect),
        3 => (any::<Index>(), prop::bool::weighted(0.75))
            .prop_map(|(pick, detached)| Op::Resume { pick, detached }),
        1 => (any::<Index>(), bad_resume()).prop_map(|(i, b)| Op::BadResume(i, b)),
        1 => any::<Index>().prop_map(Op::JoinAgain),
        2 => any::<Index>().prop_map(Op::Rejoin),
        8 => (
            any::<Index>(),
            prop::option::weighted(0.6, prop::collection::vec(target(), 0..4))
        )
            .prop_map(|(from, to)| Op::Send { from, to }),
        3 => (any::<Index>(), target()).prop_map(|(from, to)| Op::Signal { from, to }),
        3 => (0u64..12_000).prop_map(Op::Advance),
        1 => (0..ROOMS).prop_map(Op::CloseRoom),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn hub_keeps_its_invariants_and_routes_as_the_model_says(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        let mut sim = Sim::new();
        for (i, op) in ops.iter().enumerate() {
            sim.step(op)
                .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    Attached(ConnId),
    Detached { expires: Instant },
}

/// A live peer as the model sees it, plus what its client has observed.
#[derive(Debug)]
struct MPeer {
    id: PeerId,
    room: usize,
    identity: Identity,
    session: SessionId,
    secret: SessionSecret,
    send_data: bool,
    link: Link,
    /// Frames kept for it since it detached.
    kept: usize,
    /// (sender, seq) of every `message`/`signal` addressed to it, in send order.
    expected: Vec<(PeerId, u64)>,
    /// (sender, seq) of every `message`/`signal` its connections received.
    received: Vec<(PeerId, u64)>,
    /// The other peers, as its client tracks them from `joined`, `peer_joined`, `peer_left`.
    view: BTreeSet<PeerId>,
}

/// A session that ended (left, timed out, overflowed, room closed).
#[derive(Debug)]
struct Ended {
    room: usize,
    peer: PeerId,
    identity: Identity,
    creds: ResumeCredentials,
}

/// An `error` frame to `conn`.
#[derive(Debug, PartialEq)]
struct ExpectedError {
    conn: ConnId,
    code: ErrorCode,
    reference: Option<u64>,
    peers: Option<Vec<PeerId>>,
}

/// What one step must output, besides `message`/`signal` frames and room views.
#[derive(Debug, Default)]
struct Expect {
    closes: Vec<(ConnId, CloseCode)>,
    vacated: Vec<RoomId>,
    overflows: Vec<PeerId>,
    errors: Vec<ExpectedError>,
    /// (conn, peer, resumed, the other peers when it was admitted, in join order)
    joined: Option<(ConnId, PeerId, bool, Vec<PeerId>)>,
    room_closed: Vec<ConnId>,
    /// Peers gone for good, which the directory must be told of (`PeerRemoved`).
    removed: Vec<(RoomId, PeerId, LeaveReason)>,
    /// The sender of this step's `message`/`signal` frames, and the seq it carries.
    sent: Option<(PeerId, u64)>,
}

struct Sim {
    hub: Hub,
    now: Instant,
    next: u64,
    /// Live peers in global join order (so filtering by room gives each room's join order).
    peers: Vec<MPeer>,
    ended: Vec<Ended>,
    room_of: HashMap<PeerId, usize>,
    left_reason: HashMap<PeerId, LeaveReason>,
    /// Every connection ever opened, with its peer.
    conn_peer: HashMap<ConnId, PeerId>,
    /// Connections that are gone (socket lost or closed by the hub).
    closed: HashSet<ConnId>,
    expect: Expect,
}

fn room_access(i: usize) -> bluecam_core::RoomAccess {
    room(&format!("room-{i}"), MAX_PEERS)
}

fn room_id(i: usize) -> RoomId {
    RoomId::new(format!("room-{i}"))
}

/// The seq in a payload written as `{"seq":N}`.
fn seq_of(payload: &str) -> Result<u64, String> {
    payload
        .strip_prefix(r#"{"seq":"#)
        .and_then(|s| s.strip_suffix('}'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("payload not forwarded as written: {payload}"))
}

impl Sim {
    fn new() -> Self {
        Self {
            hub: Hub::new(CoreConfig {
                resume_window: WINDOW,
                resume_buffer_frames: BUFFER_FRAMES,
                resume_buffer_bytes: 1 << 30,
            }),
            now: Instant::now(),
            next: 0,
            peers: Vec::new(),
            ended: Vec::new(),
            room_of: HashMap::new(),
            left_reason: HashMap::new(),
            conn_peer: HashMap::new(),
            closed: HashSet::new(),
            expect: Expect::default(),
        }
    }

    fn fresh_conn(&mut self) -> ConnId {
        self.next += 1;
        ConnId(self.next)
    }

    fn members(&self, room: usize) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|p| p.room == room)
            .map(|p| p.id.clone())
            .collect()
    }

    /// The peers of `room` but `me`, in join order.
    fn others(&self, room: usize, me: &PeerId) -> Vec<PeerId> {
        self.members(room).into_iter().filter(|p| p != me).collect()
    }

    fn peer(&self, id: &PeerId) -> Option<&MPeer> {
        self.peers.iter().find(|p| &p.id == id)
    }

    fn peer_mut(&mut self, id: &PeerId) -> Option<&mut MPeer> {
        self.peers.iter_mut().find(|p| &p.id == id)
    }

    fn attached(&self) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|p| matches!(p.link, Link::Attached(_)))
            .map(|p| p.id.clone())
            .collect()
    }

    fn conn_of(&self, id: &PeerId) -> Option<ConnId> {
        match self.peer(id)?.link {
            Link::Attached(c) => Some(c),
            Link::Detached { .. } => None,
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        self.expect = Expect::default();
        self.apply(op)?;
        self.hub.check_invariants()?;
        let outputs: Vec<Output> = std::iter::from_fn(|| self.hub.poll_output()).collect();
        self.observe(outputs)?;
        self.check_state()
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Join { room, send_data } => self.join(*room, *send_data, None),
            Op::Rejoin(i) => {
                if self.peers.is_empty() {
                    return Ok(());
                }
                let p = &self.peers[i.index(self.peers.len())];
                let (room, send_data, old) = (p.room, p.send_data, p.id.clone());
                self.join(room, send_data, Some(old))
            }
            Op::Leave(i) => {
                let attached = self.attached();
                if attached.is_empty() {
                    return Ok(());
                }
                let id = attached[i.index(attached.len())].clone();
                let conn = self.conn_of(&id).ok_or("attached without conn")?;
                self.hub.handle_message(conn, client(r#"{"op":"leave"}"#));
                self.expect.closes.push((conn, CloseCode::Normal));
                self.remove(&id, LeaveReason::Left);
                Ok(())
            }
            Op::Kick(i) => {
                if self.peers.is_empty() {
                    return Ok(());
                }
                let p = &self.peers[i.index(self.peers.len())];
                let (id, room) = (p.id.clone(), p.room);
                let conn = self.conn_of(&id);
                if !self.hub.handle_kick(&room_id(room), &id) {
                    return Err(format!("{id} not kicked"));
                }
                if let Some(conn) = conn {
                    self.expect.closes.push((conn, CloseCode::Kicked));
                    self.closed.insert(conn);
                }
                self.remove(&id, LeaveReason::Kicked);
                Ok(())
            }
            Op::Disconnect(i) => {
                let attached = self.attached();
                if attached.is_empty() {
                    return Ok(());
                }
                let id = attached[i.index(attached.len())].clone();
                let conn = self.conn_of(&id).ok_or("attached without conn")?;
                self.hub.handle_disconnect(conn, self.now);
                self.closed.insert(conn);
                let expires = self.now + WINDOW;
                let p = self.peer_mut(&id).ok_or("no peer")?;
                p.link = Link::Detached { expires };
                p.kept = 0;
                Ok(())
            }
            Op::Resume { pick, detached } => self.resume(pick, *detached),
            Op::BadResume(i, kind) => self.bad_resume(i, kind),
            Op::JoinAgain(i) => {
                let attached = self.attached();
                if attached.is_empty() {
                    return Ok(());
                }
                let id = attached[i.index(attached.len())].clone();
                let n = self.fresh_conn().0; // ids of a join that must be refused
                let p = self.peer(&id).ok_or("no peer")?;
                let conn = self.conn_of(&id).ok_or("attached without conn")?;
                let req = join_request(conn, &room_access(p.room), p.identity.as_str(), n);
                expect_refusal(self.hub.handle_join(req), JoinRejected::AlreadyJoined)
            }
            Op::Send { from, to } => self.send(from, to.as_deref()),
            Op::Signal { from, to } => self.signal(from, to),
            Op::Advance(ms) => {
                self.now += Duration::from_millis(*ms);
                self.hub.handle_timeout(self.now);
                self.expire();
                Ok(())
            }
            Op::CloseRoom(room) => {
                self.hub
                    .handle_room_closed(&room_id(*room), bluecam_proto::RoomClosedReason::Deleted);
                for id in self.members(*room) {
                    if let Some(conn) = self.conn_of(&id) {
                        self.expect.room_closed.push(conn);
                        self.expect.closes.push((conn, CloseCode::RoomClosed));
                    }
                    self.end(&id);
                }
                Ok(())
            }
        }
    }

    /// A new peer in `room`; with `replacing`, under that peer's identity (it is replaced).
    fn join(
        &mut self,
        room: usize,
        send_data: bool,
        replacing: Option<PeerId>,
    ) -> Result<(), String> {
        let conn = self.fresh_conn();
        let identity = match &replacing {
            Some(old) => self.peer(old).ok_or("no peer")?.identity.to_string(),
            None => format!("user-{}", conn.0),
        };
        let mut req = join_request(conn, &room_access(room), &identity, conn.0);
        req.permissions.send_data = send_data;
        let fresh_peer = req.fresh.peer.clone();
        let result = self.hub.handle_join(req.clone());
        if let Some(old) = &replacing {
            // The old seat is freed first: peer_left (replaced) before the newcomer's join.
            if let Some(c) = self.conn_of(old) {
                self.expect.closes.push((c, CloseCode::Superseded));
            }
            self.remove(old, LeaveReason::Replaced);
        }
        let full = self.members(room).len() >= MAX_PEERS as usize;
        if full {
            return expect_refusal(result, JoinRejected::RoomFull);
        }
        let id = result.map_err(|e| format!("join refused: {e:?}"))?;
        if id != fresh_peer {
            return Err(format!(
                "new peer got id {id:?}, not the fresh {fresh_peer:?}"
            ));
        }
        let detached_others = self.detached_in(room);
        self.conn_peer.insert(conn, id.clone());
        self.room_of.insert(id.clone(), room);
        self.peers.push(MPeer {
            id: id.clone(),
            room,
            identity: req.identity,
            session: req.fresh.session,
            secret: req.fresh.secret,
            send_data,
            link: Link::Attached(conn),
            kept: 0,
            expected: Vec::new(),
            received: Vec::new(),
            view: BTreeSet::new(),
        });
        // The joiner's peer list is taken before the peer_joined kept for others can
        // overflow one of them (it then learns of that peer's peer_left).
        let others = self.others(room, &id);
        self.expect.joined = Some((conn, id, false, others));
        self.keep(detached_others);
        Ok(())
    }

    fn resume(&mut self, pick: &Index, detached: bool) -> Result<(), String> {
        let mut candidates: Vec<usize> = (0..self.peers.len())
            .filter(|k| matches!(self.peers[*k].link, Link::Detached { .. }))
            .collect();
        if !detached || candidates.is_empty() {
            candidates = (0..self.peers.len()).collect();
        }
        if candidates.is_empty() {
            return Ok(());
        }
        let k = candidates[pick.index(candidates.len())];
        let conn = self.fresh_conn();
        let p = &self.peers[k];
        let id = p.id.clone();
        let req = self.resume_request(conn, p.room, p.identity.clone(), &p.session, &p.secret);
        let got = self
            .hub
            .handle_join(req)
            .map_err(|e| format!("resume refused: {e:?}"))?;
        if got != id {
            return Err(format!("resume gave {got:?}, not {id:?}"));
        }
        let p = &mut self.peers[k];
        if let Link::Attached(old) = p.link {
            self.expect.closes.push((old, CloseCode::Replaced));
        }
        p.link = Link::Attached(conn);
        p.kept = 0;
        self.conn_peer.insert(conn, id.clone());
        let others = self.others(self.peers[k].room, &id);
        self.expect.joined = Some((conn, id, true, others));
        Ok(())
    }

    fn resume_request(
        &self,
        conn: ConnId,
        room: usize,
        identity: Identity,
        session: &SessionId,
        secret: &SessionSecret,
    ) -> JoinRequest {
        let mut req = join_request(conn, &room_access(room), identity.as_str(), conn.0);
        req.resume = Some(ResumeCredentials {
            session: session.clone(),
            secret: secret.clone(),
        });
        req
    }

    fn bad_resume(&mut self, i: &Index, kind: &BadResume) -> Result<(), String> {
        let conn = self.fresh_conn();
        let (req, want) = match kind {
            BadResume::Ended => {
                if self.ended.is_empty() {
                    return Ok(());
                }
                let e = &self.ended[i.index(self.ended.len())];
                let req = self.resume_request(
                    conn,
                    e.room,
                    e.identity.clone(),
                    &e.creds.session,
                    &e.creds.secret,
                );
                if self.room_of.get(&e.peer) != Some(&e.room) {
                    return Err("ended peer lost its room".into());
                }
                (req, JoinRejected::SessionExpired)
            }
            _ => {
                if self.peers.is_empty() {
                    return Ok(());
                }
                let p = &self.peers[i.index(self.peers.len())];
                let (room, identity, secret, want) = match kind {
                    BadResume::WrongSecret => (
                        p.room,
                        p.identity.clone(),
                        SessionSecret::new("wrong"),
                        JoinRejected::SessionExpired,
                    ),
                    BadResume::OtherIdentity => (
                        p.room,
                        Identity::new("intruder"),
                        p.secret.clone(),
                        JoinRejected::Unauthorized,
                    ),
                    _ => (
                        (p.room + 1) % ROOMS,
                        p.identity.clone(),
                        p.secret.clone(),
                        JoinRejected::Unauthorized,
                    ),
                };
                let req = self.resume_request(conn, room, identity, &p.session, &secret);
                (req, want)
            }
        };
        expect_refusal(self.hub.handle_join(req), want)
    }

    /// The sender for a `send`/`signal`: an attached peer.
    fn sender(&self, i: &Index) -> Option<(PeerId, ConnId, usize, bool)> {
        let attached = self.attached();
        if attached.is_empty() {
            return None;
        }
        let id = attached[i.index(attached.len())].clone();
        let p = self.peer(&id)?;
        Some((id, self.conn_of(&p.id)?, p.room, p.send_data))
    }

    fn resolve(&self, target: &Target, me: &PeerId, room: usize) -> PeerId {
        match target {
            Target::Member(i) => {
                let members = self.members(room);
                members[i.index(members.len())].clone()
            }
            Target::Myself => me.clone(),
            Target::Ghost(n) => PeerId::new(format!("ghost-{n}")),
            Target::Stranger(i) => {
                let mut strangers: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|p| p.room != room)
                    .map(|p| p.id.clone())
                    .chain(self.ended.iter().map(|e| e.peer.clone()))
                    .collect();
                if strangers.is_empty() {
                    strangers.push(PeerId::new("ghost-stranger"));
                }
                strangers[i.index(strangers.len())].clone()
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn send(&mut self, from: &Index, to: Option<&[Target]>) -> Result<(), String> {
        let Some((me, conn, room, send_data)) = self.sender(from) else {
            return Ok(());
        };
        let seq = self.next_seq();
        let to: Option<Vec<PeerId>> =
            to.map(|list| list.iter().map(|t| self.resolve(t, &me, room)).collect());
        let refs: Option<Vec<&PeerId>> = to.as_ref().map(|l| l.iter().collect());
        let text = send_frame(refs.as_deref(), &format!(r#"{{"seq":{seq}}}"#), Some(seq));
        self.hub.handle_message(conn, client(&text));
        if !send_data {
            self.expect.errors.push(ExpectedError {
                conn,
                code: ErrorCode::PermissionDenied,
                reference: Some(seq),
                peers: None,
            });
            return Ok(());
        }
        let members: BTreeSet<PeerId> = self.members(room).into_iter().collect();
        let (targets, unknown): (Vec<PeerId>, Vec<PeerId>) = match to {
            None => (
                members.iter().filter(|p| **p != me).cloned().collect(),
                Vec::new(),
            ),
            Some(mut list) => {
                list.sort();
                list.dedup();
                list.into_iter()
                    .partition(|p| *p != me && members.contains(p))
            }
        };
        if !unknown.is_empty() {
            self.expect.errors.push(ExpectedError {
                conn,
                code: ErrorCode::UnknownPeer,
                reference: Some(seq),
                peers: Some(unknown),
            });
        }
        self.route(me, seq, targets);
        Ok(())
    }

    fn signal(&mut self, from: &Index, to: &Target) -> Result<(), String> {
        let Some((me, conn, room, _)) = self.sender(from) else {
            return Ok(());
        };
        let seq = self.next_seq();
        let to = self.resolve(to, &me, room);
        let text = signal_frame(&to, &format!(r#"{{"seq":{seq}}}"#), Some(seq));
        self.hub.handle_message(conn, client(&text));
        if to == me || self.peer(&to).is_none_or(|p| p.room != room) {
            self.expect.errors.push(ExpectedError {
                conn,
                code: ErrorCode::UnknownPeer,
                reference: Some(seq),
                peers: Some(vec![to]),
            });
            return Ok(());
        }
        self.route(me, seq, vec![to]);
        Ok(())
    }

    /// Records `(from, seq)` as addressed to each target; keeps it for detached ones.
    fn route(&mut self, from: PeerId, seq: u64, targets: Vec<PeerId>) {
        let mut detached = Vec::new();
        for t in &targets {
            if let Some(p) = self.peer_mut(t) {
                p.expected.push((from.clone(), seq));
                if matches!(p.link, Link::Detached { .. }) {
                    detached.push(t.clone());
                }
            }
        }
        self.expect.sent = Some((from, seq));
        self.keep(detached);
    }

    fn detached_in(&self, room: usize) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|p| p.room == room && matches!(p.link, Link::Detached { .. }))
            .map(|p| p.id.clone())
            .collect()
    }

    /// One frame kept for each of `targets` (detached peers of `room`); a full buffer ends
    /// the session, and that `peer_left` is kept for the others in turn.
    fn keep(&mut self, targets: Vec<PeerId>) {
        let mut overflowed = Vec::new();
        for t in targets {
            if let Some(p) = self.peer_mut(&t) {
                if p.kept < BUFFER_FRAMES {
                    p.kept += 1;
                } else {
                    overflowed.push(t);
                }
            }
        }
        for t in overflowed {
            if self.peer(&t).is_some() {
                self.expect.overflows.push(t.clone());
                self.remove(&t, LeaveReason::Timeout);
            }
        }
    }

    /// Ends a peer's session without telling anyone.
    fn end(&mut self, id: &PeerId) -> Option<usize> {
        let k = self.peers.iter().position(|p| &p.id == id)?;
        let p = self.peers.remove(k);
        self.ended.push(Ended {
            room: p.room,
            peer: p.id,
            identity: p.identity,
            creds: ResumeCredentials {
                session: p.session,
                secret: p.secret,
            },
        });
        Some(p.room)
    }

    /// Removes a peer: the others are told (or the room is vacated).
    fn remove(&mut self, id: &PeerId, reason: LeaveReason) {
        let Some(room) = self.end(id) else {
            return;
        };
        self.expect
            .removed
            .push((room_id(room), id.clone(), reason));
        self.left_reason.insert(id.clone(), reason);
        if self.members(room).is_empty() {
            self.expect.vacated.push(room_id(room));
            return;
        }
        let detached = self.detached_in(room);
        self.keep(detached);
    }

    /// Ends the sessions whose window has passed, in the hub's order (expiry, then session).
    fn expire(&mut self) {
        loop {
            let next = self
                .peers
                .iter()
                .filter_map(|p| match p.link {
                    Link::Detached { expires } if expires <= self.now => {
                        Some((expires, p.session.clone(), p.id.clone()))
                    }
                    _ => None,
                })
                .min();
            let Some((_, _, id)) = next else {
                return;
            };
            self.remove(&id, LeaveReason::Timeout);
        }
    }

    /// Checks the outputs of one step, in order, and applies them to the clients' views.
    fn observe(&mut self, outputs: Vec<Output>) -> Result<(), String> {
        let mut joined_seen = false;
        for output in outputs {
            match output {
                Output::Deliver { conns, frame } => {
                    let seen = decode(&frame);
                    let mut unique = conns.clone();
                    unique.sort();
                    unique.dedup();
                    if unique.len() != conns.len() {
                        return Err(format!("a conn listed twice: {conns:?}"));
                    }
                    for conn in conns {
                        self.deliver(conn, &seen, &mut joined_seen)?;
                    }
                }
                Output::Close { conn, code } => {
                    take(&mut self.expect.closes, &(conn, code))
                        .ok_or_else(|| format!("unexpected close {conn:?} {code:?}"))?;
                    self.closed.insert(conn);
                }
                Output::RoomVacated { room } => {
                    take(&mut self.expect.vacated, &room)
                        .ok_or_else(|| format!("unexpected RoomVacated {room:?}"))?;
                }
                Output::ResumeBufferOverflow { room, peer } => {
                    take(&mut self.expect.overflows, &peer)
                        .ok_or_else(|| format!("unexpected overflow of {peer:?}"))?;
                    if self.room_of.get(&peer).map(|r| room_id(*r)) != Some(room) {
                        return Err(format!("overflow of {peer:?} names the wrong room"));
                    }
                }
                // Exactly the peers the model removed, each once, with its reason (a deleted
                // room's peers are not: the directory drops the whole room).
                Output::PeerRemoved {
                    room, peer, reason, ..
                } => {
                    take(
                        &mut self.expect.removed,
                        &(room.clone(), peer.clone(), reason),
                    )
                    .ok_or_else(|| format!("unexpected PeerRemoved {peer:?} in {room:?}"))?;
                }
                Output::Publish { .. } | Output::Undeliverable { .. } | Output::Directory(_) => {
                    return Err(format!("cluster output on a single node: {output:?}"));
                }
                // (The error frame the sender gets is checked by the model.)
                Output::UnknownPeers { .. } => {}
            }
        }
        let e = &self.expect;
        if !e.closes.is_empty()
            || !e.vacated.is_empty()
            || !e.overflows.is_empty()
            || !e.errors.is_empty()
            || !e.room_closed.is_empty()
            || !e.removed.is_empty()
            || (e.joined.is_some() && !joined_seen)
        {
            return Err(format!("missing outputs: {e:?}"));
        }
        Ok(())
    }

    fn deliver(&mut self, conn: ConnId, seen: &Seen, joined_seen: &mut bool) -> Result<(), String> {
        if self.closed.contains(&conn) {
            return Err(format!("{seen:?} queued to the gone {conn:?}"));
        }
        let peer_id = self
            .conn_peer
            .get(&conn)
            .cloned()
            .ok_or_else(|| format!("{seen:?} queued to unknown {conn:?}"))?;
        if let Seen::RoomClosed(_) = seen {
            return take(&mut self.expect.room_closed, &conn)
                .map(|_| ())
                .ok_or_else(|| format!("unexpected room_closed to {conn:?}"));
        }
        if self.conn_of(&peer_id) != Some(conn) {
            return Err(format!(
                "{seen:?} to {conn:?}, which is not {peer_id:?}'s conn"
            ));
        }
        let is_joined = matches!(seen, Seen::Joined(_));
        if self.expect.joined.as_ref().is_some_and(|j| j.0 == conn) && !is_joined && !*joined_seen {
            return Err(format!("{seen:?} before joined"));
        }
        let room = self.room_of[&peer_id];
        let same_room = |sim: &Self, other: &PeerId| -> Result<(), String> {
            match sim.room_of.get(other) {
                Some(r) if *r == room => Ok(()),
                _ => Err(format!(
                    "{peer_id:?} got {seen:?} about a peer of another room"
                )),
            }
        };
        match seen {
            Seen::Joined(j) => {
                let Some((_, _, resumed, want)) = self
                    .expect
                    .joined
                    .as_ref()
                    .filter(|e| e.0 == conn && e.1 == peer_id && !*joined_seen)
                else {
                    return Err(format!("unexpected joined {j:?}"));
                };
                *joined_seen = true;
                if j.self_.id != peer_id || j.resumed != *resumed {
                    return Err(format!("joined.self or resumed wrong: {j:?}"));
                }
                let peers: Vec<PeerId> = j.peers.iter().map(|p| p.id.clone()).collect();
                if peers != *want {
                    return Err(format!("joined.peers {peers:?}, want {want:?}"));
                }
                self.peer_mut(&peer_id).ok_or("no peer")?.view = peers.into_iter().collect();
            }
            Seen::PeerJoined(info) => {
                same_room(self, &info.id)?;
                if info.id == peer_id {
                    return Err("peer_joined about oneself".into());
                }
                self.peer_mut(&peer_id)
                    .ok_or("no peer")?
                    .view
                    .insert(info.id.clone());
            }
            Seen::PeerLeft { peer, reason } => {
                same_room(self, peer)?;
                if self.left_reason.get(peer) != Some(reason) {
                    return Err(format!("peer_left {peer:?} with reason {reason:?}"));
                }
                self.peer_mut(&peer_id).ok_or("no peer")?.view.remove(peer);
            }
            Seen::Message { from, msg: payload }
            | Seen::Signal {
                from,
                data: payload,
            } => {
                same_room(self, from)?;
                if *from == peer_id {
                    return Err("a frame came back to its sender".into());
                }
                let seq = seq_of(payload)?;
                // Live frames carry this step's seq; kept ones come with a resume.
                let live = self.expect.sent == Some((from.clone(), seq));
                let resuming = self.expect.joined.as_ref().is_some_and(|j| j.0 == conn);
                if !live && !resuming {
                    return Err(format!("{seen:?} out of nowhere"));
                }
                let p = self.peer_mut(&peer_id).ok_or("no peer")?;
                p.received.push((from.clone(), seq));
            }
            Seen::Error(e) => {
                let key = ExpectedError {
                    conn,
                    code: e.code,
                    reference: e.reference,
                    peers: e.peers.clone(),
                };
                take(&mut self.expect.errors, &key)
                    .ok_or_else(|| format!("unexpected error {e:?} to {conn:?}"))?;
            }
            // (The model sends none.)
            Seen::ServerMessage { .. } => return Err(format!("unexpected {seen:?}")),
            Seen::RoomClosed(_) | Seen::Ping | Seen::Pong => {
                return Err(format!("unexpected {seen:?}"));
            }
        }
        Ok(())
    }

    /// After a step: every attached client saw everything addressed to it, the views match,
    /// and the hub's counts and timer match the model.
    fn check_state(&self) -> Result<(), String> {
        for p in &self.peers {
            match p.link {
                Link::Attached(_) => {
                    if p.received != p.expected {
                        return Err(format!(
                            "{:?} received {:?}, expected {:?}",
                            p.id, p.received, p.expected
                        ));
                    }
                    let want: BTreeSet<PeerId> = self
                        .members(p.room)
                        .into_iter()
                        .filter(|id| *id != p.id)
                        .collect();
                    if p.view != want {
                        return Err(format!("{:?} sees {:?}, room has {want:?}", p.id, p.view));
                    }
                }
                Link::Detached { .. } => {
                    if !p.expected.starts_with(&p.received) {
                        return Err(format!(
                            "detached {:?} received {:?}, expected {:?}",
                            p.id, p.received, p.expected
                        ));
                    }
                }
            }
        }
        for room in 0..ROOMS {
            let hub: Vec<PeerId> = self
                .hub
                .peers(&room_id(room))
                .into_iter()
                .map(|p| p.id)
                .collect();
            if hub != self.members(room) {
                return Err(format!(
                    "room {room}: hub has {hub:?}, model {:?}",
                    self.members(room)
                ));
            }
        }
        let detached: Vec<Instant> = self
            .peers
            .iter()
            .filter_map(|p| match p.link {
                Link::Detached { expires } => Some(expires),
                Link::Attached(_) => None,
            })
            .collect();
        let stats = HubStats {
            rooms: (0..ROOMS).filter(|r| !self.members(*r).is_empty()).count(),
            peers: self.peers.len(),
            detached: detached.len(),
        };
        if self.hub.stats() != stats {
            return Err(format!("stats {:?}, model {stats:?}", self.hub.stats()));
        }
        if self.hub.poll_timeout() != detached.iter().min().copied() {
            return Err(format!("poll_timeout {:?}", self.hub.poll_timeout()));
        }
        for p in &self.peers {
            if let Link::Attached(c) = p.link
                && self.hub.peer_of(c) != Some(&(room_id(p.room), p.id.clone()))
            {
                return Err(format!("peer_of({c:?}) is not {:?}", p.id));
            }
        }
        Ok(())
    }
}

fn expect_refusal(result: Result<PeerId, JoinRejected>, want: JoinRejected) -> Result<(), String> {
    match result {
        Err(e) if e == want => Ok(()),
        other => Err(format!("expected {want:?}, got {other:?}")),
    }
}

/// Removes one element equal to `item`.
fn take<T: PartialEq>(list: &mut Vec<T>, item: &T) -> Option<T> {
    let k = list.iter().position(|x| x == item)?;
    Some(list.remove(k))
}
