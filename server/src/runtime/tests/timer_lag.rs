//! The timer lag metric sees the timers the writer fires.

use std::time::Duration;

use super::*;

fn lag_count(metrics: &str) -> u64 {
    metric(metrics, "mission_control_timer_lag_seconds_count")
}

#[tokio::test(start_paused = true)]
async fn a_lease_expiry_is_observed_in_the_timer_lag_histogram() {
    let f = start(fast_settings()).await;
    let token = f.provision("a").await.token.unwrap();
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    let before = lag_count(&f.lifecycle.render_metrics());

    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(f.agent("a").status, Status::Offline);
    let metrics = f.lifecycle.render_metrics();
    assert!(lag_count(&metrics) > before, "{metrics}");
    // Paused time: the writer fired it at its deadline, and no later.
    assert!(
        metrics.contains(&format!(
            "mission_control_timer_lag_seconds_bucket{{le=\"0.001\"}} {}",
            lag_count(&metrics)
        )),
        "{metrics}"
    );
}
