//! Embeds the official socket.io-client browser bundle for the `--demo` page. It comes from npm
//! (pinned in demo/package-lock.json); when demo/node_modules is missing and npm is on the PATH,
//! `npm ci` fetches it, so `cargo run -- --demo` needs no other step. Without npm the page says
//! how to get it.

use std::path::Path;
use std::process::Command;

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let demo = Path::new(&root).join("demo");
    let bundle = demo.join("node_modules/socket.io-client/dist/socket.io.min.js");
    println!("cargo:rerun-if-changed=demo/package-lock.json");
    println!("cargo:rerun-if-changed={}", bundle.display());
    if !bundle.exists() && demo.join("package-lock.json").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&demo)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            println!("cargo:warning=could not run `npm ci` in demo/; the --demo page will lack socket.io-client");
        }
    }
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("socket.io.min.js");
    if bundle.exists() {
        std::fs::copy(&bundle, &out).expect("copying the socket.io-client bundle");
    } else {
        std::fs::write(
            &out,
            "document.body.insertAdjacentHTML('afterbegin','<p style=\"color:#e5484d;padding:1rem\">socket.io-client is missing: run <code>npm ci</code> in demo/ and rebuild.</p>');",
        )
        .expect("writing the placeholder bundle");
    }
}
