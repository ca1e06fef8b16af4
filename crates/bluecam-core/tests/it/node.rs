//! The cluster node's control loop ([`ClusterNode`]) by example: which steps it asks for, and
//! in which order, after what the directory answered.

use bluecam_core::cluster::{Beat, ClusterNode, Done, Signal, Step};
use bluecam_proto::{NodeId, RoomId};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(15);
const WINDOW: Duration = Duration::from_secs(60);

fn beat(epoch: &str, was_missing: bool) -> Done {
    Done::Heartbeat(Some(Beat {
        epoch: epoch.to_owned(),
        was_missing,
        drew_epoch: false,
    }))
}

fn kind(step: &Step) -> &'static str {
    match step {
        Step::Heartbeat => "heartbeat",
        Step::RestoreRooms(_) => "restore",
        Step::Resync { reconcile: true } => "resync",
        Step::Resync { reconcile: false } => "resync without reconcile",
        Step::Reap => "reap",
    }
}

/// Runs one round: a heartbeat answered with `answer`, then every step it leads to, each
/// reported done at once (a resync as `resync_ok`). Returns the steps' kinds.
fn round(
    node: &mut ClusterNode,
    now: Instant,
    answer: Done,
    rooms: &[RoomId],
    resync_ok: bool,
) -> Vec<&'static str> {
    let first = node.poll_step(now).expect("a heartbeat is due");
    assert_eq!(kind(&first), "heartbeat");
    let mut steps = vec!["heartbeat"];
    node.done(answer, now, rooms, false);
    while let Some(step) = node.poll_step(now) {
        steps.push(kind(&step));
        let done = match step {
            Step::Heartbeat => panic!("a second heartbeat in one round"),
            Step::RestoreRooms(_) => Done::RestoreRooms,
            Step::Resync { .. } => Done::Resync(resync_ok),
            Step::Reap => Done::Reap,
        };
        node.done(done, now, rooms, false);
        node.check_invariants().unwrap();
    }
    steps
}

fn room() -> Vec<RoomId> {
    vec![RoomId::new("r1")]
}

#[test]
fn a_quiet_round_is_a_heartbeat_and_a_reap_every_third_of_the_expiry() {
    let t0 = Instant::now();
    let mut node = ClusterNode::new(NodeId::new("n1"), TTL, WINDOW, t0);
    assert_eq!(
        round(&mut node, t0, beat("e1", true), &[], true),
        ["heartbeat", "reap"]
    );
    assert_eq!(node.poll_timeout(), t0 + TTL / 3);
    assert!(node.poll_step(t0 + TTL / 4).is_none());
    assert_eq!(
        round(&mut node, t0 + TTL / 3, beat("e1", false), &room(), true),
        ["heartbeat", "reap"]
    );
    assert_eq!(node.alive_for(), TTL * 2 / 3);
}

/// Finding "reap grace": nodes that lost Redis together must not reap each other before they
/// could heartbeat again; the grace lasted one round (a third of the expiry), shorter than a
/// reconnecting node's liveness may have lapsed for.
#[test]
fn no_reap_for_a_node_expiry_after_a_reconnection() {
    let t0 = Instant::now();
    let mut node = ClusterNode::new(NodeId::new("n1"), TTL, WINDOW, t0);
    round(&mut node, t0, beat("e1", false), &room(), true);
    node.signal(Signal::Reconnected, t0);
    let t1 = t0 + TTL / 3;
    assert_eq!(
        round(&mut node, t1, beat("e1", false), &room(), true),
        ["heartbeat", "resync"]
    );
    let t2 = t1 + TTL / 3;
    assert_eq!(
        round(&mut node, t2, beat("e1", false), &room(), true),
        ["heartbeat"]
    );
    let t3 = t0 + TTL;
    assert_eq!(
        round(&mut node, t3, beat("e1", false), &room(), true),
        ["heartbeat", "reap"]
    );
}

/// Finding "reaped while alive, unnoticed": a heartbeat that finds the node's liveness lapsed
/// (or the node missing from the set) puts its peers back.
#[test]
fn a_node_found_missing_resyncs_if_it_holds_peers() {
    let t0 = Instant::now();
    let mut node = ClusterNode::new(NodeId::new("n1"), TTL, WINDOW, t0);
    round(&mut node, t0, beat("e1", true), &room(), true);
    let t1 = t0 + TTL / 3;
    assert_eq!(
        round(&mut node, t1, beat("e1", true), &room(), true),
        ["heartbeat", "resync", "reap"]
    );
    // Holding no one, there is nothing to put back.
    let t2 = t1 + TTL / 3;
    assert_eq!(
        round(&mut node, t2, beat("e1", true), &[], true),
        ["heartbeat", "reap"]
    );
}

/// Finding "heartbeat starved by resync": a resync still running when the next heartbeat is
/// due does not hold the heartbeat up.
#[test]
fn the_heartbeat_runs_beside_a_long_resync() {
    let t0 = Instant::now();
    let mut node = ClusterNode::new(NodeId::new("n1"), TTL, WINDOW, t0);
    round(&mut node, t0, beat("e1", false), &room(), true);
    node.signal(Signal::Failed, t0);
    let t1 = t0 + TTL / 3;
    assert_eq!(node.poll_step(t1).as_ref().map(kind), Some("heartbeat"));
    node.done(beat("e1", false), t1, &room(), false);
    assert_eq!(node.poll_step(t1).as_ref().map(kind), Some("resync"));
    // The resync takes two periods; heartbeats go on meanwhile, and start no second round.
    for k in 2..4 {
        let t = t0 + TTL / 3 * k;
        assert_eq!(node.poll_step(t).as_ref().map(kind), Some("heartbeat"));
        node.done(beat("e1", false), t, &room(), false);
        assert!(
            node.poll_step(t).is_none(),
            "nothing else while the resync runs"
        );
    }
    let t = t0 + TTL;
    node.done(Done::Resync(true), t, &room(), false);
    assert_eq!(node.poll_step(t).as_ref().map(kind), Some("reap"));
}

#[test]
fn a_failed_resync_is_tried_again_next_round_and_a_failed_heartbeat_marks_the_node() {
    let t0 = Instant::now();
    let mut node = ClusterNode::new(NodeId::new("n1"), TTL, WINDOW, t0);
    round(&mut node, t0, beat("e1", false), &room(), true);
    node.signal(Signal::Lagged, t0);
    let t1 = t0 + TTL / 3;
    assert_eq!(
        round(&mut node, t1, beat("e1", false), &room(), false),
        ["heartbeat", "resync", "reap"]
    );
    assert!(node.is_dirty());
    let t2 = t1 + TTL / 3;
    assert_eq!(
        round(&mut node, t2, beat("e1", false), &room(), true),
        ["heartbeat", "resync", "reap"]
    );
    assert!(!node.is_dirty());
    // A heartbeat that failed: no round, and out of step until a resync.
    let t3 = t2 + TTL / 3;
    assert_eq!(node.poll_step(t3).as_ref().map(kind), Some("heartbeat"));
    node.done(Done::Heartbeat(None), t3, &room(), false);
    assert!(node.poll_step(t3).is_none());
    assert!(node.is_dirty());
}

/// Redis lost its data: the rooms this node has peers in are put back, the directory is marked
/// as being rebuilt, and replicas are not reconciled with snapshots for a resume window.
#[test]
fn a_new_epoch_restores_the_rooms_held_and_holds_reconciliation_for_a_resume_window() {
    let t0 = Instant::now();
    let mut node = ClusterNode::new(NodeId::new("n1"), TTL, WINDOW, t0);
    let mut stored = bluecam_proto::Room {
        id: RoomId::new("r1"),
        name: None,
        description: None,
        owner: None,
        members: None,
        max_peers: 4,
        empty_timeout_secs: None,
        metadata: None,
        created_at: 0,
        peer_count: 0,
        multiple_sessions: false,
        removed: Default::default(),
    };
    node.remember_room(&stored);
    stored.id = RoomId::new("r2"); // read once, nobody here any more: not put back
    node.remember_room(&stored);
    round(&mut node, t0, beat("e1", false), &room(), true);
    assert!(!node.directory_lost(Some("e1"), false, t0));
    // Another epoch (or none, at the next heartbeat): the data is gone.
    assert!(node.directory_lost(None, false, t0));
    let t1 = t0 + TTL / 3;
    assert_eq!(node.poll_step(t1).as_ref().map(kind), Some("heartbeat"));
    node.done(beat("e2", false), t1, &room(), false);
    match node.poll_step(t1) {
        Some(Step::RestoreRooms(rooms)) => {
            let ids: Vec<&str> = rooms.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, ["r1"]);
        }
        other => panic!("expected a restore, got {other:?}"),
    }
    node.done(Done::RestoreRooms, t1, &room(), false);
    assert_eq!(
        node.poll_step(t1).as_ref().map(kind),
        Some("resync without reconcile")
    );
    node.done(Done::Resync(true), t1, &room(), false);
    assert_eq!(node.poll_step(t1).as_ref().map(kind), Some("reap"));
    node.done(Done::Reap, t1, &room(), false);
    assert!(node.poll_step(t1).is_none());
    assert!(node.recently_rebuilt(t1 + WINDOW / 2));
    assert!(node.directory_lost(Some("e2"), false, t1 + WINDOW / 2));
    // Until the window ends, each round re-registers without reconciling; then it reconciles.
    let t2 = t1 + WINDOW / 2;
    assert_eq!(
        round(&mut node, t2, beat("e2", false), &room(), true),
        ["heartbeat", "resync without reconcile", "reap"]
    );
    let t3 = t1 + WINDOW;
    assert_eq!(
        round(&mut node, t3, beat("e2", false), &room(), true),
        ["heartbeat", "resync", "reap"]
    );
    assert!(!node.directory_lost(Some("e2"), false, t3));
    assert!(
        node.directory_lost(Some("e2"), true, t3),
        "marked by another node"
    );
    let t4 = t3 + TTL / 3;
    assert_eq!(
        round(&mut node, t4, beat("e2", false), &room(), true),
        ["heartbeat", "reap"]
    );
}

/// Found in review: while a heartbeat is in flight past the next beat (Redis slow or down), the
/// wake-up time must not lie in the past, or the shell spins.
#[test]
fn no_wake_up_in_the_past_while_a_heartbeat_is_in_flight() {
    let t0 = Instant::now();
    let mut node = ClusterNode::new(NodeId::new("n1"), TTL, WINDOW, t0);
    assert_eq!(node.poll_step(t0).as_ref().map(kind), Some("heartbeat"));
    let late = t0 + TTL / 2; // past the next beat, the heartbeat still running
    assert!(node.poll_step(late).is_none());
    assert!(node.poll_timeout() > late, "the shell would spin");
    node.done(Done::Heartbeat(None), late, &room(), false);
    assert!(node.poll_timeout() <= late, "a heartbeat is due again");
}

/// Found in review: a heartbeat that finds the directory's data lost while a round's resync is
/// already done must still be followed by a resync after the restore.
#[test]
fn a_loss_found_after_this_rounds_resync_still_gets_a_resync() {
    let t0 = Instant::now();
    let mut node = ClusterNode::new(NodeId::new("n1"), TTL, WINDOW, t0);
    round(&mut node, t0, beat("e1", false), &room(), true);
    node.signal(Signal::Failed, t0);
    let t1 = t0 + TTL / 3;
    assert_eq!(node.poll_step(t1).as_ref().map(kind), Some("heartbeat"));
    node.done(beat("e1", false), t1, &room(), false);
    assert_eq!(node.poll_step(t1).as_ref().map(kind), Some("resync"));
    node.done(Done::Resync(true), t1, &room(), false);
    assert_eq!(node.poll_step(t1).as_ref().map(kind), Some("reap"));
    // The next heartbeat, beside the reap, finds a new epoch.
    let t2 = t1 + TTL / 3;
    assert_eq!(node.poll_step(t2).as_ref().map(kind), Some("heartbeat"));
    node.done(beat("e2", false), t2, &room(), false);
    node.done(Done::Reap, t2, &room(), false);
    assert_eq!(node.poll_step(t2).as_ref().map(kind), Some("restore"));
    node.done(Done::RestoreRooms, t2, &room(), false);
    assert_eq!(
        node.poll_step(t2).as_ref().map(kind),
        Some("resync without reconcile")
    );
}

/// Finding "a claimed seat lost to a reap before its join was handled" (simulation seed
/// 6540): a node reaped while alive (its liveness lapsed in a directory outage) loses the
/// seats of joins the directory answered just before; the resync after the heartbeat that
/// finds it missing cannot put them back while their joins are still under way, so it is
/// repeated in the next round, and only a resync with no join under way ends the repair.
#[test]
fn a_repair_while_a_join_is_under_way_resyncs_again_after_it() {
    let t0 = Instant::now();
    let mut node = ClusterNode::new(NodeId::new("n1"), TTL, WINDOW, t0);
    round(&mut node, t0, beat("e1", false), &room(), true);
    // Reaped: the next heartbeat finds it missing; a join into r1 is under way meanwhile.
    let t1 = t0 + TTL / 3;
    assert_eq!(node.poll_step(t1).as_ref().map(kind), Some("heartbeat"));
    node.done(beat("e1", true), t1, &room(), true);
    assert_eq!(node.poll_step(t1).as_ref().map(kind), Some("resync"));
    node.done(Done::Resync(true), t1, &room(), true);
    assert!(node.is_dirty(), "the join's seat is not back yet");
    // The next round: the join was handled; its resync puts the seat back and ends the repair.
    let t2 = t1 + TTL / 3;
    while node.poll_step(t1).is_some() {
        node.done(Done::Reap, t1, &room(), false);
    }
    assert_eq!(node.poll_step(t2).as_ref().map(kind), Some("heartbeat"));
    node.done(beat("e1", false), t2, &room(), false);
    assert_eq!(node.poll_step(t2).as_ref().map(kind), Some("resync"));
    node.done(Done::Resync(true), t2, &room(), false);
    assert!(!node.is_dirty());
    // Without a repair under way, a join during a resync does not make another.
    let t3 = t2 + TTL / 3;
    while node.poll_step(t2).is_some() {
        node.done(Done::Reap, t2, &room(), false);
    }
    node.signal(Signal::Failed, t3);
    assert_eq!(node.poll_step(t3).as_ref().map(kind), Some("heartbeat"));
    node.done(beat("e1", false), t3, &room(), true);
    assert_eq!(node.poll_step(t3).as_ref().map(kind), Some("resync"));
    node.done(Done::Resync(true), t3, &room(), true);
    assert!(!node.is_dirty());
}

// ---- the node's admission: what the directory's answer to a join or claim means ----------

mod admission {
    use bluecam_core::{
        CoreConfig, DirAnswer, Handled, Hub, Input, Node,
        cluster::ClusterNode,
        directory::{ClaimReply, JoinReply},
    };
    use bluecam_proto::{ErrorCode, NodeId, ResumeCredentials, RoomId, SessionId, SessionSecret};
    use std::time::Instant;

    fn node(now: Instant) -> Node {
        let cluster = ClusterNode::new(NodeId::new("n1"), super::TTL, super::WINDOW, now);
        Node::new(Hub::new(CoreConfig::default()), Some(cluster))
    }

    fn stored(id: &RoomId) -> bluecam_proto::Room {
        serde_json::from_value(serde_json::json!({
            "id": id.as_str(), "name": null, "description": null, "owner": null,
            "members": null, "maxPeers": 10, "emptyTimeoutSecs": null, "metadata": null,
            "createdAt": 0, "peerCount": 0,
        }))
        .unwrap()
    }

    fn creds() -> ResumeCredentials {
        ResumeCredentials {
            session: SessionId::new("s1"),
            secret: SessionSecret::new("secret"),
        }
    }

    /// Admits into room r with `answer`; returns the decision and whether a join into r is
    /// still pending after it.
    fn admit(
        node: &mut Node,
        resume: Option<ResumeCredentials>,
        answer: Option<DirAnswer>,
        now: Instant,
    ) -> (Result<bool, ErrorCode>, bool) {
        let room = RoomId::new("r");
        node.handle(Input::Admitting(stored(&room)), now);
        let input = Input::Admission {
            room: room.clone(),
            resume,
            answer,
        };
        let Handled::Admitted(admitted) = node.handle(input, now) else {
            panic!("an admission is answered with Admitted");
        };
        (
            admitted.map(|view| view.is_some()).map_err(|r| r.code()),
            node.hub().has_pending_join(&room),
        )
    }

    #[test]
    fn refusals_end_the_pending_join_with_their_code() {
        let now = Instant::now();
        let mut n = node(now);
        let full = Some(DirAnswer::Join(JoinReply::Full));
        assert_eq!(
            admit(&mut n, None, full, now),
            (Err(ErrorCode::RoomFull), false)
        );
        let gone = Some(DirAnswer::Join(JoinReply::Gone));
        assert_eq!(
            admit(&mut n, None, gone, now),
            (Err(ErrorCode::RoomNotFound), false)
        );
        let unauthorized = Some(DirAnswer::Claim(ClaimReply::Unauthorized));
        assert_eq!(
            admit(&mut n, Some(creds()), unauthorized, now),
            (Err(ErrorCode::Unauthorized), false)
        );
    }

    /// Found by the cluster simulation (seed 19759): a session this node once handed over,
    /// gone from the directory since (its room was deleted), was let through to the core,
    /// which answered "overtaken: retry" to every try, for ever.
    #[test]
    fn a_claim_the_directory_has_no_session_for_and_this_node_does_not_hold_is_expired() {
        let now = Instant::now();
        let mut n = node(now);
        let expired = || Some(DirAnswer::Claim(ClaimReply::Expired));
        assert_eq!(
            admit(&mut n, Some(creds()), expired(), now),
            (Err(ErrorCode::SessionExpired), false)
        );
    }

    #[test]
    fn a_directory_that_cannot_be_asked_is_unavailable_and_marks_the_node_out_of_step() {
        let now = Instant::now();
        let mut n = node(now);
        assert!(!n.cluster().unwrap().is_dirty());
        assert_eq!(
            admit(&mut n, None, None, now),
            (Err(ErrorCode::Unavailable), false)
        );
        assert!(n.cluster().unwrap().is_dirty());
        assert_eq!(
            admit(&mut n, Some(creds()), None, now),
            (Err(ErrorCode::Unavailable), false)
        );
    }
}
