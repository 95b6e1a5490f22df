//! The SOCKS4/4a and SOCKS5 handlers and the SOCKS5 connector over real loopback sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gost_api::{AuthConfig, Metadata, SelectorStrategy};
use gost_proxy::addr::Address;
use gost_proxy::auth::Authenticator;
use gost_proxy::chain::{Chain, Hop, Node, Router};
use gost_proxy::conn::BoxConn;
use gost_proxy::connector::socks5::Socks5Connector;
use gost_proxy::connector::{ConnectError, Connector};
use gost_proxy::dialer::tcp::TcpDialer;
use gost_proxy::handler::socks4::Socks4Handler;
use gost_proxy::handler::socks5::Socks5Handler;
use gost_proxy::handler::{Handler, HandlerEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Bounds every wait in these tests, so that a bug fails a test instead of hanging it.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

fn user(username: &str, password: &str) -> AuthConfig {
    AuthConfig {
        username: username.into(),
        password: password.into(),
        file: None,
    }
}

fn env_with(
    auth: Option<Authenticator>,
    router: Router,
    handshake_timeout: Duration,
) -> Arc<HandlerEnv> {
    Arc::new(HandlerEnv {
        tls: None,
        service: "test".into(),
        auth,
        router,
        metadata: Metadata::default(),
        handshake_timeout,
        response_timeout: None,
        max_header_size: gost_proxy::handler::http::MAX_REQUEST_HEAD,
        idle_timeout: None,
        tunnels: TaskTracker::new(),
    })
}

fn env(auth: Option<Authenticator>) -> Arc<HandlerEnv> {
    let direct = Router::new(None, Duration::from_secs(2), 0);
    env_with(auth, direct, Duration::from_secs(5))
}

/// Echoes every connection until it ends.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Serves the first accepted connection with `handler`; the task ends when the handler does.
async fn serve_one(handler: impl Handler + 'static) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, client) = listener.accept().await.unwrap();
        handler.handle(Box::new(stream), client).await;
    });
    (addr, task)
}

async fn dial(addr: SocketAddr) -> BoxConn {
    Box::new(TcpStream::connect(addr).await.unwrap())
}

async fn expect_echo(conn: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), data: &[u8]) {
    conn.write_all(data).await.unwrap();
    let mut back = vec![0; data.len()];
    tokio::time::timeout(TEST_TIMEOUT, conn.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, data);
}

async fn read_n(conn: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(TEST_TIMEOUT, conn.read_exact(&mut buf))
        .await
        .expect("reply in time")
        .unwrap();
    buf
}

/// Everything the server sends until it closes the connection. A reset also counts as closed:
/// a server dropping a client that sent more than it read resets the connection.
async fn read_until_closed(conn: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let result = tokio::time::timeout(TEST_TIMEOUT, conn.read_to_end(&mut received))
        .await
        .expect("closed in time");
    if let Err(e) = result {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    received
}

/// Asserts that the server closes the connection without sending anything more.
async fn expect_closed(conn: &mut TcpStream) {
    let rest = read_until_closed(conn).await;
    assert!(rest.is_empty(), "unexpected bytes {rest:02x?}");
}

async fn finished(task: JoinHandle<()>) {
    tokio::time::timeout(TEST_TIMEOUT, task)
        .await
        .expect("handler finished in time")
        .expect("handler did not panic");
}

/// The node address the connector would name in TLS (unused by the plain methods).
fn node() -> Address {
    Address::parse("127.0.0.1:1080").unwrap()
}

fn connector(auth: Option<AuthConfig>) -> Socks5Connector {
    Socks5Connector::new(auth, &Metadata::default(), None, &node()).unwrap()
}

/// Handshake and CONNECT through a SOCKS5 handler at `proxy`.
async fn socks5_connect(
    proxy: SocketAddr,
    auth: Option<AuthConfig>,
    target: SocketAddr,
) -> Result<BoxConn, ConnectError> {
    let connector = connector(auth);
    let conn = connector.handshake(dial(proxy).await).await?;
    connector.connect(conn, &Address::from_socket(target)).await
}

#[tokio::test]
async fn socks5_tunnel_without_auth() {
    let echo = echo_server().await;
    let (proxy, task) = serve_one(Socks5Handler::new(env(None))).await;
    let mut tunnel = socks5_connect(proxy, None, echo).await.unwrap();
    expect_echo(&mut tunnel, b"hello through socks5").await;
    drop(tunnel);
    finished(task).await;
}

#[tokio::test]
async fn socks5_tunnel_with_auth() {
    let echo = echo_server().await;
    let users = [user("alice", "s3cret")];
    let (proxy, task) = serve_one(Socks5Handler::new(env(Some(Authenticator::new(&users))))).await;
    let mut tunnel = socks5_connect(proxy, Some(user("alice", "s3cret")), echo)
        .await
        .unwrap();
    expect_echo(&mut tunnel, b"authenticated").await;
    drop(tunnel);
    finished(task).await;
}

#[tokio::test]
async fn socks5_wrong_password_is_refused() {
    let users = [user("alice", "s3cret")];
    let (proxy, task) = serve_one(Socks5Handler::new(env(Some(Authenticator::new(&users))))).await;
    let connector = connector(Some(user("alice", "wrong")));
    let err = connector
        .handshake(dial(proxy).await)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, ConnectError::Refused(m) if m.contains("rejected the credentials")),
        "{err}"
    );
    finished(task).await;
}

#[tokio::test]
async fn socks5_auth_required_but_not_offered_is_refused() {
    let users = [user("alice", "s3cret")];
    let (proxy, task) = serve_one(Socks5Handler::new(env(Some(Authenticator::new(&users))))).await;
    let err = connector(None)
        .handshake(dial(proxy).await)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, ConnectError::Refused(m) if m.contains("no acceptable authentication method")),
        "{err}"
    );
    finished(task).await;
}

#[tokio::test]
async fn socks5_no_auth_server_rejects_a_client_offering_only_user_pass() {
    let (proxy, task) = serve_one(Socks5Handler::new(env(None))).await;
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(&[0x05, 0x01, 0x02]).await.unwrap();
    assert_eq!(read_n(&mut conn, 2).await, [0x05, 0xFF]);
    expect_closed(&mut conn).await;
    finished(task).await;
}

#[tokio::test]
async fn socks5_raw_bytes_with_gost_greeting_and_pipelined_data() {
    let echo = echo_server().await;
    let (proxy, task) = serve_one(Socks5Handler::new(env(None))).await;
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    // GOST's greeting without auth, then (eagerly) the request and the first data.
    let mut bytes = vec![0x05, 0x02, 0x00, 0x80];
    bytes.extend_from_slice(&[0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1]);
    bytes.extend_from_slice(&echo.port().to_be_bytes());
    bytes.extend_from_slice(b"early");
    conn.write_all(&bytes).await.unwrap();
    assert_eq!(read_n(&mut conn, 2).await, [0x05, 0x00]);
    assert_eq!(
        read_n(&mut conn, 10).await,
        [0x05, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(read_n(&mut conn, 5).await, b"early");
    expect_echo(&mut conn, b"later").await;
    drop(conn);
    finished(task).await;
}

#[tokio::test]
async fn socks5_closed_port_replies_connection_refused() {
    let target = closed_port().await;
    let (proxy, task) = serve_one(Socks5Handler::new(env(None))).await;
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(&[0x05, 0x01, 0x00]).await.unwrap();
    assert_eq!(read_n(&mut conn, 2).await, [0x05, 0x00]);
    let mut request = vec![0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1];
    request.extend_from_slice(&target.port().to_be_bytes());
    conn.write_all(&request).await.unwrap();
    assert_eq!(
        read_n(&mut conn, 10).await,
        [0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
    );
    expect_closed(&mut conn).await;
    finished(task).await;
}

#[tokio::test]
async fn socks5_connector_reports_the_reply_code() {
    let target = closed_port().await;
    let (proxy, task) = serve_one(Socks5Handler::new(env(None))).await;
    let err = socks5_connect(proxy, None, target)
        .await
        .err()
        .expect("refused");
    // The node's "refused" stays a refusal of the kind a direct dial gives.
    assert!(
        matches!(&err, ConnectError::Io(e)
            if e.kind() == std::io::ErrorKind::ConnectionRefused
                && e.to_string() == "SOCKS5 reply 0x05 (connection refused)"),
        "{err}"
    );
    finished(task).await;
}

#[tokio::test]
async fn socks5_commands_other_than_connect_get_gosts_refusals() {
    // BIND, UDP ASSOCIATE and GOST's 0xF2 (multiplexed BIND) and 0xF3 (UDP over TCP) are
    // "not allowed", as from GOST with its `bind`/`udp` options off; a command nobody
    // defines is "not supported".
    for (command, reply) in [
        (0x02, 0x02),
        (0x03, 0x02),
        (0xF2, 0x02),
        (0xF3, 0x02),
        (0x7F, 0x07),
    ] {
        let (proxy, task) = serve_one(Socks5Handler::new(env(None))).await;
        let mut conn = TcpStream::connect(proxy).await.unwrap();
        conn.write_all(&[0x05, 0x01, 0x00]).await.unwrap();
        assert_eq!(read_n(&mut conn, 2).await, [0x05, 0x00]);
        conn.write_all(&[0x05, command, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        assert_eq!(
            read_n(&mut conn, 10).await,
            [0x05, reply, 0x00, 0x01, 0, 0, 0, 0, 0, 0],
            "command {command:#04x}"
        );
        expect_closed(&mut conn).await;
        finished(task).await;
    }
}

#[tokio::test]
async fn socks5_malformed_greetings_are_dropped() {
    let garbage: [&[u8]; 4] = [
        &[0x05, 0x00],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0x04, 0x01],
        &[0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x09],
    ];
    for bytes in garbage {
        let (proxy, task) = serve_one(Socks5Handler::new(env(None))).await;
        let mut conn = TcpStream::connect(proxy).await.unwrap();
        conn.write_all(bytes).await.unwrap();
        let received = read_until_closed(&mut conn).await;
        // Only a complete greeting is answered before the bad request is dropped.
        assert!(
            received.is_empty() || received == [0x05, 0x00],
            "{bytes:02x?}: {received:02x?}"
        );
        finished(task).await;
    }
}

#[tokio::test]
async fn socks5_silent_client_is_dropped_after_the_handshake_timeout() {
    let direct = Router::new(None, Duration::from_secs(2), 0);
    let env = env_with(None, direct, Duration::from_millis(200));
    let (proxy, task) = serve_one(Socks5Handler::new(env)).await;
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(&[0x05, 0x01]).await.unwrap();
    expect_closed(&mut conn).await;
    finished(task).await;
}

#[tokio::test]
async fn socks5_connector_through_a_chain() {
    // client -> socks4 handler -> (chain) socks5 handler -> echo
    let echo = echo_server().await;
    let users = [user("alice", "s3cret")];
    let (socks5_proxy, socks5_task) =
        serve_one(Socks5Handler::new(env(Some(Authenticator::new(&users))))).await;
    let node = Node::new(
        "node-0".into(),
        Address::from_socket(socks5_proxy),
        Arc::new(TcpDialer),
        Arc::new(connector(Some(user("alice", "s3cret")))),
    );
    let hop = Hop::new(
        "hop-0".into(),
        vec![Arc::new(node)],
        SelectorStrategy::Round,
        1,
        Duration::from_secs(10),
    );
    let chain = Chain {
        name: "chain-0".into(),
        hops: vec![hop],
    };
    let router = Router::new(Some(Arc::new(chain)), Duration::from_secs(2), 0);
    let (socks4_proxy, socks4_task) = serve_one(Socks4Handler::new(env_with(
        None,
        router,
        Duration::from_secs(5),
    )))
    .await;

    let mut conn = TcpStream::connect(socks4_proxy).await.unwrap();
    let mut request = vec![0x04, 0x01];
    request.extend_from_slice(&echo.port().to_be_bytes());
    request.extend_from_slice(&[127, 0, 0, 1, 0x00]);
    conn.write_all(&request).await.unwrap();
    assert_eq!(read_n(&mut conn, 8).await, [0x00, 90, 0, 0, 0, 0, 0, 0]);
    expect_echo(&mut conn, b"two proxies").await;
    drop(conn);
    finished(socks4_task).await;
    finished(socks5_task).await;
}

#[test]
fn socks5_connector_checks_its_settings() {
    let mut metadata = Metadata::default();
    metadata.insert_str("timeout", "soon");
    let err = Socks5Connector::new(None, &metadata, None, &node())
        .err()
        .expect("bad timeout");
    assert!(err.contains("timeout"), "{err}");
    metadata.insert_str("timeout", "-1");
    assert!(Socks5Connector::new(None, &metadata, None, &node()).is_ok());
    let err = Socks5Connector::new(
        Some(user(&"u".repeat(256), "p")),
        &Metadata::default(),
        None,
        &node(),
    )
    .err()
    .expect("long user name");
    assert!(err.contains("username"), "{err}");
}

#[tokio::test]
async fn socks5_connector_times_out_on_a_silent_node() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(TEST_TIMEOUT).await;
        drop(stream);
    });
    let mut metadata = Metadata::default();
    metadata.insert_str("timeout", "200ms");
    let connector = Socks5Connector::new(None, &metadata, None, &node()).unwrap();
    let err = connector
        .handshake(dial(addr).await)
        .await
        .err()
        .expect("timed out");
    assert!(
        matches!(&err, ConnectError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "{err}"
    );
    silent.abort();
}

/// A SOCKS4 CONNECT request to `target` with `user_id`, optionally as SOCKS4a with `domain`.
fn socks4_request(port: u16, ip: [u8; 4], user_id: &[u8], domain: Option<&str>) -> Vec<u8> {
    let mut request = vec![0x04, 0x01];
    request.extend_from_slice(&port.to_be_bytes());
    request.extend_from_slice(&ip);
    request.extend_from_slice(user_id);
    request.push(0);
    if let Some(domain) = domain {
        request.extend_from_slice(domain.as_bytes());
        request.push(0);
    }
    request
}

#[tokio::test]
async fn socks4_connect() {
    let echo = echo_server().await;
    let (proxy, task) = serve_one(Socks4Handler::new(env(None))).await;
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(&socks4_request(
        echo.port(),
        [127, 0, 0, 1],
        b"anyone",
        None,
    ))
    .await
    .unwrap();
    assert_eq!(read_n(&mut conn, 8).await, [0x00, 90, 0, 0, 0, 0, 0, 0]);
    expect_echo(&mut conn, b"hello through socks4").await;
    drop(conn);
    finished(task).await;
}

#[tokio::test]
async fn socks4a_connect() {
    let echo = echo_server().await;
    let (proxy, task) = serve_one(Socks4Handler::new(env(None))).await;
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    let request = socks4_request(echo.port(), [0, 0, 0, 1], b"", Some("localhost"));
    conn.write_all(&request).await.unwrap();
    assert_eq!(read_n(&mut conn, 8).await, [0x00, 90, 0, 0, 0, 0, 0, 0]);
    expect_echo(&mut conn, b"hello through socks4a").await;
    drop(conn);
    finished(task).await;
}

#[tokio::test]
async fn socks4_auth_accepts_only_users_without_password() {
    let echo = echo_server().await;
    let users = [user("open", ""), user("alice", "s3cret")];
    for (user_id, expected) in [(&b"open"[..], 90), (b"alice", 93), (b"nobody", 93)] {
        let env = env(Some(Authenticator::new(&users)));
        let (proxy, task) = serve_one(Socks4Handler::new(env)).await;
        let mut conn = TcpStream::connect(proxy).await.unwrap();
        conn.write_all(&socks4_request(echo.port(), [127, 0, 0, 1], user_id, None))
            .await
            .unwrap();
        assert_eq!(
            read_n(&mut conn, 8).await,
            [0x00, expected, 0, 0, 0, 0, 0, 0]
        );
        if expected == 90 {
            expect_echo(&mut conn, b"open sesame").await;
            drop(conn);
        } else {
            expect_closed(&mut conn).await;
        }
        finished(task).await;
    }
}

#[tokio::test]
async fn socks4_failures_reply_91() {
    let target = closed_port().await;
    let (proxy, task) = serve_one(Socks4Handler::new(env(None))).await;
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(&socks4_request(target.port(), [127, 0, 0, 1], b"", None))
        .await
        .unwrap();
    assert_eq!(read_n(&mut conn, 8).await, [0x00, 91, 0, 0, 0, 0, 0, 0]);
    expect_closed(&mut conn).await;
    finished(task).await;

    let (proxy, task) = serve_one(Socks4Handler::new(env(None))).await;
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    let mut bind = socks4_request(target.port(), [127, 0, 0, 1], b"", None);
    bind[1] = 0x02;
    conn.write_all(&bind).await.unwrap();
    assert_eq!(read_n(&mut conn, 8).await, [0x00, 91, 0, 0, 0, 0, 0, 0]);
    expect_closed(&mut conn).await;
    finished(task).await;
}

#[tokio::test]
async fn socks4_malformed_requests_are_dropped() {
    let mut long_user_id = vec![0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1];
    long_user_id.extend_from_slice(&[b'a'; 300]);
    for bytes in [vec![0x05, 0x01, 0x00], long_user_id] {
        let (proxy, task) = serve_one(Socks4Handler::new(env(None))).await;
        let mut conn = TcpStream::connect(proxy).await.unwrap();
        conn.write_all(&bytes).await.unwrap();
        expect_closed(&mut conn).await;
        finished(task).await;
    }
}
