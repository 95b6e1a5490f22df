//! Free-form `metadata` maps and GOST's rules for reading typed values out of them.
//!
//! GOST lowercases metadata keys on load, so lookups here ignore case; the map keeps the
//! spelling the user wrote so that `gost -O yaml` prints it back unchanged. Values follow GOST's
//! typed getters (`x/metadata/util`): booleans accept Go's spellings, integers accept decimal
//! strings, and durations accept either Go duration syntax (`1m30s`) or an integer number of
//! seconds.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A metadata map: string keys (matched case-insensitively), scalar or map values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Metadata(pub BTreeMap<String, Value>);

/// A metadata value that is present but cannot be read as the type its key needs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("metadata key `{key}`: {message}")]
pub struct MetadataError {
    /// The key as written in the configuration.
    pub key: String,
    /// What was wrong with its value.
    pub message: String,
}

impl Metadata {
    /// True when the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets `key` to a string value, as the command line does.
    pub fn insert_str(&mut self, key: &str, value: &str) {
        self.0
            .insert(key.to_string(), Value::String(value.to_string()));
    }

    /// Looks a key up ignoring case; with several spellings of one key present, the last in
    /// sort order wins, which is as arbitrary as GOST's own choice but at least deterministic.
    pub fn get(&self, key: &str) -> Option<(&str, &Value)> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(k, v)| (k.as_str(), v))
    }

    /// The first of `keys` (aliases of one setting) that is present.
    pub fn get_any(&self, keys: &[&str]) -> Option<(&str, &Value)> {
        keys.iter().find_map(|key| self.get(key))
    }

    /// A string setting; numbers and booleans are formatted.
    pub fn string(&self, keys: &[&str]) -> Option<String> {
        match self.get_any(keys)?.1 {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A boolean setting: a boolean, a non-zero integer, or one of Go's boolean spellings.
    pub fn bool(&self, keys: &[&str]) -> Result<Option<bool>, MetadataError> {
        let Some((key, value)) = self.get_any(keys) else {
            return Ok(None);
        };
        let parsed = match value {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => n.as_i64().map(|n| n != 0),
            Value::String(s) => parse_go_bool(s),
            _ => None,
        };
        parsed.map(Some).ok_or_else(|| MetadataError {
            key: key.to_string(),
            message: format!("expected a boolean (true/false/1/0), got {value}"),
        })
    }

    /// An integer setting: an integer, a boolean (true = 1) or a decimal string.
    pub fn int(&self, keys: &[&str]) -> Result<Option<i64>, MetadataError> {
        let Some((key, value)) = self.get_any(keys) else {
            return Ok(None);
        };
        let parsed = match value {
            Value::Number(n) => n.as_i64(),
            Value::Bool(b) => Some(i64::from(*b)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        parsed.map(Some).ok_or_else(|| MetadataError {
            key: key.to_string(),
            message: format!("expected an integer, got {value}"),
        })
    }

    /// A duration setting: an integer number of seconds or a Go duration string (`500ms`,
    /// `1m30s`). `None`: not set; `Some(None)`: set to a negative value, which GOST uses to
    /// mean "no timeout".
    pub fn duration(&self, keys: &[&str]) -> Result<Option<Option<Duration>>, MetadataError> {
        let Some((key, value)) = self.get_any(keys) else {
            return Ok(None);
        };
        let err = |message: String| MetadataError {
            key: key.to_string(),
            message,
        };
        let seconds = |n: f64| {
            if n < 0.0 {
                Ok(Some(None))
            } else {
                Duration::try_from_secs_f64(n)
                    .map(|d| Some(Some(d)))
                    .map_err(|e| err(format!("duration out of range: {e}")))
            }
        };
        match value {
            Value::Number(n) => seconds(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => match parse_go_duration(s) {
                Ok(d) => Ok(Some(d)),
                Err(message) => match s.trim().parse::<i64>() {
                    Ok(n) => seconds(n as f64),
                    Err(_) => Err(err(message)),
                },
            },
            other => Err(err(format!("expected a duration such as 30s, got {other}"))),
        }
    }
}

/// Where a metadata map sits; GOST reads each of the options below from some of them only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A service's own `metadata`.
    Service,
    /// `handler.metadata`.
    Handler,
    /// `listener.metadata`.
    Listener,
    /// A hop's `metadata`.
    Hop,
    /// A node's `metadata`.
    Node,
}

/// The value an option has when it is off, which is GOST's default and what gost-rs does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Off {
    /// `false`, `0` or one of Go's other spellings of false.
    False,
    /// The number zero.
    Zero,
    /// An empty string or list.
    Empty,
}

/// An option GOST implements and gost-rs does not.
struct UnimplementedOption {
    /// The key, matched ignoring ASCII case; ending in `.`, every key with that prefix.
    key: &'static str,
    /// What the option does in GOST.
    what: &'static str,
    off: Off,
    scopes: &'static [Scope],
}

const SERVICE_AND_HOP: &[Scope] = &[Scope::Service, Scope::Hop, Scope::Node];
const HANDLER: &[Scope] = &[Scope::Handler];

/// GOST metadata options gost-rs does not implement, refused (by the configuration loader and
/// the command line) when set to anything but their default. Ignoring them would leave a
/// proxy doing something other than its owner believes: behind a load balancer that sends the
/// PROXY protocol every request would fail, `interface` and `so_mark` policy routing would be
/// bypassed without a word, and `udp`, `bind` or `mitm.*` would look enabled. The scopes are
/// where GOST reads each key (`x/config/parsing`, the handlers' `metadata.go`); the command
/// line puts an unscoped key in every scope, so it is found in one of them.
const UNIMPLEMENTED_OPTIONS: &[UnimplementedOption] = &[
    UnimplementedOption {
        key: "interface",
        what: "binding outgoing connections to a network interface",
        off: Off::Empty,
        scopes: SERVICE_AND_HOP,
    },
    UnimplementedOption {
        key: "so_mark",
        what: "marking outgoing connections (SO_MARK)",
        off: Off::Zero,
        scopes: SERVICE_AND_HOP,
    },
    UnimplementedOption {
        key: "proxyProtocol",
        what: "the PROXY protocol",
        off: Off::Zero,
        scopes: SERVICE_AND_HOP,
    },
    UnimplementedOption {
        key: "netns",
        what: "a network namespace",
        off: Off::Empty,
        scopes: SERVICE_AND_HOP,
    },
    UnimplementedOption {
        key: "netns.out",
        what: "a network namespace for outgoing connections",
        off: Off::Empty,
        scopes: &[Scope::Service],
    },
    UnimplementedOption {
        key: "preUp",
        what: "running commands before the service starts",
        off: Off::Empty,
        scopes: &[Scope::Service],
    },
    UnimplementedOption {
        key: "postUp",
        what: "running commands after the service starts",
        off: Off::Empty,
        scopes: &[Scope::Service],
    },
    UnimplementedOption {
        key: "preDown",
        what: "running commands before the service stops",
        off: Off::Empty,
        scopes: &[Scope::Service],
    },
    UnimplementedOption {
        key: "postDown",
        what: "running commands after the service stops",
        off: Off::Empty,
        scopes: &[Scope::Service],
    },
    UnimplementedOption {
        key: "skipauth",
        what: "client addresses that skip authentication",
        off: Off::Empty,
        scopes: HANDLER,
    },
    UnimplementedOption {
        key: "udp",
        what: "UDP relay",
        off: Off::False,
        scopes: HANDLER,
    },
    UnimplementedOption {
        key: "bind",
        what: "BIND (accepting connections on the client's behalf)",
        off: Off::False,
        scopes: HANDLER,
    },
    UnimplementedOption {
        key: "sniffing",
        what: "traffic sniffing",
        off: Off::False,
        scopes: HANDLER,
    },
    UnimplementedOption {
        key: "mitm.",
        what: "TLS interception (MITM)",
        off: Off::Empty,
        scopes: HANDLER,
    },
    UnimplementedOption {
        key: "tor",
        what: "Tor",
        off: Off::False,
        scopes: HANDLER,
    },
    UnimplementedOption {
        key: "enableTor",
        what: "Tor",
        off: Off::False,
        scopes: HANDLER,
    },
    UnimplementedOption {
        key: "socks5.tor",
        what: "Tor",
        off: Off::False,
        scopes: HANDLER,
    },
];

impl UnimplementedOption {
    fn matches(&self, key: &str) -> bool {
        if self.key.ends_with('.') {
            key.get(..self.key.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(self.key))
        } else {
            key.eq_ignore_ascii_case(self.key)
        }
    }

    fn is_off(&self, value: &Value) -> bool {
        match (self.off, value) {
            (_, Value::Null) => true,
            (Off::False | Off::Zero, Value::Bool(b)) => !b,
            (Off::False | Off::Zero, Value::Number(n)) => n.as_f64() == Some(0.0),
            (Off::False, Value::String(s)) => s.is_empty() || parse_go_bool(s) == Some(false),
            (Off::Zero, Value::String(s)) => {
                s.trim().is_empty() || s.trim().parse::<i64>() == Ok(0)
            }
            (Off::Empty, Value::String(s)) => s.is_empty(),
            (Off::Empty, Value::Array(a)) => a.is_empty(),
            _ => false,
        }
    }
}

/// An option of a metadata map that GOST implements and gost-rs does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnimplementedKey {
    /// The key as written.
    pub key: String,
    what: &'static str,
    off: Off,
}

impl UnimplementedKey {
    /// How to get rid of it.
    pub fn remedy(&self) -> &'static str {
        match self.off {
            Off::False => "remove it or set it to false",
            Off::Zero => "remove it or set it to 0",
            Off::Empty => "remove it",
        }
    }
}

impl fmt::Display for UnimplementedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {:?} option ({})", self.key, self.what)
    }
}

/// The first key of `map`, a metadata map in `scope`, that sets an option gost-rs does not
/// implement (see [`UNIMPLEMENTED_OPTIONS`]).
pub fn unimplemented_option(
    map: &BTreeMap<String, Value>,
    scope: Scope,
) -> Option<UnimplementedKey> {
    map.iter().find_map(|(key, value)| {
        let option = UNIMPLEMENTED_OPTIONS.iter().find(|option| {
            option.scopes.contains(&scope) && option.matches(key) && !option.is_off(value)
        })?;
        Some(UnimplementedKey {
            key: key.clone(),
            what: option.what,
            off: option.off,
        })
    })
}

/// Go's `strconv.ParseBool` spellings.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parses Go duration syntax: a sequence of decimal numbers with units `ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`, e.g. `1h30m`, `1.5s`, `300ms`. A bare `0` is zero. A leading `-`
/// yields `None` (GOST treats negative durations as "disabled").
pub fn parse_go_duration(input: &str) -> Result<Option<Duration>, String> {
    let s = input.trim();
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(Some(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(format!("invalid duration {input:?}: empty"));
    }
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {input:?}: expected a number before a unit"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "invalid duration {input:?}: missing unit (ns, us, ms, s, m, h)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {input:?}: unknown unit {other:?} (ns, us, ms, s, m, h)"
                ));
            }
        };
        total_nanos += value * scale;
        rest = tail;
    }
    if negative {
        return Ok(None);
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err(format!("invalid duration {input:?}: out of range"));
    }
    Ok(Some(Duration::from_nanos(total_nanos as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, Value)]) -> Metadata {
        Metadata(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn keys_match_case_insensitively() {
        let m = md(&[("readTimeout", Value::from("5s"))]);
        assert_eq!(
            m.duration(&["readtimeout"]).unwrap(),
            Some(Some(Duration::from_secs(5)))
        );
    }

    #[test]
    fn durations_follow_go_rules() {
        assert_eq!(
            parse_go_duration("1m30s"),
            Ok(Some(Duration::from_secs(90)))
        );
        assert_eq!(
            parse_go_duration("1.5s"),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert_eq!(
            parse_go_duration("250ms"),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(parse_go_duration("0"), Ok(Some(Duration::ZERO)));
        assert_eq!(parse_go_duration("-1s"), Ok(None));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("5 parsecs").is_err());
        let m = md(&[
            ("t", Value::from(10)),
            ("u", Value::from("10")),
            ("v", Value::from("x")),
        ]);
        assert_eq!(
            m.duration(&["t"]).unwrap(),
            Some(Some(Duration::from_secs(10)))
        );
        assert_eq!(
            m.duration(&["u"]).unwrap(),
            Some(Some(Duration::from_secs(10)))
        );
        let e = m.duration(&["v"]).unwrap_err();
        assert_eq!(e.key, "v");
    }

    #[test]
    fn booleans_follow_go_rules() {
        let m = md(&[
            ("a", Value::from("True")),
            ("b", Value::from(0)),
            ("c", Value::from("yes")),
        ]);
        assert_eq!(m.bool(&["a"]).unwrap(), Some(true));
        assert_eq!(m.bool(&["b"]).unwrap(), Some(false));
        assert!(m.bool(&["c"]).is_err());
        assert_eq!(m.bool(&["missing"]).unwrap(), None);
    }

    #[test]
    fn unimplemented_options_are_found_unless_off() {
        let found = |pairs: &[(&str, Value)], scope| {
            unimplemented_option(&md(pairs).0, scope).map(|found| found.key)
        };
        // Any spelling of the key, any value but the default.
        for (key, value) in [
            ("proxyProtocol", Value::from(1)),
            ("PROXYPROTOCOL", Value::from("2")),
            ("so_mark", Value::from("0x10")),
            ("interface", Value::from("eth0")),
            ("netns", Value::from("/var/run/netns/blue")),
        ] {
            assert_eq!(
                found(&[(key, value.clone())], Scope::Service).as_deref(),
                Some(key),
                "{key}={value}"
            );
        }
        for (key, value) in [
            ("udp", Value::from(true)),
            ("Bind", Value::from("1")),
            ("sniffing", Value::from("yes")),
            ("mitm.certFile", Value::from("ca.pem")),
            ("MITM.alpn", Value::from("h2")),
            ("enableTor", Value::from("T")),
            ("socks5.tor", Value::from(1)),
        ] {
            assert_eq!(
                found(&[(key, value.clone())], Scope::Handler).as_deref(),
                Some(key),
                "{key}={value}"
            );
        }
        assert_eq!(
            found(&[("interface", Value::from("eth0"))], Scope::Hop).as_deref(),
            Some("interface")
        );
        // Off, GOST's default, is what gost-rs does.
        for (key, value) in [
            ("udp", Value::from(false)),
            ("udp", Value::from("false")),
            ("bind", Value::from(0)),
            ("sniffing", Value::from("")),
            ("so_mark", Value::from(0)),
            ("so_mark", Value::from("0")),
            ("proxyProtocol", Value::from(false)),
            ("interface", Value::from("")),
            ("tor", Value::Null),
        ] {
            let scope = if ["udp", "bind", "sniffing", "tor"].contains(&key) {
                Scope::Handler
            } else {
                Scope::Service
            };
            assert_eq!(found(&[(key, value.clone())], scope), None, "{key}={value}");
        }
        // Only where GOST reads the key, and not keys that merely start like one.
        assert_eq!(found(&[("udp", Value::from(true))], Scope::Listener), None);
        assert_eq!(found(&[("netns.out", Value::from("x"))], Scope::Hop), None);
        assert_eq!(found(&[("mitm", Value::from("x"))], Scope::Handler), None);
        assert_eq!(
            found(&[("udpBufferSize", Value::from(9))], Scope::Handler),
            None
        );
        let key =
            unimplemented_option(&md(&[("udp", Value::from(true))]).0, Scope::Handler).unwrap();
        assert_eq!(key.to_string(), r#"the "udp" option (UDP relay)"#);
        assert_eq!(key.remedy(), "remove it or set it to false");
    }

    proptest::proptest! {
        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,24}") {
            let _ = parse_go_duration(&s);
        }

        #[test]
        fn whole_seconds_round_trip(n in 0u64..1_000_000) {
            assert_eq!(parse_go_duration(&format!("{n}s")), Ok(Some(Duration::from_secs(n))));
        }
    }
}
