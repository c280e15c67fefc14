//! Logging: human text on a terminal or JSON lines, to stderr (stdout carries reports), filtered by
//! `RUST_LOG` or `log.filter`. Log lines carry ids and counts, never a body, a PII value or a secret.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(configured))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    for target in PAYLOAD_LOGGERS {
        // A directive for a plain target name always parses.
        filter = filter.add_directive(format!("{target}=info").parse().expect("valid directive"));
    }
    filter
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(config: &LogConfig) {
    let filter = filter(&config.filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref()));
    match config.format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Colours (ANSI escape codes) only for a person at a terminal: never into a pipe, a file, a
/// container's log or CI, and not when `NO_COLOR` is set to anything non-empty (no-color.org).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
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
