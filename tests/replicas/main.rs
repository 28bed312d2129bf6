//! Three replicas (the built binary) on one fresh database, clients that
//! pick replicas at random, and failovers under load: kill -9, a stall
//! beyond the leader lease, ended database sessions, a Postgres restart and
//! a drain. Each counts acknowledged transitions and asserts that none is
//! lost, that no agent goes OFFLINE falsely and that no heartbeat is
//! acknowledged without the leader's judgement; failover times are printed.
//!
//! `MC_HARNESS_AGENTS` sets the fleet size (1,000 by default);
//! `MC_HARNESS_VERBOSE` prints each replica's leadership log lines and
//! warnings once writes are back (they are printed anyway when writes were
//! away for longer than four leader leases, or a check fails);
//! `MC_HARNESS_LOG_DIR` keeps every replica's whole log there, a file each;
//! `scripts/replicas-soak` runs a heavier variant.

mod harness;
mod load;
mod scenarios;
mod verify;
