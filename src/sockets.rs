//! The Socket.IO layer of one Engine.IO session: namespace connections, binary reassembly and
//! dispatch of events to the application. Pure: messages in, outputs out.

use crate::codec::socketio::{BinaryAssembler, Kind, Packet};
use crate::gateway::api::{self, Effect};
use crate::gateway::envelope::GATEWAY_NAMESPACE;
use crate::gateway::{GatewaySettings, GatewaySocket};
use crate::session::sid::new_socket_id;
use serde_json::{json, Value};
use smallvec::SmallVec;
use std::sync::Arc;

/// Which application serves the namespaces.
#[derive(Debug, Clone)]
pub enum App {
    /// The exchange gateway: `/ws` carries the API, `/` accepts connections.
    Gateway(Arc<GatewaySettings>),
    /// The behaviour the official Socket.IO protocol test suite expects.
    Conformance,
}

impl App {
    fn accepts(&self, ns: &str) -> bool {
        match self {
            App::Gateway(_) => ns == "/" || ns == GATEWAY_NAMESPACE,
            App::Conformance => ns == "/" || ns == "/custom",
        }
    }
}

/// What the layer asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send(Packet),
    Join(Arc<str>),
    Leave(Arc<str>),
    /// The peer broke the protocol: close the session.
    Close(&'static str),
}

#[derive(Debug)]
pub struct NsSocket {
    pub namespace: Box<str>,
    pub id: Box<str>,
    pub gateway: Option<GatewaySocket>,
}

#[derive(Debug, Default)]
pub struct SocketLayer {
    pub sockets: SmallVec<[NsSocket; 1]>,
    binary: BinaryAssembler,
}

impl SocketLayer {
    pub fn is_connected(&self) -> bool {
        !self.sockets.is_empty()
    }

    /// Every room any of this session's sockets is in.
    pub fn rooms(&self) -> impl Iterator<Item = &Arc<str>> {
        self.sockets
            .iter()
            .filter_map(|s| s.gateway.as_ref())
            .flat_map(|g| g.rooms.iter())
    }

    pub fn on_text(&mut self, app: &App, text: &str, now_ms: u64, out: &mut Vec<Output>) {
        if self.binary.is_waiting() {
            out.push(Output::Close(
                "text packet while binary attachments were pending",
            ));
            return;
        }
        let (packet, attachments) = match Packet::decode(text) {
            Ok(p) => p,
            Err(_) => return out.push(Output::Close("parse error")),
        };
        match self.binary.start(packet, attachments) {
            Ok(Some(p)) => self.on_packet(app, p, now_ms, out),
            Ok(None) => {}
            Err(_) => out.push(Output::Close("parse error")),
        }
    }

    pub fn on_binary(&mut self, app: &App, data: bytes::Bytes, now_ms: u64, out: &mut Vec<Output>) {
        match self.binary.push(data) {
            Ok(Some(p)) => self.on_packet(app, p, now_ms, out),
            Ok(None) => {}
            Err(_) => out.push(Output::Close("parse error")),
        }
    }

    fn on_packet(&mut self, app: &App, packet: Packet, now_ms: u64, out: &mut Vec<Output>) {
        let index = self
            .sockets
            .iter()
            .position(|s| *s.namespace == *packet.namespace);
        match (packet.kind, index) {
            (Kind::Connect, None) => self.connect(app, packet, now_ms, out),
            (Kind::Connect, Some(_)) => out.push(Output::Close("second CONNECT for a namespace")),
            (Kind::Disconnect, Some(i)) => {
                let s = self.sockets.remove(i);
                if let Some(g) = s.gateway {
                    out.extend(g.rooms.into_iter().map(Output::Leave));
                }
            }
            (Kind::Event | Kind::BinaryEvent, Some(i)) => self.event(app, i, packet, now_ms, out),
            // Acks answer server emits with an ack; the gateway never asks for one.
            (Kind::Ack | Kind::BinaryAck, Some(_)) => {}
            _ => out.push(Output::Close(
                "packet for a namespace that is not connected",
            )),
        }
    }

    fn connect(&mut self, app: &App, packet: Packet, now_ms: u64, out: &mut Vec<Output>) {
        let ns = packet.namespace;
        if !app.accepts(&ns) {
            out.push(Output::Send(Packet {
                kind: Kind::ConnectError,
                namespace: ns,
                id: None,
                data: Some(json!({"message": "Invalid namespace"})),
                attachments: Vec::new(),
            }));
            return;
        }
        let id = new_socket_id();
        out.push(Output::Send(Packet {
            kind: Kind::Connect,
            namespace: ns.clone(),
            id: None,
            data: Some(json!({"sid": id})),
            attachments: Vec::new(),
        }));
        let gateway = match app {
            App::Gateway(_) if ns == GATEWAY_NAMESPACE => {
                out.push(Output::Send(Packet::event(
                    &ns,
                    api::connected(&id, now_ms),
                    None,
                )));
                Some(GatewaySocket::default())
            }
            App::Gateway(_) => None,
            App::Conformance => {
                let auth = packet.data.unwrap_or_else(|| json!({}));
                out.push(Output::Send(Packet::event(
                    &ns,
                    json!(["auth", auth]),
                    None,
                )));
                None
            }
        };
        self.sockets.push(NsSocket {
            namespace: ns.into_boxed_str(),
            id: id.into_boxed_str(),
            gateway,
        });
    }

    fn event(
        &mut self,
        app: &App,
        index: usize,
        packet: Packet,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let socket = &mut self.sockets[index];
        let ns = socket.namespace.to_string();
        let Some(Value::Array(mut args)) = packet.data else {
            return;
        };
        match app {
            App::Gateway(settings) => {
                let name = match args.first() {
                    Some(Value::String(s)) => s.clone(),
                    _ => return,
                };
                if !packet.attachments.is_empty() {
                    let error = json!({"code": "BAD_REQUEST", "message": "binary payloads are not supported by the gateway API"});
                    out.push(match packet.id {
                        Some(id) => {
                            ack(&ns, id, json!([{"ok": false, "error": error}]), Vec::new())
                        }
                        None => {
                            let mut e = error;
                            e["request"] = Value::Null;
                            Output::Send(Packet::event(&ns, json!(["error", e]), None))
                        }
                    });
                    return;
                }
                let Some(gw) = socket.gateway.as_mut() else {
                    if let Some(id) = packet.id {
                        out.push(ack(&ns, id, json!([{"ok": false, "error": {"code": "BAD_REQUEST", "message": "the gateway API is on namespace /ws"}}]), Vec::new()));
                    }
                    return;
                };
                for fx in api::on_event(settings, gw, &name, &args[1..], packet.id, now_ms) {
                    out.push(match fx {
                        Effect::Emit(v) => Output::Send(Packet::event(&ns, v, None)),
                        Effect::Ack(id, v) => ack(&ns, id, v, Vec::new()),
                        Effect::Join(r) => Output::Join(r),
                        Effect::Leave(r) => Output::Leave(r),
                    });
                }
            }
            App::Conformance => match args.first().and_then(Value::as_str) {
                Some("message") => {
                    args[0] = Value::String("message-back".into());
                    out.push(Output::Send(Packet {
                        kind: Kind::Event,
                        namespace: ns,
                        id: None,
                        data: Some(Value::Array(args)),
                        attachments: packet.attachments,
                    }));
                }
                Some("message-with-ack") => {
                    if let Some(id) = packet.id {
                        args.remove(0);
                        out.push(ack(&ns, id, Value::Array(args), packet.attachments));
                    }
                }
                _ => {}
            },
        }
    }
}

fn ack(ns: &str, id: u64, args: Value, attachments: Vec<bytes::Bytes>) -> Output {
    Output::Send(Packet {
        kind: Kind::Ack,
        namespace: ns.to_owned(),
        id: Some(id),
        data: Some(args),
        attachments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(p: &Packet) -> String {
        let mut b = bytes::BytesMut::new();
        p.encode(&mut b);
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn gateway_connect_then_subscribe() {
        let app = App::Gateway(Arc::new(GatewaySettings::default()));
        let mut layer = SocketLayer::default();
        let mut out = Vec::new();
        layer.on_text(&app, "0/ws,", 5, &mut out);
        assert_eq!(out.len(), 2);
        let Output::Send(p) = &out[1] else { panic!() };
        assert!(text(p).starts_with("2/ws,[\"connected\",{\"socketId\":"));
        out.clear();
        layer.on_text(
            &app,
            "2/ws,1[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]",
            5,
            &mut out,
        );
        assert_eq!(out[0], Output::Join(Arc::from("trades:BTCUSDT")));
        let Output::Send(p) = &out[1] else { panic!() };
        assert_eq!(text(p), "3/ws,1[{\"ok\":true,\"channel\":\"trades\",\"rooms\":[\"trades:BTCUSDT\"],\"symbol\":\"BTCUSDT\"}]");
        assert_eq!(layer.rooms().count(), 1);
        out.clear();
        layer.on_text(&app, "1/ws,", 5, &mut out);
        assert_eq!(out, vec![Output::Leave(Arc::from("trades:BTCUSDT"))]);
    }

    #[test]
    fn invalid_namespace_and_packets() {
        let app = App::Gateway(Arc::new(GatewaySettings::default()));
        let mut layer = SocketLayer::default();
        let mut out = Vec::new();
        layer.on_text(&app, "0/admin,", 0, &mut out);
        let Output::Send(p) = &out[0] else { panic!() };
        assert_eq!(text(p), "4/admin,{\"message\":\"Invalid namespace\"}");
        for bad in ["abc", "2{}", "2abc[]", "2/ws,[\"x\"]"] {
            out.clear();
            layer.on_text(&app, bad, 0, &mut out);
            assert!(matches!(out[0], Output::Close(_)), "{bad}");
        }
    }

    #[test]
    fn conformance_echoes_binary_acks() {
        let app = App::Conformance;
        let mut layer = SocketLayer::default();
        let mut out = Vec::new();
        layer.on_text(&app, "0{\"token\":\"t\"}", 0, &mut out);
        let Output::Send(p) = &out[1] else { panic!() };
        assert_eq!(text(p), "2[\"auth\",{\"token\":\"t\"}]");
        out.clear();
        layer.on_text(
            &app,
            "51-4[\"message-with-ack\",{\"_placeholder\":true,\"num\":0}]",
            0,
            &mut out,
        );
        assert!(out.is_empty());
        layer.on_binary(&app, bytes::Bytes::from_static(&[1, 2, 3]), 0, &mut out);
        let Output::Send(p) = &out[0] else { panic!() };
        assert_eq!(text(p), "61-4[{\"_placeholder\":true,\"num\":0}]");
        assert_eq!(&p.attachments[0][..], &[1, 2, 3]);
    }
}
