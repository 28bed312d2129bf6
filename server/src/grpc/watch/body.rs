//! `WatchAgent`'s response body, framed here rather than by tonic, so that
//! what a watcher sends can be bytes it shares with every other watcher: a
//! page of a fleet snapshot, or a live event, is encoded once and handed to
//! HTTP/2 as is. What HTTP/2 queues for a stream whose client reads slowly
//! (or not at all) is then references to shared bytes, not a copy per
//! watcher. Items of a watcher's own (filtered snapshots, bookmarks) are
//! encoded into a small buffer, and messages ready together go out in one
//! frame.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http::HeaderMap;
use http_body::Frame;
use mission_control_proto::v1 as pb;
use prost::Message;
use tonic::Status;

use super::super::lifecycle::watch_response;
use super::SharedWatch;
use crate::engine::Agent;
use crate::runtime::{PagedWatch, WatchChunk, WatchItem};

/// Messages ready together are copied into one frame up to this size; a
/// shared encoding goes out on its own.
const COALESCE: usize = 16 * 1024;

/// gRPC's message prefix: a compression flag and a 4-byte length.
const PREFIX: usize = 5;

pub(super) struct WatchBody {
    chunks: PagedWatch,
    /// Where live events' shared encodings are.
    shared: Arc<SharedWatch>,
    /// Messages of this watcher's own, copied together.
    buf: BytesMut,
    /// One shared encoding, sent without a copy unless more follow it.
    single: Option<Bytes>,
    /// A page waiting for what was before it to go out.
    next: Option<Bytes>,
    trailers: Option<HeaderMap>,
    ended: bool,
}

impl WatchBody {
    pub(super) fn new(chunks: PagedWatch, shared: Arc<SharedWatch>) -> Self {
        Self {
            chunks,
            shared,
            buf: BytesMut::new(),
            single: None,
            next: None,
            trailers: None,
            ended: false,
        }
    }

    fn pending_len(&self) -> usize {
        self.buf.len() + self.single.as_ref().map_or(0, Bytes::len)
    }

    /// What is waiting to go out, as one piece.
    fn take_pending(&mut self) -> Option<Bytes> {
        if !self.buf.is_empty() {
            return Some(self.buf.split().freeze());
        }
        self.single.take()
    }

    fn push_shared(&mut self, bytes: Bytes) {
        if self.pending_len() == 0 {
            self.single = Some(bytes);
        } else {
            self.copy_single();
            self.buf.extend_from_slice(&bytes);
        }
    }

    fn push_message(&mut self, message: &pb::WatchAgentResponse) {
        self.copy_single();
        put_framed(&mut self.buf, message);
    }

    fn copy_single(&mut self) {
        if let Some(single) = self.single.take() {
            self.buf.extend_from_slice(&single);
        }
    }

    fn end(&mut self, status: Status) {
        self.trailers = Some(trailers(&status));
    }
}

impl http_body::Body for WatchBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(page) = this.next.take() {
                return Poll::Ready(Some(Ok(Frame::data(page))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            if this.trailers.is_some() {
                if let Some(data) = this.take_pending() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                this.ended = true;
                let trailers = this.trailers.take().expect("checked");
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            match Pin::new(&mut this.chunks).poll_next(cx) {
                Poll::Pending => {
                    return match this.take_pending() {
                        Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                        None => Poll::Pending,
                    };
                }
                Poll::Ready(Some(Ok(WatchChunk::Page(page)))) => {
                    let encoded = page.encoded(encode_page);
                    let data = match this.take_pending() {
                        Some(before) => {
                            this.next = Some(encoded);
                            before
                        }
                        None => encoded,
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Ok(WatchChunk::Item(WatchItem::Event(event))))) => {
                    let encoded = this.shared.encoded.get(&event);
                    this.push_shared(encoded);
                }
                Poll::Ready(Some(Ok(WatchChunk::Item(item)))) => {
                    this.push_message(&watch_response(item));
                }
                Poll::Ready(Some(Err(error))) => this.end(Status::from(error)),
                Poll::Ready(None) => this.end(Status::ok("")),
            }
            if this.pending_len() >= COALESCE {
                let data = this.take_pending().expect("not empty");
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// `message` with its gRPC prefix.
pub(super) fn framed(message: &pb::WatchAgentResponse) -> Bytes {
    let mut buf = BytesMut::with_capacity(PREFIX + message.encoded_len());
    put_framed(&mut buf, message);
    buf.freeze()
}

fn put_framed(buf: &mut BytesMut, message: &pb::WatchAgentResponse) {
    let len = message.encoded_len();
    buf.reserve(PREFIX + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("a watch message is far below 4 GiB"));
    message
        .encode(buf)
        .expect("the buffer was reserved for the message");
}

/// A snapshot page: one framed message per agent, in one allocation.
fn encode_page(agents: &[Arc<Agent>]) -> Bytes {
    let messages: Vec<_> = agents
        .iter()
        .map(|agent| watch_response(WatchItem::Snapshot(agent.clone())))
        .collect();
    let len = messages.iter().map(|m| PREFIX + m.encoded_len()).sum();
    let mut buf = BytesMut::with_capacity(len);
    for message in &messages {
        put_framed(&mut buf, message);
    }
    buf.freeze()
}

/// The trailers that end the call with `status`.
fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Err(unsendable) = status.add_header(&mut map) {
        map.clear();
        let _ = unsendable.add_header(&mut map);
    }
    map
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use http_body::Body as _;

    use super::super::EncodedEvents;
    use super::*;
    use crate::engine::{AgentId, GatewayId, GatewaySpec, ProvisionSpec, Role};
    use crate::runtime::{Clock, Lifecycle, Settings, WatchRequest};
    use crate::store::MemoryStore;

    async fn fleet(agents: usize) -> Lifecycle {
        let lifecycle = Lifecycle::start(
            Arc::new(MemoryStore::new()),
            Settings::default(),
            Clock::system(),
        )
        .await
        .expect("start");
        let gateway_id = GatewayId::parse("gw").unwrap();
        lifecycle
            .register_gateway(GatewaySpec {
                gateway_id: gateway_id.clone(),
                name: None,
                rotate_token: false,
            })
            .await
            .expect("gateway");
        for n in 0..agents {
            let name = format!("a{n:03}");
            let spec = ProvisionSpec {
                agent_id: AgentId::parse(&name).unwrap(),
                name,
                gateway_id: gateway_id.clone(),
                board_id: None,
                role: Role::GatewayMain,
                template_version: "v1".into(),
                rotate_token: false,
            };
            lifecycle.provision(spec).await.expect("provision");
        }
        lifecycle
    }

    async fn next_data(body: &mut WatchBody) -> Bytes {
        let frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .expect("the watch goes on")
            .expect("no error");
        frame.into_data().expect("a message, not the trailers")
    }

    /// The messages in `data`, as the client decodes them.
    fn messages(mut data: &[u8]) -> Vec<pb::WatchAgentResponse> {
        let mut messages = Vec::new();
        while !data.is_empty() {
            assert_eq!(data[0], 0, "not compressed");
            let len = u32::from_be_bytes(data[1..PREFIX].try_into().unwrap()) as usize;
            let message = &data[PREFIX..PREFIX + len];
            messages.push(pb::WatchAgentResponse::decode(message).expect("decodes"));
            data = &data[PREFIX + len..];
        }
        messages
    }

    #[tokio::test]
    async fn every_watcher_sends_a_fleet_snapshot_and_a_lone_event_as_the_same_bytes() {
        use pb::watch_agent_response::Kind;
        let fleet_size = 600;
        let lifecycle = fleet(fleet_size).await;
        let shared = Arc::new(SharedWatch {
            lifecycle: lifecycle.clone(),
            encoded: EncodedEvents::new(16),
        });
        let mut frames: Vec<Vec<Bytes>> = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let chunks = lifecycle
                .watch_by_pages(WatchRequest::default())
                .await
                .expect("watch");
            let mut body = WatchBody::new(chunks, shared.clone());
            let (mut sent, mut agents) = (Vec::new(), Vec::new());
            loop {
                let data = next_data(&mut body).await;
                let kinds: Vec<Kind> = messages(&data)
                    .into_iter()
                    .map(|m| m.kind.unwrap())
                    .collect();
                let complete = matches!(kinds.last(), Some(Kind::SnapshotComplete(_)));
                for kind in kinds {
                    match kind {
                        Kind::Event(event) => agents.push(event.agent.unwrap().id),
                        Kind::SnapshotComplete(_) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
                if complete {
                    break;
                }
                sent.push(data);
            }
            let mut unique = agents.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                (agents.len(), unique.len()),
                (fleet_size, fleet_size),
                "every agent once"
            );
            frames.push(sent);
            bodies.push(body);
        }
        assert!(frames[0].len() > 1, "several pages");
        assert_eq!(frames[0].len(), frames[1].len());
        for (first, second) in frames[0].iter().zip(&frames[1]) {
            assert_eq!(
                first.as_ptr(),
                second.as_ptr(),
                "a page goes out as the bytes every watcher shares, not a copy"
            );
        }

        // A change alone goes out as its shared encoding too.
        let spec = ProvisionSpec {
            agent_id: AgentId::parse("late").unwrap(),
            name: "late".into(),
            gateway_id: GatewayId::parse("gw").unwrap(),
            board_id: None,
            role: Role::GatewayMain,
            template_version: "v1".into(),
            rotate_token: false,
        };
        lifecycle.provision(spec).await.expect("provision");
        let mut events = Vec::new();
        for body in &mut bodies {
            events.push(next_data(body).await);
        }
        let Some(Kind::Event(event)) = messages(&events[0])[0].kind.clone() else {
            panic!("an event")
        };
        assert_eq!(event.agent.unwrap().id, "late");
        assert_eq!(events[0].as_ptr(), events[1].as_ptr());
    }
}
