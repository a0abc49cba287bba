//! What the loadtest integration tests share: the gateway built beside them, and a scratch
//! directory per test.

use std::path::PathBuf;

/// `GATEWAY_BIN`, else the workspace's debug build.
pub fn gateway_bin() -> PathBuf {
    let bin = match std::env::var_os("GATEWAY_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("debug")
            .join("maven-gateway"),
    };
    assert!(
        bin.exists(),
        "{} not built (cargo build --bins, or set GATEWAY_BIN)",
        bin.display()
    );
    bin
}

/// A fresh directory for one test's reports.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loadtest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
