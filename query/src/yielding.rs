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
//! work.

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
}

impl<S> TimeSliced<S> {
    pub(crate) fn new(inner: S) -> Self {
        TimeSliced { inner, since: None }
    }
}

impl<S: Stream + Unpin> Stream for TimeSliced<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= SLICE {
            // Yield: the task is polled again at once, unless it was
            // aborted meanwhile.
            self.since = None;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = self.inner.poll_next_unpin(cx);
        if polled.is_pending() {
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
