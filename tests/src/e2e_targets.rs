//! The end-to-end files in `tests/tests/` are integration tests of
//! `hadron-server` (so that Cargo builds the binary for them), declared one
//! by one in server/Cargo.toml; this package does not compile them itself
//! (`autotests = false`). A file added here without its `[[test]]` entry
//! would never be compiled nor run, silently: this test names it.

use std::path::Path;

#[test]
fn every_e2e_file_is_a_test_target_of_hadron_server() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest_path = here.join("../server/Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(here.join("tests"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".rs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no end-to-end files in tests/tests");
    let missing: Vec<&String> = files
        .iter()
        .filter(|name| !manifest.contains(&format!("path = \"../tests/tests/{name}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "{missing:?} in tests/tests have no [[test]] entry in {} (add \
         `[[test]] name = \"<file>\" path = \"../tests/tests/<file>.rs\"`)",
        manifest_path.display()
    );
}
