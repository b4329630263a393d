//! Integration tests of theta-projector, as one binary.

mod logs;
mod props;
mod scene;
