//! Every message kind of the catalog survives encode → decode unchanged.

use theta_schemas::command::{AuthorKey, Command, CommandBody, CommandKind, ConflictStrategy, Role, SessionId, Shape};
use theta_schemas::components::{
    Component, Material, Mesh, Name, Parent, Primitive, QuantizedTransform, Selection, ToolState, Transform,
};
use theta_schemas::ids::{ComponentId, ComponentMeta};
use theta_schemas::wire::{
    Capabilities, Challenge, CommandReceipt, ComponentDescriptor, ComponentValue, Compressed, Delta, Dictionary,
    Heartbeat, Hello, Interest, Proof, SnapshotChunk, Stats, Welcome, WireError,
};
use theta_schemas::{Envelope, LogEntry, Message};

fn key(n: u8) -> AuthorKey {
    AuthorKey([n; 32])
}

/// One command of every kind.
pub fn every_command() -> Vec<Command> {
    let t = Transform {
        translation: [1.5, -2.0, 3.25],
        rotation: [0.0, std::f32::consts::FRAC_1_SQRT_2, 0.0, std::f32::consts::FRAC_1_SQRT_2],
        scale: [2.0, 2.0, 2.0],
    };
    let m = Material { base_color: [1.0, 0.2, 0.1, 1.0], metallic: 0.3, roughness: 0.8 };
    vec![
        Command::CreateSession { name: "scene".into() },
        Command::GrantRole { key: key(3), role: Role::Editor },
        Command::RevokeRole { key: key(3) },
        Command::SetConflictPolicy { component: Transform::id(), strategy: ConflictStrategy::Reject },
        Command::CreateEntity { shape: Shape::Sphere, name: "ball".into(), parent: 5 },
        Command::DeleteEntity,
        Command::SetComponent { data: Name("x".into()).encode() },
        Command::RemoveComponent,
        Command::SetTransform(t),
        Command::Select,
        Command::Deselect,
        Command::ChangeTool { tool: "extrude".into() },
        Command::MoveVertices { indices: vec![0, 2], positions: vec![[0.0, 1.0, 0.0], [1.0, 0.0, 0.5]] },
        Command::AddFaces { indices: vec![0, 1, 2, 2, 3, 0] },
        Command::RemoveFaces { faces: vec![1] },
        Command::Rename { name: "renamed".into() },
        Command::Reparent { parent: 9 },
        Command::SetMaterial(m),
    ]
}

fn body(command: Command) -> CommandBody {
    CommandBody {
        session: SessionId([0xab; 16]),
        author: key(1),
        lamport: 17,
        nonce: u64::MAX - 3,
        wall_clock_ms: 1_700_000_000_123,
        entity: 42,
        component: ComponentId(0xdead_beef),
        base_version: 4,
        command,
    }
}

#[test]
fn every_command_kind_round_trips() {
    let commands = every_command();
    let kinds: Vec<CommandKind> = commands.iter().map(Command::kind).collect();
    assert_eq!(kinds, CommandKind::ALL.to_vec(), "one command of every kind, in tag order");
    for command in commands {
        let b = body(command);
        let bytes = b.encode();
        assert_eq!(CommandBody::decode(&bytes).unwrap(), b);
    }
}

#[test]
fn command_kind_names_parse() {
    for k in CommandKind::ALL {
        assert_eq!(CommandKind::parse(k.name()), Some(k));
        assert_eq!(CommandKind::from_tag(k.tag()), Some(k));
    }
    assert_eq!(CommandKind::parse("set_transform"), Some(CommandKind::SetTransform));
    assert_eq!(CommandKind::from_tag(0), None);
    assert_eq!(CommandKind::from_tag(19), None);
}

#[test]
fn envelope_and_log_entry_round_trip() {
    let e = Envelope { body: body(Command::Select).encode(), signature: [7; 64] };
    assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    let entry =
        LogEntry { seq: 9, envelope: e.encode(), prev_hash: [1; 32], entry_hash: [2; 32], receipt_time_ms: 123 };
    assert_eq!(LogEntry::decode(&entry.encode()).unwrap(), entry);
}

fn check_component<C: Component + PartialEq + std::fmt::Debug>(value: C) {
    let bytes = value.encode();
    assert_eq!(C::decode(&bytes).unwrap(), value, "{}", C::NAME);
    // Canonical: encoding the decoded value gives the same bytes.
    assert_eq!(C::decode(&bytes).unwrap().encode(), bytes, "{}", C::NAME);
}

#[test]
fn every_component_round_trips() {
    check_component(Transform::default());
    check_component(Transform { translation: [1.0, 2.0, 3.0], rotation: [0.5, 0.5, 0.5, 0.5], scale: [1.0, 2.0, 1.0] });
    check_component(Name("crate".into()));
    check_component(Parent(77));
    check_component(Mesh { positions: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], indices: vec![0, 1, 2] });
    check_component(Material::default());
    check_component(Selection { authors: vec![key(1), key(2)] });
    check_component(ToolState { author: key(4), tool: "move".into() });
    check_component(Primitive { shape: Shape::Cone });
}

/// One message of every wire kind.
pub fn every_message() -> Vec<Message> {
    let caps = Capabilities {
        compression: vec!["zstd".into(), "zstd-dict".into()],
        interest_management: true,
        max_chunk_bytes: 16384,
        datagrams: false,
        compact_deltas: false,
    };
    let v = ComponentValue { entity: 3, component: Transform::id(), data: Transform::default().encode() };
    vec![
        Message::Hello(Hello {
            protocol_version: 1,
            schema_hash: [5; 32],
            client_nonce: [6; 32],
            public_key: key(7),
            session: SessionId([8; 16]),
            capabilities: caps.clone(),
            resume_seq: 42,
        }),
        Message::Challenge(Challenge { server_nonce: [9; 32], capabilities: caps.clone() }),
        Message::Proof(Proof { signature: [10; 64] }),
        Message::Welcome(Welcome {
            capabilities: caps,
            session: SessionId([8; 16]),
            role: Role::Viewer,
            head_seq: 99,
            lamport_clock: 123,
        }),
        Message::SnapshotChunk(SnapshotChunk {
            session: SessionId([8; 16]),
            seq: 99,
            chunk_index: 1,
            chunk_count: 3,
            state_hash: [11; 32],
            entities: vec![3, 4],
            values: vec![v.clone()],
        }),
        Message::Delta(Delta {
            session: SessionId([8; 16]),
            from_seq: 99,
            to_seq: 120,
            state_hash: Some([12; 32]),
            spawned: vec![5],
            upserts: vec![v],
            removals: vec![(4, Name::id())],
            despawned: vec![6],
            transforms: vec![(
                7,
                QuantizedTransform {
                    translation: [1024, -3, 16_000_000],
                    rotation: [0, 23_170, -1, 23_170],
                    scale: [1.0, 2.5, 1.0],
                },
            )],
            ordered_from: 110,
            descriptors: vec![ComponentDescriptor {
                name: "theta.Transform".into(),
                id: Transform::id(),
                encoding_version: 1,
            }],
        }),
        Message::Heartbeat(Heartbeat { sequence: 1, sent_at_us: 1000, echo_us: 900 }),
        Message::CommandReceipt(CommandReceipt {
            nonce: 77,
            seq: 121,
            lamport: 30,
            entry_hash: [13; 32],
            tree_size: 121,
            tree_root: [14; 32],
        }),
        Message::Error(WireError { code: 7, reason: "permission denied".into(), nonce: 77 }),
        Message::Interest(Interest { center: [1.0, -2.0, 3.5], radius: 12.0 }),
        Message::Dictionary(Dictionary { id: 2, data: vec![0x37, 0xa4, 0x30, 0xec, 1, 2, 3] }),
        Message::Compressed(Compressed { dictionary: 2, raw_len: 300, data: vec![0x28, 0xb5, 0x2f, 0xfd, 9] }),
        Message::Stats(Stats {
            rtt_us: 250,
            bytes_in_per_sec: 1_000,
            bytes_out_per_sec: 90_000,
            deltas_per_sec: 90,
            queue_depth: 3,
            transport: "quic".into(),
            resyncs: 1,
        }),
    ]
}

#[test]
fn every_wire_message_round_trips() {
    let messages = every_message();
    assert_eq!(messages.len(), theta_schemas::fb::Message::ENUM_MAX as usize, "one message of every kind");
    for m in messages {
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }
}

#[test]
fn a_delta_without_a_state_hash_round_trips_and_a_short_one_is_refused() {
    let unchecked = Delta {
        session: SessionId([8; 16]),
        from_seq: 120,
        to_seq: 121,
        state_hash: None,
        spawned: vec![],
        upserts: vec![],
        removals: vec![],
        despawned: vec![],
        transforms: vec![],
        ordered_from: 0,
        descriptors: vec![],
    };
    let m = Message::Delta(unchecked.clone());
    assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    // A state hash of any length but 0 or 32 is refused.
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let session = Some(fbb.create_vector(&[8u8; 16]));
    let state_hash = Some(fbb.create_vector(&[1u8; 31]));
    let d = theta_schemas::fb::Delta::create(
        &mut fbb,
        &theta_schemas::fb::DeltaArgs { session, from_seq: 1, to_seq: 2, state_hash, ..Default::default() },
    );
    let f = theta_schemas::fb::Frame::create(
        &mut fbb,
        &theta_schemas::fb::FrameArgs {
            message_type: theta_schemas::fb::Message::Delta,
            message: Some(d.as_union_value()),
        },
    );
    fbb.finish(f, Some("THFR"));
    assert!(Message::decode(fbb.finished_data()).is_err());
}

#[test]
fn transforms_quantize_to_the_grid_and_refuse_what_it_cannot_hold() {
    let t = Transform {
        translation: [1.0 / 3.0, -2.5, 1000.0004],
        rotation: [0.0, std::f32::consts::FRAC_1_SQRT_2, 0.0, std::f32::consts::FRAC_1_SQRT_2],
        scale: [2.0, 1.0, 0.5],
    };
    let q = QuantizedTransform::quantize(&t).unwrap();
    assert_eq!(q.translation, [341, -2560, 1_024_000]);
    assert_eq!(q.rotation, [0, 23_170, 0, 23_170]);
    assert_eq!(q.scale, t.scale);
    let back = q.to_transform();
    for (a, b) in back.translation.iter().zip(t.translation) {
        assert!((a - b).abs() <= 0.5 / 1024.0, "{a} vs {b}");
    }
    // Quantizing what a receiver holds gives it back unchanged.
    assert_eq!(QuantizedTransform::round_trip(&back), back);
    // Beyond ±16 km, or a rotation component outside [-1, 1]: sent exactly.
    let far = Transform { translation: [16_384.0, 0.0, 0.0], ..Transform::default() };
    assert_eq!(QuantizedTransform::quantize(&far), None);
    assert_eq!(QuantizedTransform::round_trip(&far), far);
    let odd = Transform { rotation: [0.0, 0.0, 0.0, 1.5], ..Transform::default() };
    assert_eq!(QuantizedTransform::quantize(&odd), None);
    assert!(
        QuantizedTransform::quantize(&Transform { translation: [16_383.9, 0.0, 0.0], ..Transform::default() })
            .is_some()
    );
}
