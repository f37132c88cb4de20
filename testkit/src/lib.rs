//! Real services for sluice's tests: ZooKeeper servers from Debian's
//! `zookeeper` package, a Kafka-protocol broker (librdkafka's mock cluster
//! in a process of its own, or an external broker) and an S3-compatible
//! server (moto's), on loopback; the same broker behind a TLS/SASL front
//! ([`SecureKafka`]) for the Kafka-security tests; and a minimal schema
//! registry speaking Confluent's REST API ([`SchemaRegistry`]; no real one
//! installs here, see its module).
//!
//! Invariants:
//! - Nothing here stands in for ZooKeeper or Kafka: every service is a real
//!   server reached over TCP (the schema registry, the one written here,
//!   too), so the code under test runs its real network
//!   paths, timeouts and failure handling.
//! - Every process started here dies with the value that owns it, when a test
//!   panics, and when the test process itself is killed (see [`process`]).
//! - Each start picks fresh loopback ports and a fresh temporary directory;
//!   tests share nothing and need no cleanup between runs.
//! - Tests count what they produce; they never rely on a broker's watermark
//!   offsets being exact.

pub mod kafka;
pub mod kafka_front;
pub mod net;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod schema_registry;
pub mod secure_kafka;
mod wait;
pub mod zookeeper;

use std::sync::atomic::{AtomicU64, Ordering};

pub use kafka::{EXTERNAL_BROKER_ENV, KafkaBroker, TestProducer};
pub use process::GuardedChild;
pub use proxy::TcpProxy;
pub use s3::S3Server;
pub use schema_registry::SchemaRegistry;
pub use secure_kafka::{Requirements, SecureKafka, self_signed_certificate};
pub use wait::{wait_until, wait_until_blocking};
pub use zookeeper::{ZooKeeper, ZooKeeperEnsemble};

/// A name unique within this machine's test runs: `<prefix>-<pid>-<n>-<nanos>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}
