//! HTTP/1.1 request heads from arbitrary bytes: parse_head, then Engine.IO classification and
//! the WebSocket accept key, as the public listener does before any session exists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maven_gateway::http::{parse_head, HeadError};
use maven_gateway::transport::handshake::accept_key;
use maven_gateway::transport::{classify, EngineRequest};

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(None) => assert!(data.len() <= maven_gateway::http::request::MAX_HEAD),
        Ok(Some((req, consumed))) => {
            assert!(consumed <= data.len(), "consumed {consumed} of {}", data.len());
            assert!(consumed <= maven_gateway::http::request::MAX_HEAD);
            // The head alone parses to the same length.
            let (_, again) = parse_head(&data[..consumed])
                .expect("the head alone parses")
                .expect("the head alone is complete");
            assert_eq!(again, consumed);
            let _ = req.method();
            let _ = req.query("EIO");
            match classify(&req) {
                Ok(EngineRequest::Open(_)) => assert_eq!(req.query("EIO"), Some("4")),
                Ok(EngineRequest::Existing { sid, .. }) => {
                    assert_eq!(req.query("sid"), Some(sid.as_str()))
                }
                Err(e) => {
                    let _ = (e.code(), e.message(), e.status());
                }
            }
            if let Some(key) = &req.ws_key {
                assert_eq!(accept_key(key).len(), 28);
            }
        }
        Err(e) => {
            let _ = e.to_string();
            if e == HeadError::BadContentLength {
                assert!(data.len() >= 16);
            }
        }
    }
});
