//! Property tests of the fold's invariants.

use proptest::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use theta_projector::{Assembler, Projection};
use theta_schemas::components::{Material, Mesh, Name, Selection, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, CommandBody, ComponentId, Shape};

use crate::logs::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    /// Random logs folded with a checkpoint at a random place equal the fold from scratch.
    #[test]
    fn checkpoints_anywhere_equal_the_fold_from_scratch(seed in any::<u64>(), cut in 0.0f64..1.0) {
        let log = random_log(seed, 300);
        let full = fold(&log);
        let k = ((log.len() as f64) * cut) as usize;
        let prefix = fold(&log[..k]);
        let mut resumed = Projection::from_checkpoint(&prefix.checkpoint()).unwrap();
        prop_assert_eq!(resumed.state_hash(), prefix.state_hash());
        for (i, b) in log.iter().enumerate().skip(k) {
            resumed.apply_command(i as u64 + 1, b).unwrap();
        }
        prop_assert_eq!(resumed.state_hash(), full.state_hash());
        prop_assert_eq!(resumed.dump(), full.dump());
    }

    /// Snapshot → chunks → reassembled in any order → the same world.
    #[test]
    fn snapshots_reassemble_in_any_order(seed in any::<u64>(), max in 300usize..4000) {
        let p = fold(&random_log(seed, 250));
        let mut chunks = p.snapshot(max, None);
        for c in &chunks {
            let len = theta_projector::snapshot::encoded_len(c);
            prop_assert!(len <= max || c.values.len() <= 1, "chunk of {} bytes over {}", len, max);
        }
        chunks.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let mut asm = Assembler::new();
        let mut out = None;
        for c in chunks {
            prop_assert!(out.is_none());
            out = asm.add(c).unwrap();
        }
        let q = out.expect("assembled");
        prop_assert_eq!(q.state_hash(), p.state_hash());
        prop_assert_eq!(q.dump(), p.dump());
    }

    /// projection(a) + delta(a, b) = projection(b), also for a mirror built from a snapshot.
    #[test]
    fn projection_plus_delta_is_the_later_projection(seed in any::<u64>(), a in 0.0f64..1.0, b in 0.0f64..1.0) {
        let log = random_log(seed, 300);
        let (a, b) = { let x = (log.len() as f64 * a) as usize; let y = (log.len() as f64 * b) as usize; (x.min(y), x.max(y)) };
        let mut source = fold(&log[..a]);
        let mut mirror = {
            let mut asm = Assembler::new();
            let mut out = None;
            for c in source.snapshot(2048, None) { out = asm.add(c).unwrap(); }
            out.expect("assembled")
        };
        let _ = source.take_delta(false);
        for (i, body) in log.iter().enumerate().take(b).skip(a) {
            source.apply_command(i as u64 + 1, body).unwrap();
        }
        let delta = source.take_delta(false);
        prop_assert_eq!((delta.from_seq, delta.to_seq), (a as u64, b as u64));
        mirror.apply_delta(&delta).unwrap();
        let target = fold(&log[..b]);
        prop_assert_eq!(mirror.state_hash(), target.state_hash());
        prop_assert_eq!(mirror.dump(), target.dump());
        // Through the wire encoding too.
        let wire = theta_schemas::Message::Delta(delta.clone()).encode();
        prop_assert!(matches!(theta_schemas::Message::decode(&wire).unwrap(), theta_schemas::Message::Delta(d) if d == delta));
    }

    /// Concurrent last-write-wins and merge commands converge in every order.
    #[test]
    fn concurrent_commands_converge_in_any_permutation(seed in any::<u64>()) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut owner = Author::new(1);
        let n = ComponentId::NONE;
        let mut prefix = vec![owner.body(SESSION, 0, n, 0, Command::CreateSession { name: "c".into() })];
        for e in 1..=3u64 {
            prefix.push(owner.body(SESSION, e, n, 0, Command::CreateEntity { shape: Shape::Cube, name: String::new(), parent: 0 }));
            prefix.push(owner.body(SESSION, e, Mesh::id(), 0, Command::SetComponent { data: theta_schemas::components::Component::encode(&mesh()) }));
        }
        // Three authors with independent clocks issue concurrent commands.
        let mut authors: Vec<Author> = (2..=4).map(Author::new).collect();
        let mut concurrent: Vec<CommandBody> = Vec::new();
        for _ in 0..24 {
            let a = &mut authors[rand::Rng::gen_range(&mut rng, 0..3)];
            a.lamport += rand::Rng::gen_range(&mut rng, 0..4);
            let e = rand::Rng::gen_range(&mut rng, 1..=3u64);
            let body = match rand::Rng::gen_range(&mut rng, 0..6) {
                0 => a.body(SESSION, e, Transform::id(), 0, Command::SetTransform(Transform { translation: [a.lamport as f32, 0.0, 0.0], ..Transform::default() })),
                1 => a.body(SESSION, e, Name::id(), 0, Command::Rename { name: format!("{}", a.lamport) }),
                2 => a.body(SESSION, e, Material::id(), 0, Command::SetMaterial(Material { metallic: 0.5, ..Material::default() })),
                3 => a.body(SESSION, e, Selection::id(), 0, Command::Select),
                4 => a.body(SESSION, e, Selection::id(), 0, Command::Deselect),
                _ => a.body(SESSION, e, Mesh::id(), 0, Command::AddFaces { indices: vec![rand::Rng::gen_range(&mut rng, 0..5), rand::Rng::gen_range(&mut rng, 0..5), 4] }),
            };
            concurrent.push(body);
        }
        let mut reference = None;
        for _ in 0..6 {
            concurrent.shuffle(&mut rng);
            let log: Vec<CommandBody> = prefix.iter().chain(&concurrent).cloned().collect();
            let p = fold(&log);
            let h = (p.state_hash(), p.dump());
            match &reference {
                None => reference = Some(h),
                Some(r) => prop_assert_eq!(r, &h),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// Replay mode folds to the same world, and leaves an equal spatial index behind.
    #[test]
    fn replay_mode_equals_live_mode(seed in any::<u64>()) {
        let log = random_log(seed, 300);
        let live = fold(&log);
        let mut replayed = Projection::new(SESSION);
        replayed.begin_replay();
        for (i, b) in log.iter().enumerate() {
            replayed.apply_command(i as u64 + 1, b).unwrap();
        }
        replayed.end_replay();
        prop_assert_eq!(replayed.state_hash(), live.state_hash());
        prop_assert_eq!(replayed.dump(), live.dump());
        for r in [3.0f32, 10.0, 40.0] {
            let area = theta_projector::interest::Area { center: [1.0, 2.0, -3.0], radius: r };
            let mut a = theta_projector::interest::InterestView::new(area);
            let mut b = theta_projector::interest::InterestView::new(area);
            let sa: Vec<_> = a.snapshot(&live, 4096).into_iter().flat_map(|c| c.entities).collect();
            let sb: Vec<_> = b.snapshot(&replayed, 4096).into_iter().flat_map(|c| c.entities).collect();
            prop_assert_eq!(sa, sb);
        }
    }
}
