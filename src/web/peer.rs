//! Who the client is: the TCP peer, or, when that peer is a proxy named in
//! `trusted_proxies`, the address the proxy put in `X-Forwarded-For`. The
//! slow-down and the journal use it; a client can never name its own
//! address, since the header is read only from a trusted proxy, and only
//! as far as the chain of trusted proxies goes.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use ipnet::IpNet;

use super::App;

/// Parses `trusted_proxies` entries: addresses or CIDR prefixes.
pub fn parse_trusted(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|e| {
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("trusted_proxies: {e:?} is not an address or a CIDR prefix"))
        })
        .collect()
}

/// The client's address. `forwarded_for` is every `X-Forwarded-For` value
/// in order; each proxy appends the address it got the request from, so
/// the chain is read from the right, past the trusted proxies.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: the same
    // client, which `127.0.0.1` in trusted_proxies (and the slow-down's
    // keys) must match.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = forwarded_for
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A hop that is not an address: nothing left of it is
            // trustworthy; the last good hop is the client.
            None => break,
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`203.0.113.5:4711`, `[2001:db8::1]:443`, as some proxies write them),
/// IPv4-mapped IPv6 taken as the IPv4 address it is.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            // "[2001:db8::1]" without a port.
            hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
        })?;
    Some(ip.to_canonical())
}

/// The client's address, as an extractor.
pub struct Client(pub IpAddr);

impl FromRequestParts<Arc<App>> for Client {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Infallible> {
        // Always there: the server is made with connect info.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip().to_canonical());
        if app.trusted_proxies.is_empty() {
            return Ok(Client(peer));
        }
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Ok(Client(client_ip(peer, &forwarded, &app.trusted_proxies)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted = parse_trusted(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        // Not through a trusted proxy: the header is the client's own word.
        assert_eq!(
            client_ip(ip("192.0.2.9"), &["203.0.113.5"], &trusted),
            ip("192.0.2.9")
        );
        // nginx on loopback: the address it appended.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["203.0.113.5"], &trusted),
            ip("203.0.113.5")
        );
        // A forged entry left of the real one is skipped.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["198.51.100.1, 203.0.113.5"], &trusted),
            ip("203.0.113.5")
        );
        // Through two trusted proxies, in two headers.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["203.0.113.5", "10.1.2.3"], &trusted),
            ip("203.0.113.5")
        );
        // Garbage: the last good hop.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["nonsense, 10.1.2.3"], &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &[], &trusted), ip("127.0.0.1"));
        // Through an IPv4-mapped IPv6 peer (a dual-stack listener), with
        // ports and mapped addresses in the hops.
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &["203.0.113.5:4711"], &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &["::ffff:203.0.113.5"], &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["[2001:db8::1]:443"], &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["[2001:db8::1]"], &trusted),
            ip("2001:db8::1")
        );
        // A mapped untrusted peer is still untrusted, and is named as IPv4.
        assert_eq!(
            client_ip(ip("::ffff:192.0.2.9"), &["203.0.113.5"], &trusted),
            ip("192.0.2.9")
        );
        // A trusted proxy named by a mapped address is trusted too.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                &["203.0.113.5", "::ffff:10.1.2.3"],
                &trusted
            ),
            ip("203.0.113.5")
        );
        assert!(parse_trusted(&["not an address".into()]).is_err());
    }
}
