//! The WebSocket protocol after the handshake (RFC 6455 sections 5 to 7), as the server speaks
//! it. An idle connection holds no buffer: bytes are read into a buffer on the stack and each
//! message is copied out of it whole (unmasked on the way), what a read brought beyond a
//! complete frame is kept only until it is decoded, and frames to send are buffered only
//! until they are written. (tungstenite's socket, used before, kept a read buffer and a write
//! buffer of the largest burst for each connection's life: about 2.5 KB of an idle
//! connection; BENCHMARKS.md.) Frame headers are parsed and written by tungstenite's
//! `FrameHeader`; the rules of what a client may send are [`Decoder`]'s, sans I/O.

use crate::transport::conn::Incoming;
use bluecam_proto::CloseCode;
use bytes::{Buf as _, Bytes, BytesMut};
use std::{
    io::Cursor,
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::{
    Utf8Bytes,
    protocol::frame::{
        FrameHeader,
        coding::{CloseCode as WireClose, Control, Data, OpCode},
    },
};

/// One read's buffer (on the stack, for the read only).
const READ_CHUNK: usize = 16 << 10;

/// The first allocation of the write buffer (most batches fit; it is freed once written):
/// small enough for glibc's per-thread cache of free blocks (at most 1,032 bytes with its
/// header), so that a batch's buffer costs no trip into the allocator's bins.
const WRITE_FIRST: usize = 1016;

/// What one frame from the client was.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    /// A whole text message, valid UTF-8.
    Text(Utf8Bytes),
    /// A whole binary message (its bytes are not kept: the protocol has none).
    Binary,
    Ping(Bytes),
    Pong,
    /// A close frame, with the payload of the reply (the client's code and reason echoed, or
    /// 1002 for a code no one may send).
    Close(Bytes),
    /// A fragment of a message that is not complete yet.
    Fragment,
}

/// A message that came in fragments, being put together.
#[derive(Debug)]
struct Assembly {
    /// The text so far (`None` for a binary message, whose bytes are only counted).
    text: Option<Vec<u8>>,
    len: usize,
    /// How much of `text` is known to be valid UTF-8 (checked as the fragments come, so an
    /// invalid message fails at the fragment that makes it so).
    checked: usize,
}

/// The rules of what a client may send (RFC 6455 section 5), one frame at a time, without
/// I/O. Checked in tungstenite's order (a frame larger than the cap, unmasked, reserved bits,
/// the control frames' and fragments' rules, then the payload's), each as soon as the header
/// shows it: a frame that breaks a rule is refused before its payload is read.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// The largest message, in bytes.
    max: usize,
    fragmented: Option<Box<Assembly>>,
}

impl Decoder {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            fragmented: None,
        }
    }

    /// Decodes the first frame of `data`: `Ok(None)` when it is not all there yet (nothing is
    /// taken), else how many bytes it took and what it was. An error is the code the
    /// connection must close with.
    pub(crate) fn decode(&mut self, data: &[u8]) -> Result<Option<(usize, Event)>, CloseCode> {
        let mut cursor = Cursor::new(data);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            // (A reserved opcode: reading from memory has no other error.)
            Err(_) => return Err(CloseCode::ProtocolError),
        };
        let start = cursor.position() as usize;
        if len > self.max as u64 {
            return Err(CloseCode::MessageTooBig);
        }
        let len = len as usize;
        // A client's frames are masked (section 5.1); no extension is negotiated.
        let Some(mask) = header.mask else {
            return Err(CloseCode::ProtocolError);
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(CloseCode::ProtocolError);
        }
        match (header.opcode, &self.fragmented) {
            (OpCode::Control(_), _) if !header.is_final || len > 125 => {
                return Err(CloseCode::ProtocolError);
            }
            (OpCode::Data(Data::Continue), None)
            | (OpCode::Data(Data::Text | Data::Binary), Some(_)) => {
                return Err(CloseCode::ProtocolError);
            }
            (OpCode::Data(Data::Continue), Some(so_far)) if so_far.len + len > self.max => {
                return Err(CloseCode::MessageTooBig);
            }
            _ => {}
        }
        let Some(masked) = data.get(start..start + len) else {
            return Ok(None);
        };
        let taken = start + len;
        let event = match header.opcode {
            OpCode::Control(Control::Close) => Event::Close(close_reply(unmask(masked, mask))?),
            OpCode::Control(Control::Ping) => Event::Ping(unmask(masked, mask).into()),
            OpCode::Control(Control::Pong) => Event::Pong,
            OpCode::Data(Data::Text) if header.is_final => Event::Text(text(unmask(masked, mask))?),
            OpCode::Data(Data::Binary) if header.is_final => Event::Binary,
            OpCode::Data(Data::Text | Data::Binary) => {
                let mut assembly = Assembly {
                    text: None,
                    len,
                    checked: 0,
                };
                if header.opcode == OpCode::Data(Data::Text) {
                    assembly.text = Some(unmask(masked, mask));
                    assembly.check()?;
                }
                self.fragmented = Some(Box::new(assembly));
                Event::Fragment
            }
            OpCode::Data(Data::Continue) => {
                let Some(assembly) = self.fragmented.as_mut() else {
                    unreachable!("a continuation without a message was refused above")
                };
                assembly.len += len;
                if let Some(so_far) = assembly.text.as_mut() {
                    let from = so_far.len();
                    so_far.extend_from_slice(masked);
                    unmask_in_place(&mut so_far[from..], mask);
                    assembly.check()?;
                }
                if !header.is_final {
                    Event::Fragment
                } else {
                    match self.fragmented.take().and_then(|a| a.text) {
                        Some(so_far) => Event::Text(text(so_far)?),
                        None => Event::Binary,
                    }
                }
            }
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                unreachable!("FrameHeader::parse refuses reserved opcodes")
            }
        };
        Ok(Some((taken, event)))
    }
}

impl Assembly {
    /// Fails as soon as the text so far cannot be the start of valid UTF-8.
    fn check(&mut self) -> Result<(), CloseCode> {
        let Some(text) = &self.text else {
            return Ok(());
        };
        match std::str::from_utf8(&text[self.checked..]) {
            Ok(_) => self.checked = text.len(),
            // Cut inside a character: the rest of it may come in the next fragment.
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(CloseCode::InvalidData),
        }
        Ok(())
    }
}

fn unmask(masked: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut bytes = masked.to_vec();
    unmask_in_place(&mut bytes, mask);
    bytes
}

/// XORs the mask over `bytes` (masked from their first byte), eight bytes at a time (a byte
/// at a time, this was 5 % of the server's CPU when relaying flat out).
fn unmask_in_place(bytes: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = bytes.chunks_exact_mut(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (byte, m) in words.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

fn text(bytes: Vec<u8>) -> Result<Utf8Bytes, CloseCode> {
    Utf8Bytes::try_from(Bytes::from(bytes)).map_err(|_| CloseCode::InvalidData)
}

/// The payload of the reply to a close frame (section 5.5.1): its code and reason echoed;
/// 1002 for a code no endpoint may send; an error for a payload that is not a close frame's.
fn close_reply(payload: Vec<u8>) -> Result<Bytes, CloseCode> {
    match payload.len() {
        0 => Ok(Bytes::new()),
        1 => Err(CloseCode::ProtocolError),
        _ => {
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(CloseCode::InvalidData);
            }
            let code = WireClose::from(u16::from_be_bytes([payload[0], payload[1]]));
            if code.is_allowed() {
                Ok(payload.into())
            } else {
                let mut reply = Vec::with_capacity(20);
                reply.extend_from_slice(&1002u16.to_be_bytes());
                reply.extend_from_slice(b"Protocol violation");
                Ok(reply.into())
            }
        }
    }
}

/// The server's side of one WebSocket after its handshake.
pub(crate) struct Socket<S> {
    io: S,
    decoder: Decoder,
    /// Bytes read and not decoded yet: the rest of a read that brought more than one frame,
    /// or a frame that is not complete. Unallocated when there are none.
    unread: BytesMut,
    /// Frames to write. Unallocated once written.
    out: Vec<u8>,
    /// The payload of the pong owed for the last ping (only the last is answered, section
    /// 5.5.3), written when nothing else waits to be. (Boxed: every connection has the field,
    /// few clients ping.)
    pong: Option<Box<Bytes>>,
    /// A close frame came: nothing more is read.
    closed: bool,
    /// A flush the stream has not finished: TLS keeps bytes it took until they are flushed, so
    /// the flush is polled again even when nothing more is to be written.
    flushing: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// `max`: the largest message a client may send (larger ones close with 1009).
    pub(crate) fn new(io: S, max: usize) -> Self {
        Self {
            io,
            decoder: Decoder::new(max),
            unread: BytesMut::new(),
            out: Vec::new(),
            pong: None,
            closed: false,
            flushing: false,
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.io
    }

    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The next message, ping or pong from the client. Cancellation-safe: what was read and
    /// not returned stays in the socket. Writes what waits to be written on the way, without
    /// waiting for it (a pong, the rest of a write), so a control reply never waits for the
    /// next message to the client.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        loop {
            if self.closed {
                return Poll::Ready(Incoming::Gone);
            }
            if let Poll::Ready(Err(_)) = self.poll_write(cx) {
                return Poll::Ready(Incoming::Broken(None));
            }
            if !self.unread.is_empty() {
                match self.decoder.decode(&self.unread) {
                    Err(code) => return Poll::Ready(Incoming::Broken(Some(code))),
                    Ok(Some((taken, event))) => {
                        self.unread.advance(taken);
                        if self.unread.is_empty() {
                            self.unread = BytesMut::new();
                        }
                        if let Some(read) = self.on_event(event) {
                            return Poll::Ready(read);
                        }
                        continue;
                    }
                    Ok(None) => {}
                }
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            if ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)).is_err() {
                return Poll::Ready(Incoming::Broken(None));
            }
            let filled = buf.filled();
            if filled.is_empty() {
                return Poll::Ready(Incoming::Gone);
            }
            if !self.unread.is_empty() {
                self.unread.extend_from_slice(filled);
                continue;
            }
            // Decoded from the stack; only what is left over is kept.
            let mut at = 0;
            loop {
                match self.decoder.decode(&filled[at..]) {
                    Err(code) => return Poll::Ready(Incoming::Broken(Some(code))),
                    Ok(None) => {
                        self.unread.extend_from_slice(&filled[at..]);
                        break;
                    }
                    Ok(Some((taken, event))) => {
                        at += taken;
                        if let Some(read) = self.on_event(event) {
                            if at < filled.len() && !self.closed {
                                self.unread.extend_from_slice(&filled[at..]);
                            }
                            return Poll::Ready(read);
                        }
                    }
                }
            }
        }
    }

    /// Whether the client has gone already, as far as what reached this socket tells,
    /// without waiting: a close frame or the end of the stream is among what it sent. What
    /// is read on the way is kept, undecoded, for the next read. (A join read late, by a node
    /// that was frozen, whose client gave up and closed meanwhile.)
    pub(crate) fn gone_already(&mut self) -> bool {
        if self.closed {
            return true;
        }
        // (No one waits between this poll and the connection's next, which registers its own
        // waker: a no-op one here is fine.)
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut ended = false;
        loop {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut self.io).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.unread.extend_from_slice(buf.filled());
                }
                Poll::Ready(_) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        // A close among the whole frames read so far (they start at a frame's start: the
        // decoder takes whole frames only).
        let mut cursor = Cursor::new(&self.unread[..]);
        while let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) {
            if header.opcode == OpCode::Control(Control::Close) {
                return true;
            }
            let next = cursor.position().saturating_add(len);
            if next > self.unread.len() as u64 {
                break;
            }
            cursor.set_position(next);
        }
        ended
    }

    fn on_event(&mut self, event: Event) -> Option<Incoming> {
        match event {
            Event::Text(text) => Some(Incoming::Text(text)),
            Event::Binary => Some(Incoming::Binary),
            Event::Ping(payload) => {
                self.pong = Some(Box::new(payload));
                Some(Incoming::Heard)
            }
            Event::Pong => Some(Incoming::Heard),
            Event::Close(reply) => {
                self.closed = true;
                self.pong = None;
                self.unread = BytesMut::new();
                self.frame(OpCode::Control(Control::Close), &reply);
                Some(Incoming::Gone)
            }
            Event::Fragment => None,
        }
    }

    /// Adds one frame to what is to be written (not written yet: see [`Socket::poll_write`]).
    pub(crate) fn frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let len = header.len(payload.len() as u64) + payload.len();
        if self.out.capacity() == 0 {
            self.out.reserve_exact(len.max(WRITE_FIRST));
        }
        // (Writing to a `Vec` cannot fail.)
        let _ = header.format(payload.len() as u64, &mut self.out);
        self.out.extend_from_slice(payload);
    }

    /// A close frame with this code and its reason.
    pub(crate) fn close_frame(&mut self, code: CloseCode) {
        let reason = code.reason().as_bytes();
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.code().to_be_bytes());
        payload.extend_from_slice(reason);
        self.frame(OpCode::Control(Control::Close), &payload);
    }

    /// How much waits to be written.
    pub(crate) fn buffered(&self) -> usize {
        self.out.len()
    }

    /// Writes what waits to be (and the pong owed, if nothing else waits), then flushes;
    /// `Pending` with the rest kept when the socket takes no more.
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.out.is_empty() {
            match self.pong.take() {
                Some(pong) => self.frame(OpCode::Control(Control::Pong), &pong),
                None if !self.flushing => return Poll::Ready(Ok(())),
                None => {}
            }
        }
        let mut written = 0;
        let result = loop {
            if written == self.out.len() {
                break Pin::new(&mut self.io).poll_flush(cx);
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.out[written..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                other => break other.map_ok(|_| ()),
            }
        };
        let all = written == self.out.len();
        if all {
            self.out = Vec::new();
        } else {
            self.out.drain(..written);
        }
        self.flushing = all && result.is_pending();
        result
    }

    /// Writes everything that waits to be.
    pub(crate) async fn write_all(&mut self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::{Decoder, Event};
    use bluecam_proto::CloseCode;

    /// A client's frame: FIN and opcode, masked with a fixed mask.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    fn decode_all(max: usize, data: &[u8]) -> (Vec<Event>, Option<CloseCode>) {
        let mut decoder = Decoder::new(max);
        let mut events = Vec::new();
        let mut at = 0;
        loop {
            match decoder.decode(&data[at..]) {
                Ok(Some((taken, event))) => {
                    at += taken;
                    events.push(event);
                }
                Ok(None) => return (events, None),
                Err(code) => return (events, Some(code)),
            }
        }
    }

    #[test]
    fn messages_whole_and_in_fragments() {
        let mut data = frame(0x81, "héllo".as_bytes());
        data.extend(frame(0x82, &[0, 1, 2]));
        // "€" (three bytes) cut between two fragments, a ping between them.
        data.extend(frame(0x01, &[b'a', 0xe2, 0x82]));
        data.extend(frame(0x89, b"p"));
        data.extend(frame(0x80, &[0xac]));
        data.extend(frame(0x8a, b""));
        let (events, end) = decode_all(1 << 20, &data);
        assert_eq!(end, None);
        assert_eq!(
            events,
            [
                Event::Text("héllo".into()),
                Event::Binary,
                Event::Fragment,
                Event::Ping(bytes::Bytes::from_static(b"p")),
                Event::Text("a€".into()),
                Event::Pong,
            ]
        );
    }

    #[test]
    fn unmasking_eight_bytes_at_a_time_is_unmasking() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            let masked: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let slow: Vec<u8> = masked
                .iter()
                .zip(mask.iter().cycle())
                .map(|(b, m)| b ^ m)
                .collect();
            assert_eq!(super::unmask(&masked, mask), slow, "{len} bytes");
        }
    }

    #[test]
    fn an_incomplete_frame_takes_nothing() {
        let whole = frame(0x81, &[b'x'; 300]);
        for cut in 0..whole.len() {
            assert_eq!(
                Decoder::new(1 << 20).decode(&whole[..cut]),
                Ok(None),
                "{cut}"
            );
        }
        assert_eq!(
            Decoder::new(1 << 20)
                .decode(&whole)
                .map(|d| d.map(|(n, _)| n)),
            Ok(Some(whole.len()))
        );
    }

    #[test]
    fn close_frames_are_echoed() {
        let mut close = 4000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        let (events, _) = decode_all(1 << 20, &frame(0x88, &close));
        assert_eq!(events, [Event::Close(close.into())]);
        let (events, _) = decode_all(1 << 20, &frame(0x88, b""));
        assert_eq!(events, [Event::Close(bytes::Bytes::new())]);
        // 1005 may not be sent: answered with 1002.
        let (events, _) = decode_all(1 << 20, &frame(0x88, &1005u16.to_be_bytes()));
        let Event::Close(reply) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(reply[..2], 1002u16.to_be_bytes());
    }

    #[test]
    fn broken_frames_close_with_their_code() {
        let unmasked = {
            let mut f = frame(0x81, b"hi");
            f[1] &= 0x7f;
            f.drain(2..6);
            f
        };
        let cases: [(&str, Vec<u8>, CloseCode); 12] = [
            ("unmasked", unmasked, CloseCode::ProtocolError),
            (
                "a reserved bit",
                frame(0xc1, b"hi"),
                CloseCode::ProtocolError,
            ),
            (
                "a reserved opcode",
                frame(0x83, b"hi"),
                CloseCode::ProtocolError,
            ),
            (
                "a fragmented ping",
                frame(0x09, b""),
                CloseCode::ProtocolError,
            ),
            (
                "a long ping",
                frame(0x89, &[0; 126]),
                CloseCode::ProtocolError,
            ),
            (
                "a lone continuation",
                frame(0x80, b"x"),
                CloseCode::ProtocolError,
            ),
            (
                "a message inside a message",
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
                CloseCode::ProtocolError,
            ),
            ("not UTF-8", frame(0x81, &[0xff]), CloseCode::InvalidData),
            (
                "not UTF-8, in the first fragment",
                frame(0x01, &[b'a', 0xc3, b'(']),
                CloseCode::InvalidData,
            ),
            (
                "too large",
                frame(0x82, &[0; 201]),
                CloseCode::MessageTooBig,
            ),
            (
                "too large in fragments",
                [frame(0x02, &[0; 120]), frame(0x80, &[0; 81])].concat(),
                CloseCode::MessageTooBig,
            ),
            (
                "a one-byte close",
                frame(0x88, &[3]),
                CloseCode::ProtocolError,
            ),
        ];
        for (what, data, code) in cases {
            assert_eq!(decode_all(200, &data).1, Some(code), "{what}");
        }
        // A frame over the cap is refused from its header, before its payload comes.
        let big = frame(0x82, &[0; 1000]);
        assert_eq!(
            Decoder::new(200).decode(&big[..8]),
            Err(CloseCode::MessageTooBig)
        );
    }
}
