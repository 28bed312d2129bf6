//! `mcctl watch`: a live view of agents, like `kubectl get -w`.
//!
//! On a terminal (table output) the table is redrawn on the alternate
//! screen, clipped to the window, after changes (at most ten times a
//! second, however busy the fleet) and every second, so countdowns move.
//! Piped, it prints one line per message; with `--output json`, one JSON
//! object per message.

mod view;

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use mission_control_client::{Error, WatchAgentRequest, WatchAgentResponse};
use tonic::Code;

use crate::cli::WatchArgs;
use crate::context::Context;
use crate::context::Output;
use crate::failure::Failure;
use crate::{json, stdout};
use view::Fleet;

/// Cursor home, then each line cleared to its end, then the rest of the
/// screen: a redraw without the flicker of clearing everything first.
const HOME: &str = "\x1b[H";
const CLEAR_LINE: &str = "\x1b[K";
const CLEAR_BELOW: &str = "\x1b[J";
const CLEAR_SCREEN: &str = "\x1b[2J";
/// The alternate screen: the view does not pile up in the scrollback, and
/// the terminal is as it was after quitting.
const ENTER_ALTERNATE: &str = "\x1b[?1049h";
const LEAVE_ALTERNATE: &str = "\x1b[?1049l";
/// How often changes may redraw the table at most.
const FRAME: Duration = Duration::from_millis(100);

pub async fn run(ctx: &Context, args: WatchArgs) -> Result<(), Failure> {
    let live_table = ctx.output == Output::Table && std::io::stdout().is_terminal();
    let request = WatchAgentRequest {
        statuses: args.filters.statuses(),
        agent_id: args.agent,
        gateway_id: args.filters.gateway,
        board_id: args.filters.board,
        drifted: args.filters.drifted,
        start_revision: args.since,
        // The table's LAST SEEN column needs them; lines only on request.
        include_heartbeats: args.heartbeats || live_table,
        // The service's period.
        bookmark_interval: None,
    };
    let filter = view::Filter::of(&request);
    let mut stream = match ctx.operator.watch(request).await {
        Ok(stream) => stream,
        Err(Error::Status(status)) => {
            let hint = open_hint(status.code());
            return Err(Failure::Stream { status, hint });
        }
        Err(error) => return Err(error.into()),
    };
    let mut fleet = Fleet::new(filter, args.since);
    if !live_table {
        return follow(ctx, &mut stream, &mut fleet).await;
    }
    if !stdout::emit(&format!("{ENTER_ALTERNATE}{CLEAR_SCREEN}")) {
        return Ok(());
    }
    let ended = follow_live(&mut stream, &mut fleet).await;
    stdout::emit(LEAVE_ALTERNATE);
    // The last view stays visible after the alternate screen is gone.
    if fleet.snapshot_complete() {
        stdout::emit(&fleet.render(SystemTime::now(), None));
    }
    ended
}

type Stream = tonic::Streaming<WatchAgentResponse>;

/// The live table: redrawn after changes (at most once a frame) and every
/// second, until Ctrl-C, the end of the stream, or the terminal goes.
async fn follow_live(stream: &mut Stream, fleet: &mut Fleet) -> Result<(), Failure> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut frame = tokio::time::interval(FRAME);
    let mut dirty = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tick.tick() => {
                if fleet.snapshot_complete() && !redraw(fleet) {
                    return Ok(());
                }
                dirty = false;
            }
            _ = frame.tick(), if dirty => {
                if !redraw(fleet) {
                    return Ok(());
                }
                dirty = false;
            }
            message = stream.next() => {
                dirty |= fleet.apply(&next(message, fleet)?);
            }
        }
    }
}

/// One line (or JSON object) per message, until Ctrl-C, the end of the
/// stream, or the reader goes.
async fn follow(ctx: &Context, stream: &mut Stream, fleet: &mut Fleet) -> Result<(), Failure> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            message = stream.next() => {
                let message = next(message, fleet)?;
                fleet.apply(&message);
                let written = match ctx.output {
                    Output::Json => json::watch_item(&message)
                        .is_none_or(|value| stdout::emit_line(&value.to_string())),
                    Output::Table => view::line(&message).is_none_or(|line| stdout::emit_line(&line)),
                };
                if !written {
                    return Ok(()); // the reader has gone
                }
            }
        }
    }
}

/// The stream's next message, or why it ended and how to resume.
fn next(
    message: Option<Result<WatchAgentResponse, tonic::Status>>,
    fleet: &Fleet,
) -> Result<WatchAgentResponse, Failure> {
    let status = match message {
        Some(Ok(message)) => return Ok(message),
        Some(Err(status)) => status,
        None => tonic::Status::unavailable("the service ended the watch"),
    };
    let hint = hint(status.code(), fleet.resume_revision());
    Err(Failure::Stream { status, hint })
}

/// Redraws the screen, clipped to the window; false once it is gone.
fn redraw(fleet: &Fleet) -> bool {
    let size = terminal_size();
    let screen = fleet.render(SystemTime::now(), size.map(|(rows, _)| rows));
    let mut out = String::from(HOME);
    for (i, line) in screen.lines().enumerate() {
        if i > 0 {
            out.push('\n'); // none after the last line: no scrolling
        }
        match size {
            Some((_, columns)) => out.extend(line.chars().take(columns)),
            None => out.push_str(line),
        }
        out.push_str(CLEAR_LINE);
    }
    out.push_str(CLEAR_BELOW);
    stdout::emit(&out)
}

/// The terminal's rows and columns, when stdout is a terminal that says.
#[cfg(unix)]
fn terminal_size() -> Option<(usize, usize)> {
    let size = rustix::termios::tcgetwinsize(rustix::stdio::stdout()).ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then(|| (size.ws_row.into(), size.ws_col.into()))
}

#[cfg(not(unix))]
fn terminal_size() -> Option<(usize, usize)> {
    None
}

/// Why a watch could not open, when the code alone does not say.
fn open_hint(code: Code) -> String {
    match code {
        Code::ResourceExhausted => "the service has as many watch streams open as it allows; \
             try again in a few seconds"
            .to_owned(),
        Code::OutOfRange => hint(code, 0),
        _ => String::new(),
    }
}

/// What an error ending an open stream means for the person watching, and
/// what to do next.
fn hint(code: Code, resume_revision: u64) -> String {
    let resume = if resume_revision > 0 {
        format!("resume without a gap: mcctl watch --since {resume_revision} (same filters)")
    } else {
        "run the watch again for a fresh snapshot".to_owned()
    };
    match code {
        Code::ResourceExhausted => format!(
            "the watch fell too far behind the service's buffer and was ended rather \
             than skip events; {resume}"
        ),
        Code::OutOfRange => "the --since revision is outside the service's retained \
             history (compacted, or not reached yet); watch without --since for a fresh snapshot"
            .to_owned(),
        Code::Unavailable => format!("the service went away (restarting or unreachable); {resume}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_errors_explain_themselves() {
        let behind = hint(Code::ResourceExhausted, 42);
        assert!(behind.contains("fell too far behind"), "{behind}");
        assert!(behind.contains("--since 42"), "{behind}");
        assert!(hint(Code::ResourceExhausted, 0).contains("fresh snapshot"));
        assert!(hint(Code::OutOfRange, 3).contains("without --since"));
        assert!(hint(Code::Internal, 3).is_empty());
        // At open, RESOURCE_EXHAUSTED is the service's cap on watches.
        assert!(open_hint(Code::ResourceExhausted).contains("as many watch streams"));
        assert!(open_hint(Code::OutOfRange).contains("without --since"));
    }
}
