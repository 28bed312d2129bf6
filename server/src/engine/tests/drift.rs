//! Drift: which agents run another template than they should.

use super::*;

fn report(h: &mut Harness, agent: &str, version: &str) -> Committed {
    let hash = h.agent(agent).token_hash;
    let (result, committed) =
        h.run(|e, b| e.check_in(b, &id(agent), &hash, Some(version.to_owned())));
    result.unwrap();
    committed
}

fn drifted(h: &Harness) -> Vec<String> {
    let filter = AgentFilter {
        drifted: true,
        ..AgentFilter::default()
    };
    let (page, _) = h.engine.list(&filter, None, 100);
    page.iter().map(|a| a.id.to_string()).collect()
}

#[test]
fn agents_that_never_reported_or_report_another_version_have_drifted() {
    let mut h = Harness::new();
    for name in ["current", "silent", "stale"] {
        h.provision(name);
    }
    report(&mut h, "current", "v1");
    report(&mut h, "stale", "v0");
    assert_eq!(drifted(&h), ["silent", "stale"]);

    let report = h.engine.drift();
    let on_gateway = report.gateways[&gw()];
    assert_eq!(
        on_gateway,
        DriftCount {
            agents: 3,
            drifted: 2
        }
    );
    assert_eq!(
        report.boards[&BoardId::parse("board-1").unwrap()].drifted,
        2
    );
    assert_eq!(report.drifted(), 2);
}

#[test]
fn a_drift_filter_sees_an_agent_catch_up_and_a_new_desired_version_drift_it() {
    let mut h = Harness::new();
    h.provision("a");
    let filter = AgentFilter {
        drifted: true,
        ..AgentFilter::default()
    };
    // Catching up: the agent no longer matches, but the watcher is told.
    let caught_up = report(&mut h, "a", "v1");
    assert!(!filter.matches(&caught_up.events[0].agent));
    assert!(filter.matches_event(&caught_up.events[0]));
    assert!(drifted(&h).is_empty());

    // A lease expiry cannot change drift: not sent to a drift watcher.
    h.now = t(200);
    let expired = h.run(|e, b| e.fire_due(b)).1;
    assert_eq!(reasons(&expired), [Reason::LeaseExpired]);
    assert!(!filter.matches_event(&expired.events[0]));

    // A new desired version: drifted until the agent reports it.
    let mut spec = h.spec("a", false);
    spec.template_version = "v2".into();
    let minted = h.new_token();
    let (_, updated) = h.run(|e, b| e.provision(b, spec, Some(minted)));
    assert!(filter.matches_event(&updated.events[0]));
    assert_eq!(drifted(&h), ["a"]);
}

#[test]
fn gauges_counted_in_slices_equal_one_whole_count() {
    let mut h = Harness::new();
    for name in ["a1", "a2", "a3", "a4", "a5"] {
        h.provision(name);
    }
    report(&mut h, "a2", "v1");
    report(&mut h, "a4", "v0");
    let counted = |limit: usize| {
        let mut gauges = AgentGauges::default();
        let (mut after, mut holds) = (None, 0);
        loop {
            holds += 1;
            match h.engine.count_agents(&mut gauges, after.as_ref(), limit) {
                Some(id) => after = Some(id),
                None => return (gauges, holds),
            }
        }
    };
    let (whole, holds) = counted(100);
    assert_eq!(holds, 1);
    assert_eq!(whole.drift, h.engine.drift());
    let count_of = |status| {
        whole
            .by_status
            .iter()
            .find(|(s, _)| *s == status)
            .unwrap()
            .1
    };
    assert_eq!(count_of(Status::Provisioning), 3);
    assert_eq!(count_of(Status::Online), 2);
    // Five agents in slices of two: three holds of the lock, the same
    // counts; a slice ending on the last agent takes one more, empty, hold.
    let (sliced, holds) = counted(2);
    assert_eq!((sliced.clone(), holds), (whole.clone(), 3));
    assert_eq!(counted(5), (whole, 2));
}
