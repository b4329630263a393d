//! Compression of replication frames: every mode round-trips real deltas, and hostile
//! compressed frames get typed errors.

use theta_live::compress::{self, CompressError, Decompressor, Encoding, StreamCompressor, Trainer};
use theta_schemas::components::Transform;
use theta_schemas::ids::ComponentMeta;
use theta_schemas::wire::{ComponentValue, Compressed, Delta, Dictionary};
use theta_schemas::{Message, SessionId};

/// A transform-heavy delta like the ones a live session streams.
fn delta(i: u64) -> Vec<u8> {
    let upserts = (0..40u64)
        .map(|e| {
            let a = (i * 40 + e) as f32 * 0.05;
            let t = Transform { translation: [e as f32 + a.cos(), 1.0, a.sin()], ..Transform::default() };
            ComponentValue {
                entity: e + 1,
                component: Transform::id(),
                data: theta_schemas::components::Component::encode(&t),
            }
        })
        .collect();
    Message::Delta(Delta {
        session: SessionId([3; 16]),
        from_seq: i * 40,
        to_seq: i * 40 + 40,
        state_hash: Some([i as u8; 32]),
        spawned: vec![],
        upserts,
        removals: vec![],
        despawned: vec![],
        transforms: vec![],
        ordered_from: 0,
        descriptors: vec![],
    })
    .encode()
}

fn ratio(raw: usize, sent: usize) -> f64 {
    raw as f64 / sent as f64
}

#[test]
fn every_mode_round_trips_and_shrinks_transform_deltas() {
    let frames: Vec<Vec<u8>> = (0..300).map(delta).collect();
    let raw: usize = frames.iter().map(Vec::len).sum();

    // Per frame, no dictionary.
    let mut d = Decompressor::new();
    let mut sent = 0;
    for f in &frames {
        let c = compress::compress(f.clone(), None);
        sent += c.len();
        assert_eq!(d.open(c).unwrap().as_ref(), Some(f));
    }
    let plain = ratio(raw, sent);

    // With a dictionary trained from the first frames, sent in-band.
    let mut trainer = Trainer::new();
    let mut d = Decompressor::new();
    let mut sent = 0;
    let mut dict_sent = 0;
    for f in &frames {
        if let Some(job) = trainer.add(f) {
            trainer.install(job.run().expect("a dictionary from real deltas"));
        }
        if let Some((id, data)) = trainer.dictionary()
            && id != dict_sent
        {
            assert_eq!(d.open(Message::Dictionary(Dictionary { id, data: data.to_vec() }).encode()).unwrap(), None);
            dict_sent = id;
        }
        let c = compress::compress(f.clone(), trainer.compressor());
        sent += c.len();
        assert_eq!(d.open(c).unwrap().as_ref(), Some(f));
    }
    assert!(dict_sent >= 1, "a dictionary was trained");
    let dict = ratio(raw, sent);

    // One continuous stream, each payload a bare piece of it.
    let mut s = StreamCompressor::new().unwrap();
    let mut d = Decompressor::for_encoding(Encoding::ZstdStream);
    let mut sent = 0;
    for f in &frames {
        let c = s.compress(f).unwrap();
        sent += c.len();
        assert_eq!(d.open(c).unwrap().as_ref(), Some(f));
    }
    let stream = ratio(raw, sent);
    println!("transform deltas: zstd {plain:.2}x, zstd-dict {dict:.2}x, zstd-stream {stream:.2}x");
    assert!(plain > 1.2 && dict > plain && stream > dict, "{plain} {dict} {stream}");
}

#[test]
fn hostile_compressed_frames_get_typed_errors() {
    let f = delta(1);
    let wrap = |dictionary: u32, raw_len: u32, data: Vec<u8>| {
        Message::Compressed(Compressed { dictionary, raw_len, data }).encode()
    };
    let good = zstd::bulk::compress(&f, 3).unwrap();
    let mut d = Decompressor::new();
    // A dictionary that was never sent.
    assert!(matches!(d.open(wrap(7, f.len() as u32, good.clone())), Err(CompressError::UnknownDictionary(7))));
    // An announced size that is not the real one (smaller, then larger).
    assert!(matches!(d.open(wrap(0, f.len() as u32 - 1, good.clone())), Err(CompressError::Zstd(_))));
    assert!(matches!(d.open(wrap(0, f.len() as u32 + 1, good.clone())), Err(CompressError::Zstd(_))));
    // A size beyond the frame guard is refused before decompressing.
    assert!(matches!(d.open(wrap(0, 1 << 20, good.clone())), Err(CompressError::Decode(_))));
    // Garbage instead of zstd.
    assert!(matches!(d.open(wrap(0, 100, vec![0xAB; 64])), Err(CompressError::Zstd(_))));
    // The good frame still opens.
    assert_eq!(d.open(wrap(0, f.len() as u32, good)).unwrap(), Some(f));
}

#[test]
fn hostile_stream_pieces_get_typed_errors() {
    let stream = || Decompressor::for_encoding(Encoding::ZstdStream);
    let f = delta(1);
    // Garbage instead of zstd.
    assert!(matches!(stream().open(vec![0xAB; 64]), Err(CompressError::Zstd(_))));
    // A stream whose window exceeds the receiver's limit.
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.window_log(24).unwrap();
    e.long_distance_matching(true).unwrap();
    std::io::Write::write_all(&mut e, &f).unwrap();
    assert!(matches!(stream().open(e.finish().unwrap()), Err(CompressError::Zstd(_))));
    // A piece that opens beyond the frame guard (a zip bomb) is cut off there.
    let bomb = zstd::bulk::compress(&vec![0u8; theta_schemas::MAX_ENVELOPE_BYTES + 1], 3).unwrap();
    assert!(bomb.len() < 1_000);
    assert!(matches!(stream().open(bomb), Err(CompressError::Zstd(_))));
    // An empty piece.
    assert!(matches!(stream().open(vec![]), Err(CompressError::Zstd(_))));
    // A good stream still opens piece by piece, after a refused decoder is dropped.
    let mut s = StreamCompressor::new().unwrap();
    let mut d = stream();
    for i in 0..3 {
        let f = delta(i);
        assert_eq!(d.open(s.compress(&f).unwrap()).unwrap(), Some(f));
    }
}
