//! Per-agent budgets through the runtime: what a looping agent is told.

use super::*;
use crate::engine::HEARTBEAT_BURST;

#[tokio::test(start_paused = true)]
async fn a_looping_agent_is_throttled_with_a_retry_delay_and_others_are_not() {
    let f = start(fast_settings()).await;
    let looping = f.provision("looping").await.token.unwrap();
    let calm = f.provision("calm").await.token.unwrap();
    // The check-in (committed) spends from the budget like any beat.
    for _ in 0..HEARTBEAT_BURST {
        f.lifecycle.heartbeat(&looping, None).await.unwrap();
    }
    let refused = f.lifecycle.heartbeat(&looping, None).await.unwrap_err();
    let LifecycleError::Throttled {
        message,
        retry_after,
    } = refused
    else {
        panic!("{refused:?}");
    };
    // Default policy: 10 s less 20% jitter, halved: one beat per 4 s.
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(4));
    assert_eq!(
        message,
        format!(
            "too many heartbeats from agent looping; retry after {} ms",
            retry_after.as_millis()
        )
    );
    f.lifecycle.heartbeat(&calm, None).await.unwrap();

    // Paused time: the runtime's own tasks (its leader lease) run meanwhile.
    tokio::time::sleep(retry_after).await;
    let ack = f.lifecycle.heartbeat(&looping, None).await.unwrap();
    assert_eq!(ack.status, Status::Online);
    assert!(f.lifecycle.heartbeat(&looping, None).await.is_err());
}
