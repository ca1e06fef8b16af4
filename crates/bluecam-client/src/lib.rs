//! BlueCam's native client, sans-IO part: the browser SDK's delivery layer (docs/protocol.md
//! §15, "App envelopes"), byte-compatible with `sdk/js/delivery.js` and `sdk/js/sender.js`.
//!
//! - [`delivery`]: envelopes (parsed and written exactly as the SDK does, chunks cut at the
//!   same UTF-16 offsets, a surrogate pair split between two chunks included), the sender's
//!   [`Outbox`](delivery::Outbox) per peer (sequence numbers in an epoch, cumulative acks) and
//!   the recipient's [`Inbox`](delivery::Inbox) (in order, exactly once, chunks reassembled).
//! - [`sender`]: when a message is sent again or given up (the retransmission back-off and the
//!   delivery bound), and how relayed envelopes are batched into frames.
//!
//! Nothing here does I/O or reads a clock: every time is an argument, so the same code runs
//! under a test's simulated network (tests/model.rs) and, later, under the transports.
//!
//! ```
//! use bluecam_client::delivery::{envelopes_of, Envelope, Inbox, Outbox};
//!
//! let mut outbox = Outbox::new(1_764_550_000_000_000);
//! let seq = outbox.add("chat", r#"{"text":"hi"}"#.to_owned(), 1_000);
//! let envelopes = envelopes_of(seq, "chat", r#"{"text":"hi"}"#, Some(outbox.stamp()));
//! // … they travel as JSON text, over a data channel or inside a relay frame …
//! let wire: Vec<String> = envelopes.iter().map(Envelope::to_json).collect();
//! let mut inbox = Inbox::default();
//! let mut delivered = Vec::new();
//! for text in &wire {
//!     if let Some(env) = Envelope::parse(text) {
//!         delivered.extend(inbox.receive(&env));
//!     }
//! }
//! assert_eq!(delivered.len(), 1);
//! assert_eq!(delivered[0].data.get(), r#"{"text":"hi"}"#);
//! // The ack goes back; the outbox lets go of the message.
//! let ack = inbox.ack();
//! assert_eq!(outbox.ack(&ack).len(), 1);
//! ```

pub mod delivery;
mod link;
#[cfg(feature = "webrtc")]
mod p2p;
#[cfg(not(feature = "webrtc"))]
#[path = "p2p_off.rs"]
mod p2p;
pub mod room;
pub mod sender;
