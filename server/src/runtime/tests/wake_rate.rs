//! Wake rate limits through the runtime: wakes woken together go out at
//! the limited rate in deadline order, per gateway and in total, and each
//! check-in deadline runs from its wake's delivery.

use std::time::Duration;

use super::*;

const DEADLINE: Duration = Duration::from_secs(30);

fn settings(per_gateway: u32, total: u32) -> Settings {
    Settings {
        policy: Policy {
            gateway_wake_rate: per_gateway,
            total_wake_rate: total,
            ..Policy::default()
        },
        ..fast_settings()
    }
}

/// Every wake waiting on the stream now: (when it was sent, agent).
fn drain(rx: &mut mpsc::Receiver<Outbound>, start: Timestamp) -> Vec<(Duration, String)> {
    let mut sent = Vec::new();
    while let Ok(outbound) = rx.try_recv() {
        if let Outbound::Command {
            command: GatewayCommand::Wake(wake),
            ..
        } = outbound
        {
            let at = Timestamp::from_micros(wake.checkin_deadline_at.as_micros())
                .since(start.plus(DEADLINE));
            sent.push((at, wake.agent_id.to_string()));
        }
    }
    sent
}

#[tokio::test(start_paused = true)]
async fn a_thousand_agents_woken_at_once_go_out_at_the_rate_in_deadline_order_judged_from_delivery()
{
    let f = start(settings(100, 1000)).await;
    let (_session, mut commands) = f.connect();
    let start = f.lifecycle.now();
    // Due a millisecond apart, in the reverse of id order: the order they
    // fell due in is not the order of their ids.
    let due: Vec<String> = (0..1000).rev().map(|n| format!("a{n:03}")).collect();
    for agent in &due {
        f.provision(agent).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = drain(&mut commands, start);
    assert_eq!(sent.len(), 1000);
    let order: Vec<&String> = sent.iter().map(|(_, a)| a).collect();
    assert_eq!(order, due.iter().collect::<Vec<_>>(), "deadline order");
    assert_paced(&sent, 100, 100);
    assert!(sent.last().unwrap().0 >= Duration::from_secs(9));

    // Each deadline runs from its own delivery; none is judged earlier.
    tokio::time::sleep(Duration::from_secs(30)).await;
    for (at, agent) in &sent {
        let sent_at = start.plus(*at);
        let history = f.lifecycle.history(&id(agent), None, 10).await.unwrap();
        let missed: Vec<Timestamp> = history
            .iter()
            .filter(|e| e.reason == Reason::DeadlineMissed)
            .map(|e| e.at)
            .collect();
        assert_eq!(missed, [sent_at.plus(DEADLINE)], "{agent}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_total_rate_holds_across_two_gateways_each_within_its_own() {
    let f = start(settings(100, 150)).await;
    let other = GatewayId::parse("gw-2").unwrap();
    let registered = f
        .lifecycle
        .register_gateway(GatewaySpec {
            gateway_id: other.clone(),
            name: None,
            rotate_token: false,
        })
        .await
        .unwrap();
    let (_one, mut first) = f.connect();
    let (_two, mut second) = f
        .lifecycle
        .connect_gateway(&registered.token.unwrap())
        .unwrap();
    let start = f.lifecycle.now();
    let mut due = Vec::new();
    for n in 0..300 {
        for (prefix, gateway) in [("a", gateway()), ("b", other.clone())] {
            let agent = format!("{prefix}{n:03}");
            let mut spec = spec(&agent);
            spec.gateway_id = gateway;
            f.lifecycle.provision(spec).await.unwrap();
            due.push(agent);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (one, two) = (drain(&mut first, start), drain(&mut second, start));
    assert_eq!((one.len(), two.len()), (300, 300));
    for (sent, prefix) in [(&one, "a"), (&two, "b")] {
        let expected: Vec<&String> = due.iter().filter(|a| a.starts_with(prefix)).collect();
        let order: Vec<&String> = sent.iter().map(|(_, a)| a).collect();
        assert_eq!(order, expected, "each gateway's wakes in deadline order");
        for (index, (at, agent)) in sent.iter().enumerate() {
            assert!(
                (index + 1) as f64 <= 100.0 + 100.0 * at.as_secs_f64() + 1e-9,
                "{agent} at {at:?}: over its gateway's rate"
            );
        }
    }
    let mut all: Vec<(Duration, String)> = one.into_iter().chain(two).collect();
    all.sort_by_key(|(at, agent)| (*at, due.iter().position(|a| a == agent)));
    assert_paced(&all, 150, 150);
    // Across gateways too: nothing sent later fell due earlier.
    let rank = |agent: &String| due.iter().position(|a| a == agent).unwrap();
    for pair in all.windows(2) {
        if pair[0].0 < pair[1].0 {
            let latest_before = all
                .iter()
                .filter(|(at, _)| *at <= pair[0].0)
                .map(|(_, a)| rank(a))
                .max()
                .unwrap();
            let earliest_after = all
                .iter()
                .filter(|(at, _)| *at >= pair[1].0)
                .map(|(_, a)| rank(a))
                .min()
                .unwrap();
            assert!(latest_before < earliest_after, "{pair:?}");
        }
    }
}
