//! The delivery promise, checked on the sans-IO parts over an adversarial network (as the
//! browser SDK's model test checks the SDK, sdk/js/delivery.model.test.js): a sender's outbox
//! and the retransmission decisions of `sender`, a recipient's inbox, and a network that
//! delivers relay frames and acks in any order, drops them and duplicates them, while time
//! passes (a message past the delivery bound is given up, with every later one, and the sender
//! starts a new epoch).
//!
//! After every step: each message is delivered at most once, in the order sent, with its data;
//! a message acknowledged was delivered (never a silent loss). After the network heals: every
//! message settled (acknowledged, or given up: the sender told), and every one sent after the
//! last give-up was delivered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bluecam_client::delivery::{Envelope, Epochs, Inbox, Outbox, Via, envelopes_of};
use bluecam_client::sender::{
    PathState, RELAY_BATCH_CHARS, TICK_MS, Tick, relay_frames, relay_msg, tick_peer,
};
use proptest::prelude::*;
use serde_json::Value;
use std::collections::HashMap;

/// A short delivery bound, so that runs reach it.
const BOUND_MS: u64 = 12_000;
const T0: u64 = 1_700_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Acked,
    GivenUp,
}

#[derive(Clone, Debug)]
enum Step {
    /// The app sends a message (a large one travels as chunks).
    Send {
        large: bool,
    },
    /// The network hands over one frame in flight to the recipient (index modulo).
    DeliverToB(usize),
    /// … or one ack in flight to the sender.
    DeliverToA(usize),
    /// A frame in flight is lost, or duplicated.
    DropToB(usize),
    DupToB(usize),
    DropToA(usize),
    DupToA(usize),
    /// The recipient sends its cumulative ack.
    Ack,
    /// Time passes; the sender's retransmission tick runs.
    Tick(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Send { large: false }).boxed(),
        1 => Just(Step::Send { large: true }).boxed(),
        4 => any::<usize>().prop_map(Step::DeliverToB).boxed(),
        3 => any::<usize>().prop_map(Step::DeliverToA).boxed(),
        1 => any::<usize>().prop_map(Step::DropToB).boxed(),
        1 => any::<usize>().prop_map(Step::DupToB).boxed(),
        1 => any::<usize>().prop_map(Step::DropToA).boxed(),
        1 => any::<usize>().prop_map(Step::DupToA).boxed(),
        2 => Just(Step::Ack).boxed(),
        2 => (1u64..6000).prop_map(Step::Tick).boxed(),
    ]
}

struct Sim {
    now: u64,
    epochs: Epochs,
    outbox: Outbox,
    /// Per message number: its status; and which (epoch, seq) carries it.
    status: Vec<Status>,
    carried: HashMap<(u64, u64), usize>,
    last_give_up: usize,
    inbox: Inbox,
    /// What the recipient's app got, in order: message numbers.
    delivered: Vec<usize>,
    to_b: Vec<String>,
    to_a: Vec<String>,
    ack_due: bool,
}

impl Sim {
    fn new() -> Self {
        let mut epochs = Epochs::default();
        let outbox = Outbox::new(epochs.next(T0));
        Self {
            now: T0,
            epochs,
            outbox,
            status: Vec::new(),
            carried: HashMap::new(),
            last_give_up: 0,
            inbox: Inbox::default(),
            delivered: Vec::new(),
            to_b: Vec::new(),
            to_a: Vec::new(),
            ack_due: false,
        }
    }

    fn data(n: usize, large: bool) -> String {
        // A large message: well past a chunk, with characters of two and four bytes.
        let pad = if large {
            "é😀".repeat(6000)
        } else {
            String::new()
        };
        format!(r#"{{"n":{n},"pad":"{pad}"}}"#)
    }

    fn send(&mut self, large: bool) {
        let n = self.status.len();
        self.status.push(Status::Pending);
        let seq = self.outbox.add("t", Self::data(n, large), self.now);
        self.carried.insert((self.outbox.epoch(), seq), n);
        let last = self.outbox.pending().len() - 1;
        self.transmit(&[last]);
    }

    /// Sends these pending messages over the relay, batched into frames.
    fn transmit(&mut self, due: &[usize]) {
        let stamp = self.outbox.stamp();
        let mut messages = Vec::new();
        for &i in due {
            let p = &mut self.outbox.pending_mut()[i];
            p.via = Via::Relay;
            p.sent_at = self.now;
            messages.push((
                p.json.encode_utf16().count(),
                envelopes_of(p.seq, &p.msg_type, &p.json, Some(stamp)),
            ));
        }
        for frame in relay_frames(messages, RELAY_BATCH_CHARS) {
            self.to_b.push(relay_msg(&frame.envelopes));
        }
    }

    fn at_b(&mut self, frame: &str) {
        let msg: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(frame).unwrap();
        for raw in msg {
            let env = Envelope::from_raw(&raw).expect("the sender's envelopes are valid");
            for d in self.inbox.receive(&env) {
                let v: Value = serde_json::from_str(d.data.get()).unwrap();
                let n = v["n"].as_u64().unwrap() as usize;
                self.delivered.push(n);
            }
            self.ack_due = true;
        }
    }

    fn at_a(&mut self, ack: &str) {
        let env = Envelope::parse(ack).unwrap();
        let epoch = self.outbox.epoch();
        for seq in self.outbox.ack(&env) {
            let n = self.carried[&(epoch, seq)];
            self.status[n] = Status::Acked;
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        let path = PathState::default();
        match tick_peer(
            self.outbox.pending_mut().iter_mut(),
            path,
            self.now,
            BOUND_MS,
        ) {
            Tick::Expire => {
                let epoch = self.outbox.epoch();
                for p in self.outbox.fail() {
                    self.status[self.carried[&(epoch, p.seq)]] = Status::GivenUp;
                }
                self.last_give_up = self.status.len();
                self.outbox = Outbox::new(self.epochs.next(self.now));
            }
            Tick::Send { due, .. } => self.transmit(&due),
        }
    }

    fn apply(&mut self, step: &Step) {
        let pick = |len: usize, i: usize| (len > 0).then(|| i % len);
        match *step {
            Step::Send { large } => self.send(large),
            Step::DeliverToB(i) => {
                if let Some(i) = pick(self.to_b.len(), i) {
                    let f = self.to_b.remove(i);
                    self.at_b(&f);
                }
            }
            Step::DeliverToA(i) => {
                if let Some(i) = pick(self.to_a.len(), i) {
                    let a = self.to_a.remove(i);
                    self.at_a(&a);
                }
            }
            Step::DropToB(i) => {
                if let Some(i) = pick(self.to_b.len(), i) {
                    self.to_b.remove(i);
                }
            }
            Step::DupToB(i) => {
                if let Some(i) = pick(self.to_b.len(), i) {
                    self.to_b.push(self.to_b[i].clone());
                }
            }
            Step::DropToA(i) => {
                if let Some(i) = pick(self.to_a.len(), i) {
                    self.to_a.remove(i);
                }
            }
            Step::DupToA(i) => {
                if let Some(i) = pick(self.to_a.len(), i) {
                    self.to_a.push(self.to_a[i].clone());
                }
            }
            Step::Ack => {
                if self.ack_due {
                    self.to_a.push(self.inbox.ack().to_json());
                    self.ack_due = false;
                }
            }
            Step::Tick(ms) => self.tick(ms),
        }
    }

    /// The safety half, after every step.
    fn check_safety(&self) -> Result<(), TestCaseError> {
        // At most once, in the order sent.
        for w in self.delivered.windows(2) {
            prop_assert!(
                w[0] < w[1],
                "delivered out of order or twice: {:?}",
                self.delivered
            );
        }
        // Acknowledged means delivered.
        for (n, s) in self.status.iter().enumerate() {
            if *s == Status::Acked {
                prop_assert!(
                    self.delivered.contains(&n),
                    "message {n} acknowledged, never delivered"
                );
            }
        }
        Ok(())
    }

    /// Heals the network: everything in flight arrives, acks flow, time passes.
    fn heal(&mut self) {
        for _ in 0..400 {
            while !self.to_b.is_empty() {
                let f = self.to_b.remove(0);
                self.at_b(&f);
            }
            if self.ack_due {
                self.to_a.push(self.inbox.ack().to_json());
                self.ack_due = false;
            }
            while !self.to_a.is_empty() {
                let a = self.to_a.remove(0);
                self.at_a(&a);
            }
            if self.status.iter().all(|s| *s != Status::Pending) {
                return;
            }
            self.tick(TICK_MS);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn every_message_once_in_order_or_the_sender_is_told(steps in prop::collection::vec(step(), 1..80)) {
        let mut sim = Sim::new();
        for s in &steps {
            sim.apply(s);
            sim.check_safety()?;
        }
        sim.heal();
        sim.check_safety()?;
        for (n, s) in sim.status.iter().enumerate() {
            prop_assert!(*s != Status::Pending, "message {n} never settled");
            if n >= sim.last_give_up {
                prop_assert!(*s == Status::Acked && sim.delivered.contains(&n), "message {n}, sent after the last give-up, not delivered");
            }
        }
    }
}
