//! Detached peers and resume: silence towards the others, kept frames, credentials checks,
//! takeover, the resume window and the bounded resume buffer.

use crate::support::{Seen, World, room, send_frame, signal_frame};
use bluecam_core::{CoreConfig, Frame, HubStats, JoinRejected, RestoredSession, secret_digest};
use bluecam_proto::{
    CloseCode, ErrorCode, Identity, LeaveReason, MessageFrame, Permissions, RawValue,
    ServerMessage, SessionSecret,
};
use std::{borrow::Cow, time::Duration};

#[test]
fn disconnect_is_silent_and_kept_frames_arrive_in_order_exactly_once_on_resume() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    let (carol, _) = w.join(&r, "carol");

    w.hub.handle_disconnect(alice.conn, w.at(0));
    w.check();
    assert!(w.drain().is_empty(), "the others see nothing");
    assert_eq!(w.hub.poll_timeout(), Some(w.at(60)));
    assert_eq!(w.hub.peer_of(alice.conn), None);
    assert_eq!(w.hub.peer_count(&r.summary.id), 3, "still present");

    // Frames for alice are kept; senders get no error.
    assert!(
        w.input(&bob, &send_frame(Some(&[&alice.peer]), "1", Some(1)))
            .is_empty()
    );
    let out = w.input(&bob, &send_frame(None, "2", Some(2)));
    assert_eq!(out.recipients(), vec![carol.conn]);
    assert!(
        w.input(&carol, &signal_frame(&alice.peer, r#""s1""#, Some(3)))
            .is_empty()
    );
    let (dave, _) = w.join(&r, "dave");
    assert!(
        w.input(&bob, &send_frame(Some(&[&alice.peer]), "3", None))
            .is_empty()
    );

    let req = w.resume_request(&r, &alice);
    let (alice2, out) = w.admit(req);
    w.check();
    assert_eq!(alice2.peer, alice.peer, "same peer id");
    assert_eq!(alice2.session, alice.session);
    assert_eq!(alice2.secret, alice.secret);
    assert_eq!(
        out.recipients(),
        vec![alice2.conn],
        "the others see nothing"
    );
    let seen = out.to(alice2.conn);
    let joined = seen[0].joined();
    assert!(joined.resumed);
    assert_eq!(joined.self_.id, alice.peer);
    let ids: Vec<_> = joined.peers.iter().map(|p| p.id.clone()).collect();
    assert_eq!(
        ids,
        vec![bob.peer.clone(), carol.peer.clone(), dave.peer.clone()]
    );
    match &seen[1..] {
        [
            Seen::Message { from: f1, msg: m1 },
            Seen::Message { from: f2, msg: m2 },
            Seen::Signal { from: f3, data: d3 },
            Seen::PeerJoined(p4),
            Seen::Message { from: f5, msg: m5 },
        ] => {
            assert_eq!((f1, m1.as_str()), (&bob.peer, "1"));
            assert_eq!((f2, m2.as_str()), (&bob.peer, "2"));
            assert_eq!((f3, d3.as_str()), (&carol.peer, r#""s1""#));
            assert_eq!(p4.id, dave.peer);
            assert_eq!((f5, m5.as_str()), (&bob.peer, "3"));
        }
        other => panic!("unexpected kept frames {other:?}"),
    }
    assert_eq!(w.hub.poll_timeout(), None);
    assert_eq!(w.hub.stats().detached, 0);

    // Live traffic flows to the new connection; nothing kept is delivered twice.
    let out = w.input(&bob, &send_frame(Some(&[&alice.peer]), "4", None));
    assert_eq!(out.recipients(), vec![alice2.conn]);
    assert!(matches!(&out.to(alice2.conn)[..], [Seen::Message { msg, .. }] if msg == "4"));
    let out = w.input(&alice2, &send_frame(Some(&[&bob.peer]), "5", None));
    assert!(matches!(&out.to(bob.conn)[..], [Seen::Message { from, .. }] if *from == alice.peer));
    // The old connection's number means nothing any more.
    w.hub.handle_disconnect(alice.conn, w.at(31));
    assert!(w.drain().is_empty());
    assert_eq!(w.hub.poll_timeout(), None);
}

#[test]
fn resume_with_a_wrong_secret_or_unknown_session_is_session_expired() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    w.hub.handle_disconnect(alice.conn, w.at(0));

    let mut req = w.resume_request(&r, &alice);
    if let Some(creds) = req.resume.as_mut() {
        creds.secret = SessionSecret::new("not-the-secret");
    }
    assert_eq!(w.refuse(req), JoinRejected::SessionExpired);
    assert_eq!(
        JoinRejected::SessionExpired.code(),
        ErrorCode::SessionExpired
    );

    let mut stranger = alice.clone();
    stranger.session = "no-such-session".into();
    let req = w.resume_request(&r, &stranger);
    assert_eq!(w.refuse(req), JoinRejected::SessionExpired);

    // A failed guess does not end the real session.
    let req = w.resume_request(&r, &alice);
    let (again, _) = w.admit(req);
    assert_eq!(again.peer, alice.peer);
}

#[test]
fn resume_with_another_identity_or_room_is_unauthorized() {
    let mut w = World::new();
    let r = room("r1", 8);
    let other = room("r2", 8);
    let (alice, _) = w.join(&r, "alice");
    w.join(&other, "erin");
    w.hub.handle_disconnect(alice.conn, w.at(0));

    let mut req = w.resume_request(&r, &alice);
    req.identity = Identity::new("mallory");
    assert_eq!(w.refuse(req), JoinRejected::Unauthorized);
    assert_eq!(JoinRejected::Unauthorized.code(), ErrorCode::Unauthorized);

    let req = w.resume_request(&other, &alice);
    assert_eq!(w.refuse(req), JoinRejected::Unauthorized);
    assert_eq!(w.hub.peer_count(&other.summary.id), 1);

    // Still resumable by its owner.
    assert_eq!(w.hub.stats().detached, 1);
    let req = w.resume_request(&r, &alice);
    w.admit(req);
    w.check();
}

#[test]
fn resume_of_an_attached_session_replaces_the_old_conn() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");

    // The old socket still looks alive (half-open TCP) when the client resumes.
    let req = w.resume_request(&r, &alice);
    let (alice2, out) = w.admit(req);
    assert_eq!(alice2.peer, alice.peer);
    assert!(out.to(alice2.conn)[0].joined().resumed);
    assert_eq!(out.recipients(), vec![alice2.conn], "bob sees nothing");
    assert_eq!(out.closes(), vec![(alice.conn, CloseCode::Replaced)]);
    assert_eq!(w.hub.peer_of(alice.conn), None);
    assert_eq!(w.hub.peer_of(alice2.conn).map(|p| &p.1), Some(&alice.peer));

    // The old connection's own disconnect, later, changes nothing.
    w.hub.handle_disconnect(alice.conn, w.at(5));
    w.check();
    assert!(w.drain().is_empty());
    assert_eq!(w.hub.poll_timeout(), None);
    assert_eq!(
        w.hub.stats(),
        HubStats {
            rooms: 1,
            peers: 2,
            detached: 0
        }
    );
    let out = w.input(&bob, &send_frame(Some(&[&alice.peer]), "1", None));
    assert_eq!(out.recipients(), vec![alice2.conn]);
    // Frames on the replaced connection are ignored.
    w.hub
        .handle_message(alice.conn, crate::support::client(r#"{"op":"leave"}"#));
    assert!(w.drain().is_empty());
}

#[test]
fn resume_keeps_the_permissions_and_name_of_the_original_join() {
    let mut w = World::new();
    let r = room("r1", 8);
    w.join(&r, "alice");
    let mut req = w.request(&r, "viewer");
    req.permissions = Permissions {
        send_data: false,
        ..Permissions::default()
    };
    let (viewer, _) = w.admit(req);
    w.hub.handle_disconnect(viewer.conn, w.at(0));

    let mut req = w.resume_request(&r, &viewer);
    req.name = Some("New name".into());
    assert!(req.permissions.send_data);
    let (viewer2, out) = w.admit(req);
    assert_eq!(
        out.to(viewer2.conn)[0].joined().self_.name.as_deref(),
        Some("viewer (name)")
    );
    let out = w.input(&viewer2, &send_frame(None, "1", None));
    assert_eq!(
        out.to(viewer2.conn)[0].error().code,
        ErrorCode::PermissionDenied
    );
}

#[test]
fn after_the_window_handle_timeout_removes_the_peer_with_reason_timeout() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    let (carol, _) = w.join(&r, "carol");

    assert_eq!(w.hub.poll_timeout(), None);
    w.hub.handle_disconnect(bob.conn, w.at(10));
    w.hub.handle_disconnect(carol.conn, w.at(20));
    assert_eq!(w.hub.poll_timeout(), Some(w.at(70)), "the earliest expiry");

    w.hub.handle_timeout(w.at(69));
    assert!(w.drain().is_empty(), "not yet");
    assert_eq!(w.hub.peer_count(&r.summary.id), 3);

    w.hub.handle_timeout(w.at(70));
    w.check();
    let out = w.drain();
    assert_eq!(out.recipients(), vec![alice.conn]);
    match &out.to(alice.conn)[..] {
        [Seen::PeerLeft { peer, reason }] => {
            assert_eq!(peer, &bob.peer);
            assert_eq!(*reason, LeaveReason::Timeout);
        }
        other => panic!("expected peer_left timeout, got {other:?}"),
    }
    assert!(out.closes().is_empty());
    assert_eq!(w.hub.poll_timeout(), Some(w.at(80)));
    assert_eq!(w.hub.peer_count(&r.summary.id), 2);

    // Resume after the window: the session is gone.
    let req = w.resume_request(&r, &bob);
    assert_eq!(w.refuse(req), JoinRejected::SessionExpired);

    // The detached carol still got bob's peer_left, before her own expiry.
    w.hub.handle_timeout(w.at(100));
    let out = w.drain();
    assert!(matches!(
        &out.to(alice.conn)[..],
        [Seen::PeerLeft { peer, reason: LeaveReason::Timeout }] if *peer == carol.peer
    ));
    assert_eq!(w.hub.poll_timeout(), None);

    // The last peer timing out vacates the room, telling nobody.
    w.hub.handle_disconnect(alice.conn, w.at(100));
    assert_eq!(w.hub.poll_timeout(), Some(w.at(160)));
    w.hub.handle_timeout(w.at(160));
    let out = w.drain();
    assert!(out.recipients().is_empty());
    assert_eq!(out.vacated(), vec![r.summary.id.clone()]);
    assert_eq!(w.hub.stats(), HubStats::default());
    w.check();
}

#[test]
fn a_second_disconnect_after_resume_starts_a_new_window() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    w.join(&r, "bob");
    w.hub.handle_disconnect(alice.conn, w.at(0));
    let req = w.resume_request(&r, &alice);
    let (alice2, _) = w.admit(req);
    w.hub.handle_disconnect(alice2.conn, w.at(50));
    assert_eq!(w.hub.poll_timeout(), Some(w.at(110)));
    w.hub.handle_timeout(w.at(60));
    assert!(w.drain().is_empty(), "the first window no longer applies");
    assert_eq!(w.hub.peer_count(&r.summary.id), 2);
    w.check();
}

#[test]
fn resume_after_the_window_is_session_expired() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    w.hub.handle_disconnect(alice.conn, w.at(0));
    let deadline = w.hub.poll_timeout().unwrap();
    assert_eq!(deadline, w.at(60));
    w.hub.handle_timeout(deadline);
    assert_eq!(w.drain().vacated(), vec![r.summary.id.clone()]);
    let req = w.resume_request(&r, &alice);
    assert_eq!(w.refuse(req), JoinRejected::SessionExpired);
}

fn small_buffer(frames: usize, bytes: usize) -> World {
    World::with_config(CoreConfig {
        resume_window: Duration::from_secs(60),
        resume_buffer_frames: frames,
        resume_buffer_bytes: bytes,
    })
}

#[test]
fn resume_buffer_overflow_by_frames_ends_the_session() {
    let mut w = small_buffer(3, 1 << 20);
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    w.hub.handle_disconnect(bob.conn, w.at(0));

    for i in 0..3 {
        let out = w.input(
            &alice,
            &send_frame(Some(&[&bob.peer]), &i.to_string(), None),
        );
        assert!(out.is_empty(), "frame {i} is kept");
    }
    // One more ends bob's session; alice learns through peer_left, not an error.
    let out = w.input(&alice, &send_frame(Some(&[&bob.peer]), "3", Some(3)));
    assert_eq!(
        out.overflows(),
        vec![(r.summary.id.clone(), bob.peer.clone())]
    );
    match &out.to(alice.conn)[..] {
        [Seen::PeerLeft { peer, reason }] => {
            assert_eq!(peer, &bob.peer);
            assert_eq!(*reason, LeaveReason::Timeout);
        }
        other => panic!("expected peer_left timeout, got {other:?}"),
    }
    assert_eq!(w.hub.poll_timeout(), None);
    assert_eq!(w.hub.peer_count(&r.summary.id), 1);
    let req = w.resume_request(&r, &bob);
    assert_eq!(w.refuse(req), JoinRejected::SessionExpired);
}

#[test]
fn resume_buffer_overflow_by_bytes_ends_the_session() {
    let r = room("r1", 8);
    let payload = format!("\"{}\"", "x".repeat(100));
    let probe = |from: &str| {
        Frame::new(&ServerMessage::Message(MessageFrame {
            from: from.into(),
            msg: Cow::Owned(RawValue::from_string(payload.clone()).unwrap()),
        }))
        .len()
    };
    // Room for exactly two of alice's messages (peer ids are the same length).
    let limit = 2 * probe("peer-1");
    let mut w = small_buffer(1024, limit);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    assert_eq!(alice.peer.as_str(), "peer-1");
    w.hub.handle_disconnect(bob.conn, w.at(0));

    assert!(
        w.input(&alice, &send_frame(None, &payload, None))
            .is_empty()
    );
    assert!(
        w.input(&alice, &send_frame(None, &payload, None))
            .is_empty()
    );
    let out = w.input(&alice, &send_frame(None, "1", None));
    assert_eq!(
        out.overflows(),
        vec![(r.summary.id.clone(), bob.peer.clone())]
    );
    assert!(matches!(
        &out.to(alice.conn)[..],
        [Seen::PeerLeft { peer, reason: LeaveReason::Timeout }] if *peer == bob.peer
    ));
    let req = w.resume_request(&r, &bob);
    assert_eq!(w.refuse(req), JoinRejected::SessionExpired);
    w.check();
}

/// Regression guard: when one frame overflows two detached peers, the first one's removal
/// sends `peer_left` to the second, which overflows again while it is still waiting for its
/// own removal. Each peer must be reported once.
#[test]
fn two_peers_overflowing_on_the_same_frame_are_each_reported_once() {
    let mut w = small_buffer(1, 1 << 20);
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    let (carol, _) = w.join(&r, "carol");
    w.hub.handle_disconnect(bob.conn, w.at(0));
    w.hub.handle_disconnect(carol.conn, w.at(0));

    assert!(w.input(&alice, &send_frame(None, "1", None)).is_empty());
    let out = w.input(&alice, &send_frame(None, "2", None));
    let mut overflowed: Vec<_> = out.overflows().into_iter().map(|(_, p)| p).collect();
    overflowed.sort();
    assert_eq!(overflowed, vec![bob.peer.clone(), carol.peer.clone()]);
    let mut left: Vec<_> = out
        .to(alice.conn)
        .into_iter()
        .map(|s| match s {
            Seen::PeerLeft {
                peer,
                reason: LeaveReason::Timeout,
            } => peer,
            other => panic!("expected peer_left timeout, got {other:?}"),
        })
        .collect();
    left.sort();
    assert_eq!(left, overflowed);
    assert_eq!(w.hub.stats().peers, 1);
}

fn message(from: &bluecam_proto::PeerId, n: u32) -> Frame {
    let msg = RawValue::from_string(n.to_string()).unwrap();
    Frame::new(&ServerMessage::Message(MessageFrame {
        from: from.clone(),
        msg: Cow::Owned(msg),
    }))
}

#[test]
fn an_unwritten_backlog_is_kept_before_later_frames() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    w.drain();
    // Two frames were queued to alice's connection but never written when it dropped.
    let backlog = vec![message(&bob.peer, 1), message(&bob.peer, 2)];
    w.hub
        .handle_disconnect_with_backlog(alice.conn, w.at(0), backlog, false);
    w.check();
    assert!(w.drain().is_empty(), "the others see nothing");
    w.input(&bob, &send_frame(Some(&[&alice.peer]), "3", None));
    let req = w.resume_request(&r, &alice);
    let (alice2, out) = w.admit(req);
    let msgs: Vec<String> = out
        .to(alice2.conn)
        .into_iter()
        .filter_map(|s| match s {
            Seen::Message { msg, .. } => Some(msg),
            _ => None,
        })
        .collect();
    assert_eq!(msgs, ["1", "2", "3"]);
}

#[test]
fn a_truncated_backlog_ends_the_session_instead_of_resuming_with_a_gap() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");
    w.drain();
    w.hub
        .handle_disconnect_with_backlog(alice.conn, w.at(0), Vec::new(), true);
    w.check();
    let out = w.drain();
    assert_eq!(
        out.overflows(),
        vec![(r.summary.id.clone(), alice.peer.clone())]
    );
    match &out.to(bob.conn)[..] {
        [Seen::PeerLeft { peer, reason }] => {
            assert_eq!((peer, *reason), (&alice.peer, LeaveReason::Timeout));
        }
        other => panic!("expected peer_left, got {other:?}"),
    }
    let req = w.resume_request(&r, &alice);
    assert_eq!(w.refuse(req), JoinRejected::SessionExpired);
}

/// What a restarted server reads back for `client` (the secret only as its digest).
fn restored(r: &bluecam_core::RoomAccess, client: &crate::support::Client) -> RestoredSession {
    RestoredSession {
        room: r.summary.clone(),
        info: bluecam_proto::PeerInfo {
            id: client.peer.clone(),
            identity: client.identity.clone(),
            name: None,
            metadata: None,
        },
        permissions: Permissions::default(),
        session: client.session.clone(),
        secret_digest: secret_digest(&client.secret),
    }
}

#[test]
fn restored_sessions_resume_with_their_peer_id_and_the_others_see_no_leave_or_join() {
    // Before the restart: alice, bob and carol in a room.
    let mut before = World::new();
    let r = room("r1", 3);
    let (alice, _) = before.join(&r, "alice");
    let (bob, _) = before.join(&r, "bob");
    let (carol, _) = before.join(&r, "carol");

    // A new process: its hub knows only what was on disk.
    let mut w = World::new();
    for c in [&alice, &bob, &carol] {
        w.hub.restore(restored(&r, c), w.at(0));
    }
    w.check();
    assert!(w.drain().is_empty(), "restoring tells no one");
    assert_eq!(w.hub.peer_count(&r.summary.id), 3, "the seats are held");
    assert_eq!(
        w.hub.stats(),
        HubStats {
            rooms: 1,
            peers: 3,
            detached: 3
        }
    );
    // The room is full: a stranger cannot take a seat while they may come back.
    let req = w.request(&r, "dave");
    assert_eq!(w.refuse(req), JoinRejected::RoomFull);

    // A wrong secret is refused, as before the restart.
    let mut forged = w.resume_request(&r, &alice);
    forged.resume = Some(bluecam_proto::ResumeCredentials {
        session: alice.session.clone(),
        secret: SessionSecret::new("not-the-secret"),
    });
    assert_eq!(w.refuse(forged), JoinRejected::SessionExpired);

    // alice resumes: same peer, same session, her secret back in `joined`; nobody is told.
    let req = w.resume_request(&r, &alice);
    let (alice2, out) = w.admit(req);
    w.check();
    assert_eq!(
        (&alice2.peer, &alice2.session, &alice2.secret),
        (&alice.peer, &alice.session, &alice.secret)
    );
    assert_eq!(
        out.recipients(),
        vec![alice2.conn],
        "the others see nothing"
    );
    let joined = out.to(alice2.conn)[0].joined().clone();
    assert!(joined.resumed);
    let ids: Vec<_> = joined.peers.iter().map(|p| p.id.clone()).collect();
    assert_eq!(
        ids,
        vec![bob.peer.clone(), carol.peer.clone()],
        "join order kept"
    );

    // A frame for bob (still away) is kept for him; bob resumes and gets it.
    assert!(
        w.input(&alice2, &send_frame(Some(&[&bob.peer]), "1", None))
            .is_empty()
    );
    let req = w.resume_request(&r, &bob);
    let (bob2, out) = w.admit(req);
    assert_eq!(bob2.peer, bob.peer);
    match &out.to(bob2.conn)[1..] {
        [Seen::Message { from, msg }] => assert_eq!((from, msg.as_str()), (&alice.peer, "1")),
        other => panic!("unexpected kept frames {other:?}"),
    }
    assert_eq!(out.recipients(), vec![bob2.conn]);

    // carol never comes back: she leaves with `timeout` when the window (from the restart)
    // has passed, and the others are told.
    w.hub.handle_timeout(w.at(59));
    assert!(w.drain().is_empty());
    w.hub.handle_timeout(w.at(60));
    w.check();
    let out = w.drain();
    for c in [&alice2, &bob2] {
        match &out.to(c.conn)[..] {
            [
                Seen::PeerLeft {
                    peer,
                    reason: LeaveReason::Timeout,
                },
            ] => assert_eq!(peer, &carol.peer),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Her session is over: a late resume is refused.
    let req = w.resume_request(&r, &carol);
    assert_eq!(w.refuse(req), JoinRejected::SessionExpired);
}

#[test]
fn a_new_session_of_an_identity_takes_its_seat_even_in_a_full_room() {
    let mut w = World::new();
    let r = room("two-seats", 2);
    let (owner, _) = w.join(&r, "owner");
    let (visitor, _) = w.join(&r, "visitor");
    // The visitor reloads: the old tab may still be attached (half-open) or already gone.
    for detach_first in [false, true] {
        let current = if detach_first {
            let (v, _) = w.join(&r, "visitor"); // (re-seated by the first round)
            v
        } else {
            visitor.clone()
        };
        if detach_first {
            w.hub.handle_disconnect(current.conn, w.at(0));
            let _ = w.drain();
        }
        let req = w.request(&r, "visitor");
        let (fresh, out) = w.admit(req);
        w.check();
        assert_ne!(fresh.peer, current.peer, "a new peer, not a resume");
        let want_close = if detach_first {
            vec![]
        } else {
            vec![(current.conn, CloseCode::Superseded)]
        };
        assert_eq!(out.closes(), want_close);
        match &out.to(owner.conn)[..] {
            [
                Seen::PeerLeft {
                    peer: old,
                    reason: LeaveReason::Replaced,
                },
                Seen::PeerJoined(new),
            ] => {
                assert_eq!((old, &new.id), (&current.peer, &fresh.peer));
            }
            other => panic!("the owner saw {other:?}"),
        }
        let joined = out.to(fresh.conn)[0].joined().clone();
        let ids: Vec<_> = joined.peers.iter().map(|p| p.id.clone()).collect();
        assert_eq!(ids, vec![owner.peer.clone()]);
        // The replaced session cannot come back.
        let req = w.resume_request(&r, &current);
        assert_eq!(w.refuse(req), JoinRejected::SessionExpired);
        // Leave the room as it was for the next round: owner + one visitor.
        let _ = w.input(&fresh, r#"{"op":"leave"}"#);
    }
    // With several sessions per identity allowed, the seats count instead.
    let mut many = room("many", 2);
    many.multiple_sessions = true;
    let (_a, _) = w.join(&many, "same");
    let (_b, out) = w.join(&many, "same");
    assert!(out.closes().is_empty());
    let req = w.request(&many, "same");
    assert_eq!(w.refuse(req), JoinRejected::RoomFull);
}
