//! Time slices for a query's work: a stream that makes its task yield once
//! it has run [`SLICE`] without yielding.
//!
//! Tokio's cooperative budget makes a task yield after 128 batches, which
//! is not a bound in time: where a batch costs tens of milliseconds (a scan
//! under a projection that builds megabytes per row, a join walking a long
//! list of buffers), a query held both of a node's query threads for
//! seconds between yields. Until a task yields, no other query runs on its
//! thread (`SELECT 1` waited 1.8 s behind one) and an abort at the
//! deadline does not land. Yielding every slice bounds both by one batch's
//! work. The yield is tokio's `yield_now`, which queues the task behind
//! the others on its thread: a task that wakes itself lands in the
//! thread's LIFO slot and runs again at once, so a new query waited for
//! several of a long query's slices before its first poll (200-600 ms).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

/// How long a task may run in a time-sliced stream without yielding.
pub(crate) const SLICE: Duration = Duration::from_millis(5);

/// `inner`, yielding its task every [`SLICE`].
pub(crate) struct TimeSliced<S> {
    inner: S,
    /// When the task last found this stream without a yield in between.
    since: Option<Instant>,
    /// The yield under way (tokio's `yield_now`; see the module's doc).
    yielding: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<S> TimeSliced<S> {
    pub(crate) fn new(inner: S) -> Self {
        TimeSliced { inner, since: None, yielding: None }
    }
}

impl<S: Stream + Unpin> Stream for TimeSliced<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(yielding) = self.yielding.as_mut() {
            if yielding.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.yielding = None;
        }
        let now = Instant::now();
        if now.duration_since(*self.since.get_or_insert(now)) >= SLICE {
            // Yield: the task is polled again after the tasks queued
            // before it, unless it was aborted meanwhile.
            self.since = None;
            let mut yielding: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(tokio::task::yield_now());
            if yielding.as_mut().poll(cx).is_pending() {
                self.yielding = Some(yielding);
                return Poll::Pending;
            }
        }
        let polled = self.inner.poll_next_unpin(cx);
        if polled.is_pending() {
            // It waits: the task yields anyway.
            self.since = None;
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that is always ready yields once a slice has passed, and
    /// loses nothing.
    #[tokio::test]
    async fn a_busy_stream_yields_every_slice() {
        let items = futures::stream::iter(0..50).map(|i| {
            std::thread::sleep(Duration::from_millis(1));
            i
        });
        let mut sliced = TimeSliced::new(Box::pin(items));
        let (mut seen, mut yields) = (Vec::new(), 0);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        loop {
            match Pin::new(&mut sliced).poll_next(&mut cx) {
                Poll::Ready(Some(i)) => seen.push(i),
                Poll::Ready(None) => break,
                Poll::Pending => yields += 1,
            }
        }
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert!((5..=50).contains(&yields), "{yields} yields over 50 ms of work");
    }
}
