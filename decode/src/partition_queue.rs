//! One partition's fetch queue, split off the pipeline's consumer and read
//! in batches.
//!
//! The rdkafka crate reads a split queue one message per call through
//! librdkafka's event API: a lock, two clock reads, the poll-interval
//! bookkeeping and an event wrapper per message — a quarter of a worker's
//! CPU under `ingest-bench`. `rd_kafka_consume_batch_queue` takes up to a
//! batch of messages under one lock, so this queue uses it directly
//! (through `rdkafka-sys`, the bindings rdkafka itself is built on).
//!
//! Safety rests on three rules, each kept in one place below: the queue
//! handle is a reference librdkafka counts (taken by
//! `rd_kafka_queue_get_partition`, given back in `Drop`); a message lives
//! until its [`Batch`] is dropped, and a record's payload borrows the
//! batch; the wake-up callback is disabled (under the queue's lock, so no
//! call is in progress) before the state it points to is freed.

use std::ffi::{CString, c_void};
use std::sync::Arc;

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka_sys as rdsys;
use tokio::sync::Notify;

use crate::SourceConsumer;

/// A partition's fetch queue, no longer forwarded to the consumer's queue.
pub struct PartitionQueue {
    queue: *mut rdsys::rd_kafka_queue_t,
    /// Woken by librdkafka when a message lands on the empty queue.
    ready: Arc<Notify>,
    /// The client the queue belongs to outlives it.
    _consumer: Arc<SourceConsumer>,
}

// SAFETY: librdkafka queues are thread-safe (every operation takes the
// queue's lock); the handle is owned, never aliased outside this struct.
unsafe impl Send for PartitionQueue {}
// SAFETY: as above; `&self` methods only call thread-safe librdkafka functions.
unsafe impl Sync for PartitionQueue {}

/// Called on a librdkafka thread when the queue turns non-empty.
unsafe extern "C" fn wake(_: *mut rdsys::rd_kafka_t, ready: *mut c_void) {
    // SAFETY: `ready` is the `Notify` of a live `PartitionQueue`: the
    // callback is disabled in `Drop` before that `Notify` can be freed.
    unsafe { (*(ready as *const Notify)).notify_one() };
}

impl PartitionQueue {
    /// Splits `partition`'s queue off `consumer`: call it before assigning
    /// the partition, since librdkafka forwards a newly assigned partition's
    /// queue to the consumer's unless the application already took it over.
    /// None when librdkafka does not know the partition.
    pub fn split(consumer: &Arc<SourceConsumer>, topic: &str, partition: i32) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives; the
        // returned queue is a new reference, released in `Drop`.
        let queue =
            unsafe { rdsys::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic.as_ptr(), partition) };
        if queue.is_null() {
            return None;
        }
        let ready = Arc::new(Notify::new());
        // SAFETY: `queue` is valid; the opaque pointer stays valid until the
        // callback is disabled in `Drop`, before `ready` is dropped.
        unsafe {
            rdsys::rd_kafka_queue_forward(queue, std::ptr::null_mut());
            rdsys::rd_kafka_queue_cb_event_enable(queue, Some(wake), Arc::as_ptr(&ready) as *mut c_void);
        }
        Some(Self { queue, ready, _consumer: consumer.clone() })
    }

    /// Waits until the queue holds something (a message, an error, or an
    /// operation that turns out to be stale: then [`take`](Self::take)
    /// returns an empty batch and the caller waits again).
    pub async fn readable(&self) {
        loop {
            // SAFETY: `self.queue` is valid while `self` lives.
            if unsafe { rdsys::rd_kafka_queue_length(self.queue) } > 0 {
                return;
            }
            // A message enqueued after the check stores a permit: no wake-up is lost.
            self.ready.notified().await;
        }
    }

    /// Takes up to `max` messages without waiting.
    pub fn take(&self, max: usize) -> Result<Batch<'_>, KafkaError> {
        let mut messages: Vec<*mut rdsys::rd_kafka_message_t> = Vec::with_capacity(max);
        // SAFETY: the buffer has room for `max` pointers; librdkafka fills
        // the first `n` with messages the caller owns from now on.
        let n = unsafe { rdsys::rd_kafka_consume_batch_queue(self.queue, 0, messages.as_mut_ptr(), max) };
        if n < 0 {
            return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::Fail));
        }
        // SAFETY: librdkafka wrote `n <= max` valid pointers.
        unsafe { messages.set_len(n as usize) };
        Ok(Batch { messages, _queue: std::marker::PhantomData })
    }
}

impl Drop for PartitionQueue {
    fn drop(&mut self) {
        // SAFETY: `self.queue` is valid. Disabling takes the queue's lock,
        // which a running callback holds, so none runs once this returns and
        // `ready` may be freed after it; then our reference is released.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue, None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue);
        }
    }
}

/// Messages taken from a [`PartitionQueue`] in one call, destroyed with it.
pub struct Batch<'q> {
    messages: Vec<*mut rdsys::rd_kafka_message_t>,
    _queue: std::marker::PhantomData<&'q PartitionQueue>,
}

// SAFETY: the batch owns its messages; librdkafka messages may be read and
// destroyed on any thread, and `&Batch` only reads them.
unsafe impl Send for Batch<'_> {}
// SAFETY: as above.
unsafe impl Sync for Batch<'_> {}

impl Batch<'_> {
    /// Each message as (offset, payload), or the error librdkafka reported
    /// in its place. (By index: the iterator holds only `&Batch`, so it may
    /// live across an await in a task that moves between threads.)
    pub fn records(&self) -> impl Iterator<Item = Result<(i64, &[u8]), KafkaError>> + '_ {
        (0..self.messages.len()).map(|i| self.record(i))
    }

    fn record(&self, i: usize) -> Result<(i64, &[u8]), KafkaError> {
        // SAFETY: the message is valid until the batch is dropped, and the
        // returned payload borrows the batch.
        let message = unsafe { &*self.messages[i] };
        if message.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(KafkaError::MessageConsumption(message.err.into()));
        }
        let payload = if message.payload.is_null() {
            &[][..]
        } else {
            // SAFETY: librdkafka's payload is `len` readable bytes owned by the message.
            unsafe { std::slice::from_raw_parts(message.payload as *const u8, message.len) }
        };
        Ok((message.offset, payload))
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for &message in &self.messages {
            // SAFETY: each message was handed to us by librdkafka and is destroyed once.
            unsafe { rdsys::rd_kafka_message_destroy(message) };
        }
    }
}
