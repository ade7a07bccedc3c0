//! A light HTTP/2 frame-header scanner for the bytes the relay reads from the gateway command, so
//! the relay can put a price on the frames that carry no request.
//!
//! Promise: fed the byte stream in pieces of any size, [`FrameScanner`] finds the same frame
//! boundaries (RFC 9113 §4.1: 9-byte header, then the declared payload) and the same control cost
//! as fed in one piece; it never allocates and never fails. It does not validate anything: the
//! HTTP/2 library does. Attack defended: a sandbox that keeps the relay busy with frames that are
//! cheap to send and never end (PRIORITY, unknown types, PINGs, empty DATA frames), which the
//! HTTP/2 library processes one by one at full speed (docs/SECURITY.md, "stdio flood").

/// Length of an HTTP/2 frame header: 24-bit payload length, type, flags, 32-bit stream id.
pub const FRAME_HEADER_LEN: usize = 9;
/// Frame types that carry requests: their volume is bounded by flow control and stream limits,
/// so they are not control traffic.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
/// `END_STREAM` flag of a DATA frame: an empty DATA frame that ends its stream is a legitimate
/// (once per stream) way to finish a request body.
const END_STREAM: u8 = 0x1;

/// Where the scanner is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes of the client connection preface still to skip.
    Preface(usize),
    /// Bytes of the current frame header collected so far (into `FrameScanner::header`).
    Header(usize),
    /// Payload bytes of the current frame still to skip.
    Payload(u32),
}

/// Frame boundaries of an HTTP/2 byte stream and the control cost of its frames.
///
/// The cost of a control frame is its size on the wire (header and declared payload): every
/// frame except HEADERS, and DATA unless it carries bytes or ends its stream. It is counted when
/// the frame's header is complete, so a frame that declares a huge payload is charged at once.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    state: State,
    header: [u8; FRAME_HEADER_LEN],
}

impl FrameScanner {
    /// A scanner for a stream that starts with the client preface of `preface_len` bytes
    /// (`ready::H2_PREFACE`; 0 if the preface was consumed elsewhere).
    pub fn new(preface_len: usize) -> FrameScanner {
        FrameScanner {
            state: if preface_len > 0 {
                State::Preface(preface_len)
            } else {
                State::Header(0)
            },
            header: [0; FRAME_HEADER_LEN],
        }
    }

    /// Consumes the next bytes of the stream; returns the control cost of the frames whose header
    /// completed in them.
    pub fn scan(&mut self, mut bytes: &[u8]) -> u64 {
        let mut cost = 0u64;
        while !bytes.is_empty() {
            match self.state {
                State::Preface(left) => {
                    let n = left.min(bytes.len());
                    bytes = &bytes[n..];
                    self.state = if n == left {
                        State::Header(0)
                    } else {
                        State::Preface(left - n)
                    };
                }
                State::Payload(left) => {
                    let n = (left as usize).min(bytes.len());
                    bytes = &bytes[n..];
                    self.state = if n == left as usize {
                        State::Header(0)
                    } else {
                        State::Payload(left - n as u32)
                    };
                }
                State::Header(have) => {
                    let n = (FRAME_HEADER_LEN - have).min(bytes.len());
                    self.header[have..have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if have + n < FRAME_HEADER_LEN {
                        self.state = State::Header(have + n);
                        continue;
                    }
                    let [l0, l1, l2, kind, flags, ..] = self.header;
                    let len = u32::from_be_bytes([0, l0, l1, l2]);
                    cost += control_cost(len, kind, flags);
                    self.state = if len == 0 {
                        State::Header(0)
                    } else {
                        State::Payload(len)
                    };
                }
            }
        }
        cost
    }
}

/// What one frame costs against the control budget (0 for frames that carry a request).
fn control_cost(len: u32, kind: u8, flags: u8) -> u64 {
    let carries_request = match kind {
        HEADERS => true,
        DATA => len > 0 || flags & END_STREAM != 0,
        _ => false,
    };
    if carries_request {
        0
    } else {
        FRAME_HEADER_LEN as u64 + u64::from(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A session as a legitimate gateway writes it: preface, SETTINGS, a request with a body,
    /// an empty END_STREAM DATA frame, a WINDOW_UPDATE and a PING.
    fn legitimate_session() -> (Vec<u8>, u64) {
        let mut bytes = PREFACE.to_vec();
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let window = frame(0x8, 0, 0, &[0, 0, 0x40, 0]);
        let ping = frame(0x6, 0, 0, &[7; 8]);
        bytes.extend(&settings);
        bytes.extend(frame(HEADERS, 0x4, 1, &[0x82; 40]));
        bytes.extend(frame(DATA, 0, 1, &[b'x'; 1000]));
        bytes.extend(frame(DATA, END_STREAM, 1, &[]));
        bytes.extend(&window);
        bytes.extend(&ping);
        let control = (settings.len() + window.len() + ping.len()) as u64;
        (bytes, control)
    }

    #[test]
    fn charges_control_frames_their_wire_size_and_request_frames_nothing() {
        let (bytes, control) = legitimate_session();
        assert_eq!(FrameScanner::new(PREFACE.len()).scan(&bytes), control);
    }

    #[test]
    fn finds_the_same_frames_whatever_the_read_sizes() {
        let (bytes, control) = legitimate_session();
        for piece in 1..=bytes.len() {
            let mut scanner = FrameScanner::new(PREFACE.len());
            let total: u64 = bytes.chunks(piece).map(|c| scanner.scan(c)).sum();
            assert_eq!(total, control, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn priority_and_unknown_frames_are_control_traffic() {
        let mut scanner = FrameScanner::new(0);
        let priority = frame(0x2, 0, 1, &[0, 0, 0, 0, 16]);
        let unknown = frame(0xfa, 0xff, 7, &[0; 8]);
        assert_eq!(scanner.scan(&priority), 14);
        assert_eq!(scanner.scan(&unknown), 17);
    }

    #[test]
    fn empty_data_frames_that_do_not_end_a_stream_are_control_traffic() {
        let mut scanner = FrameScanner::new(0);
        assert_eq!(scanner.scan(&frame(DATA, 0, 1, &[])), 9);
        assert_eq!(scanner.scan(&frame(DATA, END_STREAM, 1, &[])), 0);
        // PADDED alone does not make an empty frame a request frame, but padding is payload.
        assert_eq!(scanner.scan(&frame(DATA, 0x8, 1, &[0])), 0);
    }

    #[test]
    fn a_declared_payload_is_charged_when_the_header_completes() {
        let mut scanner = FrameScanner::new(0);
        let header = &frame(0xfa, 0, 0, &[])[..];
        let mut huge = header.to_vec();
        huge[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(scanner.scan(&huge), 9 + 0xff_ffff);
        // The payload that follows is skipped, not read as frame headers.
        assert_eq!(scanner.scan(&[0x00; 4096]), 0);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_cost_the_same_whatever_the_read_sizes(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            piece in 1usize..64,
            preface in 0usize..30,
        ) {
            let whole = FrameScanner::new(preface).scan(&bytes);
            let mut scanner = FrameScanner::new(preface);
            let pieces: u64 = bytes.chunks(piece).map(|c| scanner.scan(c)).sum();
            proptest::prop_assert_eq!(whole, pieces);
        }
    }
}
