//! End to end: the built `mcctl` binary against a real server started
//! in-process on an in-memory store.

mod bench;
mod gateway_history;
mod gateway_sync;
mod operator;
mod rollout;
mod simulate;
mod support;
mod tls;
mod watch;
