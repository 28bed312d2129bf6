//! The text format's fields, written as tracing-subscriber's default field
//! formatter writes them (`name=value`, strings quoted as `{:?}` quotes
//! them), byte for byte, but without its formatting machinery for the
//! common values: a transition's line is ten fields, and through
//! `DefaultFields` they were a tenth of a Provision's server CPU. Anything
//! unusual (the message, an error, a string that needs escaping, colours)
//! goes through `DefaultVisitor` itself.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

pub struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor {
            plain: !writer.has_ansi_escapes(),
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'writer> {
    writer: Writer<'writer>,
    /// No colours: a field is its name, `=` and its value.
    plain: bool,
    is_empty: bool,
    result: fmt::Result,
}

impl<'writer> TextVisitor<'writer> {
    /// Whether this visitor writes `field` itself: an ordinary name, and
    /// no colours.
    fn writes(&self, field: &Field) -> bool {
        let name = field.name();
        self.plain
            && self.result.is_ok()
            && name != "message"
            && !name.starts_with("r#")
            && !name.starts_with("log.")
    }

    /// `name=` after a space if a field came before.
    fn start(&mut self, field: &Field) -> &mut Writer<'writer> {
        let pad = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        self.result = self
            .writer
            .write_str(pad)
            .and_then(|()| self.writer.write_str(field.name()))
            .and_then(|()| self.writer.write_char('='));
        &mut self.writer
    }

    /// Hands `field` to the default visitor, as the first field or not.
    fn delegate(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut default = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut default);
        self.result = self.result.and(VisitOutput::finish(default));
        // It skips `log.*` fields (shown as metadata), and pads any other.
        if !field.name().starts_with("log.") {
            self.is_empty = false;
        }
    }
}

/// Whether `{:?}` of `s` is `s` in double quotes.
fn quotes_plainly(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// `value` in decimal, written from the end of `buffer` (`write!` through
/// `Display` was most of an integer field's cost).
fn decimal(mut value: u64, buffer: &mut [u8; 20]) -> &str {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[start..]).expect("ASCII digits")
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.writes(field) && quotes_plainly(value) {
            let writer = self.start(field);
            let written = writer
                .write_char('"')
                .and_then(|()| writer.write_str(value))
                .and_then(|()| writer.write_char('"'));
            self.result = self.result.and(written);
            return;
        }
        self.delegate(field, |v| v.record_str(field, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.writes(field) {
            let writer = self.start(field);
            let written = writer.write_str(decimal(value, &mut [0; 20]));
            self.result = self.result.and(written);
            return;
        }
        self.delegate(field, |v| v.record_u64(field, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.writes(field) {
            let writer = self.start(field);
            let sign = if value < 0 { "-" } else { "" };
            let mut buffer = [0; 20];
            let digits = decimal(value.unsigned_abs(), &mut buffer);
            let written = writer
                .write_str(sign)
                .and_then(|()| writer.write_str(digits));
            self.result = self.result.and(written);
            return;
        }
        self.delegate(field, |v| v.record_i64(field, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.writes(field) {
            let writer = self.start(field);
            let written = writer.write_str(if value { "true" } else { "false" });
            self.result = self.result.and(written);
            return;
        }
        self.delegate(field, |v| v.record_bool(field, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(field, |v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.delegate(field, |v| v.record_debug(field, value));
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// Every event of `emit`, as the text format writes it with `fields`.
    fn lines<N>(fields: N, ansi: bool, emit: &dyn Fn()) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .without_time()
            .with_ansi(ansi)
            .with_writer(buffer.clone())
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn writes_what_the_default_fields_write() {
        let error = io::Error::other("disk \"full\"");
        let emit = || {
            let none: Option<&str> = None;
            tracing::info!(
                agent_id = "agent-1",
                generation = 7u64,
                attempt = 2u32,
                delta = -3i64,
                lowest = i64::MIN,
                zero = 0u64,
                held = true,
                deadline = Some("2026-12-01T02:00:00.000000Z"),
                error = none,
                empty = "",
                quoted = "say \"hi\"",
                slash = "a\\b",
                newline = "two\nlines",
                unicode = "caf\u{e9} \u{1f600}",
                r#type = "raw name",
                ratio = 0.5,
                shown = %"displayed",
                debugged = ?vec![1, 2],
                "lifecycle.queue.enqueued"
            );
            tracing::warn!(
                error = &error as &(dyn std::error::Error + 'static),
                "failed"
            );
            tracing::info!(agent_id = "only", "{} and {}", "message", 1);
            tracing::info!("no fields");
            let span = tracing::info_span!("span", id = "s-1", n = 3u64);
            let _entered = span.enter();
            tracing::info!(inside = "yes", "in a span");
        };
        for ansi in [false, true] {
            let ours = lines(TextFields, ansi, &emit);
            let default = lines(
                tracing_subscriber::fmt::format::DefaultFields::new(),
                ansi,
                &emit,
            );
            assert_eq!(ours, default);
            assert_eq!(ours.lines().count(), 5, "{ours}");
        }
        let plain = lines(TextFields, false, &emit);
        assert!(
            plain.contains(
                r#"lifecycle.queue.enqueued agent_id="agent-1" generation=7 attempt=2 delta=-3 lowest=-9223372036854775808 zero=0 held=true deadline="2026-12-01T02:00:00.000000Z" empty="" quoted="say \"hi\"""#
            ),
            "{plain}"
        );
    }

    #[test]
    fn integers_are_written_in_decimal() {
        for value in [0, 7, 10, 99, 1_000_000_007, u64::MAX] {
            assert_eq!(decimal(value, &mut [0; 20]), value.to_string());
        }
    }

    #[test]
    fn only_plain_printable_ascii_is_quoted_as_is() {
        for s in ["", "agent-1", "2026-12-01T02:00:00Z", "a b ~ '"] {
            assert!(quotes_plainly(s), "{s}");
            assert_eq!(format!("{s:?}"), format!("\"{s}\""));
        }
        for s in ["\"", "\\", "\n", "\t", "\u{7f}", "\u{e9}"] {
            assert!(!quotes_plainly(s), "{s:?}");
        }
    }
}
