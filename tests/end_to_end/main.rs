//! End to end: a real server on port 0, against a real Postgres database of
//! its own, driven by the client library and by external clients.

mod connections;
mod dashboard;
mod drain;
mod edge;
mod grpcurl;
mod held;
mod held_proxy;
mod lifecycle;
mod outage;
mod python;
mod replicas;
mod restart;
mod rollout;
mod support;
mod tls;
mod watch;
mod web;
