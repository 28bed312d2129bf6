//! `mcctl watch`: a live view of agents, like `kubectl get -w`.
//!
//! On a terminal (table output) the table is redrawn on every change and
//! every second, so countdowns move. Piped, it prints one line per message;
//! with `--output json`, one JSON object per message.

mod view;

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use mission_control_client::{Error, WatchAgentRequest};
use tonic::Code;

use crate::cli::{Output, WatchArgs};
use crate::commands::Context;
use crate::failure::Failure;
use crate::{json, stdout};
use view::Fleet;

/// Cursor home, then each line cleared to its end, then the rest of the
/// screen: a redraw without the flicker of clearing everything first.
const HOME: &str = "\x1b[H";
const CLEAR_LINE: &str = "\x1b[K";
const CLEAR_BELOW: &str = "\x1b[J";
const CLEAR_SCREEN: &str = "\x1b[2J";

pub async fn run(ctx: &Context, args: WatchArgs) -> Result<(), Failure> {
    let live_table = ctx.output == Output::Table && std::io::stdout().is_terminal();
    let statuses = args.filters.statuses();
    let request = WatchAgentRequest {
        agent_id: args.agent,
        gateway_id: args.filters.gateway,
        board_id: args.filters.board,
        statuses: statuses.clone(),
        start_revision: args.since,
        // The table's LAST SEEN column needs them; lines only on request.
        include_heartbeats: args.heartbeats || live_table,
    };
    let mut stream = match ctx.operator.watch(request).await {
        Ok(stream) => stream,
        Err(Error::Status(status)) => {
            let hint = open_hint(status.code());
            return Err(Failure::Stream { status, hint });
        }
        Err(error) => return Err(error.into()),
    };
    let mut fleet = Fleet::new(statuses, args.since);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    if live_table && !stdout::emit(CLEAR_SCREEN) {
        return Ok(());
    }
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tick.tick(), if live_table => {
                if fleet.snapshot_complete() && !redraw(&fleet) {
                    return Ok(());
                }
            }
            message = stream.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(status)) => {
                        let hint = hint(status.code(), fleet.resume_revision());
                        return Err(Failure::Stream { status, hint });
                    }
                    None => {
                        let status = tonic::Status::unavailable("the service ended the watch");
                        let hint = hint(status.code(), fleet.resume_revision());
                        return Err(Failure::Stream { status, hint });
                    }
                };
                let changed = fleet.apply(&message);
                let written = match ctx.output {
                    Output::Json => json::watch_item(&message)
                        .is_none_or(|value| stdout::emit_line(&value.to_string())),
                    Output::Table if live_table => !changed || redraw(&fleet),
                    Output::Table => view::line(&message).is_none_or(|line| stdout::emit_line(&line)),
                };
                if !written {
                    return Ok(()); // the reader has gone
                }
            }
        }
    }
}

/// Redraws the screen; false once the terminal is gone.
fn redraw(fleet: &Fleet) -> bool {
    let screen = fleet.render(SystemTime::now());
    let mut out = String::from(HOME);
    for line in screen.lines() {
        out.push_str(line);
        out.push_str(CLEAR_LINE);
        out.push('\n');
    }
    out.push_str(CLEAR_BELOW);
    stdout::emit(&out)
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
