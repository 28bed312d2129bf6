//! Memory and start-up of the engine as the fleet grows, for BENCHMARKS.md.
//!
//!     cargo bench -p mission-control-server --bench fleet [-- 1000 10000 100000 1000000]
//!
//! One engine grows through each size in turn; at each, every agent is
//! ONLINE with its lease timer armed (provisioned, then checked in, as the
//! service does it). Reported per agent, over the growth since the empty
//! engine: live heap bytes (a counting allocator: exact, allocator slack
//! excluded) and resident memory (VmRSS: what the machine pays). Then the
//! start-up work at that size: `Engine::restore` from the stored rows
//! (timer wheel rebuilt included), beside a plain clone of the same rows
//! as the baseline. Postgres's own read is not in it (see `mcctl bench`).
//! Last, the engine's part of a heartbeat of every agent (mean per call)
//! and the lease checkpoint's drain of them all: the longest it holds the
//! engine lock at once ("drain ms"), and all of it ("all ms").

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mission_control_server::engine::{
    AgentId, BoardId, Engine, GatewayId, GatewaySpec, LEASES_READ_PER_LOCK, Policy, ProvisionSpec,
    Renewal, Role, StoredState, Timestamp, TokenHash,
};

/// Counts bytes in live allocations.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BOARDS: usize = 100;
const BATCH: usize = 1000;

fn resident() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        .unwrap_or(0)
        * 1024
}

fn token(n: usize) -> TokenHash {
    let mut token = [0u8; 32];
    token[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
    token[8] = 0xa5;
    TokenHash(token)
}

/// Adds agents `from..to`, each provisioned then checked in.
fn grow(engine: &mut Engine, gateway: &GatewayId, from: usize, to: usize, now: Timestamp) {
    for start in (from..to).step_by(BATCH) {
        let end = (start + BATCH).min(to);
        let mut batch = engine.begin(now);
        for n in start..end {
            let spec = ProvisionSpec {
                agent_id: AgentId::parse(format!("agent-{n:07}")).unwrap(),
                name: String::new(),
                gateway_id: gateway.clone(),
                board_id: Some(BoardId::parse(format!("board-{}", n % BOARDS)).unwrap()),
                role: Role::BoardWorker,
                template_version: "2026.11.1".into(),
                rotate_token: false,
            };
            engine.provision(&mut batch, spec, Some(token(n))).unwrap();
        }
        engine.commit(batch);
        let mut batch = engine.begin(now);
        for n in start..end {
            let id = AgentId::parse(format!("agent-{n:07}")).unwrap();
            engine
                .check_in(&mut batch, &id, &token(n), Some("2026.11.1".into()))
                .unwrap();
        }
        engine.commit(batch);
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace('_', "").parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000, 100_000, 1_000_000]
    } else {
        sizes
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    println!(
        "{:>9} {:>11} {:>11} {:>7} {:>11} {:>11} {:>9} {:>10} {:>9} {:>9}",
        "agents",
        "heap B/ag",
        "RSS B/ag",
        "timers",
        "restore s",
        "clone s",
        "ratio",
        "renew us",
        "drain ms",
        "all ms"
    );

    let now = Timestamp::from_micros(1_800_000_000_000_000);
    let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), resident());
    let mut engine = Engine::new(Policy::default());
    let gateway = GatewayId::parse("gw").unwrap();
    let mut batch = engine.begin(now);
    engine.register_gateway(
        &mut batch,
        GatewaySpec {
            gateway_id: gateway.clone(),
            name: Some("gw".into()),
            rotate_token: false,
        },
        TokenHash([0; 32]),
    );
    engine.commit(batch);

    let mut have = 0;
    for &size in &sizes {
        grow(&mut engine, &gateway, have, size, now);
        have = size;
        let heap = LIVE.load(Ordering::Relaxed) - heap0;
        let rss = resident().saturating_sub(rss0);
        let timers = engine.timer_count();

        // What a start needs from the store, then the start itself.
        let state = StoredState {
            agents: engine.agents().cloned().collect(),
            gateways: engine.gateways().cloned().collect(),
            revision: engine.revision(),
            ..StoredState::default()
        };
        let began = Instant::now();
        let copy = state.clone();
        let clone_s = began.elapsed().as_secs_f64();
        drop(copy);
        let began = Instant::now();
        let (restored, _grace) = Engine::restore(Policy::default(), state, now);
        let restore_s = began.elapsed().as_secs_f64();
        assert_eq!(restored.agent_count(), size);
        drop(restored);

        // A heartbeat of every agent, then the lease checkpoint's drain of
        // them.
        let later = now.plus(std::time::Duration::from_secs(1));
        let began = Instant::now();
        for n in 0..size {
            let renewal = engine.renew_lease(&token(n), None, later);
            assert!(
                matches!(renewal, Renewal::Renewed(_)),
                "agent {n}: {renewal:?}"
            );
        }
        let renew_us = began.elapsed().as_secs_f64() * 1e6 / size as f64;
        // As the checkpoint task does it: the ids under the lock, sorted
        // without it, their leases a slice per lock. The longest hold:
        let whole = Instant::now();
        let mut ids = engine.take_dirty_lease_ids();
        let mut drain_ms = whole.elapsed().as_secs_f64() * 1e3;
        ids.sort_unstable();
        let mut drained = Vec::with_capacity(ids.len());
        for slice in ids.chunks(LEASES_READ_PER_LOCK) {
            let began = Instant::now();
            engine.push_leases_of(slice, &mut drained);
            drain_ms = drain_ms.max(began.elapsed().as_secs_f64() * 1e3);
        }
        let drain_all_ms = whole.elapsed().as_secs_f64() * 1e3;
        assert_eq!(drained.len(), size);
        drop(drained);

        println!(
            "{size:>9} {:>11} {:>11} {timers:>7} {restore_s:>11.3} {clone_s:>11.3} {:>9.1} {renew_us:>10.2} {drain_ms:>9.1} {drain_all_ms:>9.1}",
            heap / size,
            rss / size,
            restore_s / clone_s.max(1e-9)
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at end: {}", load.trim());
}
