//! The `.slt` files in `tests/slt/` (sqllogictest format), run against a live
//! cluster of 2 leaves over HTTP; leaves seal after a couple of rows, so answers
//! come from sealed segments (through their indexes) and mutable tails alike.

use altdb_tests::slt::HttpDb;
use altdb_tests::{Cluster, ClusterOptions};

const SEAL_ROWS: usize = 2;

#[test]
fn sqllogictest_files_pass() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        leaves: 2,
        seal_rows: SEAL_ROWS,
        ..ClusterOptions::default()
    })?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .map(|d| std::path::PathBuf::from(d).join("slt"))
        .unwrap_or(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        let mut runner = sqllogictest::Runner::new(|| async {
            Ok(HttpDb {
                cluster: &cluster,
                seal_rows: SEAL_ROWS as u64,
            })
        });
        if let Err(error) = runner.run_file(file) {
            failures.push(format!("{}: {error}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}
