// Written by wire/regen.sh together with hadron_generated.rs; do not edit.

/// FNV-1a 64 of `wire/schema/hadron.fbs` when the generated code was produced.
pub const SCHEMA_FNV1A64: u64 = 0x235e313477a08ae3;

/// SHA-256 of `wire/schema/hadron.fbs` when the generated code was produced.
pub const SCHEMA_SHA256: &str = "bbdf28750e6293f9a8e33c09dfad5a555a6c5ba9564f351d4608d26917782007";
