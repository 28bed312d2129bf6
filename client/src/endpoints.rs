//! Where the service is: one endpoint, or several replicas. Calls go to the
//! current endpoint; a call that shows the endpoint cannot serve
//! (`UNAVAILABLE`, `DEADLINE_EXCEEDED`) moves later calls to the next one,
//! in order, wrapping around. The helpers' own backoff and jitter still
//! pace the retries; this only decides where the next try goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mission_control_proto::tls::ClientTls;
use tonic::Code;
use tonic::transport::Channel;

use crate::Error;

/// The service's endpoints, each with its own lazily connected channel.
/// Cheap to clone: clones share the channels and the current choice.
#[derive(Clone)]
pub struct Endpoints {
    inner: Arc<Inner>,
}

struct Inner {
    channels: Vec<(String, Channel)>,
    current: AtomicUsize,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.inner.channels.iter().map(|(uri, _)| uri))
            .finish()
    }
}

impl Endpoints {
    /// Channels to each of `uris` (`http://host:port`, `https://host:port`,
    /// or `host:port` for plaintext); `https` ones use `tls` (the system's
    /// trust store when `None`). Connects on first use.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpoint`] if the list is empty or a URI is not
    /// valid.
    pub fn new<I, S>(uris: I, tls: Option<&ClientTls>) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut channels = Vec::new();
        for uri in uris {
            let uri = uri.as_ref().trim();
            if uri.is_empty() {
                continue;
            }
            let endpoint = mission_control_proto::tls::endpoint(uri, tls)
                .map_err(|e| Error::InvalidEndpoint(format!("{uri}: {e}")))?;
            channels.push((uri.to_owned(), endpoint.connect_lazy()));
        }
        if channels.is_empty() {
            return Err(Error::InvalidEndpoint("no endpoint given".into()));
        }
        Ok(Self::from_channels(channels))
    }

    /// A comma-separated list, e.g. `https://a:50051,https://b:50051`.
    ///
    /// # Errors
    ///
    /// As [`Endpoints::new`].
    pub fn parse(list: &str, tls: Option<&ClientTls>) -> Result<Self, Error> {
        Self::new(list.split(','), tls)
    }

    /// One existing channel (a list of one).
    pub fn from_channel(channel: Channel) -> Self {
        Self::from_channels(vec![(String::from("(channel)"), channel)])
    }

    fn from_channels(channels: Vec<(String, Channel)>) -> Self {
        // Clients that start together spread over the replicas.
        let first = fastrand::usize(..channels.len());
        Self {
            inner: Arc::new(Inner {
                channels,
                current: AtomicUsize::new(first),
            }),
        }
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.inner.channels.len()
    }

    /// Never true: there is always at least one endpoint.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The endpoint calls go to now.
    pub fn current(&self) -> &str {
        &self.inner.channels[self.index()].0
    }

    fn index(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.channels.len()
    }

    /// The channel to use for the next call, and which one it is (for
    /// [`Endpoints::report`]).
    pub fn pick(&self) -> (usize, Channel) {
        let index = self.index();
        (index, self.inner.channels[index].1.clone())
    }

    /// Tells how a call on endpoint `index` ended. A failure that says the
    /// endpoint cannot serve moves later calls to the next endpoint, once
    /// however many calls saw it fail.
    pub fn report(&self, index: usize, status: &tonic::Status) {
        if self.len() > 1 && moves_on(status.code()) {
            let next = (index + 1) % self.len();
            if self
                .inner
                .current
                .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::debug!(
                    from = %self.inner.channels[index].0,
                    to = %self.inner.channels[next].0,
                    code = ?status.code(),
                    "endpoint failed; moving to the next"
                );
            }
        }
    }
}

/// Codes that say "this endpoint cannot serve now", not "this call is wrong".
fn moves_on(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_that_say_the_endpoint_is_down_move_to_the_next_once() {
        let endpoints = Endpoints::parse("http://a:1, http://b:2,http://c:3", None).unwrap();
        assert_eq!(endpoints.len(), 3);
        let (first, _) = endpoints.pick();

        endpoints.report(first, &tonic::Status::not_found("no such agent"));
        assert_eq!(endpoints.pick().0, first, "a refusal is not a failover");

        endpoints.report(first, &tonic::Status::unavailable("connection refused"));
        let (second, _) = endpoints.pick();
        assert_eq!(second, (first + 1) % 3);
        // A second call that failed on the same endpoint does not skip one.
        endpoints.report(first, &tonic::Status::unavailable("connection refused"));
        assert_eq!(endpoints.pick().0, second);

        endpoints.report(second, &tonic::Status::deadline_exceeded("stalled"));
        endpoints.report((second + 1) % 3, &tonic::Status::unavailable("down"));
        assert_eq!(endpoints.pick().0, first, "wraps around");
    }

    #[tokio::test]
    async fn an_empty_list_or_a_bad_uri_is_refused() {
        assert!(matches!(
            Endpoints::parse(" , ", None),
            Err(Error::InvalidEndpoint(_))
        ));
        assert!(matches!(
            Endpoints::parse("http://a:1,http://b c", None),
            Err(Error::InvalidEndpoint(_))
        ));
        let one = Endpoints::parse("127.0.0.1:50051", None).unwrap();
        assert_eq!(one.current(), "127.0.0.1:50051");
    }
}
