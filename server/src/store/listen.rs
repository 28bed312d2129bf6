//! LISTEN for committed events, so that followers read new events as soon
//! as they are committed. A notification only says "look": followers read
//! events by revision, so one lost while the listener reconnects costs a
//! poll interval, never an event.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::tls::Database;

const LISTEN: &str = "LISTEN mc_agent_events";

/// Listens until `stop`, reconnecting after a lost connection.
pub async fn listen(database: Database, notify: Arc<Notify>, stop: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            result = listen_once(&database, &notify) => {
                if let Err(error) = result {
                    tracing::debug!(%error, "event listener connection lost; reconnecting");
                }
            }
        }
        // Something may have been committed while nobody listened.
        notify.notify_one();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(database: &Database, notify: &Notify) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = database.config.connect(database.tls.clone()).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listening = client.batch_execute(LISTEN);
    // The connection must be polled for the LISTEN to be answered.
    tokio::pin!(listening);
    let mut listened = false;
    loop {
        tokio::select! {
            done = &mut listening, if !listened => {
                done?;
                listened = true;
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(_))) => notify.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
        }
    }
}
