//! Component values: the owned [`Value`] enum over the registry, and their flecs components.
//!
//! flecs stores each value as a newtype component (`FTransform`, ...); the rest of Theta only
//! sees [`Value`] and canonical bytes. flecs entity ids never leave this crate.

use flecs_ecs::prelude::*;
use theta_schemas::components::{
    Component as _, Material, Mesh, Name, Parent, Primitive, Selection, ToolState, Transform,
};
use theta_schemas::ids::{ComponentMeta, Descriptor};
use theta_schemas::{ComponentId, DecodeError};

macro_rules! values {
    ($($variant:ident($ty:ty) => $flecs:ident),+ $(,)?) => {
        $(
            #[doc = concat!("flecs storage of a [`", stringify!($ty), "`].")]
            #[derive(Component, Debug, Clone, PartialEq)]
            pub struct $flecs(pub $ty);
        )+

        /// One component value of any registered type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Value {
            $(
                #[doc = concat!("A [`", stringify!($ty), "`].")]
                $variant($ty),
            )+
        }

        impl Value {
            /// The component id of the value's type.
            pub fn id(&self) -> ComponentId {
                match self { $(Value::$variant(_) => <$ty>::id(),)+ }
            }

            /// The canonical bytes of the value.
            pub fn encode(&self) -> Vec<u8> {
                match self { $(Value::$variant(v) => v.encode(),)+ }
            }

            /// Builds the canonical bytes in a reusable builder.
            pub fn write<'b, 'f>(&self, fbb: &'b mut flatbuffers::FlatBufferBuilder<'f>) -> &'b [u8] {
                match self { $(Value::$variant(v) => v.write(fbb),)+ }
            }

            /// Decodes canonical bytes of component `id`; unknown ids are an error.
            pub fn decode(id: ComponentId, bytes: &[u8]) -> Result<Value, DecodeError> {
                $(if id == <$ty>::id() { return Ok(Value::$variant(<$ty>::decode(bytes)?)); })+
                Err(DecodeError::InvalidValue { field: "component", reason: "unknown component id" })
            }

            /// Stores the value on a flecs entity.
            pub(crate) fn set_on(&self, e: EntityView<'_>) {
                match self { $(Value::$variant(v) => { e.set($flecs(v.clone())); })+ }
            }

            /// Reads component `id` from a flecs entity.
            pub(crate) fn get_from(e: EntityView<'_>, id: ComponentId) -> Option<Value> {
                $(if id == <$ty>::id() { return e.try_get::<&$flecs>(|c| Value::$variant(c.0.clone())); })+
                None
            }

            /// Removes component `id` from a flecs entity.
            pub(crate) fn remove_from(e: EntityView<'_>, id: ComponentId) {
                $(if id == <$ty>::id() { e.remove(<$flecs as flecs_ecs::prelude::ComponentId>::id()); return; })+
            }
        }

        /// Descriptors of every component the projector stores, in registry order.
        pub fn descriptors() -> Vec<Descriptor> {
            vec![$(<$ty>::descriptor()),+]
        }
    };
}

values! {
    Transform(Transform) => FTransform,
    Name(Name) => FName,
    Parent(Parent) => FParent,
    Mesh(Mesh) => FMesh,
    Material(Material) => FMaterial,
    Selection(Selection) => FSelection,
    ToolState(ToolState) => FToolState,
    Primitive(Primitive) => FPrimitive,
}
