//! Serves what the official Engine.IO v4 and Socket.IO v5 protocol test suites expect:
//! `/engine.io/` echoes every message, `/socket.io/` serves `/` and `/custom` with the suites'
//! `auth`, `message-back` and `message-with-ack` behaviour.
//!
//!     cargo run --release --example conformance -- --port 3000

use maven_gateway::limits::LimitSettings;
use maven_gateway::session::sockets::App;
use maven_gateway::shard::{Reactor, ServerSettings, Shared};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn main() {
    let mut port = 3000u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => {
                    eprintln!("conformance: --port needs a number");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!("usage: conformance [--port PORT]");
                std::process::exit(2);
            }
        }
    }
    let settings = ServerSettings {
        engine_path: "/socket.io/".into(),
        echo_path: Some("/engine.io/".into()),
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(45),
        handshake_timeout: Duration::from_secs(10),
        max_payload: 1_000_000,
        deflate_threshold: Some(200),
        cors_origins: vec!["*".into()],
        trust_proxy: None,
        demo_page: false,
        outbound_soft_limit: 64 * 1024 * 1024,
        outbound_hard_limit: 64 * 1024 * 1024,
        close_linger: Duration::from_millis(5_000),
        outbound_total_limit: usize::MAX,
        work_rate_per_ip: 1000.0,
        app: App::Conformance,
    };
    // The protocol suites open many sessions from one address in a burst.
    let shared = Arc::new(Shared::new(LimitSettings {
        max_connections: 100_000,
        max_connections_per_ip: 100_000,
        max_connections_per_user: 100_000,
        handshakes_per_sec_per_ip: 1e9,
        handshake_burst_per_ip: 1e9,
        max_tcp_per_ip: 100_000,
        ..LimitSettings::default()
    }));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let reactor = match Reactor::start(1, addr, Arc::new(settings), shared.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conformance: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    shared.ready.store(true, Ordering::Relaxed);
    eprintln!("conformance server on {}", reactor.local_addr);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .expect("installing signal handlers");
    signals.forever().next();
    reactor.shutdown();
}
