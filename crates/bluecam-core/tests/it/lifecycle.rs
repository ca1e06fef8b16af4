//! Leaving and room closure: who is told, which close codes, and that sessions end.

use crate::support::{Outbox, Seen, World, room};
use bluecam_core::{ConnId, HubStats, JoinRejected, Output};
use bluecam_proto::{CloseCode, LeaveReason, RoomClosedReason};

/// Index of the first output that is a `Deliver` to `conn` / a `Close` of `conn`.
fn first_deliver(out: &Outbox, conn: ConnId) -> Option<usize> {
    out.outputs
        .iter()
        .position(|o| matches!(o, Output::Deliver { conns, .. } if conns.contains(&conn)))
}

fn close_index(out: &Outbox, conn: ConnId) -> Option<usize> {
    out.outputs
        .iter()
        .position(|o| matches!(o, Output::Close { conn: c, .. } if *c == conn))
}

#[test]
fn leave_tells_the_others_left_and_closes_normal() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    let (carol, _) = w.join(&r, "carol");

    let out = w.input(&bob, r#"{"op":"leave"}"#);
    for c in [&alice, &carol] {
        match &out.to(c.conn)[..] {
            [Seen::PeerLeft { peer, reason }] => {
                assert_eq!(peer, &bob.peer);
                assert_eq!(*reason, LeaveReason::Left);
            }
            other => panic!("expected peer_left, got {other:?}"),
        }
    }
    assert!(out.to(bob.conn).is_empty());
    assert_eq!(out.closes(), vec![(bob.conn, CloseCode::Normal)]);
    assert!(out.vacated().is_empty());
    assert_eq!(w.hub.peer_count(&r.summary.id), 2);
    assert_eq!(w.hub.peer_of(bob.conn), None);

    // Its session ended with it, and its socket closing later changes nothing.
    w.hub.handle_disconnect(bob.conn, w.at(1));
    assert!(w.drain().is_empty());
    assert_eq!(w.hub.poll_timeout(), None);
    let req = w.resume_request(&r, &bob);
    assert_eq!(w.refuse(req), JoinRejected::SessionExpired);
    w.check();
}

#[test]
fn the_last_leave_vacates_the_room() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    w.input(&alice, r#"{"op":"leave"}"#);

    let out = w.input(&bob, r#"{"op":"leave"}"#);
    assert!(out.recipients().is_empty(), "nobody is left to tell");
    assert_eq!(out.closes(), vec![(bob.conn, CloseCode::Normal)]);
    assert_eq!(out.vacated(), vec![r.summary.id.clone()]);
    assert_eq!(w.hub.stats(), HubStats::default());
    assert!(w.hub.peers(&r.summary.id).is_empty());
    w.check();
}

#[test]
fn a_leave_seen_while_detached_is_kept_for_the_resume() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    let (carol, _) = w.join(&r, "carol");
    w.hub.handle_disconnect(alice.conn, w.at(0));
    w.input(&bob, r#"{"op":"leave"}"#);
    let req = w.resume_request(&r, &alice);
    let (alice2, out) = w.admit(req);
    let seen = out.to(alice2.conn);
    let ids: Vec<_> = seen[0]
        .joined()
        .peers
        .iter()
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(ids, vec![carol.peer.clone()]);
    match &seen[1..] {
        [Seen::PeerLeft { peer, reason }] => {
            assert_eq!(peer, &bob.peer);
            assert_eq!(*reason, LeaveReason::Left);
        }
        other => panic!("expected the kept peer_left, got {other:?}"),
    }
}

#[test]
fn room_closed_tells_attached_peers_closes_them_and_ends_every_session() {
    let mut w = World::new();
    let a = room("a", 8);
    let b = room("b", 8);
    let (alice, _) = w.join(&a, "alice");
    let (bob, _) = w.join(&a, "bob");
    let (carol, _) = w.join(&a, "carol");
    let (dave, _) = w.join(&b, "dave");
    w.hub.handle_disconnect(carol.conn, w.at(0));
    assert!(w.drain().is_empty());

    w.hub
        .handle_room_closed(&a.summary.id, RoomClosedReason::Deleted);
    w.check();
    let out = w.drain();
    let mut expected = vec![alice.conn, bob.conn];
    expected.sort();
    assert_eq!(out.recipients(), expected);
    for c in [&alice, &bob] {
        assert!(matches!(
            out.to(c.conn)[..],
            [Seen::RoomClosed(RoomClosedReason::Deleted)]
        ));
        assert!(
            first_deliver(&out, c.conn) < close_index(&out, c.conn),
            "room_closed is queued before the close"
        );
    }
    let mut closes = out.closes();
    closes.sort_by_key(|(c, _)| *c);
    assert_eq!(
        closes,
        vec![
            (alice.conn, CloseCode::RoomClosed),
            (bob.conn, CloseCode::RoomClosed)
        ]
    );
    assert!(out.vacated().is_empty(), "a closed room is not vacated");
    assert_eq!(
        w.hub.stats(),
        HubStats {
            rooms: 1,
            peers: 1,
            detached: 0
        }
    );
    assert_eq!(
        w.hub.poll_timeout(),
        None,
        "the detached peer's expiry went too"
    );
    assert_eq!(w.hub.peer_of(dave.conn).map(|p| &p.1), Some(&dave.peer));

    // Every session of the room ended, the detached one included.
    for c in [&alice, &carol] {
        let req = w.resume_request(&a, c);
        assert_eq!(w.refuse(req), JoinRejected::SessionExpired);
    }
    // Late socket closes and a second close of the room are no-ops.
    w.hub.handle_disconnect(alice.conn, w.at(1));
    w.hub
        .handle_room_closed(&a.summary.id, RoomClosedReason::Expired);
    assert!(w.drain().is_empty());
    // A room of the same id starts afresh.
    let (erin, out) = w.join(&a, "erin");
    assert!(out.to(erin.conn)[0].joined().peers.is_empty());
    w.check();
}

#[test]
fn room_closed_expired_reason_is_passed_through() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    w.hub
        .handle_room_closed(&r.summary.id, RoomClosedReason::Expired);
    let out = w.drain();
    assert!(matches!(
        out.to(alice.conn)[..],
        [Seen::RoomClosed(RoomClosedReason::Expired)]
    ));
    assert_eq!(out.closes(), vec![(alice.conn, CloseCode::RoomClosed)]);
}

#[test]
fn a_kick_removes_the_peer_tells_the_others_kicked_and_closes_it_kicked() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    let (carol, _) = w.join(&r, "carol");
    let id = r.summary.id.clone();

    assert!(w.hub.handle_kick(&id, &bob.peer));
    let out = w.drain();
    match &out.to(alice.conn)[..] {
        [Seen::PeerLeft { peer, reason }] => {
            assert_eq!(peer, &bob.peer);
            assert_eq!(*reason, LeaveReason::Kicked);
        }
        other => panic!("expected peer_left, got {other:?}"),
    }
    assert!(out.to(bob.conn).is_empty());
    assert_eq!(out.closes(), vec![(bob.conn, CloseCode::Kicked)]);
    assert!(out.outputs.iter().any(|o| matches!(
        o,
        Output::PeerRemoved { peer, reason: LeaveReason::Kicked, .. } if *peer == bob.peer
    )));
    // Its session is over: no resume.
    let req = w.resume_request(&r, &bob);
    assert_eq!(w.refuse(req), JoinRejected::SessionExpired);
    // Not here (any more): nothing happens.
    assert!(!w.hub.handle_kick(&id, &bob.peer));
    assert!(w.drain().is_empty());

    // A detached peer goes at once, with no close (it has no connection).
    w.hub.handle_disconnect(carol.conn, w.at(1));
    let _ = w.drain();
    assert!(w.hub.handle_kick(&id, &carol.peer));
    let out = w.drain();
    assert!(out.closes().is_empty());
    assert!(matches!(
        &out.to(alice.conn)[..],
        [Seen::PeerLeft {
            reason: LeaveReason::Kicked,
            ..
        }]
    ));
    assert_eq!(w.hub.stats().detached, 0);
    assert_eq!(w.hub.peer_count(&id), 1);
    w.check();
}

/// The `server_message`s one connection got, as (epoch, seq, "type data").
fn server_messages(out: &Outbox, conn: ConnId) -> Vec<(u64, u64, String)> {
    out.to(conn)
        .into_iter()
        .filter_map(|f| match f {
            Seen::ServerMessage {
                e,
                s,
                msg_type,
                data,
            } => Some((e, s, format!("{msg_type} {data}"))),
            _ => None,
        })
        .collect()
}

#[test]
fn the_backends_messages_are_numbered_per_peer_kept_until_acked_and_sent_again_after_a_resume() {
    let mut w = World::new();
    let r = room("r1", 8);
    let id = r.summary.id.clone();
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_owned()).unwrap();

    // To everyone: each peer gets number 1 of its own space.
    let sent = w
        .hub
        .handle_server_message(&id, None, "notice", &raw(r#"{"n":1}"#), 77);
    assert_eq!(sent, vec![alice.peer.clone(), bob.peer.clone()]);
    let out = w.drain();
    assert_eq!(
        server_messages(&out, alice.conn),
        [(77, 1, r#"notice {"n":1}"#.into())]
    );
    assert_eq!(
        server_messages(&out, bob.conn),
        [(77, 1, r#"notice {"n":1}"#.into())]
    );
    // To bob only; a peer that is not here is skipped; the epoch given later does not change
    // a space that exists.
    let sent = w.hub.handle_server_message(
        &id,
        Some(&[bob.peer.clone(), bluecam_proto::PeerId::new("nobody")]),
        "notice",
        &raw("2"),
        99,
    );
    assert_eq!(sent, vec![bob.peer.clone()]);
    let out = w.drain();
    assert_eq!(
        server_messages(&out, bob.conn),
        [(77, 2, "notice 2".into())]
    );
    assert!(out.to(alice.conn).is_empty());

    // Bob acknowledges the first; his connection drops; a third is kept for him.
    w.input(&bob, r#"{"op":"server_ack","e":77,"s":1}"#);
    w.hub.handle_disconnect(bob.conn, w.at(1));
    let _ = w.drain();
    w.hub.handle_server_message(
        &id,
        Some(std::slice::from_ref(&bob.peer)),
        "notice",
        &raw("3"),
        1,
    );
    assert!(w.drain().is_empty());
    // He resumes: every one not acknowledged (2, which his old connection may have lost, and
    // 3), once each, in order.
    let req = w.resume_request(&r, &bob);
    let conn = req.conn;
    w.hub.handle_join(req).unwrap();
    let out = w.drain();
    assert_eq!(
        server_messages(&out, conn),
        [(77, 2, "notice 2".into()), (77, 3, "notice 3".into())]
    );
    // An ack of another space, or of nothing new, changes nothing; then all acknowledged, a
    // resume sends none again.
    w.hub.handle_message(
        conn,
        crate::support::client(r#"{"op":"server_ack","e":5,"s":9}"#),
    );
    w.hub.handle_message(
        conn,
        crate::support::client(r#"{"op":"server_ack","e":77,"s":3}"#),
    );
    w.check();
    let _ = w.drain();
    w.hub.handle_disconnect(conn, w.at(2));
    let _ = w.drain();
    let mut again = bob.clone();
    again.conn = conn;
    let req = w.resume_request(&r, &again);
    let conn2 = req.conn;
    w.hub.handle_join(req).unwrap();
    assert!(server_messages(&w.drain(), conn2).is_empty());
    w.check();
}

#[test]
fn a_peer_that_does_not_acknowledge_gets_no_more_than_a_resume_buffer_of_them_and_stays() {
    let mut w = World::new();
    let r = room("r1", 8);
    let id = r.summary.id.clone();
    let (_alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    let raw = serde_json::value::RawValue::from_string("0".into()).unwrap();
    let to = std::slice::from_ref(&bob.peer);
    let cap = bluecam_core::CoreConfig::default().resume_buffer_frames;
    for _ in 0..cap {
        assert_eq!(
            w.hub
                .handle_server_message(&id, Some(to), "t", &raw, 1)
                .len(),
            1
        );
    }
    let _ = w.drain();
    // Full: not sent (the sender is told), and nobody is closed or removed.
    assert!(
        w.hub
            .handle_server_message(&id, Some(to), "t", &raw, 1)
            .is_empty()
    );
    let out = w.drain();
    assert!(
        out.closes().is_empty() && out.overflows().is_empty(),
        "{out:?}"
    );
    assert_eq!(w.hub.peer_count(&id), 2);
    // Acknowledged, there is room again.
    w.input(&bob, r#"{"op":"server_ack","e":1,"s":10}"#);
    assert_eq!(
        w.hub
            .handle_server_message(&id, Some(to), "t", &raw, 1)
            .len(),
        1
    );
    assert_eq!(server_messages(&w.drain(), bob.conn)[0].1, cap as u64 + 1);
    w.check();
}

#[test]
fn the_backends_messages_forwarded_after_a_peer_that_moved_here_are_kept_until_acknowledged() {
    let mut w = World::new();
    let r = room("r1", 8);
    let id = r.summary.id.clone();
    let (bob, _) = w.join(&r, "bob");
    // Another node's message number 4 of its space 55, forwarded after bob.
    let frame = bluecam_core::Frame::new(&bluecam_proto::ServerMessage::ServerMessage(
        bluecam_proto::ServerMessageFrame {
            e: 55,
            s: 4,
            msg_type: "t".into(),
            data: std::borrow::Cow::Owned(
                serde_json::value::RawValue::from_string("4".into()).unwrap(),
            ),
        },
    ));
    let event = || bluecam_core::RoomEvent::Frame {
        to: vec![bob.peer.clone()],
        frame: frame.clone(),
    };
    w.hub.handle_room_event(&id, 0, event());
    assert_eq!(
        server_messages(&w.drain(), bob.conn),
        [(55, 4, "t 4".into())]
    );
    // Forwarded twice (a retried hand-over): kept once.
    w.hub.handle_room_event(&id, 0, event());
    let _ = w.drain();
    // His connection drops before he acknowledged it: his resume gets it again, once.
    w.hub.handle_disconnect(bob.conn, w.at(1));
    let _ = w.drain();
    let req = w.resume_request(&r, &bob);
    let conn = req.conn;
    w.hub.handle_join(req).unwrap();
    assert_eq!(server_messages(&w.drain(), conn), [(55, 4, "t 4".into())]);
    // Acknowledged in its own space: gone.
    w.hub.handle_message(
        conn,
        crate::support::client(r#"{"op":"server_ack","e":55,"s":4}"#),
    );
    w.hub.handle_disconnect(conn, w.at(2));
    let _ = w.drain();
    let mut again = bob.clone();
    again.conn = conn;
    let req = w.resume_request(&r, &again);
    let conn2 = req.conn;
    w.hub.handle_join(req).unwrap();
    assert!(server_messages(&w.drain(), conn2).is_empty());
    w.check();
}
