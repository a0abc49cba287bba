//! Linux specifics: descriptor limit, source-port choice, /proc readings.

use std::os::fd::AsRawFd;

/// Raise the soft RLIMIT_NOFILE to the hard limit.
pub fn raise_nofile_limit() -> u64 {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            if r.rlim_cur < r.rlim_max {
                r.rlim_cur = r.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            }
            return r.rlim_cur;
        }
    }
    0
}

/// IP_BIND_ADDRESS_NO_PORT: with an explicit source address, let connect() pick the port per
/// (source, destination) pair instead of bind() reserving one for the address alone.
pub fn bind_no_port(sock: &tokio::net::TcpSocket) {
    let one: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

pub fn clock_ticks() -> u64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime, µs.
    pub cpu_us: u64,
    pub rss_bytes: u64,
    pub threads: u64,
}

/// /proc/PID/stat and /proc/PID/status.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name's closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15, num_threads 20, rss 24.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let threads: u64 = f.get(17)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    let tick = clock_ticks();
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(ProcSample {
        cpu_us: (utime + stime) * 1_000_000 / tick,
        rss_bytes: rss_pages * page,
        threads,
    })
}

/// Whole-machine CPU from /proc/stat: (busy, total) in ticks.
pub fn machine_cpu() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

pub fn ncpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
