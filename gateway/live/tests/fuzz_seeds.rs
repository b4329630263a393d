//! Writes the fuzz targets' seed corpora (`fuzz/seeds/<target>/`) from real traffic: signed
//! commands, a full handshake, a fan-out's frames in every encoding, snapshots, a checkpoint.
//! Run by hand when the wire changes: `cargo test -p theta-live --test fuzz_seeds -- --ignored`.
//! The seeds are committed; the fuzzers grow their corpora from them.

use std::path::PathBuf;
use std::time::Duration;

use theta_live::compress::{self, Encoding, StreamCompressor, Trainer};
use theta_live::fanout::{FanOut, ViewerOptions};
use theta_live::handshake::{ClientHandshake, ClientStep, ServerHandshake, ServerStep};
use theta_projector::Projection;
use theta_schemas::components::{Material, Name, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::wire::{Capabilities, Dictionary};
use theta_schemas::{Command, CommandBody, ComponentId, Message, Role, SessionId, Shape};
use theta_testkit::Author;

const S: SessionId = SessionId([0x5e; 16]);

/// Payloads as the targets read them: u16 LE length, bytes (`theta_fuzz::pieces`).
fn join<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        let p = &p[..p.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(p.len() as u16).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A small scene's commands: the owner creates, an editor moves, renames and paints.
fn commands() -> (Vec<Vec<u8>>, Vec<CommandBody>) {
    let (mut owner, mut editor) = (Author::new(1), Author::new(2));
    let n = ComponentId::NONE;
    let mut bodies = vec![
        owner.body(S, 0, n, 0, Command::CreateSession { name: "seeds".into() }),
        owner.body(S, 0, n, 0, Command::GrantRole { key: editor.id(), role: Role::Editor }),
    ];
    let mut signed: Vec<Vec<u8>> = bodies.iter().map(|b| owner.seal(b)).collect();
    for e in 1..=6u64 {
        let shape = [Shape::Cube, Shape::Sphere, Shape::Cylinder][e as usize % 3];
        let mut next = vec![
            editor.body(S, e, n, 0, Command::CreateEntity { shape, name: format!("e{e}"), parent: 0 }),
            editor.body(
                S,
                e,
                Transform::id(),
                0,
                Command::SetTransform(Transform { translation: [e as f32, 1.0, -(e as f32)], ..Transform::default() }),
            ),
            editor.body(S, e, Name::id(), 0, Command::Rename { name: format!("thing {e}") }),
            editor.body(
                S,
                e,
                Material::id(),
                0,
                Command::SetMaterial(Material { base_color: [0.2, 0.4, e as f32 / 8.0, 1.0], ..Material::default() }),
            ),
        ];
        signed.extend(next.iter().map(|b| editor.seal(b)));
        bodies.append(&mut next);
    }
    (signed, bodies)
}

fn projection(bodies: &[CommandBody]) -> Projection {
    let mut p = Projection::new(S);
    for (i, b) in bodies.iter().enumerate() {
        p.apply_command(i as u64 + 1, b).unwrap();
    }
    p
}

/// A viewer's frames from a fan-out over the first half of the scene that then folds the rest.
fn frames(bodies: &[CommandBody], options: ViewerOptions) -> Vec<Vec<u8>> {
    let half = bodies.len() / 2;
    let mut fan = FanOut::new(projection(&bodies[..half]), 64);
    fan.handle_subscribe(1, options);
    let mut out = Vec::new();
    for (i, b) in bodies.iter().enumerate().skip(half) {
        fan.handle_committed([(i as u64 + 1, b)], Duration::from_millis(i as u64 * 7)).unwrap();
        if let Some(job) = fan.poll_training() {
            fan.handle_trained(job.run().unwrap());
        }
    }
    fan.handle_timeout(Duration::from_secs(1));
    while let Some(f) = fan.poll_frame(1) {
        out.push(f);
    }
    out
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand when the wire changes"]
fn write_fuzz_seeds() {
    let (signed, bodies) = commands();
    for (i, e) in signed.iter().enumerate() {
        write("envelope", &format!("command-{i:02}"), e);
    }

    // A full handshake against the fuzz target's server (nonce [7; 32], time 0).
    let key = theta_testkit::key(2);
    let (mut client, hello) = ClientHandshake::start(key, S, Capabilities::default(), [9; 32]);
    let mut server = ServerHandshake::new(Capabilities::default(), [7; 32], 0, 5_000);
    let ServerStep::Send(challenge) = server.on_message(&hello, 0, |_, _| Ok((Role::Editor, 0, 0))) else {
        panic!("no challenge")
    };
    let ClientStep::Send(proof) = client.on_message(&challenge).unwrap() else { panic!("no proof") };
    let ServerStep::Done { welcome, .. } = server.on_message(&proof, 1, |_, _| Ok((Role::Editor, 24, 24))) else {
        panic!("not welcomed")
    };
    let step = |b: &[u8]| [&[0u8][..], b].concat();
    write("handshake", "hello-proof", &join([&step(&hello)[..], &step(&proof)[..]]));
    write(
        "handshake",
        "hello-late-proof",
        &join([&step(&hello)[..], &[200u8].iter().chain(&proof).copied().collect::<Vec<_>>()[..]]),
    );
    for (name, m) in [("hello", &hello), ("challenge", &challenge), ("proof", &proof), ("welcome", &welcome)] {
        write("message", name, m);
    }

    // Every encoding, exact and compact: the frames one viewer gets.
    let modes = [Encoding::Raw, Encoding::Zstd, Encoding::ZstdDict, Encoding::ZstdStream];
    for (m, encoding) in modes.iter().enumerate() {
        for compact in [false, true] {
            let options = ViewerOptions { encoding: *encoding, compact, ..ViewerOptions::default() };
            let f = frames(&bodies, options);
            let mode = m as u8 | if compact { 4 } else { 0 };
            let mut input = vec![mode];
            input.extend(join(f.iter().map(Vec::as_slice)));
            write("mirror", &format!("{}-{}", encoding.name(), if compact { "compact" } else { "exact" }), &input);
            if *encoding == Encoding::Raw && !compact {
                for (i, frame) in f.iter().enumerate().take(6) {
                    write("message", &format!("frame-{i}"), frame);
                }
            }
        }
    }

    // Compressed payloads: plain zstd, a dictionary then frames using it, stream pieces.
    let raw: Vec<Vec<u8>> = frames(&bodies, ViewerOptions::default());
    let zstd: Vec<Vec<u8>> = raw.iter().map(|f| compress::compress(f.clone(), None)).collect();
    write("compressed", "zstd", &[&[0u8][..], &join(zstd.iter().map(Vec::as_slice))].concat());
    let mut trainer = Trainer::new();
    let mut dict_input = vec![1u8];
    let mut samples = raw.iter().cycle();
    while trainer.dictionary().is_none() {
        if let Some(job) = trainer.add(samples.next().unwrap()) {
            trainer.install(job.run().unwrap());
        }
    }
    let (id, data) = trainer.dictionary().map(|(id, d)| (id, d.to_vec())).unwrap();
    let mut payloads = vec![Message::Dictionary(Dictionary { id, data }).encode()];
    payloads.extend(raw.iter().map(|f| compress::compress(f.clone(), trainer.compressor())));
    dict_input.extend(join(payloads.iter().map(Vec::as_slice)));
    write("compressed", "zstd-dict", &dict_input);
    let mut stream = StreamCompressor::new().unwrap();
    let pieces: Vec<Vec<u8>> = raw.iter().map(|f| stream.compress(f).unwrap()).collect();
    write("compressed", "zstd-stream", &[&[2u8][..], &join(pieces.iter().map(Vec::as_slice))].concat());

    // Snapshots in small chunks, and a checkpoint.
    let p = projection(&bodies);
    for chunk_bytes in [256, 1_024, 1 << 16] {
        let chunks: Vec<Vec<u8>> =
            p.snapshot(chunk_bytes, None).into_iter().map(|c| Message::SnapshotChunk(c).encode()).collect();
        write("snapshot", &format!("chunks-{chunk_bytes}"), &join(chunks.iter().map(Vec::as_slice)));
    }
    write("checkpoint", "scene", &p.checkpoint());
    write("checkpoint", "empty", &Projection::new(S).checkpoint());

    // Merkle: sizes and a path of real hashes.
    for (a, b) in [(0u64, 1u64), (3, 7), (63, 64), (5, 1 << 40)] {
        let mut input = a.to_le_bytes().to_vec();
        input.extend(b.to_le_bytes());
        for i in 0..6u8 {
            input.extend(theta_schemas::merkle::leaf_hash(&[i; 32]));
        }
        write("merkle", &format!("{a}-{b}"), &input);
    }
}
