//! Commands from their JSON description (docs/PROTOCOL.md, "CLI command JSON").

use serde_json::json;
use theta_client::command_json::command_from_json;
use theta_schemas::components::{Name, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, ComponentId, Role, Shape};

#[test]
fn each_kind_gets_its_scope_and_defaults() {
    let (entity, component, base, command) =
        command_from_json(&json!({"kind": "Rename", "entity": 7, "name": "lamp", "base_version": 3})).unwrap();
    assert_eq!((entity, component, base), (7, Name::id(), 3));
    assert_eq!(command, Command::Rename { name: "lamp".into() });

    let (_, component, _, command) =
        command_from_json(&json!({"kind": "SetTransform", "entity": 2, "translation": [1, 2, 3]})).unwrap();
    assert_eq!(component, Transform::id());
    let Command::SetTransform(t) = command else { panic!("{command:?}") };
    assert_eq!((t.translation, t.rotation, t.scale), ([1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0], [1.0; 3]));

    let (_, component, _, command) = command_from_json(&json!({"kind": "CreateEntity", "entity": 4})).unwrap();
    assert_eq!(component, ComponentId::NONE);
    assert_eq!(command, Command::CreateEntity { shape: Shape::Cube, name: String::new(), parent: 0 });

    let key = "11".repeat(32);
    let (_, _, _, command) = command_from_json(&json!({"kind": "GrantRole", "key": key, "role": "editor"})).unwrap();
    assert!(matches!(command, Command::GrantRole { role: Role::Editor, .. }), "{command:?}");
}

#[test]
fn bad_descriptions_name_what_is_wrong() {
    let err = |j| command_from_json(&j).unwrap_err().to_string();
    assert!(err(json!({"kind": "Teleport"})).contains("unknown kind \"Teleport\""));
    assert!(err(json!({"entity": 1})).contains("kind must be a string"));
    assert!(err(json!({"kind": "SetTransform", "translation": [1, 2]})).contains("translation must have 3 numbers"));
    assert!(err(json!({"kind": "GrantRole", "key": "zz", "role": "editor"})).contains("key must be 64 hex digits"));
    assert!(err(json!({"kind": "GrantRole", "key": "11".repeat(32), "role": "king"})).contains("unknown role"));
    assert!(err(json!({"kind": "CreateSession"})).contains("theta session create"));
    assert!(err(json!({"kind": "RemoveComponent", "component": "theta.Nope"})).contains("unknown component"));
    // Found by the command_json fuzz target (fuzz/seeds/command_json/overflowing-scale): a
    // number beyond f32's range became infinity, and the store refused the signed command.
    let huge: serde_json::Value = serde_json::from_str("1.9e50").unwrap();
    let e = err(json!({"kind": "SetTransform", "entity": 1, "scale": [huge, 1, 1]}));
    assert!(e.contains("scale") && e.contains("beyond the range of a 32-bit float"), "{e}");
    let e = err(json!({"kind": "SetMaterial", "entity": 1, "metallic": huge}));
    assert!(e.contains("metallic") && e.contains("beyond the range"), "{e}");
    // Found by the same target (fuzz/seeds/command_json/faces-not-triangles): faces and vertex
    // moves the decoder refuses were signed.
    let e = err(json!({"kind": "AddFaces", "entity": 1, "indices": [0, 12]}));
    assert!(e.contains("3 indices per triangle"), "{e}");
    let e = err(json!({"kind": "MoveVertices", "entity": 1, "indices": [0, 1], "positions": [[0, 0, 0]]}));
    assert!(e.contains("one position per index"), "{e}");
}
