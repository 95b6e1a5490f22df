//! The relay handler and connector against the bytes GOST 3.2.6 sent and answered
//! (`shared/golden/relay-*.txt`), over real loopback sockets.

use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gost_api::{AuthConfig, Metadata};
use gost_proxy::addr::Address;
use gost_proxy::auth::Authenticator;
use gost_proxy::chain::Router;
use gost_proxy::codec::relay;
use gost_proxy::connector::Connector;
use gost_proxy::connector::relay::RelayConnector;
use gost_proxy::handler::relay::RelayHandler;
use gost_proxy::handler::{Handler, HandlerEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden");

/// Bounds every wait in these tests, so that a bug fails a test instead of hanging it.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The target port GOST's recording used (0xc433); the replay puts our target's port there.
const RECORDED_TARGET_PORT: [u8; 2] = [0xc4, 0x33];

/// What the recording's target (Python's http.server) answered first, as far as recorded.
const RECORDED_TARGET_ANSWER: &[u8] =
    b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11.7\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// One recorded exchange: a title, what was sent, and what came back (`None`: closed).
struct Case {
    title: String,
    sent: Vec<u8>,
    recv: Option<Vec<u8>>,
}

fn cases(file: &str) -> Vec<Case> {
    let text = fs::read_to_string(format!("{GOLDEN}/{file}")).expect("golden file");
    let mut cases = Vec::new();
    let mut title = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("## ") {
            title = t.to_string();
        } else if let Some(hex) = line.strip_prefix("sent: ") {
            cases.push(Case {
                title: title.clone(),
                sent: unhex(hex),
                recv: None,
            });
        } else if let Some(hex) = line.strip_prefix("recv (first 64 bytes): ") {
            let case = cases.last_mut().expect("recv after sent");
            case.recv = (!hex.starts_with('(')).then(|| unhex(hex));
        }
    }
    cases
}

fn user_pass() -> AuthConfig {
    AuthConfig {
        username: "user".into(),
        password: "pass".into(),
        file: None,
    }
}

/// An HTTP-ish target answering each connection with [`RECORDED_TARGET_ANSWER`] once it has
/// received a request head.
async fn recorded_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(RECORDED_TARGET_ANSWER).await;
            });
        }
    });
    addr
}

/// A relay handler serving on a loopback port of its own, with `user:pass` when `auth`.
async fn spawn_handler(service: &str, auth: bool, handshake_timeout: Duration) -> SocketAddr {
    let env = Arc::new(HandlerEnv {
        tls: None,
        service: service.into(),
        auth: auth.then(|| Authenticator::new([&user_pass()])),
        router: Router::new(None, Duration::from_secs(2), 0),
        metadata: Metadata::default(),
        handshake_timeout,
        response_timeout: None,
        max_header_size: gost_proxy::handler::http::MAX_REQUEST_HEAD,
        idle_timeout: None,
        tunnels: TaskTracker::new(),
    });
    let handler = Arc::new(RelayHandler::new(env));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, client)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move { handler.handle(Box::new(conn), client).await });
        }
    });
    server
}

#[tokio::test]
async fn handler_answers_the_recorded_requests_as_gost_did() {
    let target = recorded_target().await;
    let server = spawn_handler("golden", true, Duration::from_secs(5)).await;

    let cases = cases("relay-server.txt");
    assert_eq!(cases.len(), 8, "all recorded cases are replayed");
    for case in cases {
        let mut sent = case.sent.clone();
        if let Ok(Some((_, used))) = relay::parse_request(&sent)
            && sent[used - 2..used] == RECORDED_TARGET_PORT
        {
            // The Addr feature is the last one: its last two bytes are the port.
            sent[used - 2..used].copy_from_slice(&target.port().to_be_bytes());
        }
        let mut conn = TcpStream::connect(server).await.unwrap();
        conn.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let want = case.recv.as_ref().map_or(0, Vec::len);
        let mut buf = [0; 256];
        tokio::time::timeout(TEST_TIMEOUT, async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if want > 0 && got.len() >= want {
                    break;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{}: no answer in time", case.title));
        match case.recv {
            None => assert!(
                got.is_empty(),
                "{}: expected a silent close, got {got:02x?}",
                case.title
            ),
            Some(recv) => {
                let got = &got[..got.len().min(recv.len())];
                assert_eq!(
                    String::from_utf8_lossy(got),
                    String::from_utf8_lossy(&recv),
                    "{}",
                    case.title
                );
                assert_eq!(got, recv.as_slice(), "{}", case.title);
            }
        }
    }
}

#[tokio::test]
async fn lazy_connector_sends_what_gosts_client_sent() {
    let cases = cases("relay-client.txt");
    let [case] = cases.as_slice() else {
        panic!("one recorded client case");
    };
    let (header_len, data) = {
        let (_, used) = relay::parse_request(&case.sent).unwrap().unwrap();
        (used, case.sent[used..].to_vec())
    };
    let node = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = node.local_addr().unwrap();
    let expected_len = case.sent.len();
    let recorder = tokio::spawn(async move {
        let (mut conn, _) = node.accept().await.unwrap();
        let mut got = vec![0; expected_len];
        conn.read_exact(&mut got).await.unwrap();
        conn.write_all(&relay::status_response(relay::STATUS_OK))
            .await
            .unwrap();
        conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        got
    });

    let connector = RelayConnector::new(Some(user_pass()), &Metadata::default()).unwrap();
    let stream = TcpStream::connect(node_addr).await.unwrap();
    let target = Address::parse("127.0.0.1:8080").unwrap();
    let mut conn = tokio::time::timeout(TEST_TIMEOUT, connector.connect(Box::new(stream), &target))
        .await
        .unwrap()
        .unwrap();
    conn.write_all(&data).await.unwrap();
    conn.flush().await.unwrap();
    let got = tokio::time::timeout(TEST_TIMEOUT, recorder)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &got[..header_len],
        &case.sent[..header_len],
        "request header"
    );
    assert_eq!(got, case.sent);
    let mut answer = vec![0; 27];
    tokio::time::timeout(TEST_TIMEOUT, conn.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"HTTP/1.1 204 No Content\r\n\r\n");
}

#[tokio::test]
async fn our_connector_and_handler_tunnel_in_both_modes() {
    let target = recorded_target().await;
    let env = Arc::new(HandlerEnv {
        tls: None,
        service: "pair".into(),
        auth: Some(Authenticator::new([&user_pass()])),
        router: Router::new(None, Duration::from_secs(2), 0),
        metadata: Metadata::default(),
        handshake_timeout: Duration::from_secs(5),
        response_timeout: None,
        max_header_size: gost_proxy::handler::http::MAX_REQUEST_HEAD,
        idle_timeout: None,
        tunnels: TaskTracker::new(),
    });
    let handler = Arc::new(RelayHandler::new(env));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, client)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move { handler.handle(Box::new(conn), client).await });
        }
    });
    for nodelay in ["false", "true"] {
        let mut md = Metadata::default();
        md.insert_str("nodelay", nodelay);
        let connector = RelayConnector::new(Some(user_pass()), &md).unwrap();
        let stream = TcpStream::connect(server).await.unwrap();
        let mut conn = connector
            .connect(Box::new(stream), &Address::from_socket(target))
            .await
            .unwrap();
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        conn.flush().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(TEST_TIMEOUT, conn.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, RECORDED_TARGET_ANSWER, "nodelay={nodelay}");
    }

    // Wrong password: the lazy mode reports the refusal on the first read.
    let wrong = AuthConfig {
        username: "user".into(),
        password: "nope".into(),
        file: None,
    };
    let connector = RelayConnector::new(Some(wrong), &Metadata::default()).unwrap();
    let stream = TcpStream::connect(server).await.unwrap();
    let mut conn = connector
        .connect(Box::new(stream), &Address::from_socket(target))
        .await
        .unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    conn.flush().await.unwrap();
    let e = tokio::time::timeout(TEST_TIMEOUT, conn.read(&mut [0; 16]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("status 2 Unauthorized"), "{e}");
}

/// Sends `request` to a fresh handler connection and returns everything it answers before
/// closing.
async fn exchange(server: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(server).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TEST_TIMEOUT, conn.read_to_end(&mut answer))
        .await
        .expect("the handler closes")
        .unwrap();
    answer
}

#[tokio::test]
async fn handler_refuses_udp_and_addressless_requests_and_drops_silent_clients() {
    let target = recorded_target().await;
    let server = spawn_handler("refusals", false, Duration::from_millis(300)).await;
    let addr = relay::Feature::Addr(relay::AddrFeature::from_address(&Address::from_socket(
        target,
    )));
    let request = |flags, cmd, features: Vec<relay::Feature>| {
        relay::encode_request(&relay::Request {
            flags,
            cmd,
            features,
        })
        .unwrap()
    };
    let bad_request = relay::status_response(relay::STATUS_BAD_REQUEST).to_vec();
    // UDP by flag (GOST's 0x81) and by Network feature: out of scope, refused.
    let udp_flag = request(relay::FLAG_UDP, relay::CMD_CONNECT, vec![addr.clone()]);
    assert_eq!(exchange(server, &udp_flag).await, bad_request);
    let udp_feature = request(
        0,
        relay::CMD_CONNECT,
        vec![relay::Feature::Network(relay::NETWORK_UDP), addr.clone()],
    );
    assert_eq!(exchange(server, &udp_feature).await, bad_request);
    // CONNECT without an address, and ASSOCIATE.
    assert_eq!(exchange(server, &request(0, 1, vec![])).await, bad_request);
    let associate = request(0, relay::CMD_ASSOCIATE, vec![addr.clone()]);
    assert_eq!(exchange(server, &associate).await, bad_request);
    // CMD 0 is CONNECT; no credentials needed without auth; pipelined data reaches the target.
    let mut connect = request(0, 0, vec![addr]);
    connect.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
    let mut expected = relay::status_response(relay::STATUS_OK).to_vec();
    expected.extend_from_slice(RECORDED_TARGET_ANSWER);
    assert_eq!(exchange(server, &connect).await, expected);
    // Half a request, then silence: closed without an answer after the handshake timeout.
    assert_eq!(exchange(server, &[relay::VERSION, 1, 0]).await, b"");
}

#[tokio::test]
async fn undialable_names_get_network_unreachable_after_the_credentials() {
    let server = spawn_handler("undialable", true, Duration::from_secs(5)).await;
    let connect = |username: &[u8], host: relay::AddrHost, port: u16| {
        relay::encode_request(&relay::Request {
            flags: 0,
            cmd: relay::CMD_CONNECT,
            features: vec![
                relay::Feature::UserAuth {
                    username: username.to_vec(),
                    password: b"pass".to_vec(),
                },
                relay::Feature::Addr(relay::AddrFeature { host, port }),
            ],
        })
        .unwrap()
    };
    let not_utf8 = || relay::AddrHost::NotUtf8(b"example\xff.com".to_vec());
    let with_space = || relay::AddrHost::Name("exa mple.com".into());
    let unreachable = relay::status_response(relay::STATUS_NETWORK_UNREACHABLE).to_vec();
    let unauthorized = relay::status_response(relay::STATUS_UNAUTHORIZED).to_vec();
    // GOST dials whatever name it reads and answers its failure with 0x07; it checks the
    // credentials first, so a wrong password is still 0x02.
    for host in [not_utf8(), with_space()] {
        assert_eq!(
            exchange(server, &connect(b"user", host.clone(), 80)).await,
            unreachable,
            "{host:?}"
        );
        assert_eq!(
            exchange(server, &connect(b"intruder", host.clone(), 80)).await,
            unauthorized,
            "{host:?}"
        );
    }
    // The handler still serves: a well-formed request is answered.
    let target = recorded_target().await;
    let mut request = connect(b"user", relay::AddrHost::Ip(target.ip()), target.port());
    request.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
    let mut expected = relay::status_response(relay::STATUS_OK).to_vec();
    expected.extend_from_slice(RECORDED_TARGET_ANSWER);
    assert_eq!(exchange(server, &request).await, expected);
}
