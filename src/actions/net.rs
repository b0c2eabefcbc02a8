//! Network targets: socket ids (`tcp:PORT`, `udp:PORT`, `ADDR`, `ADDR:PORT`,
//! `[V6]:PORT`) and address entities (`ip:ADDR` or a bare address), parsed
//! strictly, and the addresses and ports no action may cut off.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sid {
    /// Every packet to a local port of one protocol.
    Port(Proto, u16),
    /// Every packet from or to an address.
    Addr(IpAddr),
    /// Packets between us and one remote address·port (TCP or UDP).
    AddrPort(IpAddr, u16),
}

pub const SID_FORMS: &str = "tcp:PORT, udp:PORT, ADDR, ADDR:PORT or [V6ADDR]:PORT";

fn parse_port(text: &str) -> Option<u16> {
    // No sign, no leading zeros, no spaces: exactly what a person would type.
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

impl FromStr for Sid {
    type Err = String;

    fn from_str(text: &str) -> Result<Sid, String> {
        let bad = || format!("{text:?} is not a socket id; expected {SID_FORMS}");
        for (prefix, proto) in [("tcp:", Proto::Tcp), ("udp:", Proto::Udp)] {
            if let Some(port) = text.strip_prefix(prefix) {
                return parse_port(port)
                    .map(|p| Sid::Port(proto, p))
                    .ok_or_else(bad);
            }
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (addr, port) = rest.split_once("]:").ok_or_else(bad)?;
            let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| bad())?;
            return parse_port(port)
                .map(|p| Sid::AddrPort(IpAddr::V6(addr), p))
                .ok_or_else(bad);
        }
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Ok(Sid::Addr(addr));
        }
        // Only IPv4 may carry a bare `:PORT`; IPv6 needs brackets.
        let (addr, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
        parse_port(port)
            .map(|p| Sid::AddrPort(IpAddr::V4(addr), p))
            .ok_or_else(bad)
    }
}

impl Sid {
    pub fn address(&self) -> Option<IpAddr> {
        match self {
            Sid::Addr(a) | Sid::AddrPort(a, _) => Some(*a),
            Sid::Port(..) => None,
        }
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            Sid::Port(_, p) | Sid::AddrPort(_, p) => Some(*p),
            Sid::Addr(_) => None,
        }
    }

    /// The scheduling target: plans touching the same address or port run in order.
    pub fn target(&self) -> String {
        match self {
            Sid::Port(proto, p) => format!("port:{}/{p}", proto.as_str()),
            Sid::Addr(a) => format!("addr:{a}"),
            Sid::AddrPort(a, p) => format!("addr:{a}:{p}"),
        }
    }
}

/// `ip:ADDR` or a bare address.
pub fn parse_address_entity(text: &str) -> Option<IpAddr> {
    text.strip_prefix("ip:").unwrap_or(text).parse().ok()
}

/// Why `addr` may never be isolated or throttled, if it may not: loopback,
/// the unspecified address, `protect.addresses`, and the default gateways
/// of the network namespace the agent runs in (read from the kernel, cached
/// for a second; the engine validates again at apply).
pub fn protected_address(addr: IpAddr, configured: &[String]) -> Option<String> {
    match crate::sys::nft::routes::default_gateways() {
        Ok(gateways) => protected_address_among(addr, configured, &gateways),
        // Refused rather than risked: the guard cannot tell.
        Err(e) => Some(format!(
            "the routing table cannot be read ({e}), so {addr} cannot be ruled out as the host's default gateway"
        )),
    }
}

/// A `protect.addresses` entry: an address (`10.0.0.5`, `fd00::5`) or a
/// CIDR prefix (`10.0.0.0/8`, `fd00::/8`; host bits are ignored, as
/// `10.1.2.3/8` means `10.0.0.0/8`). Anything else is an error, never
/// skipped: a guard entry that silently does nothing fails open.
pub fn address_prefix(entry: &str) -> Result<IpNet, String> {
    let net = match entry.parse::<IpAddr>() {
        Ok(addr) => IpNet::from(addr),
        Err(_) => entry.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| {
            format!("{entry:?} is neither an address nor a CIDR prefix (such as 10.0.0.0/8)")
        })?,
    };
    // An IPv4-mapped entry (`::ffff:10.0.0.5`, `::ffff:10.0.0.0/104`)
    // protects the IPv4 addresses it maps, as addresses are compared.
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        other => other,
    })
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) as the IPv4 address it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

/// [`protected_address`] with the gateways given: pure. `configured`
/// entries were checked when the config was loaded; one that does not
/// parse here protects everything rather than nothing.
pub fn protected_address_among(
    addr: IpAddr,
    configured: &[String],
    gateways: &[IpAddr],
) -> Option<String> {
    let addr = canonical(addr);
    if addr.is_loopback() {
        return Some(format!("{addr} is a loopback address"));
    }
    if addr.is_unspecified() {
        return Some(format!("{addr} is the unspecified address"));
    }
    if gateways.iter().any(|g| canonical(*g) == addr) {
        return Some(format!(
            "{addr} is the host's default gateway; cutting it off would cut the host off"
        ));
    }
    configured
        .iter()
        .find_map(|entry| match address_prefix(entry) {
            Ok(net) if net.contains(&addr) => {
                Some(format!("{addr} is listed in protect.addresses ({entry})"))
            }
            Ok(_) => None,
            Err(why) => Some(format!("protect.addresses cannot be read: {why}")),
        })
}

pub fn protected_port(port: u16, configured: &[u16]) -> Option<String> {
    configured
        .contains(&port)
        .then(|| format!("port {port} is listed in protect.ports"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("tcp:8080".parse(), Ok(Sid::Port(Proto::Tcp, 8080)));
        assert_eq!("udp:53".parse(), Ok(Sid::Port(Proto::Udp, 53)));
        assert_eq!("10.0.0.1".parse::<Sid>().unwrap().target(), "addr:10.0.0.1");
        assert_eq!("10.0.0.1:443".parse::<Sid>().unwrap().port(), Some(443));
        assert_eq!("fd00::1".parse::<Sid>().unwrap().target(), "addr:fd00::1");
        assert_eq!(
            "[fd00::1]:443".parse::<Sid>().unwrap().target(),
            "addr:fd00::1:443"
        );
    }

    #[test]
    fn refuses_near_misses() {
        for bad in [
            "",
            "tcp:",
            "tcp:0",
            "tcp:65536",
            "tcp:080",
            "tcp:+80",
            "sctp:80",
            "10.0.0.1:",
            "10.0.0.256",
            "fd00::1:443:x",
            "[fd00::1]",
            "[10.0.0.1]:80",
            "host:80",
            "tcp: 80",
            "10.0.0.1:80:1",
        ] {
            assert!(bad.parse::<Sid>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn protections() {
        assert!(protected_address("127.0.0.5".parse().unwrap(), &[]).is_some());
        assert!(protected_address("::1".parse().unwrap(), &[]).is_some());
        assert!(protected_address("::ffff:127.0.0.1".parse().unwrap(), &[]).is_some());
        assert!(protected_address("10.1.1.1".parse().unwrap(), &["10.1.1.1".into()]).is_some());
        assert!(protected_address("10.1.1.2".parse().unwrap(), &["10.1.1.1".into()]).is_none());
        assert!(protected_port(22, &[22]).is_some());
        let gw: IpAddr = "192.168.2.1".parse().unwrap();
        assert!(protected_address_among(gw, &[], &[gw])
            .unwrap()
            .contains("default gateway"));
        assert!(
            protected_address_among("::ffff:192.168.2.1".parse().unwrap(), &[], &[gw]).is_some()
        );
        assert!(protected_address_among("192.168.2.2".parse().unwrap(), &[], &[gw]).is_none());
    }

    #[test]
    fn protected_addresses_take_cidr_prefixes_of_both_families() {
        let configured = [
            "10.0.0.0/8".to_string(),
            "fd00::/16".into(),
            "192.0.2.7".into(),
        ];
        let protected = |a: &str| protected_address_among(a.parse().unwrap(), &configured, &[]);
        for inside in ["10.200.3.4", "::ffff:10.0.0.1", "fd00:1::9", "192.0.2.7"] {
            let why = protected(inside).unwrap_or_else(|| panic!("{inside} not protected"));
            assert!(why.contains("listed in protect.addresses"), "{why}");
        }
        for outside in ["11.0.0.1", "fd01::1", "192.0.2.8"] {
            assert_eq!(protected(outside), None, "{outside}");
        }
        assert_eq!(
            address_prefix("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        // IPv4-mapped entries protect the IPv4 addresses they map.
        let mapped = [
            "::ffff:192.0.2.9".to_string(),
            "::ffff:198.51.100.0/120".into(),
        ];
        for a in ["192.0.2.9", "198.51.100.77", "::ffff:198.51.100.1"] {
            assert!(
                protected_address_among(a.parse().unwrap(), &mapped, &[]).is_some(),
                "{a}"
            );
        }
        assert!(protected_address_among("198.51.101.1".parse().unwrap(), &mapped, &[]).is_none());
        for bad in [
            "db.example",
            "10.0.0.0/33",
            "10.0.0.0/",
            "fd00::/129",
            "",
            "10.0.0.1 ",
        ] {
            assert!(address_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }
}
