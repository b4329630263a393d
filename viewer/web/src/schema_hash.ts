// The schema hash of schemas/fbs (docs/PROTOCOL.md, "Schema hash"). schemas/tests/generated_fresh.rs
// fails when it differs from the Rust crate's.
export const SCHEMA_HASH_HEX = '456c98db17958ef9e2ce82793693a53377c8972c588c44a6e2e3b2c75b71b838';
