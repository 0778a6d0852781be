//! The egress filter: every connection a job makes goes to an address this module checked.
//!
//! A check of the link alone is not enough (SPEC "Security"): yt-dlp follows redirects,
//! resolves names again (DNS rebinding), fetches the segments a playlist lists and the media a
//! page links to, and runs ffmpeg that does the same. So yt-dlp is given `--proxy` pointing at
//! [`EgressProxy`], an HTTP proxy on loopback that resolves every host itself, refuses any
//! address of the refused ranges ([`AddressPolicy`]), and connects to the very address it
//! checked. Each run gets its own credentials ([`EgressSession`]), so no other local process
//! can use the proxy, and the session records what was refused so the job can tell the user.
//!
//! The link check uses the same pieces through [`check_host`], so a link is judged by the
//! same tables, allow-list and resolver as the traffic that follows it.
//!
//! This module stands alone (no `crate::` imports) so it can move as a unit.

mod policy;
mod proxy;
mod resolve;

use std::net::IpAddr;

pub use policy::{local_interface_addrs, parse_networks, AddressPolicy, IpNet, RefusedRange};
pub use proxy::{Connection, EgressProxy, EgressSession, ProxyLimits};
pub use resolve::{
    BoundedResolver, ResolveError, ResolveFuture, ResolveLimits, Resolver, SystemResolver,
};

/// Removes from a child's environment every variable that could route its traffic around the
/// proxy: each inherited `*_proxy` in any letter case (Python reads them case-insensitively) and
/// the usual names even if set on `cmd` explicitly.
///
/// yt-dlp's own requests ignore `no_proxy` once `--proxy` is given, but it passes the proxy to
/// ffmpeg as `http_proxy` in an environment copied from its own, and ffmpeg honours `no_proxy`:
/// with `no_proxy=*` inherited, ffmpeg fetched an HLS segment from a refused host directly.
/// Clearing the environment (`env_clear`) does the same job; this is for callers that inherit.
pub fn scrub_proxy_env(cmd: &mut tokio::process::Command) {
    const NAMES: &[&str] = &[
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "ftp_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
    ];
    for name in NAMES {
        cmd.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_lowercase()
            .ends_with("_proxy")
        {
            cmd.env_remove(name);
        }
    }
}

/// Errors setting the filter up. Per-request outcomes are [`Refusal`] and [`ResolveError`].
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// An entry of the allow-list is not a network. The config layer prefixes the key
    /// (`security.allow_networks`).
    #[error("entry {index} ({entry:?}) is not a valid network: {reason}")]
    InvalidNetwork {
        index: usize,
        entry: String,
        reason: String,
    },
    /// The machine's interfaces could not be listed, so "own addresses" are unknown.
    #[error("cannot list this machine's network interfaces: {0}")]
    Interfaces(#[source] std::io::Error),
    /// The system resolver configuration (`/etc/resolv.conf`) could not be read.
    #[error("cannot set up DNS resolution from the system configuration: {0}")]
    ResolverConfig(String),
    /// The proxy could not listen on loopback.
    #[error("cannot start the egress proxy on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
}

/// A request the filter refused. The job shows it to the user; `code()` is stable for the
/// message catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The host is, or resolves to, an address in a refused range.
    #[error("{host} points to a {range} address ({addr}), which is not allowed")]
    Address {
        host: String,
        addr: IpAddr,
        range: RefusedRange,
    },
    /// A scheme the filter cannot check (`ftp://`, `file://`, ... in a proxy request).
    #[error("{scheme}:// requests (to {host}) are not allowed: only http and https")]
    Scheme { host: String, scheme: String },
}

impl Refusal {
    /// The range's code (`loopback`, `private`, ...) or `unsupported_scheme`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Address { range, .. } => range.code(),
            Self::Scheme { .. } => "unsupported_scheme",
        }
    }

    pub fn host(&self) -> &str {
        match self {
            Self::Address { host, .. } | Self::Scheme { host, .. } => host,
        }
    }

    /// The refused address, when the refusal is about one.
    pub fn addr(&self) -> Option<IpAddr> {
        match self {
            Self::Address { addr, .. } => Some(*addr),
            Self::Scheme { .. } => None,
        }
    }
}

/// Why [`check_host`] said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Unresolvable(#[from] ResolveError),
}

/// Resolves `host` (IP literals and `localhost` without DNS) and checks every address it
/// has: one refused address refuses the host, so a name with a public and a private record
/// cannot slip through on the private one. Returns the checked addresses, the only ones a
/// caller may connect to.
pub async fn check_host(
    policy: &AddressPolicy,
    resolver: &BoundedResolver,
    host: url::Host<&str>,
) -> Result<Vec<IpAddr>, HostError> {
    let (name, addrs) = match host {
        url::Host::Ipv4(v4) => (v4.to_string(), vec![IpAddr::V4(v4)]),
        url::Host::Ipv6(v6) => (v6.to_string(), vec![IpAddr::V6(v6)]),
        url::Host::Domain(name) => (name.to_owned(), resolver.resolve(name).await?),
    };
    for &addr in &addrs {
        if let Err(range) = policy.check(addr) {
            return Err(Refusal::Address {
                host: name,
                addr,
                range,
            }
            .into());
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Answers every name with 127.0.0.2 and 10.0.0.1 when asked about `mixed.test`, else
    /// with nothing.
    struct Fixed;

    impl Resolver for Fixed {
        fn lookup<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
            Box::pin(async move {
                Ok(match name {
                    "mixed.test" => vec!["127.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap()],
                    "lan.test" => vec!["127.0.0.2".parse().unwrap()],
                    _ => vec![],
                })
            })
        }
    }

    #[tokio::test]
    async fn check_host_judges_every_address_the_link_check_would_use() {
        let policy = AddressPolicy::with_local_addrs(
            false,
            parse_networks(&["127.0.0.2/32".into()]).unwrap(),
            [],
        );
        let resolver = BoundedResolver::new(Arc::new(Fixed), ResolveLimits::default());
        let check = |url: &'static str| {
            let (policy, resolver) = (policy.clone(), resolver.clone());
            async move {
                let url = url::Url::parse(url).unwrap();
                check_host(&policy, &resolver, url.host().unwrap()).await
            }
        };
        assert_eq!(
            check("http://lan.test/").await.unwrap(),
            ["127.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(check("http://[::ffff:127.0.0.2]/").await.is_ok());
        let refused = |r: Result<Vec<IpAddr>, HostError>| match r {
            Err(HostError::Refused(refusal)) => (refusal.host().to_owned(), refusal.code()),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(check("http://mixed.test/").await),
            ("mixed.test".into(), "private")
        );
        assert_eq!(
            refused(check("http://localhost:8080/").await),
            ("localhost".into(), "loopback")
        );
        assert_eq!(
            refused(check("http://0x7f.1/").await),
            ("127.0.0.1".into(), "loopback")
        );
        assert_eq!(
            refused(check("https://[2001::1]/").await),
            ("2001::1".into(), "teredo")
        );
        assert!(matches!(
            check("http://nowhere.test/").await,
            Err(HostError::Unresolvable(ResolveError::NoAddresses { .. }))
        ));
    }
}
