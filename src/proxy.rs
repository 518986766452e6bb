//! Behind a reverse proxy: who the client really is.
//!
//! A proxy that terminates TLS connects to us from its own address and
//! names the client in `X-Forwarded-For: client, proxy1, proxy2`. Anyone
//! can send that header, so it is believed only from peers in a
//! `--trust-proxy` network, and read from the right: each trusted hop
//! vouches for the one before it, and the first address that is not a
//! trusted proxy is the client. Rate limits, connection caps and logs then
//! see that address.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::http::Request;

/// A network: an address and how many leading bits of it are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `::1/128`, or a single address.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{prefix:?} is not a prefix length up to {max}"))?
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, bits) = match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                (u128::from(n.to_bits()), u128::from(i.to_bits()), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => (n.to_bits(), i.to_bits(), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (net >> shift) == (ip >> shift)
    }
}

/// The client's address: `peer` itself, unless `peer` is a trusted proxy
/// and `X-Forwarded-For` names someone else.
pub fn client_addr(trusted: &[Cidr], peer: SocketAddr, request: &Request) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    // All the X-Forwarded-For fields, as one list, nearest hop last.
    let hops: Vec<IpAddr> = request
        .headers_named("X-Forwarded-For")
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .map(|ip: IpAddr| ip.to_canonical())
        .collect();
    let client = hops.into_iter().rev().find(|ip| !is_trusted(*ip));
    client.map_or(peer, |ip| SocketAddr::new(ip, peer.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(xff: &[&str]) -> Request {
        Request {
            method: "GET".into(),
            target: "/".into(),
            minor_version: 1,
            headers: xff
                .iter()
                .map(|v| ("X-Forwarded-For".to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
        }
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn networks_parse_and_match() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        assert!(
            "::1"
                .parse::<Cidr>()
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::1/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_forwarded_client_is_believed_only_from_a_trusted_proxy() {
        let trusted = cidrs(&["127.0.0.1", "10.0.0.0/8"]);
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let forwarded = request(&["198.51.100.7"]);
        assert_eq!(
            client_addr(&trusted, proxy, &forwarded).ip().to_string(),
            "198.51.100.7"
        );
        assert_eq!(
            client_addr(&trusted, stranger, &forwarded),
            stranger,
            "spoofed header ignored"
        );
        assert_eq!(
            client_addr(&[], proxy, &forwarded),
            proxy,
            "no proxy trusted"
        );
        assert_eq!(client_addr(&trusted, proxy, &request(&[])), proxy);
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted = cidrs(&["127.0.0.1", "10.0.0.0/8"]);
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // A client that sends its own X-Forwarded-For cannot pick its address.
        let spoofed = request(&["1.1.1.1, 198.51.100.7, 10.0.0.2"]);
        assert_eq!(
            client_addr(&trusted, proxy, &spoofed).ip().to_string(),
            "198.51.100.7"
        );
        let split = request(&["1.1.1.1", "198.51.100.7"]);
        assert_eq!(
            client_addr(&trusted, proxy, &split).ip().to_string(),
            "198.51.100.7"
        );
    }
}
