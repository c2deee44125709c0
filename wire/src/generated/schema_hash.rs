// Written by wire/regen.sh together with hadron_generated.rs; do not edit.

/// FNV-1a 64 of `wire/schema/hadron.fbs` when the generated code was produced.
pub const SCHEMA_FNV1A64: u64 = 0xadafb4a44311a766;

/// SHA-256 of `wire/schema/hadron.fbs` when the generated code was produced.
pub const SCHEMA_SHA256: &str = "8b0eff56a5128fe56b3be74e7c725538296557cf5ec1e573b3269ea348f6978f";
