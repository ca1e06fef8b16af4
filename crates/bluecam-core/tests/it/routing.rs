//! Routing of `signal` and `send`: who gets what, `from` written by the hub, refusals.

use crate::support::{Client, Seen, World, assert_unknown_peer, room, send_frame, signal_frame};
use bluecam_core::JoinRequest;
use bluecam_proto::{ErrorCode, PeerId, Permissions};

/// alice, bob and carol in room "a"; dave in room "b". Outputs of the joins are drained.
fn two_rooms() -> (World, [Client; 4]) {
    let mut w = World::new();
    let a = room("a", 8);
    let b = room("b", 8);
    let (alice, _) = w.join(&a, "alice");
    let (bob, _) = w.join(&a, "bob");
    let (carol, _) = w.join(&a, "carol");
    let (dave, _) = w.join(&b, "dave");
    (w, [alice, bob, carol, dave])
}

#[test]
fn signal_reaches_only_the_addressed_peer_with_from_written_by_the_hub() {
    let (mut w, [alice, bob, _carol, _dave]) = two_rooms();
    let data = r#"{"type":"offer","sdp":"v=0\r\n"}"#;
    // A client-written `from` is ignored.
    let text = format!(
        r#"{{"op":"signal","from":"{}","to":"{}","data":{data}}}"#,
        bob.peer, bob.peer
    );
    let out = w.input(&alice, &text);
    assert_eq!(out.recipients(), vec![bob.conn]);
    match &out.to(bob.conn)[..] {
        [Seen::Signal { from, data: got }] => {
            assert_eq!(from, &alice.peer);
            assert_eq!(got, data, "data is forwarded byte for byte");
        }
        other => panic!("bob should get one signal, got {other:?}"),
    }
}

#[test]
fn send_to_a_list_reaches_only_the_listed_peers() {
    let (mut w, [alice, bob, carol, dave]) = two_rooms();
    let msg = r#"{ "a" : [ 1 , 2 ] , "n" : 1.50 }"#;
    let out = w.input(&alice, &send_frame(Some(&[&carol.peer]), msg, Some(1)));
    assert_eq!(out.recipients(), vec![carol.conn]);
    match &out.to(carol.conn)[..] {
        [Seen::Message { from, msg: got }] => {
            assert_eq!(from, &alice.peer);
            assert_eq!(got, msg, "msg is forwarded byte for byte");
        }
        other => panic!("carol should get one message, got {other:?}"),
    }
    assert!(out.to(bob.conn).is_empty());
    assert!(out.to(dave.conn).is_empty());
    assert!(out.to(alice.conn).is_empty(), "no error, no echo");
}

#[test]
fn send_without_to_reaches_all_others_but_not_the_sender() {
    let (mut w, [alice, bob, carol, dave]) = two_rooms();
    let out = w.input(&bob, &send_frame(None, r#""hi all""#, None));
    let mut expected = vec![alice.conn, carol.conn];
    expected.sort();
    assert_eq!(out.recipients(), expected);
    for c in [&alice, &carol] {
        match &out.to(c.conn)[..] {
            [Seen::Message { from, msg }] => {
                assert_eq!(from, &bob.peer);
                assert_eq!(msg, r#""hi all""#);
            }
            other => panic!("{:?} should get one message, got {other:?}", c.peer),
        }
    }
    assert!(out.to(dave.conn).is_empty(), "other rooms never see it");
    assert!(out.to(bob.conn).is_empty(), "never back to the sender");

    // `to: null` is a broadcast too.
    let out = w.input(&bob, r#"{"op":"send","to":null,"msg":2}"#);
    assert_eq!(out.recipients(), expected);
}

#[test]
fn broadcast_alone_in_a_room_and_empty_to_deliver_nothing_without_error() {
    let (mut w, [alice, _bob, _carol, dave]) = two_rooms();
    assert!(w.input(&dave, &send_frame(None, "1", Some(3))).is_empty());
    assert!(
        w.input(&alice, &send_frame(Some(&[]), "1", Some(4)))
            .is_empty()
    );
}

#[test]
fn duplicate_ids_in_to_deliver_once() {
    let (mut w, [alice, bob, carol, _dave]) = two_rooms();
    let to = [&bob.peer, &carol.peer, &bob.peer, &bob.peer];
    let out = w.input(&alice, &send_frame(Some(&to), r#""once""#, Some(5)));
    assert_eq!(out.to(bob.conn).len(), 1);
    assert_eq!(out.to(carol.conn).len(), 1);
    assert!(out.to(alice.conn).is_empty());
}

#[test]
fn a_peer_of_room_a_cannot_reach_a_peer_of_room_b() {
    let (mut w, [alice, bob, carol, dave]) = two_rooms();

    let out = w.input(&alice, &signal_frame(&dave.peer, "1", Some(7)));
    assert_eq!(out.recipients(), vec![alice.conn]);
    assert_unknown_peer(&out.to(alice.conn), &[&dave.peer], Some(7));

    let out = w.input(&alice, &send_frame(Some(&[&dave.peer]), "1", Some(8)));
    assert_eq!(out.recipients(), vec![alice.conn]);
    assert_unknown_peer(&out.to(alice.conn), &[&dave.peer], Some(8));

    // And the other way round.
    let out = w.input(
        &dave,
        &send_frame(Some(&[&bob.peer, &carol.peer]), "1", None),
    );
    assert_eq!(out.recipients(), vec![dave.conn]);
    let mut listed = [&bob.peer, &carol.peer];
    listed.sort();
    assert_unknown_peer(&out.to(dave.conn), &listed, None);
}

#[test]
fn unknown_ids_are_reported_sorted_once_and_the_valid_ones_still_get_the_message() {
    let (mut w, [alice, bob, carol, dave]) = two_rooms();
    let ghost = PeerId::new("zz-ghost");
    let early = PeerId::new("aa-ghost");
    let to = [&ghost, &bob.peer, &dave.peer, &ghost, &alice.peer, &early];
    let out = w.input(&alice, &send_frame(Some(&to), r#""x""#, Some(42)));
    assert_eq!(out.to(bob.conn).len(), 1);
    assert!(out.to(carol.conn).is_empty());
    assert!(out.to(dave.conn).is_empty());
    let mut unknown = vec![&ghost, &dave.peer, &alice.peer, &early];
    unknown.sort();
    assert_unknown_peer(&out.to(alice.conn), &unknown, Some(42));
}

#[test]
fn sending_or_signaling_to_self_is_unknown_peer() {
    let (mut w, [alice, _bob, _carol, _dave]) = two_rooms();
    let out = w.input(&alice, &signal_frame(&alice.peer, "{}", Some(1)));
    assert_eq!(out.recipients(), vec![alice.conn]);
    assert_unknown_peer(&out.to(alice.conn), &[&alice.peer], Some(1));

    let out = w.input(&alice, &send_frame(Some(&[&alice.peer]), "{}", Some(2)));
    assert_eq!(out.recipients(), vec![alice.conn]);
    assert_unknown_peer(&out.to(alice.conn), &[&alice.peer], Some(2));
}

#[test]
fn send_data_false_is_permission_denied_and_nothing_is_delivered() {
    let mut w = World::new();
    let r = room("r1", 8);
    let (alice, _) = w.join(&r, "alice");
    let mut req: JoinRequest = w.request(&r, "viewer");
    req.permissions = Permissions {
        send_data: false,
        ..Permissions::default()
    };
    let (viewer, _) = w.admit(req);

    let ghost = PeerId::new("ghost");
    for text in [
        send_frame(None, "1", Some(9)),
        // No unknown_peer check happens either.
        send_frame(Some(&[&alice.peer, &ghost]), "1", Some(9)),
    ] {
        let out = w.input(&viewer, &text);
        assert_eq!(out.recipients(), vec![viewer.conn]);
        let seen = out.to(viewer.conn);
        let [one] = &seen[..] else {
            panic!("expected one error, got {seen:?}")
        };
        let e = one.error();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert_eq!(e.reference, Some(9));
        assert_eq!(e.peers, None);
    }

    // Signaling needs no sendData.
    let out = w.input(&viewer, &signal_frame(&alice.peer, "1", None));
    assert_eq!(out.recipients(), vec![alice.conn]);
}
