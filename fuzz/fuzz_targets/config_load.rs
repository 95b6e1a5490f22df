//! Configuration text, read as YAML and as JSON; what loads must also print (`gost -O`).
#![no_main]

use gost_api::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [Format::Yaml, Format::Json] {
        if let Ok(config) = gost_api::from_str(text, format) {
            gost_api::to_yaml(&config);
            gost_api::to_json(&config);
        }
    }
});
