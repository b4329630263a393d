//! Canonical component bytes and state-hash items, byte for byte, as docs/PROTOCOL.md prints
//! them ("Canonical component bytes"): a client that folds the log itself checks its encoder
//! against these.

use theta_schemas::components::Component;
use theta_schemas::components::{Material, Mesh, Name, Parent, Primitive, Selection, ToolState, Transform};
use theta_schemas::{AuthorKey, Shape};

fn check(value: &(impl Component + std::fmt::Debug), hex: &str) {
    assert_eq!(hex::encode(value.encode()), hex, "{value:?}");
}

#[test]
fn canonical_bytes_of_every_component() {
    check(&Transform { translation: [1.0, 2.0, 3.0], ..Transform::default() }, TRANSFORM);
    check(&Name("box".into()), NAME);
    check(&Parent(7), PARENT);
    check(&Parent(0), PARENT_ROOT);
    check(&Mesh { positions: vec![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], indices: vec![0, 1, 2] }, MESH);
    check(&Material { base_color: [0.8, 0.2, 0.2, 1.0], metallic: 0.0, roughness: 0.5 }, MATERIAL);
    check(&Selection { authors: vec![AuthorKey([1; 32]), AuthorKey([2; 32])] }, SELECTION);
    check(&ToolState { author: AuthorKey([1; 32]), tool: "move".into() }, TOOL_STATE);
    check(&Primitive { shape: Shape::Sphere }, PRIMITIVE);
}

/// The state-hash item of (entity 7, theta.Name, the Name above) and of the entity itself.
#[test]
fn state_hash_items() {
    use sha2::{Digest, Sha256};
    let item = |entity: u64, component: u64, bytes: &[u8]| {
        let mut h = Sha256::new();
        h.update(b"theta/state-item/v1\0");
        h.update(entity.to_be_bytes());
        h.update(component.to_be_bytes());
        h.update(bytes);
        hex::encode(h.finalize())
    };
    let name = <Name as theta_schemas::ids::ComponentMeta>::id().0;
    assert_eq!(item(7, name, &hex::decode(NAME).unwrap()), NAME_ITEM);
    assert_eq!(item(7, 0, &[]), ENTITY_ITEM);
}

const NAME_ITEM: &str = "7226cfcccf051e117e1bdeebcb9a52f2ec982905933bc7dd9ce105f4d447f1ba";
const ENTITY_ITEM: &str = "1864b7dca8b359d9ce55564e4f9465b5211ae62120914ffb95b7ebf26c536243";

const TRANSFORM: &str = "1000000000000a002c000400100020000a0000000000803f00000040000040400000000000000000000000000000803f0000803f0000803f0000803f";
const NAME: &str = "0c0000000000060008000400060000000400000003000000626f7800";
const PARENT: &str = "0c000000000006000c000400060000000700000000000000";
const PARENT_ROOT: &str = "080000000400040004000000";
const MESH: &str = "0c00000008000c000400080008000000180000000400000003000000000000000100000002000000030000000000000000000000000000000000803f0000000000000000000000000000803f00000000";
const MATERIAL: &str = "1000000000000a0018000400000014000a000000cdcc4c3fcdcc4c3ecdcc4c3e0000803f0000003f";
const SELECTION: &str = "04000000beffffff04000000020000003c00000004000000d2ffffff0400000020000000020202020202020202020202020202020202020202020202020202020202020200000600080004000600000004000000200000000101010101010101010101010101010101010101010101010101010101010101";
const TOOL_STATE: &str = "0c00000008000c0004000800080000001400000004000000040000006d6f766500000000200000000101010101010101010101010101010101010101010101010101010101010101";
const PRIMITIVE: &str = "0c00000000000600080007000600000000000001";
