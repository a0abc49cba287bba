//! The client address behind a trusted proxy, from `X-Forwarded-For`. Each proxy appends the
//! address it received the request from, so only the right-most entries were written by
//! proxies we trust; anything to their left is whatever the client claimed.

use ipnet::IpNet;
use std::net::IpAddr;

/// Which peers may tell us the client address, and how many of them stand in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTrust {
    /// Peers whose `X-Forwarded-For` is believed.
    pub proxies: Vec<IpNet>,
    /// Trusted proxies in front of the gateway: the client is the `hops`-th entry from the
    /// right (1: the right-most, written by the proxy that connected to us).
    pub hops: usize,
}

impl ProxyTrust {
    /// The address a request from `peer` counts as. A peer that is not a trusted proxy, or a
    /// header without `hops` well-formed entries, counts as the peer itself.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.proxies.iter().any(|net| net.contains(&peer)) {
            return peer;
        }
        let Some(header) = forwarded_for else {
            return peer;
        };
        let hops = self.hops.max(1);
        header
            .rsplit(',')
            .nth(hops - 1)
            .and_then(|entry| entry.trim().parse().ok())
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn takes_the_entry_the_trusted_proxy_wrote() {
        let trust = ProxyTrust {
            proxies: vec!["10.0.0.0/8".parse().unwrap()],
            hops: 1,
        };
        let proxy = ip("10.0.0.5");
        assert_eq!(
            trust.client(proxy, Some("6.6.6.6, 1.2.3.4")),
            ip("1.2.3.4"),
            "the forged left part is ignored"
        );
        assert_eq!(trust.client(proxy, Some(" 1.2.3.4 ")), ip("1.2.3.4"));
        assert_eq!(trust.client(proxy, None), proxy);
        assert_eq!(trust.client(proxy, Some("1.2.3.4, junk")), proxy);
        assert_eq!(
            trust.client(ip("8.8.8.8"), Some("1.2.3.4")),
            ip("8.8.8.8"),
            "an untrusted peer speaks for itself"
        );
        let two = ProxyTrust { hops: 2, ..trust };
        assert_eq!(
            two.client(proxy, Some("6.6.6.6, 1.2.3.4, 10.0.0.9")),
            ip("1.2.3.4")
        );
        assert_eq!(two.client(proxy, Some("1.2.3.4")), proxy);
        assert_eq!(
            two.client(proxy, Some("::1, 2001:db8::1, 10.0.0.9")),
            ip("2001:db8::1")
        );
    }
}
