//! The process's descriptor limit, which bounds the TCP connections the gateway may hold:
//! running out of descriptors would stop the internal listener (ingest) and Redis along with
//! the public port, so the connection cap stays below it with a reserve.

use std::io;

/// Raises the soft descriptor limit to the hard one; returns the limit now in force.
pub fn raise_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(lim.rlim_cur)
}

/// Descriptors kept out of the connection cap: the internal listener's connections, Redis,
/// listeners, pollers, wakers and logs.
pub fn reserve(limit: u64) -> u64 {
    (limit / 16).clamp(64, 4096)
}

/// The TCP connection cap a descriptor limit allows.
pub fn tcp_cap(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(reserve(limit)))
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_a_reserve() {
        assert_eq!(tcp_cap(1024), 1024 - 64);
        assert_eq!(tcp_cap(4096), 4096 - 256);
        assert_eq!(tcp_cap(1 << 20), (1 << 20) - 4096);
        assert_eq!(tcp_cap(10), 1);
        assert!(raise_limit().unwrap() > 0);
    }
}
