//! Every example under `deploy/examples/` carries traffic, end to end on loopback: the
//! operator's rendering of its gateway and of its client sidecar runs as two real `gost -C`
//! processes, and curl sends a request through the client's local proxy, the tunnel and the
//! gateway to a local target. Only what a cluster provides is swapped: listen ports become
//! ephemeral ports on 127.0.0.1, the gateway Service's DNS name its loopback address (the name
//! is still the one sent and verified in TLS), and the Secret volume a directory.

#[path = "../../operator/tests/support/examples.rs"]
mod examples;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use examples::Example;
use gost_api::Config;
use gost_e2e::*;
use gost_operator::gateway;
use gost_operator::render::{
    MOUNT_PATH, Namespace, Rendered, Settings, render_for_pod, render_gateway,
};

/// What the example's comment block tells users to check, answered by [`Target::http`].
const GREETING: &str = "hello from target";

/// The rendered config as a `gost -C` file in a directory of its own, with the TLS files beside
/// it where the sidecar's Secret volume would put them; the directory, to keep while gost runs,
/// and the file's path.
fn write_config(rendered: &Rendered, config: &Config) -> (TempDir, String) {
    let dir = tempdir();
    for (name, bytes) in &rendered.files {
        std::fs::write(dir.join(name), bytes).expect("write a TLS file");
    }
    let yaml = gost_api::to_yaml(config).replace(
        &format!("{MOUNT_PATH}/"),
        &format!("{}/", dir.to_str().expect("UTF-8 temp path")),
    );
    std::fs::write(dir.join("config.yaml"), &yaml).expect("write the config");
    let path = dir.join("config.yaml").to_str().expect("UTF-8").to_string();
    (dir, path)
}

/// Loopback ports for every service, and no admin endpoint (its fixed port would clash
/// between the processes; the probes are not what is tested here).
fn on_loopback(config: &mut Config) {
    for service in &mut config.services {
        service.addr = "127.0.0.1:0".to_string();
    }
    config.metrics = None;
}

/// A running gateway: its Service name and, per Service port, where the process listens.
struct RunningGateway {
    _process: Gost,
    _config: TempDir,
    service: String,
    ports: BTreeMap<u16, SocketAddr>,
}

fn start_gateways(example: &Example, ns: &Namespace<'_>) -> Vec<RunningGateway> {
    let file = &example.file;
    example
        .gateways()
        .map(|gs| {
            let name = gs.metadata.name.clone().unwrap_or_default();
            let rendered = render_gateway(ns, gs, &Settings::default(), None);
            assert!(
                rendered.problems.is_empty(),
                "{file}: {:#?}",
                rendered.problems
            );
            let listen = gateway::listen_ports(&name, &rendered);
            let mut config = rendered.config.clone();
            on_loopback(&mut config);
            let (dir, path) = write_config(&rendered, &config);
            let process = Gost::start(&["-C", &path], config.services.len());
            let ports = listen
                .iter()
                .map(|p| {
                    let service = format!("{name}/{}", p.name);
                    let addr = process.service_addr(&service).unwrap_or_else(|| {
                        panic!(
                            "{file}: gateway service {service} did not log its address; log:\n{}",
                            process.log()
                        )
                    });
                    let port = u16::try_from(gateway::service_port(gs, p))
                        .expect("a Service port fits in u16");
                    (port, addr)
                })
                .collect();
            RunningGateway {
                _process: process,
                _config: dir,
                service: gateway::gateway_name(&name),
                ports,
            }
        })
        .collect()
}

/// The client sidecar's config with its chains pointed at the running gateways.
fn client_config(file: &str, rendered: &Rendered, gateways: &[RunningGateway]) -> Config {
    let mut config = rendered.config.clone();
    on_loopback(&mut config);
    for chain in &mut config.chains {
        for node in chain.hops.iter_mut().flat_map(|h| h.nodes.iter_mut()) {
            let (host, port) = gost_api::split_host_port(&node.addr).expect("host:port");
            let port: u16 = port.parse().expect("a port");
            let gateway = gateways
                .iter()
                .find(|g| g.service == host)
                .unwrap_or_else(|| panic!("{file}: chain {} dials {host}, no gateway", chain.name));
            let addr = gateway.ports.get(&port).unwrap_or_else(|| {
                panic!("{file}: {host} has no port {port}: {:?}", gateway.ports)
            });
            // In the cluster the name dialled is the Service's, and TLS verifies that name.
            if let Some(tls) = &mut node.dialer.tls
                && tls.server_name.is_none()
            {
                tls.server_name = Some(host.to_string());
            }
            node.addr = addr.to_string();
        }
    }
    config
}

fn run_example(file: &str) {
    let example = examples::load(&examples::examples_dir().join(file));
    let ns = Namespace {
        services: &example.services,
        chains: &example.chains,
        secrets: &example.secrets,
    };
    let target = Target::http();
    let gateways = start_gateways(&example, &ns);
    assert!(!gateways.is_empty(), "{file}: no gateway");
    let clients = example.client_pods();
    assert!(!clients.is_empty(), "{file}: no client Deployment");
    for (deployment, labels) in &clients {
        let rendered = render_for_pod(&ns, labels, &Settings::default(), None);
        assert!(
            rendered.problems.is_empty(),
            "{file}: {:#?}",
            rendered.problems
        );
        let config = client_config(file, &rendered, &gateways);
        let (_dir, path) = write_config(&rendered, &config);
        let client = Gost::start(&["-C", &path], config.services.len());
        for service in &config.services {
            let entry = client.service_addr(&service.name).unwrap_or_else(|| {
                panic!(
                    "{file}: {deployment}: service {} did not log its address",
                    service.name
                )
            });
            // As the example's comment says: curl -x http://127.0.0.1:8000 http://...
            let out = curl(&[
                "-x",
                &format!("http://{entry}"),
                &format!("http://{}/", target.addr),
            ]);
            assert!(
                out.code == 0 && out.text().starts_with(GREETING),
                "{file}: {deployment}'s {} did not reach the target through the tunnel \
                 (curl exit {}): {}{}\nclient log:\n{}",
                service.name,
                out.code,
                out.text(),
                out.stderr,
                client.log()
            );
        }
    }
}

#[test]
fn tunnel_quick_start() {
    run_example("tunnel.yaml");
}

#[test]
fn pht_and_phts() {
    run_example("pht.yaml");
}

#[test]
fn socks5_over_websocket() {
    run_example("socks5-ws.yaml");
}

#[test]
fn http2_connect_proxy() {
    run_example("http2.yaml");
}

#[test]
fn socks5_over_h2_and_h2c() {
    run_example("h2.yaml");
}

#[test]
fn relay_over_grpc_with_tls_and_insecure() {
    run_example("grpc.yaml");
}

#[test]
fn pht_over_http3() {
    run_example("h3.yaml");
}

/// Each file has its test above: a new example must get one.
#[test]
fn every_example_file_has_a_test() {
    let tested = [
        "grpc.yaml",
        "h2.yaml",
        "h3.yaml",
        "http2.yaml",
        "pht.yaml",
        "socks5-ws.yaml",
        "tunnel.yaml",
    ];
    let files: Vec<String> = examples::load_all().into_iter().map(|e| e.file).collect();
    assert_eq!(
        files,
        tested,
        "add a test for each new file under {}",
        Path::new("deploy/examples").display()
    );
}
