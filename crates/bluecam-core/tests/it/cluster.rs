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

#[test]
fn a_peer_that_expired_here_as_it_resumed_elsewhere_comes_back() {
    let mut w = World::new();
    let room = room("r", 10);
    let id = room.summary.id.clone();
    let (alice, _) = cluster_join(&mut w, &room, "alice", view(1, 1, vec![]));
    let (bob, _) = cluster_join(&mut w, &room, "bob", view(2, 2, vec![]));
    w.hub.handle_disconnect(bob.conn, w.at(0));
    w.hub.handle_timeout(w.at(61));
    let out = w.drain();
    assert!(matches!(&out.to(alice.conn)[..], [Seen::PeerLeft { .. }]));
    // It had resumed on node b a moment before: the directory says so, and it is back.
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
