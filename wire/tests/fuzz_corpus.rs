//! Replays the checked-in fuzz corpora (`wire/fuzz/corpus/<target>/`)
//! through the property checks their targets run (`hadron_wire::fuzz_checks`),
//! so every input libFuzzer found interesting keeps being checked by an
//! ordinary `cargo test`, on the stable toolchain, without libFuzzer. A
//! failure names the corpus file, which `cargo fuzz run <target> <file>`
//! replays under the fuzzer. An empty or missing corpus fails too, so a
//! corpus deleted by accident does not pass silently.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use hadron_wire::fuzz_checks;

/// Runs `check` on every file of `wire/fuzz/corpus/<target>/` and returns
/// how many there were; panics naming each file whose check panicked.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", "corpus", target]
        .iter()
        .collect();
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list the {target} corpus {}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| {
                    panic!("cannot list the {target} corpus {}: {e}", dir.display())
                })
                .path()
        })
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "the {target} corpus {} is empty: restore it from git or regenerate it \
         as wire/fuzz/Cargo.toml says",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in &paths {
        let input =
            fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            failures.push(format!("{}: {}", name(path), what(&*panic)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {target} corpus inputs under {} break the property \
         (replay one with `cd wire/fuzz && cargo fuzz run {target} corpus/{target}/<file>`):\n{}",
        failures.len(),
        paths.len(),
        dir.display(),
        failures.join("\n")
    );
    paths.len()
}

fn name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The message a panic carried.
fn what(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(a panic without a message)")
}

#[test]
fn decode_frame_corpus_keeps_its_properties() {
    let inputs = replay("decode_frame", fuzz_checks::decode_frame);
    println!("decode_frame: {inputs} corpus inputs replayed");
}

#[test]
fn verify_event_corpus_keeps_its_properties() {
    let inputs = replay("verify_event", fuzz_checks::verify_event);
    println!("verify_event: {inputs} corpus inputs replayed");
}
