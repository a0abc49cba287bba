//! `loadtest`: capacity-planning load harness for Socket.IO v4 servers. See README.md.

mod cli;
mod harness;
mod hist;
mod inflate;
mod ingest;
mod jitter;
mod jwt;
mod plan;
mod projection;
mod proto;
mod publish;
mod report;
mod scenarios;
mod sys;
mod tally;
mod worker;

use clap::Parser;
use cli::{Cli, Cmd};

fn main() {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::LocalWorker => worker::run(),
        Cmd::Worker(a) => {
            let Some(token) = cli::worker_token(&a.token) else {
                eprintln!("loadtest worker: give --token or LOADTEST_WORKER_TOKEN");
                std::process::exit(2);
            };
            worker::listen(&a.listen, &token, a.once, &a.source_addrs)
        }
        _ => {}
    }
    sys::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async move {
        let (common, res) = match cli.cmd {
            Cmd::Fanout(a) => (a.common.clone(), scenarios::fanout(a).await),
            Cmd::Connect(a) => (a.common.clone(), scenarios::connect(a).await),
            Cmd::Capacity(a) => (a.common.clone(), scenarios::capacity(a).await),
            Cmd::Mixed(a) => (a.common.clone(), scenarios::mixed(a).await),
            Cmd::Overload(a) => (a.common.clone(), scenarios::overload(a).await),
            Cmd::Jitter(a) => (a.common.clone(), jitter::run(a).await),
            Cmd::Ingest(a) => (a.common.clone(), ingest::run(a).await),
            Cmd::Worker(_) | Cmd::LocalWorker => unreachable!(),
        };
        match res {
            Ok((_, h)) if h.lost.is_some() => {
                eprintln!("\nloadtest: {}", h.lost.unwrap_or_default());
                2
            }
            Ok((r, _h)) => {
                print!("{}", report::human(&r));
                let (json, html) = report::default_paths(
                    &common.out_dir,
                    &r.scenario,
                    &r.server.name,
                    common.json.clone(),
                    common.html.clone(),
                    common.no_html,
                );
                match report::write_reports(&r, &json, html.as_deref()) {
                    Ok(()) => {
                        println!(
                            "  reports      {}{}",
                            json.display(),
                            html.map(|h| format!(", {}", h.display()))
                                .unwrap_or_default()
                        );
                        0
                    }
                    Err(e) => {
                        eprintln!("loadtest: {e}");
                        1
                    }
                }
            }
            Err(e) => {
                eprintln!("\nloadtest: {e}");
                2
            }
        }
    });
    // Drop the runtime without waiting on background pollers.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}
