//! Live wire messages (QUIC and WebRTC): the handshake, replication and receipts.
//!
//! Every frame payload is a `Frame` table (identifier `THFR`) holding one [`Message`].

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};

use crate::command::{AuthorKey, EntityId, Role, SessionId};
use crate::components::QuantizedTransform;
use crate::decode::{DecodeError, Limits, fixed, string};
use crate::fb;
use crate::ids::ComponentId;

/// Negotiable features.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Compression kinds, e.g. `zstd`.
    pub compression: Vec<String>,
    /// Area-of-interest filtering.
    pub interest_management: bool,
    /// Largest snapshot chunk accepted, bytes.
    pub max_chunk_bytes: u32,
    /// Unreliable datagrams.
    pub datagrams: bool,
    /// Compact deltas: transforms quantized ([`Delta::transforms`]), state hashes only now and
    /// then (docs/PROTOCOL.md, "Compact deltas"). Not combined with interest management.
    pub compact_deltas: bool,
}

/// Client → server: opens the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the client.
    pub protocol_version: u32,
    /// Schema hash of the client's catalog.
    pub schema_hash: [u8; 32],
    /// 32 random bytes.
    pub client_nonce: [u8; 32],
    /// Client's Ed25519 public key.
    pub public_key: AuthorKey,
    /// Session to join.
    pub session: SessionId,
    /// Offered capabilities.
    pub capabilities: Capabilities,
    /// Seq the client's mirror already holds when reconnecting (0: fresh start).
    pub resume_seq: u64,
}

/// Server → client: the challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// 32 random bytes.
    pub server_nonce: [u8; 32],
    /// Server's capabilities.
    pub capabilities: Capabilities,
}

/// Client → server: signature over the transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Ed25519 signature.
    pub signature: [u8; 64],
}

/// Server → client: handshake accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Accepted capabilities (the intersection).
    pub capabilities: Capabilities,
    /// The joined session.
    pub session: SessionId,
    /// The client's role.
    pub role: Role,
    /// Head seq at the time of joining.
    pub head_seq: u64,
    /// The session's Lamport clock at the time of joining.
    pub lamport_clock: u64,
}

/// A component type a receiver needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentDescriptor {
    /// Stable name.
    pub name: String,
    /// Id.
    pub id: ComponentId,
    /// Encoding version.
    pub encoding_version: u32,
}

/// One component value of one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentValue {
    /// Entity.
    pub entity: EntityId,
    /// Component.
    pub component: ComponentId,
    /// Canonical bytes.
    pub data: Vec<u8>,
}

/// One self-contained piece of a projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// Session.
    pub session: SessionId,
    /// Seq of the projection.
    pub seq: u64,
    /// Index of this chunk, from 0.
    pub chunk_index: u32,
    /// Number of chunks.
    pub chunk_count: u32,
    /// State hash of the whole projection at `seq`.
    pub state_hash: [u8; 32],
    /// Entities that exist (possibly without components).
    pub entities: Vec<EntityId>,
    /// Component values.
    pub values: Vec<ComponentValue>,
}

/// Changes between two seqs.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// Session.
    pub session: SessionId,
    /// Seq the delta applies to.
    pub from_seq: u64,
    /// Seq the delta reaches.
    pub to_seq: u64,
    /// State hash at `to_seq`; `None` on a compact stream's deltas between checks.
    pub state_hash: Option<[u8; 32]>,
    /// Entities created.
    pub spawned: Vec<EntityId>,
    /// Components inserted or updated.
    pub upserts: Vec<ComponentValue>,
    /// Components removed from live entities.
    pub removals: Vec<(EntityId, ComponentId)>,
    /// Entities deleted (with all their components).
    pub despawned: Vec<EntityId>,
    /// Compact streams: transform upserts, quantized.
    pub transforms: Vec<(EntityId, QuantizedTransform)>,
    /// Ordered visibility: the first seq not yet durable (0: every seq up to `to_seq` is).
    pub ordered_from: u64,
    /// Descriptors not yet advertised on this stream.
    pub descriptors: Vec<ComponentDescriptor>,
}

/// Liveness and RTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender's heartbeat counter.
    pub sequence: u64,
    /// Sender's clock, microseconds.
    pub sent_at_us: u64,
    /// Echo of the peer's last `sent_at_us` (0: none).
    pub echo_us: u64,
}

/// Acknowledges an accepted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReceipt {
    /// Nonce of the command.
    pub nonce: u64,
    /// Assigned seq.
    pub seq: u64,
    /// Command's Lamport timestamp.
    pub lamport: u64,
    /// Entry hash.
    pub entry_hash: [u8; 32],
    /// Merkle tree size after the entry.
    pub tree_size: u64,
    /// Merkle root after the entry.
    pub tree_root: [u8; 32],
}

/// A typed error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// Stable error code (docs/PROTOCOL.md).
    pub code: u32,
    /// Human-readable reason.
    pub reason: String,
    /// Nonce of the command it answers (0: none).
    pub nonce: u64,
}

/// Client → server: the area of interest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interest {
    /// Centre, world metres.
    pub center: [f32; 3],
    /// Radius, metres (finite, ≥ 0).
    pub radius: f32,
}

/// Server → client: a zstd dictionary for later compressed frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dictionary {
    /// Non-zero id.
    pub id: u32,
    /// Raw zstd dictionary bytes.
    pub data: Vec<u8>,
}

/// A zstd-compressed frame payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    /// Dictionary id (0: none).
    pub dictionary: u32,
    /// Decompressed size.
    pub raw_len: u32,
    /// One zstd frame.
    pub data: Vec<u8>,
}

/// Server → client: per-connection telemetry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// Last measured round trip, microseconds.
    pub rtt_us: u64,
    /// Bytes received from the client per second.
    pub bytes_in_per_sec: u64,
    /// Bytes sent to the client per second.
    pub bytes_out_per_sec: u64,
    /// Deltas sent per second.
    pub deltas_per_sec: u64,
    /// Frames waiting in the viewer's queue.
    pub queue_depth: u32,
    /// `quic` or `webrtc`.
    pub transport: String,
    /// Resyncs of this viewer.
    pub resyncs: u64,
}

/// Every live message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Challenge`].
    Challenge(Challenge),
    /// See [`Proof`].
    Proof(Proof),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`SnapshotChunk`].
    SnapshotChunk(SnapshotChunk),
    /// See [`Delta`].
    Delta(Delta),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`CommandReceipt`].
    CommandReceipt(CommandReceipt),
    /// See [`WireError`].
    Error(WireError),
    /// See [`Interest`].
    Interest(Interest),
    /// See [`Dictionary`].
    Dictionary(Dictionary),
    /// See [`Compressed`].
    Compressed(Compressed),
    /// See [`Stats`].
    Stats(Stats),
}

type Fbb<'a> = FlatBufferBuilder<'a>;

fn caps<'a>(fbb: &mut Fbb<'a>, c: &Capabilities) -> WIPOffset<fb::Capabilities<'a>> {
    let names: Vec<_> = c.compression.iter().map(|s| fbb.create_string(s)).collect();
    let compression = Some(fbb.create_vector(&names));
    fb::Capabilities::create(
        fbb,
        &fb::CapabilitiesArgs {
            compression,
            interest_management: c.interest_management,
            max_chunk_bytes: c.max_chunk_bytes,
            datagrams: c.datagrams,
            compact_deltas: c.compact_deltas,
        },
    )
}

fn caps_from(c: Option<fb::Capabilities<'_>>) -> Capabilities {
    let Some(c) = c else { return Capabilities::default() };
    Capabilities {
        compression: c.compression().iter().flatten().map(str::to_owned).collect(),
        interest_management: c.interest_management(),
        max_chunk_bytes: c.max_chunk_bytes(),
        datagrams: c.datagrams(),
        compact_deltas: c.compact_deltas(),
    }
}

fn values<'a>(
    fbb: &mut Fbb<'a>,
    vs: &[ComponentValue],
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::ComponentValue<'a>>>> {
    let offs: Vec<_> = vs
        .iter()
        .map(|v| {
            let data = Some(fbb.create_vector(&v.data));
            fb::ComponentValue::create(
                fbb,
                &fb::ComponentValueArgs { entity: v.entity, component: v.component.0, data },
            )
        })
        .collect();
    fbb.create_vector(&offs)
}

fn values_from(
    v: Option<Vector<'_, ForwardsUOffset<fb::ComponentValue<'_>>>>,
) -> Result<Vec<ComponentValue>, DecodeError> {
    v.iter()
        .flatten()
        .map(|v| {
            Ok(ComponentValue {
                entity: v.entity(),
                component: ComponentId(v.component()),
                data: v
                    .data()
                    .ok_or(DecodeError::MissingField { table: "ComponentValue", field: "data" })?
                    .bytes()
                    .to_vec(),
            })
        })
        .collect()
}

fn quantized_to_fb(entity: EntityId, q: &QuantizedTransform) -> fb::QuantizedTransform {
    let [tx, ty, tz] = q.translation;
    let [rx, ry, rz, rw] = q.rotation;
    let [sx, sy, sz] = q.scale;
    fb::QuantizedTransform::new(entity, tx, tz, ry, rw, rx, rz, ty, &fb::Vec3::new(sx, sy, sz))
}

fn quantized_from_fb(q: &fb::QuantizedTransform) -> Result<(EntityId, QuantizedTransform), DecodeError> {
    let s = q.scale();
    let scale = [s.x(), s.y(), s.z()];
    if scale.iter().any(|v| !v.is_finite()) {
        return Err(DecodeError::InvalidValue { field: "QuantizedTransform.scale", reason: "must be finite" });
    }
    Ok((
        q.entity(),
        QuantizedTransform { translation: [q.tx(), q.ty(), q.tz()], rotation: [q.rx(), q.ry(), q.rz(), q.rw()], scale },
    ))
}

fn ids(v: Option<Vector<'_, u64>>) -> Vec<u64> {
    v.map(|v| v.iter().collect()).unwrap_or_default()
}

impl Message {
    /// The message's type name, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Challenge(_) => "Challenge",
            Message::Proof(_) => "Proof",
            Message::Welcome(_) => "Welcome",
            Message::SnapshotChunk(_) => "SnapshotChunk",
            Message::Delta(_) => "Delta",
            Message::Heartbeat(_) => "Heartbeat",
            Message::CommandReceipt(_) => "CommandReceipt",
            Message::Error(_) => "Error",
            Message::Interest(_) => "Interest",
            Message::Dictionary(_) => "Dictionary",
            Message::Compressed(_) => "Compressed",
            Message::Stats(_) => "Stats",
        }
    }

    /// Encodes the message as a `Frame` buffer (identifier `THFR`).
    pub fn encode(&self) -> Vec<u8> {
        let mut fbb = Fbb::with_capacity(256);
        let (tag, msg) = match self {
            Message::Hello(h) => {
                let schema_hash = Some(fbb.create_vector(&h.schema_hash));
                let client_nonce = Some(fbb.create_vector(&h.client_nonce));
                let public_key = Some(fbb.create_vector(&h.public_key.0));
                let session = Some(fbb.create_vector(&h.session.0));
                let capabilities = Some(caps(&mut fbb, &h.capabilities));
                let args = fb::HelloArgs {
                    protocol_version: h.protocol_version,
                    schema_hash,
                    client_nonce,
                    public_key,
                    session,
                    capabilities,
                    resume_seq: h.resume_seq,
                };
                (fb::Message::Hello, fb::Hello::create(&mut fbb, &args).as_union_value())
            }
            Message::Challenge(c) => {
                let server_nonce = Some(fbb.create_vector(&c.server_nonce));
                let capabilities = Some(caps(&mut fbb, &c.capabilities));
                let args = fb::ChallengeArgs { server_nonce, capabilities };
                (fb::Message::Challenge, fb::Challenge::create(&mut fbb, &args).as_union_value())
            }
            Message::Proof(p) => {
                let signature = Some(fbb.create_vector(&p.signature));
                (fb::Message::Proof, fb::Proof::create(&mut fbb, &fb::ProofArgs { signature }).as_union_value())
            }
            Message::Welcome(w) => {
                let capabilities = Some(caps(&mut fbb, &w.capabilities));
                let session = Some(fbb.create_vector(&w.session.0));
                let args = fb::WelcomeArgs {
                    capabilities,
                    session,
                    role: w.role.to_fb(),
                    head_seq: w.head_seq,
                    lamport_clock: w.lamport_clock,
                };
                (fb::Message::Welcome, fb::Welcome::create(&mut fbb, &args).as_union_value())
            }
            Message::SnapshotChunk(s) => {
                let session = Some(fbb.create_vector(&s.session.0));
                let state_hash = Some(fbb.create_vector(&s.state_hash));
                let entities = Some(fbb.create_vector(&s.entities));
                let values = Some(values(&mut fbb, &s.values));
                let args = fb::SnapshotChunkArgs {
                    session,
                    seq: s.seq,
                    chunk_index: s.chunk_index,
                    chunk_count: s.chunk_count,
                    state_hash,
                    entities,
                    values,
                };
                (fb::Message::SnapshotChunk, fb::SnapshotChunk::create(&mut fbb, &args).as_union_value())
            }
            Message::Delta(d) => {
                let session = Some(fbb.create_vector(&d.session.0));
                let state_hash = d.state_hash.map(|h| fbb.create_vector(&h));
                let spawned = Some(fbb.create_vector(&d.spawned));
                let quantized: Vec<_> = d.transforms.iter().map(|(e, q)| quantized_to_fb(*e, q)).collect();
                let transforms = (!quantized.is_empty()).then(|| fbb.create_vector(&quantized));
                let upserts = Some(values(&mut fbb, &d.upserts));
                let rs: Vec<_> = d
                    .removals
                    .iter()
                    .map(|(e, c)| {
                        fb::ComponentRemoval::create(&mut fbb, &fb::ComponentRemovalArgs { entity: *e, component: c.0 })
                    })
                    .collect();
                let removals = Some(fbb.create_vector(&rs));
                let despawned = Some(fbb.create_vector(&d.despawned));
                let ds: Vec<_> = d
                    .descriptors
                    .iter()
                    .map(|x| {
                        let name = Some(fbb.create_string(&x.name));
                        fb::ComponentDescriptor::create(
                            &mut fbb,
                            &fb::ComponentDescriptorArgs { name, id: x.id.0, encoding_version: x.encoding_version },
                        )
                    })
                    .collect();
                let descriptors = Some(fbb.create_vector(&ds));
                let args = fb::DeltaArgs {
                    session,
                    from_seq: d.from_seq,
                    to_seq: d.to_seq,
                    state_hash,
                    spawned,
                    upserts,
                    removals,
                    despawned,
                    descriptors,
                    transforms,
                    ordered_from: d.ordered_from,
                };
                (fb::Message::Delta, fb::Delta::create(&mut fbb, &args).as_union_value())
            }
            Message::Heartbeat(h) => {
                let args = fb::HeartbeatArgs { sequence: h.sequence, sent_at_us: h.sent_at_us, echo_us: h.echo_us };
                (fb::Message::Heartbeat, fb::Heartbeat::create(&mut fbb, &args).as_union_value())
            }
            Message::CommandReceipt(r) => {
                let entry_hash = Some(fbb.create_vector(&r.entry_hash));
                let tree_root = Some(fbb.create_vector(&r.tree_root));
                let args = fb::CommandReceiptArgs {
                    nonce: r.nonce,
                    seq: r.seq,
                    lamport: r.lamport,
                    entry_hash,
                    tree_size: r.tree_size,
                    tree_root,
                };
                (fb::Message::CommandReceipt, fb::CommandReceipt::create(&mut fbb, &args).as_union_value())
            }
            Message::Error(e) => {
                let reason = Some(fbb.create_string(&e.reason));
                let args = fb::ErrorArgs { code: e.code, reason, nonce: e.nonce };
                (fb::Message::Error, fb::Error::create(&mut fbb, &args).as_union_value())
            }
            Message::Interest(i) => {
                let center = fb::Vec3::new(i.center[0], i.center[1], i.center[2]);
                let args = fb::InterestArgs { center: Some(&center), radius: i.radius };
                (fb::Message::Interest, fb::Interest::create(&mut fbb, &args).as_union_value())
            }
            Message::Dictionary(d) => {
                let data = Some(fbb.create_vector(&d.data));
                let args = fb::DictionaryArgs { id: d.id, data };
                (fb::Message::Dictionary, fb::Dictionary::create(&mut fbb, &args).as_union_value())
            }
            Message::Compressed(c) => {
                let data = Some(fbb.create_vector(&c.data));
                let args = fb::CompressedArgs { dictionary: c.dictionary, raw_len: c.raw_len, data };
                (fb::Message::Compressed, fb::Compressed::create(&mut fbb, &args).as_union_value())
            }
            Message::Stats(s) => {
                let transport = Some(fbb.create_string(&s.transport));
                let args = fb::StatsArgs {
                    rtt_us: s.rtt_us,
                    bytes_in_per_sec: s.bytes_in_per_sec,
                    bytes_out_per_sec: s.bytes_out_per_sec,
                    deltas_per_sec: s.deltas_per_sec,
                    queue_depth: s.queue_depth,
                    transport,
                    resyncs: s.resyncs,
                };
                (fb::Message::Stats, fb::Stats::create(&mut fbb, &args).as_union_value())
            }
        };
        let frame = fb::Frame::create(&mut fbb, &fb::FrameArgs { message_type: tag, message: Some(msg) });
        fb::finish_frame_buffer(&mut fbb, frame);
        fbb.finished_data().to_vec()
    }

    /// Decodes and validates a frame payload from outside bytes.
    pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
        Message::decode_with(buf, Limits::FRAME)
    }

    /// Decodes with explicit limits (for receivers configured with a different guard).
    pub fn decode_with(buf: &[u8], limits: Limits) -> Result<Message, DecodeError> {
        let f = limits.root::<fb::Frame>(buf, "Frame", Some(fb::FRAME_IDENTIFIER))?;
        let missing = || DecodeError::MissingField { table: "Frame", field: "message" };
        Ok(match f.message_type() {
            fb::Message::Hello => {
                const T: &str = "Hello";
                let h = f.message_as_hello().ok_or_else(missing)?;
                Message::Hello(Hello {
                    protocol_version: h.protocol_version(),
                    schema_hash: fixed(h.schema_hash(), T, "schema_hash")?,
                    client_nonce: fixed(h.client_nonce(), T, "client_nonce")?,
                    public_key: AuthorKey(fixed(h.public_key(), T, "public_key")?),
                    session: SessionId(fixed(h.session(), T, "session")?),
                    capabilities: caps_from(h.capabilities()),
                    resume_seq: h.resume_seq(),
                })
            }
            fb::Message::Challenge => {
                let c = f.message_as_challenge().ok_or_else(missing)?;
                Message::Challenge(Challenge {
                    server_nonce: fixed(c.server_nonce(), "Challenge", "server_nonce")?,
                    capabilities: caps_from(c.capabilities()),
                })
            }
            fb::Message::Proof => {
                let p = f.message_as_proof().ok_or_else(missing)?;
                Message::Proof(Proof { signature: fixed(p.signature(), "Proof", "signature")? })
            }
            fb::Message::Welcome => {
                let w = f.message_as_welcome().ok_or_else(missing)?;
                Message::Welcome(Welcome {
                    capabilities: caps_from(w.capabilities()),
                    session: SessionId(fixed(w.session(), "Welcome", "session")?),
                    role: Role::from_fb(w.role())?,
                    head_seq: w.head_seq(),
                    lamport_clock: w.lamport_clock(),
                })
            }
            fb::Message::SnapshotChunk => {
                const T: &str = "SnapshotChunk";
                let s = f.message_as_snapshot_chunk().ok_or_else(missing)?;
                if s.chunk_index() >= s.chunk_count() {
                    return Err(DecodeError::InvalidValue {
                        field: "SnapshotChunk.chunk_index",
                        reason: "must be below chunk_count",
                    });
                }
                Message::SnapshotChunk(SnapshotChunk {
                    session: SessionId(fixed(s.session(), T, "session")?),
                    seq: s.seq(),
                    chunk_index: s.chunk_index(),
                    chunk_count: s.chunk_count(),
                    state_hash: fixed(s.state_hash(), T, "state_hash")?,
                    entities: ids(s.entities()),
                    values: values_from(s.values())?,
                })
            }
            fb::Message::Delta => {
                const T: &str = "Delta";
                let d = f.message_as_delta().ok_or_else(missing)?;
                if d.to_seq() < d.from_seq() {
                    return Err(DecodeError::InvalidValue {
                        field: "Delta.to_seq",
                        reason: "must not precede from_seq",
                    });
                }
                let mut descriptors = Vec::new();
                for x in d.descriptors().iter().flatten() {
                    descriptors.push(ComponentDescriptor {
                        name: string(x.name(), "ComponentDescriptor", "name")?,
                        id: ComponentId(x.id()),
                        encoding_version: x.encoding_version(),
                    });
                }
                Message::Delta(Delta {
                    session: SessionId(fixed(d.session(), T, "session")?),
                    from_seq: d.from_seq(),
                    to_seq: d.to_seq(),
                    state_hash: match d.state_hash() {
                        Some(h) if !h.is_empty() => Some(fixed(Some(h), T, "state_hash")?),
                        _ => None,
                    },
                    spawned: ids(d.spawned()),
                    upserts: values_from(d.upserts())?,
                    removals: d.removals().iter().flatten().map(|r| (r.entity(), ComponentId(r.component()))).collect(),
                    despawned: ids(d.despawned()),
                    transforms: d.transforms().iter().flatten().map(quantized_from_fb).collect::<Result<_, _>>()?,
                    ordered_from: d.ordered_from(),
                    descriptors,
                })
            }
            fb::Message::Heartbeat => {
                let h = f.message_as_heartbeat().ok_or_else(missing)?;
                Message::Heartbeat(Heartbeat {
                    sequence: h.sequence(),
                    sent_at_us: h.sent_at_us(),
                    echo_us: h.echo_us(),
                })
            }
            fb::Message::CommandReceipt => {
                const T: &str = "CommandReceipt";
                let r = f.message_as_command_receipt().ok_or_else(missing)?;
                Message::CommandReceipt(CommandReceipt {
                    nonce: r.nonce(),
                    seq: r.seq(),
                    lamport: r.lamport(),
                    entry_hash: fixed(r.entry_hash(), T, "entry_hash")?,
                    tree_size: r.tree_size(),
                    tree_root: fixed(r.tree_root(), T, "tree_root")?,
                })
            }
            fb::Message::Error => {
                let e = f.message_as_error().ok_or_else(missing)?;
                Message::Error(WireError {
                    code: e.code(),
                    reason: e.reason().unwrap_or_default().to_owned(),
                    nonce: e.nonce(),
                })
            }
            fb::Message::Interest => {
                let i = f.message_as_interest().ok_or_else(missing)?;
                let c = i.center().ok_or(DecodeError::MissingField { table: "Interest", field: "center" })?;
                let (center, radius) = ([c.x(), c.y(), c.z()], i.radius());
                if !(center.iter().all(|v| v.is_finite()) && radius.is_finite() && radius >= 0.0) {
                    return Err(DecodeError::InvalidValue {
                        field: "Interest",
                        reason: "centre and radius must be finite, radius not negative",
                    });
                }
                Message::Interest(Interest { center, radius })
            }
            fb::Message::Dictionary => {
                let d = f.message_as_dictionary().ok_or_else(missing)?;
                if d.id() == 0 {
                    return Err(DecodeError::InvalidValue { field: "Dictionary.id", reason: "must not be 0" });
                }
                let data = d.data().ok_or(DecodeError::MissingField { table: "Dictionary", field: "data" })?;
                Message::Dictionary(Dictionary { id: d.id(), data: data.bytes().to_vec() })
            }
            fb::Message::Compressed => {
                let c = f.message_as_compressed().ok_or_else(missing)?;
                if c.raw_len() as usize > limits.max_bytes {
                    return Err(DecodeError::InvalidValue {
                        field: "Compressed.raw_len",
                        reason: "exceeds the frame guard",
                    });
                }
                let data = c.data().ok_or(DecodeError::MissingField { table: "Compressed", field: "data" })?;
                Message::Compressed(Compressed {
                    dictionary: c.dictionary(),
                    raw_len: c.raw_len(),
                    data: data.bytes().to_vec(),
                })
            }
            fb::Message::Stats => {
                let s = f.message_as_stats().ok_or_else(missing)?;
                Message::Stats(Stats {
                    rtt_us: s.rtt_us(),
                    bytes_in_per_sec: s.bytes_in_per_sec(),
                    bytes_out_per_sec: s.bytes_out_per_sec(),
                    deltas_per_sec: s.deltas_per_sec(),
                    queue_depth: s.queue_depth(),
                    transport: s.transport().unwrap_or_default().to_owned(),
                    resyncs: s.resyncs(),
                })
            }
            other => return Err(DecodeError::UnknownVariant { union: "Message", tag: other.0 }),
        })
    }
}
