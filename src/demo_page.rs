//! The live trading view served at `/` with `--demo`: the page's own sources (demo/) and the
//! official socket.io-client bundle, embedded at build time (see build.rs).

const INDEX: &str = include_str!("../demo/index.html");
const APP: &str = include_str!("../demo/app.js");
const STYLE: &str = include_str!("../demo/style.css");
const CLIENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/socket.io.min.js"));

/// The asset at `path`, with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX.as_bytes()),
        "/demo/app.js" => ("text/javascript; charset=utf-8", APP.as_bytes()),
        "/demo/style.css" => ("text/css; charset=utf-8", STYLE.as_bytes()),
        "/demo/socket.io.min.js" => ("text/javascript; charset=utf-8", CLIENT),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_references_only_served_assets() {
        for src in ["/demo/style.css", "/demo/socket.io.min.js", "/demo/app.js"] {
            assert!(INDEX.contains(src), "{src}");
            assert!(asset(src).is_some(), "{src}");
        }
        assert!(asset("/etc/passwd").is_none());
    }
}
