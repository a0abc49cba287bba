//! Reports: the human summary, JSON, and an HTML page with SVG charts (plotters).

use crate::hist::{fmt_ms, Summary};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    pub phase: String,
    pub connected: u64,
    pub connects_ok: u64,
    pub connects_failed: u64,
    pub dropped: u64,
    pub publishes_per_s: f64,
    pub deliveries_per_s: f64,
    pub server_messages_per_s: Option<f64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub handshake_p99_ms: f64,
    pub gaps: u64,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub client_cpu_pct: f64,
    pub machine_cpu_pct: Option<f64>,
    pub client_lag_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    pub target: String,
    pub pid: Option<u32>,
    pub command: Option<String>,
    pub log: Option<String>,
    pub publish: Option<String>,
    pub stats_url: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Connections {
    pub requested: u64,
    pub transport: String,
    pub connected: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Closed by the server or the network after connecting.
    pub dropped: u64,
    pub drop_reasons: BTreeMap<String, u64>,
    /// Connected at the end (and, with a probe, reached by the final broadcast).
    pub alive_at_end: u64,
    pub ramp_s: f64,
    pub connect_rate_per_s: f64,
    /// TCP connect → namespace connected and subscribed.
    pub handshake: Summary,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishSummary {
    pub hook: String,
    pub sent: u64,
    pub target_rate_per_s: f64,
    pub achieved_rate_per_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Publish request → answer (the ingest's own latency).
    pub request_latency: Summary,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KindStats {
    pub received: u64,
    pub latency: Summary,
    pub expected: Option<u64>,
    pub missing: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delivery {
    /// Data events received by all clients while measuring.
    pub received: u64,
    pub per_s: f64,
    /// Lossless events the clients should have received (by sequence numbers).
    pub expected: u64,
    pub missing: u64,
    pub loss_ratio: f64,
    pub duplicates: u64,
    pub clients_with_loss: u64,
    /// Publish → receive, all measured kinds together.
    pub latency: Summary,
    pub by_kind: BTreeMap<String, KindStats>,
    pub book_gaps: u64,
    pub book_resyncs: u64,
    /// Values received that were published before the client subscribed (last value on
    /// subscribe, book snapshots): not counted in latency.
    pub replays: u64,
    pub bytes: u64,
    pub errors: BTreeMap<String, u64>,
    /// Percentile spectrum of `latency`: (percentile, ms).
    pub percentiles: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerResources {
    pub cpu_pct_avg: Option<f64>,
    /// Server CPU time (user + system) per delivered message while measuring.
    pub cpu_us_per_delivery: Option<f64>,
    pub rss_base_mb: Option<f64>,
    pub rss_connected_mb: Option<f64>,
    pub rss_end_mb: Option<f64>,
    pub rss_peak_mb: Option<f64>,
    /// (RSS with every client connected - RSS before) / clients.
    pub rss_per_connection_kib: Option<f64>,
    pub threads: Option<u64>,
    /// Messages the server says it sent (from --stats-url) while measuring.
    pub server_messages_out: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientResources {
    pub workers: usize,
    pub source_addrs: usize,
    pub cpu_pct_avg: f64,
    pub worker_cpu_pct: Vec<f64>,
    pub machine_cpu_pct_avg: Option<f64>,
    pub cpus: usize,
    pub lag_max_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Step {
    pub step: usize,
    pub load: f64,
    pub clients: u64,
    pub rate: f64,
    pub measured_s: f64,
    pub deliveries_per_s: f64,
    /// clients × rate / rooms: what the clients should receive per second.
    pub expected_per_s: f64,
    pub latency: Summary,
    pub loss_ratio: f64,
    pub dropped: u64,
    pub server_cpu_pct: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub client_cpu_pct: f64,
    pub machine_cpu_pct: Option<f64>,
    pub held: bool,
    pub verdict: String,
    /// Events the server accepted per second (`ingest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_per_s: Option<f64>,
    /// Server CPU per accepted event, µs (`ingest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_event: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Capacity {
    pub vary: String,
    pub slo_p99_ms: f64,
    pub slo_loss: f64,
    pub steps: Vec<Step>,
    /// The largest load whose step met the SLO.
    pub max_load_held: Option<f64>,
    pub broke_at: Option<f64>,
    pub conclusion: String,
    /// Instances for a planned load (`--plan-clients`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<crate::projection::Projection>,
}

/// What the jitter scenario measured (see `jitter.rs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JitterReport {
    pub clients: u64,
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order_clients: u64,
    pub comebacks: u64,
    pub recovered: u64,
    pub told: u64,
    pub clients_with_loss: u64,
    pub clients_with_untold_loss: u64,
    /// Events missed while away: arrival after the client was back (ms).
    pub replay_after_back_ms: Summary,
    /// The same events: arrival after publish (ms).
    pub missed_after_publish_ms: Summary,
    /// Every event: arrival after publish (ms).
    pub all_after_publish_ms: Summary,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunReport {
    pub tool: String,
    pub version: String,
    pub scenario: String,
    pub started_unix: u64,
    pub wall_s: f64,
    pub server: ServerInfo,
    pub config: serde_json::Value,
    pub connections: Connections,
    pub publish: Option<PublishSummary>,
    pub delivery: Option<Delivery>,
    pub server_resources: ServerResources,
    pub client_resources: ClientResources,
    pub capacity: Option<Capacity>,
    pub gateway_stats: Option<serde_json::Value>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
    pub timeline: Vec<Sample>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<JitterReport>,
}

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    match v {
        Some(x) => format!("{x:.digits$}{unit}"),
        None => "n/a".into(),
    }
}

fn write_projection(o: &mut String, p: &crate::projection::Projection) {
    let h = &p.held;
    let _ = writeln!(
        o,
        "  per unit     at {} clients: {} µs of server CPU per delivery, {} of memory per connection",
        h.clients,
        h.cpu_us_per_delivery
            .map_or("n/a".into(), |c| format!("{c:.2}")),
        h.memory_kib_per_connection
            .map_or("n/a".into(), |m| format!("{m:.2} KiB")),
    );
    let _ = writeln!(
        o,
        "  projection   {} clients, {:.0} publishes/s = {:.0} deliveries/s: {} ({}); one instance carries {} deliveries/s and {} connections",
        p.target_clients,
        p.target_publishes_per_s,
        p.target_deliveries_per_s,
        p.instances
            .map_or("no count".into(), |n| format!("{n} instance{}", if n == 1 { "" } else { "s" })),
        p.bound_by,
        p.deliveries_per_instance.map_or("n/a".into(), |d| format!("{d:.0}")),
        p.connections_per_instance.map_or("n/a".into(), |c| format!("{c:.0}")),
    );
    for a in &p.assumptions {
        let _ = writeln!(o, "    assuming   {a}");
    }
}

pub fn human(r: &RunReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nloadtest {} — {} at {} (pid {})",
        r.scenario,
        r.server.name,
        r.server.target,
        r.server.pid.map(|p| p.to_string()).unwrap_or("?".into())
    );
    let c = &r.connections;
    let _ = writeln!(
        o,
        "  connections  {} of {} {} connected, {} failed, {} dropped, {} alive at end",
        c.connected, c.requested, c.transport, c.failed, c.dropped, c.alive_at_end
    );
    let _ = writeln!(
        o,
        "               ramp {:.2} s ({:.0}/s); handshake {}",
        c.ramp_s,
        c.connect_rate_per_s,
        c.handshake.line()
    );
    if let Some(e) = &c.first_error {
        let _ = writeln!(o, "               first error: {e}");
    }
    if !c.drop_reasons.is_empty() {
        let _ = writeln!(o, "               drops: {:?}", c.drop_reasons);
    }
    if let Some(p) = &r.publish {
        let _ = writeln!(
            o,
            "  publish      {} sent ({:.1}/s of {:.1}/s target), {} errors; request {}",
            p.sent,
            p.achieved_rate_per_s,
            p.target_rate_per_s,
            p.errors,
            p.request_latency.line()
        );
        if let Some(e) = &p.first_error {
            let _ = writeln!(o, "               first error: {e}");
        }
    }
    if let Some(d) = &r.delivery {
        let _ = writeln!(
            o,
            "  deliveries   {} received ({:.0}/s), {:.1} MB",
            d.received,
            d.per_s,
            d.bytes as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "  loss         {} of {} expected missing ({:.4}%), {} clients with loss, {} duplicates",
            d.missing,
            d.expected,
            d.loss_ratio * 100.0,
            d.clients_with_loss,
            d.duplicates
        );
        let _ = writeln!(o, "  latency      {}", d.latency.line());
        if d.by_kind.len() > 1 {
            for (k, s) in &d.by_kind {
                let loss = match (s.expected, s.missing) {
                    (Some(e), Some(m)) => format!(", missing {m} of {e}"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    o,
                    "    {:<10} {} received{}; {}",
                    k,
                    s.received,
                    loss,
                    s.latency.line()
                );
            }
        }
        if d.book_gaps + d.book_resyncs > 0 || r.scenario == "mixed" {
            let _ = writeln!(
                o,
                "  books        {} sequence gaps, {} resync snapshots; {} replays on subscribe",
                d.book_gaps, d.book_resyncs, d.replays
            );
        }
        if !d.errors.is_empty() {
            let _ = writeln!(o, "  errors       {:?}", d.errors);
        }
    }
    let s = &r.server_resources;
    let _ = writeln!(
        o,
        "  server       CPU {} avg, {} per delivery; RSS {} → {} connected → {} end (peak {}), {} per connection",
        opt(s.cpu_pct_avg, 1, "%"),
        opt(s.cpu_us_per_delivery, 2, " µs"),
        opt(s.rss_base_mb, 1, " MB"),
        opt(s.rss_connected_mb, 1, " MB"),
        opt(s.rss_end_mb, 1, " MB"),
        opt(s.rss_peak_mb, 1, " MB"),
        opt(s.rss_per_connection_kib, 1, " KiB"),
    );
    if let Some(m) = s.server_messages_out {
        let _ = writeln!(o, "               server-side messages out: {m}");
    }
    let cr = &r.client_resources;
    let _ = writeln!(
        o,
        "  client       CPU {:.1}% avg ({} workers: {}), machine {} of {} cores, event-loop lag max {} ms",
        cr.cpu_pct_avg,
        cr.workers,
        cr.worker_cpu_pct.iter().map(|p| format!("{p:.0}%")).collect::<Vec<_>>().join(" "),
        opt(cr.machine_cpu_pct_avg, 0, "%"),
        cr.cpus,
        fmt_ms(cr.lag_max_ms)
    );
    if let Some(cap) = &r.capacity {
        let _ = writeln!(
            o,
            "  capacity     vary {} ; SLO p99 ≤ {} ms, loss ≤ {}",
            cap.vary, cap.slo_p99_ms, cap.slo_loss
        );
        let _ = writeln!(o, "    step       load   clients    rate/s   deliv/s (of exp.)   p50     p99     max   loss     srvCPU  µs/dlv  verdict");
        for st in &cap.steps {
            let _ = writeln!(
                o,
                "    {:>4} {:>10.0} {:>9} {:>9.0} {:>9.0} ({:>4.0}%) {:>6} {:>7} {:>7} {:>6.4}% {:>7} {:>7}  {}",
                st.step,
                st.load,
                st.clients,
                st.rate,
                st.deliveries_per_s,
                if st.expected_per_s > 0.0 { st.deliveries_per_s / st.expected_per_s * 100.0 } else { 0.0 },
                fmt_ms(st.latency.p50_ms),
                fmt_ms(st.latency.p99_ms),
                fmt_ms(st.latency.max_ms),
                st.loss_ratio * 100.0,
                opt(st.server_cpu_pct, 0, "%"),
                opt(st.server_cpu_us_per_delivery, 2, ""),
                st.verdict
            );
            if let Some(accepted) = st.accepted_per_s {
                let _ = writeln!(
                    o,
                    "         ingest accepted {accepted:.0} events/s, server CPU {} µs per event",
                    opt(st.server_cpu_us_per_event, 2, "")
                );
            }
        }
        let _ = writeln!(o, "  → {}", cap.conclusion);
        if let Some(p) = &cap.projection {
            write_projection(&mut o, p);
        }
    }
    for n in &r.notes {
        let _ = writeln!(o, "  note: {n}");
    }
    for w in &r.warnings {
        let _ = writeln!(o, "  WARNING: {w}");
    }
    o
}

pub fn write_reports(r: &RunReport, json: &Path, html: Option<&Path>) -> Result<(), String> {
    if let Some(d) = json.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    std::fs::write(json, serde_json::to_vec_pretty(r).unwrap())
        .map_err(|e| format!("{}: {e}", json.display()))?;
    if let Some(h) = html {
        std::fs::write(h, html_report(r)).map_err(|e| format!("{}: {e}", h.display()))?;
    }
    Ok(())
}

pub fn default_paths(
    out_dir: &str,
    scenario: &str,
    label: &str,
    json: Option<PathBuf>,
    html: Option<PathBuf>,
    no_html: bool,
) -> (PathBuf, Option<PathBuf>) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let json =
        json.unwrap_or_else(|| PathBuf::from(out_dir).join(format!("{scenario}-{label}-{t}.json")));
    let html = if no_html {
        None
    } else {
        Some(html.unwrap_or_else(|| json.with_extension("html")))
    };
    (json, html)
}

// ---------------------------------------------------------------------------------------------
// HTML.

type Series = (String, RGBColor, Vec<(f64, f64)>);

fn chart(title: &str, xlabel: &str, ylabel: &str, series: &[Series], log_x: bool) -> String {
    let mut buf = String::new();
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    if pts.is_empty() {
        return format!("<p class=empty>{title}: no data</p>");
    }
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let y1 = pts.iter().fold(0.0f64, |a, p| a.max(p.1));
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if log_x {
        x0 = x0.max(1.0);
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.08 };
    {
        let root = SVGBackend::with_string(&mut buf, (560, 300)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(64);
        macro_rules! draw {
            ($ch:expr) => {{
                let mut ch = $ch;
                let _ = ch
                    .configure_mesh()
                    .x_desc(xlabel)
                    .y_desc(ylabel)
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw();
                for (name, color, data) in series {
                    let c = *color;
                    if let Ok(a) =
                        ch.draw_series(LineSeries::new(data.iter().copied(), c.stroke_width(2)))
                    {
                        a.label(name.clone()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                        });
                    }
                }
                if series.len() > 1 {
                    let _ = ch
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK.mix(0.3))
                        .position(SeriesLabelPosition::UpperLeft)
                        .draw();
                }
            }};
        }
        if log_x {
            if let Ok(ch) = b.build_cartesian_2d((x0..x1).log_scale(), 0.0..y1) {
                draw!(ch);
            }
        } else if let Ok(ch) = b.build_cartesian_2d(x0..x1, 0.0..y1) {
            draw!(ch);
        }
        let _ = root.present();
    }
    buf
}

const C1: RGBColor = RGBColor(31, 119, 180);
const C2: RGBColor = RGBColor(255, 127, 14);
const C3: RGBColor = RGBColor(214, 39, 40);
const C4: RGBColor = RGBColor(44, 160, 44);
const C5: RGBColor = RGBColor(148, 103, 189);

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn html_report(r: &RunReport) -> String {
    let tl = &r.timeline;
    let ser = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        tl.iter().filter_map(|s| f(s).map(|v| (s.t, v))).collect()
    };
    let has_lat = |s: &Sample| s.max_ms > 0.0;
    let mut charts = Vec::new();
    charts.push(chart(
        "Publish → receive latency per second (unthrottled kinds)",
        "seconds",
        "ms",
        &[
            ("p50".into(), C1, ser(&|s| has_lat(s).then_some(s.p50_ms))),
            ("p90".into(), C4, ser(&|s| has_lat(s).then_some(s.p90_ms))),
            ("p99".into(), C2, ser(&|s| has_lat(s).then_some(s.p99_ms))),
            ("max".into(), C3, ser(&|s| has_lat(s).then_some(s.max_ms))),
        ],
        false,
    ));
    let mut thr: Vec<Series> = vec![(
        "deliveries/s (clients)".into(),
        C1,
        ser(&|s| Some(s.deliveries_per_s)),
    )];
    if tl.iter().any(|s| s.server_messages_per_s.is_some()) {
        thr.push((
            "messages/s (server stats)".into(),
            C5,
            ser(&|s| s.server_messages_per_s),
        ));
    }
    charts.push(chart("Throughput", "seconds", "messages/s", &thr, false));
    charts.push(chart(
        "Publishes",
        "seconds",
        "publishes/s",
        &[("publishes/s".into(), C2, ser(&|s| Some(s.publishes_per_s)))],
        false,
    ));
    charts.push(chart(
        "Connections",
        "seconds",
        "clients",
        &[
            ("connected".into(), C1, ser(&|s| Some(s.connected as f64))),
            (
                "failed".into(),
                C3,
                ser(&|s| Some(s.connects_failed as f64)),
            ),
            ("dropped".into(), C2, ser(&|s| Some(s.dropped as f64))),
        ],
        false,
    ));
    charts.push(chart(
        "CPU (100% = one core)",
        "seconds",
        "%",
        &[
            ("server".into(), C1, ser(&|s| s.server_cpu_pct)),
            (
                "client (all workers)".into(),
                C2,
                ser(&|s| Some(s.client_cpu_pct)),
            ),
            (
                "machine (% of all cores)".into(),
                C5,
                ser(&|s| s.machine_cpu_pct),
            ),
        ],
        false,
    ));
    charts.push(chart(
        "Server memory",
        "seconds",
        "RSS MB",
        &[("RSS".into(), C1, ser(&|s| s.server_rss_mb))],
        false,
    ));
    if let Some(d) = &r.delivery {
        if !d.percentiles.is_empty() {
            let pts: Vec<(f64, f64)> = d
                .percentiles
                .iter()
                .map(|(p, v)| (1.0 / (1.0 - p / 100.0).max(1e-6), *v))
                .collect();
            charts.push(chart(
                "Latency distribution (x: 1/(1-percentile): 10 = p90, 100 = p99, 1000 = p99.9)",
                "1/(1-p)",
                "ms",
                &[("latency".into(), C1, pts)],
                true,
            ));
        }
    }
    if let Some(cap) = r
        .capacity
        .as_ref()
        .filter(|c| c.steps.iter().any(|s| s.accepted_per_s.is_some()))
    {
        let accepted: Vec<(f64, f64)> = cap
            .steps
            .iter()
            .filter_map(|s| Some((s.load, s.accepted_per_s?)))
            .collect();
        let target: Vec<(f64, f64)> = cap.steps.iter().map(|s| (s.load, s.load)).collect();
        let cpu: Vec<(f64, f64)> = cap
            .steps
            .iter()
            .filter_map(|s| Some((s.load, s.server_cpu_us_per_event?)))
            .collect();
        charts.push(chart(
            "Ingest: events/s accepted per step",
            "target events/s",
            "events/s",
            &[
                ("accepted".into(), C1, accepted),
                ("target".into(), C3, target),
            ],
            false,
        ));
        charts.push(chart(
            "Ingest: server CPU per event",
            "target events/s",
            "µs",
            &[("CPU per event".into(), C2, cpu)],
            false,
        ));
    }
    if let Some(cap) = &r.capacity {
        let p99: Vec<(f64, f64)> = cap
            .steps
            .iter()
            .map(|s| (s.load, s.latency.p99_ms))
            .collect();
        let slo: Vec<(f64, f64)> = cap.steps.iter().map(|s| (s.load, cap.slo_p99_ms)).collect();
        charts.insert(
            0,
            chart(
                &format!("Capacity: p99 latency per step ({})", cap.vary),
                &cap.vary,
                "ms",
                &[("p99".into(), C2, p99), ("SLO".into(), C3, slo)],
                false,
            ),
        );
        let d: Vec<(f64, f64)> = cap
            .steps
            .iter()
            .map(|s| (s.load, s.deliveries_per_s))
            .collect();
        charts.insert(
            1,
            chart(
                "Capacity: deliveries/s per step",
                &cap.vary,
                "deliveries/s",
                &[("deliveries/s".into(), C1, d)],
                false,
            ),
        );
    }
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><title>loadtest {} — {}</title><style>\
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;max-width:1160px;color:#222}}\
table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}\
th{{background:#f4f4f4}}td:first-child,th:first-child{{text-align:left}}.warn{{color:#b00}}.note{{color:#555}}\
.charts{{display:flex;flex-wrap:wrap;gap:8px}}pre{{background:#f7f7f7;padding:8px;overflow:auto;white-space:pre-wrap}}</style></head><body>",
        esc(&r.scenario),
        esc(&r.server.name)
    );
    let _ = write!(
        h,
        "<h1>loadtest {} — {}</h1>",
        esc(&r.scenario),
        esc(&r.server.name)
    );
    let _ = write!(
        h,
        "<p>Target {} (pid {}), publish via {}; {} client workers on {} cores; run {:.1} s.</p>",
        esc(&r.server.target),
        r.server.pid.map(|p| p.to_string()).unwrap_or("?".into()),
        esc(r.server.publish.as_deref().unwrap_or("none")),
        r.client_resources.workers,
        r.client_resources.cpus,
        r.wall_s
    );
    for w in &r.warnings {
        let _ = write!(h, "<p class=warn>⚠ {}</p>", esc(w));
    }
    for n in &r.notes {
        let _ = write!(h, "<p class=note>Note: {}</p>", esc(n));
    }
    let _ = write!(h, "<h2>Summary</h2><pre>{}</pre>", esc(&human(r)));
    if let Some(d) = &r.delivery {
        let _ = write!(h, "<h2>Latency by kind</h2><table><tr><th>kind</th><th>received</th><th>p50 ms</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>expected</th><th>missing</th></tr>");
        for (k, s) in &d.by_kind {
            let l = &s.latency;
            let _ = write!(h, "<tr><td>{k}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                s.received, fmt_ms(l.p50_ms), fmt_ms(l.p90_ms), fmt_ms(l.p99_ms), fmt_ms(l.p999_ms), fmt_ms(l.max_ms),
                s.expected.map(|v| v.to_string()).unwrap_or("-".into()), s.missing.map(|v| v.to_string()).unwrap_or("-".into()));
        }
        let _ = write!(h, "</table>");
    }
    let _ = write!(h, "<h2>Charts</h2><div class=charts>");
    for c in charts {
        let _ = write!(h, "<div>{c}</div>");
    }
    let _ = write!(
        h,
        "</div><h2>Configuration</h2><pre>{}</pre>",
        esc(&serde_json::to_string_pretty(&r.config).unwrap_or_default())
    );
    if let Some(c) = &r.server.command {
        let _ = write!(h, "<p>Server command: <code>{}</code></p>", esc(c));
    }
    let _ = write!(h, "</body></html>");
    h
}
