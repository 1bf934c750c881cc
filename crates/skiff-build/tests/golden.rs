//! Golden-file tests: every `tests/golden/*.Dockerfile` is parsed and
//! resolved with no build args and compared with its `.expected` JSON dump;
//! every `tests/golden/errors/*.Dockerfile` must fail with the one-line
//! error in its `.expected`. Run with `UPDATE_GOLDEN=1` to rewrite the
//! expected files after an intended change (then review the diff).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("golden dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {}", dir.display());
    files
}

fn dump(text: &str) -> Result<String, String> {
    let df = skiff_build::parse(text).map_err(|e| e.to_string())?;
    let stages =
        skiff_build::resolve(&df, &BTreeMap::<String, String>::new()).map_err(|e| e.to_string())?;
    // A struct rather than `json!` keeps the fields in declaration order.
    #[derive(serde::Serialize)]
    struct Dump<'a> {
        directives: &'a skiff_build::Directives,
        stages: Vec<skiff_build::Stage>,
    }
    let dump = Dump {
        directives: &df.directives,
        stages,
    };
    Ok(serde_json::to_string_pretty(&dump).expect("json") + "\n")
}

/// Compares (or with UPDATE_GOLDEN=1 rewrites) and returns a failure note.
fn check(path: &Path, actual: &str) -> Option<String> {
    let expected_path = path.with_extension("expected");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&expected_path, actual).expect("write expected");
        return None;
    }
    let expected = fs::read_to_string(&expected_path).unwrap_or_default();
    (expected != actual).then(|| {
        format!(
            "{}: output differs from {}\n--- actual ---\n{actual}",
            path.display(),
            expected_path.display()
        )
    })
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn golden_parses() {
    let failures: Vec<String> = cases(&root())
        .iter()
        .filter_map(|path| {
            let text = fs::read_to_string(path).expect("read");
            match dump(&text) {
                Ok(out) => check(path, &out),
                Err(e) => Some(format!("{}: unexpected error: {e}", path.display())),
            }
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn golden_errors() {
    let failures: Vec<String> = cases(&root().join("errors"))
        .iter()
        .filter_map(|path| {
            let text = fs::read_to_string(path).expect("read");
            match dump(&text) {
                Ok(_) => Some(format!("{}: parsed but should fail", path.display())),
                Err(e) => check(path, &format!("{e}\n")),
            }
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
