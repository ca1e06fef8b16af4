//! Admission: `joined` and `peer_joined`, capacity, member lists, double joins.

use crate::support::{Seen, World, client, room, send_frame};
use bluecam_core::{ConnId, HubStats, JoinRejected};
use bluecam_proto::{ErrorCode, Identity};

#[test]
fn two_peers_join_and_see_each_other() {
    let mut w = World::new();
    let r = room("r1", 8);

    let (alice, out) = w.join(&r, "alice");
    assert_eq!(
        out.recipients(),
        vec![alice.conn],
        "nobody else is there to tell"
    );
    let frames = out.to(alice.conn);
    let joined = frames[0].joined();
    assert!(joined.peers.is_empty());
    assert!(!joined.resumed);
    assert_eq!(joined.room.id, r.summary.id);
    assert_eq!(joined.self_.identity, Identity::new("alice"));
    assert_eq!(joined.self_.name.as_deref(), Some("alice (name)"));
    assert_eq!(joined.session.resume_window_secs, 60);
    assert_eq!(joined.limits.max_peers, 8);

    let (bob, out) = w.join(&r, "bob");
    assert_ne!(alice.peer, bob.peer);
    assert_ne!(alice.session, bob.session);
    let mut recipients = vec![alice.conn, bob.conn];
    recipients.sort();
    assert_eq!(out.recipients(), recipients);
    let bob_frames = out.to(bob.conn);
    assert_eq!(bob_frames.len(), 1);
    let peers = &bob_frames[0].joined().peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].id, alice.peer);
    assert_eq!(peers[0].identity, Identity::new("alice"));
    assert_eq!(peers[0].name.as_deref(), Some("alice (name)"));
    match &out.to(alice.conn)[..] {
        [Seen::PeerJoined(p)] => {
            assert_eq!(p.id, bob.peer);
            assert_eq!(p.identity, Identity::new("bob"));
        }
        other => panic!("alice should see one peer_joined, got {other:?}"),
    }

    // A third peer gets the others in join order.
    let (carol, out) = w.join(&r, "carol");
    let ids: Vec<_> = out.to(carol.conn)[0]
        .joined()
        .peers
        .iter()
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(ids, vec![alice.peer.clone(), bob.peer.clone()]);
    let hub_ids: Vec<_> = w
        .hub
        .peers(&r.summary.id)
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(
        hub_ids,
        vec![alice.peer.clone(), bob.peer.clone(), carol.peer.clone()]
    );
    assert_eq!(w.hub.peer_count(&r.summary.id), 3);
    assert_eq!(
        w.hub.peer_of(bob.conn),
        Some(&(r.summary.id.clone(), bob.peer.clone()))
    );
    assert_eq!(
        w.hub.stats(),
        HubStats {
            rooms: 1,
            peers: 3,
            detached: 0
        }
    );
    w.check();
}

#[test]
fn joined_room_is_the_latest_stored_summary() {
    let mut w = World::new();
    let r = room("r1", 8);
    w.join(&r, "alice");
    let mut renamed = r.clone();
    renamed.summary.name = Some("Renamed".into());
    let (bob, out) = w.join(&renamed, "bob");
    assert_eq!(
        out.to(bob.conn)[0].joined().room.name.as_deref(),
        Some("Renamed")
    );
}

#[test]
fn room_full_at_max_peers_counting_detached_peers() {
    let mut w = World::new();
    let r = room("small", 2);
    let (_alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");

    let req = w.request(&r, "carol");
    assert_eq!(w.refuse(req), JoinRejected::RoomFull);
    assert_eq!(JoinRejected::RoomFull.code(), ErrorCode::RoomFull);

    // A detached peer still holds its seat for the resume window.
    w.hub.handle_disconnect(bob.conn, w.at(0));
    assert!(w.drain().is_empty());
    let req = w.request(&r, "carol");
    assert_eq!(w.refuse(req), JoinRejected::RoomFull);

    // Once its window has passed, the seat is free.
    w.hub.handle_timeout(w.at(60));
    w.drain();
    w.join(&r, "carol");
    assert_eq!(w.hub.peer_count(&r.summary.id), 2);
    w.check();
}

#[test]
fn members_list_forbids_strangers_and_admits_owner_and_members() {
    let mut w = World::new();
    let mut r = room("private", 8);
    r.owner = Some(Identity::new("olivia"));
    r.members = Some(vec![Identity::new("mia")]);

    let req = w.request(&r, "eve");
    assert_eq!(w.refuse(req), JoinRejected::Forbidden);
    assert_eq!(JoinRejected::Forbidden.code(), ErrorCode::Forbidden);
    assert_eq!(
        w.hub.peer_count(&r.summary.id),
        0,
        "no room kept for a refusal"
    );

    w.join(&r, "olivia");
    w.join(&r, "mia");

    // An empty member list admits only the owner.
    let mut owner_only = room("owner-only", 8);
    owner_only.owner = Some(Identity::new("olivia"));
    owner_only.members = Some(Vec::new());
    let req = w.request(&owner_only, "mia");
    assert_eq!(w.refuse(req), JoinRejected::Forbidden);
    w.join(&owner_only, "olivia");
    w.check();
}

#[test]
fn second_join_on_the_same_conn_is_already_joined() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (bob, _) = w.join(&r, "bob");

    let mut again = w.request(&r, "alice");
    again.conn = alice.conn;
    assert_eq!(w.refuse(again), JoinRejected::AlreadyJoined);
    assert_eq!(JoinRejected::AlreadyJoined.code(), ErrorCode::BadRequest);
    assert_eq!(
        w.hub.peer_of(alice.conn),
        Some(&(r.summary.id.clone(), alice.peer.clone()))
    );
    assert_eq!(w.hub.peer_count(&r.summary.id), 2);

    // A `join` frame reaching the room logic gets bad_request without ref; the connection stays.
    let out = w.input(&alice, r#"{"op":"join","token":"t","ref":4}"#);
    assert_eq!(out.recipients(), vec![alice.conn]);
    let seen = out.to(alice.conn);
    let e = seen[0].error();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(e.reference, None);
    assert!(out.closes().is_empty());
    let out = w.input(&alice, &send_frame(None, "1", None));
    assert_eq!(out.recipients(), vec![bob.conn]);
}

#[test]
fn ping_is_answered_and_pong_ignored() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let (_bob, _) = w.join(&r, "bob");
    w.drain();
    let out = w.input(&alice, r#"{"op":"ping"}"#);
    assert_eq!(out.recipients(), vec![alice.conn]);
    assert!(matches!(out.to(alice.conn)[..], [Seen::Pong]));
    assert!(w.input(&alice, r#"{"op":"pong"}"#).is_empty());
}

#[test]
fn frames_from_a_conn_that_has_not_joined_are_ignored() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    w.hub
        .handle_message(ConnId(999), client(r#"{"op":"send","msg":1}"#));
    w.hub
        .handle_message(ConnId(999), client(r#"{"op":"leave"}"#));
    w.hub.handle_disconnect(ConnId(999), w.at(0));
    assert!(w.drain().is_empty());
    assert_eq!(w.hub.peer_of(alice.conn).map(|p| &p.1), Some(&alice.peer));
    w.check();
}
