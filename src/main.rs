use maven_gateway::config::{Config, LogFormat};
use maven_gateway::server::Gateway;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

// Frames and views are built by ingest and freed by the shard threads that sent them; glibc's
// allocator takes an arena lock for every such free (a third of ingest's CPU went to futex
// waits on it), mimalloc hands them back without one. Built without transparent huge pages:
// with them an idle connection held 4.5 KiB instead of glibc's 2.2 KiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let config = Config::load(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if config.print_config {
        print!("{}", config.to_toml());
        return;
    }
    if let Err(e) = maven_gateway::server::settings_from(&config) {
        eprintln!("maven-gateway: {e}");
        std::process::exit(2);
    }
    // A panic anywhere ends the process with a logged reason and a non-zero exit, so a
    // supervisor restarts it (its clients recover through connection state recovery) rather
    // than a dead shard thread leaving its clients unanswered and its cap slots taken.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            panic = %info,
            "panic: the gateway exits so that it can be restarted"
        );
        std::process::exit(101);
    }));
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
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
        tracing::info!(
            signal = sig,
            drain_timeout_ms = config.drain_timeout_ms,
            "draining"
        );
    }
    // A second signal does not wait for the drain.
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::warn!(signal = sig, "second signal: exiting now");
            std::process::exit(0);
        }
    });
    gateway.drain(
        config.reconnect_after_ms,
        std::time::Duration::from_millis(config.drain_timeout_ms),
    );
    tracing::info!("stopped");
}
