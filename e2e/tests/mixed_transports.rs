//! Chains whose hops use different transports and protocols (issue 3): each hop's transport
//! runs inside the tunnel of the hop before it, with real `gost` processes and curl.

use gost_e2e::*;

/// Starts one gost per hop URL, then a client `-L http://… -F` through all of them, and checks
/// a curl request and an 8 MiB echo through the whole chain.
fn chain_works(hops: &[&str]) {
    let target = Target::http();
    let echo = Target::echo();
    let servers: Vec<Gost> = hops
        .iter()
        .map(|hop| Gost::start(&["-L", &format!("{hop}127.0.0.1:0")], 1))
        .collect();
    let mut args = vec!["-L".to_string(), "http://127.0.0.1:0".to_string()];
    for (hop, server) in hops.iter().zip(&servers) {
        args.push("-F".into());
        args.push(format!("{hop}{}", server.addr()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = Gost::start(&args, 1);
    let out = curl(&[
        "-x",
        &format!("http://{}", client.addr()),
        &format!("http://{}/mixed", target.addr),
    ]);
    let logs = || {
        servers
            .iter()
            .map(|s| s.log())
            .chain([client.log()])
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(out.code, 0, "{hops:?}: {}\n{}", out.stderr, logs());
    assert!(
        out.text().starts_with("hello from target"),
        "{hops:?}: {}\n{}",
        out.text(),
        logs()
    );
    let stream = http_connect(client.addr(), &echo.addr.to_string(), None)
        .unwrap_or_else(|e| panic!("{hops:?}: {e}\n{}", logs()));
    echo_round_trip(stream, 8 * 1024 * 1024);
}

#[test]
fn relay_over_ws_then_socks5_over_h2c_then_http() {
    chain_works(&["relay+ws://", "socks5+h2c://user:pass@", "http://"]);
}

#[test]
fn tls_transports_nested_relay_over_wss_then_socks5_over_h2_then_http2() {
    chain_works(&["relay+wss://", "socks5+h2://user:pass@", "http2://"]);
}

#[test]
fn socks5_over_ws_then_relay_over_tls_then_relay_over_h2() {
    chain_works(&["socks5+ws://u:p@", "relay+tls://", "relay+h2://"]);
}
