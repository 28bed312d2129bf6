//! The request body as the edge layer hands it on: counted against the
//! method's size limit as it arrives, and read as gRPC frames so that a body
//! cut in the middle of a message ends with a client error, not tonic's
//! INTERNAL "Unexpected EOF".

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;

/// The 5-byte gRPC frame header: a compression flag and a length.
const HEADER_LEN: usize = 5;

/// A request body that ends in RESOURCE_EXHAUSTED past `max` bytes, and
/// (a gRPC body) in INVALID_ARGUMENT when it ends inside a message.
pub struct Checked {
    inner: Body,
    /// Bytes still allowed, when the method has a limit.
    remaining: Option<usize>,
    max: usize,
    /// For a gRPC body: where it is in its messages.
    frames: Option<Frames>,
}

impl Checked {
    pub fn new(inner: Body, max: Option<usize>, grpc: bool) -> Self {
        Self {
            inner,
            remaining: max,
            max: max.unwrap_or(usize::MAX),
            frames: grpc.then(Frames::default),
        }
    }
}

impl http_body::Body for Checked {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            None if self.frames.as_ref().is_some_and(Frames::mid_message) => {
                return Poll::Ready(Some(Err(Status::invalid_argument(
                    "the request ended in the middle of a message",
                ))));
            }
            other => return Poll::Ready(other),
        };
        if let Some(data) = frame.data_ref() {
            if let Some(remaining) = self.remaining {
                if data.len() > remaining {
                    return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                        "the request is larger than this method's limit of {} bytes",
                        self.max
                    )))));
                }
                self.remaining = Some(remaining - data.len());
            }
            if let Some(frames) = &mut self.frames {
                frames.read(data);
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Where the body is in its sequence of gRPC frames.
#[derive(Default)]
struct Frames {
    header: [u8; HEADER_LEN],
    /// Header bytes seen of the message being read (0: between messages,
    /// or in its payload).
    header_seen: usize,
    /// Payload bytes still to come of the message being read.
    payload_left: usize,
}

impl Frames {
    fn read(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let taken = self.payload_left.min(data.len());
                self.payload_left -= taken;
                data = &data[taken..];
                continue;
            }
            let taken = (HEADER_LEN - self.header_seen).min(data.len());
            self.header[self.header_seen..self.header_seen + taken].copy_from_slice(&data[..taken]);
            self.header_seen += taken;
            data = &data[taken..];
            if self.header_seen == HEADER_LEN {
                let length = u32::from_be_bytes(self.header[1..].try_into().expect("4 bytes"));
                self.payload_left = length as usize;
                self.header_seen = 0;
            }
        }
    }

    fn mid_message(&self) -> bool {
        self.header_seen > 0 || self.payload_left > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend((payload.len() as u32).to_be_bytes());
        framed.extend(payload);
        framed
    }

    #[test]
    fn frames_are_followed_across_any_split() {
        let mut body = message(b"hello");
        body.extend(message(b""));
        body.extend(message(&[7; 300]));
        // Every split point, including inside a header.
        for split in 0..=body.len() {
            let mut frames = Frames::default();
            frames.read(&body[..split]);
            frames.read(&body[split..]);
            assert!(!frames.mid_message(), "split at {split}");
        }
        for cut in [1, 4, 5, 9, 12, 16, body.len() - 1] {
            let mut frames = Frames::default();
            frames.read(&body[..cut]);
            assert!(frames.mid_message(), "cut at {cut}");
        }
        let mut empty = Frames::default();
        empty.read(&[]);
        assert!(!empty.mid_message());
    }
}
