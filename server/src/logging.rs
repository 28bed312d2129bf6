//! Structured logs: JSON by default, fields flattened beside the message.

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

mod clock;
mod gathered;
mod text_fields;

pub use gathered::in_one_write;

/// Libraries whose debug and trace output can carry credentials (query
/// parameters hold token hashes; HTTP/2 headers hold tokens). They stay at
/// info whatever RUST_LOG says.
const QUIET_BELOW_INFO: &[&str] = &[
    "tokio_postgres",
    "postgres_protocol",
    "h2",
    "hyper",
    "tonic",
];

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(gathered::Gathering(std::io::stdout))
        .with_timer(clock::LineClock)
        .with_ansi(std::io::stdout().is_terminal());
    let no_credentials = filter_fn(may_log);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(no_credentials)
            .init(),
        LogFormat::Text => builder
            .fmt_fields(text_fields::TextFields)
            .finish()
            .with(no_credentials)
            .init(),
    }
}

fn may_log(metadata: &Metadata<'_>) -> bool {
    let quiet = QUIET_BELOW_INFO.iter().any(|crate_name| {
        metadata
            .target()
            .strip_prefix(crate_name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    !quiet || *metadata.level() <= Level::INFO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_carrying_libraries_stay_at_info() {
        use tracing::callsite::Identifier;
        use tracing::field::FieldSet;
        use tracing::metadata::Kind;
        struct Site;
        impl tracing::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unimplemented!()
            }
        }
        static SITE: Site = Site;
        let meta = |target: &'static str, level: Level| {
            Metadata::new(
                "event",
                target,
                level,
                None,
                None,
                None,
                FieldSet::new(&[], Identifier(&SITE)),
                Kind::EVENT,
            )
        };
        assert!(!may_log(&meta("tokio_postgres::query", Level::DEBUG)));
        assert!(!may_log(&meta("tokio_postgres", Level::TRACE)));
        assert!(!may_log(&meta("h2::codec", Level::DEBUG)));
        assert!(may_log(&meta("tokio_postgres::connection", Level::INFO)));
        assert!(may_log(&meta("tokio_postgres_rustls", Level::DEBUG)));
        assert!(may_log(&meta(
            "mission_control_server::runtime",
            Level::TRACE
        )));
    }
}
