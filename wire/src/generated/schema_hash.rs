// Written by wire/regen.sh together with hadron_generated.rs; do not edit.

/// FNV-1a 64 of `wire/schema/hadron.fbs` when the generated code was produced.
pub const SCHEMA_FNV1A64: u64 = 0x1e7bb3142d210e42;

/// SHA-256 of `wire/schema/hadron.fbs` when the generated code was produced.
pub const SCHEMA_SHA256: &str = "5501062fae0ac0f4d757e30202975ef371e1fc6785b85c3d0ae8d55b79120118";
