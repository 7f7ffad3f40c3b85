//! Limits inside WebSocket tunnels: each client message is decided against the
//! rule's message limit at its first frame; one over the limit is dropped
//! whole (all its fragments, never the control frames between them) or closes
//! the connection. The tunnel (`proxy::tunnel`) moves the bytes; this module
//! says which bytes go and what the gateway must say itself.

pub mod frame;

use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, Method};

use crate::identity::ClientKey;
use crate::limit::{Check, LimitState, Limits, Nanos, StoreAnswer, SyncMode};
use crate::metrics::RuleMetrics;
use crate::policy::OnError;
use crate::policy::{Mode, OnLimit};
use crate::snapshot::RuleLimit;
use frame::{FrameParser, Piece, Sender, MAX_HEADER};

/// Whether a request asks for a WebSocket: `GET`, `Upgrade: websocket` and
/// `Connection: upgrade`. Other upgrades (such as `h2c`, whose tunnel would
/// carry requests past routing and limits) are never tunnelled.
pub(crate) fn is_websocket_request(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && header_has_token(headers, &UPGRADE, "websocket")
        && header_has_token(headers, &CONNECTION, "upgrade")
}

pub(crate) fn header_has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Close codes the gateway sends (RFC 6455 §7.4.1).
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
pub(crate) const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub(crate) const CLOSE_POLICY_VIOLATION: u16 = 1008;
pub(crate) const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// What the gateway says about one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageVerdict {
    Forward,
    /// Over the limit: dropped, the client told when to try again.
    Drop {
        retry_after: Duration,
    },
    /// Over the limit with `on_limit: close`.
    Close,
}

/// Why the gateway closes a tunnel itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

/// The result of filtering one piece of the client's stream.
#[derive(Debug, Default)]
pub struct Filtered {
    /// What goes to the upstream (`None`: nothing).
    pub forward: Option<Bytes>,
    /// Tell the client a message was dropped (at the next message boundary
    /// of the upstream's stream).
    pub(crate) notice: Option<Duration>,
    pub close: Option<Close>,
    /// Messages the limit dropped in this piece.
    pub dropped: u32,
}

/// The next thing [`ClientFilter::step`] needs.
#[derive(Debug)]
pub enum Step {
    /// A message starts: call [`ClientFilter::verdict`] with its verdict.
    Decide,
    Done(Filtered),
}

/// Part of the output: a held-back header, or a range of the piece.
#[derive(Debug, Clone)]
enum Segment {
    Header([u8; MAX_HEADER], u8),
    Bytes(Range<usize>),
}

/// Follows the client → upstream stream and drops what the limits say.
/// Header bytes are held back until the header is whole, so a dropped frame
/// never leaves a partial header upstream.
#[derive(Debug)]
pub struct ClientFilter {
    parser: FrameParser,
    max_message_bytes: Option<u64>,
    pieces: Vec<Piece>,
    segments: Vec<Segment>,
    next: usize,
    chunk: Bytes,
    /// Every byte of `chunk` is forwarded as it came.
    unchanged: bool,
    /// The stream broke RFC 6455 after the pieces found.
    broken: bool,
    verdict_given: bool,
    dropping: bool,
    frame_kept: bool,
    /// A kept frame is forwarded in part: nothing of ours may go upstream now.
    forwarding_frame: bool,
    /// The client sent a close frame: nothing of ours may follow it.
    closed: bool,
    message_bytes: u64,
    result: Filtered,
}

impl ClientFilter {
    pub fn new(max_message_bytes: Option<u64>) -> Self {
        ClientFilter {
            parser: FrameParser::new(Sender::Client),
            max_message_bytes,
            pieces: Vec::new(),
            segments: Vec::new(),
            next: 0,
            chunk: Bytes::new(),
            unchanged: true,
            broken: false,
            verdict_given: false,
            dropping: false,
            frame_kept: true,
            forwarding_frame: false,
            closed: false,
            message_bytes: 0,
            result: Filtered::default(),
        }
    }

    /// For a tunnel whose handshake negotiated extensions: their RSV bits
    /// pass (see [`FrameParser::with_extensions`]).
    pub fn with_extensions(mut self, negotiated: bool) -> Self {
        self.parser = self.parser.with_extensions(negotiated);
        self
    }

    /// Takes the next piece of the client's stream; then call [`Self::step`]
    /// until it is done. Frames before a protocol error still go; the error
    /// then closes the connection (1002).
    pub fn start(&mut self, chunk: Bytes) {
        let held_before = self.parser.holding_header();
        self.pieces.clear();
        self.segments.clear();
        self.next = 0;
        self.result = Filtered::default();
        if !self.broken {
            self.broken = self.parser.feed(&chunk, &mut self.pieces).is_err();
        }
        self.unchanged = !held_before && !self.parser.holding_header() && !self.broken;
        self.chunk = chunk;
    }

    pub fn step(&mut self) -> Step {
        while self.next < self.pieces.len() {
            match &self.pieces[self.next] {
                Piece::Header {
                    header,
                    raw,
                    raw_len,
                    message_start,
                } => {
                    if *message_start && !self.verdict_given {
                        return Step::Decide;
                    }
                    self.verdict_given = false;
                    if self.result.close.is_some() {
                        break;
                    }
                    let control = header.opcode.is_control();
                    if !control {
                        self.message_bytes = self.message_bytes.saturating_add(header.payload_len);
                        if self
                            .max_message_bytes
                            .is_some_and(|max| self.message_bytes > max)
                        {
                            self.result.close = Some(Close {
                                code: CLOSE_MESSAGE_TOO_BIG,
                                reason: "message too big",
                            });
                            break;
                        }
                    }
                    self.frame_kept = control || !self.dropping;
                    if self.frame_kept {
                        self.segments.push(Segment::Header(*raw, *raw_len));
                        self.forwarding_frame = header.payload_len > 0;
                        self.closed |= header.opcode == frame::Opcode::Close;
                    } else {
                        self.unchanged = false;
                    }
                }
                Piece::Payload(range) => {
                    if self.frame_kept {
                        self.segments.push(Segment::Bytes(range.clone()));
                    } else {
                        self.unchanged = false;
                    }
                }
                Piece::FrameEnd { message_end } => {
                    if self.frame_kept {
                        self.forwarding_frame = false;
                    }
                    if *message_end {
                        self.dropping = false;
                        self.message_bytes = 0;
                    }
                }
            }
            self.next += 1;
        }
        if self.next < self.pieces.len() {
            // Closing: the rest of the piece is not forwarded.
            self.unchanged = false;
            self.next = self.pieces.len();
        }
        if self.broken && self.result.close.is_none() {
            self.result.close = Some(Close {
                code: CLOSE_PROTOCOL_ERROR,
                reason: "invalid frame",
            });
        }
        Step::Done(self.finish())
    }

    /// Whether the stream forwarded upstream is between frames and open: a
    /// frame of the gateway's own (a close) may go upstream now.
    pub(crate) fn may_send_upstream(&self) -> bool {
        !self.forwarding_frame && !self.closed
    }

    /// The verdict on the message whose first frame [`Step::Decide`] stopped at.
    pub fn verdict(&mut self, verdict: MessageVerdict) {
        self.verdict_given = true;
        self.message_bytes = 0;
        match verdict {
            MessageVerdict::Forward => self.dropping = false,
            MessageVerdict::Drop { retry_after } => {
                self.dropping = true;
                self.result.dropped += 1;
                self.result.notice = Some(retry_after);
            }
            MessageVerdict::Close => {
                self.result.close = Some(Close {
                    code: CLOSE_POLICY_VIOLATION,
                    reason: "message rate limit exceeded",
                })
            }
        }
    }

    fn finish(&mut self) -> Filtered {
        let mut result = std::mem::take(&mut self.result);
        result.forward = if self.unchanged && !self.chunk.is_empty() {
            Some(self.chunk.clone())
        } else {
            let mut out = BytesMut::new();
            for segment in &self.segments {
                match segment {
                    Segment::Header(raw, len) => out.extend_from_slice(&raw[..usize::from(*len)]),
                    Segment::Bytes(range) => out.extend_from_slice(&self.chunk[range.clone()]),
                }
            }
            (!out.is_empty()).then(|| out.freeze())
        };
        result
    }
}

/// Follows the upstream → client stream only to know where the gateway may
/// insert a frame of its own. A stream that is not valid WebSocket is
/// followed no further (and nothing is inserted into it); nothing is
/// inserted after the upstream's close frame either.
#[derive(Debug)]
pub(crate) struct ServerWatch {
    parser: FrameParser,
    pieces: Vec<Piece>,
    lost: bool,
    closed: bool,
}

impl Default for ServerWatch {
    fn default() -> Self {
        ServerWatch {
            parser: FrameParser::new(Sender::Server),
            pieces: Vec::new(),
            lost: false,
            closed: false,
        }
    }
}

impl ServerWatch {
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.lost {
            return;
        }
        self.pieces.clear();
        self.lost = self.parser.feed(bytes, &mut self.pieces).is_err();
        self.closed |= self.pieces.iter().any(
            |p| matches!(p, Piece::Header { header, .. } if header.opcode == frame::Opcode::Close),
        );
    }

    /// The upstream sent its close frame: the gateway sends no frame after it.
    pub(crate) fn closed(&self) -> bool {
        self.closed
    }

    /// A text frame may go to the client here.
    pub fn at_message_boundary(&self) -> bool {
        !self.lost && !self.closed && self.parser.at_message_boundary()
    }

    /// A control frame (a close) may go to the client here.
    pub(crate) fn at_frame_boundary(&self) -> bool {
        !self.lost && !self.closed && self.parser.at_frame_boundary()
    }
}

/// The text frame telling a client its message was dropped.
pub(crate) fn notice_frame(retry_after: Duration) -> Vec<u8> {
    let ms = retry_after.as_millis().max(1);
    let text = format!("{{\"type\":\"rate_limited\",\"retry_after_ms\":{ms}}}");
    frame::encode_frame(frame::Opcode::Text, text.as_bytes(), None)
}

/// Where a message limit's state lives.
#[derive(Debug)]
enum Scope {
    /// In the tunnel: per connection, nothing shared, no store call.
    Connection(Option<LimitState>),
    /// In the store, under the key taken from the upgrade request.
    Shared {
        key: ClientKey<'static>,
        on_error: OnError,
    },
}

/// Decides client messages against a rule's message limit.
#[derive(Debug)]
pub(crate) struct MessageGate {
    limit: RuleLimit,
    on_limit: OnLimit,
    scope: Scope,
}

impl MessageGate {
    pub(crate) fn per_connection(limit: RuleLimit, on_limit: OnLimit) -> Self {
        MessageGate {
            limit,
            on_limit,
            scope: Scope::Connection(None),
        }
    }

    pub(crate) fn shared(
        limit: RuleLimit,
        on_limit: OnLimit,
        key: ClientKey<'static>,
        on_error: OnError,
    ) -> Self {
        MessageGate {
            limit,
            on_limit,
            scope: Scope::Shared { key, on_error },
        }
    }

    /// The verdict on a message starting at `now` (the limiter's clock).
    /// Decisions Redis could not take count as the rule's degraded ones.
    pub(crate) async fn admit(
        &mut self,
        limits: &Limits,
        now: Nanos,
        rule: &RuleMetrics,
    ) -> MessageVerdict {
        let decision = match &mut self.scope {
            Scope::Connection(state) => {
                let (decision, next) = self.limit.limiter.decide(state.as_ref(), now, 1);
                if decision.allowed {
                    *state = Some(next);
                }
                decision
            }
            Scope::Shared { key, on_error } => {
                let check = Check {
                    limit: self.limit.id,
                    limiter: self.limit.limiter,
                    key: key.clone(),
                    cost: 1,
                    enforced: self.limit.mode == Mode::Enforce,
                    // Message limits are decided exactly (the config refuses
                    // `sync: batched` for them).
                    sync: SyncMode::Exact,
                    ban: None,
                };
                match limits.decide(std::slice::from_ref(&check), *on_error).await {
                    StoreAnswer::Decided(d) => match d.decisions.first() {
                        Some(decision) => *decision,
                        None => return MessageVerdict::Forward,
                    },
                    StoreAnswer::Degraded(mode, local) => {
                        rule.degraded(mode);
                        match (mode, local.and_then(|d| d.decisions.first().copied())) {
                            (_, Some(decision)) => decision,
                            (OnError::Deny, None) if self.limit.mode == Mode::Enforce => {
                                return self.refuse(STORE_RETRY);
                            }
                            _ => return MessageVerdict::Forward,
                        }
                    }
                }
            }
        };
        self.limit.record(&decision);
        if decision.allowed || self.limit.mode == Mode::Shadow {
            return MessageVerdict::Forward;
        }
        self.refuse(Duration::from_nanos(decision.retry_after.min(u64::MAX / 2)))
    }

    fn refuse(&self, retry_after: Duration) -> MessageVerdict {
        match self.on_limit {
            OnLimit::Drop => MessageVerdict::Drop { retry_after },
            OnLimit::Close => MessageVerdict::Close,
        }
    }
}

/// When to retry a message refused because Redis is down (`on_error: deny`).
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The body of the fuzz target (`fuzz/fuzz_targets/frames.rs`), here so that
/// the tests run it on stable Rust too: any bytes, cut anywhere, through the
/// client filter with verdicts taken from the input. It must never panic; a
/// filter that forwards everything must forward exactly the frames it was
/// given; one that drops must still forward valid frames, between frames.
#[doc(hidden)]
pub fn fuzz_filter(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(control % 64) + 1;
    let drop_some = control & 0x80 != 0;
    let mut filter = ClientFilter::new(Some(1 << 20));
    let mut out = Vec::new();
    let (mut decisions, mut dropped) = (0u32, 0u32);
    let mut closed = false;
    for piece in stream.chunks(cut) {
        filter.start(Bytes::copy_from_slice(piece));
        loop {
            match filter.step() {
                Step::Decide => {
                    decisions += 1;
                    filter.verdict(if drop_some && decisions.is_multiple_of(3) {
                        dropped += 1;
                        MessageVerdict::Drop {
                            retry_after: Duration::from_millis(1),
                        }
                    } else {
                        MessageVerdict::Forward
                    });
                }
                Step::Done(filtered) => {
                    out.extend_from_slice(filtered.forward.as_deref().unwrap_or_default());
                    closed = filtered.close.is_some();
                    break;
                }
            }
        }
        if closed {
            break;
        }
    }
    // What went upstream is itself valid, whole frames, with the messages
    // that were not dropped.
    let mut check = FrameParser::new(Sender::Client);
    let mut pieces = Vec::new();
    assert!(
        check.feed(&out, &mut pieces).is_ok(),
        "forwarded an invalid stream"
    );
    let starts = pieces
        .iter()
        .filter(|p| {
            matches!(
                p,
                Piece::Header {
                    message_start: true,
                    ..
                }
            )
        })
        .count() as u32;
    // A close (a message too big) withholds the message it was decided for.
    let forwarded = decisions - dropped;
    assert!(
        starts == forwarded || (closed && starts + 1 == forwarded),
        "{starts} messages forwarded of {forwarded}"
    );
    assert!(!check.holding_header(), "forwarded a partial header");
    if !drop_some && !closed {
        // All of it, but for a header still incomplete at the end.
        assert!(
            stream.starts_with(&out),
            "a forwarding filter changed bytes"
        );
        let held = stream.len() - out.len();
        assert!(held == 0 || (filter.parser.holding_header() && held < MAX_HEADER));
    }
}

#[cfg(test)]
mod tests {
    use super::frame::{encode_frame, Opcode};
    use super::*;

    const MASK: Option<[u8; 4]> = Some([9, 8, 7, 6]);

    fn fragment(opcode: Opcode, payload: &[u8], fin: bool) -> Vec<u8> {
        let mut f = encode_frame(opcode, payload, MASK);
        if !fin {
            f[0] &= 0x7F;
        }
        f
    }

    /// Feeds `stream` in pieces of `split` bytes, answering `verdicts` in turn.
    fn filter(
        stream: &[u8],
        split: usize,
        verdicts: &[MessageVerdict],
    ) -> (Vec<u8>, u32, Option<Close>) {
        let mut f = ClientFilter::new(Some(1000));
        let mut verdicts = verdicts.iter();
        let (mut out, mut dropped, mut close) = (Vec::new(), 0, None);
        for piece in stream.chunks(split) {
            f.start(Bytes::copy_from_slice(piece));
            loop {
                match f.step() {
                    Step::Decide => f.verdict(*verdicts.next().unwrap_or(&MessageVerdict::Forward)),
                    Step::Done(r) => {
                        out.extend_from_slice(r.forward.as_deref().unwrap_or_default());
                        dropped += r.dropped;
                        close = close.or(r.close);
                        break;
                    }
                }
            }
            if close.is_some() {
                break;
            }
        }
        (out, dropped, close)
    }

    #[test]
    fn a_dropped_fragmented_message_keeps_the_pings_between_its_fragments() {
        let keep = fragment(Opcode::Text, b"first", true);
        let ping = encode_frame(Opcode::Ping, b"p", MASK);
        let mut stream = keep.clone();
        stream.extend(fragment(Opcode::Binary, b"dropped-1", false));
        stream.extend(&ping);
        stream.extend(fragment(Opcode::Continuation, b"dropped-2", true));
        let last = fragment(Opcode::Text, b"last", true);
        stream.extend(&last);
        let mut expected = keep;
        expected.extend(&ping);
        expected.extend(&last);
        for split in 1..=stream.len() {
            let verdicts = [
                MessageVerdict::Forward,
                MessageVerdict::Drop {
                    retry_after: Duration::from_secs(1),
                },
                MessageVerdict::Forward,
            ];
            let (out, dropped, close) = filter(&stream, split, &verdicts);
            assert_eq!(out, expected, "split every {split} bytes");
            assert_eq!((dropped, close), (1, None));
        }
    }

    #[test]
    fn a_message_over_the_size_limit_closes_with_1009() {
        let first = fragment(Opcode::Text, &[b'a'; 600], false);
        let mut stream = first.clone();
        stream.extend(fragment(Opcode::Continuation, &[b'b'; 600], true));
        let (out, _, close) = filter(&stream, 7, &[]);
        assert_eq!(close.map(|c| c.code), Some(CLOSE_MESSAGE_TOO_BIG));
        // The first fragment went; nothing of the second did.
        assert_eq!(out, first);
    }

    #[test]
    fn a_frame_with_reserved_bits_and_no_negotiated_extension_closes_with_1002() {
        let mut compressed = fragment(Opcode::Text, b"deflated?", true);
        compressed[0] |= 0x40;
        let (out, _, close) = filter(&compressed, compressed.len(), &[]);
        assert!(out.is_empty());
        assert_eq!(close.map(|c| c.code), Some(CLOSE_PROTOCOL_ERROR));
    }

    #[test]
    fn a_negotiated_extension_may_set_the_reserved_bits() {
        let mut compressed = fragment(Opcode::Text, b"deflated", true);
        compressed[0] |= 0x40;
        let mut f = ClientFilter::new(None).with_extensions(true);
        f.start(Bytes::from(compressed.clone()));
        assert!(matches!(f.step(), Step::Decide));
        f.verdict(MessageVerdict::Forward);
        let Step::Done(filtered) = f.step() else {
            panic!("one message, one verdict");
        };
        assert_eq!(filtered.forward.as_deref(), Some(&compressed[..]));
        assert!(filtered.close.is_none());
    }

    #[test]
    fn frames_before_a_protocol_error_still_go() {
        let ok = fragment(Opcode::Text, b"fine", true);
        let mut stream = ok.clone();
        stream.extend(encode_frame(Opcode::Text, b"unmasked", None));
        let (out, _, close) = filter(&stream, stream.len(), &[]);
        assert_eq!(out, ok);
        assert_eq!(close.map(|c| c.code), Some(CLOSE_PROTOCOL_ERROR));
    }

    #[test]
    fn a_close_verdict_forwards_nothing_more() {
        let first = fragment(Opcode::Text, b"ok", true);
        let mut stream = first.clone();
        stream.extend(fragment(Opcode::Text, b"over", true));
        let (out, _, close) = filter(
            &stream,
            stream.len(),
            &[MessageVerdict::Forward, MessageVerdict::Close],
        );
        assert_eq!(out, first);
        assert_eq!(close.map(|c| c.code), Some(CLOSE_POLICY_VIOLATION));
    }

    #[test]
    fn an_untouched_piece_is_forwarded_without_copying() {
        let stream = Bytes::from(fragment(Opcode::Text, b"hello", true));
        let mut f = ClientFilter::new(None);
        f.start(stream.clone());
        assert!(matches!(f.step(), Step::Decide));
        f.verdict(MessageVerdict::Forward);
        let Step::Done(r) = f.step() else {
            panic!("no verdict needed");
        };
        let forwarded = r.forward.unwrap();
        assert_eq!(forwarded.as_ptr(), stream.as_ptr());
    }

    #[test]
    fn the_notice_is_a_json_text_frame() {
        let frame = notice_frame(Duration::from_millis(1500));
        assert_eq!(frame[0], 0x81);
        assert_eq!(
            &frame[2..],
            br#"{"type":"rate_limited","retry_after_ms":1500}"#
        );
    }
}
