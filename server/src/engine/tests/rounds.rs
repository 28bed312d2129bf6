//! Rounds of one batch cut off and committed one after another while the
//! next is staged on top (the writer overlaps them).

use super::*;

#[test]
fn a_round_is_staged_over_the_rounds_in_flight_and_applied_in_order() {
    let mut h = Harness::new();
    h.provision("a");
    let start = h.engine.revision();
    let first_token = h.new_token();
    let second_token = h.new_token();
    let spec = h.spec("b", true);

    let mut open = h.engine.begin(t(1));
    let created = h
        .engine
        .provision(&mut open, spec.clone(), Some(first_token))
        .unwrap();
    assert!(created.created);
    let a_token = h.agent("a").token_hash;
    h.engine
        .check_in(&mut open, &id("a"), &a_token, None)
        .unwrap();
    let first = open.cut();
    assert!(first.stages_over(), "agents only, with events");

    open.advance_to(t(2));
    // Staged on top of the first round: "b" exists, at generation 1.
    let updated = h
        .engine
        .provision(&mut open, spec, Some(second_token))
        .unwrap();
    assert!(!updated.created);
    assert_eq!(updated.agent.generation, 2);
    let second = open.cut();
    assert!(
        h.engine.agent(&id("b")).is_none(),
        "nothing shown before its commit"
    );

    let committed = h.engine.commit_cut(first, &mut open);
    let revisions: Vec<u64> = committed.events.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, [start + 1, start + 2]);
    assert_eq!(h.engine.revision(), start + 2);
    assert_eq!(h.agent("b").generation, 1);
    assert_eq!(h.agent("a").status, Status::Online);
    // "b" is staged again by the second round: still in flight, so a
    // heartbeat with its new token waits for the writer.
    assert_eq!(
        h.engine.renew_lease(&first_token, None, t(2)),
        Renewal::NeedsCommit(id("b"))
    );

    let committed = h.engine.commit_cut(second, &mut open);
    assert_eq!(committed.events[0].revision, start + 3);
    assert_eq!(h.engine.revision(), start + 3);
    assert_eq!(h.agent("b").generation, 2);
    assert_eq!(h.agent("b").token_hash, second_token);
    assert!(open.agent_writes().next().is_none(), "every round applied");
    // "a" left the batch with the first round: its heartbeats renew in memory.
    assert!(matches!(
        h.engine.renew_lease(&a_token, None, t(3)),
        Renewal::Renewed(_)
    ));
}

#[test]
fn a_round_that_changes_a_gateway_is_applied_before_the_next_is_staged() {
    let mut h = Harness::new();
    let mut open = h.engine.begin(t(1));
    h.engine
        .gateway_disconnected(&mut open, &gw(), "stream closed")
        .unwrap();
    let cut = open.cut();
    assert!(!cut.stages_over());
    h.engine.commit_cut(cut, &mut open);
}

#[test]
fn aborting_the_rounds_in_flight_forgets_them_all() {
    let mut h = Harness::new();
    h.provision("a");
    let before = h.agent("a");
    let spec = h.spec("a", true);
    let tokens = (h.new_token(), h.new_token());

    let mut open = h.engine.begin(t(1));
    h.engine
        .provision(&mut open, spec.clone(), Some(tokens.0))
        .unwrap();
    let first = open.cut();
    open.advance_to(t(2));
    h.engine.provision(&mut open, spec, Some(tokens.1)).unwrap();
    let second = open.cut();

    h.engine.abort(second);
    h.engine.abort(first);
    h.engine.abort(open);
    assert_eq!(h.agent("a"), before);
    // Out of flight again: the next batch starts from the committed agent.
    let again = h.provision("a").0;
    assert_eq!(again.agent.generation, before.generation + 1);
    assert_eq!(again.agent.revision, before.revision + 1);
}
