// Written by wire/regen.sh together with hadron_generated.rs; do not edit.

/// FNV-1a 64 of `wire/schema/hadron.fbs` when the generated code was produced.
pub const SCHEMA_FNV1A64: u64 = 0x9138812b2675a6d3;

/// SHA-256 of `wire/schema/hadron.fbs` when the generated code was produced.
pub const SCHEMA_SHA256: &str = "698aa6003724b0a0605466734e66df48c809e764d669024aa62d1b30d0a5f833";
