//! The WebSocket frame parser against streams the tests build: random
//! messages (fragmented, with pings between fragments, payloads of the
//! boundary sizes 0, 125, 126, 65535 and 65536) cut at every byte or at random
//! places. The parser must find every frame exactly as written, and a filter
//! that drops nothing must pass the stream through byte for byte.

use bytes::Bytes;
use proptest::prelude::*;
use tollgate::websocket::frame::{encode_frame, FrameParser, Opcode, Piece, Sender};
use tollgate::websocket::{ClientFilter, MessageVerdict, Step};

/// A frame as the test wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    opcode: Opcode,
    fin: bool,
    len: u64,
    message_start: bool,
}

const BOUNDARY_SIZES: [usize; 5] = [0, 125, 126, 65535, 65536];

/// A message: its opcode, the sizes of its fragments, and after which
/// fragments a ping comes.
fn message() -> impl Strategy<Value = (bool, Vec<usize>, Vec<bool>)> {
    let size = prop_oneof![
        3 => 0usize..40,
        1 => prop::sample::select(BOUNDARY_SIZES.to_vec()),
    ];
    (
        any::<bool>(),
        prop::collection::vec(size, 1..4),
        prop::collection::vec(any::<bool>(), 4),
    )
}

/// Encodes messages as `sender` would: each frame with its message's index
/// (`None` for a ping) and what the parser must report for it.
fn encoded(
    sender: Sender,
    messages: &[(bool, Vec<usize>, Vec<bool>)],
) -> Vec<(Option<usize>, Vec<u8>, Written)> {
    let mask = match sender {
        Sender::Client => Some([0x12, 0x34, 0x56, 0x78]),
        Sender::Server => None,
    };
    let mut out = Vec::new();
    for (n, (text, fragments, pings)) in messages.iter().enumerate() {
        for (i, &size) in fragments.iter().enumerate() {
            let opcode = match (i, text) {
                (0, true) => Opcode::Text,
                (0, false) => Opcode::Binary,
                _ => Opcode::Continuation,
            };
            let fin = i + 1 == fragments.len();
            let payload: Vec<u8> = (0..size).map(|b| (b + n) as u8).collect();
            let mut frame = encode_frame(opcode, &payload, mask);
            if !fin {
                frame[0] &= 0x7F;
            }
            let written = Written {
                opcode,
                fin,
                len: size as u64,
                message_start: i == 0,
            };
            out.push((Some(n), frame, written));
            if pings[i] {
                let ping = Written {
                    opcode: Opcode::Ping,
                    fin: true,
                    len: 4,
                    message_start: false,
                };
                out.push((None, encode_frame(Opcode::Ping, b"ping", mask), ping));
            }
        }
    }
    out
}

/// The whole stream and the frames in it.
fn stream(sender: Sender, messages: &[(bool, Vec<usize>, Vec<bool>)]) -> (Vec<u8>, Vec<Written>) {
    let frames = encoded(sender, messages);
    let bytes = frames.iter().flat_map(|(_, f, _)| f.clone()).collect();
    (bytes, frames.into_iter().map(|(_, _, w)| w).collect())
}

/// Parses `bytes` cut into the given pieces; returns the frames found and
/// checks that payload pieces cover each frame exactly.
fn parse(sender: Sender, bytes: &[u8], cuts: &[usize]) -> Vec<Written> {
    let mut parser = FrameParser::new(sender);
    let mut found = Vec::new();
    let mut left = 0u64;
    let mut start = 0;
    let mut ends = cuts.to_vec();
    ends.push(bytes.len());
    for end in ends {
        let mut pieces = Vec::new();
        parser.feed(&bytes[start..end], &mut pieces).unwrap();
        for piece in pieces {
            match piece {
                Piece::Header {
                    header,
                    message_start,
                    raw_len,
                    ..
                } => {
                    assert_eq!(left, 0, "a header inside a payload");
                    assert!(usize::from(raw_len) >= 2);
                    left = header.payload_len;
                    found.push(Written {
                        opcode: header.opcode,
                        fin: header.fin,
                        len: header.payload_len,
                        message_start,
                    });
                }
                Piece::Payload(range) => {
                    assert!(range.end <= end - start);
                    left -= range.len() as u64;
                }
                Piece::FrameEnd { .. } => assert_eq!(left, 0),
            }
        }
        start = end;
    }
    assert!(
        parser.at_message_boundary(),
        "the stream ended between messages"
    );
    found
}

fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=len, 0..12).prop_map(|mut c| {
        c.sort_unstable();
        c
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_frame_is_found_however_the_stream_is_cut(
        (messages, client, cut) in (prop::collection::vec(message(), 1..5), any::<bool>())
            .prop_flat_map(|(messages, client)| {
                let sender = if client { Sender::Client } else { Sender::Server };
                let len = stream(sender, &messages).0.len();
                (Just(messages), Just(client), cuts(len))
            }),
    ) {
        let sender = if client { Sender::Client } else { Sender::Server };
        let (bytes, written) = stream(sender, &messages);
        prop_assert_eq!(parse(sender, &bytes, &cut), written);
    }

    #[test]
    fn a_filter_that_drops_nothing_passes_the_stream_through(
        messages in prop::collection::vec(message(), 1..4),
        cut in 1usize..300,
    ) {
        let (bytes, _) = stream(Sender::Client, &messages);
        let mut filter = ClientFilter::new(None);
        let mut out = Vec::new();
        for piece in bytes.chunks(cut) {
            filter.start(Bytes::copy_from_slice(piece));
            loop {
                match filter.step() {
                    Step::Decide => filter.verdict(MessageVerdict::Forward),
                    Step::Done(f) => {
                        prop_assert!(f.close.is_none());
                        out.extend_from_slice(f.forward.as_deref().unwrap_or_default());
                        break;
                    }
                }
            }
        }
        prop_assert_eq!(out, bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Dropped messages vanish whole (all fragments), everything else —
    /// the pings between a dropped message's fragments included — arrives
    /// byte for byte, however the stream is cut.
    #[test]
    fn dropped_messages_vanish_whole_and_the_rest_is_intact(
        messages in prop::collection::vec(message(), 1..5),
        drops in prop::collection::vec(any::<bool>(), 5),
        cut in 1usize..200,
    ) {
        let frames = encoded(Sender::Client, &messages);
        let bytes: Vec<u8> = frames.iter().flat_map(|(_, f, _)| f.clone()).collect();
        let expected: Vec<u8> = frames
            .iter()
            .filter(|(m, _, _)| m.is_none_or(|m| !drops[m]))
            .flat_map(|(_, f, _)| f.clone())
            .collect();
        let mut filter = ClientFilter::new(None);
        let (mut out, mut decided, mut dropped) = (Vec::new(), 0, 0);
        for piece in bytes.chunks(cut) {
            filter.start(Bytes::copy_from_slice(piece));
            loop {
                match filter.step() {
                    Step::Decide => {
                        let drop = drops[decided];
                        decided += 1;
                        filter.verdict(if drop {
                            MessageVerdict::Drop { retry_after: std::time::Duration::from_secs(1) }
                        } else {
                            MessageVerdict::Forward
                        });
                    }
                    Step::Done(f) => {
                        prop_assert!(f.close.is_none());
                        dropped += f.dropped;
                        out.extend_from_slice(f.forward.as_deref().unwrap_or_default());
                        break;
                    }
                }
            }
        }
        prop_assert_eq!(decided, messages.len());
        prop_assert_eq!(dropped as usize, drops[..messages.len()].iter().filter(|d| **d).count());
        prop_assert_eq!(out, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The fuzz target's body on random bytes (cargo-fuzz needs nightly; this
    /// runs everywhere).
    #[test]
    fn arbitrary_bytes_never_panic_the_filter(data in prop::collection::vec(any::<u8>(), 0..400)) {
        tollgate::websocket::fuzz_filter(&data);
    }

    /// The same on streams that are mostly valid, so the fuzz body gets deep.
    #[test]
    fn valid_streams_with_noise_never_panic_the_filter(
        messages in prop::collection::vec(message(), 1..3),
        control: u8,
        noise in prop::collection::vec((0usize..2000, any::<u8>()), 0..3),
    ) {
        let (mut bytes, _) = stream(Sender::Client, &messages);
        for (at, byte) in noise {
            if let Some(b) = bytes.get_mut(at) {
                *b = byte;
            }
        }
        bytes.insert(0, control);
        tollgate::websocket::fuzz_filter(&bytes);
    }
}

/// Small streams cut at every single byte boundary (and at every pair of
/// boundaries for the header-heavy ones).
#[test]
fn every_byte_boundary_of_fragmented_messages_with_pings() {
    let messages = vec![
        (true, vec![0, 3], vec![true, false, false, false]),
        (false, vec![126, 0, 125], vec![false, true, true, false]),
        (true, vec![5], vec![true, false, false, false]),
    ];
    for sender in [Sender::Client, Sender::Server] {
        let (bytes, written) = stream(sender, &messages);
        for at in 0..=bytes.len() {
            assert_eq!(parse(sender, &bytes, &[at]), written, "cut at {at}");
        }
        for a in (0..bytes.len()).step_by(3) {
            for b in (a..bytes.len()).step_by(5) {
                assert_eq!(parse(sender, &bytes, &[a, b]), written, "cut at {a}, {b}");
            }
        }
    }
}

#[test]
fn payload_lengths_at_the_encoding_boundaries() {
    for size in BOUNDARY_SIZES {
        let messages = vec![(false, vec![size], vec![false; 4])];
        for sender in [Sender::Client, Sender::Server] {
            let (bytes, written) = stream(sender, &messages);
            let header = bytes.len() - size;
            let expected_header = match size {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            } + if sender == Sender::Client { 4 } else { 0 };
            assert_eq!(header, expected_header, "{size} bytes");
            assert_eq!(parse(sender, &bytes, &[1, header - 1, header]), written);
        }
    }
}
