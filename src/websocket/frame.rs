//! A streaming RFC 6455 frame-header parser. It sees a tunnel's bytes in
//! whatever pieces TCP delivers them, reads frame headers (holding back a
//! header split across reads until it is whole), skips payloads without
//! copying them, and tracks messages across fragments and the control frames
//! that may come between them. It never unmasks or buffers payloads.

use std::ops::Range;

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub(crate) const MAX_HEADER: usize = 14;
/// Control frames carry at most this much (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Which side sends the stream: clients must mask every frame, servers
/// must not (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub(crate) fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1–3, as sent (extensions such as permessage-deflate use RSV1).
    pub(crate) rsv: u8,
    pub opcode: Opcode,
    pub(crate) masked: bool,
    pub payload_len: u64,
}

/// Why a stream is not valid WebSocket. The tunnel closes with 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("a client frame without a mask")]
    UnmaskedClientFrame,
    #[error("a masked server frame")]
    MaskedServerFrame,
    #[error("a control frame longer than 125 bytes")]
    ControlTooLong,
    #[error("a fragmented control frame")]
    FragmentedControl,
    #[error("a continuation frame outside a message")]
    UnexpectedContinuation,
    #[error("a new message inside a fragmented one")]
    MessageInProgress,
    #[error("a payload length with the most significant bit set")]
    LengthTooLarge,
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
}

/// What the parser found in one piece of the stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A whole frame header; `raw[..raw_len]` are its bytes (which may have
    /// arrived in earlier reads). `message_start` marks the first frame of a
    /// data message.
    Header {
        header: FrameHeader,
        raw: [u8; MAX_HEADER],
        raw_len: u8,
        message_start: bool,
    },
    /// Payload bytes of the current frame: this range of the piece fed.
    Payload(Range<usize>),
    /// The current frame ended; `message_end` when it completed a data
    /// message (the stream is then between messages).
    FrameEnd { message_end: bool },
}

/// Per-stream state.
#[derive(Debug, Clone)]
pub struct FrameParser {
    sender: Sender,
    /// Bytes of a header not yet complete.
    pending: [u8; MAX_HEADER],
    pending_len: usize,
    /// Payload bytes left in the current frame (`None`: expecting a header).
    in_frame: Option<FrameState>,
    /// A data message whose final frame has not come yet.
    in_message: bool,
    /// The handshake negotiated an extension, which may give the RSV bits
    /// a meaning (permessage-deflate: RSV1); without one they must be 0.
    extensions: bool,
}

#[derive(Debug, Clone, Copy)]
struct FrameState {
    left: u64,
    /// The frame is a data frame with FIN set: its end ends the message.
    ends_message: bool,
}

impl FrameParser {
    pub fn new(sender: Sender) -> Self {
        FrameParser {
            sender,
            pending: [0; MAX_HEADER],
            pending_len: 0,
            in_frame: None,
            in_message: false,
            extensions: false,
        }
    }

    /// A parser for a connection whose handshake negotiated extensions
    /// (RFC 6455 §5.2: only they may set the RSV bits).
    pub fn with_extensions(mut self, negotiated: bool) -> Self {
        self.extensions = negotiated;
        self
    }

    /// Whether part of a frame header has been read but not all of it.
    pub(crate) fn holding_header(&self) -> bool {
        self.pending_len > 0
    }

    /// Whether the stream is between frames (no partial header either).
    pub(crate) fn at_frame_boundary(&self) -> bool {
        self.in_frame.is_none() && self.pending_len == 0
    }

    /// Whether the stream is between data messages: a frame of our own may
    /// be inserted here without breaking a fragmented message.
    pub fn at_message_boundary(&self) -> bool {
        self.at_frame_boundary() && !self.in_message
    }

    /// Parses `bytes`, appending what it found to `out`. After an error the
    /// stream cannot be followed any more; the parser must not be fed again.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Piece>) -> Result<(), FrameError> {
        let mut at = 0;
        while at < bytes.len() {
            if let Some(frame) = &mut self.in_frame {
                let available = (bytes.len() - at) as u64;
                let take = frame.left.min(available) as usize;
                if take > 0 {
                    out.push(Piece::Payload(at..at + take));
                    at += take;
                    frame.left -= take as u64;
                }
                if frame.left == 0 {
                    let message_end = frame.ends_message;
                    self.in_frame = None;
                    if message_end {
                        self.in_message = false;
                    }
                    out.push(Piece::FrameEnd { message_end });
                }
                continue;
            }
            // Collect header bytes until the header's length is known and met.
            let need = header_len(&self.pending[..self.pending_len]);
            let want = need.unwrap_or(2).max(self.pending_len + 1);
            let take = (want - self.pending_len).min(bytes.len() - at);
            self.pending[self.pending_len..self.pending_len + take]
                .copy_from_slice(&bytes[at..at + take]);
            self.pending_len += take;
            at += take;
            if let Some(len) = header_len(&self.pending[..self.pending_len]) {
                if self.pending_len >= len {
                    self.start_frame(len, out)?;
                }
            }
        }
        Ok(())
    }

    /// A header of `len` bytes is complete in `pending`.
    fn start_frame(&mut self, len: usize, out: &mut Vec<Piece>) -> Result<(), FrameError> {
        let raw = &self.pending[..len];
        let fin = raw[0] & 0x80 != 0;
        let rsv = (raw[0] >> 4) & 0x7;
        if rsv != 0 && !self.extensions {
            return Err(FrameError::ReservedBits);
        }
        let opcode =
            Opcode::from_bits(raw[0] & 0x0F).ok_or(FrameError::ReservedOpcode(raw[0] & 0x0F))?;
        let masked = raw[1] & 0x80 != 0;
        let payload_len = match raw[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([raw[2], raw[3]])),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&raw[2..10]);
                let n = u64::from_be_bytes(be);
                if n >> 63 != 0 {
                    return Err(FrameError::LengthTooLarge);
                }
                n
            }
            n => u64::from(n),
        };
        match (self.sender, masked) {
            (Sender::Client, false) => return Err(FrameError::UnmaskedClientFrame),
            (Sender::Server, true) => return Err(FrameError::MaskedServerFrame),
            _ => {}
        }
        let mut message_start = false;
        if opcode.is_control() {
            if !fin {
                return Err(FrameError::FragmentedControl);
            }
            if payload_len > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::ControlTooLong);
            }
        } else if opcode == Opcode::Continuation {
            if !self.in_message {
                return Err(FrameError::UnexpectedContinuation);
            }
        } else {
            if self.in_message {
                return Err(FrameError::MessageInProgress);
            }
            message_start = true;
            self.in_message = true;
        }
        let ends_message = !opcode.is_control() && fin;
        let mut copy = [0u8; MAX_HEADER];
        copy[..len].copy_from_slice(raw);
        out.push(Piece::Header {
            header: FrameHeader {
                fin,
                rsv,
                opcode,
                masked,
                payload_len,
            },
            raw: copy,
            raw_len: len as u8,
            message_start,
        });
        self.pending_len = 0;
        if payload_len == 0 {
            if ends_message {
                self.in_message = false;
            }
            out.push(Piece::FrameEnd {
                message_end: ends_message,
            });
        } else {
            self.in_frame = Some(FrameState {
                left: payload_len,
                ends_message,
            });
        }
        Ok(())
    }
}

/// The length of a header from its first bytes, once they tell.
fn header_len(start: &[u8]) -> Option<usize> {
    if start.len() < 2 {
        return None;
    }
    let mask = if start[1] & 0x80 != 0 { 4 } else { 0 };
    Some(
        2 + mask
            + match start[1] & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            },
    )
}

/// Encodes one frame sent by the gateway itself. Frames towards a server
/// must be masked (the key need not be secret from us: it protects
/// intermediaries from a hostile client, and we are the client here).
pub fn encode_frame(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let code = match opcode {
        Opcode::Continuation => 0x0,
        Opcode::Text => 0x1,
        Opcode::Binary => 0x2,
        Opcode::Close => 0x8,
        Opcode::Ping => 0x9,
        Opcode::Pong => 0xA,
    };
    let mut out = Vec::with_capacity(payload.len() + MAX_HEADER);
    out.push(0x80 | code);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masking key for frames the gateway sends upstream. RFC 6455 wants it
/// unpredictable; should the system's randomness fail, a fixed key still
/// makes a valid frame.
pub(crate) fn random_mask() -> [u8; 4] {
    let mut key = [0x5a, 0xc3, 0x91, 0x2e];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key);
    key
}

/// A close frame with a status code and a reason (at most 123 bytes of it).
pub(crate) fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(Opcode::Close, &payload, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_bits_are_an_error_unless_an_extension_was_negotiated() {
        let mut compressed = encode_frame(Opcode::Text, b"hi", Some([1, 2, 3, 4]));
        compressed[0] |= 0x40;
        assert_eq!(
            parse_all(Sender::Client, &compressed),
            Err(FrameError::ReservedBits)
        );
        let mut p = FrameParser::new(Sender::Client).with_extensions(true);
        assert!(p.feed(&compressed, &mut Vec::new()).is_ok());
    }

    fn parse_all(sender: Sender, bytes: &[u8]) -> Result<Vec<Piece>, FrameError> {
        let mut p = FrameParser::new(sender);
        let mut out = Vec::new();
        p.feed(bytes, &mut out)?;
        Ok(out)
    }

    #[test]
    fn an_unmasked_client_frame_is_a_protocol_error() {
        let frame = encode_frame(Opcode::Text, b"hi", None);
        assert_eq!(
            parse_all(Sender::Client, &frame),
            Err(FrameError::UnmaskedClientFrame)
        );
    }

    #[test]
    fn a_masked_server_frame_is_a_protocol_error() {
        let frame = encode_frame(Opcode::Text, b"hi", Some([1, 2, 3, 4]));
        assert_eq!(
            parse_all(Sender::Server, &frame),
            Err(FrameError::MaskedServerFrame)
        );
    }

    #[test]
    fn control_frames_must_be_short_and_whole() {
        let long_ping = encode_frame(Opcode::Ping, &[0; 126], None);
        assert_eq!(
            parse_all(Sender::Server, &long_ping),
            Err(FrameError::ControlTooLong)
        );
        let mut fragmented_ping = encode_frame(Opcode::Ping, b"x", None);
        fragmented_ping[0] &= 0x7F;
        assert_eq!(
            parse_all(Sender::Server, &fragmented_ping),
            Err(FrameError::FragmentedControl)
        );
    }

    #[test]
    fn continuations_need_a_message_and_messages_do_not_nest() {
        let cont = encode_frame(Opcode::Continuation, b"x", None);
        assert_eq!(
            parse_all(Sender::Server, &cont),
            Err(FrameError::UnexpectedContinuation)
        );
        let mut first = encode_frame(Opcode::Text, b"a", None);
        first[0] &= 0x7F; // not final
        let mut twice = first.clone();
        twice.extend_from_slice(&first);
        assert_eq!(
            parse_all(Sender::Server, &twice),
            Err(FrameError::MessageInProgress)
        );
    }

    #[test]
    fn reserved_opcodes_and_huge_lengths_are_refused() {
        assert_eq!(
            parse_all(Sender::Server, &[0x83, 0x00]),
            Err(FrameError::ReservedOpcode(3))
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(
            parse_all(Sender::Server, &huge),
            Err(FrameError::LengthTooLarge)
        );
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        let frame = close_frame(1008, &"é".repeat(100), None);
        assert_eq!(frame[1] as usize, frame.len() - 2);
        assert!(frame.len() - 2 <= 125);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
