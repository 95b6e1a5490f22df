//! The README's GostChain / GostService example is valid and renders without problems.

use std::collections::BTreeMap;

use gost_api::v1alpha1::{GostChain, GostService};
use gost_operator::render::{Namespace, Settings, render_for_pod};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

#[test]
fn the_readme_example_renders() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|b| b.contains("apiVersion: gost.rs/v1alpha1"))
        .expect("the README has a gost.rs example");
    let (mut services, mut chains) = (Vec::new(), Vec::new());
    for doc in block.split("\n---\n") {
        if doc.contains("kind: GostChain") {
            chains.push(serde_saphyr::from_str::<GostChain>(doc).expect("GostChain loads"));
        } else {
            services.push(serde_saphyr::from_str::<GostService>(doc).expect("GostService loads"));
        }
    }
    assert_eq!((services.len(), chains.len()), (1, 1));
    let secret = |name: &str, pairs: &[(&str, &str)]| {
        let mut s = Secret::default();
        s.metadata.name = Some(name.to_string());
        s.data = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        (name.to_string(), s)
    };
    // The CA is checked as the proxy would load it, so it must be a real certificate.
    let ca = rcgen::generate_simple_self_signed(vec!["edge-ca".to_string()])
        .expect("rcgen makes a certificate")
        .cert
        .pem();
    let secrets: BTreeMap<String, Secret> = [
        secret("relay-user", &[("username", "u"), ("password", "p")]),
        secret("edge-ca", &[("ca.crt", &ca)]),
    ]
    .into();
    let ns = Namespace {
        services: &services,
        chains: &chains,
        secrets: &secrets,
    };
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    let rendered = render_for_pod(&ns, &labels, &Settings::default(), None);
    assert!(rendered.problems.is_empty(), "{:?}", rendered.problems);
    assert!(rendered.warnings.is_empty(), "{:?}", rendered.warnings);
    assert_eq!(rendered.config.services.len(), 1);
    let yaml = gost_api::to_yaml(&rendered.config);
    gost_api::from_str(&yaml, gost_api::Format::Yaml).expect("the proxy loads it");
}
