//! The shared vectors (tests/vectors/): envelopes the SDK accepts and refuses, how it cuts
//! messages into envelopes (byte for byte), and what its Inbox delivers. The same files are
//! checked against the browser SDK by its unit tests (sdk/js/delivery.test.js).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bluecam_client::delivery::{Envelope, Inbox, Stamp, envelopes_of};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;

fn read(file: &str) -> String {
    // The crate's directory as the test runner says it is now (cargo and nextest set it).
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let path: PathBuf = [dir.as_str(), "..", "..", "tests", "vectors", file]
        .iter()
        .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Deserialize)]
struct Named {
    name: String,
    envelope: Value,
}

#[derive(Deserialize)]
struct EnvelopeVectors {
    valid: Vec<Named>,
    invalid: Vec<Named>,
}

#[test]
fn valid_envelopes_are_read_and_written_back_the_same_and_invalid_ones_refused() {
    let v: EnvelopeVectors = serde_json::from_str(&read("envelopes.json")).unwrap();
    assert!(v.valid.len() >= 10 && v.invalid.len() >= 15);
    for case in &v.valid {
        let text = serde_json::to_string(&case.envelope).unwrap();
        let env = Envelope::parse(&text).unwrap_or_else(|| panic!("{}: refused", case.name));
        let back: Value = serde_json::from_str(&env.to_json()).unwrap();
        assert_eq!(back, case.envelope, "{}", case.name);
        assert_eq!(Envelope::parse(&env.to_json()), Some(env), "{}", case.name);
    }
    for case in &v.invalid {
        let text = serde_json::to_string(&case.envelope).unwrap();
        assert_eq!(Envelope::parse(&text), None, "{}: accepted", case.name);
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cut {
    name: String,
    seq: u64,
    #[serde(rename = "type")]
    msg_type: String,
    epoch: u64,
    base: u64,
    json: String,
    json_utf16_length: usize,
    envelopes: Vec<String>,
}

#[derive(Deserialize)]
struct Step {
    envelope: String,
    delivered: Vec<Value>,
    ack: String,
}

#[derive(Deserialize)]
struct InboxCase {
    name: String,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChunkVectors {
    chunk_chars: usize,
    chunking: Vec<Cut>,
    inboxes: Vec<InboxCase>,
}

#[test]
fn messages_are_cut_into_the_same_bytes_as_the_sdk_cuts_them_and_put_back_together() {
    let v: ChunkVectors = serde_json::from_str(&read("chunks.json")).unwrap();
    assert_eq!(v.chunk_chars, bluecam_client::delivery::CHUNK_CHARS);
    assert!(v.chunking.iter().any(|c| c.name.contains("surrogate")));
    for case in &v.chunking {
        assert_eq!(case.json.encode_utf16().count(), case.json_utf16_length);
        let stamp = Stamp {
            epoch: case.epoch,
            base: case.base,
        };
        let envs = envelopes_of(case.seq, &case.msg_type, &case.json, Some(stamp));
        let texts: Vec<String> = envs.iter().map(Envelope::to_json).collect();
        assert_eq!(
            texts, case.envelopes,
            "{}: the bytes on the wire",
            case.name
        );
        // Read back (a lone surrogate at a chunk's end included) and put together again.
        let mut inbox = Inbox::default();
        let mut delivered = Vec::new();
        for text in texts.iter().rev() {
            let env = Envelope::parse(text).unwrap_or_else(|| panic!("{}: refused", case.name));
            assert_eq!(&env.to_json(), text, "{}: written back", case.name);
            delivered.extend(inbox.receive(&env));
        }
        assert_eq!(delivered.len(), 1, "{}", case.name);
        assert_eq!(delivered[0].data.get(), case.json, "{}", case.name);
        assert_eq!(delivered[0].seq, case.seq);
    }
}

#[test]
fn an_inbox_delivers_what_the_sdks_inbox_delivers() {
    let v: ChunkVectors = serde_json::from_str(&read("chunks.json")).unwrap();
    assert!(v.inboxes.iter().any(|c| c.name.contains("rejoin")));
    for case in &v.inboxes {
        let mut inbox = Inbox::default();
        for (i, step) in case.steps.iter().enumerate() {
            let env = Envelope::parse(&step.envelope)
                .unwrap_or_else(|| panic!("{} step {i}: refused", case.name));
            let got: Vec<Value> = inbox
                .receive(&env)
                .into_iter()
                .map(|d| {
                    serde_json::json!({
                        "seq": d.seq,
                        "type": d.msg_type,
                        "data": serde_json::from_str::<Value>(d.data.get()).unwrap(),
                    })
                })
                .collect();
            assert_eq!(got, step.delivered, "{} step {i}", case.name);
            assert_eq!(
                inbox.ack().to_json(),
                step.ack,
                "{} step {i}: the ack",
                case.name
            );
        }
    }
}
