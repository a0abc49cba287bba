//! socket.io Redis emitter packets (msgpack from pub/sub) from arbitrary bytes: decoding never
//! panics, and what it accepts is a `/ws` event whose frame decodes back to its arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maven_gateway::cluster::emitter::decode;
use maven_gateway::codec::socketio::{Kind, Packet};

fuzz_target!(|data: &[u8]| {
    let Ok(emit) = decode(data) else {
        return;
    };
    let polling = emit.message.polling();
    let text = std::str::from_utf8(&polling[1..]).expect("frames are UTF-8");
    let Ok((packet, _)) = Packet::decode(text) else {
        // Arguments nested past serde_json's recursion limit do not decode back.
        return;
    };
    assert_eq!(packet.kind, Kind::Event);
    assert_eq!(packet.namespace, "/ws");
    let args = packet.data.expect("an event has arguments");
    assert_eq!(args[0].as_str(), Some(emit.event.as_str()));
});
