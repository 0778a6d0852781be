//! Which addresses a job may contact.
//!
//! The tables are those of the link check (`netguard`), with the same `code()` strings so the
//! message catalog keeps working, plus what the link check missed: this machine's own interface
//! addresses (a service bound to `0.0.0.0` answers on the public address too), 168.63.129.16
//! (the cloud host's platform endpoint), the IPv4-translated prefix `::ffff:0:0:0/96` and Teredo
//! `2001::/32` (both can tunnel to an IPv4 address the tables would refuse).
//!
//! The decision is made on the address the filter will connect to, never on a name, so nothing
//! that happens between the check and the connection (rebinding, a second lookup) can change it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ipnet::IpNet;

use super::EgressError;

/// Why an address is refused. `code()` is stable, for logs and the message catalog; the first
/// eleven are the link check's codes unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusedRange {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7, fec0::/10, 64:ff9b:1::/48.
    Private,
    /// 169.254/16 (cloud metadata lives here), fe80::/10.
    LinkLocal,
    /// 224/4, ff00::/8.
    Multicast,
    /// 0.0.0.0, ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// 100.64/10, carrier-grade NAT.
    SharedAddressSpace,
    /// 0.0.0.0/8 other than 0.0.0.0 itself.
    ThisNetwork,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18/15, 2001:2::/48.
    Benchmarking,
    /// Other IANA reservations that are never a public web server
    /// (192.0.0/24, 192.88.99/24, 240/4, ::/96, 100::/64).
    Reserved,
    /// An address of one of this machine's own interfaces.
    LocalInterface,
    /// 168.63.129.16: the cloud host's platform service (DNS, health, agent); reachable from
    /// every VM of that cloud, never a media host.
    HostPlatform,
    /// `::ffff:0:0:0/96`, the SIIT IPv4-translated prefix: a translator turns it into IPv4.
    Ipv4Translated,
    /// `2001::/32`: Teredo tunnels to an IPv4 address embedded (obfuscated) in the address.
    Teredo,
}

impl RefusedRange {
    /// Stable machine name.
    pub fn code(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link_local",
            Self::Multicast => "multicast",
            Self::Unspecified => "unspecified",
            Self::Broadcast => "broadcast",
            Self::SharedAddressSpace => "shared_address_space",
            Self::ThisNetwork => "this_network",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::Reserved => "reserved",
            Self::LocalInterface => "local_interface",
            Self::HostPlatform => "host_platform",
            Self::Ipv4Translated => "ipv4_translated",
            Self::Teredo => "teredo",
        }
    }
}

impl std::fmt::Display for RefusedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Loopback => "loopback",
            Self::Private => "private network",
            Self::LinkLocal => "link-local",
            Self::Multicast => "multicast",
            Self::Unspecified => "unspecified address",
            Self::Broadcast => "broadcast",
            Self::SharedAddressSpace => "carrier-grade NAT",
            Self::ThisNetwork => "\"this network\"",
            Self::Documentation => "documentation range",
            Self::Benchmarking => "benchmarking range",
            Self::Reserved => "reserved range",
            Self::LocalInterface => "this machine's own",
            Self::HostPlatform => "cloud platform service",
            Self::Ipv4Translated => "IPv4-translated",
            Self::Teredo => "Teredo tunnel",
        })
    }
}

/// Decides whether an address may be contacted. Cheap to clone; build one at start-up (it
/// enumerates the interfaces once) and share it.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    allow_private: bool,
    allow_networks: Vec<IpNet>,
    local_addrs: HashSet<IpAddr>,
}

impl AddressPolicy {
    /// A policy with this machine's interface addresses as they are now.
    ///
    /// Fails only when the interfaces cannot be listed: refusing "own addresses" without
    /// knowing them would be a silent hole, so that is an error, not an empty list.
    pub fn new(allow_private: bool, allow_networks: Vec<IpNet>) -> Result<Self, EgressError> {
        Ok(Self::with_local_addrs(
            allow_private,
            allow_networks,
            local_interface_addrs()?,
        ))
    }

    /// A policy with an explicit list of "own" addresses (tests, or a caller that listed the
    /// interfaces itself).
    pub fn with_local_addrs(
        allow_private: bool,
        allow_networks: Vec<IpNet>,
        local_addrs: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        Self {
            allow_private,
            allow_networks,
            local_addrs: local_addrs
                .into_iter()
                .map(|ip| ip.to_canonical())
                .collect(),
        }
    }

    /// Whether everything is allowed (`allow_private_networks = true`).
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// The addresses treated as this machine's own.
    pub fn local_addrs(&self) -> impl Iterator<Item = &IpAddr> {
        self.local_addrs.iter()
    }

    /// `Ok` when `ip` may be contacted, else the range that refuses it.
    ///
    /// Order: `allow_private` allows everything; an IPv4-mapped address is judged as the IPv4
    /// address it is (a dual-stack socket connects there); `allow_networks` wins over the
    /// tables, including this machine's own addresses, because it is the operator's explicit
    /// word; then the tables; then the interface list.
    pub fn check(&self, ip: IpAddr) -> Result<(), RefusedRange> {
        if self.allow_private {
            return Ok(());
        }
        let ip = ip.to_canonical();
        if self.allow_networks.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match self.classify(ip) {
            Some(range) => Err(range),
            None => Ok(()),
        }
    }

    /// The refused range `ip` belongs to, ignoring `allow_private` and `allow_networks`.
    pub fn classify(&self, ip: IpAddr) -> Option<RefusedRange> {
        let own = |v4: Ipv4Addr| {
            self.local_addrs
                .contains(&IpAddr::V4(v4))
                .then_some(RefusedRange::LocalInterface)
        };
        match ip.to_canonical() {
            IpAddr::V4(v4) => classify_v4(v4).or_else(|| own(v4)),
            IpAddr::V6(v6) => match classify_v6(v6) {
                V6::Refused(range) => Some(range),
                V6::Embedded(v4) => classify_v4(v4).or_else(|| own(v4)),
                V6::Public => self
                    .local_addrs
                    .contains(&IpAddr::V6(v6))
                    .then_some(RefusedRange::LocalInterface),
            },
        }
    }
}

/// Every address of every interface of this machine, loopback included.
pub fn local_interface_addrs() -> Result<Vec<IpAddr>, EgressError> {
    let interfaces = if_addrs::get_if_addrs().map_err(EgressError::Interfaces)?;
    Ok(interfaces.iter().map(|i| i.ip()).collect())
}

/// Parses `security.allow_networks`: CIDRs (`192.168.1.0/24`, `fd00::/8`) or single addresses
/// (taken as `/32` or `/128`).
///
/// A network with host bits set (`192.168.1.5/24`) is refused rather than silently widened or
/// narrowed: the operator meant either the host or the network, and guessing wrong opens or
/// closes a hole without a word.
pub fn parse_networks(entries: &[String]) -> Result<Vec<IpNet>, EgressError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            parse_network(entry).map_err(|reason| EgressError::InvalidNetwork {
                index,
                entry: entry.clone(),
                reason,
            })
        })
        .collect()
}

fn parse_network(entry: &str) -> Result<IpNet, String> {
    let text = entry.trim();
    if text.is_empty() {
        return Err("empty entry".into());
    }
    if !text.contains('/') {
        return text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| "not an IP address or CIDR network".into());
    }
    let net: IpNet = text.parse().map_err(|_| {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        match (addr.parse::<IpAddr>(), prefix.parse::<u8>()) {
            (Err(_), _) => format!("'{addr}' is not an IP address"),
            (Ok(ip), Ok(p)) => format!(
                "prefix length {p} is longer than {}",
                if ip.is_ipv4() { 32 } else { 128 }
            ),
            (Ok(_), Err(_)) => format!("'{prefix}' is not a prefix length"),
        }
    })?;
    if net.trunc() != net {
        return Err(format!(
            "host bits are set: write {} for the network or {}/{} for the host",
            net.trunc(),
            net.addr(),
            net.max_prefix_len()
        ));
    }
    Ok(net)
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<RefusedRange> {
    use RefusedRange::*;
    // Order matters: specific addresses before the blocks that contain them.
    let table: &[([u8; 4], u32, RefusedRange)] = &[
        ([0, 0, 0, 0], 32, Unspecified),
        ([0, 0, 0, 0], 8, ThisNetwork),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, SharedAddressSpace),
        ([127, 0, 0, 0], 8, Loopback),
        ([168, 63, 129, 16], 32, HostPlatform),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, Reserved),
        ([192, 0, 2, 0], 24, Documentation),
        ([192, 88, 99, 0], 24, Reserved),
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Benchmarking),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([224, 0, 0, 0], 4, Multicast),
        ([255, 255, 255, 255], 32, Broadcast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|&(_, _, range)| range)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// What an IPv6 address is, before the interface list is consulted.
enum V6 {
    Refused(RefusedRange),
    /// The packet really goes to this IPv4 address (mapped, compatible, NAT64, 6to4).
    Embedded(Ipv4Addr),
    Public,
}

fn classify_v6(ip: Ipv6Addr) -> V6 {
    use RefusedRange::*;
    let bits = u128::from(ip);
    let low_v4 = Ipv4Addr::from(bits as u32);
    let net6 = |a, b, c| Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0);
    if ip.is_unspecified() {
        return V6::Refused(Unspecified);
    }
    if ip.is_loopback() {
        return V6::Refused(Loopback);
    }
    // ::ffff:a.b.c.d reaches a.b.c.d on a dual-stack socket.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return V6::Embedded(v4);
    }
    // ::ffff:0:a.b.c.d (SIIT): only a translator gives it meaning, never a public web server.
    if in_v6(ip, Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96) {
        return V6::Refused(Ipv4Translated);
    }
    // Deprecated IPv4-compatible ::a.b.c.d: refused, with the embedded range when it has one.
    if in_v6(ip, Ipv6Addr::UNSPECIFIED, 96) {
        return V6::Refused(classify_v4(low_v4).unwrap_or(Reserved));
    }
    // NAT64 well-known prefix: public embedded addresses are legitimate (IPv6-only hosts).
    if in_v6(ip, net6(0x64, 0xff9b, 0), 96) {
        return V6::Embedded(low_v4);
    }
    // 6to4: 2002:AABB:CCDD::/48 tunnels to AA.BB.CC.DD.
    if in_v6(ip, net6(0x2002, 0, 0), 16) {
        return V6::Embedded(Ipv4Addr::from((bits >> 80) as u32));
    }
    // Every listed network is zero past its third segment.
    let table: &[(Ipv6Addr, u32, RefusedRange)] = &[
        (net6(0x64, 0xff9b, 1), 48, Private),
        (net6(0x100, 0, 0), 64, Reserved),
        (net6(0x2001, 0, 0), 32, Teredo),
        (net6(0x2001, 2, 0), 48, Benchmarking),
        (net6(0x2001, 0xdb8, 0), 32, Documentation),
        (net6(0x3fff, 0, 0), 20, Documentation),
        (net6(0xfc00, 0, 0), 7, Private),
        (net6(0xfe80, 0, 0), 10, LinkLocal),
        (net6(0xfec0, 0, 0), 10, Private),
        (net6(0xff00, 0, 0), 8, Multicast),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map_or(V6::Public, |&(_, _, range)| V6::Refused(range))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RefusedRange::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// A policy whose "own" addresses are a public pair, so the interface rule is visible apart
    /// from the tables.
    fn policy(allow: &[&str]) -> AddressPolicy {
        let nets = parse_networks(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("valid networks");
        AddressPolicy::with_local_addrs(false, nets, [ip("93.184.216.34"), ip("2a00:1450::5")])
    }

    #[test]
    fn every_range_in_both_families() {
        let p = policy(&[]);
        let refused = [
            // IPv4, each block at its edges.
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", ThisNetwork),
            ("0.255.255.255", ThisNetwork),
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.254", SharedAddressSpace),
            ("127.0.0.1", Loopback),
            ("127.0.0.2", Loopback),
            ("127.255.255.254", Loopback),
            ("168.63.129.16", HostPlatform),
            ("169.254.169.254", LinkLocal),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.0.0.8", Reserved),
            ("192.0.2.1", Documentation),
            ("192.88.99.1", Reserved),
            ("192.168.1.1", Private),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.1", Benchmarking),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            ("93.184.216.34", LocalInterface),
            // IPv6.
            ("::", Unspecified),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:168.63.129.16", HostPlatform),
            ("::ffff:93.184.216.34", LocalInterface),
            ("::ffff:0:8.8.8.8", Ipv4Translated),
            ("::ffff:0:127.0.0.1", Ipv4Translated),
            ("::127.0.0.1", Loopback),
            ("::8.8.8.8", Reserved),
            ("64:ff9b::192.168.0.1", Private),
            ("64:ff9b::93.184.216.34", LocalInterface),
            ("64:ff9b:1::1", Private),
            ("2002:7f00:1::1", Loopback),
            ("2002:a9fe:a9fe::1", LinkLocal),
            ("100::1", Reserved),
            ("2001::1", Teredo),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Teredo),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Teredo),
            ("2001:2::1", Benchmarking),
            ("2001:2:0:ffff::1", Benchmarking),
            ("2001:db8::1", Documentation),
            ("2001:db8:ffff::1", Documentation),
            ("3fff::1", Documentation),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Private),
            ("ff02::1", Multicast),
            ("2a00:1450::5", LocalInterface),
        ];
        for (addr, range) in refused {
            assert_eq!(p.check(ip(addr)), Err(range), "{addr}");
            assert_eq!(p.classify(ip(addr)), Some(range), "{addr}");
        }
        // Neighbours just outside the blocks are public.
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "168.63.129.15",
            "168.63.129.17",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "192.167.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "93.184.216.35",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            "2001:1::1",
            "2001:3::1",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "2606:4700:4700::1111",
            "2a00:1450::6",
        ] {
            assert_eq!(p.check(ip(addr)), Ok(()), "{addr}");
            assert_eq!(p.classify(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn allow_networks_open_exactly_their_addresses() {
        let p = policy(&["127.0.0.2/32", "192.168.1.0/24", "fd00::/64", "10.9.8.7"]);
        for addr in [
            "127.0.0.2",
            "::ffff:127.0.0.2",
            "192.168.1.0",
            "192.168.1.200",
            "fd00::1",
            "fd00::ffff:1",
            "10.9.8.7",
        ] {
            assert_eq!(p.check(ip(addr)), Ok(()), "{addr}");
            // Still in its range: the allow-list is an exception, not a reclassification.
            assert!(p.classify(ip(addr)).is_some(), "{addr}");
        }
        for (addr, range) in [
            ("127.0.0.1", Loopback),
            ("127.0.0.3", Loopback),
            ("192.168.2.1", Private),
            ("fd00:0:0:1::1", Private),
            ("10.9.8.6", Private),
            ("::1", Loopback),
            // An embedded form of an allowed address is judged by the tables: only the mapped
            // form is the same socket destination.
            ("64:ff9b::192.168.1.5", Private),
        ] {
            assert_eq!(p.check(ip(addr)), Err(range), "{addr}");
        }
        // The operator's allow-list wins over the interface rule too.
        let own = AddressPolicy::with_local_addrs(
            false,
            parse_networks(&["93.184.216.34/32".into()]).unwrap(),
            [ip("93.184.216.34")],
        );
        assert_eq!(own.check(ip("93.184.216.34")), Ok(()));
    }

    #[test]
    fn allow_private_allows_everything() {
        let p = AddressPolicy::with_local_addrs(true, Vec::new(), [ip("8.8.8.8")]);
        for addr in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "2001::1",
            "8.8.8.8",
            "::",
        ] {
            assert_eq!(p.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn own_interfaces_are_listed_and_refused() {
        let p = AddressPolicy::new(false, Vec::new()).expect("interfaces");
        let own: Vec<IpAddr> = p.local_addrs().copied().collect();
        // Every Linux machine has a loopback interface; seeing it proves enumeration works.
        assert!(own.contains(&ip("127.0.0.1")), "{own:?}");
        for addr in own {
            assert!(p.check(addr).is_err(), "{addr} is our own address");
        }
    }

    #[test]
    fn parse_networks_names_the_bad_entry() {
        let ok = parse_networks(&[
            "127.0.0.2/32".into(),
            " 10.0.0.0/8 ".into(),
            "fd00::/8".into(),
            "192.168.1.20".into(),
            "::1".into(),
        ])
        .unwrap();
        assert_eq!(
            ok.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "127.0.0.2/32",
                "10.0.0.0/8",
                "fd00::/8",
                "192.168.1.20/32",
                "::1/128"
            ]
        );
        for (bad, why) in [
            ("", "empty"),
            ("10.0.0.0/33", "prefix length 33 is longer than 32"),
            ("fd00::/129", "prefix length 129 is longer than 128"),
            ("10.0.0/8", "is not an IP address"),
            ("10.0.0.0/x", "not a prefix length"),
            ("example.com", "not an IP address or CIDR network"),
            ("192.168.1.5/24", "host bits are set: write 192.168.1.0/24"),
        ] {
            let entries = vec!["10.0.0.0/8".to_string(), bad.to_string()];
            let err = parse_networks(&entries).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, EgressError::InvalidNetwork { index: 1, entry, .. } if entry == bad),
                "{err:?}"
            );
            assert!(text.contains(why), "{bad:?}: {text}");
            assert!(text.contains(&format!("{bad:?}")), "{bad:?}: {text}");
        }
    }
}
