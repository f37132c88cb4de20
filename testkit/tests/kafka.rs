//! The test kit's broker speaks the Kafka protocol over TCP: records produced
//! are read back with a plain rdkafka consumer using `assign` + `seek`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_testkit::process::pid_alive;
use sluice_testkit::{KafkaBroker, unique_name};

/// Reads from `consumer` until `want` records arrived (or 60 s passed).
/// Returns `(partition, offset, payload)`.
async fn consume(consumer: &StreamConsumer, want: usize) -> Vec<(i32, i64, String)> {
    let mut out = Vec::with_capacity(want);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < want {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => out.push((
                message.partition(),
                message.offset(),
                String::from_utf8(message.payload().unwrap_or_default().to_vec()).unwrap(),
            )),
            Ok(Err(e)) => eprintln!("consumer error (retrying): {e}"),
            Err(_) => panic!("timed out with {} of {want} records", out.len()),
        }
    }
    out
}

/// Nothing more arrives within `quiet`.
async fn assert_no_more(consumer: &StreamConsumer, quiet: Duration) {
    if let Ok(Ok(message)) = tokio::time::timeout(quiet, consumer.recv()).await {
        panic!("unexpected extra record at {}:{}", message.partition(), message.offset());
    }
}

fn assign(consumer: &StreamConsumer, topic: &str, offsets: &BTreeMap<i32, i64>) {
    let mut list = TopicPartitionList::new();
    for (partition, offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).unwrap();
    }
    consumer.assign(&list).unwrap();
}

#[tokio::test]
async fn ten_thousand_records_over_four_partitions_are_read_back_exactly_once() {
    let broker = KafkaBroker::start().unwrap();
    let topic = unique_name("roundtrip");
    broker.create_topic(&topic, 4).await.unwrap();

    let producer = broker.producer().unwrap();
    let records = (0..10_000).map(|id| (id % 4, format!("{{\"id\":{id}}}").into_bytes()));
    let delivered = producer.send_all(&topic, records).await.unwrap();
    assert_eq!(delivered.len(), 10_000);

    // Where each record landed, from the delivery reports (not from watermarks).
    let mut first_offset: BTreeMap<i32, i64> = BTreeMap::new();
    let mut expected: HashSet<(i32, i64, String)> = HashSet::new();
    for (id, (partition, offset)) in delivered.iter().enumerate() {
        let first = first_offset.entry(*partition).or_insert(*offset);
        *first = (*first).min(*offset);
        expected.insert((*partition, *offset, format!("{{\"id\":{id}}}")));
    }
    assert_eq!(first_offset.len(), 4);

    let consumer: StreamConsumer = broker.consumer_config().create().unwrap();
    assign(&consumer, &topic, &first_offset);
    let got = consume(&consumer, 10_000).await;
    assert_no_more(&consumer, Duration::from_millis(500)).await;
    let got_set: HashSet<(i32, i64, String)> = got.iter().cloned().collect();
    assert_eq!(got_set.len(), got.len(), "a record was read twice");
    assert_eq!(got_set, expected, "every record exactly once, at the offset it was delivered to");

    // Seek partition 2 back to an explicit offset: exactly its tail is read again.
    let tail_from = first_offset[&2] + 1_000;
    consumer.seek(&topic, 2, Offset::Offset(tail_from), Duration::from_secs(10)).unwrap();
    let tail_len = expected.iter().filter(|(p, o, _)| *p == 2 && *o >= tail_from).count();
    let tail = consume(&consumer, tail_len).await;
    assert!(tail.iter().all(|(p, o, _)| *p == 2 && *o >= tail_from));
    assert_eq!(tail.iter().map(|(_, o, _)| *o).collect::<HashSet<_>>().len(), tail_len);
}

#[tokio::test]
async fn a_consumer_resumes_without_loss_after_the_broker_is_down() {
    let broker = KafkaBroker::start().unwrap();
    if !broker.is_mock() {
        eprintln!(
            "skipped: taking a broker down needs the mock broker, and {} names an external one",
            sluice_testkit::EXTERNAL_BROKER_ENV
        );
        return;
    }
    let topic = unique_name("outage");
    broker.create_topic(&topic, 2).await.unwrap();
    let producer = broker.producer().unwrap();
    producer.send_all(&topic, (0..1_000).map(|id| (id % 2, id.to_string().into_bytes()))).await.unwrap();

    let consumer: StreamConsumer = broker.consumer_config().create().unwrap();
    assign(&consumer, &topic, &BTreeMap::from([(0, 0), (1, 0)]));
    let mut got = consume(&consumer, 1_000).await;

    broker.take_down().unwrap();
    // Records produced during the outage wait in the producer until it ends.
    let produce_during_outage = tokio::spawn(async move {
        producer.send_all(&topic, (1_000..2_000).map(|id| (id % 2, id.to_string().into_bytes()))).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!produce_during_outage.is_finished(), "nothing can be delivered while the broker is down");
    broker.bring_up().unwrap();
    produce_during_outage.await.unwrap().unwrap();

    got.extend(consume(&consumer, 1_000).await);
    assert_no_more(&consumer, Duration::from_millis(500)).await;
    let ids: HashSet<u32> = got.iter().map(|(_, _, payload)| payload.parse().unwrap()).collect();
    assert_eq!(got.len(), 2_000, "no record read twice");
    assert_eq!(ids, (0..2_000).collect::<HashSet<u32>>(), "no record lost");
}

#[test]
fn the_mock_broker_dies_with_a_panicking_test() {
    if std::env::var(sluice_testkit::EXTERNAL_BROKER_ENV).is_ok() {
        return;
    }
    let handle = std::thread::spawn(|| {
        let broker = KafkaBroker::start_mock(1).unwrap();
        std::panic::panic_any(broker.pid().unwrap());
    });
    let pid = *handle.join().unwrap_err().downcast::<u32>().unwrap();
    assert!(!pid_alive(pid), "the mock broker (pid {pid}) outlived the panicking test");
}
