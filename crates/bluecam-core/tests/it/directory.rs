//! The directory model against the shared vectors `tests/vectors/directory.json` (the Redis
//! scripts are run against the same file by the server's tests). `BLUECAM_BLESS=1` writes
//! the model's answers, messages and states into the file (review the diff).

use bluecam_core::directory::{DirState, Directory, Op, published_json as published};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Serialize, Deserialize)]
struct Vectors {
    about: String,
    cases: Vec<Case>,
}

#[derive(Serialize, Deserialize)]
struct Case {
    name: String,
    about: String,
    steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<DirState>,
}

#[derive(Serialize, Deserialize)]
struct Step {
    op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    published: Option<Vec<Value>>,
}

fn path() -> PathBuf {
    // The crate's directory as the test runner says it is now, not as it was at build time (a
    // binary built in another clone sharing the target directory would look there).
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    [
        dir.as_str(),
        "..",
        "..",
        "tests",
        "vectors",
        "directory.json",
    ]
    .iter()
    .collect()
}

#[test]
fn the_model_answers_as_the_vectors_say() {
    let bless = std::env::var_os("BLUECAM_BLESS").is_some();
    let text = std::fs::read_to_string(path()).expect("directory vectors");
    let mut vectors: Vectors = serde_json::from_str(&text).expect("parse directory vectors");
    assert!(vectors.cases.len() >= 10);
    for case in &mut vectors.cases {
        let mut dir = Directory::new();
        let mut now = 1_000_000;
        for (i, step) in case.steps.iter_mut().enumerate() {
            now += 1000;
            let answer = serde_json::to_value(dir.apply(&step.op, now)).expect("answer");
            let sent = published(dir.take_published());
            if bless {
                step.answer = Some(answer);
                step.published = Some(sent);
                continue;
            }
            let what = format!("{} step {i} ({:?})", case.name, step.op);
            assert_eq!(step.answer.as_ref(), Some(&answer), "answer of {what}");
            assert_eq!(step.published.as_ref(), Some(&sent), "published by {what}");
        }
        let state = dir.state(now);
        if bless {
            case.state = Some(state);
        } else {
            assert_eq!(
                case.state.as_ref(),
                Some(&state),
                "state after {}",
                case.name
            );
        }
    }
    if bless {
        let text = serde_json::to_string_pretty(&vectors).expect("encode") + "\n";
        std::fs::write(path(), text).expect("write directory vectors");
    }
}
