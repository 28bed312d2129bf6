//! A full writer queue sheds at once instead of queueing without bound.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_full_writer_queue_refuses_at_once_with_unavailable() {
    let f = start(fast_settings()).await;
    f.provision("a").await;
    // The writer is stuck in a commit (an hour, in paused time): what it
    // has not taken waits in its queue, until the queue is full.
    f.store.set_commit_delay(Duration::from_secs(3600));
    let (answers, mut answered) = mpsc::unbounded_channel();
    let calls = COMMAND_QUEUE + 200;
    let mut tasks = Vec::new();
    for _ in 0..calls {
        let (lifecycle, answers) = (f.lifecycle.clone(), answers.clone());
        tasks.push(tokio::spawn(async move {
            let _ = answers.send(lifecycle.wake(id("a")).await);
        }));
    }
    // The shed calls answer without the clock moving.
    let mut shed = 0;
    while let Ok(Some(answer)) = tokio::time::timeout(Duration::from_secs(1), answered.recv()).await
    {
        match answer {
            Err(LifecycleError::Unavailable(message)) => {
                assert!(message.contains("overloaded"), "{message}");
                shed += 1;
            }
            other => panic!("only shed calls answer while the writer is stuck: {other:?}"),
        }
    }
    assert!(
        (200..=201).contains(&shed),
        "{shed} of {calls} shed; the queue holds {COMMAND_QUEUE}"
    );
    for task in tasks {
        task.abort();
    }
}
