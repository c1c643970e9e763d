//! The fuzz corpus (tests only): `tests/corpus/<target>/` holds one input per file, the
//! seeds and every input that ever broke something. Each fuzz module replays its target's
//! files through the same check its proptest properties use, on every `cargo test`.

use std::path::{Path, PathBuf};

/// Every file of `tests/corpus/<target>/`, sorted by name, with its bytes. Panics (this
/// is a test helper) when the directory is missing or empty: a corpus that silently
/// replays nothing would be a test that cannot fail.
pub fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Runs `check` on every input of `target`, naming the file of the first that fails.
pub fn replay(target: &str, check: impl Fn(&[u8]) -> Result<(), String>) {
    for (path, bytes) in inputs(target) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("corpus {}: {e}", path.display()),
            Err(_) => panic!("corpus {}: the check panicked (see above)", path.display()),
        }
    }
}
