//! The built-in STUN server: a real UDP Binding request to the node's port, answered with the
//! requester's address; `joined.iceServers` carries it; nothing else is answered; a flood from
//! one address is cut to the per-source rate (the limiter itself, with IPv6 /64 sources, its
//! bounded table and the total rate, is tested in `stun.rs` without sockets).

use crate::common::TestServer;
use std::time::Duration;
use stun::{
    agent::TransactionId,
    message::{BINDING_REQUEST, BINDING_SUCCESS, Getter as _, Message, Setter},
    xoraddr::XorMappedAddress,
};
use tokio::net::UdpSocket;

fn binding_request() -> Message {
    let mut m = Message::new();
    let setters: [Box<dyn Setter>; 2] = [Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)];
    m.build(&setters).unwrap();
    m
}

/// The next datagram within `wait`, decoded.
async fn answer(socket: &UdpSocket, wait: Duration) -> Option<Message> {
    let mut buf = vec![0u8; 1500];
    let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    let mut m = Message::new();
    m.unmarshal_binary(&buf[..n]).unwrap();
    Some(m)
}

#[tokio::test]
async fn a_binding_request_gets_the_requesters_address_and_joined_lists_the_server() {
    let s = TestServer::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let request = binding_request();
    socket.send_to(&request.raw, s.addr).await.unwrap();
    let reply = answer(&socket, Duration::from_secs(2))
        .await
        .expect("no STUN answer");
    assert_eq!(reply.typ, BINDING_SUCCESS);
    assert_eq!(reply.transaction_id, request.transaction_id);
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&reply).unwrap();
    let me = socket.local_addr().unwrap();
    assert_eq!((mapped.ip, mapped.port), (me.ip(), me.port()));
    // The node hands it out by default, at the address the client used.
    let room = s.room().await;
    let c = s.join(&room, "alice").await;
    let ice = &c.joined.as_ref().unwrap().ice_servers;
    assert_eq!(
        ice[0].urls,
        [format!("stun:127.0.0.1:{}", s.addr.port())],
        "{ice:?}"
    );
}

#[tokio::test]
async fn only_binding_requests_are_answered_and_a_flood_is_cut_to_the_rate() {
    let s = TestServer::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Not STUN; a STUN message that is not a Binding request (a success response).
    socket
        .send_to(b"hello, are you a reflector?", s.addr)
        .await
        .unwrap();
    let mut not_a_request = binding_request();
    let setters: [Box<dyn Setter>; 2] = [Box::new(TransactionId::new()), Box::new(BINDING_SUCCESS)];
    not_a_request.build(&setters).unwrap();
    socket.send_to(&not_a_request.raw, s.addr).await.unwrap();
    assert!(answer(&socket, Duration::from_millis(300)).await.is_none());
    // 300 requests at once from one address: the burst (100) and what the rate refills.
    for _ in 0..300 {
        socket
            .send_to(&binding_request().raw, s.addr)
            .await
            .unwrap();
    }
    let mut answered = 0;
    while answer(&socket, Duration::from_millis(300)).await.is_some() {
        answered += 1;
    }
    assert!(
        (100..=130).contains(&answered),
        "answered {answered} of 300"
    );
    // Counted by the limit that refused them (the registry is the process's, and the kernel may
    // have dropped some datagrams of the flood: some, at least).
    let page = s.get_text("/metrics").await;
    let limited = page
        .lines()
        .find_map(|l| l.strip_prefix("bluecam_stun_limited_total{limit=\"source\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(limited > 0.0, "{page}");
}

/// The total budget, across sources, is what the node answers from its settings: two sockets
/// (two sources, each far under its own rate) share 10 answers at once.
#[tokio::test]
async fn the_total_answer_budget_from_the_config_holds_across_sources() {
    let s = TestServer::with(|c| {
        c.limits.stun_rate_total = 0.5;
        c.limits.stun_burst_total = 10.0;
    })
    .await;
    let (a, b) = (
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.2:0").await.unwrap(),
    );
    for _ in 0..10 {
        a.send_to(&binding_request().raw, s.addr).await.unwrap();
        b.send_to(&binding_request().raw, s.addr).await.unwrap();
    }
    let mut answered = 0;
    for socket in [&a, &b] {
        while answer(socket, Duration::from_millis(300)).await.is_some() {
            answered += 1;
        }
    }
    assert!((10..=12).contains(&answered), "answered {answered} of 20");
}

#[tokio::test]
async fn with_no_stun_nothing_answers_and_joined_lists_no_stun() {
    let s = TestServer::with(|c| c.stun = false).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&binding_request().raw, s.addr)
        .await
        .unwrap();
    assert!(answer(&socket, Duration::from_millis(300)).await.is_none());
    let room = s.room().await;
    let c = s.join(&room, "alice").await;
    assert!(c.joined.as_ref().unwrap().ice_servers.is_empty());
}
