//! Logging: human text on a terminal or JSON lines, to stderr (stdout carries reports), filtered by
//! `RUST_LOG` or `log.filter`. Log lines carry ids and counts, never a body, a PII value or a secret.

use std::io::IsTerminal;

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// Libraries that log request or response payloads (message bodies, SQL parameters) at debug or trace.
/// They are capped at `info` whatever the filter says, so raw PII cannot reach a log at any level.
const PAYLOAD_LOGGERS: [&str; 9] = [
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_sdk_sqs",
    "hyper",
    "hyper_util",
    "h2",
    "tokio_postgres",
];

/// The filter for `RUST_LOG` or `configured`, with payload-logging libraries capped.
pub fn filter(configured: &str) -> EnvFilter {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(configured))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    capped(filter)
}

/// `filter` with a directive capping each payload logger at `info`. A directive only sets a default:
/// a more specific one (`aws_smithy_runtime::client=trace`) or a span directive (`[invoke]=trace`)
/// still wins, so [`layer`] enforces the cap on its own as well.
fn capped(mut filter: EnvFilter) -> EnvFilter {
    for target in PAYLOAD_LOGGERS {
        // A directive for a plain target name always parses.
        filter = filter.add_directive(format!("{target}=info").parse().expect("valid directive"));
    }
    filter
}

/// Whether a span or event may be written: nothing below `info` from a payload logger (or any of its
/// modules), whatever the filter enables.
fn under_payload_cap(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    let payload_logger = PAYLOAD_LOGGERS
        .iter()
        .any(|name| target.strip_prefix(name).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")));
    !payload_logger || *metadata.level() <= Level::INFO
}

/// The formatting layer: `format` lines to `writer`, through `filter` and the payload cap.
fn layer<S, W>(format: LogFormat, ansi: bool, writer: W, filter: EnvFilter) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter.and(filter_fn(under_payload_cap));
    let layer = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Text => layer.with_target(false).with_filter(filter).boxed(),
        LogFormat::Json => layer.json().flatten_event(true).with_filter(filter).boxed(),
    }
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(config: &LogConfig) {
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let layer = layer(config.format, ansi, std::io::stderr, filter(&config.filter));
    tracing_subscriber::registry().with(layer).init();
}

/// Colours (ANSI escape codes) only for a person at a terminal: never into a pipe, a file, a
/// container's log or CI, and not when `NO_COLOR` is set to anything non-empty (no-color.org).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// An error and its sources on one line: `outer: inner: root`. SDK errors say little at the top.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsStr;

    #[test]
    fn colours_are_for_a_terminal_only() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a pipe, a file or a container log gets no escape codes");
    }

    #[test]
    fn no_color_turns_colours_off_unless_empty() {
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(colour(true, Some(OsStr::new(""))), "no-color.org: an empty NO_COLOR is ignored");
    }
}

#[cfg(test)]
mod payload_cap_tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the real subscriber writes for one trace event of `target` inside a span named
    /// `invoke`, under the filter `directives`.
    fn logged(directives: &str, target_is_payload_logger: bool) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let filter = super::capped(tracing_subscriber::EnvFilter::new(directives));
        let layer = super::layer(super::LogFormat::Text, false, move || writer.clone(), filter);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("invoke");
            let _inside = span.enter();
            if target_is_payload_logger {
                tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "body=planted-593-47-5928");
            } else {
                tracing::trace!(target: "pii_ingest::pipeline", "batch committed");
            }
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn payload_loggers_stay_capped_at_info_whatever_directive_names_them() {
        for directives in [
            "trace",
            "aws_smithy_runtime=trace",
            "aws_smithy_runtime::client=trace",
            "aws_smithy_runtime::client::orchestrator=trace",
            "[invoke]=trace",
        ] {
            let out = logged(directives, true);
            assert!(!out.contains("planted"), "RUST_LOG={directives} let a payload logger's trace through: {out}");
        }
    }

    #[test]
    fn our_own_trace_lines_still_follow_the_filter() {
        assert!(logged("pii_ingest=trace", false).contains("batch committed"));
        assert!(!logged("info", false).contains("batch committed"));
    }
}
