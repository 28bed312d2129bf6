//! A watch as a stream of pages and items that takes what is ready without
//! a future: a future (and its allocation) is made only when the watcher
//! has to wait, so a watcher behind by many events reads them in one go.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::future::BoxFuture;

use super::{WatchChunk, Watcher};
use crate::runtime::LifecycleError;

type Next = Option<Result<WatchChunk, LifecycleError>>;

/// [`Lifecycle::watch_by_pages`](crate::runtime::Lifecycle::watch_by_pages)'s stream.
pub struct PagedWatch {
    state: State,
}

enum State {
    Ready(Box<Watcher>),
    Waiting(BoxFuture<'static, (Next, Box<Watcher>)>),
    Ended,
}

impl PagedWatch {
    pub(in crate::runtime) fn new(mut watcher: Box<Watcher>) -> Self {
        watcher.by_pages();
        Self {
            state: State::Ready(watcher),
        }
    }
}

impl Stream for PagedWatch {
    type Item = Result<WatchChunk, LifecycleError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Ready(watcher) => {
                    if let Some(chunk) = watcher.ready_chunk() {
                        return Poll::Ready(Some(chunk));
                    }
                    let State::Ready(mut watcher) =
                        std::mem::replace(&mut this.state, State::Ended)
                    else {
                        unreachable!()
                    };
                    this.state = State::Waiting(Box::pin(async move {
                        let next = watcher.next_chunk().await;
                        (next, watcher)
                    }));
                }
                State::Waiting(future) => {
                    let (next, watcher) = std::task::ready!(future.as_mut().poll(cx));
                    this.state = match next {
                        Some(_) => State::Ready(watcher),
                        None => State::Ended,
                    };
                    return Poll::Ready(next);
                }
                State::Ended => return Poll::Ready(None),
            }
        }
    }
}
