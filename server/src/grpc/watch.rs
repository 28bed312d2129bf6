//! `WatchAgent` with each event encoded once for every watcher.
//!
//! Every watch of the same events sends the same bytes, so a change is
//! converted and protobuf-encoded by the first watcher to send it and the
//! others copy the encoding. The generated service would convert and encode
//! it once per watcher: with 1,000 watchers, a thousand `Agent` messages built
//! (each with its strings) per transition. The call is routed here ahead of
//! the generated service; everything else goes to that service unchanged.
//! tonic decodes the request and answers a refused watch; the response
//! body is `body`'s, which sends shared encodings without copying them.

mod body;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use mission_control_proto::codec::{ProtoCodec, StrictDecoder};
use mission_control_proto::v1 as pb;
use mission_control_proto::v1::agent_lifecycle_server::AgentLifecycleServer;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

use super::lifecycle::{LifecycleService, watch_response};
use super::validate;
use crate::engine::Event;
use crate::runtime::{Lifecycle, PagedWatch, WatchItem};

/// Encoded events kept for watchers still to send them: more than one
/// commit's batch, so watchers that are a batch apart share them too.
const SLOTS: usize = 4096;

/// The `AgentLifecycle` service, `WatchAgent` answered with shared encodings.
#[derive(Clone)]
pub struct LifecycleRoutes {
    generated: AgentLifecycleServer<LifecycleService>,
    watch: Arc<SharedWatch>,
    max_decoding_message_size: usize,
}

impl LifecycleRoutes {
    pub fn new(lifecycle: Lifecycle, max_decoding_message_size: usize) -> Self {
        Self {
            generated: AgentLifecycleServer::new(LifecycleService::new(lifecycle.clone()))
                .max_decoding_message_size(max_decoding_message_size),
            watch: Arc::new(SharedWatch {
                lifecycle,
                encoded: EncodedEvents::new(SLOTS),
            }),
            max_decoding_message_size,
        }
    }
}

impl NamedService for LifecycleRoutes {
    const NAME: &'static str = <AgentLifecycleServer<LifecycleService> as NamedService>::NAME;
}

fn is_watch(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(LifecycleRoutes::NAME))
        == Some("/WatchAgent")
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<Body>> for LifecycleRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !is_watch(request.uri().path()) {
            return self.generated.call(request);
        }
        let (watch, limit) = (self.watch.clone(), self.max_decoding_message_size);
        Box::pin(async move {
            let mut grpc =
                Grpc::new(EncodedCodec::default()).apply_max_message_size_config(Some(limit), None);
            let opened = Arc::new(Mutex::new(None));
            let call = WatchCall {
                shared: watch.clone(),
                opened: opened.clone(),
            };
            let response = grpc.server_streaming(call, request).await;
            let opened = opened.lock().unwrap_or_else(PoisonError::into_inner).take();
            Ok(match opened {
                // tonic's headers, and the body that streams the watch.
                Some(chunks) => {
                    let (parts, _empty) = response.into_parts();
                    http::Response::from_parts(
                        parts,
                        Body::new(body::WatchBody::new(chunks, watch)),
                    )
                }
                // Refused: tonic's trailers-only answer.
                None => response,
            })
        })
    }
}

struct SharedWatch {
    lifecycle: Lifecycle,
    encoded: EncodedEvents,
}

/// Opens the watch for a decoded request and leaves it in `opened`; the
/// stream tonic gets is empty (its body is replaced).
struct WatchCall {
    shared: Arc<SharedWatch>,
    opened: Arc<Mutex<Option<PagedWatch>>>,
}

type NoMessages = futures_util::stream::Empty<Result<Bytes, Status>>;

impl ServerStreamingService<pb::WatchAgentRequest> for WatchCall {
    type Response = Bytes;
    type ResponseStream = NoMessages;
    type Future = BoxFuture<Result<Response<NoMessages>, Status>>;

    fn call(&mut self, request: Request<pb::WatchAgentRequest>) -> Self::Future {
        let (shared, opened) = (self.shared.clone(), self.opened.clone());
        Box::pin(async move {
            let watch = validate::watch(request.get_ref())?;
            let chunks = shared.lifecycle.watch_by_pages(watch).await?;
            *opened.lock().unwrap_or_else(PoisonError::into_inner) = Some(chunks);
            Ok(Response::new(futures_util::stream::empty()))
        })
    }
}

/// The latest encodings, by revision: slot `revision % len` holds the value
/// it was made from (weakly, so it keeps nothing alive) and its bytes.
struct EncodedEvents<T = Event> {
    slots: Box<[Slot<T>]>,
}

type Slot<T> = Mutex<Option<(Weak<T>, Bytes)>>;

impl<T> EncodedEvents<T> {
    fn new(len: usize) -> Self {
        Self {
            slots: (0..len.max(1)).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// `value`'s encoding, made once while its slot holds it. Keyed by the
    /// value's allocation, not only its revision: a watcher far behind gets
    /// its own encoding, never another event's.
    fn get_or_encode(
        &self,
        value: &Arc<T>,
        revision: u64,
        encode: impl FnOnce() -> Bytes,
    ) -> Bytes {
        let slot = &self.slots[(revision % self.slots.len() as u64) as usize];
        if let Some((cached, bytes)) = &*slot.lock().unwrap_or_else(PoisonError::into_inner)
            && std::ptr::eq(cached.as_ptr(), Arc::as_ptr(value))
        {
            return bytes.clone();
        }
        // Encoded outside the lock; two watchers racing both encode, alike.
        let bytes = encode();
        *slot.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Arc::downgrade(value), bytes.clone()));
        bytes
    }
}

impl EncodedEvents {
    /// `event` as an encoded `WatchAgentResponse` with its gRPC prefix.
    fn get(&self, event: &Arc<Event>) -> Bytes {
        self.get_or_encode(event, event.revision, || {
            body::framed(&watch_response(WatchItem::Event(event.clone())))
        })
    }
}

/// Decodes requests as the generated code; the encoder is never used, as
/// the body is `body`'s.
#[derive(Default)]
struct EncodedCodec(ProtoCodec<pb::WatchAgentResponse, pb::WatchAgentRequest>);

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = pb::WatchAgentRequest;
    type Encoder = BytesEncoder;
    type Decoder = StrictDecoder<pb::WatchAgentRequest>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.0.decoder()
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_watch_method_is_routed_here() {
        assert!(is_watch(
            "/missioncontrol.lifecycle.v1.AgentLifecycle/WatchAgent"
        ));
        assert!(!is_watch(
            "/missioncontrol.lifecycle.v1.AgentLifecycle/WatchAgents"
        ));
        assert!(!is_watch(
            "/missioncontrol.lifecycle.v1.AgentLifecycle/Provision"
        ));
        assert!(!is_watch(
            "/missioncontrol.lifecycle.v1.Rollouts/WatchAgent"
        ));
    }

    #[test]
    fn an_encoding_is_shared_while_its_slot_holds_the_same_value() {
        let encoded = EncodedEvents::new(4);
        let (first, other) = (Arc::new(1u32), Arc::new(2u32));
        let bytes = |b: &'static [u8]| move || Bytes::from_static(b);
        let a = encoded.get_or_encode(&first, 5, bytes(b"one"));
        // The same value: the same bytes, not encoded again.
        let again = encoded.get_or_encode(&first, 5, || unreachable!("encoded twice"));
        assert_eq!(a.as_ptr(), again.as_ptr());
        // Another value in the same slot (a different history, or 4 later)
        // is encoded on its own and takes the slot.
        assert_eq!(&encoded.get_or_encode(&other, 5, bytes(b"two"))[..], b"two");
        assert_eq!(
            &encoded.get_or_encode(&other, 9, || unreachable!())[..],
            b"two"
        );
        assert_eq!(&encoded.get_or_encode(&first, 5, bytes(b"one"))[..], b"one");
    }

    #[test]
    fn a_dropped_value_is_not_matched_by_a_new_one() {
        let encoded = EncodedEvents::new(1);
        let first = Arc::new(1u32);
        encoded.get_or_encode(&first, 0, || Bytes::from_static(b"one"));
        drop(first);
        // The weak reference keeps the allocation, so no new value shares its address.
        let second = Arc::new(2u32);
        let got = encoded.get_or_encode(&second, 0, || Bytes::from_static(b"two"));
        assert_eq!(&got[..], b"two");
    }
}
