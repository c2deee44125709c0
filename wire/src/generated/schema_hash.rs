// Written by wire/regen.sh together with hadron_generated.rs; do not edit.

/// FNV-1a 64 of `wire/schema/hadron.fbs` when the generated code was produced.
pub const SCHEMA_FNV1A64: u64 = 0x9b1d48198e0500e0;

/// SHA-256 of `wire/schema/hadron.fbs` when the generated code was produced.
pub const SCHEMA_SHA256: &str = "ee2f66a9b062ecf149bce805abccb77808564fe2badbecf5ca611065fcdbdd60";
