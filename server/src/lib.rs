//! mission-control: the agent lifecycle control plane.
//!
//! - [`engine`]: the lifecycle state machine and timer wheel, plain Rust.
//! - [`store`]: where the truth lives: Postgres, or memory for `--dev`.
//! - [`runtime`]: wires the engine to the store, the gateways and watchers.
//! - [`grpc`]: the transport adapter: validation, conversion, status codes.
//! - [`web`]: plain HTTP on the same port: the dashboard and `/metrics`.
//! - [`heap`]: the allocator's thresholds, and returning freed memory.

pub mod app;
pub mod config;
pub mod edge;
pub mod engine;
pub mod grpc;
pub mod heap;
pub mod logging;
pub mod net;
pub mod runtime;
pub mod store;
pub mod testing;
pub mod web;
