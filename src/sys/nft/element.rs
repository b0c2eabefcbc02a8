//! What the agent puts in its nftables table: one set element per
//! mitigation, never a rule. An [`Element`] names the set and the key; it is
//! written to the ledger (so reconcile can rebuild it) and read back from
//! `nft -j list table` (so reconcile can compare).

use std::net::IpAddr;

use serde_json::{json, Value};

use crate::actions::net::{Proto, Sid};

/// Throttle rates the table has rules for, per second. An nft `limit` is a
/// constant of its rule, so per-address rates need either a rule per
/// address (the rule count would grow with the entities) or a fixed ladder
/// of rate classes, each a set of addresses plus one per-address meter.
/// This is the ladder: a 1-2-5 series, 19 classes from 1/s to 1 000 000/s.
pub const RATE_CLASSES: [u64; 19] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
    200_000, 500_000, 1_000_000,
];

/// The class enforced for a requested rate: the largest class not above it,
/// so a throttle never lets through more than was asked for.
pub fn rate_class(requested_per_sec: u64) -> u64 {
    RATE_CLASSES
        .iter()
        .rev()
        .copied()
        .find(|c| *c <= requested_per_sec)
        .unwrap_or(RATE_CLASSES[0])
}

/// One mitigation's element in the table `inet antibody`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Element {
    /// `isolate_socket`: drop everything from or to an address.
    Addr(IpAddr),
    /// `isolate_socket`: drop everything to (and from) a local port.
    Port(ProtoKey, u16),
    /// `isolate_socket`: drop TCP/UDP packets with ADDR:PORT on either end.
    AddrPort(IpAddr, u16),
    /// `throttle_entity` of an address: packets from it above `rate`/s drop.
    Throttle { addr: IpAddr, rate: u64 },
}

/// [`Proto`] with an order, so elements sort for stable batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtoKey {
    Tcp,
    Udp,
}

impl From<Proto> for ProtoKey {
    fn from(p: Proto) -> Self {
        match p {
            Proto::Tcp => ProtoKey::Tcp,
            Proto::Udp => ProtoKey::Udp,
        }
    }
}

impl ProtoKey {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtoKey::Tcp => "tcp",
            ProtoKey::Udp => "udp",
        }
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 on the wire: they go in the v4 sets.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

fn family(addr: IpAddr) -> char {
    if addr.is_ipv4() {
        '4'
    } else {
        '6'
    }
}

impl Element {
    pub fn isolate(sid: Sid) -> Element {
        match sid {
            Sid::Addr(a) => Element::Addr(canonical(a)),
            Sid::Port(proto, port) => Element::Port(proto.into(), port),
            Sid::AddrPort(a, port) => Element::AddrPort(canonical(a), port),
        }
    }

    pub fn throttle(addr: IpAddr, requested_per_sec: u64) -> Element {
        Element::Throttle {
            addr: canonical(addr),
            rate: rate_class(requested_per_sec),
        }
    }

    /// The set the element lives in.
    pub fn set_name(&self) -> String {
        match self {
            Element::Addr(a) => format!("addr{}", family(*a)),
            Element::Port(..) => "ports".into(),
            Element::AddrPort(a, _) => format!("peer{}", family(*a)),
            Element::Throttle { addr, rate } => format!("thr{}_{rate}", family(*addr)),
        }
    }

    /// The key as nft's JSON writes it (`"10.0.0.1"`, `{"concat":["tcp",80]}`).
    pub fn key(&self) -> Value {
        match self {
            Element::Addr(a) | Element::Throttle { addr: a, .. } => json!(a.to_string()),
            Element::Port(p, port) => json!({"concat": [p.as_str(), port]}),
            Element::AddrPort(a, port) => json!({"concat": [a.to_string(), port]}),
        }
    }

    /// Reads an element back from its set name and nft's JSON key.
    pub fn from_nft(set: &str, key: &Value) -> Option<Element> {
        let addr = |v: &Value| v.as_str()?.parse::<IpAddr>().ok().map(canonical);
        let port = |v: &Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
        let concat = |v: &Value| {
            let items = v.get("concat")?.as_array()?;
            (items.len() == 2).then(|| (items[0].clone(), items[1].clone()))
        };
        let element = match set {
            "addr4" | "addr6" => Element::Addr(addr(key)?),
            "ports" => {
                let (proto, p) = concat(key)?;
                // nft names the protocol from /etc/protocols and writes
                // its number where there is none (no `netbase`, as in
                // minimal images and containers): both are the same key.
                let proto = match (proto.as_str(), proto.as_u64()) {
                    (Some("tcp"), _) | (_, Some(6)) => ProtoKey::Tcp,
                    (Some("udp"), _) | (_, Some(17)) => ProtoKey::Udp,
                    _ => return None,
                };
                Element::Port(proto, port(&p)?)
            }
            "peer4" | "peer6" => {
                let (a, p) = concat(key)?;
                Element::AddrPort(addr(&a)?, port(&p)?)
            }
            _ => {
                let rate: u64 = set
                    .strip_prefix("thr4_")
                    .or_else(|| set.strip_prefix("thr6_"))?
                    .parse()
                    .ok()?;
                if !RATE_CLASSES.contains(&rate) {
                    return None;
                }
                Element::Throttle {
                    addr: addr(key)?,
                    rate,
                }
            }
        };
        // A key in the wrong family's set is not one the agent wrote.
        (element.set_name() == set).then_some(element)
    }

    /// How the element is recorded in the ledger (`changes.element`).
    pub fn to_record(&self) -> Value {
        json!({"set": self.set_name(), "elem": self.key()})
    }

    pub fn from_record(record: &Value) -> Option<Element> {
        Element::from_nft(record.get("set")?.as_str()?, record.get("elem")?)
    }
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Element::Addr(a) => write!(f, "addr {a}"),
            Element::Port(p, port) => write!(f, "{}:{port}", p.as_str()),
            Element::AddrPort(a, port) if a.is_ipv6() => write!(f, "[{a}]:{port}"),
            Element::AddrPort(a, port) => write!(f, "{a}:{port}"),
            Element::Throttle { addr, rate } => write!(f, "{addr} over {rate}/s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(text: &str) -> Element {
        Element::isolate(text.parse().unwrap())
    }

    #[test]
    fn sets_and_keys() {
        assert_eq!(sid("10.0.0.1").set_name(), "addr4");
        assert_eq!(sid("fd00::1").set_name(), "addr6");
        assert_eq!(sid("::ffff:10.0.0.1").set_name(), "addr4");
        assert_eq!(sid("tcp:8080").key(), json!({"concat": ["tcp", 8080]}));
        assert_eq!(sid("[fd00::1]:443").set_name(), "peer6");
        assert_eq!(
            Element::throttle("10.0.0.9".parse().unwrap(), 75).set_name(),
            "thr4_50"
        );
    }

    #[test]
    fn round_trips_through_nft_json_and_the_ledger() {
        for e in [
            sid("10.0.0.1"),
            sid("fd00::1"),
            sid("udp:53"),
            sid("10.0.0.1:443"),
            sid("[fd00::1]:443"),
            Element::throttle("fd00::2".parse().unwrap(), 1_000_000),
        ] {
            assert_eq!(Element::from_nft(&e.set_name(), &e.key()), Some(e));
            assert_eq!(Element::from_record(&e.to_record()), Some(e));
        }
    }

    #[test]
    fn a_protocol_nft_writes_as_a_number_is_the_same_element() {
        // nft -j on a system without /etc/protocols.
        assert_eq!(
            Element::from_nft("ports", &json!({"concat": [6, 8080]})),
            Some(sid("tcp:8080"))
        );
        assert_eq!(
            Element::from_nft("ports", &json!({"concat": [17, 53]})),
            Some(sid("udp:53"))
        );
        assert_eq!(
            Element::from_nft("ports", &json!({"concat": [132, 1]})),
            None
        );
    }

    #[test]
    fn foreign_keys_are_not_elements() {
        assert_eq!(Element::from_nft("addr4", &json!("fd00::1")), None);
        assert_eq!(Element::from_nft("addr6", &json!("10.0.0.1")), None);
        assert_eq!(Element::from_nft("thr4_7", &json!("10.0.0.1")), None);
        assert_eq!(
            Element::from_nft("ports", &json!({"concat": ["sctp", 1]})),
            None
        );
        assert_eq!(Element::from_nft("other", &json!("10.0.0.1")), None);
    }

    #[test]
    fn rate_classes_round_down() {
        assert_eq!(rate_class(1), 1);
        assert_eq!(rate_class(4), 2);
        assert_eq!(rate_class(5), 5);
        assert_eq!(rate_class(999_999), 500_000);
        assert_eq!(rate_class(1_000_000), 1_000_000);
        assert_eq!(rate_class(0), 1);
    }
}
