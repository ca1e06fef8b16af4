#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shared test vectors of `tests/vectors/` (also read by the JavaScript tests): every valid
//! client frame parses to its op, every invalid one is refused with its code and `ref`, and
//! every server frame parses and serializes back to the same bytes.

use bluecam_proto::{ClientMessage, CloseCode, ErrorCode, ServerMessage};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Valid {
    name: String,
    text: String,
    op: String,
}

#[derive(Deserialize)]
struct Invalid {
    name: String,
    text: String,
    code: ErrorCode,
    #[serde(rename = "ref")]
    reference: Option<u64>,
}

#[derive(Deserialize)]
struct ClientVectors {
    valid: Vec<Valid>,
    invalid: Vec<Invalid>,
}

#[derive(Deserialize)]
struct ServerVectors {
    valid: Vec<Valid>,
}

fn read<T: for<'de> Deserialize<'de>>(file: &str) -> T {
    // The crate's directory as the test runner says it is now (cargo and nextest set it), not
    // as it was at build time: a binary built in another clone sharing the target directory
    // would look there.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let path: PathBuf = [dir.as_str(), "..", "..", "tests", "vectors", file]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid: {e}", path.display()))
}

#[test]
fn valid_client_frames_parse_to_their_op() {
    let vectors: ClientVectors = read("client-frames.json");
    assert!(!vectors.valid.is_empty());
    let mut failures = Vec::new();
    for v in &vectors.valid {
        match ClientMessage::from_json(&v.text) {
            Ok(msg) if msg.op() == v.op => {}
            Ok(msg) => failures.push(format!("{}: parsed as {}, want {}", v.name, msg.op(), v.op)),
            Err(e) => failures.push(format!("{}: refused: {e:?}", v.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_client_frames_are_refused_with_their_code_and_ref() {
    let vectors: ClientVectors = read("client-frames.json");
    assert!(!vectors.invalid.is_empty());
    let mut failures = Vec::new();
    for v in &vectors.invalid {
        match ClientMessage::from_json(&v.text) {
            Ok(msg) => failures.push(format!("{}: accepted as {}", v.name, msg.op())),
            Err(e) if e.code != v.code || e.reference != v.reference => failures.push(format!(
                "{}: got {:?} ref {:?}, want {:?} ref {:?}",
                v.name, e.code, e.reference, v.code, v.reference
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn server_frames_parse_and_serialize_back_to_the_same_bytes() {
    let vectors: ServerVectors = read("server-frames.json");
    assert!(!vectors.valid.is_empty());
    let mut failures = Vec::new();
    for v in &vectors.valid {
        // Which op a text parsed to is not exposed; the `op` key of the text is.
        let op = serde_json::from_str::<serde_json::Value>(&v.text)
            .ok()
            .and_then(|j| j.get("op").and_then(|o| o.as_str()).map(str::to_owned));
        if op.as_deref() != Some(v.op.as_str()) {
            failures.push(format!(
                "{}: text has op {op:?}, vector says {}",
                v.name, v.op
            ));
        }
        match ServerMessage::from_json(&v.text) {
            Ok(msg) => {
                let again = msg.to_json();
                if again != v.text {
                    failures.push(format!(
                        "{}: not byte-identical\n  vector: {}\n  wrote:  {again}",
                        v.name, v.text
                    ));
                }
                // The server writes frames with `to_json_bytes`: the same bytes, and a relayed
                // frame's buffer sized right at once (one that grew would have spare room).
                let bytes = msg.to_json_bytes();
                if bytes != again.as_bytes() {
                    failures.push(format!("{}: to_json_bytes differs from to_json", v.name));
                }
                if matches!(v.op.as_str(), "message" | "signal")
                    && bytes.capacity() - bytes.len() > 16
                {
                    failures.push(format!(
                        "{}: buffer of {} bytes for a frame of {}",
                        v.name,
                        bytes.capacity(),
                        bytes.len()
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: refused: {e}", v.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[derive(Deserialize)]
struct NodeVectors {
    valid: Vec<Valid>,
    invalid: Vec<NodeInvalid>,
}

#[derive(Deserialize)]
struct NodeInvalid {
    name: String,
    text: String,
}

/// The messages between nodes (the directory's scripts write the membership ones): each valid
/// one decodes to its kind and encodes back to the same bytes (`op` empty: a kind this build
/// ignores); each invalid one is refused.
#[test]
fn node_messages_decode_and_encode_back_to_the_same_bytes() {
    use bluecam_proto::NodeMessage;
    let vectors: NodeVectors = read("node-messages.json");
    let mut failures = Vec::new();
    for v in &vectors.valid {
        match NodeMessage::decode(&v.text) {
            Ok(None) if v.op.is_empty() => {}
            Ok(Some(msg)) if msg.kind() == v.op => {
                let again = msg.encode();
                if again != v.text {
                    failures.push(format!("{}: wrote {again}", v.name));
                }
                if let NodeMessage::Frame { room, to, frame } = &msg {
                    let fast = NodeMessage::frame_text(room, to, frame.get());
                    if fast != v.text {
                        failures.push(format!("{}: frame_text wrote {fast}", v.name));
                    }
                }
            }
            Ok(other) => failures.push(format!("{}: decoded as {other:?}", v.name)),
            Err(e) => failures.push(format!("{}: refused: {e}", v.name)),
        }
    }
    for v in &vectors.invalid {
        if let Ok(msg) = NodeMessage::decode(&v.text) {
            failures.push(format!("{}: accepted as {msg:?}", v.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[derive(Deserialize)]
struct CloseVector {
    code: u16,
    name: String,
    reason: String,
    resume: bool,
    #[serde(rename = "nextNode")]
    next_node: bool,
}

#[derive(Deserialize)]
struct CloseVectors {
    codes: Vec<CloseVector>,
}

#[test]
fn close_codes_match_the_shared_table() {
    // The SDK's close-codes.js is generated from the same file: both sides agree on every code,
    // its reason text and whether a session resumes after it.
    let vectors: CloseVectors = read("close-codes.json");
    assert_eq!(
        vectors.codes.len(),
        CloseCode::ALL.len(),
        "one row per CloseCode"
    );
    for v in &vectors.codes {
        let code = CloseCode::from_code(v.code)
            .unwrap_or_else(|| panic!("{} {}: not a CloseCode", v.code, v.name));
        assert_eq!(code.reason(), v.reason, "{} {}", v.code, v.name);
        assert_eq!(code.resumable(), v.resume, "{} {}: resume", v.code, v.name);
        assert_eq!(
            code.next_node(),
            v.next_node,
            "{} {}: nextNode",
            v.code,
            v.name
        );
    }
}
