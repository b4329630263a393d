// The schema hash of schemas/fbs (docs/PROTOCOL.md, "Schema hash"). schemas/tests/generated_fresh.rs
// fails when it differs from the Rust crate's.
export const SCHEMA_HASH_HEX = '5baa979f56fea24ce76e36b3eb952772b175433dd2fcac81ca7d286f5c30cddd';
