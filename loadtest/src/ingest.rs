//! The `ingest` scenario: how many events a second the gateway's ingest API takes, what each
//! costs the gateway's CPU, and, with subscribers, how long an event takes from the POST to
//! them. Posts at rising target rates, one step each, from `--senders` connections that
//! each own a slice of the symbols (so a symbol's order book updates stay in order), and
//! stops after the step where the gateway no longer keeps up.

use crate::cli::{check_bounds, IngestArgs, IngestKind};
use crate::harness::{Harness, OpenResult};
use crate::hist;
use crate::plan::*;
use crate::publish::*;
use crate::report::*;
use crate::scenarios::{
    build, measured_step, publish_summary, trades_sub, workers_for, BookSource, Parts,
    PrivateSource, TickerSource,
};
use crate::worker::now_us;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// A step whose accepted rate is under this share of its target saturated ingest.
const KEEPS_UP: f64 = 0.9;

/// Sender `i`'s slice of `n` things: a contiguous range, so stream ids stay global indexes.
fn slice(i: usize, senders: usize, n: usize) -> std::ops::Range<usize> {
    (i * n / senders)..((i + 1) * n / senders)
}

/// Sender `range`'s source; order books get their snapshots, to post before any delta.
fn source(
    kind: IngestKind,
    symbols: &[String],
    range: std::ops::Range<usize>,
    seed: &mut Vec<Event>,
) -> Box<dyn Source> {
    let mine = symbols[range.clone()].to_vec();
    match kind {
        IngestKind::Trades => Box::new(TradeSource {
            rooms: mine.len(),
            next: 0,
            pad: 0,
            stream_base: range.start as u32,
            symbols: mine,
        }),
        IngestKind::Tickers => Box::new(TickerSource {
            symbols: mine,
            next: 0,
        }),
        IngestKind::Books => {
            let mut books = BookSource::new(mine);
            seed.extend(books.snapshots(now_us()));
            Box::new(books)
        }
        IngestKind::Private => Box::new(PrivateSource {
            first_user: range.start as u64,
            users: range.len() as u64,
            next: 0,
        }),
    }
}

fn subscriptions(kind: IngestKind, symbols: &[String], jwt_secret: &str) -> Plan {
    let sub = |channel: &str| SubTemplate {
        event: "subscribe".into(),
        channel: channel.into(),
        symbols: symbols.to_vec(),
        per_client: 1,
        interval: None,
        stream_base: None,
        per_user_stream: false,
    };
    let (sub, auth) = match kind {
        IngestKind::Trades => (trades_sub(symbols, 1), None),
        IngestKind::Tickers => (sub("ticker"), None),
        IngestKind::Books => (sub("orderbook"), None),
        IngestKind::Private => (
            SubTemplate {
                event: "subscribe.private".into(),
                channel: "user.orders".into(),
                symbols: vec![],
                per_client: 1,
                interval: None,
                stream_base: Some(PRIVATE_STREAM_BASE),
                per_user_stream: true,
            },
            Some(AuthRule {
                jwt_secret: jwt_secret.into(),
                user_prefix: "lt-user-".into(),
            }),
        ),
    };
    Plan {
        transport: Transport::Websocket,
        subs: vec![sub],
        auth,
        ack: true,
        strict: false,
    }
}

pub async fn run(a: IngestArgs) -> Result<(RunReport, Harness), String> {
    let top = a.rates.iter().copied().fold(0.0, f64::max);
    let secs = a.rates.len() as f64 * (a.warmup_secs + a.step_secs);
    check_bounds(a.subscribers, top, secs)?;
    if a.rates.is_empty() || a.rates.iter().any(|r| *r <= 0.0) {
        return Err("--rates must list positive events/s".into());
    }
    if !(1..=64).contains(&a.senders) || a.symbols < a.senders || a.symbols > 100_000 {
        return Err(
            "--senders must be 1..64 and --symbols at least --senders (at most 100000)".into(),
        );
    }
    let budget = Duration::from_secs_f64(
        secs + a.subscribers as f64 / a.ramp_rate.max(1.0) + a.common.drain_secs + 40.0,
    );
    let mut env = Vec::new();
    if a.kind == IngestKind::Private
        && a.common.server_bin.is_some()
        && !a.common.server_args.iter().any(|x| x.starts_with("--jwt"))
    {
        env.push(("GATEWAY_JWT_SECRET".to_string(), a.jwt_secret.clone()));
    }
    let mut h = Harness::with_env(a.common.clone(), "ingest", budget, &env).await?;
    let hook = h.require_hook()?;
    let symbols: Vec<String> = (0..a.symbols).map(symbol).collect();
    let mut open = OpenResult {
        ok: 0,
        failed: 0,
        first_error: None,
        secs: 0.0,
    };
    if a.subscribers > 0 {
        h.start_workers(workers_for(&a.common, a.subscribers))
            .await?;
        let plan = subscriptions(a.kind, &symbols, &a.jwt_secret);
        open = h.open(&plan, a.subscribers, a.ramp_rate).await?;
        if open.ok == 0 {
            return Err(format!(
                "no subscriber could connect: {}",
                open.first_error.unwrap_or_default()
            ));
        }
    }
    let mut seed = Vec::new();
    let sources: Vec<Box<dyn Source>> = (0..a.senders)
        .map(|i| source(a.kind, &symbols, slice(i, a.senders, a.symbols), &mut seed))
        .collect();
    if !seed.is_empty() {
        publish_once(&hook, seed)
            .await
            .map_err(|e| format!("seeding order books: {e}"))?;
    }
    let base = h.server_sample();
    let connected = base;
    let mut cap = Capacity {
        vary: "ingest events/s".into(),
        ..Default::default()
    };
    let senders: Vec<Publisher> = sources
        .into_iter()
        .map(|src| Publisher::start_batched(hook.clone(), 0.0, src, a.batch))
        .collect();
    for p in &senders {
        h.publishers.push(p.stats.clone());
    }
    let t0 = Instant::now();
    h.begin_window("all");
    let sent = |ps: &[Publisher]| -> (u64, u64) {
        ps.iter().fold((0, 0), |(s, e), p| {
            (
                s + p.stats.sent.load(Relaxed),
                e + p.stats.errors.load(Relaxed),
            )
        })
    };
    for (n, &rate) in a.rates.iter().enumerate() {
        let step = n + 1;
        h.phase = format!("step{step}");
        for p in &senders {
            p.set_rate(rate / a.senders as f64);
        }
        h.run_for(Duration::from_secs_f64(a.warmup_secs)).await;
        let name = format!("step{step}");
        let (sent0, errors0) = sent(&senders);
        h.begin_window(&name);
        h.run_for(Duration::from_secs_f64(a.step_secs)).await;
        let (sent1, errors1) = sent(&senders);
        let Some(w) = h.end_window(&name) else {
            break;
        };
        let accepted = (sent1 - sent0) as f64 / w.secs;
        let errors = errors1 - errors0;
        let lat = hist::summary(&w.all_latency(&(0..KIND_COUNT).collect::<Vec<_>>()));
        let keeps_up = accepted >= KEEPS_UP * rate && errors == 0;
        let st = Step {
            step,
            load: rate,
            rate: accepted,
            held: keeps_up,
            verdict: if keeps_up {
                "kept up".into()
            } else if errors > 0 {
                format!("{errors} requests failed")
            } else {
                format!("saturated: {accepted:.0} of {rate:.0} events/s accepted")
            },
            accepted_per_s: Some(accepted),
            server_cpu_us_per_event: w
                .server_cpu_us
                .filter(|_| sent1 > sent0)
                .map(|c| c as f64 / (sent1 - sent0) as f64),
            ..measured_step(&h, &w, lat)
        };
        if !a.common.quiet {
            eprintln!(
                "\nstep {step}: {rate:.0} events/s → {:.0} accepted, {} µs CPU per event; {}",
                accepted,
                st.server_cpu_us_per_event
                    .map_or("?".into(), |c| format!("{c:.2}")),
                st.verdict
            );
        }
        if keeps_up {
            cap.max_load_held = Some(rate);
        } else {
            cap.broke_at = Some(rate);
        }
        cap.steps.push(st);
        if !keeps_up {
            break;
        }
    }
    let best = cap
        .steps
        .iter()
        .filter_map(|s| s.accepted_per_s)
        .fold(0.0, f64::max);
    cap.conclusion = format!(
        "{:?}: at most {best:.0} events/s accepted{}",
        a.kind,
        match cap.broke_at {
            Some(r) => format!("; ingest saturated at the {r:.0} events/s step"),
            None => "; kept up with every step (raise --rates to find the limit)".into(),
        }
    )
    .to_lowercase();
    let mut last = BTreeMap::new();
    let mut started = u64::MAX;
    let mut summary: Option<PublishSummary> = None;
    let secs = t0.elapsed().as_secs_f64();
    for p in senders {
        let st = p.stop().await;
        let s = publish_summary(&hook, &st, 0.0, secs);
        last.extend(st.seqs.lock().unwrap().clone());
        started = started.min(st.started_us.load(Relaxed));
        summary = Some(match summary {
            None => s,
            Some(mut t) => {
                t.sent += s.sent;
                t.errors += s.errors;
                t.achieved_rate_per_s += s.achieved_rate_per_s;
                t.first_error = t.first_error.or(s.first_error);
                t
            }
        });
    }
    h.phase = "drain".into();
    h.run_for(Duration::from_secs_f64(a.common.drain_secs))
        .await;
    let window = h.end_window("all");
    let finals = h.finals(last, started).await;
    let end = h.server_sample();
    h.shutdown().await;
    if a.kind == IngestKind::Tickers && a.subscribers > 0 {
        h.notes.push("ticker latency includes the gateway's throttle window (--ticker-throttle-ms; pass --server-arg=--ticker-throttle-ms=0 to see ingest alone)".into());
    }
    let parts = Parts {
        requested: a.subscribers,
        transport: "websocket".into(),
        open,
        window,
        finals,
        publish: summary,
        base,
        connected,
        end,
        msgs_out: None,
        latency_kinds: (0..KIND_COUNT).collect(),
        rate_secs: Some(secs),
    };
    let mut r = build(&h, "ingest", serde_json::to_value(&a).unwrap(), parts);
    r.capacity = Some(cap);
    Ok((r, h))
}
