//! JSON log lines in GOST's shape, so that what parses GOST's logs (a Loki or Fluent Bit
//! pipeline, `jq .msg`) parses ours: one object per line with `time` (RFC 3339 in UTC, with
//! microseconds where GOST writes milliseconds), `level` (`trace`, `debug`, `info`, `warn`,
//! `error`) and `msg` first, then the event's fields at the top level in the order they were
//! recorded, as GOST's `log/slog` handler writes them. Events that libraries log through the
//! `log` crate (rustls) come with `log.target`, `log.file`... fields of their origin, which
//! are left out, as tracing's own formats leave them out. Spans are not written: gost-rs
//! opens none.

use std::fmt::{self, Write as _};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The keys every line starts with; an event field of the same name is written as
/// `field.<name>` so that no line has a key twice.
const RESERVED: [&str; 3] = ["time", "level", "msg"];

/// The [`FormatEvent`] of `log.format: json`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GostJson;

impl<S, N> FormatEvent<S, N> for GostJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str(&line(now(), *event.metadata().level(), event))?;
        writer.write_char('\n')
    }
}

/// The line of `event` at `time`, without its newline.
fn line(time: time::OffsetDateTime, level: Level, event: &Event<'_>) -> String {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let mut out = String::with_capacity(128);
    out.push_str("{\"time\":\"");
    push_time(&mut out, time);
    out.push_str("\",\"level\":\"");
    out.push_str(level_name(level));
    out.push_str("\",\"msg\":");
    out.push_str(&Value::String(fields.message.unwrap_or_default()).to_string());
    for (key, value) in fields.rest {
        out.push(',');
        let key = if RESERVED.contains(&key) {
            format!("field.{key}")
        } else {
            key.to_string()
        };
        out.push_str(&Value::String(key).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// `2006-01-02T15:04:05.000000Z`: RFC 3339 in UTC, as GOST's logger writes it but with
/// microseconds (a reload or a tunnel takes less than a millisecond).
fn push_time(out: &mut String, t: time::OffsetDateTime) {
    let t = t.to_offset(time::UtcOffset::UTC);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    );
}

/// GOST's (logrus') lower-case level names.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// An event's message and its other fields, in the order recorded.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    rest: Vec<(&'static str, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name().starts_with("log.") {
            return;
        }
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.rest.push((field.name(), value));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those become their text.
        let value = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.put(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// A writer into a shared buffer, to read what a subscriber wrote.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn logged(f: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .event_format(GostJson)
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn lines_have_gosts_keys_first_and_fields_flat_in_order() {
        let error = std::io::Error::other("refused \"x\"");
        let lines = logged(|| {
            tracing::info!(service = "service-0", addr = %"127.0.0.1:8080", "listening");
            tracing::warn!(
                open = 3u64,
                delta = -2i64,
                ratio = 0.5,
                ok = false,
                error = &error as &dyn std::error::Error,
                time = "mine",
                "a \"quoted\"\nmessage"
            );
            tracing::trace!(nan = f64::NAN, "odd");
            // What tracing-log makes of a `log` record, as rustls sends them.
            tracing::warn!(
                log.target = "rustls::conn",
                log.module_path = "rustls::conn",
                log.file = "/home/u/src/rustls/conn.rs",
                log.line = 21u64,
                "Sending fatal alert BadCertificate"
            );
        });
        assert_eq!(lines.len(), 4, "{lines:?}");
        let first: serde_json::Map<String, Value> = serde_json::from_str(&lines[0]).unwrap();
        let keys: Vec<&str> = first.keys().map(String::as_str).collect();
        // serde_json's map is sorted; the order on the line is checked on the text.
        assert_eq!(keys, ["addr", "level", "msg", "service", "time"]);
        assert!(
            lines[0].starts_with("{\"time\":\"")
                && lines[0].contains(
                    "Z\",\"level\":\"info\",\"msg\":\"listening\",\"service\":\"service-0\",\"addr\":\"127.0.0.1:8080\"}"
                ),
            "{}",
            lines[0]
        );
        let time = first["time"].as_str().unwrap();

        let shape: String = time
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(shape, "9999-99-99T99:99:99.999999Z");

        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second["level"], "warn");
        assert_eq!(second["msg"], "a \"quoted\"\nmessage");
        assert_eq!(second["open"], 3);
        assert_eq!(second["delta"], -2);
        assert_eq!(second["ratio"], 0.5);
        assert_eq!(second["ok"], false);
        assert_eq!(second["error"], "refused \"x\"");
        assert_eq!(second["field.time"], "mine");
        assert_ne!(second["time"], "mine");

        let third: Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(
            (third["level"].as_str(), third["nan"].as_str()),
            (Some("trace"), Some("NaN"))
        );
        assert!(
            lines[3]
                .ends_with(",\"level\":\"warn\",\"msg\":\"Sending fatal alert BadCertificate\"}"),
            "{}",
            lines[3]
        );
    }
}
