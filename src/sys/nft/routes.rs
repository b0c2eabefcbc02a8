//! The host's default gateways, read from the kernel's routing tables of
//! the network namespace the agent runs in. Cutting off the gateway would
//! cut the host off, so it is never a target.
//!
//! The tables are read through `/proc/self/net/`, not `/proc/net/`: the
//! shipped unit's `ProcSubset=pid` hides `/proc/net`, and a guard that
//! quietly read nothing would let the gateway through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Validation runs for every alert; routes change rarely. A second is short
/// enough that a new gateway is protected before anyone could isolate it
/// on purpose, and long enough that a storm of alerts reads the file once.
const CACHE_FOR: Duration = Duration::from_secs(1);

const IPV4_ROUTES: &str = "/proc/self/net/route";
/// Absent when the kernel runs without IPv6: then there is no IPv6 gateway.
const IPV6_ROUTES: &str = "/proc/self/net/ipv6_route";

static CACHE: Mutex<Option<(Instant, Vec<IpAddr>)>> = Mutex::new(None);

/// Default gateways of both families (cached for a second). An error when
/// a routing table cannot be read: the caller must then assume any
/// address may be the gateway.
pub fn default_gateways() -> Result<Vec<IpAddr>, String> {
    let mut cache = crate::sync::lock(&CACHE);
    if let Some((at, gateways)) = cache.as_ref() {
        if at.elapsed() < CACHE_FOR {
            return Ok(gateways.clone());
        }
    }
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
    let mut gateways = ipv4_default_gateways(&read(IPV4_ROUTES)?);
    match std::fs::read_to_string(IPV6_ROUTES) {
        Ok(table) => gateways.extend(ipv6_default_gateways(&table)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{IPV6_ROUTES}: {e}")),
    }
    *cache = Some((Instant::now(), gateways.clone()));
    Ok(gateways)
}

/// `/proc/net/route`: `Iface Destination Gateway Flags … Mask …`, addresses
/// as little-endian hex. A default route has destination and mask 0.
pub fn ipv4_default_gateways(table: &str) -> Vec<IpAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (dest, gateway, mask) = (cols.get(1)?, cols.get(2)?, cols.get(7)?);
            if *dest != "00000000" || *mask != "00000000" {
                return None;
            }
            let raw = u32::from_str_radix(gateway, 16).ok()?;
            // The kernel prints the network-order word as a host integer.
            (raw != 0).then(|| IpAddr::V4(Ipv4Addr::from(raw.to_ne_bytes())))
        })
        .collect()
}

/// `/proc/net/ipv6_route`: `dest plen src plen nexthop metric refcnt use
/// flags iface`, addresses as 32 hex digits in network order.
pub fn ipv6_default_gateways(table: &str) -> Vec<IpAddr> {
    table
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (dest, plen, nexthop) = (cols.first()?, cols.get(1)?, cols.get(4)?);
            if dest.bytes().any(|b| b != b'0') || *plen != "00" {
                return None;
            }
            let raw = u128::from_str_radix(nexthop, 16).ok()?;
            (raw != 0).then(|| IpAddr::V6(Ipv6Addr::from(raw)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_of_this_process_are_readable() {
        // What the agent reads under ProcSubset=pid, where /proc/net is hidden.
        assert!(default_gateways().is_ok(), "{:?}", default_gateways());
    }

    #[test]
    fn reads_the_ipv4_default_route() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            ipv4_default_gateways(table),
            vec!["192.168.2.1".parse::<IpAddr>().unwrap()]
        );
        assert!(ipv4_default_gateways("Iface\n").is_empty());
    }

    #[test]
    fn reads_the_ipv6_default_route() {
        let table = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                     fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n\
                     00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(
            ipv6_default_gateways(table),
            vec!["fe80::1".parse::<IpAddr>().unwrap()]
        );
    }
}
