//! Process figures from `/proc/self` (Linux), read at scrape time.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::fmt::Error;

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

fn rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn open_fds() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

pub fn encode(enc: &mut DescriptorEncoder) -> Result<(), Error> {
    if let Some(cpu) = cpu_seconds() {
        let c = ConstCounter::new(cpu);
        c.encode(enc.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time",
            None,
            c.metric_type(),
        )?)?;
    }
    if let Some(rss) = rss_bytes() {
        let g = ConstGauge::new(rss);
        g.encode(enc.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory",
            None,
            g.metric_type(),
        )?)?;
    }
    if let Some(fds) = open_fds() {
        let g = ConstGauge::new(fds);
        g.encode(enc.encode_descriptor(
            "process_open_fds",
            "Open file descriptors",
            None,
            g.metric_type(),
        )?)?;
    }
    Ok(())
}
