//! Writing results to stdout without `print!`'s panic when the reader has
//! gone (`mcctl watch | head`): the caller learns it and stops quietly.

use std::io::Write;

/// Writes `text` and flushes; false once stdout can no longer be written.
pub fn emit(text: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .is_ok()
}

/// `emit` with a line break.
pub fn emit_line(text: &str) -> bool {
    emit(&format!("{text}\n"))
}
