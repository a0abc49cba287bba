use clap::Parser;
use maven_gateway::config::Config;
use maven_gateway::server::Gateway;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

fn main() {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("maven-gateway: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let gateway = match Gateway::start(&config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("maven-gateway: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!(
        public = %gateway.public_addr,
        internal = %gateway.internal_addr,
        shards = config.shard_count(),
        demo = config.demo,
        "maven-gateway listening"
    );
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "stopping");
    }
    gateway.stop();
}
