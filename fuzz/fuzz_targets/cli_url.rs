//! The command line: lines of arbitrary UTF-8, each a `-L` value, or a `-F` value when it
//! starts with `-F `. A configuration built from them must load back from what `gost -O yaml`
//! and `gost -O json` print.
#![no_main]

use gost_api::Format;
use gost_proxy::cli::url::config_from_args;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mut services, mut nodes) = (Vec::new(), Vec::new());
    // A port range makes up to 65536 services per line; a few lines reach every rule without
    // running out of memory.
    for line in text.split('\n').take(4) {
        match line.strip_prefix("-F ") {
            Some(node) => nodes.push(node.to_string()),
            None => services.push(line.strip_prefix("-L ").unwrap_or(line).to_string()),
        }
    }
    match config_from_args(&services, &nodes) {
        Ok(config) => {
            let yaml = gost_api::to_yaml(&config);
            assert_eq!(
                gost_api::from_str(&yaml, Format::Yaml),
                Ok(config.clone()),
                "{yaml}"
            );
            let json = gost_api::to_json(&config);
            assert_eq!(
                gost_api::from_str(&json, Format::Json),
                Ok(config),
                "{json}"
            );
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
