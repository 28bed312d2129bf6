//! The per-agent heartbeat budget, as the fast path keeps it beside the
//! token (the arithmetic itself: `heartbeat_budget.rs`).

use super::*;

/// One heartbeat of `agent` through the budgeted fast path, judged as the
/// runtime judges it but for template reports, which `reports` decides.
fn beat_reporting(
    h: &mut Harness,
    agent: &str,
    template: Option<&str>,
    reports: Result<(), Duration>,
) -> Result<Renewal, Duration> {
    let token = h.agent(agent).token_hash;
    h.engine
        .renew_lease_admitted(&token, template, h.now, |_, admission| {
            admission.heartbeat?;
            if admission.new_template {
                reports?;
            }
            Ok(())
        })
}

fn beat(h: &mut Harness, agent: &str) -> Result<Renewal, Duration> {
    beat_reporting(h, agent, None, Ok(()))
}

fn online(h: &mut Harness, agent: &str) {
    h.provision(agent);
    h.check_in(agent);
}

#[test]
fn a_looping_agent_is_refused_and_others_are_not() {
    let mut h = Harness::new();
    online(&mut h, "looping");
    online(&mut h, "calm");
    let outcomes: Vec<_> = (0..100).map(|_| beat(&mut h, "looping")).collect();
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(refused.len(), 100 - HEARTBEAT_BURST as usize);
    assert!(
        outcomes[..HEARTBEAT_BURST as usize]
            .iter()
            .all(|o| matches!(o, Ok(Renewal::Renewed(_))))
    );
    // Default policy: 10 s less 20% jitter, halved: one beat per 4 s.
    assert!(refused.iter().all(|wait| **wait == Duration::from_secs(4)));
    assert!(matches!(beat(&mut h, "calm"), Ok(Renewal::Renewed(_))));

    h.now = h.now.plus(Duration::from_secs(4));
    assert!(beat(&mut h, "looping").is_ok());
    assert_eq!(beat(&mut h, "looping"), Err(Duration::from_secs(4)));
}

#[test]
fn a_refused_heartbeat_renews_nothing() {
    let mut h = Harness::new();
    online(&mut h, "a");
    for _ in 0..HEARTBEAT_BURST {
        beat(&mut h, "a").unwrap();
    }
    let before = h.agent("a");
    h.now = h.now.plus(Duration::from_secs(1));
    assert_eq!(beat(&mut h, "a"), Err(Duration::from_secs(3)));
    assert_eq!(h.agent("a"), before);
    assert_eq!(h.engine.dirty_lease_count(), 1, "only the admitted beats");
}

#[test]
fn a_refused_template_report_spends_no_heartbeat() {
    let mut h = Harness::new();
    online(&mut h, "a");
    let no_reports = Err(Duration::from_secs(7));
    for _ in 0..2 * HEARTBEAT_BURST {
        assert_eq!(
            beat_reporting(&mut h, "a", Some("v2"), no_reports),
            Err(Duration::from_secs(7))
        );
    }
    for _ in 0..HEARTBEAT_BURST {
        assert!(beat(&mut h, "a").is_ok());
    }
    assert_eq!(beat(&mut h, "a"), Err(Duration::from_secs(4)));
}

#[test]
fn the_budget_stays_spent_across_a_check_in_and_a_new_token() {
    let mut h = Harness::new();
    online(&mut h, "a");
    for _ in 0..HEARTBEAT_BURST {
        beat(&mut h, "a").unwrap();
    }
    // Re-provisioned with a new token: an update the agent must check in
    // after, which its budget does not fill again.
    let spec = h.spec("a", true);
    let minted = h.new_token();
    h.run(|engine, batch| engine.provision(batch, spec, Some(minted)))
        .0
        .unwrap();
    assert_eq!(h.agent("a").token_hash, minted);
    assert_eq!(beat(&mut h, "a"), Err(Duration::from_secs(4)));
    h.check_in("a");
    assert_eq!(beat(&mut h, "a"), Err(Duration::from_secs(4)));

    h.now = h.now.plus(Duration::from_secs(4));
    assert!(matches!(beat(&mut h, "a"), Ok(Renewal::Renewed(_))));
}

#[test]
fn an_unknown_token_spends_nobody_s_budget() {
    let mut h = Harness::new();
    online(&mut h, "a");
    let unknown = h.new_token();
    for _ in 0..100 {
        let renewal = h
            .engine
            .renew_lease_admitted(&unknown, None, h.now, |_, admission| admission.heartbeat);
        assert_eq!(renewal, Ok(Renewal::UnknownToken));
    }
    for _ in 0..HEARTBEAT_BURST {
        assert!(beat(&mut h, "a").is_ok());
    }
}
