//! Capability-negotiated compression of replication frames (docs/PROTOCOL.md, "Compression").
//!
//! `zstd`: each snapshot chunk or delta payload may travel as a `Compressed` message holding one
//! zstd frame of the original `Frame` buffer. `zstd-dict`: the same, with a dictionary the server
//! trains from the session's own deltas and sends in-band as a `Dictionary` message before the
//! first frame that uses it. A payload that would not shrink is sent as is, so receivers accept
//! both forms on every stream. `zstd-stream`: every payload of the replication stream goes
//! into one continuous zstd stream, flushed at the end of each payload, so each frame can refer
//! back to earlier ones (window 2^17 bytes); each replication payload is then the bare piece of
//! the stream that flush produced (no `Compressed` wrapper: at a few dozen bytes per delta the
//! wrapper would outweigh the data), and pieces must be decompressed in order.

use std::collections::BTreeMap;

use theta_schemas::wire::{Compressed, Dictionary};
use theta_schemas::{DecodeError, MAX_ENVELOPE_BYTES, Message};

/// Capability name: zstd without a dictionary.
pub const ZSTD: &str = "zstd";
/// Capability name: zstd with in-band dictionaries.
pub const ZSTD_DICT: &str = "zstd-dict";
/// Capability name: one continuous zstd stream per replication stream.
pub const ZSTD_STREAM: &str = "zstd-stream";
/// Window of the continuous stream (log2 bytes); receivers refuse larger ones.
pub const STREAM_WINDOW_LOG: u32 = 17;
/// zstd level used for replication frames.
pub const LEVEL: i32 = 3;
/// zstd level of a `zstd-stream`: a delta is a few hundred bytes and the window holds the ones
/// before it, so level 1 finds the same matches as 3 (11.6 against 11.7 bytes per command in
/// `benches/fanout.rs`) in 10–25% less time per viewer.
pub const STREAM_LEVEL: i32 = 1;
/// Largest dictionary the server trains, bytes.
pub const DICTIONARY_BYTES: usize = 16 * 1024;
/// Dictionaries a receiver keeps (the current one and its predecessor).
const KEPT_DICTIONARIES: usize = 2;

/// How a stream's frames are encoded, from the agreed capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Encoding {
    /// Plain FlatBuffers frames.
    #[default]
    Raw,
    /// zstd without a dictionary.
    Zstd,
    /// zstd with the session's trained dictionary.
    ZstdDict,
    /// One continuous zstd stream.
    ZstdStream,
}

impl Encoding {
    /// The encoding's wire name (`raw` for none).
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Zstd => ZSTD,
            Encoding::ZstdDict => ZSTD_DICT,
            Encoding::ZstdStream => ZSTD_STREAM,
        }
    }

    /// The best encoding among agreed compression kinds.
    pub fn from_agreed(kinds: &[String]) -> Encoding {
        if kinds.iter().any(|k| k == ZSTD_STREAM) {
            Encoding::ZstdStream
        } else if kinds.iter().any(|k| k == ZSTD_DICT) {
            Encoding::ZstdDict
        } else if kinds.iter().any(|k| k == ZSTD) {
            Encoding::Zstd
        } else {
            Encoding::Raw
        }
    }
}

/// Compresses `raw` into a `Compressed` frame payload, or returns `raw` when that is not smaller.
/// `dictionary` is `(id, compressor built with it)`.
pub fn compress(raw: Vec<u8>, dictionary: Option<(u32, &mut zstd::bulk::Compressor<'static>)>) -> Vec<u8> {
    let (id, data) = match dictionary {
        Some((id, c)) => (id, c.compress(&raw)),
        None => (0, zstd::bulk::compress(&raw, LEVEL)),
    };
    let Ok(data) = data else { return raw };
    let wrapped = Message::Compressed(Compressed { dictionary: id, raw_len: raw.len() as u32, data }).encode();
    if wrapped.len() < raw.len() { wrapped } else { raw }
}

/// The sending side of a `zstd-stream` replication stream.
pub struct StreamCompressor {
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
}

impl StreamCompressor {
    /// A fresh stream.
    pub fn new() -> std::io::Result<StreamCompressor> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), STREAM_LEVEL)?;
        encoder.window_log(STREAM_WINDOW_LOG)?;
        Ok(StreamCompressor { encoder })
    }

    /// Compresses one payload into the stream and flushes: the bare piece to send.
    pub fn compress(&mut self, raw: &[u8]) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        self.encoder.write_all(raw)?;
        self.encoder.flush()?;
        Ok(std::mem::take(self.encoder.get_mut()))
    }
}

/// Why a compressed frame could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The frame does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A frame names a dictionary the sender never sent.
    #[error("compressed frame uses unknown dictionary {0}")]
    UnknownDictionary(u32),
    /// zstd failed, or the output is not the announced size.
    #[error("zstd: {0}")]
    Zstd(String),
}

/// The receiving side: keeps the dictionaries sent in-band and unwraps compressed frames; on a
/// `zstd-stream` connection ([`Decompressor::for_encoding`]) every payload is a stream piece.
#[derive(Default)]
pub struct Decompressor {
    /// Payloads are bare pieces of one zstd stream.
    bare_stream: bool,
    dictionaries: BTreeMap<u32, zstd::bulk::Decompressor<'static>>,
    plain: Option<zstd::bulk::Decompressor<'static>>,
    stream: Option<zstd::stream::raw::Decoder<'static>>,
    /// Compressed bytes received.
    pub compressed_bytes: u64,
    /// Bytes after decompression.
    pub raw_bytes: u64,
}

impl Decompressor {
    /// A decompressor with no dictionaries.
    pub fn new() -> Decompressor {
        Decompressor::default()
    }

    /// The decompressor for a connection that agreed on `encoding`.
    pub fn for_encoding(encoding: Encoding) -> Decompressor {
        Decompressor { bare_stream: encoding == Encoding::ZstdStream, ..Decompressor::default() }
    }

    /// Decompresses the next bare piece of the stream: exactly one whole frame buffer, never
    /// beyond the frame guard.
    fn open_piece(&mut self, piece: &[u8]) -> Result<Vec<u8>, CompressError> {
        use zstd::stream::raw::{DParameter, InBuffer, Operation, OutBuffer};
        let zerr = |e: std::io::Error| CompressError::Zstd(e.to_string());
        let d = match &mut self.stream {
            Some(d) => d,
            None => {
                let mut d = zstd::stream::raw::Decoder::new().map_err(zerr)?;
                d.set_parameter(DParameter::WindowLogMax(STREAM_WINDOW_LOG)).map_err(zerr)?;
                self.stream.insert(d)
            }
        };
        let mut raw = Vec::new();
        let mut scratch = [0u8; 16 * 1024];
        let mut input = InBuffer::around(piece);
        loop {
            let mut output = OutBuffer::around(&mut scratch[..]);
            d.run(&mut input, &mut output).map_err(zerr)?;
            let n = output.pos();
            if raw.len() + n > MAX_ENVELOPE_BYTES {
                return Err(CompressError::Zstd(format!("a stream piece opens beyond {MAX_ENVELOPE_BYTES} bytes")));
            }
            raw.extend_from_slice(&scratch[..n]);
            // Done once the piece is consumed and the decoder has nothing more to give.
            if input.pos() == piece.len() && n < scratch.len() {
                break;
            }
        }
        if raw.is_empty() {
            return Err(CompressError::Zstd("a stream piece opened to nothing".into()));
        }
        self.compressed_bytes += piece.len() as u64;
        self.raw_bytes += raw.len() as u64;
        Ok(raw)
    }

    /// Handles one frame payload: a `Dictionary` is kept (returns `None`), a `Compressed` frame
    /// is decompressed (never beyond the frame guard), anything else is returned as is.
    pub fn open(&mut self, payload: Vec<u8>) -> Result<Option<Vec<u8>>, CompressError> {
        if self.bare_stream {
            return self.open_piece(&payload).map(Some);
        }
        // Only frames that are dictionaries or compressed need a full decode here.
        match theta_schemas::fb::root_as_frame(&payload).map(|f| f.message_type()) {
            Ok(theta_schemas::fb::Message::Dictionary) | Ok(theta_schemas::fb::Message::Compressed) => {}
            _ => return Ok(Some(payload)),
        }
        match Message::decode(&payload)? {
            Message::Dictionary(Dictionary { id, data }) => {
                let d =
                    zstd::bulk::Decompressor::with_dictionary(&data).map_err(|e| CompressError::Zstd(e.to_string()))?;
                self.dictionaries.insert(id, d);
                while self.dictionaries.len() > KEPT_DICTIONARIES {
                    self.dictionaries.pop_first();
                }
                Ok(None)
            }
            Message::Compressed(c) => {
                let d = if c.dictionary == 0 {
                    match &mut self.plain {
                        Some(d) => d,
                        None => self
                            .plain
                            .insert(zstd::bulk::Decompressor::new().map_err(|e| CompressError::Zstd(e.to_string()))?),
                    }
                } else {
                    self.dictionaries.get_mut(&c.dictionary).ok_or(CompressError::UnknownDictionary(c.dictionary))?
                };
                let raw_len = (c.raw_len as usize).min(MAX_ENVELOPE_BYTES);
                let raw = d.decompress(&c.data, raw_len).map_err(|e| CompressError::Zstd(e.to_string()))?;
                if raw.len() != c.raw_len as usize {
                    return Err(CompressError::Zstd(format!("{} bytes, announced {}", raw.len(), c.raw_len)));
                }
                self.compressed_bytes += payload.len() as u64;
                self.raw_bytes += raw.len() as u64;
                Ok(Some(raw))
            }
            _ => Ok(Some(payload)),
        }
    }
}

/// The sending side's dictionary trainer: collects sample payloads and, at growing sample counts
/// (64, then 1,024), hands out a [`TrainJob`] so early traffic gets a dictionary soon and a
/// better one later. Training takes tens of milliseconds, so it runs wherever the caller puts
/// it (off the thread that streams), and its result comes back through [`Trainer::install`].
pub struct Trainer {
    samples: Vec<Vec<u8>>,
    next_at: usize,
    current: Option<(u32, Vec<u8>, zstd::bulk::Compressor<'static>)>,
}

impl Default for Trainer {
    fn default() -> Self {
        Trainer { samples: Vec::new(), next_at: 64, current: None }
    }
}

/// Sample counts at which dictionaries are (re)trained; none after the last.
const TRAIN_AT: [usize; 2] = [64, 1_024];

/// Samples to train a dictionary from: [`TrainJob::run`] on any thread.
#[derive(Debug)]
pub struct TrainJob {
    samples: Vec<Vec<u8>>,
}

impl TrainJob {
    /// Trains the dictionary (tens of milliseconds); `None` when zstd finds none in the samples.
    pub fn run(self) -> Option<Trained> {
        zstd::dict::from_samples(&self.samples, DICTIONARY_BYTES).ok().map(|dict| Trained { dict })
    }
}

/// A trained dictionary, for [`Trainer::install`].
#[derive(Debug, Clone)]
pub struct Trained {
    dict: Vec<u8>,
}

impl Trainer {
    /// A trainer with no samples.
    pub fn new() -> Trainer {
        Trainer::default()
    }

    /// Adds a sample; when a threshold is reached, returns the job that trains the next
    /// dictionary from the samples so far.
    pub fn add(&mut self, sample: &[u8]) -> Option<TrainJob> {
        if self.next_at == 0 {
            return None;
        }
        self.samples.push(sample.to_vec());
        if self.samples.len() < self.next_at {
            return None;
        }
        self.next_at = TRAIN_AT.iter().copied().find(|&n| n > self.samples.len()).unwrap_or(0);
        let samples = if self.next_at == 0 { std::mem::take(&mut self.samples) } else { self.samples.clone() };
        Some(TrainJob { samples })
    }

    /// Makes `trained` the current dictionary (with the next id). False when zstd refuses it.
    pub fn install(&mut self, trained: Trained) -> bool {
        let Ok(c) = zstd::bulk::Compressor::with_dictionary(LEVEL, &trained.dict) else { return false };
        let id = self.current.as_ref().map_or(1, |(id, _, _)| id + 1);
        self.current = Some((id, trained.dict, c));
        true
    }

    /// The current dictionary as `(id, bytes)`.
    pub fn dictionary(&self) -> Option<(u32, &[u8])> {
        self.current.as_ref().map(|(id, d, _)| (*id, d.as_slice()))
    }

    /// The current dictionary's id and compressor.
    pub fn compressor(&mut self) -> Option<(u32, &mut zstd::bulk::Compressor<'static>)> {
        self.current.as_mut().map(|(id, _, c)| (*id, c))
    }
}
