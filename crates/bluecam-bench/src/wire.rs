//! What the generator speaks to each kind of server: BlueCam's own protocol (through
//! `bluecam-proto`), the no-protocol baseline relay, peerjs-server's and matchbox_server's.
//! Every scenario that supports several targets opens connections with [`open`], frames its
//! payloads with [`Wire::frames`] and finds them again with [`payload_of`], so the same load
//! (same payloads, same pacing, same measurements) goes to every server.

use super::*;

/// The kind of server a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum TargetKind {
    /// BlueCam (`bluecam serve`).
    Bluecam,
    /// The no-protocol relay of `bluecam-bench baseline-server`.
    Baseline,
    /// peerjs-server (npm `peer`).
    Peerjs,
    /// matchbox_server (crates.io).
    Matchbox,
}

impl TargetKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Bluecam => "bluecam",
            Self::Baseline => "baseline",
            Self::Peerjs => "peerjs",
            Self::Matchbox => "matchbox",
        }
    }

    /// Whether one frame reaches every other member of a room (else one frame per recipient).
    pub(super) fn broadcasts(self) -> bool {
        matches!(self, Self::Bluecam | Self::Baseline)
    }
}

/// What a client needs to join: prepared before any timer starts (BlueCam mints a token).
pub(super) struct JoinSpec {
    path: String,
    token: Option<String>,
    /// The id the others address this peer by, when the client chooses it.
    chosen_id: Option<String>,
}

/// A distinct tag per generator run (shared with its worker processes), so ids and rooms on a
/// peer server that serves several runs never collide.
pub(super) fn run_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        if let Ok(tag) = std::env::var("BLUECAM_BENCH_TAG") {
            return tag;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{:x}{:x}", std::process::id(), nanos)
    })
}

pub(super) fn join_spec(target: &Target, room: &str, identity: &str) -> anyhow::Result<JoinSpec> {
    Ok(match target.kind {
        TargetKind::Bluecam => JoinSpec {
            path: bluecam_proto::WS_PATH.to_owned(),
            token: Some(mint(&target.secret, room, identity)?),
            chosen_id: None,
        },
        TargetKind::Baseline => JoinSpec {
            path: format!("/room/{room}-{}", run_tag()),
            token: None,
            chosen_id: Some(identity.to_owned()),
        },
        TargetKind::Peerjs => {
            let id = format!("{room}-{identity}-{}", run_tag());
            JoinSpec {
                path: format!("/peerjs?key=peerjs&id={id}&token=t{}", run_tag()),
                token: None,
                chosen_id: Some(id),
            }
        }
        TargetKind::Matchbox => JoinSpec {
            path: format!("/{room}-{}", run_tag()),
            token: None,
            chosen_id: None,
        },
    })
}

/// Connects and joins; returns the socket, this peer's id, and the time from the end of the
/// WebSocket upgrade to the server's acknowledgement of the join (`joined`, peerjs's `OPEN`,
/// matchbox's `IdAssigned`; zero for the baseline, which has no join).
pub(super) async fn open(
    kind: TargetKind,
    addr: SocketAddr,
    spec: JoinSpec,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<(Ws, String, Duration)> {
    let mut ws = connect(addr, &spec.path, source).await?;
    let t0 = Instant::now();
    let id = match kind {
        TargetKind::Bluecam => {
            let token = spec.token.context("a BlueCam join needs a token")?;
            join(&mut ws, token).await?.self_.id.to_string()
        }
        TargetKind::Baseline => {
            // A frame in, a frame out, as a real join (see `baseline`).
            ws.send(Message::Text(r#"{"op":"join"}"#.into())).await?;
            loop {
                let Some(msg) = ws.next().await else {
                    bail!("the baseline closed before answering the first frame")
                };
                if let Message::Text(_) = msg? {
                    break;
                }
            }
            spec.chosen_id.context("id")?
        }
        TargetKind::Peerjs => {
            #[derive(serde::Deserialize)]
            struct Frame<'a> {
                #[serde(rename = "type")]
                ty: &'a str,
            }
            loop {
                let Some(msg) = ws.next().await else {
                    bail!("peerjs closed before OPEN")
                };
                if let Message::Text(text) = msg? {
                    match serde_json::from_str::<Frame<'_>>(&text)?.ty {
                        "OPEN" => break,
                        "ERROR" | "ID-TAKEN" => bail!("peerjs refused: {text}"),
                        _ => {}
                    }
                }
            }
            spec.chosen_id.context("id")?
        }
        TargetKind::Matchbox => {
            #[derive(serde::Deserialize)]
            struct Frame {
                #[serde(rename = "IdAssigned")]
                id: Option<String>,
            }
            loop {
                let Some(msg) = ws.next().await else {
                    bail!("matchbox closed before IdAssigned")
                };
                if let Message::Text(text) = msg?
                    && let Some(id) = serde_json::from_str::<Frame>(&text)?.id
                {
                    break id;
                }
            }
        }
    };
    Ok((ws, id, t0.elapsed()))
}

/// How a payload is framed for one target.
#[derive(Clone, Copy, Debug)]
pub(super) struct Wire {
    pub(super) kind: TargetKind,
}

impl Wire {
    /// Frames `payload` (a JSON object) for `to`: BlueCam sends one `send` to the whole room
    /// when `signal` is false, else one `signal` per recipient; the baseline one raw frame for
    /// the room; peerjs and matchbox one frame per recipient. `signal_kind` names the peerjs
    /// message type (OFFER, ANSWER, CANDIDATE).
    pub(super) fn frames(
        self,
        to: &[String],
        payload: &str,
        signal: bool,
        signal_kind: &str,
    ) -> anyhow::Result<Vec<String>> {
        Ok(match self.kind {
            // Written as text, as for the others (the payload is the generator's own JSON):
            // a frame built through the protocol's types checked and copied the payload again,
            // work the generator did for BlueCam alone (BENCHMARKS.md, "The generator's share").
            TargetKind::Bluecam if !signal => vec![format!(r#"{{"op":"send","msg":{payload}}}"#)],
            TargetKind::Bluecam => to
                .iter()
                .map(|id| format!(r#"{{"op":"signal","to":"{id}","data":{payload}}}"#))
                .collect(),
            TargetKind::Baseline => vec![payload.to_owned()],
            TargetKind::Peerjs => to
                .iter()
                .map(|id| format!(r#"{{"type":"{signal_kind}","dst":"{id}","payload":{payload}}}"#))
                .collect(),
            TargetKind::Matchbox => to
                .iter()
                .map(|id| format!(r#"{{"Signal":{{"receiver":"{id}","data":{payload}}}}}"#))
                .collect(),
        })
    }
}

/// Finds the generator's payload in a frame received from the server (a BlueCam `message` or
/// `signal`, the baseline's raw frame, a peerjs OFFER/ANSWER/CANDIDATE, a matchbox `Signal`)
/// and hands it to `f`; `None` for every other frame.
pub(super) fn payload_of<R>(kind: TargetKind, text: &str, f: impl FnOnce(&str) -> R) -> Option<R> {
    match kind {
        // One pass over the frame, as for the others (`ServerMessage::from_json` reads it
        // twice: its `op`, then the whole frame).
        TargetKind::Bluecam => {
            #[derive(serde::Deserialize)]
            struct Frame<'a> {
                #[serde(borrow)]
                op: Cow<'a, str>,
                #[serde(borrow)]
                msg: Option<&'a RawValue>,
                #[serde(borrow)]
                data: Option<&'a RawValue>,
            }
            let frame: Frame<'_> = serde_json::from_str(text).ok()?;
            match &*frame.op {
                "message" => Some(f(frame.msg?.get())),
                "signal" => Some(f(frame.data?.get())),
                _ => None,
            }
        }
        TargetKind::Baseline => Some(f(text)),
        TargetKind::Peerjs => {
            #[derive(serde::Deserialize)]
            struct Frame<'a> {
                #[serde(borrow)]
                payload: Option<&'a RawValue>,
            }
            let frame: Frame<'_> = serde_json::from_str(text).ok()?;
            Some(f(frame.payload?.get()))
        }
        TargetKind::Matchbox => {
            #[derive(serde::Deserialize)]
            struct Inner<'a> {
                #[serde(borrow)]
                data: &'a RawValue,
            }
            #[derive(serde::Deserialize)]
            struct Frame<'a> {
                #[serde(borrow, rename = "Signal")]
                signal: Option<Inner<'a>>,
            }
            let frame: Frame<'_> = serde_json::from_str(text).ok()?;
            Some(f(frame.signal?.data.get()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PAYLOAD: &str = r#"{"t":1,"s":2,"i":0,"h":1,"p":"xx"}"#;

    fn parsed(frame: &str) -> serde_json::Value {
        serde_json::from_str(frame).unwrap()
    }

    #[test]
    fn peerjs_frames_and_what_the_server_forwards() {
        let wire = Wire {
            kind: TargetKind::Peerjs,
        };
        let to = ["a".to_owned(), "b".to_owned()];
        let frames = wire.frames(&to, PAYLOAD, true, "OFFER").unwrap();
        assert_eq!(
            frames.len(),
            2,
            "peerjs has no broadcast: one frame per recipient"
        );
        let v = parsed(&frames[1]);
        assert_eq!(v["type"], "OFFER");
        assert_eq!(v["dst"], "b");
        assert_eq!(v["payload"], parsed(PAYLOAD));
        // The server adds src and forwards the rest.
        let forwarded =
            r#"{"type":"OFFER","src":"c","dst":"b","payload":{"t":1,"s":2,"i":0,"h":1,"p":"xx"}}"#;
        assert_eq!(
            payload_of(TargetKind::Peerjs, forwarded, str::to_owned).unwrap(),
            PAYLOAD
        );
        assert!(payload_of(TargetKind::Peerjs, r#"{"type":"OPEN"}"#, |_| ()).is_none());
    }

    #[test]
    fn matchbox_frames_and_events() {
        let wire = Wire {
            kind: TargetKind::Matchbox,
        };
        let id = "67e55044-10b1-426f-9247-bb680e5fe0c8".to_owned();
        let frames = wire
            .frames(std::slice::from_ref(&id), PAYLOAD, false, "")
            .unwrap();
        let v = parsed(&frames[0]);
        assert_eq!(v["Signal"]["receiver"], id.as_str());
        assert_eq!(v["Signal"]["data"], parsed(PAYLOAD));
        let event = format!(r#"{{"Signal":{{"sender":"{id}","data":{PAYLOAD}}}}}"#);
        assert_eq!(
            payload_of(TargetKind::Matchbox, &event, str::to_owned).unwrap(),
            PAYLOAD
        );
        for other in [
            format!(r#"{{"IdAssigned":"{id}"}}"#),
            format!(r#"{{"NewPeer":"{id}"}}"#),
        ] {
            assert!(payload_of(TargetKind::Matchbox, &other, |_| ()).is_none());
        }
    }

    #[test]
    fn bluecam_and_baseline_frames() {
        let send = Wire {
            kind: TargetKind::Bluecam,
        }
        .frames(&["x".to_owned()], PAYLOAD, false, "")
        .unwrap();
        let v = parsed(&send[0]);
        assert_eq!(v["op"], "send");
        assert!(
            v.get("to").is_none(),
            "a relay message goes to the whole room"
        );
        assert_eq!(v["msg"], parsed(PAYLOAD));
        let signal = Wire {
            kind: TargetKind::Bluecam,
        }
        .frames(&["x".to_owned()], PAYLOAD, true, "")
        .unwrap();
        assert_eq!(parsed(&signal[0])["op"], "signal");
        let message = format!(r#"{{"op":"message","from":"p1","msg":{PAYLOAD}}}"#);
        assert_eq!(
            payload_of(TargetKind::Bluecam, &message, str::to_owned).unwrap(),
            PAYLOAD
        );
        let raw = Wire {
            kind: TargetKind::Baseline,
        }
        .frames(&["x".to_owned(), "y".to_owned()], PAYLOAD, false, "")
        .unwrap();
        assert_eq!(raw, vec![PAYLOAD.to_owned()], "one raw frame for the room");
        assert_eq!(
            payload_of(TargetKind::Baseline, PAYLOAD, str::to_owned).unwrap(),
            PAYLOAD
        );
    }
}
