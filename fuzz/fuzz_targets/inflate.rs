//! permessage-deflate: arbitrary bytes inflated under a small bound never panic and never
//! pass it, and any payload compressed as the server compresses it inflates back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maven_gateway::codec::deflate::{compressed_frame, inflate, InflateError};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let max = 1 + limit as usize * 64;
    match inflate(rest, max) {
        Ok(out) => assert!(out.len() <= max, "{} past {max}", out.len()),
        Err(InflateError::TooLarge { max: m }) => assert_eq!(m, max),
        Err(InflateError::Corrupt) => {}
    }
    let frame = compressed_frame(0x2, rest);
    assert_eq!(frame[0], 0xc2, "FIN, RSV1, binary");
    let header = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    assert_eq!(inflate(&frame[header..], rest.len()).as_deref(), Ok(rest));
});
