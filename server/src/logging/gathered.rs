//! A writer round's log lines in one `write`.
//!
//! The writer logs a line per committed transition, in its serial path, and
//! stdout is line-buffered: a round of 60 Provisions was 60 `write` calls,
//! about 3.7 % of the server's CPU in a Provision benchmark (BENCHMARKS.md,
//! durable transitions). Lines logged on a thread inside [`in_one_write`] are
//! gathered and written together when it ends, even by unwinding, so nothing
//! logged is held past the round that logged it.

use std::cell::RefCell;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

thread_local! {
    /// The lines of the open [`in_one_write`] on this thread, if one is open.
    static GATHERED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Runs `f`; the lines this thread logs meanwhile go to stdout in one write
/// when it ends. Nested calls gather into the outermost.
pub fn in_one_write<R>(f: impl FnOnce() -> R) -> R {
    gathered_into(io::stdout, f)
}

fn gathered_into<W: Write, R>(out: impl FnOnce() -> W, f: impl FnOnce() -> R) -> R {
    let opened = GATHERED.with_borrow_mut(|gathered| {
        let opened = gathered.is_none();
        if opened {
            *gathered = Some(Vec::new());
        }
        opened
    });
    if !opened {
        return f();
    }
    // Written on drop, so a panic in `f` still leaves its lines in the log.
    struct WriteOnDrop<O: FnOnce() -> W, W: Write>(Option<O>);
    impl<O: FnOnce() -> W, W: Write> Drop for WriteOnDrop<O, W> {
        fn drop(&mut self) {
            let lines = GATHERED.take().unwrap_or_default();
            if let Some(out) = self.0.take()
                && !lines.is_empty()
            {
                // A log that cannot be written is not the caller's failure.
                let _ = out().write_all(&lines);
            }
        }
    }
    let _write = WriteOnDrop(Some(out));
    f()
}

/// The log's writer: `M`'s, or the open [`in_one_write`] on this thread.
pub struct Gathering<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Gathering<M> {
    type Writer = GatheringWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        GatheringWriter(self.0.make_writer())
    }
}

pub struct GatheringWriter<W>(W);

impl<W: Write> Write for GatheringWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let gathered = GATHERED.with_borrow_mut(|gathered| match gathered {
            Some(lines) => {
                lines.extend_from_slice(buf);
                true
            }
            None => false,
        });
        if gathered {
            Ok(buf.len())
        } else {
            self.0.write(buf)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::FmtSpan;

    use super::*;

    /// Every `write` the log made, as it made it.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn taken(&self) -> Vec<String> {
            let writes = std::mem::take(&mut *self.0.lock().unwrap());
            writes
                .into_iter()
                .map(|w| String::from_utf8(w).unwrap())
                .collect()
        }
    }

    fn logging_to(writes: &Writes) -> impl tracing::Subscriber + use<> {
        let make = writes.clone();
        tracing_subscriber::fmt()
            .with_writer(Gathering(move || make.clone()))
            .with_span_events(FmtSpan::NONE)
            .without_time()
            .with_ansi(false)
            .finish()
    }

    #[test]
    fn lines_inside_are_written_together_when_it_ends_and_others_one_by_one() {
        let writes = Writes::default();
        tracing::subscriber::with_default(logging_to(&writes), || {
            tracing::info!("before");
            assert_eq!(writes.taken().len(), 1);

            let out = writes.clone();
            let answer = gathered_into(
                move || out,
                || {
                    tracing::info!(n = 1, "round");
                    // Nested: still the outer round's write.
                    gathered_into(Writes::default, || tracing::info!(n = 2, "round"));
                    tracing::warn!(n = 3, "round");
                    assert!(writes.taken().is_empty(), "nothing written before the end");
                    42
                },
            );
            assert_eq!(answer, 42);
            let written = writes.taken();
            assert_eq!(written.len(), 1, "{written:?}");
            let lines: Vec<&str> = written[0].lines().collect();
            assert_eq!(lines.len(), 3, "{lines:?}");
            for (line, n) in lines.iter().zip(["n=1", "n=2", "n=3"]) {
                assert!(line.contains("round") && line.contains(n), "{line}");
            }

            tracing::info!("after");
            assert_eq!(writes.taken().len(), 1);
        });
    }

    #[test]
    fn lines_gathered_before_a_panic_are_still_written() {
        let writes = Writes::default();
        let out = writes.clone();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tracing::subscriber::with_default(logging_to(&writes), || {
                gathered_into(
                    move || out,
                    || {
                        tracing::info!("said before the panic");
                        panic!("a round that fails");
                    },
                )
            })
        }));
        assert!(unwound.is_err());
        let written = writes.taken();
        assert_eq!(written.len(), 1);
        assert!(written[0].contains("said before the panic"), "{written:?}");
        // The thread is not left gathering.
        assert!(GATHERED.with_borrow(Option::is_none));
    }

    #[test]
    fn a_round_that_logs_nothing_writes_nothing() {
        let writes = Writes::default();
        let out = writes.clone();
        gathered_into(move || out, || ());
        assert!(writes.taken().is_empty());
    }
}
