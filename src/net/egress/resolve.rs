//! Name resolution for the egress filter and the link check.
//!
//! `tokio::net::lookup_host` runs `getaddrinfo` on tokio's blocking pool, the pool the database
//! uses: a domain whose DNS never answers would park those threads and stall database writes,
//! lease renewals and `/healthz`. So lookups here are asynchronous DNS over tokio's sockets
//! ([`SystemResolver`], hickory reading `/etc/resolv.conf` and `/etc/hosts`), and every lookup
//! goes through [`BoundedResolver`], which adds a deadline and a cap on lookups in flight.
//!
//! IP literals and the `localhost` names never reach DNS: a literal is its own answer, and
//! RFC 6761 reserves `localhost` for loopback (some resolvers forward it to the network).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, ResolveHosts};
use hickory_resolver::TokioResolver;
use tokio::sync::Semaphore;

use super::EgressError;

/// The future a [`Resolver`] returns.
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, ResolveError>> + Send + 'a>>;

/// Looks up the addresses of a DNS name. Implemented by [`SystemResolver`]; tests pass stubs.
///
/// Callers go through [`BoundedResolver`], so an implementation needs no timeout of its own and
/// is never asked about an IP literal or a `localhost` name.
pub trait Resolver: Send + Sync + 'static {
    /// Every address of `name` (A and AAAA). An empty list is an error the caller reports.
    fn lookup<'a>(&'a self, name: &'a str) -> ResolveFuture<'a>;
}

/// Why a host could not be resolved. Not a refusal: the host may be fine and DNS down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name exists in no form DNS can answer (NXDOMAIN, no A/AAAA records).
    #[error("{host} has no address")]
    NoAddresses { host: String },
    /// DNS (or the wait for a free lookup slot) took longer than the deadline.
    #[error("looking up {host} took longer than {} s", timeout.as_secs_f32())]
    TimedOut { host: String, timeout: Duration },
    /// Anything else the resolver reported (servers unreachable, bad answer, bad name).
    #[error("could not resolve {host}: {reason}")]
    Failed { host: String, reason: String },
}

/// Limits on lookups, shared by every caller of one [`BoundedResolver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolveLimits {
    /// Deadline for one lookup, including the wait for a slot.
    pub timeout: Duration,
    /// Lookups in flight at once; more wait for a slot (within their deadline).
    pub max_concurrent: usize,
}

impl Default for ResolveLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_concurrent: 32,
        }
    }
}

/// The system's DNS configuration, queried asynchronously (never on the blocking pool).
pub struct SystemResolver {
    inner: TokioResolver,
}

impl SystemResolver {
    /// Reads `/etc/resolv.conf` and `/etc/hosts` once. Both A and AAAA are asked for, so the
    /// policy sees every address a name has, not just the first family.
    pub fn from_system() -> Result<Self, EgressError> {
        let mut builder = TokioResolver::builder_tokio()
            .map_err(|e| EgressError::ResolverConfig(e.to_string()))?;
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.use_hosts_file = ResolveHosts::Always;
        let inner = builder
            .build()
            .map_err(|e| EgressError::ResolverConfig(e.to_string()))?;
        Ok(Self { inner })
    }
}

impl Resolver for SystemResolver {
    fn lookup<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            match self.inner.lookup_ip(name).await {
                Ok(found) => Ok(found.iter().collect()),
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    Err(ResolveError::NoAddresses { host: name.into() })
                }
                Err(e) => Err(ResolveError::Failed {
                    host: name.into(),
                    reason: e.to_string(),
                }),
            }
        })
    }
}

/// A [`Resolver`] with a deadline and a cap on concurrent lookups; the only way the egress
/// filter and the link check resolve names.
#[derive(Clone)]
pub struct BoundedResolver {
    inner: Arc<dyn Resolver>,
    limits: ResolveLimits,
    slots: Arc<Semaphore>,
}

impl BoundedResolver {
    pub fn new(inner: Arc<dyn Resolver>, limits: ResolveLimits) -> Self {
        Self {
            inner,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
        }
    }

    /// [`SystemResolver`] with these limits.
    pub fn system(limits: ResolveLimits) -> Result<Self, EgressError> {
        Ok(Self::new(Arc::new(SystemResolver::from_system()?), limits))
    }

    pub fn limits(&self) -> ResolveLimits {
        self.limits
    }

    /// The addresses of a URL host as it appears in a URL (`example.com`, `1.2.3.4`,
    /// `[::1]`). Literals and `localhost` names are answered without DNS.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Some(ip) = parse_ip_literal(host) {
            return Ok(vec![ip]);
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return Ok(vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]);
        }
        let timeout = self.limits.timeout;
        let timed_out = || ResolveError::TimedOut {
            host: host.to_owned(),
            timeout,
        };
        let lookup = async {
            // The permit is held for the whole lookup; the semaphore is never closed.
            let _slot = self.slots.acquire().await.map_err(|_| timed_out())?;
            self.inner.lookup(host).await
        };
        let addrs = tokio::time::timeout(timeout, lookup)
            .await
            .map_err(|_| timed_out())??;
        if addrs.is_empty() {
            return Err(ResolveError::NoAddresses {
                host: host.to_owned(),
            });
        }
        Ok(addrs)
    }
}

/// `1.2.3.4`, `::1` or `[::1]` as an address; names give `None`.
fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    /// Counts calls; answers `127.0.0.9` after `gate` is notified (immediately when open).
    struct Stub {
        calls: AtomicUsize,
        gate: Option<Arc<Notify>>,
    }

    impl Resolver for Stub {
        fn lookup<'a>(&'a self, _name: &'a str) -> ResolveFuture<'a> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if let Some(gate) = &self.gate {
                    gate.notified().await;
                }
                Ok(vec!["127.0.0.9".parse().unwrap()])
            })
        }
    }

    fn stub(gate: Option<Arc<Notify>>) -> Arc<Stub> {
        Arc::new(Stub {
            calls: AtomicUsize::new(0),
            gate,
        })
    }

    #[tokio::test]
    async fn literals_and_localhost_never_reach_the_resolver() {
        let s = stub(None);
        let r = BoundedResolver::new(s.clone(), ResolveLimits::default());
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(r.resolve("10.1.2.3").await.unwrap(), [v4]);
        assert_eq!(r.resolve("[fd00::1]").await.unwrap(), [v6]);
        assert_eq!(r.resolve("fd00::1").await.unwrap(), [v6]);
        for name in ["localhost", "LocalHost.", "a.b.localhost"] {
            let got = r.resolve(name).await.unwrap();
            assert!(got.iter().all(IpAddr::is_loopback), "{name}: {got:?}");
        }
        assert_eq!(s.calls.load(Ordering::SeqCst), 0);
        // A name does reach it.
        assert_eq!(r.resolve("example.test").await.unwrap().len(), 1);
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_lookup_that_never_answers_times_out() {
        let gate = Arc::new(Notify::new());
        let r = BoundedResolver::new(
            stub(Some(gate)),
            ResolveLimits {
                timeout: Duration::from_millis(50),
                max_concurrent: 4,
            },
        );
        let err = r.resolve("never.test").await.unwrap_err();
        assert!(matches!(err, ResolveError::TimedOut { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn lookups_beyond_the_cap_wait_for_a_slot() {
        let gate = Arc::new(Notify::new());
        let s = stub(Some(gate.clone()));
        let r = BoundedResolver::new(
            s.clone(),
            ResolveLimits {
                timeout: Duration::from_secs(30),
                max_concurrent: 2,
            },
        );
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let r = r.clone();
                tokio::spawn(async move { r.resolve(&format!("n{i}.test")).await })
            })
            .collect();
        // Two lookups hold the two slots; the third is parked on the semaphore, not in the
        // resolver. Wait until both slots are taken (the stub counts on entry).
        while s.calls.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(r.slots.available_permits(), 0);
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.calls.load(Ordering::SeqCst), 2, "the cap was not applied");
        // Releasing the stub lets all three finish, the third after a slot frees.
        while !tasks.iter().all(|t| t.is_finished()) {
            gate.notify_waiters();
            tokio::task::yield_now().await;
        }
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(s.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_system_resolver_reads_the_hosts_file() {
        // Straight to hickory, with a name from /etc/hosts other than `localhost` (which
        // hickory answers by its own RFC 6761 rule): CI adds `tgdl-loopback.test`, and
        // container images list their host name. No DNS server is reachable here, so an
        // answer can only come from the file.
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let entry = hosts
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let ip: IpAddr = words.next()?.parse().ok()?;
                let name = words.find(|n| !n.contains("localhost"))?;
                Some((ip, name.to_owned()))
            })
            .next();
        let r = SystemResolver::from_system().expect("system resolver");
        let (ip, name) = entry.unwrap_or((IpAddr::V4(Ipv4Addr::LOCALHOST), "localhost".into()));
        let got = r
            .lookup(&name)
            .await
            .expect("a name from /etc/hosts resolves");
        assert!(got.contains(&ip), "{name}: {got:?}, expected {ip}");
    }
}
