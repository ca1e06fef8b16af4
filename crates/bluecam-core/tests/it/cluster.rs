//! The core in cluster mode: rooms that hold peers of other nodes, events from the directory
//! (in order, late, or early while a join is in flight), hand-over of a session, and frames
//! to and from other nodes. The shell's part (Redis) is played by the test.

use crate::support::*;
use bluecam_core::{ClaimedSession, ClusterView, Frame, Output, RemotePeer, RoomAccess, RoomEvent};
use bluecam_proto::{
    CloseCode, Identity, LeaveReason, MessageFrame, NodeId, PeerId, PeerInfo, Permissions,
    RawValue, ServerMessage,
};
use std::borrow::Cow;

fn remote(id: &str, node: &str, seq: u64) -> RemotePeer {
    RemotePeer {
        info: PeerInfo {
            id: PeerId::new(id),
            identity: Identity::new(id),
            name: None,
            metadata: None,
        },
        node: NodeId::new(node),
        seq,
    }
}

fn view(ver: u64, seq: u64, peers: Vec<RemotePeer>) -> ClusterView {
    ClusterView {
        ver,
        seq,
        peers,
        claimed: None,
        pending_here: Vec::new(),
        replaced: Vec::new(),
    }
}

/// A cluster join of `identity` into `room`, as the directory answered it.
fn cluster_join(
    world: &mut World,
    room: &RoomAccess,
    identity: &str,
    v: ClusterView,
) -> (Client, Outbox) {
    let mut req = world.request(room, identity);
    req.cluster = Some(v);
    world.hub.begin_cluster_join(&room.summary.id);
    world.admit(req)
}

/// What the directory records of a peer of this node.
fn peer_info(c: &Client) -> PeerInfo {
    PeerInfo {
        id: c.peer.clone(),
        identity: c.identity.clone(),
        name: None,
        metadata: None,
    }
}

fn message_from(from: &str, text: &str) -> Frame {
    let raw = RawValue::from_string(format!("\"{text}\"")).unwrap();
    Frame::new(&ServerMessage::Message(MessageFrame {
        from: PeerId::new(from),
        msg: Cow::Owned(raw),
    }))
}

fn publishes(out: &Outbox) -> Vec<(NodeId, Vec<PeerId>, Frame)> {
    out.outputs
        .iter()
        .filter_map(|o| match o {
            Output::Publish {
                node, to, frame, ..
            } => Some((node.clone(), to.clone(), frame.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_join_sees_the_peers_of_other_nodes_and_frames_to_them_are_published_once_per_node() {
    let mut w = World::new();
    let room = room("r", 10);
    let peers = vec![
        remote("b1", "nb", 1),
        remote("b2", "nb", 2),
        remote("c1", "nc", 3),
    ];
    let (alice, out) = cluster_join(&mut w, &room, "alice", view(4, 4, peers));
    let joined = out.to(alice.conn)[0].joined().clone();
    let ids: Vec<&str> = joined.peers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["b1", "b2", "c1"], "in the cluster's join order");
    // A broadcast: one publish per other node, never one per peer.
    w.hub
        .handle_message(alice.conn, client(&send_frame(None, "1", Some(9))));
    let out = w.drain();
    let mut sent = publishes(&out);
    sent.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].0, NodeId::new("nb"));
    let mut to = sent[0].1.clone();
    to.sort();
    assert_eq!(to, [PeerId::new("b1"), PeerId::new("b2")]);
    assert_eq!(sent[1].1, [PeerId::new("c1")]);
    assert!(out.to(alice.conn).is_empty(), "no echo, no error");
    w.hub.check_invariants().unwrap();
}

#[test]
fn a_frame_from_another_node_reaches_only_peers_of_this_node() {
    let mut w = World::new();
    let room = room("r", 10);
    let (alice, _) = cluster_join(
        &mut w,
        &room,
        "alice",
        view(2, 2, vec![remote("b1", "nb", 1)]),
    );
    let frame = message_from("b1", "hi");
    w.hub.handle_room_event(
        &room.summary.id,
        0,
        RoomEvent::Frame {
            to: vec![alice.peer.clone(), PeerId::new("b1"), PeerId::new("gone")],
            frame,
        },
    );
    let out = w.drain();
    assert!(matches!(&out.to(alice.conn)[..], [Seen::Message { msg, .. }] if msg == "\"hi\""));
    // b1 is on another node: never published again (two nodes that disagree for a moment
    // must not bounce a frame between them); it and the unknown id are counted.
    assert!(publishes(&out).is_empty());
    assert!(
        out.outputs
            .iter()
            .any(|o| matches!(o, Output::Undeliverable { peers: 2, .. }))
    );
}

#[test]
fn events_that_arrive_while_the_join_waits_for_the_directory_are_applied_after_it() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    w.hub.begin_cluster_join(&id);
    // Published before our join's answer was handled: one the snapshot has (ver 3), one
    // it has not (ver 5), and a frame for the joiner-to-be.
    w.hub
        .handle_room_event(&id, 3, RoomEvent::Joined(remote("b1", "nb", 3)));
    w.hub
        .handle_room_event(&id, 5, RoomEvent::Joined(remote("c1", "nc", 5)));
    let mut req = w.request(&room, "alice");
    let alice_peer = req.fresh.peer.clone();
    w.hub.handle_room_event(
        &id,
        0,
        RoomEvent::Frame {
            to: vec![alice_peer.clone()],
            frame: message_from("b1", "early"),
        },
    );
    req.cluster = Some(view(4, 4, vec![remote("b1", "nb", 3)]));
    let (alice, out) = w.admit(req);
    let seen = out.to(alice.conn);
    let ids: Vec<&str> = seen[0]
        .joined()
        .peers
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(ids, ["b1"]);
    assert!(
        matches!(&seen[1], Seen::PeerJoined(p) if p.id.as_str() == "c1"),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[2], Seen::Message { msg, .. } if msg == "\"early\""),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 3, "b1 is not announced twice: {seen:?}");
    // A late event the replica already reflects changes nothing.
    w.hub
        .handle_room_event(&id, 5, RoomEvent::Joined(remote("c1", "nc", 5)));
    assert!(w.drain().is_empty());
    w.hub.check_invariants().unwrap();
}

#[test]
fn a_peer_that_left_another_node_is_announced_and_the_last_local_leave_is_reported() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(
        &mut w,
        &room,
        "alice",
        view(2, 2, vec![remote("b1", "nb", 1)]),
    );
    w.hub.handle_room_event(
        &id,
        3,
        RoomEvent::Left {
            peer: PeerId::new("b1"),
            reason: LeaveReason::Timeout,
        },
    );
    let out = w.drain();
    assert!(matches!(
        &out.to(alice.conn)[..],
        [Seen::PeerLeft { peer, reason: LeaveReason::Timeout }] if peer.as_str() == "b1"
    ));
    // Alice leaves: the shell is told to remove her from the directory; the replica goes.
    w.hub
        .handle_message(alice.conn, client(r#"{"op":"leave"}"#));
    let out = w.drain();
    assert!(out.outputs.iter().any(|o| matches!(
        o,
        Output::PeerRemoved { peer, reason: LeaveReason::Left, .. } if *peer == alice.peer
    )));
    assert_eq!(out.vacated(), std::slice::from_ref(&id));
    assert!(w.hub.local_rooms().is_empty());
    w.hub.check_invariants().unwrap();
}

#[test]
fn a_session_moved_to_another_node_takes_its_kept_frames_along_in_order() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(
        &mut w,
        &room,
        "alice",
        view(2, 2, vec![remote("b1", "nb", 1)]),
    );
    let (carol, _) = cluster_join(&mut w, &room, "carol", view(3, 3, vec![]));
    w.hub.handle_disconnect(carol.conn, w.at(1));
    for text in ["one", "two"] {
        w.hub.handle_room_event(
            &id,
            0,
            RoomEvent::Frame {
                to: vec![carol.peer.clone()],
                frame: message_from("b1", text),
            },
        );
    }
    w.drain();
    // Carol resumed on node c.
    w.hub.handle_room_event(
        &id,
        4,
        RoomEvent::Moved(RemotePeer {
            info: peer_info(&carol),
            node: NodeId::new("nc"),
            seq: 3,
        }),
    );
    let out = w.drain();
    let sent = publishes(&out);
    let texts: Vec<String> = sent
        .iter()
        .map(|(node, to, f)| {
            assert_eq!(
                (node.as_str(), &to[..]),
                ("nc", std::slice::from_ref(&carol.peer))
            );
            f.as_str().to_owned()
        })
        .collect();
    assert!(
        texts[0].contains("one") && texts[1].contains("two"),
        "{texts:?}"
    );
    assert!(!w.hub.has_session(&carol.session));
    assert!(out.to(alice.conn).is_empty(), "nobody sees a leave");
    // Frames for her now go to node c.
    w.hub.handle_message(
        alice.conn,
        client(&send_frame(Some(&[&carol.peer]), "3", None)),
    );
    assert_eq!(publishes(&w.drain())[0].0, NodeId::new("nc"));
    w.hub.check_invariants().unwrap();
}

#[test]
fn a_session_taken_over_while_its_socket_looks_alive_is_replaced() {
    let mut w = World::new();
    let room = room("r", 10);
    let (alice, _) = cluster_join(&mut w, &room, "alice", view(1, 1, vec![]));
    let (bob, _) = cluster_join(&mut w, &room, "bob", view(2, 2, vec![]));
    w.hub.handle_room_event(
        &room.summary.id,
        3,
        RoomEvent::Moved(RemotePeer {
            info: peer_info(&bob),
            node: NodeId::new("nb"),
            seq: 2,
        }),
    );
    let out = w.drain();
    assert_eq!(out.closes(), [(bob.conn, CloseCode::Replaced)]);
    assert!(out.to(alice.conn).is_empty());
    w.hub.check_invariants().unwrap();
}

#[test]
fn a_claimed_session_resumes_here_with_its_id() {
    let mut w = World::new();
    let room = room("r", 10);
    let (alice, _) = cluster_join(
        &mut w,
        &room,
        "alice",
        view(2, 2, vec![remote("b1", "nb", 1)]),
    );
    let mut req = w.request(&room, "b1");
    let creds = bluecam_proto::ResumeCredentials {
        session: bluecam_proto::SessionId::new("s-b1"),
        secret: bluecam_proto::SessionSecret::new("secret-b1"),
    };
    req.resume = Some(creds.clone());
    let b1 = remote("b1", "here", 1);
    req.cluster = Some(ClusterView {
        ver: 3,
        seq: 1,
        peers: vec![], // peers of other nodes: none now
        claimed: Some(ClaimedSession {
            info: b1.info.clone(),
            session: creds.session.clone(),
            secret: creds.secret.clone(),
            permissions: Permissions::default(),
        }),
        pending_here: Vec::new(),
        replaced: Vec::new(),
    });
    w.hub.begin_cluster_join(&room.summary.id);
    let (back, out) = w.admit(req);
    assert_eq!(back.peer.as_str(), "b1");
    assert!(out.to(back.conn)[0].joined().resumed);
    assert!(
        out.to(alice.conn).is_empty(),
        "alice sees no leave and no join"
    );
    assert!(w.hub.has_session(&creds.session));
    // Now local: frames between them stay on this node.
    w.hub
        .handle_message(alice.conn, client(&send_frame(None, "1", None)));
    let out = w.drain();
    assert!(publishes(&out).is_empty());
    assert_eq!(out.to(back.conn).len(), 1);
    w.hub.check_invariants().unwrap();
}

#[test]
fn a_snapshot_after_an_outage_announces_who_left_and_who_joined_meanwhile() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(
        &mut w,
        &room,
        "alice",
        view(2, 2, vec![remote("b1", "nb", 1)]),
    );
    w.hub
        .handle_room_snapshot(&id, 9, vec![remote("c1", "nc", 8)]);
    let out = w.drain();
    let seen = out.to(alice.conn);
    assert!(
        matches!(&seen[0], Seen::PeerLeft { peer, reason: LeaveReason::Timeout } if peer.as_str() == "b1"),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[1], Seen::PeerJoined(p) if p.id.as_str() == "c1"),
        "{seen:?}"
    );
    w.hub.check_invariants().unwrap();
}

/// Alice and Bob in room r; Bob's session expires here, then a move of it to node nb (it had
/// resumed there a moment before) is heard: (world, room, alice, bob, what alice saw last).
fn expired_here_then_moved_back() -> (World, RoomAccess, Client, Client, Outbox) {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(&mut w, &room, "alice", view(1, 1, vec![]));
    let (bob, _) = cluster_join(&mut w, &room, "bob", view(2, 2, vec![]));
    w.hub.handle_disconnect(bob.conn, w.at(0));
    w.hub.handle_timeout(w.at(61));
    let out = w.drain();
    assert!(matches!(&out.to(alice.conn)[..], [Seen::PeerLeft { .. }]));
    w.hub.handle_room_event(
        &id,
        3,
        RoomEvent::Moved(RemotePeer {
            info: peer_info(&bob),
            node: NodeId::new("nb"),
            seq: 2,
        }),
    );
    let out = w.drain();
    (w, room, alice, bob, out)
}

#[test]
fn a_peer_that_expired_here_as_it_resumed_elsewhere_comes_back() {
    let (w, _, alice, bob, out) = expired_here_then_moved_back();
    // It had resumed on node b a moment before: the directory says so, and it is back.
    assert!(matches!(&out.to(alice.conn)[..], [Seen::PeerJoined(p)] if p.id == bob.peer));
    w.hub.check_invariants().unwrap();
}

#[test]
fn a_join_answer_that_overtakes_events_brings_the_replica_to_its_version() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(
        &mut w,
        &room,
        "alice",
        view(5, 5, vec![remote("b1", "nb", 1), remote("b2", "nb", 2)]),
    );
    // Meanwhile (versions 6 and 7, not received yet): b1 left, c1 joined.
    let (carol, out) = cluster_join(
        &mut w,
        &room,
        "carol",
        view(8, 8, vec![remote("b2", "nb", 2), remote("c1", "nc", 7)]),
    );
    let ids: Vec<String> = out.to(carol.conn)[0]
        .joined()
        .peers
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(ids, ["b2", alice.peer.as_str(), "c1"]);
    let seen = out.to(alice.conn);
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::PeerLeft { peer, .. } if peer.as_str() == "b1")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::PeerJoined(p) if p.id.as_str() == "c1")),
        "{seen:?}"
    );
    // The overtaken events arrive now and change nothing.
    w.hub.handle_room_event(
        &id,
        6,
        RoomEvent::Left {
            peer: PeerId::new("b1"),
            reason: LeaveReason::Left,
        },
    );
    w.hub
        .handle_room_event(&id, 7, RoomEvent::Joined(remote("c1", "nc", 7)));
    assert!(w.drain().is_empty());
    w.hub.check_invariants().unwrap();
}

/// One step of the cluster property test: events from the directory (in order, stale or
/// repeated), frames from other nodes, and broadcasts from this node's peers.
#[derive(Clone, Debug)]
enum ClusterOp {
    /// A peer of another node joins (`fresh`: with the next version; else a stale version).
    RemoteJoin {
        id: u8,
        node: u8,
        fresh: bool,
    },
    RemoteLeave {
        pick: u8,
        fresh: bool,
    },
    RemoteMove {
        pick: u8,
        node: u8,
        fresh: bool,
    },
    /// A frame from a peer of another node, to some of the room's peers and one unknown id.
    RemoteFrame {
        pick: u8,
        to_locals: u8,
        to_remotes: bool,
        to_ghost: bool,
    },
    /// A local peer broadcasts.
    Broadcast {
        from: u8,
    },
    /// The directory's list of the room's peers of other nodes (after Redis came back): some
    /// of the known ones (`keep`, a bit each), some new ones (`add`), all on `node`.
    Snapshot {
        keep: u8,
        add: u8,
        node: u8,
    },
    /// A peer of another node resumes here: the directory hands its session over (a claim).
    Claim {
        pick: u8,
    },
}

fn cluster_op() -> impl proptest::strategy::Strategy<Value = ClusterOp> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0u8..6, 0u8..2, proptest::bool::weighted(0.8))
            .prop_map(|(id, node, fresh)| ClusterOp::RemoteJoin { id, node, fresh }),
        2 => (any::<u8>(), proptest::bool::weighted(0.8))
            .prop_map(|(pick, fresh)| ClusterOp::RemoteLeave { pick, fresh }),
        2 => (any::<u8>(), 0u8..2, proptest::bool::weighted(0.8))
            .prop_map(|(pick, node, fresh)| ClusterOp::RemoteMove { pick, node, fresh }),
        3 => (any::<u8>(), any::<u8>(), any::<bool>(), any::<bool>()).prop_map(
            |(pick, to_locals, to_remotes, to_ghost)| ClusterOp::RemoteFrame {
                pick,
                to_locals,
                to_remotes,
                to_ghost
            }
        ),
        3 => any::<u8>().prop_map(|from| ClusterOp::Broadcast { from }),
        1 => (any::<u8>(), 0u8..64, 0u8..2)
            .prop_map(|(keep, add, node)| ClusterOp::Snapshot { keep, add, node }),
        1 => any::<u8>().prop_map(|pick| ClusterOp::Claim { pick }),
    ]
}

const NODES: [&str; 2] = ["nb", "nc"];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    /// Whatever the directory sends, in whatever order, and whatever its snapshots say after an
    /// outage: every local peer's view of the room is
    /// the model's membership; a remote frame reaches exactly the local peers it names; a
    /// broadcast is delivered to the local peers and published once per other node, naming
    /// exactly that node's peers; stale events change nothing; the core's invariants hold; and
    /// no peer of another node is ever reported removed from this node's directory entries.
    #[test]
    fn cluster_events_keep_every_view_and_route_as_the_model_says(
        ops in proptest::collection::vec(cluster_op(), 1..40)
    ) {
        use std::collections::{BTreeMap, BTreeSet};
        let mut w = World::new();
        let room = room("r", 50);
        let rid = room.summary.id.clone();
        let (a, _) = cluster_join(&mut w, &room, "alice", view(1, 1, vec![]));
        let (b, out) = cluster_join(&mut w, &room, "bob", view(2, 2, vec![]));
        let _ = out;
        let mut locals = vec![a.clone(), b.clone()];
        let mut ver = 2u64;
        let mut seq = 2u64;
        // Remote peers: id -> node.
        let mut remotes: BTreeMap<String, &str> = BTreeMap::new();
        // What each local peer has been told of the others.
        let mut views: Vec<BTreeSet<String>> = vec![
            BTreeSet::from([b.peer.to_string()]),
            BTreeSet::from([a.peer.to_string()]),
        ];
        let mut n = 0u64;
        for (step, op) in ops.iter().enumerate() {
            let ctx = format!("step {step} {op:?}");
            let mut expect_to: Vec<(usize, String)> = Vec::new(); // (local, message text)
            let mut expect_publish: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut expect_undeliverable = 0usize;
            let mut admitted: Option<Outbox> = None;
            let pick_remote = |pick: u8, remotes: &BTreeMap<String, &str>| {
                (!remotes.is_empty())
                    .then(|| remotes.keys().nth(usize::from(pick) % remotes.len()).cloned())
                    .flatten()
            };
            let next_ver = |fresh: bool, ver: &mut u64| {
                if fresh {
                    *ver += 1;
                    *ver
                } else {
                    *ver // not newer than the replica: ignored
                }
            };
            match op {
                ClusterOp::RemoteJoin { id, node, fresh } => {
                    let id = format!("r{id}");
                    if remotes.contains_key(&id) || locals.iter().any(|l| l.peer.as_str() == id) {
                        continue; // the directory never announces a present peer twice
                    }
                    let v = next_ver(*fresh, &mut ver);
                    seq += 1;
                    let node = NODES[usize::from(*node)];
                    w.hub.handle_room_event(&rid, v, RoomEvent::Joined(remote(&id, node, seq)));
                    if *fresh {
                        remotes.insert(id, node);
                    }
                }
                ClusterOp::RemoteLeave { pick, fresh } => {
                    let Some(id) = pick_remote(*pick, &remotes) else { continue };
                    let v = next_ver(*fresh, &mut ver);
                    w.hub.handle_room_event(
                        &rid,
                        v,
                        RoomEvent::Left { peer: PeerId::new(id.as_str()), reason: LeaveReason::Left },
                    );
                    if *fresh {
                        remotes.remove(&id);
                    }
                }
                ClusterOp::RemoteMove { pick, node, fresh } => {
                    let Some(id) = pick_remote(*pick, &remotes) else { continue };
                    let v = next_ver(*fresh, &mut ver);
                    let node = NODES[usize::from(*node)];
                    w.hub.handle_room_event(&rid, v, RoomEvent::Moved(remote(&id, node, 0)));
                    if *fresh {
                        remotes.insert(id, node);
                    }
                }
                ClusterOp::RemoteFrame { pick, to_locals, to_remotes, to_ghost } => {
                    let Some(from) = pick_remote(*pick, &remotes) else { continue };
                    n += 1;
                    let text = format!("m{n}");
                    let mut to = Vec::new();
                    for (i, l) in locals.iter().enumerate() {
                        if to_locals & (1 << (i % 8)) != 0 {
                            to.push(l.peer.clone());
                            expect_to.push((i, text.clone()));
                        }
                    }
                    if *to_remotes {
                        for r in remotes.keys() {
                            to.push(PeerId::new(r.as_str()));
                            expect_undeliverable += 1;
                        }
                    }
                    if *to_ghost {
                        to.push(PeerId::new("ghost"));
                        expect_undeliverable += 1;
                    }
                    w.hub.handle_room_event(
                        &rid,
                        0,
                        RoomEvent::Frame { to, frame: message_from(&from, &text) },
                    );
                }
                ClusterOp::Snapshot { keep, add, node } => {
                    let node = NODES[usize::from(*node)];
                    let mut listed: BTreeMap<String, &str> = BTreeMap::new();
                    for (k, id) in remotes.keys().enumerate() {
                        if keep & (1 << (k % 8)) != 0 {
                            listed.insert(id.clone(), node);
                        }
                    }
                    for i in 0..6u8 {
                        let id = format!("r{i}");
                        // (A peer of this node listed there would be one that resumed
                        // elsewhere: the move case, tested on its own above.)
                        let local = locals.iter().any(|l| l.peer.as_str() == id);
                        if add & (1 << i) != 0 && !remotes.contains_key(&id) && !local {
                            listed.insert(id, node);
                        }
                    }
                    ver += 1;
                    let peers = listed
                        .iter()
                        .enumerate()
                        .map(|(k, (id, node))| remote(id, node, 100 + k as u64))
                        .collect();
                    w.hub.handle_room_snapshot(&rid, ver, peers);
                    remotes = listed;
                }
                ClusterOp::Claim { pick } => {
                    let Some(id) = pick_remote(*pick, &remotes) else { continue };
                    remotes.remove(&id);
                    ver += 1;
                    let mut req = w.request(&room, &id);
                    let creds = bluecam_proto::ResumeCredentials {
                        session: bluecam_proto::SessionId::new(format!("s-{id}")),
                        secret: bluecam_proto::SessionSecret::new(format!("secret-{id}")),
                    };
                    req.resume = Some(creds.clone());
                    req.cluster = Some(ClusterView {
                        ver,
                        seq: 1,
                        peers: remotes.iter().map(|(r, node)| remote(r, node, 1)).collect(),
                        claimed: Some(ClaimedSession {
                            info: remote(&id, "here", 1).info,
                            session: creds.session,
                            secret: creds.secret,
                            permissions: Permissions::default(),
                        }),
                        pending_here: Vec::new(),
                        replaced: Vec::new(),
                    });
                    w.hub.begin_cluster_join(&rid);
                    let (back, out) = w.admit(req);
                    proptest::prop_assert_eq!(back.peer.as_str(), id.as_str());
                    // Its view comes from its `joined`; the others' stay (same id, no leave).
                    let mut view = BTreeSet::new();
                    for seen in out.to(back.conn) {
                        if let Seen::Joined(j) = seen {
                            proptest::prop_assert!(j.resumed, "{ctx}: not a resume");
                            view = j.peers.iter().map(|p| p.id.to_string()).collect();
                        }
                    }
                    locals.push(back);
                    views.push(view);
                    admitted = Some(out);
                }
                ClusterOp::Broadcast { from } => {
                    n += 1;
                    let text = format!("m{n}");
                    let i = usize::from(*from) % locals.len();
                    w.hub.handle_message(
                        locals[i].conn,
                        client(&send_frame(None, &format!("\"{text}\""), None)),
                    );
                    for j in (0..locals.len()).filter(|j| *j != i) {
                        expect_to.push((j, text.clone()));
                    }
                    for (id, node) in &remotes {
                        expect_publish.entry((*node).to_owned()).or_default().insert(id.clone());
                    }
                }
            }
            let out = admitted.unwrap_or_else(|| w.drain());
            // Views: apply what each local peer saw, then compare with the model.
            let mut got_messages: Vec<(usize, String)> = Vec::new();
            for (i, l) in locals.iter().enumerate() {
                for seen in out.to(l.conn) {
                    match seen {
                        Seen::PeerJoined(p) => {
                            proptest::prop_assert!(views[i].insert(p.id.to_string()), "{ctx}: joined twice {p:?}");
                        }
                        Seen::PeerLeft { peer, .. } => {
                            proptest::prop_assert!(views[i].remove(peer.as_str()), "{ctx}: left but unknown {peer:?}");
                        }
                        Seen::Message { msg, .. } => got_messages.push((i, msg.trim_matches('"').to_owned())),
                        Seen::Joined(_) if i + 1 == locals.len() => {} // a claim, read above
                        other => proptest::prop_assert!(false, "{ctx}: unexpected {other:?}"),
                    }
                }
                let mut want: BTreeSet<String> = remotes.keys().cloned().collect();
                for (j, other) in locals.iter().enumerate() {
                    if j != i {
                        want.insert(other.peer.to_string());
                    }
                }
                proptest::prop_assert_eq!(&views[i], &want, "{}: view of {}", ctx, i);
            }
            got_messages.sort();
            expect_to.sort();
            proptest::prop_assert_eq!(got_messages, expect_to, "{}: messages", ctx);
            let mut published: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (node, to, _) in publishes(&out) {
                let set = published.entry(node.to_string()).or_default();
                for p in to {
                    proptest::prop_assert!(set.insert(p.to_string()), "{ctx}: published twice to {p:?}");
                }
            }
            proptest::prop_assert_eq!(published, expect_publish, "{}: publishes", ctx);
            let undeliverable: usize = out
                .outputs
                .iter()
                .map(|o| match o {
                    Output::Undeliverable { peers, .. } => *peers,
                    _ => 0,
                })
                .sum();
            proptest::prop_assert_eq!(undeliverable, expect_undeliverable, "{}: undeliverable", ctx);
            proptest::prop_assert!(
                !out.outputs.iter().any(|o| matches!(o, Output::PeerRemoved { .. })),
                "{ctx}: PeerRemoved for a peer of another node"
            );
            if let Err(e) = w.hub.check_invariants() {
                proptest::prop_assert!(false, "{ctx}: {e}");
            }
        }
    }
}

#[test]
fn a_joiner_lists_a_peer_whose_claim_here_is_a_step_behind_and_reaches_it_once_admitted() {
    // Two sessions of a restarted node resume on this fresh node at once: the directory has
    // moved both here, but this hub admits one before the other. The first must still list
    // the second (the rolling-restart race: it dropped it from its room and never heard of it
    // again), and frames for it must reach it once it is admitted.
    let mut w = World::new();
    let room = room("r", 10);
    let claim = |w: &mut World, id: &str, ver: u64, pending: Vec<RemotePeer>| {
        let mut req = w.request(&room, id);
        let creds = bluecam_proto::ResumeCredentials {
            session: bluecam_proto::SessionId::new(format!("s-{id}")),
            secret: bluecam_proto::SessionSecret::new(format!("secret-{id}")),
        };
        req.resume = Some(creds.clone());
        req.cluster = Some(ClusterView {
            ver,
            seq: 1,
            peers: vec![remote("c1", "nc", 3)],
            claimed: Some(ClaimedSession {
                info: remote(id, "here", 1).info,
                session: creds.session,
                secret: creds.secret,
                permissions: Permissions::default(),
            }),
            pending_here: pending,
            replaced: Vec::new(),
        });
        w.hub.begin_cluster_join(&room.summary.id);
        w.admit(req)
    };
    // The directory answered both claims; p1's is handled first and lists p2 at this node.
    let (p1, out) = claim(
        &mut w,
        "p1",
        5,
        vec![remote("p1", "here", 1), remote("p2", "here", 2)],
    );
    let mut listed: Vec<String> = out.to(p1.conn)[0]
        .joined()
        .peers
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, ["c1", "p2"]);
    w.hub.check_invariants().unwrap();
    // p2 is admitted: nobody is told anything (p1 knows it already).
    let (p2, out) = claim(
        &mut w,
        "p2",
        5,
        vec![remote("p1", "here", 1), remote("p2", "here", 2)],
    );
    assert!(out.to(p1.conn).is_empty(), "{:?}", out.to(p1.conn));
    let mut listed: Vec<String> = out.to(p2.conn)[0]
        .joined()
        .peers
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, ["c1", "p1"]);
    // Frames between them stay on this node.
    w.hub
        .handle_message(p1.conn, client(&send_frame(Some(&[&p2.peer]), "1", None)));
    let out = w.drain();
    assert!(publishes(&out).is_empty());
    assert_eq!(out.to(p2.conn).len(), 1);
    w.hub.check_invariants().unwrap();
}

#[test]
fn a_snapshot_taken_while_a_peer_resumes_here_does_not_announce_it_gone() {
    // A resync's snapshot lists b1 on this node (its claim here was answered) before this hub
    // admitted it: b1 is arriving, not leaving. (A resync during a rolling restart announced it
    // as gone: alice's SDK dropped it and its sends to it were rejected.)
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(
        &mut w,
        &room,
        "alice",
        view(2, 2, vec![remote("b1", "nb", 1)]),
    );
    let b1 = PeerId::new("b1");
    w.hub
        .handle_room_snapshot_with(&id, 3, vec![], std::slice::from_ref(&b1));
    let out = w.drain();
    assert!(out.to(alice.conn).is_empty(), "{:?}", out.to(alice.conn));
    assert_eq!(w.hub.peer_count(&id), 2, "b1 is still in the room");
    // Without the hint it would have been announced as gone (the snapshot lists nobody else).
    w.hub.handle_room_snapshot(&id, 4, vec![]);
    let seen = w.drain().to(alice.conn);
    assert!(
        matches!(&seen[..], [Seen::PeerLeft { peer, reason: LeaveReason::Timeout }] if *peer == b1),
        "{seen:?}"
    );
    w.hub.check_invariants().unwrap();
}

/// A resume here of `id`'s session, held by another node until now, as the directory answered
/// the claim: `peers` of other nodes, `ver` the room's version.
fn claim_request(
    w: &mut World,
    room: &RoomAccess,
    id: &str,
    ver: u64,
    peers: Vec<RemotePeer>,
) -> bluecam_core::JoinRequest {
    let mut req = w.request(room, id);
    let creds = bluecam_proto::ResumeCredentials {
        session: bluecam_proto::SessionId::new(format!("s-{id}")),
        secret: bluecam_proto::SessionSecret::new(format!("secret-{id}")),
    };
    req.resume = Some(creds.clone());
    let me = remote(id, "here", 1);
    req.cluster = Some(ClusterView {
        ver,
        seq: 1,
        peers,
        claimed: Some(ClaimedSession {
            info: me.info.clone(),
            session: creds.session,
            secret: creds.secret,
            permissions: Permissions::default(),
        }),
        pending_here: vec![me],
        replaced: Vec::new(),
    });
    w.hub.begin_cluster_join(&room.summary.id);
    req
}

/// Found by the cluster simulation: this node was reaped while frozen, so the directory lists
/// its peers as orphans (`~`); a snapshot (here, a claim's answer) must not take them away.
#[test]
fn a_snapshot_listing_a_peer_of_this_node_as_an_orphan_leaves_it_here() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(&mut w, &room, "alice", view(1, 1, vec![]));
    let applied = w
        .hub
        .handle_room_snapshot(&id, 5, vec![remote(alice.peer.as_str(), "~", 1)]);
    assert!(applied);
    let out = w.drain();
    assert!(
        out.closes().is_empty(),
        "alice is not let go: {:?}",
        out.closes()
    );
    assert!(w.hub.has_session(&alice.creds().session));
    assert_eq!(w.hub.local_peers().len(), 1);
    w.hub.check_invariants().unwrap();
}

/// Found by the cluster simulation (the finding "`replica()` recreating a room empty"): a
/// claim's answer that lets go of this node's last local peer (it resumed elsewhere) dropped
/// the replica, and the claimer's `joined` listed nobody.
#[test]
fn a_claim_whose_answer_lets_go_of_the_last_local_peer_still_lists_the_room() {
    let mut w = World::new();
    let room = room("r", 10);
    let (bob, _) = cluster_join(
        &mut w,
        &room,
        "bob",
        view(2, 2, vec![remote("d1", "nd", 1)]),
    );
    w.hub.handle_disconnect(bob.conn, w.at(0));
    w.drain();
    // Bob resumed on node nb meanwhile; carol's session moves here.
    let mut moved_bob = remote(bob.peer.as_str(), "nb", 2);
    moved_bob.info = peer_info(&bob);
    let req = claim_request(
        &mut w,
        &room,
        "carol",
        9,
        vec![remote("d1", "nd", 1), moved_bob],
    );
    let (carol, out) = w.admit(req);
    let joined = out.to(carol.conn)[0].joined().clone();
    let mut listed: Vec<&str> = joined.peers.iter().map(|p| p.id.as_str()).collect();
    listed.sort_unstable();
    let mut want = vec!["d1", bob.peer.as_str()];
    want.sort_unstable();
    assert_eq!(listed, want);
    assert!(!w.hub.has_session(&bob.creds().session), "bob is let go");
    w.hub.check_invariants().unwrap();
}

/// Found by the cluster simulation: a claim answered before this node heard of the claimed
/// peer's join (the event is older than the answer, so it will be ignored): the others here
/// must hear of it now.
#[test]
fn a_claim_of_a_peer_this_replica_never_heard_of_announces_it() {
    let mut w = World::new();
    let room = room("r", 10);
    let (alice, _) = cluster_join(&mut w, &room, "alice", view(1, 1, vec![]));
    let req = claim_request(&mut w, &room, "p120", 5, vec![]);
    let (p120, out) = w.admit(req);
    assert!(out.to(p120.conn)[0].joined().resumed);
    assert!(
        matches!(&out.to(alice.conn)[..], [Seen::PeerJoined(p)] if p.id.as_str() == "p120"),
        "{:?}",
        out.to(alice.conn)
    );
    // Its join event, arriving late, changes nothing.
    w.hub.handle_room_event(
        &room.summary.id,
        4,
        RoomEvent::Joined(remote("p120", "nb", 4)),
    );
    assert!(w.drain().to(alice.conn).is_empty());
    w.hub.check_invariants().unwrap();
}

/// The finding "a stale snapshot undoing newer events": a snapshot read before an event that
/// was applied first must not announce the newcomer as gone.
#[test]
fn a_snapshot_older_than_the_replica_is_skipped() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(
        &mut w,
        &room,
        "alice",
        view(3, 3, vec![remote("b1", "nb", 1)]),
    );
    w.hub
        .handle_room_event(&id, 4, RoomEvent::Joined(remote("c1", "nc", 4)));
    w.drain();
    // Read at version 3, before c1 joined; its answer comes after the event.
    let applied = w
        .hub
        .handle_room_snapshot(&id, 3, vec![remote("b1", "nb", 1)]);
    assert!(!applied, "a stale snapshot is reported as skipped");
    assert!(
        w.drain().to(alice.conn).is_empty(),
        "nobody is announced as gone"
    );
    let applied =
        w.hub
            .handle_room_snapshot(&id, 4, vec![remote("b1", "nb", 1), remote("c1", "nc", 4)]);
    assert!(applied);
    assert!(w.drain().to(alice.conn).is_empty());
    w.hub.check_invariants().unwrap();
}

/// Found by the cluster simulation: a node thawed after its peers' windows ended here, so it
/// announced them as gone to the peers it still kept, though they had resumed elsewhere; those
/// announcements, sent after a kept peer that moved on, told its client that live peers left.
/// Only messages and signals go after a moved peer: its `joined` there lists the room as it is.
#[test]
fn a_moved_peer_gets_its_kept_messages_but_not_this_nodes_stale_membership_changes() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (carol, _) = cluster_join(&mut w, &room, "carol", view(2, 2, vec![]));
    let (dave, _) = cluster_join(&mut w, &room, "dave", view(3, 3, vec![]));
    w.hub.handle_disconnect(dave.conn, w.at(0));
    w.hub.handle_disconnect(carol.conn, w.at(30));
    w.hub.handle_room_event(
        &id,
        0,
        RoomEvent::Frame {
            to: vec![carol.peer.clone()],
            frame: message_from("b1", "kept"),
        },
    );
    // Dave's window ends here (this node thinks he left); carol keeps that too.
    w.hub.handle_timeout(w.at(61));
    w.drain();
    assert!(w.hub.has_session(&carol.session) && !w.hub.has_session(&dave.session));
    w.hub.handle_room_event(
        &id,
        9,
        RoomEvent::Moved(RemotePeer {
            info: peer_info(&carol),
            node: NodeId::new("nc"),
            seq: 2,
        }),
    );
    let sent: Vec<String> = publishes(&w.drain())
        .into_iter()
        .map(|(_, _, f)| f.as_str().to_owned())
        .collect();
    assert!(
        sent.len() == 1 && sent[0].contains("kept"),
        "only the message goes after her: {sent:?}"
    );
    w.hub.check_invariants().unwrap();
}

/// The finding "REGISTER resurrecting a peer that moved and left": the directory answers that a
/// peer this node still holds left for good elsewhere while this node was cut off; its session
/// here ends, and the others here see it leave.
#[test]
fn a_peer_gone_elsewhere_ends_here_and_the_others_see_it_leave() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(&mut w, &room, "alice", view(1, 1, vec![]));
    let (bob, _) = cluster_join(&mut w, &room, "bob", view(2, 2, vec![]));
    w.hub.handle_peer_gone(&id, &bob.peer);
    let out = w.drain();
    assert_eq!(out.closes(), [(bob.conn, CloseCode::SessionExpired)]);
    assert!(
        matches!(&out.to(alice.conn)[..], [Seen::PeerLeft { peer, reason: LeaveReason::Timeout }] if *peer == bob.peer),
        "{:?}",
        out.to(alice.conn)
    );
    assert!(!w.hub.has_session(&bob.session));
    // A peer of another node, or one unknown here: nothing happens.
    w.hub.handle_peer_gone(&id, &PeerId::new("nobody"));
    assert!(w.drain().is_empty());
    w.hub.check_invariants().unwrap();
}

/// A peer addressing a peer this node's replica does not know (its join may have been missed)
/// makes the shell check the replica against the directory, besides the sender's error.
#[test]
fn a_send_to_an_unknown_peer_asks_the_shell_to_check_the_replica() {
    let mut w = World::new();
    let room = room("r", 10);
    let (alice, _) = cluster_join(&mut w, &room, "alice", view(1, 1, vec![]));
    let zz = PeerId::new("zz");
    let out = w.input(&alice, &send_frame(Some(&[&zz]), "1", Some(7)));
    assert!(
        out.outputs
            .iter()
            .any(|o| matches!(o, Output::UnknownPeers { peers: 1, .. })),
        "{:?}",
        out.outputs
    );
    assert_unknown_peer(&out.to(alice.conn), &[&zz], Some(7));
}

/// Found in review: a peer on its way here (another joiner's answer lists it on this node, its
/// own claim a step behind) is in the room for the joiner; the peers already here must hear of
/// it then, since its join event, older than the answer, will be ignored, and its own claim
/// finds it known.
#[test]
fn a_peer_on_its_way_here_is_announced_to_the_peers_already_here_once() {
    let mut w = World::new();
    let room = room("r", 10);
    let (r, _) = cluster_join(&mut w, &room, "r", view(1, 1, vec![]));
    // Q joins; the directory's answer places P (joined on node c a moment ago, resuming here
    // now) on this node.
    let mut v = view(7, 7, vec![]);
    v.pending_here = vec![remote("p", "here", 6)];
    let (q, out) = cluster_join(&mut w, &room, "q", v);
    let listed: Vec<String> = out.to(q.conn)[0]
        .joined()
        .peers
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert!(listed.contains(&"p".to_owned()), "{listed:?}");
    let seen = out.to(r.conn);
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::PeerJoined(p) if p.id.as_str() == "p")),
        "r hears of p: {seen:?}"
    );
    // P's claim lands: nobody hears of it twice.
    let req = claim_request(&mut w, &room, "p", 8, vec![]);
    let (_p, out) = w.admit(req);
    assert!(out.to(r.conn).is_empty(), "{:?}", out.to(r.conn));
    assert!(out.to(q.conn).is_empty(), "{:?}", out.to(q.conn));
    w.hub.check_invariants().unwrap();
}

/// Found by the cluster simulation (seed 6740): a session that expired here, moved back into
/// the replica by a move heard meanwhile, and then claimed here is refused; the shell takes its
/// seat out of the directory, which tells only the other nodes, so the copy here goes too (it
/// stayed in the room for good, a peer nobody could reach).
#[test]
fn a_claim_of_a_session_that_expired_here_drops_its_copy_from_the_replica() {
    let (mut w, room, alice, bob, _) = expired_here_then_moved_back();
    let id = room.summary.id.clone();
    let creds = bob.creds();
    assert!(w.hub.peers(&id).iter().any(|p| p.id == bob.peer));
    // Bob's client claims the session here; the directory moved it here (ver 4).
    let mut req = w.request(&room, "bob");
    req.resume = Some(creds.clone());
    req.cluster = Some(ClusterView {
        ver: 4,
        seq: 2,
        peers: vec![remote(alice.peer.as_str(), "here", 1)],
        claimed: Some(ClaimedSession {
            info: peer_info(&bob),
            session: creds.session,
            secret: creds.secret,
            permissions: Permissions::default(),
        }),
        pending_here: Vec::new(),
        replaced: Vec::new(),
    });
    w.hub.begin_cluster_join(&id);
    assert_eq!(
        w.hub.handle_join(req),
        Err(bluecam_core::JoinRejected::SessionExpired)
    );
    let out = w.drain();
    assert!(
        matches!(&out.to(alice.conn)[..], [Seen::PeerLeft { peer, .. }] if *peer == bob.peer),
        "{:?}",
        out.to(alice.conn)
    );
    assert!(!w.hub.peers(&id).iter().any(|p| p.id == bob.peer));
    w.hub.check_invariants().unwrap();
}

/// A join in flight taken over by a newer session of its identity on another node (`left`,
/// `replaced`) leaves at once when admitted, even when the replica is past that event's
/// version already (another join's answer brought it there): its client gets `joined`, then
/// 4042, and nobody is left in the replica that the directory no longer has.
#[test]
fn a_join_taken_over_before_it_was_admitted_leaves_at_once_whatever_the_replicas_version() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (_alice, _) = cluster_join(&mut w, &room, "alice", view(7, 7, Vec::new()));
    let mut req = w.request(&room, "bob");
    let bob_peer = req.fresh.peer.clone();
    w.hub.begin_cluster_join(&id);
    w.hub.handle_room_event(
        &id,
        6,
        RoomEvent::Left {
            peer: bob_peer.clone(),
            reason: LeaveReason::Replaced,
        },
    );
    req.cluster = Some(view(5, 5, Vec::new()));
    let (bob, out) = w.admit(req);
    assert!(out.to(bob.conn)[0].joined().self_.id == bob_peer);
    assert_eq!(out.closes(), vec![(bob.conn, CloseCode::Superseded)]);
    assert_eq!(w.hub.peer_count(&id), 1, "only alice is left");
    w.hub.check_invariants().unwrap();
}

/// A join's answer older than a takeover may list the replaced peer as on its way to this
/// node: it is not put back (nor announced) once the takeover is known here.
#[test]
fn an_answer_older_than_a_takeover_does_not_bring_the_replaced_peer_back() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(&mut w, &room, "alice", view(3, 3, Vec::new()));
    let mut req = w.request(&room, "carol");
    w.hub.begin_cluster_join(&id);
    w.hub.handle_room_event(
        &id,
        5,
        RoomEvent::Left {
            peer: PeerId::new("x"),
            reason: LeaveReason::Replaced,
        },
    );
    let mut v = view(4, 4, Vec::new());
    v.pending_here = vec![remote("x", "here", 2)];
    req.cluster = Some(v);
    let (carol, out) = w.admit(req);
    let listed: Vec<String> = out.to(carol.conn)[0]
        .joined()
        .peers
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert!(!listed.contains(&"x".to_owned()), "{listed:?}");
    assert!(
        !out.to(alice.conn)
            .iter()
            .any(|s| matches!(s, Seen::PeerJoined(p) if p.id.as_str() == "x")),
        "x announced again"
    );
    assert!(!w.hub.peers(&id).iter().any(|p| p.id.as_str() == "x"));
    w.hub.check_invariants().unwrap();
}
