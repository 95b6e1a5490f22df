//! Chains of hops and the router that dials through them.
//!
//! A route picks one node from every hop. The first node is dialled directly; each further
//! node is reached by asking the previous one (its connector) to open a tunnel to it, then
//! running the node's own transport and protocol handshakes inside that tunnel. The last node
//! is finally asked for the target. Without a chain the router dials the target directly.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gost_api::SelectorStrategy;

use crate::addr::Address;
use crate::conn::BoxConn;
use crate::connector::{ConnectError, Connector};
use crate::dialer::{Dialer, Reopen, Reopening, tcp};

/// GOST's per-attempt dial timeout (`x/chain/router.go`), overridable with the service's
/// `dialTimeout` metadata.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Failures after which a node is skipped (GOST's `maxFails` default).
pub const DEFAULT_MAX_FAILS: u32 = 1;

/// How long a failed node is skipped (GOST's `failTimeout` default).
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// One node of a hop.
pub struct Node {
    /// Node name, for logs.
    pub name: String,
    /// Where the node listens.
    pub addr: Address,
    /// The transport to the node.
    pub dialer: Arc<dyn Dialer>,
    /// The protocol spoken to the node.
    pub connector: Arc<dyn Connector>,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    consecutive_failures: u32,
    skip_until: Option<Instant>,
}

impl Node {
    /// A node with a clean health record.
    pub fn new(
        name: String,
        addr: Address,
        dialer: Arc<dyn Dialer>,
        connector: Arc<dyn Connector>,
    ) -> Self {
        Node {
            name,
            addr,
            dialer,
            connector,
            health: Mutex::new(Health::default()),
        }
    }

    fn is_available(&self, now: Instant) -> bool {
        let health = self.health.lock().expect("health lock");
        health.skip_until.is_none_or(|until| now >= until)
    }

    fn record(&self, ok: bool, max_fails: u32, fail_timeout: Duration) {
        let mut health = self.health.lock().expect("health lock");
        if ok {
            *health = Health::default();
            return;
        }
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        if health.consecutive_failures >= max_fails.max(1) {
            health.skip_until = Some(Instant::now() + fail_timeout);
        }
    }
}

/// A set of interchangeable nodes.
pub struct Hop {
    /// Hop name, for logs.
    pub name: String,
    /// The nodes.
    pub nodes: Vec<Arc<Node>>,
    /// How a node is picked.
    pub strategy: SelectorStrategy,
    /// Failures after which a node is skipped.
    pub max_fails: u32,
    /// How long a failed node is skipped.
    pub fail_timeout: Duration,
    next: AtomicUsize,
}

impl Hop {
    /// A hop picking among `nodes` with `strategy`.
    pub fn new(
        name: String,
        nodes: Vec<Arc<Node>>,
        strategy: SelectorStrategy,
        max_fails: u32,
        fail_timeout: Duration,
    ) -> Self {
        Hop {
            name,
            nodes,
            strategy,
            max_fails,
            fail_timeout,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks a node for one connection, skipping nodes that failed recently. When every node
    /// has failed recently, one is tried anyway: a hop that is down stays down only as long as
    /// its nodes really are.
    fn select(&self, target: &Address) -> Arc<Node> {
        let now = Instant::now();
        let count = self.nodes.len();
        let start = match self.strategy {
            SelectorStrategy::Round => self.next.fetch_add(1, Ordering::Relaxed),
            SelectorStrategy::Random => random_index(),
            SelectorStrategy::Fifo => 0,
            SelectorStrategy::Hash => hash_index(&target.host_str()),
        } % count;
        (0..count)
            .map(|i| &self.nodes[(start + i) % count])
            .find(|node| node.is_available(now))
            .unwrap_or(&self.nodes[start])
            .clone()
    }
}

fn random_index() -> usize {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as usize
}

fn hash_index(host: &str) -> usize {
    // FNV-1a: stable across processes, so a target keeps its node after a restart.
    host.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    }) as usize
}

/// An ordered list of hops.
pub struct Chain {
    /// Chain name, for logs.
    pub name: String,
    /// The hops, in dialling order.
    pub hops: Vec<Hop>,
}

/// Which node of which hop an error happened at.
#[derive(Clone, Debug)]
pub struct HopRef {
    /// Chain name.
    pub chain: String,
    /// Hop name.
    pub hop: String,
    /// Node name.
    pub node: String,
    /// Node address.
    pub addr: String,
}

impl fmt::Display for HopRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{} ({})",
            self.chain, self.hop, self.node, self.addr
        )
    }
}

/// The kind of a dial failure, which decides what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialErrorKind {
    /// The target or a node refused the TCP connection.
    Refused,
    /// No answer in time.
    TimedOut,
    /// The name does not resolve or the network is unreachable.
    Unreachable,
    /// A node answered but refused to open the tunnel (credentials, policy, its own failure).
    Rejected,
    /// A node spoke something unexpected.
    Protocol,
}

/// A failed dial: what failed, where in the chain, and why.
#[derive(Debug)]
pub struct DialError {
    /// What kind of failure.
    pub kind: DialErrorKind,
    /// The node at which it happened, `None` for a direct dial.
    pub at: Option<HopRef>,
    /// The final target.
    pub target: Address,
    /// The cause, as text.
    pub cause: String,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some(at) => write!(f, "dial {} via {at}: {}", self.target, self.cause),
            None => write!(f, "dial {}: {}", self.target, self.cause),
        }
    }
}

impl std::error::Error for DialError {}

fn io_kind(e: &io::Error) -> DialErrorKind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => DialErrorKind::Refused,
        io::ErrorKind::TimedOut => DialErrorKind::TimedOut,
        _ => DialErrorKind::Unreachable,
    }
}

fn connect_kind(e: &ConnectError) -> DialErrorKind {
    match e {
        ConnectError::Io(e) => io_kind(e),
        ConnectError::Refused(_) => DialErrorKind::Rejected,
        ConnectError::Protocol(_) => DialErrorKind::Protocol,
    }
}

/// A [`Reopen`] for the node at `next`: another stream to it through the nodes `earlier`
/// (those of the route that reached it first), within `timeout`.
fn reopen(earlier: Arc<[Arc<Node>]>, next: Address, timeout: Duration) -> Reopen {
    Arc::new(move || -> Reopening {
        let earlier = earlier.clone();
        let next = next.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, reach(&earlier, &next, timeout)).await {
                Ok(result) => result,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{next} not reached through the earlier hops within {timeout:?}"),
                )),
            }
        })
    })
}

/// A stream to `next` through `nodes` in order: the first dialled, each further one reached
/// through the one before, as [`Router`] builds a route (without its health bookkeeping).
fn reach<'a>(
    nodes: &'a [Arc<Node>],
    next: &'a Address,
    timeout: Duration,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<BoxConn>> + Send + 'a>> {
    let protocol = |node: &Node, e: ConnectError| match e {
        ConnectError::Io(e) => e,
        other => io::Error::other(format!("node {} ({}): {other}", node.name, node.addr)),
    };
    Box::pin(async move {
        let first = &nodes[0];
        let conn = first.dialer.dial(&first.addr, timeout).await?;
        let mut conn = (first.connector.handshake(conn).await).map_err(|e| protocol(first, e))?;
        for i in 1..nodes.len() {
            let (previous, node) = (&nodes[i - 1], &nodes[i]);
            conn = (previous.connector.connect(conn, &node.addr).await)
                .map_err(|e| protocol(previous, e))?;
            let again = reopen(nodes[..i].into(), node.addr.clone(), timeout);
            conn = node
                .dialer
                .handshake_routed(conn, &node.addr, again)
                .await?;
            conn = (node.connector.handshake(conn).await).map_err(|e| protocol(node, e))?;
        }
        let last = &nodes[nodes.len() - 1];
        (last.connector.connect(conn, next).await).map_err(|e| protocol(last, e))
    })
}

/// Dials targets for a handler: through its chain, or directly.
pub struct Router {
    chain: Option<Arc<Chain>>,
    timeout: Duration,
    retries: u32,
    keepalive: crate::conn::KeepAlive,
}

impl Router {
    /// A router over `chain` (or direct), giving each attempt `timeout` and retrying
    /// `retries` times.
    pub fn new(chain: Option<Arc<Chain>>, timeout: Duration, retries: u32) -> Self {
        Router {
            chain,
            timeout,
            retries,
            keepalive: crate::conn::KeepAlive::default(),
        }
    }

    /// The same router, giving the TCP sockets its dials open `keepalive` (the service's).
    pub fn with_keepalive(mut self, keepalive: crate::conn::KeepAlive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Opens a TCP tunnel to `target`.
    ///
    /// The dial's state (resolution, connects, every hop's handshake) lives in an allocation of
    /// its own, freed once the tunnel is open: a handler awaiting it inline would otherwise
    /// keep room for that state in its task for the tunnel's whole life.
    pub async fn dial(&self, target: &Address) -> Result<BoxConn, DialError> {
        Box::pin(crate::conn::dialing_with(
            self.keepalive,
            self.dial_with_retries(target),
        ))
        .await
    }

    async fn dial_with_retries(&self, target: &Address) -> Result<BoxConn, DialError> {
        let mut attempt = 0;
        loop {
            let result = match &self.chain {
                None => self.dial_direct(target).await,
                Some(chain) => self.dial_chain(chain, target).await,
            };
            match result {
                Err(e) if attempt < self.retries => {
                    tracing::debug!(error = %e, attempt, "dial failed, retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn dial_direct(&self, target: &Address) -> Result<BoxConn, DialError> {
        match tcp::connect(target, self.timeout).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(e) => Err(DialError {
                kind: io_kind(&e),
                at: None,
                target: target.clone(),
                cause: e.to_string(),
            }),
        }
    }

    async fn dial_chain(&self, chain: &Chain, target: &Address) -> Result<BoxConn, DialError> {
        let route: Vec<(&Hop, Arc<Node>)> = chain
            .hops
            .iter()
            .map(|hop| (hop, hop.select(target)))
            .collect();
        let started = std::time::Instant::now();
        let failure = |index: usize, kind: DialErrorKind, cause: String| {
            let (hop, node) = &route[index];
            crate::metrics::chain_error(&chain.name, &node.name);
            DialError {
                kind,
                at: Some(HopRef {
                    chain: chain.name.clone(),
                    hop: hop.name.clone(),
                    node: node.name.clone(),
                    addr: node.addr.to_string(),
                }),
                target: target.clone(),
                cause,
            }
        };
        let build = async {
            let (first_hop, first) = &route[0];
            let conn = first.dialer.dial(&first.addr, self.timeout).await;
            let conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    first.record(false, first_hop.max_fails, first_hop.fail_timeout);
                    return Err(failure(0, io_kind(&e), e.to_string()));
                }
            };
            let mut conn = first
                .connector
                .handshake(conn)
                .await
                .map_err(|e| failure(0, connect_kind(&e), e.to_string()))?;
            for i in 1..route.len() {
                let (_, previous) = &route[i - 1];
                let (hop, node) = &route[i];
                conn = match previous.connector.connect(conn, &node.addr).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        node.record(false, hop.max_fails, hop.fail_timeout);
                        let cause = format!("to reach next hop {}: {e}", node.addr);
                        return Err(failure(i - 1, connect_kind(&e), cause));
                    }
                };
                let earlier = route[..i].iter().map(|(_, n)| n.clone()).collect();
                let again = reopen(earlier, node.addr.clone(), self.timeout);
                conn = node
                    .dialer
                    .handshake_routed(conn, &node.addr, again)
                    .await
                    .map_err(|e| failure(i, io_kind(&e), e.to_string()))?;
                conn = node
                    .connector
                    .handshake(conn)
                    .await
                    .map_err(|e| failure(i, connect_kind(&e), e.to_string()))?;
            }
            let last = route.len() - 1;
            let conn = route[last]
                .1
                .connector
                .connect(conn, target)
                .await
                .map_err(|e| failure(last, connect_kind(&e), e.to_string()))?;
            for (hop, node) in &route {
                node.record(true, hop.max_fails, hop.fail_timeout);
            }
            crate::metrics::node_connected(&chain.name, &route[last].1.name, started.elapsed());
            Ok(conn)
        };
        match tokio::time::timeout(self.timeout, build).await {
            Ok(result) => result,
            Err(_) => {
                // The route as a whole ran out of time; no single node is to blame.
                crate::metrics::chain_error(&chain.name, "*");
                Err(DialError {
                    kind: DialErrorKind::TimedOut,
                    at: Some(HopRef {
                        chain: chain.name.clone(),
                        hop: "*".into(),
                        node: "*".into(),
                        addr: "route".into(),
                    }),
                    target: target.clone(),
                    cause: format!("route not established within {:?}", self.timeout),
                })
            }
        }
    }
}
