//! Framing: every message on a stream is `u32 little-endian length || payload`.
//!
//! The length is checked against the guard before any of the payload is buffered, so a
//! header claiming 4 GiB costs nothing.

/// Bytes of the length prefix.
pub const HEADER_BYTES: usize = 4;

/// Why a stream's framing failed. The stream must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A header announced more than the guard allows.
    #[error("frame of {len} bytes exceeds the {max}-byte guard")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The guard.
        max: usize,
    },
    /// A header announced an empty frame.
    #[error("empty frame")]
    Empty,
}

/// Encodes one frame.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    encode_into(&mut out, payload);
    out
}

/// Appends one frame to `out` (several payloads leave in one write).
pub fn encode_into(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Splits a byte stream into frames, holding at most one frame (≤ the guard) in memory.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max: usize,
    failed: Option<FrameError>,
}

impl Decoder {
    /// A decoder refusing frames larger than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Decoder {
        Decoder { buf: Vec::new(), max: max_frame_bytes, failed: None }
    }

    /// Bytes waiting for the rest of their frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds received bytes; returns every complete frame, in order. After an error the
    /// decoder refuses everything (the stream is unusable).
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut out = Vec::new();
        while !bytes.is_empty() || self.ready() {
            if self.buf.len() < HEADER_BYTES {
                let take = (HEADER_BYTES - self.buf.len()).min(bytes.len());
                self.buf.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.buf.len() < HEADER_BYTES {
                    break;
                }
                let len = self.announced();
                if len == 0 {
                    self.failed = Some(FrameError::Empty);
                    return Err(FrameError::Empty);
                }
                if len > self.max {
                    let e = FrameError::TooLarge { len: len as u64, max: self.max };
                    self.failed = Some(e);
                    return Err(e);
                }
            }
            let want = HEADER_BYTES + self.announced() - self.buf.len();
            let take = want.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.ready() {
                out.push(self.buf[HEADER_BYTES..].to_vec());
                self.buf.clear();
            } else {
                break;
            }
        }
        Ok(out)
    }

    fn announced(&self) -> usize {
        u32::from_le_bytes(self.buf[..HEADER_BYTES].try_into().expect("4 bytes")) as usize
    }

    fn ready(&self) -> bool {
        self.buf.len() >= HEADER_BYTES && self.buf.len() == HEADER_BYTES + self.announced()
    }
}
