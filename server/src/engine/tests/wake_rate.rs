//! Wake rate limits: wakes over a gateway's budget or the total queue in
//! deadline order and go out in rounds, each deadline from its delivery.

use super::*;

fn limited(per_gateway: u32, total: u32) -> Harness {
    Harness::with_policy(Policy {
        gateway_wake_rate: per_gateway,
        total_wake_rate: total,
        ..Policy::default()
    })
}

/// Provisions `agents` in one batch at the current time.
fn provision_all(h: &mut Harness, agents: &[String]) -> Committed {
    let specs: Vec<(ProvisionSpec, TokenHash)> = agents
        .iter()
        .map(|a| (h.spec(a, false), h.new_token()))
        .collect();
    h.run(|engine, batch| {
        for (spec, token) in specs {
            engine.provision(batch, spec, Some(token)).unwrap();
        }
    })
    .1
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

#[test]
fn over_the_gateways_budget_wakes_queue_and_go_out_in_rounds_with_deadlines_from_delivery() {
    let mut h = limited(10, 1000);
    let first = provision_all(&mut h, &names("a", 25));
    assert_eq!(wakes(&first).len(), 10, "a burst of one second's budget");
    let queued = h.agent("a024");
    assert!(queued.wake_held && queued.wake_attempts == 1);
    assert_eq!(queued.last_wake_sent_at, None, "not sent");
    assert_eq!(
        queued.checkin_deadline_at,
        Some(t(0)),
        "its place: when due"
    );

    // Then one every 100 ms (10 a second), in the order they fell due.
    let mut sent: Vec<(Timestamp, String)> = Vec::new();
    let mut at = t(0);
    while sent.len() < 15 {
        at = at.plus(RELEASE_ROUND);
        let round = h.advance_to(at);
        assert!(wakes(&round).len() <= 1, "{at}: over the budget");
        sent.extend(wakes(&round).into_iter().map(|w| (at, w.0)));
        assert!(at < t(3), "too slow");
    }
    let order: Vec<&str> = sent.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        order,
        names("a", 25)[10..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    for (at, agent) in &sent {
        let agent = h.agent(agent);
        assert!(!agent.wake_held);
        assert_eq!(agent.last_wake_sent_at, Some(*at));
        assert_eq!(
            agent.checkin_deadline_at,
            Some(at.plus(Duration::from_secs(30)))
        );
    }
    // Nothing is judged before its own deadline from delivery.
    let (last_at, last) = sent.last().unwrap().clone();
    let before = h.advance_to(last_at.plus(Duration::from_secs(29)));
    assert!(!before.events.iter().any(|e| e.agent.id.as_str() == last));
}

#[test]
fn a_new_wake_queues_behind_older_ones_and_retries_queue_too() {
    let mut h = limited(2, 1000);
    provision_all(&mut h, &names("a", 4));
    // a002 and a003 wait; a later provision must not overtake them.
    h.now = t(0).plus(Duration::from_millis(50));
    let (_, late) = h.provision("late");
    assert!(wakes(&late).is_empty());
    let mut order = Vec::new();
    let mut at = h.now;
    while order.len() < 3 {
        at = at.plus(RELEASE_ROUND);
        order.extend(wakes(&h.advance_to(at)).into_iter().map(|w| w.0));
    }
    assert_eq!(order, ["a002", "a003", "late"]);
}

#[test]
fn the_total_budget_spans_gateways() {
    let mut h = limited(100, 10);
    let other = GatewayId::parse("gw-2").unwrap();
    h.run(|engine, batch| {
        let spec = GatewaySpec {
            gateway_id: other.clone(),
            name: None,
            rotate_token: false,
        };
        engine.register_gateway(batch, spec, token(2));
        engine.gateway_connected(batch, &other).unwrap()
    });
    let mut specs = Vec::new();
    for n in 0..20 {
        let mut spec = h.spec(&format!("x{n:02}"), false);
        if n % 2 == 1 {
            spec.gateway_id = other.clone();
        }
        specs.push((spec, h.new_token()));
    }
    let (_, first) = h.run(|engine, batch| {
        for (spec, token) in specs {
            engine.provision(batch, spec, Some(token)).unwrap();
        }
    });
    assert_eq!(
        wakes(&first).len(),
        10,
        "ten in all, though each gateway may take 100"
    );
    let next = h.advance_to(t(0).plus(RELEASE_ROUND));
    assert_eq!(wakes(&next).len(), 1, "then ten a second in all");
    assert_eq!(wakes(&next)[0].0, "x10", "the next due, whichever gateway");
}

#[test]
fn a_queued_wake_goes_nowhere_once_its_agent_is_deleted_or_checks_in() {
    let mut h = limited(1, 1000);
    provision_all(&mut h, &names("a", 3));
    let hash = h.agent("a002").token_hash;
    h.run(|engine, batch| {
        engine.delete(batch, &id("a001")).unwrap();
        engine.check_in(batch, &id("a002"), &hash, None).unwrap();
    });
    assert!(!h.agent("a002").wake_held);
    let mut sent = Vec::new();
    for second in 1..=5 {
        sent.extend(wakes(&h.advance_to(t(second))));
    }
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(h.engine.wakes_owed(), [(gw(), 0)]);
}

#[test]
fn a_backing_up_queue_is_reported_once_and_again_when_it_empties() {
    let mut h = limited(10, 1000);
    provision_all(&mut h, &names("a", 40));
    let first = h.advance_to(t(0).plus(RELEASE_ROUND));
    assert_eq!(
        first.queue_reports,
        [QueueReport {
            gateway_id: gw(),
            queued: 29,
            backing_up: true
        }]
    );
    let mut reports = Vec::new();
    for tenth in 2..=40 {
        let round = h.advance_to(t(0).plus(RELEASE_ROUND * tenth));
        reports.extend(round.queue_reports);
    }
    assert_eq!(
        reports,
        [QueueReport {
            gateway_id: gw(),
            queued: 0,
            backing_up: false
        }]
    );
}

#[test]
fn queued_wakes_wait_while_their_gateway_is_away_and_keep_their_order() {
    let mut h = limited(2, 1000);
    provision_all(&mut h, &names("a", 4));
    h.now = t(1);
    h.run(|engine, batch| {
        engine
            .gateway_disconnected(batch, &gw(), "stream closed")
            .unwrap()
    });
    h.now = t(2);
    let (_, late) = h.provision("late");
    assert!(wakes(&late).is_empty(), "held");
    assert!(wakes(&h.advance_to(t(60))).is_empty());
    h.now = t(61);
    let (released, committed) =
        h.run(|engine, batch| engine.gateway_connected(batch, &gw()).unwrap());
    assert_eq!(released, 2);
    let order: Vec<String> = wakes(&committed).into_iter().map(|w| w.0).collect();
    assert_eq!(order, ["a002", "a003"], "queued before the outage, first");
    let next = h.advance_to(t(61).plus(RELEASE_ROUND * 5));
    assert_eq!(wakes(&next)[0].0, "late");
}

#[test]
fn a_steady_trickle_of_new_wakes_never_postpones_the_next_round() {
    let mut h = limited(1, 1000);
    provision_all(&mut h, &names("a", 2));
    let mut sent_at = None;
    for step in 1..=60 {
        h.now = t(0).plus(Duration::from_millis(50) * step);
        let (_, provisioned) = h.provision(&format!("late{step:02}"));
        let released = h.advance_to(h.now);
        let out = wakes(&provisioned).into_iter().chain(wakes(&released));
        if sent_at.is_none() && out.into_iter().any(|w| w.0 == "a001") {
            sent_at = Some(h.now);
        }
    }
    let sent_at = sent_at.expect("a001 went out");
    assert!(sent_at <= t(1).plus(RELEASE_ROUND), "{sent_at}");
}
