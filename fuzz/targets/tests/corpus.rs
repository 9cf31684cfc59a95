//! Replays every kept corpus file (`fuzz/corpus/<target>/`) through its target, on
//! stable, in the normal suite: what fuzzing found stays checked without nightly.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Every target has a seeded corpus, and every input in it runs without a panic.
#[test]
fn every_corpus_file_replays() {
    for (name, run) in gf_fuzz_targets::TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let inputs = files(&dir);
        assert!(!inputs.is_empty(), "{}: no corpus", dir.display());
        for input in inputs {
            let data = std::fs::read(&input).expect("readable");
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(result.is_ok(), "{name} panics on {}", input.display());
        }
    }
}

/// The cargo-fuzz crate has exactly one binary per target, named after it.
#[test]
fn every_target_has_a_fuzz_binary() {
    let mut bins: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    bins.sort();
    let mut names: Vec<&str> = gf_fuzz_targets::TARGETS.iter().map(|(n, _)| *n).collect();
    names.sort();
    assert_eq!(bins, names);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("readable");
    for name in names {
        let body = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs")))
            .expect("readable");
        assert!(
            body.contains(&format!("gf_fuzz_targets::{name}::run")),
            "fuzz_targets/{name}.rs runs another target"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}
