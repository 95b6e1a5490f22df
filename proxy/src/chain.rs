//! Chains of hops and the router that dials through them.
//!
//! A route picks one node from every hop. The first node is dialled directly; each further
//! node is reached by asking the previous one (its connector) to open a tunnel to it, then
//! running the node's own transport and protocol handshakes inside that tunnel. The last node
//! is finally asked for the target. Without a chain the router dials the target directly.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gost_api::SelectorStrategy;

use crate::addr::Address;
use crate::conn::BoxConn;
use crate::connector::relay::RelayRefusal;
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
    selection: Selection,
    keepalive: Option<crate::conn::KeepAlive>,
    health: Mutex<Health>,
}

/// A node's own selection settings (GOST's node metadata).
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// `backup`: used only while no other node of the hop is available.
    pub backup: bool,
    /// `weight`: its share under the `random` strategy (1 and up).
    pub weight: u32,
    /// `maxFails`, in place of the hop selector's.
    pub max_fails: Option<u32>,
    /// `failTimeout`, in place of the hop selector's.
    pub fail_timeout: Option<Duration>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            backup: false,
            weight: 1,
            max_fails: None,
            fail_timeout: None,
        }
    }
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
            selection: Selection::default(),
            keepalive: None,
            health: Mutex::new(Health::default()),
        }
    }

    /// The same node, its dialer giving the TCP sockets it opens `keepalive` (GOST's dialer
    /// keys) rather than the dialling service's; `None` keeps the service's.
    pub fn with_keepalive(mut self, keepalive: Option<crate::conn::KeepAlive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Dials the node itself (it is on the first hop), its TCP sockets getting the node's
    /// keepalive, else the dialling service's.
    async fn dial(&self, timeout: Duration) -> io::Result<BoxConn> {
        match self.keepalive {
            Some(keepalive) => {
                crate::conn::dialing_with(keepalive, self.dialer.dial(&self.addr, timeout)).await
            }
            None => self.dialer.dial(&self.addr, timeout).await,
        }
    }

    /// The same node with its own selection settings.
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    fn is_available(&self, now: Instant) -> bool {
        let health = self.health.lock().expect("health lock");
        health.skip_until.is_none_or(|until| now >= until)
    }

    /// Counts a dial's outcome; `max_fails` and `fail_timeout` are the hop's, which the node's
    /// own settings replace.
    fn record(&self, ok: bool, max_fails: u32, fail_timeout: Duration) {
        let max_fails = self.selection.max_fails.unwrap_or(max_fails);
        let fail_timeout = self.selection.fail_timeout.unwrap_or(fail_timeout);
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

    /// Picks a node for one connection, as GOST's selector does: among the nodes that did not
    /// fail recently, those that are not `backup` if there are any, with the hop's strategy.
    /// When every node has failed recently, one (not a backup, if there is one) is tried
    /// anyway: a hop that is down stays down only as long as its nodes really are.
    fn select(&self, key: &HashKey<'_>) -> Arc<Node> {
        let candidates = self.candidates();
        let count = candidates.len();
        let index = match self.strategy {
            // `parallel` races its candidates on a chain's first hop (see `race`); only a
            // test gets here with it.
            SelectorStrategy::Round | SelectorStrategy::Parallel => {
                self.next.fetch_add(1, Ordering::Relaxed) % count
            }
            SelectorStrategy::Random => weighted_index(&candidates),
            SelectorStrategy::Fifo => 0,
            SelectorStrategy::Hash => key.index() % count,
        };
        candidates[index].clone()
    }

    /// GOST's `parallel` strategy: every candidate node dialled at once (its transport: TCP
    /// and, say, TLS), the first to connect within `timeout` carrying the tunnel; the
    /// connections of the others are closed. A node whose dial fails, or has not connected
    /// when the time is up, counts as failed; all failing is all their errors.
    async fn race(
        &self,
        timeout: Duration,
    ) -> Result<(Arc<Node>, BoxConn), Vec<(Arc<Node>, io::Error)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        // The dials run as tasks of their own, which do not see the dialling service's
        // keepalive unless given it.
        let keepalive = crate::conn::dialing_keepalive();
        let mut dials = tokio::task::JoinSet::new();
        let mut running = std::collections::HashMap::new();
        for node in self.candidates() {
            let dialled = node.clone();
            let task = dials.spawn(async move {
                crate::conn::dialing_with(keepalive, dialled.dial(timeout)).await
            });
            running.insert(task.id(), node);
        }
        let mut failed = Vec::new();
        loop {
            let (node, error) =
                match tokio::time::timeout_at(deadline, dials.join_next_with_id()).await {
                    Ok(None) => break,
                    Ok(Some(Ok((id, dialled)))) => {
                        let node = running.remove(&id).expect("every dial is a node's");
                        match dialled {
                            // Dropping the set aborts the dials still running and closes what
                            // they made.
                            Ok(conn) => return Ok((node, conn)),
                            Err(e) => (node, e),
                        }
                    }
                    Ok(Some(Err(e))) => {
                        let node = running.remove(&e.id()).expect("every dial is a node's");
                        (node, io::Error::other(format!("the dial failed: {e}")))
                    }
                    // The nodes still dialling have not connected in time.
                    Err(_) => {
                        for (_, node) in running.drain() {
                            node.record(false, self.max_fails, self.fail_timeout);
                            let e = io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("not connected within {timeout:?}"),
                            );
                            failed.push((node, e));
                        }
                        break;
                    }
                };
            node.record(false, self.max_fails, self.fail_timeout);
            failed.push((node, error));
        }
        Err(failed)
    }

    /// The nodes a connection may use now: among those that did not fail recently, those that
    /// are not `backup` if there are any; when every node has failed recently, all of them
    /// (their primaries, if any).
    fn candidates(&self) -> Vec<Arc<Node>> {
        let now = Instant::now();
        let available: Vec<&Arc<Node>> = self
            .nodes
            .iter()
            .filter(|node| node.is_available(now))
            .collect();
        let mut candidates = primaries(&available);
        if candidates.is_empty() {
            candidates = available;
        }
        if candidates.is_empty() {
            let all: Vec<&Arc<Node>> = self.nodes.iter().collect();
            candidates = primaries(&all);
            if candidates.is_empty() {
                candidates = all;
            }
        }
        candidates.into_iter().cloned().collect()
    }
}

/// The nodes of `nodes` that are not `backup`.
fn primaries<'a>(nodes: &[&'a Arc<Node>]) -> Vec<&'a Arc<Node>> {
    nodes
        .iter()
        .copied()
        .filter(|n| !n.selection.backup)
        .collect()
}

/// A random index into `nodes`, each as likely as its `weight`.
fn weighted_index(nodes: &[Arc<Node>]) -> usize {
    let total: u64 = nodes.iter().map(|n| u64::from(n.selection.weight)).sum();
    let mut left = random_index() as u64 % total.max(1);
    for (i, node) in nodes.iter().enumerate() {
        let weight = u64::from(node.selection.weight);
        if left < weight {
            return i;
        }
        left -= weight;
    }
    0
}

fn random_index() -> usize {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as usize
}

/// Who a dial is for: what the `hash` strategy keys on.
#[derive(Clone, Copy, Debug)]
pub struct DialFor<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The user the client authenticated as, if the service checks credentials.
    pub user: Option<&'a str>,
}

#[cfg(test)]
impl DialFor<'_> {
    /// A dial on behalf of no particular client.
    pub fn local() -> DialFor<'static> {
        DialFor {
            client: IpAddr::from([127, 0, 0, 1]),
            user: None,
        }
    }
}

/// What the `hash` strategy hashes for one dial, in GOST's order: the authenticated user;
/// else, with the handler's `hash: host`, the target (`host:port`); else the client's address.
/// So by default a client keeps its node whatever it connects to, and a user keeps it from
/// any address.
#[derive(Clone, Copy, Debug)]
pub struct HashKey<'a> {
    dial_for: DialFor<'a>,
    target: &'a Address,
    by_target: bool,
}

impl HashKey<'_> {
    /// GOST's hash of the key: CRC-32 (IEEE) of its text, so that the same client, user or
    /// target picks the same node of the same list in GOST and here (a fleet being moved from
    /// one to the other keeps its clients on their nodes). An IPv4 client of a dual-stack
    /// listener counts by its IPv4 address, as Go prints it.
    fn index(&self) -> usize {
        let hash = match self.dial_for.user.filter(|u| !u.is_empty()) {
            Some(user) => crc32fast::hash(user.as_bytes()),
            None if self.by_target => crc32fast::hash(self.target.to_string().as_bytes()),
            None => crc32fast::hash(self.dial_for.client.to_canonical().to_string().as_bytes()),
        };
        hash as usize
    }
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
        io::ErrorKind::PermissionDenied => DialErrorKind::Rejected,
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
        let conn = first.dial(timeout).await?;
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
    hash_by_target: bool,
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
            hash_by_target: false,
        }
    }

    /// The same router, its `hash` hops keying on the target rather than the client (the
    /// handler's `hash: host`). An authenticated user still comes first.
    pub fn with_hash_by_target(mut self, by_target: bool) -> Self {
        self.hash_by_target = by_target;
        self
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
    pub async fn dial(
        &self,
        target: &Address,
        dial_for: DialFor<'_>,
    ) -> Result<BoxConn, DialError> {
        Box::pin(crate::conn::dialing_with(
            self.keepalive,
            self.dial_with_retries(target, dial_for),
        ))
        .await
    }

    async fn dial_with_retries(
        &self,
        target: &Address,
        dial_for: DialFor<'_>,
    ) -> Result<BoxConn, DialError> {
        let key = HashKey {
            dial_for,
            target,
            by_target: self.hash_by_target,
        };
        let mut attempt = 0;
        loop {
            let result = match &self.chain {
                None => self.dial_direct(target).await,
                Some(chain) => self.dial_chain(chain, target, &key).await,
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

    /// Races the nodes of `hop`, a chain's first hop with the `parallel` strategy, within the
    /// dial's time.
    async fn race(
        &self,
        chain: &Chain,
        hop: &Hop,
        target: &Address,
    ) -> Result<(Arc<Node>, BoxConn), DialError> {
        let at = |node: &str, addr: String| HopRef {
            chain: chain.name.clone(),
            hop: hop.name.clone(),
            node: node.to_string(),
            addr,
        };
        // Each node has the dial's time: the race ends with it.
        match hop.race(self.timeout).await {
            Ok(won) => Ok(won),
            Err(failed) => {
                for (node, _) in &failed {
                    crate::metrics::chain_error(&chain.name, &node.name);
                }
                let timed_out = !failed.is_empty()
                    && failed
                        .iter()
                        .all(|(_, e)| e.kind() == io::ErrorKind::TimedOut);
                let kind = failed
                    .first()
                    .map_or(DialErrorKind::Unreachable, |(_, e)| io_kind(e));
                let cause = failed
                    .iter()
                    .map(|(node, e)| format!("{}: {e}", node.name))
                    .collect::<Vec<_>>()
                    .join("; ");
                let names: Vec<&str> = failed.iter().map(|(n, _)| n.name.as_str()).collect();
                let addrs: Vec<String> = failed.iter().map(|(n, _)| n.addr.to_string()).collect();
                let cause = if timed_out {
                    format!(
                        "no node of the parallel hop connected within {:?}: {cause}",
                        self.timeout
                    )
                } else {
                    format!("every node of the parallel hop failed: {cause}")
                };
                Err(DialError {
                    kind,
                    at: Some(at(&names.join(","), addrs.join(","))),
                    target: target.clone(),
                    cause,
                })
            }
        }
    }

    async fn dial_chain(
        &self,
        chain: &Chain,
        target: &Address,
        key: &HashKey<'_>,
    ) -> Result<BoxConn, DialError> {
        let started = std::time::Instant::now();
        // A first hop with the `parallel` strategy is raced before the route is known; its
        // winner's connection starts the route, within what is left of the dial's time.
        let first_hop = &chain.hops[0];
        let (first, mut raced) = if first_hop.strategy == SelectorStrategy::Parallel {
            let (node, conn) = self.race(chain, first_hop, target).await?;
            (node, Some(conn))
        } else {
            (first_hop.select(key), None)
        };
        let route: Vec<(&Hop, Arc<Node>)> = std::iter::once((first_hop, first))
            .chain(chain.hops[1..].iter().map(|hop| (hop, hop.select(key))))
            .collect();
        // An error at the node `index`; `failure` also counts it as the node's, which a
        // target that cannot be reached through a working route is not.
        let error_at = |index: usize, kind: DialErrorKind, cause: String| {
            let (hop, node) = &route[index];
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
        let failure = |index: usize, kind: DialErrorKind, cause: String| {
            crate::metrics::chain_error(&chain.name, &route[index].1.name);
            error_at(index, kind, cause)
        };
        // A lazy relay node answers its tunnel request only when the tunnel is first read,
        // which the next node's handshake does (or, for a node without one, the final
        // CONNECT): a refusal met at node `index` is the relay node before it not reaching
        // it, as when a relay node answers at once.
        let refused_before = |index: usize, e: &io::Error| {
            let refusal = RelayRefusal::of(e).filter(|_| index > 0)?;
            let (hop, node) = &route[index];
            node.record(false, hop.max_fails, hop.fail_timeout);
            let cause = format!("to reach next hop {}: {refusal}", node.addr);
            Some(failure(index - 1, io_kind(&refusal.kind().into()), cause))
        };
        // Where the route is: 2i while node i is dialled and handshaken, 2i + 1 while node i
        // reaches the next hop (or, for the last one, the target). A route that runs out of
        // time is blamed on the step it was in.
        let stage = AtomicUsize::new(0);
        let build = async {
            let (first_hop, first) = &route[0];
            let conn = match raced.take() {
                Some(conn) => Ok(conn),
                None => first.dial(self.timeout).await,
            };
            let conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    first.record(false, first_hop.max_fails, first_hop.fail_timeout);
                    return Err(failure(0, io_kind(&e), e.to_string()));
                }
            };
            // A node that takes the connection but fails its handshake counts as failed too,
            // as in GOST, so that it is skipped like one that refuses connections.
            let mut conn = match first.connector.handshake(conn).await {
                Ok(conn) => conn,
                Err(e) => {
                    first.record(false, first_hop.max_fails, first_hop.fail_timeout);
                    return Err(failure(0, connect_kind(&e), e.to_string()));
                }
            };
            for i in 1..route.len() {
                let (_, previous) = &route[i - 1];
                let (hop, node) = &route[i];
                stage.store(2 * (i - 1) + 1, Ordering::Relaxed);
                conn = match previous.connector.connect(conn, &node.addr).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        node.record(false, hop.max_fails, hop.fail_timeout);
                        let cause = format!("to reach next hop {}: {e}", node.addr);
                        return Err(failure(i - 1, connect_kind(&e), cause));
                    }
                };
                stage.store(2 * i, Ordering::Relaxed);
                let earlier = route[..i].iter().map(|(_, n)| n.clone()).collect();
                let again = reopen(earlier, node.addr.clone(), self.timeout);
                conn = match node.dialer.handshake_routed(conn, &node.addr, again).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        if let Some(error) = refused_before(i, &e) {
                            return Err(error);
                        }
                        node.record(false, hop.max_fails, hop.fail_timeout);
                        return Err(failure(i, io_kind(&e), e.to_string()));
                    }
                };
                conn = match node.connector.handshake(conn).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        if let ConnectError::Io(io) = &e
                            && let Some(error) = refused_before(i, io)
                        {
                            return Err(error);
                        }
                        node.record(false, hop.max_fails, hop.fail_timeout);
                        return Err(failure(i, connect_kind(&e), e.to_string()));
                    }
                };
            }
            let last = route.len() - 1;
            stage.store(2 * last + 1, Ordering::Relaxed);
            // Every node answered: the route is up, whatever becomes of the target (GOST
            // times and counts the route to the last node, not the target's connection).
            crate::metrics::node_connected(&chain.name, &route[last].1.name, started.elapsed());
            for (hop, node) in &route {
                node.record(true, hop.max_fails, hop.fail_timeout);
            }
            route[last]
                .1
                .connector
                .connect(conn, target)
                .await
                .map_err(|e| {
                    // The last node may have no handshake of its own (http, relay): then a
                    // lazy relay node before it refuses only now.
                    if let ConnectError::Io(io) = &e
                        && let Some(error) = refused_before(last, io)
                    {
                        return error;
                    }
                    error_at(last, connect_kind(&e), e.to_string())
                })
        };
        let left = self.timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, build).await {
            Ok(result) => result,
            Err(_) => {
                let stage = stage.load(Ordering::Relaxed);
                let (i, reaching) = (stage / 2, stage % 2 == 1);
                let last = route.len() - 1;
                let within = self.timeout;
                let cause = match (reaching, i < last) {
                    // The node took the connection and then stalled in its handshake.
                    (false, _) => {
                        let (hop, node) = &route[i];
                        node.record(false, hop.max_fails, hop.fail_timeout);
                        format!("node did not finish its handshake within {within:?}")
                    }
                    // The node's answer about the next hop never came: the next node is
                    // the one not reached, as when it refuses.
                    (true, true) => {
                        let (hop, node) = &route[i + 1];
                        node.record(false, hop.max_fails, hop.fail_timeout);
                        format!("next hop {} not reached within {within:?}", node.addr)
                    }
                    // The target is slow, which says nothing about the nodes.
                    (true, false) => {
                        return Err(error_at(
                            i,
                            DialErrorKind::TimedOut,
                            format!("target not reached within {within:?}"),
                        ));
                    }
                };
                Err(failure(i, DialErrorKind::TimedOut, cause))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::connector::http::HttpConnector;
    use crate::dialer::tcp::TcpDialer;

    fn node(name: &str, selection: Selection) -> Arc<Node> {
        let connector = HttpConnector::new(None, &gost_api::Metadata::default()).unwrap();
        Arc::new(
            Node::new(
                name.into(),
                Address::parse("127.0.0.1:1").unwrap(),
                Arc::new(TcpDialer),
                Arc::new(connector),
            )
            .with_selection(selection),
        )
    }

    fn hop(nodes: Vec<Arc<Node>>, strategy: SelectorStrategy) -> Hop {
        Hop::new("h".into(), nodes, strategy, 1, Duration::from_secs(60))
    }

    fn picks(hop: &Hop, rounds: usize) -> HashMap<String, usize> {
        let target = Address::parse("example.com:80").unwrap();
        let key = HashKey {
            dial_for: DialFor::local(),
            target: &target,
            by_target: false,
        };
        let mut counts = HashMap::new();
        for _ in 0..rounds {
            *counts.entry(hop.select(&key).name.clone()).or_default() += 1;
        }
        counts
    }

    /// The node a `hash` hop picks for a client, a user and a target.
    fn hashed(
        hop: &Hop,
        client: [u8; 4],
        user: Option<&str>,
        target: &str,
        by_target: bool,
    ) -> String {
        let target = Address::parse(target).unwrap();
        let key = HashKey {
            dial_for: DialFor {
                client: IpAddr::from(client),
                user,
            },
            target: &target,
            by_target,
        };
        hop.select(&key).name.clone()
    }

    #[test]
    fn hash_keys_on_the_user_then_the_client_or_with_hash_host_the_target() {
        let nodes = (0..8)
            .map(|i| node(&format!("n{i}"), Selection::default()))
            .collect();
        let hop = hop(nodes, SelectorStrategy::Hash);
        let targets = [
            "a.example:80",
            "b.example:443",
            "10.0.0.1:22",
            "c.example:80",
        ];
        let spread = |f: &dyn Fn(&str) -> String| {
            targets
                .iter()
                .map(|t| f(t))
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        // By default a client keeps its node whatever it connects to...
        assert_eq!(spread(&|t| hashed(&hop, [10, 1, 2, 3], None, t, false)), 1);
        // ...and clients spread over the nodes.
        let clients: std::collections::HashSet<_> = (1..=40)
            .map(|i| hashed(&hop, [10, 1, 2, i], None, "a.example:80", false))
            .collect();
        assert!(clients.len() >= 4, "{clients:?}");
        // A user keeps its node from any address, and over `hash: host` too.
        let alice: std::collections::HashSet<_> = (1..=20)
            .flat_map(|i| {
                [false, true].map(|by_target| {
                    hashed(
                        &hop,
                        [10, 9, 9, i],
                        Some("alice"),
                        targets[i as usize % 4],
                        by_target,
                    )
                })
            })
            .collect();
        assert_eq!(alice.len(), 1, "{alice:?}");
        // GOST's CRC-32 (IEEE) modulo the node count: crc32("alice") = 0x278ebc47, whose
        // remainder by 8 is 7, so alice gets the last node wherever she comes from.
        assert_eq!(crc32fast::hash(b"alice"), 0x278ebc47);
        assert_eq!(alice.iter().next().unwrap(), "n7");
        // An IPv4 client of a dual-stack listener hashes as its IPv4 address.
        let mapped = Address::parse("a.example:80").unwrap();
        let key = |client: IpAddr| HashKey {
            dial_for: DialFor { client, user: None },
            target: &mapped,
            by_target: false,
        };
        assert_eq!(
            hop.select(&key("::ffff:10.1.2.3".parse().unwrap())).name,
            hop.select(&key("10.1.2.3".parse().unwrap())).name
        );
        // An empty user name is no user.
        assert_eq!(
            hashed(&hop, [10, 1, 2, 3], Some(""), "a.example:80", false),
            hashed(&hop, [10, 1, 2, 3], None, "a.example:80", false)
        );
        // With `hash: host`, a target keeps its node whoever asks, and targets spread.
        let one_target: std::collections::HashSet<_> = (1..=20)
            .map(|i| hashed(&hop, [10, 1, 2, i], None, "a.example:80", true))
            .collect();
        assert_eq!(one_target.len(), 1);
        assert!(spread(&|t| hashed(&hop, [10, 1, 2, 3], None, t, true)) >= 2);
    }

    #[test]
    fn a_backup_node_is_used_only_while_the_others_are_down() {
        let backup = Selection {
            backup: true,
            ..Selection::default()
        };
        let hop = hop(
            vec![
                node("a", Selection::default()),
                node("b", Selection::default()),
                node("spare", backup),
            ],
            SelectorStrategy::Round,
        );
        let counts = picks(&hop, 20);
        assert_eq!(counts.get("spare"), None, "{counts:?}");
        assert_eq!((counts["a"], counts["b"]), (10, 10));
        for primary in &hop.nodes[..2] {
            primary.record(false, hop.max_fails, hop.fail_timeout);
        }
        assert_eq!(picks(&hop, 5)["spare"], 5);
        hop.nodes[0].record(true, hop.max_fails, hop.fail_timeout);
        assert_eq!(picks(&hop, 5)["a"], 5);
    }

    #[test]
    fn random_picks_follow_the_weights() {
        let heavy = Selection {
            weight: 9,
            ..Selection::default()
        };
        let hop = hop(
            vec![node("light", Selection::default()), node("heavy", heavy)],
            SelectorStrategy::Random,
        );
        let counts = picks(&hop, 2000);
        let heavy = counts.get("heavy").copied().unwrap_or(0);
        // 1,800 expected; the bounds are more than ten standard deviations away.
        assert!((1600..=1950).contains(&heavy), "{counts:?}");
    }

    /// A transport that never connects, or panics on trying.
    struct Stuck {
        panics: bool,
    }

    #[async_trait::async_trait]
    impl crate::dialer::Dialer for Stuck {
        async fn dial(&self, _addr: &Address, _timeout: Duration) -> io::Result<BoxConn> {
            if self.panics {
                panic!("a dialer's bug");
            }
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_race_counts_every_node_that_did_not_connect() {
        let stuck = |name: &str, panics: bool| {
            let connector = HttpConnector::new(None, &gost_api::Metadata::default()).unwrap();
            Arc::new(Node::new(
                name.into(),
                Address::parse("127.0.0.1:1").unwrap(),
                Arc::new(Stuck { panics }),
                Arc::new(connector),
            ))
        };
        let hop = hop(
            vec![stuck("slow", false), stuck("buggy", true)],
            SelectorStrategy::Parallel,
        );
        let started = Instant::now();
        let Err(mut failed) = hop.race(Duration::from_millis(200)).await else {
            panic!("no node can connect");
        };
        assert!(started.elapsed() < Duration::from_secs(5));
        failed.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let failed: Vec<(&str, io::ErrorKind)> = failed
            .iter()
            .map(|(node, e)| (node.name.as_str(), e.kind()))
            .collect();
        assert_eq!(
            failed,
            [
                ("buggy", io::ErrorKind::Other),
                ("slow", io::ErrorKind::TimedOut)
            ]
        );
        // Both count as failed (max_fails 1): neither is available now.
        assert!(hop.nodes.iter().all(|n| !n.is_available(Instant::now())));
    }

    #[test]
    fn a_nodes_own_max_fails_replaces_the_hops() {
        let patient = Selection {
            max_fails: Some(3),
            ..Selection::default()
        };
        let hop = hop(
            vec![
                node("patient", patient),
                node("other", Selection::default()),
            ],
            SelectorStrategy::Fifo,
        );
        let patient = &hop.nodes[0];
        for _ in 0..2 {
            patient.record(false, hop.max_fails, hop.fail_timeout);
        }
        assert_eq!(
            picks(&hop, 3)["patient"],
            3,
            "two failures of three allowed"
        );
        patient.record(false, hop.max_fails, hop.fail_timeout);
        assert_eq!(picks(&hop, 3)["other"], 3);
    }
}
