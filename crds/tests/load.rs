//! The configuration model against GOST's own examples and against bad input.

use std::path::PathBuf;

use gost_api::{Config, ConfigError, Format, from_str, to_json, to_yaml};

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// The YAML blocks of the seed page ("HTTP Tunnel"), in page order.
fn seed_yaml_blocks() -> Vec<String> {
    let page = std::fs::read_to_string(shared().join("seeds/000_3cbed59296aabaec.txt"))
        .expect("the seed page is in ../shared/seeds");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        let yamlish = line.starts_with("services:")
            || line.starts_with("chains:")
            || line.starts_with("- ")
            || line.starts_with(' ');
        match (&mut current, yamlish) {
            (None, true) if line.starts_with("services:") => current = Some(format!("{line}\n")),
            (Some(block), true) => {
                block.push_str(line);
                block.push('\n');
            }
            (Some(_), false) => blocks.push(current.take().unwrap()),
            _ => {}
        }
    }
    blocks.extend(current);
    blocks
}

#[test]
fn every_seed_yaml_loads_verbatim() {
    let blocks = seed_yaml_blocks();
    assert!(
        blocks.len() >= 14,
        "expected the seed's 14 YAML examples, found {}",
        blocks.len()
    );
    for block in &blocks {
        let config = from_str(block, Format::Yaml)
            .unwrap_or_else(|e| panic!("seed example failed to load: {e}\n{block}"));
        assert_eq!(config.services.len(), 1);
        // Printing and reloading gives the same model, in both output formats.
        assert_eq!(from_str(&to_yaml(&config), Format::Yaml).unwrap(), config);
        assert_eq!(from_str(&to_json(&config), Format::Json).unwrap(), config);
    }
}

#[test]
fn seed_client_example_has_the_expected_shape() {
    let client = &seed_yaml_blocks()[1];
    let config: Config = from_str(client, Format::Yaml).unwrap();
    let service = &config.services[0];
    assert_eq!(service.addr, ":8000");
    assert_eq!(service.handler.chain.as_deref(), Some("chain-0"));
    let node = &config.chains[0].hops[0].nodes[0];
    assert_eq!(node.addr, ":8080");
    assert_eq!(node.connector.kind, gost_api::ConnectorType::Http);
    let auth = node.connector.auth.as_ref().unwrap();
    assert_eq!(
        (auth.username.as_str(), auth.password.as_str()),
        ("user", "pass")
    );
}

fn field_error(text: &str) -> (String, String) {
    match from_str(text, Format::Yaml) {
        Err(ConfigError::Field { path, message }) => (path, message),
        other => panic!("expected a field error for\n{text}\ngot {other:?}"),
    }
}

#[test]
fn unknown_types_name_the_field_and_the_accepted_values() {
    let (path, message) =
        field_error("services:\n- name: a\n  addr: :1\n  handler:\n    type: sock5\n");
    assert_eq!(path, "services[0].handler.type");
    assert!(
        message.contains("sock5") && message.contains("socks5"),
        "{message}"
    );

    let (path, message) = field_error(
        "chains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - name: n\n      addr: a:1\n      dialer:\n        type: quic\n",
    );
    assert_eq!(path, "chains[0].hops[0].nodes[0].dialer.type");
    assert!(
        message.contains("quic") && message.contains("tcp"),
        "{message}"
    );
}

/// An empty or null `type` is the default one, as GOST reads it (a template that renders
/// `type: ""`, a `type:` left without a value).
#[test]
fn blank_types_are_the_defaults_as_in_gost() {
    let config = from_str(
        "services:\n- name: a\n  addr: :1\n  handler:\n    type: \"\"\n    chain: c\n  listener:\n    type:\nchains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - name: n\n      addr: a:1\n      connector:\n        type: ~\n      dialer:\n        type: \"\"\n",
        Format::Yaml,
    )
    .unwrap();
    let service = &config.services[0];
    assert_eq!(service.handler.kind.as_str(), "auto");
    assert_eq!(service.listener.kind.as_str(), "tcp");
    let node = &config.chains[0].hops[0].nodes[0];
    assert_eq!(node.connector.kind.as_str(), "http");
    assert_eq!(node.dialer.kind.as_str(), "tcp");
    // GOST trims a handler's and a listener's type, not a connector's or a dialer's.
    let spaced = from_str(
        "services:\n- name: a\n  addr: :1\n  handler:\n    type: \" \"\n  listener:\n    type: \" \"\n",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(spaced.services[0].handler.kind.as_str(), "auto");
    assert!(
        from_str(
            "chains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - name: n\n      addr: a:1\n      connector:\n        type: \" \"\n",
            Format::Yaml,
        )
        .is_err()
    );
    let json = from_str(
        r#"{"services":[{"name":"a","addr":":1","handler":{"type":""},"listener":{"type":null}}]}"#,
        Format::Json,
    )
    .unwrap();
    assert_eq!(json.services[0].handler.kind.as_str(), "auto");
    assert_eq!(json.services[0].listener.kind.as_str(), "tcp");
}

#[test]
fn unknown_fields_and_wrong_types_are_rejected_with_their_path() {
    let (path, message) = field_error("services:\n- name: a\n  adr: :1\n");
    assert_eq!(path, "services[0].adr");
    assert!(message.contains("adr"), "{message}");

    let (path, _) =
        field_error("services:\n- name: a\n  addr: :1\n  handler:\n    retries: many\n");
    assert_eq!(path, "services[0].handler.retries");
}

#[test]
fn references_and_addresses_are_checked() {
    let (path, message) =
        field_error("services:\n- name: a\n  addr: :1\n  handler:\n    chain: nowhere\n");
    assert_eq!(path, "services[0].handler.chain");
    assert!(message.contains("nowhere"), "{message}");

    let (path, _) = field_error("services:\n- name: a\n  addr: :99999\n");
    assert_eq!(path, "services[0].addr");
    // A port is digits, as Go reads it (Rust's parse alone would take the sign).
    let (path, message) = field_error("services:\n- name: a\n  addr: :+80\n");
    assert_eq!(path, "services[0].addr");
    assert!(message.contains("\"+80\""), "{message}");
    let (path, _) = field_error(
        "chains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - name: n\n      addr: a:+80\n",
    );
    assert_eq!(path, "chains[0].hops[0].nodes[0].addr");

    let (path, _) = field_error(
        "chains:\n- name: c\n  hops:\n  - name: h\n    nodes:\n    - name: n\n      addr: nohost\n",
    );
    assert_eq!(path, "chains[0].hops[0].nodes[0].addr");

    let (path, message) = field_error("services:\n- name: a\n  addr: :1\n- name: a\n  addr: :2\n");
    assert_eq!(path, "services[1].name");
    assert!(message.contains("twice"), "{message}");
}

/// The metrics endpoint's auther is checked as a handler's is (GOST leaves the endpoint open
/// when the name finds nothing), and its path must be one (GOST's HTTP mux refuses `metrics`).
#[test]
fn metrics_references_and_paths_are_checked() {
    let (path, message) = field_error("metrics:\n  addr: :9000\n  auther: nowhere\n");
    assert_eq!(path, "metrics.auther");
    assert!(message.contains("nowhere"), "{message}");
    let (path, message) = field_error("metrics:\n  addr: :9000\n  path: prom\n");
    assert_eq!(path, "metrics.path");
    assert!(message.contains("`/prom`"), "{message}");
    for ok in [
        "metrics:\n  addr: :9000\n  path: /prom\n  auther: a\nauthers:\n- name: a\n",
        "metrics:\n  addr: :9000\n  path: \"\"\n",
    ] {
        from_str(ok, Format::Yaml).unwrap();
    }
}

#[test]
fn unsupported_gost_sections_are_refused_by_name() {
    let (path, message) = field_error("bypasses:\n- name: b\n");
    assert_eq!(path, "bypasses");
    assert!(message.contains("not supported"), "{message}");
    let (path, message) = field_error("log:\n  output: gost.log\n  rotation:\n    maxSize: 10\n");
    assert_eq!(path, "log.rotation");
    assert!(message.contains("not supported"), "{message}");
}

#[test]
fn top_level_tls_settings_of_a_listener_are_refused() {
    for (text, expected) in [
        ("tls:\n  rejectUnknownSNI: true\n", "tls.rejectUnknownSNI"),
        ("tls:\n  serverNames: [a.example]\n", "tls.rejectUnknownSNI"),
        (
            "tls:\n  options:\n    minVersion: VersionTLS13\n",
            "tls.options",
        ),
    ] {
        let (path, message) = field_error(text);
        assert_eq!(path, expected, "{text}");
        assert!(message.contains("each listener"), "{message}");
    }
}

#[test]
fn gosts_fatal_log_level_is_error() {
    let config = from_str("log:\n  level: fatal\n", Format::Yaml).unwrap();
    assert_eq!(config.log.unwrap().level, Some(gost_api::LogLevel::Error));
}

#[test]
fn gost_options_gost_rs_does_not_implement_are_refused_with_their_path() {
    let service = |metadata: &str| {
        format!("services:\n- name: a\n  addr: :1\n  handler:\n    type: socks5\n{metadata}")
    };
    for (text, expected) in [
        (
            "services:\n- name: a\n  addr: :1\n  metadata:\n    proxyProtocol: 1\n".to_string(),
            "services[0].metadata.proxyProtocol",
        ),
        (
            "services:\n- name: a\n  addr: :1\n  metadata:\n    Interface: eth0\n".to_string(),
            "services[0].metadata.Interface",
        ),
        (
            service("    metadata:\n      udp: true\n"),
            "services[0].handler.metadata.udp",
        ),
        (
            service("    metadata:\n      skipauth: [10.0.0.0/8]\n"),
            "services[0].handler.metadata.skipauth",
        ),
        (
            "services:\n- name: a\n  addr: :1\n  metadata:\n    preUp:\n    - iptables -A x\n"
                .to_string(),
            "services[0].metadata.preUp",
        ),
        (
            service("    metadata:\n      mitm.certFile: ca.pem\n"),
            "services[0].handler.metadata.mitm.certFile",
        ),
        (
            service("    metadata:\n      enableTor: \"1\"\n"),
            "services[0].handler.metadata.enableTor",
        ),
        (
            "chains:\n- name: c\n  hops:\n  - name: h\n    metadata:\n      so_mark: 100\n    \
             nodes:\n    - name: n\n      addr: a:1\n"
                .to_string(),
            "chains[0].hops[0].metadata.so_mark",
        ),
        (
            "hops:\n- name: h\n  nodes:\n  - name: n\n    addr: a:1\n    metadata:\n      \
             netns: blue\n"
                .to_string(),
            "hops[0].nodes[0].metadata.netns",
        ),
    ] {
        let (path, message) = field_error(&text);
        assert_eq!(path, expected, "{text}");
        assert!(message.contains("not supported by gost-rs"), "{message}");
    }
    let (_, message) = field_error(&service("    metadata:\n      bind: true\n"));
    assert!(
        message.contains(r#"the "bind" option"#) && message.contains("set it to false"),
        "{message}"
    );
    // Their defaults are what gost-rs does, so they load; so does JSON.
    from_str(
        &service("    metadata:\n      udp: false\n      bind: \"0\"\n      sniffing: false\n"),
        Format::Yaml,
    )
    .unwrap();
    from_str(
        r#"{"services": [{"name": "a", "addr": ":1", "metadata": {"so_mark": 0, "interface": ""}}]}"#,
        Format::Json,
    )
    .unwrap();
    let json = from_str(
        r#"{"services": [{"name": "a", "addr": ":1", "metadata": {"proxyProtocol": 2}}]}"#,
        Format::Json,
    );
    assert!(
        matches!(&json, Err(ConfigError::Field { path, .. }) if path == "services[0].metadata.proxyProtocol"),
        "{json:?}"
    );
}

/// A mistake where a key was expected names the mapping it is in and the line, in the
/// user's terms: no `?` path segment, no advice about the YAML library's options.
#[test]
fn yaml_mistakes_among_keys_name_their_mapping_and_line() {
    let duplicate = "services:\n- name: a\n  addr: :1\n  addr: :2\n  handler:\n    type: http\n";
    let error = from_str(duplicate, Format::Yaml).unwrap_err().to_string();
    assert!(error.starts_with("services[0]: "), "{error}");
    assert!(error.contains("duplicate mapping key: addr"), "{error}");
    assert!(error.contains("line 4"), "{error}");
    assert!(
        !error.contains('?') && !error.contains("Options"),
        "{error}"
    );
    let indented = "services:\n- name: a\n  addr: :1\n   handler:\n    type: http\n";
    let error = from_str(indented, Format::Yaml).unwrap_err().to_string();
    assert!(error.starts_with("services[0]: "), "{error}");
    assert!(error.contains("line 4"), "{error}");
    assert!(!error.contains('?'), "{error}");
    // A key with no name and a flow sequence left open.
    let nameless = "chains:\n- name: c\n  hops:\n  - name: h\n  - : [\n";
    let error = from_str(nameless, Format::Yaml).unwrap_err().to_string();
    assert!(!error.contains("Option<"), "{error}");
    let null_name = "services:\n- name:\n  addr: :1\n";
    let error = from_str(null_name, Format::Yaml).unwrap_err().to_string();
    assert!(error.starts_with("services[0].name: "), "{error}");
    assert!(!error.contains("Option<"), "{error}");
}

#[test]
fn syntax_errors_say_which_format() {
    let yaml_error = from_str("services: [", Format::Yaml)
        .unwrap_err()
        .to_string();
    assert!(yaml_error.contains("line 1"), "{yaml_error}");
    match from_str("[unclosed", Format::Yaml) {
        Err(
            e @ ConfigError::Syntax {
                format: Format::Yaml,
                ..
            },
        ) => {
            assert!(e.to_string().contains("YAML"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    match from_str("{\"services\": ", Format::Json) {
        Err(
            e @ ConfigError::Syntax {
                format: Format::Json,
                ..
            },
        ) => {
            assert!(e.to_string().contains("JSON"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn passwords_stay_out_of_debug_output() {
    let config = from_str(&seed_yaml_blocks()[0], Format::Yaml).unwrap();
    let debug = format!("{config:?}");
    assert!(
        debug.contains("user") && !debug.contains("pass\""),
        "{debug}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
    #[test]
    fn arbitrary_yaml_never_panics(text in "\\PC{0,200}") {
        let _ = from_str(&text, Format::Yaml);
        let _ = from_str(&text, Format::Json);
    }

    #[test]
    fn structured_noise_never_panics(
        key in "(services|chains|hops|handler|listener|type|addr|name|nodes|metadata)",
        value in "(\\[|\\]|\\{|\\}|:|-| |\\n|[a-z0-9]){0,40}",
    ) {
        let text = format!("services:\n- name: a\n  {key}: {value}\n");
        let _ = from_str(&text, Format::Yaml);
    }
}

/// A command line can make 65,536 services with one port range; what `gost -O yaml` prints for
/// it must load back (the YAML parser's default budget stopped near 19,000: found by the
/// `cli_url` fuzz target).
#[test]
fn the_largest_port_range_prints_and_loads_back() {
    let mut yaml = String::from("services:\n");
    for port in 0..=65535u32 {
        yaml.push_str(&format!(
            "- name: service-{port}\n  addr: 127.0.0.1:{port}\n  handler:\n    type: auto\n  listener:\n    type: tcp\n"
        ));
    }
    let config = from_str(&yaml, Format::Yaml).expect("65,536 services load");
    assert_eq!(config.services.len(), 65536);
    assert_eq!(from_str(&to_yaml(&config), Format::Yaml).unwrap(), config);
    assert_eq!(from_str(&to_json(&config), Format::Json).unwrap(), config);
}

/// The alias limits still stop an expansion bomb, with an error rather than exhausted memory.
#[test]
fn a_yaml_alias_bomb_is_refused() {
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = i - 1;
        yaml.push_str(&format!(
            "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
        ));
    }
    yaml.push_str("services: []\n");
    let err = from_str(&yaml, Format::Yaml).expect_err("ten to the twelfth nodes");
    assert!(!err.to_string().is_empty());
}

/// What GOST's `-O json` prints for `-F` alone: `"services": null` (a nil Go slice).
const GOST_JSON_WITHOUT_SERVICES: &str = r#"{
  "services": null,
  "chains": [
    {
      "name": "chain-0",
      "hops": [
        {
          "name": "hop-0",
          "nodes": [
            {
              "name": "node-0",
              "addr": ":8080",
              "connector": {"type": "http", "auth": {"username": "user", "password": "pass"}},
              "dialer": {"type": "tcp"}
            }
          ]
        }
      ]
    }
  ]
}"#;

/// A null list, map or section is empty, as in GOST: JSON printed by GOST has nulls, and a
/// YAML key whose entries are all commented out has no value.
#[test]
fn nulls_are_empty_lists_maps_and_sections() {
    let config = from_str(GOST_JSON_WITHOUT_SERVICES, Format::Json).expect("GOST's JSON loads");
    assert!(config.services.is_empty());
    assert_eq!(config.chains[0].hops[0].nodes[0].addr, ":8080");

    let config = from_str(
        "services:\n# - name: a\n#   addr: :1\nchains: []\n",
        Format::Yaml,
    )
    .expect("a commented-out section loads");
    assert!(config.services.is_empty() && config.chains.is_empty());

    let yaml = "services:\n- name: a\n  addr: :1\n  handler:\n  listener:\n  metadata:\n  #  readTimeout: 5s\n";
    let config = from_str(yaml, Format::Yaml).expect("empty maps and sections load");
    assert!(config.services[0].metadata.is_empty());
    assert_eq!(config.services[0].handler.kind, gost_api::HandlerType::Auto);

    let every_null = r#"{"services": [{"name": "a", "addr": ":1", "handler": {"authers": null,
        "metadata": null}, "listener": null, "forwarder": {"nodes": null}, "metadata": null}],
        "chains": [{"name": "c", "hops": [{"name": "h", "selector": null, "metadata": null,
        "nodes": [{"name": "n", "addr": "a:1", "connector": {"metadata": null}, "dialer": null,
        "metadata": null}]}], "metadata": null}], "hops": null, "authers": [{"name": "x",
        "auths": null}], "tls": null, "log": null, "metrics": null}"#;
    let config = from_str(every_null, Format::Json).expect("every null loads");
    assert_eq!(config.services[0].forwarder.as_ref().unwrap().nodes, vec![]);
    assert!(config.authers[0].auths.is_empty());
}

/// Nulls mean "empty", nothing else does: other wrong types keep their errors.
#[test]
fn null_tolerance_keeps_other_type_errors() {
    let (path, message) = field_error("services: 5\n");
    assert_eq!(path, "services");
    assert!(message.contains("sequence"), "{message}");
    let (path, _) = field_error("services:\n- name: a\n  addr: :1\n  metadata: [1]\n");
    assert_eq!(path, "services[0].metadata");
    match from_str(r#"{"chains": {"name": "c"}}"#, Format::Json) {
        Err(ConfigError::Field { path, .. }) => assert_eq!(path, "chains"),
        other => panic!("{other:?}"),
    }
}

fn json_field_error(text: &str) -> (String, String) {
    match from_str(text, Format::Json) {
        Err(ConfigError::Field { path, message }) => (path, message),
        other => panic!("expected a field error for\n{text}\ngot {other:?}"),
    }
}

/// GOST's `-O json` prints a `time.Duration` as integer nanoseconds; it loads as that duration,
/// in JSON and in YAML, and prints back as a duration text.
#[test]
fn integer_durations_are_nanoseconds() {
    let json = r#"{"chains": [{"name": "c", "hops": [{"name": "h",
        "selector": {"strategy": "round", "maxFails": 1, "failTimeout": 30000000000},
        "nodes": [{"name": "n", "addr": "a:1"}]}]}], "tls": {"validity": 90000000000}}"#;
    let config = from_str(json, Format::Json).expect("GOST's durations load");
    let selector = config.chains[0].hops[0].selector.as_ref().unwrap();
    assert_eq!(selector.fail_timeout.as_deref(), Some("30s"));
    assert_eq!(
        config.tls.as_ref().unwrap().validity.as_deref(),
        Some("1m30s")
    );
    assert!(
        to_yaml(&config).contains("failTimeout: 30s"),
        "{}",
        to_yaml(&config)
    );

    let yaml = "chains:\n- name: c\n  hops:\n  - name: h\n    selector:\n      failTimeout: 1500000000\n    nodes:\n    - name: n\n      addr: a:1\n";
    let config = from_str(yaml, Format::Yaml).unwrap();
    let selector = config.chains[0].hops[0].selector.as_ref().unwrap();
    assert_eq!(selector.fail_timeout.as_deref(), Some("1s500ms"));

    let (path, message) = json_field_error(
        r#"{"chains": [{"name": "c", "hops": [{"name": "h", "selector": {"failTimeout": [1]}}]}]}"#,
    );
    assert_eq!(path, "chains[0].hops[0].selector.failTimeout");
    assert!(message.contains("nanoseconds"), "{message}");
    let (path, _) = json_field_error(r#"{"tls": {"validity": 1.5}}"#);
    assert_eq!(path, "tls.validity");
}

/// GOST prints a hop's selector with every field (its `-O json` and `-O yaml` of a file that
/// set only some): an empty strategy is GOST's default, round-robin, in JSON and in YAML.
#[test]
fn an_empty_selector_strategy_is_the_default_as_in_gost() {
    let json = r#"{"chains": [{"name": "c", "hops": [{"name": "h",
        "selector": {"strategy": "", "maxFails": 3, "failTimeout": 0},
        "nodes": [{"name": "n", "addr": "a:1"}]}]}]}"#;
    let config = from_str(json, Format::Json).expect("GOST's printed selector loads");
    let selector = config.chains[0].hops[0].selector.as_ref().unwrap();
    assert_eq!(selector.strategy, None);
    assert_eq!(selector.max_fails, Some(3));
    let yaml = "chains:\n- name: c\n  hops:\n  - name: h\n    selector:\n      strategy: \"\"\n      maxFails: 0\n      failTimeout: 0s\n    nodes:\n    - name: n\n      addr: a:1\n";
    let config = from_str(yaml, Format::Yaml).expect("an empty strategy loads");
    assert_eq!(
        config.chains[0].hops[0].selector.as_ref().unwrap().strategy,
        None
    );
    // Any other name must still be one of the strategies.
    let (path, message) = json_field_error(
        r#"{"chains": [{"name": "c", "hops": [{"name": "h", "selector": {"strategy": "bogus"}}]}]}"#,
    );
    assert_eq!(path, "chains[0].hops[0].selector.strategy");
    assert!(message.contains("fifo"), "{message}");
}

/// A JSON number or boolean in a string field is its text, as in YAML; other types are still
/// errors of their field.
#[test]
fn json_scalars_read_into_strings_as_in_yaml() {
    let json = r#"{"services": [{"name": 1, "addr": ":1", "handler": {"type": "http",
        "auth": {"username": true, "password": 123456}, "authers": [7]}}],
        "authers": [{"name": 7, "auths": [{"username": "u", "password": 1.5}]}]}"#;
    let config = from_str(json, Format::Json).expect("scalars load as strings");
    let auth = config.services[0].handler.auth.as_ref().unwrap();
    assert_eq!(
        (auth.username.as_str(), auth.password.as_str()),
        ("true", "123456")
    );
    assert_eq!(config.services[0].name, "1");
    assert_eq!(config.authers[0].auths[0].password, "1.5");
    let yaml = "services:\n- name: 1\n  addr: :1\n  handler:\n    auth:\n      username: true\n      password: 123456\n";
    let from_yaml = from_str(yaml, Format::Yaml).unwrap();
    assert_eq!(
        from_yaml.services[0].handler.auth,
        config.services[0].handler.auth
    );

    let (path, message) = json_field_error(
        r#"{"services": [{"name": "a", "addr": ":1", "handler": {"auth": {"password": [1]}}}]}"#,
    );
    assert_eq!(path, "services[0].handler.auth.password");
    assert!(message.contains("expected a string"), "{message}");
    let (path, _) = json_field_error(r#"{"services": [{"name": {"a": 1}, "addr": ":1"}]}"#);
    assert_eq!(path, "services[0].name");
    let (path, _) = json_field_error(
        r#"{"services": [{"name": "a", "addr": ":1", "handler": {"retries": "x"}}]}"#,
    );
    assert_eq!(path, "services[0].handler.retries");
    // A null is the empty string, as mapstructure reads it, in JSON and in YAML.
    let config = from_str(
        r#"{"services": [{"name": "a", "addr": ":1", "metadata": {"x": 1}, "handler": {"auth": {"username": "u", "password": null}}}]}"#,
        Format::Json,
    )
    .expect("a null string loads");
    assert_eq!(
        config.services[0].handler.auth.as_ref().unwrap().password,
        ""
    );
    let yaml = "services:\n- name: a\n  addr: :1\n  handler:\n    auth:\n      username: u\n      password:\n";
    let config = from_str(yaml, Format::Yaml).expect("a null string loads");
    assert_eq!(
        config.services[0].handler.auth.as_ref().unwrap().password,
        ""
    );
    let (path, message) = field_error("services:\n- name: a\n  addr:\n");
    assert_eq!(path, "services[0].addr");
    assert!(message.contains("listen address"), "{message}");
}

/// Keys match field names ignoring ASCII case, as viper's do; metadata keeps its keys as
/// written; a key that matches no field is still refused by name with the accepted ones.
#[test]
fn keys_match_fields_ignoring_case() {
    let yaml = "Services:\n- NAME: a\n  Addr: :1\n  handler:\n    TYPE: http\n    metadata:\n      ReadTimeout: 5s\ntls: {certfile: a, keyfile: b}\nchains:\n- name: c\n  hops:\n  - name: h\n    selector: {failtimeout: 1s, MAXFAILS: 2}\n    nodes:\n    - {name: n, addr: 'a:1', Connector: {Type: socks5}}\n";
    let config = from_str(yaml, Format::Yaml).expect("any case loads");
    let service = &config.services[0];
    assert_eq!((service.name.as_str(), service.addr.as_str()), ("a", ":1"));
    assert_eq!(service.handler.kind, gost_api::HandlerType::Http);
    assert!(service.handler.metadata.0.contains_key("ReadTimeout"));
    let tls = config.tls.as_ref().unwrap();
    assert_eq!(
        (tls.cert_file.as_deref(), tls.key_file.as_deref()),
        (Some("a"), Some("b"))
    );
    let hop = &config.chains[0].hops[0];
    assert_eq!(hop.selector.as_ref().unwrap().max_fails, Some(2));
    assert_eq!(hop.nodes[0].connector.kind, gost_api::ConnectorType::Socks5);
    assert!(
        to_yaml(&config).contains("certFile: a"),
        "{}",
        to_yaml(&config)
    );

    let json =
        r#"{"SERVICES": [{"Name": "a", "addr": ":1", "Handler": {"Auth": {"UserName": "u"}}}]}"#;
    let config = from_str(json, Format::Json).expect("any case loads");
    assert_eq!(
        config.services[0].handler.auth.as_ref().unwrap().username,
        "u"
    );

    let (path, message) = field_error("tls: {certfiel: a}\n");
    assert_eq!(path, "tls.certfiel");
    assert!(
        message.contains("certfiel") && message.contains("certFile"),
        "{message}"
    );
    match from_str(
        r#"{"services": [{"name": "a", "adr": ":1"}]}"#,
        Format::Json,
    ) {
        Err(ConfigError::Field { path, message }) => {
            assert_eq!(path, "services[0].adr");
            assert!(message.contains("addr"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let (path, message) = field_error("tls: {certfile: a, certFile: b}\n");
    assert!(path.starts_with("tls"), "{path}");
    assert!(message.contains("duplicate"), "{message}");
    let (path, message) = field_error("Bypasses:\n- name: b\n");
    assert_eq!(path, "Bypasses");
    assert!(message.contains("not supported"), "{message}");
}

/// GOST's file-backed auther, its `-O` form: the section as written, without an empty `auths`
/// (GOST leaves it out too), and reading back to the same configuration.
#[test]
fn a_file_backed_auther_prints_as_written() {
    let text = "authers:\n- name: auther-0\n  reload: 10s\n  file:\n    path: /path/to/auth/file\n";
    let config = from_str(text, Format::Yaml).unwrap();
    let yaml = to_yaml(&config);
    assert!(!yaml.contains("auths"), "{yaml}");
    assert!(yaml.contains("path: /path/to/auth/file"), "{yaml}");
    assert_eq!(from_str(&yaml, Format::Yaml).unwrap(), config);
}

#[test]
fn a_misplaced_value_is_not_echoed_in_errors() {
    // A password written where a section or a number belongs reaches logs and `/readyz` only
    // as the kind of value that was found.
    let (path, message) = json_field_error(
        r#"{"services": [{"name": "a", "addr": ":1", "handler": {"type": "http", "auth": "u:MAINSECRET"}}]}"#,
    );
    assert_eq!(path, "services[0].handler.auth");
    assert!(!message.contains("MAINSECRET"), "{message}");
    assert!(
        message.contains("invalid type: a string, expected"),
        "{message}"
    );
    let (path, message) = json_field_error(
        r#"{"services": [{"name": "a", "addr": ":1", "handler": {"retries": "MAINSECRET"}}]}"#,
    );
    assert_eq!(path, "services[0].handler.retries");
    assert!(!message.contains("MAINSECRET"), "{message}");
    // A value that looks like the rest of the message, quotes and all.
    let (_, message) = json_field_error(
        r#"{"services": [{"name": "a", "addr": ":1", "handler": {"auth": "u:x\", expected LEAKSECRET"}}]}"#,
    );
    assert!(!message.contains("LEAKSECRET"), "{message}");
    assert!(message.contains("expected struct AuthConfig"), "{message}");
    let tree = serde_json::json!({"services": [{"name": "a", "addr": ":1",
        "handler": {"auth": "u:MAINSECRET"}}]});
    match gost_api::load::from_value(tree) {
        Err(ConfigError::Field { path, message }) => {
            assert_eq!(path, "services[0].handler.auth");
            assert!(!message.contains("MAINSECRET"), "{message}");
        }
        other => panic!("expected a field error, got {other:?}"),
    }
    let nodes =
        r#"[{"name": "n", "addr": ":1", "connector": {"type": "http", "auth": "nu:NODESECRET"}}]"#;
    match gost_api::load::nodes_from_json(nodes, "chains[0].hops[0]") {
        Err(ConfigError::Field { path, message }) => {
            assert_eq!(path, "chains[0].hops[0].file[0].connector.auth");
            assert!(!message.contains("NODESECRET"), "{message}");
            assert!(message.contains("a string"), "{message}");
        }
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn a_users_file_is_refused_where_gost_would_ignore_it() {
    // GOST reads `auth.file` for a node's connector or dialer only; anywhere a server checks
    // passwords it would ask for none.
    for (text, path) in [
        (
            "services:\n- name: a\n  addr: :1\n  handler:\n    type: http\n    auth:\n      file: /u.txt\n",
            "services[0].handler.auth.file",
        ),
        (
            "authers:\n- name: a\n  auths:\n  - username: u\n    password: p\n  - file: /u.txt\n",
            "authers[0].auths[1].file",
        ),
        (
            "metrics:\n  addr: :9000\n  auth:\n    file: /u.txt\n",
            "metrics.auth.file",
        ),
    ] {
        let (at, message) = field_error(text);
        assert_eq!(at, path, "{text}");
        assert!(message.contains("auther"), "{message}");
        assert!(!message.contains("  "), "{message}");
    }
}

#[test]
fn a_later_hops_parallel_strategy_is_refused_where_it_is_written() {
    let in_place = "chains:\n- name: c\n  hops:\n  - name: h0\n    nodes:\n    - {name: a, addr: ':1'}\n  - name: h1\n    selector: {strategy: parallel}\n    nodes:\n    - {name: b, addr: ':2'}\n";
    let (path, message) = field_error(in_place);
    assert_eq!(path, "chains[0].hops[1].selector.strategy");
    assert!(message.contains("first hop only"), "{message}");
    assert!(!message.contains("  "), "{message}");
    // Through a reference to a top-level hop: the error names where the strategy is set.
    let referenced = "chains:\n- name: c\n  hops:\n  - name: h0\n    nodes:\n    - {name: a, addr: ':1'}\n  - name: h1\nhops:\n- name: h1\n  selector: {strategy: parallel}\n  nodes:\n  - {name: b, addr: ':2'}\n";
    let (path, message) = field_error(referenced);
    assert_eq!(path, "hops[0].selector.strategy");
    assert!(message.contains("hop 1 of chain \"c\""), "{message}");
    // On a first hop it is GOST's race.
    let first = "chains:\n- name: c\n  hops:\n  - name: h0\n    selector: {strategy: parallel}\n    nodes:\n    - {name: a, addr: ':1'}\n    - {name: b, addr: ':2'}\n";
    from_str(first, Format::Yaml).expect("parallel on a first hop");
}

#[test]
fn a_chain_hops_file_beside_a_top_level_hop_of_its_name_is_refused() {
    let text = "chains:\n- name: c\n  hops:\n  - name: h\n    file: {path: /nodes.json}\nhops:\n- name: h\n  nodes:\n  - {name: a, addr: ':1'}\n";
    let (path, message) = field_error(text);
    assert_eq!(path, "chains[0].hops[0].file");
    assert!(message.contains("hops[0]"), "{message}");
    assert!(!message.contains("  "), "{message}");
    // The same file on both: one hop, whichever way it is read.
    let same = "chains:\n- name: c\n  hops:\n  - name: h\n    file: {path: /nodes.json}\nhops:\n- name: h\n  file: {path: /nodes.json}\n";
    from_str(same, Format::Yaml).expect("the top-level hop's own file");
    // Without the top-level namesake, the file defines the hop in place.
    let alone = "chains:\n- name: c\n  hops:\n  - name: h\n    file: {path: /nodes.json}\n";
    from_str(alone, Format::Yaml).expect("a hop of a file");
}

#[test]
fn a_nodes_file_syntax_error_names_the_entry() {
    match gost_api::load::nodes_from_json(r#"[{"name": "a", "addr": ":1",}]"#, "hops[0]") {
        Err(ConfigError::Field { path, message }) => {
            assert_eq!(path, "hops[0].file[0]");
            assert!(message.contains("trailing comma"), "{message}");
        }
        other => panic!("expected a field error, got {other:?}"),
    }
}
