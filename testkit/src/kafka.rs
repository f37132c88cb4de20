//! A Kafka-protocol broker for tests: librdkafka's mock cluster hosted in the
//! `sluice-mock-broker` process, or an external broker named by
//! [`EXTERNAL_BROKER_ENV`]. Tests count what they produced and never trust
//! watermark offsets to be exact (some broker implementations report them
//! wrongly).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::process::GuardedChild;

/// Bootstrap servers of an external Kafka-protocol broker. When set, every
/// test runs against it instead of the mock cluster (and tests that need to
/// take a broker down skip, saying so).
pub const EXTERNAL_BROKER_ENV: &str = "SLUICE_TEST_KAFKA_BROKERS";
/// Path of the `sluice-mock-broker` binary, when not found next to the test.
pub const MOCK_BROKER_BIN_ENV: &str = "SLUICE_MOCK_BROKER_BIN";

pub struct KafkaBroker {
    kind: Kind,
    bootstrap: String,
}

enum Kind {
    Mock { control: Mutex<Control>, brokers: i32, process: GuardedChild },
    External,
}

struct Control {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl KafkaBroker {
    /// The external broker if [`EXTERNAL_BROKER_ENV`] is set, else a
    /// one-broker mock cluster.
    pub fn start() -> anyhow::Result<Self> {
        match std::env::var(EXTERNAL_BROKER_ENV) {
            Ok(bootstrap) if !bootstrap.trim().is_empty() => Ok(Self { kind: Kind::External, bootstrap }),
            _ => Self::start_mock(1),
        }
    }

    /// A mock cluster of `brokers` brokers in a child process.
    pub fn start_mock(brokers: i32) -> anyhow::Result<Self> {
        let binary = mock_broker_binary()?;
        let mut command = Command::new(&binary);
        command
            .arg("--brokers")
            .arg(brokers.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = GuardedChild::spawn(command).with_context(|| format!("start {}", binary.display()))?;
        let child = process.child_mut().expect("just spawned");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).context("read the mock broker's bootstrap line")?;
        let bootstrap = first
            .trim()
            .strip_prefix("BOOTSTRAP ")
            .ok_or_else(|| anyhow!("the mock broker said {first:?} instead of its bootstrap servers"))?
            .to_string();
        Ok(Self { kind: Kind::Mock { control: Mutex::new(Control { stdin, stdout }), brokers, process }, bootstrap })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    pub fn is_mock(&self) -> bool {
        matches!(self.kind, Kind::Mock { .. })
    }

    /// Number of brokers (1 for an external cluster, whose size is not known).
    pub fn broker_count(&self) -> i32 {
        match &self.kind {
            Kind::Mock { brokers, .. } => *brokers,
            Kind::External => 1,
        }
    }

    /// pid of the mock broker process.
    pub fn pid(&self) -> Option<u32> {
        match &self.kind {
            Kind::Mock { process, .. } => process.id(),
            Kind::External => None,
        }
    }

    /// Creates `topic` with `partitions` partitions and waits until its
    /// metadata shows all of them.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        match &self.kind {
            Kind::Mock { .. } => self.command(&format!("create-topic {topic} {partitions}"))?,
            Kind::External => {
                let admin: AdminClient<DefaultClientContext> =
                    ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create()?;
                let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
                let results = admin.create_topics([&new_topic], &AdminOptions::new()).await?;
                for result in results {
                    match result {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((name, code)) => bail!("create topic {name}: {code}"),
                    }
                }
            }
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        wait_for_partitions(config, topic, partitions).await
    }

    /// Creates `topic` on the mock cluster without waiting for its metadata
    /// (for a cluster reached through fronts, whose clients need more than
    /// the bootstrap servers).
    pub fn create_topic_unchecked(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        self.command(&format!("create-topic {topic} {partitions}"))
    }

    /// Makes the metadata of broker `broker_id` (1-based) send clients to
    /// `addr` instead of the broker's own port.
    pub fn advertise(&self, broker_id: i32, addr: std::net::SocketAddr) -> anyhow::Result<()> {
        self.command(&format!("advertise {broker_id} {} {}", addr.ip(), addr.port()))
    }

    /// Takes every broker down: connections are closed and refused until
    /// [`KafkaBroker::bring_up`]. Not possible against an external broker.
    pub fn take_down(&self) -> anyhow::Result<()> {
        self.command("down-all")
    }

    pub fn bring_up(&self) -> anyhow::Result<()> {
        self.command("up-all")
    }

    /// Takes one broker (1-based id) down or up.
    pub fn set_broker_up(&self, broker_id: i32, up: bool) -> anyhow::Result<()> {
        self.command(&format!("{} {broker_id}", if up { "up" } else { "down" }))
    }

    fn command(&self, line: &str) -> anyhow::Result<()> {
        let Kind::Mock { control, .. } = &self.kind else {
            bail!("`{line}` needs the mock broker; {EXTERNAL_BROKER_ENV} names an external broker");
        };
        let mut control = control.lock().map_err(|_| anyhow!("mock broker control poisoned"))?;
        writeln!(control.stdin, "{line}").and_then(|_| control.stdin.flush()).context("write to the mock broker")?;
        let mut answer = String::new();
        control.stdout.read_line(&mut answer).context("read from the mock broker")?;
        match answer.trim() {
            "OK" => Ok(()),
            other => bail!("mock broker refused `{line}`: {other}"),
        }
    }

    /// Client properties for a consumer that uses `assign` + `seek` (a
    /// `group.id` is still required by librdkafka, but no group is joined).
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", crate::unique_name("testkit"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "error");
        config
    }

    pub fn producer(&self) -> anyhow::Result<TestProducer> {
        TestProducer::new(&self.bootstrap)
    }
}

/// Waits until the metadata a client with `config` gets shows `topic` with
/// `partitions` partitions.
pub async fn wait_for_partitions(config: ClientConfig, topic: &str, partitions: i32) -> anyhow::Result<()> {
    crate::wait_until(&format!("topic {topic} shows {partitions} partitions"), Duration::from_secs(30), || {
        let (config, topic) = (config.clone(), topic.to_string());
        async move {
            tokio::task::spawn_blocking(move || partition_count_with(config, &topic).ok() == Some(partitions as usize))
                .await
                .unwrap_or(false)
        }
    })
    .await
}

/// The offsets consumer group `group` committed for partitions
/// `0..partitions` of `topic`, read by an independent client with
/// `config`'s connection settings; `None` until every partition has one.
pub async fn committed_offsets(
    mut config: ClientConfig,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Option<std::collections::BTreeMap<i32, i64>> {
    config.set("group.id", group);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = config.create().ok()?;
        let mut asked = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            asked.add_partition(&topic, p);
        }
        let committed = reader.committed_offsets(asked, Duration::from_secs(5)).ok()?;
        (0..partitions)
            .map(|p| match committed.find_partition(&topic, p)?.offset() {
                rdkafka::Offset::Offset(o) => Some((p, o)),
                _ => None,
            })
            .collect()
    })
    .await
    .ok()
    .flatten()
}

/// The partition count of `topic` as the broker's metadata reports it.
pub fn partition_count(bootstrap: &str, topic: &str) -> anyhow::Result<usize> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    partition_count_with(config, topic)
}

fn partition_count_with(mut config: ClientConfig, topic: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = config.set("group.id", "testkit-metadata").create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let topic_meta = metadata.topics().first().ok_or_else(|| anyhow!("no metadata for {topic}"))?;
    if let Some(error) = topic_meta.error() {
        bail!("metadata for {topic}: {error:?}");
    }
    Ok(topic_meta.partitions().len())
}

/// An idempotent producer (`acks=all`, no duplicates on retry), so that what a
/// test produced is exactly what the topic holds.
pub struct TestProducer {
    producer: FutureProducer,
}

impl TestProducer {
    pub fn new(bootstrap: &str) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        Self::with_config(config)
    }

    /// A producer with `config`'s connection settings (bootstrap servers,
    /// TLS, SASL).
    pub fn with_config(mut config: ClientConfig) -> anyhow::Result<Self> {
        let producer = config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "120000")
            .create()
            .context("create the test producer")?;
        Ok(Self { producer })
    }

    /// Produces one record and waits for its delivery; returns its offset.
    pub async fn send(&self, topic: &str, partition: i32, key: Option<&[u8]>, payload: &[u8]) -> anyhow::Result<i64> {
        let mut record = FutureRecord::to(topic).partition(partition).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        let delivery = self.producer.send(record, Duration::from_secs(60)).await.map_err(|(e, _)| e)?;
        Ok(delivery.offset)
    }

    /// Produces every `(partition, payload)` with as many in flight as the
    /// client allows, then waits for all deliveries. Returns `(partition,
    /// offset)` per record, in input order.
    pub async fn send_all<I>(&self, topic: &str, records: I) -> anyhow::Result<Vec<(i32, i64)>>
    where
        I: IntoIterator<Item = (i32, Vec<u8>)>,
    {
        let mut pending: std::collections::VecDeque<DeliveryFuture> = Default::default();
        let mut delivered = Vec::new();
        for (partition, payload) in records {
            loop {
                match self
                    .producer
                    .send_result(FutureRecord::<[u8], [u8]>::to(topic).partition(partition).payload(&payload))
                {
                    Ok(future) => {
                        pending.push_back(future);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        let oldest =
                            pending.pop_front().ok_or_else(|| anyhow!("producer queue full with nothing in flight"))?;
                        delivered.push(await_delivery(oldest).await?);
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        while let Some(future) = pending.pop_front() {
            delivered.push(await_delivery(future).await?);
        }
        Ok(delivered)
    }

    /// Waits until everything queued is delivered.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer.flush(timeout)?;
        Ok(())
    }
}

async fn await_delivery(future: DeliveryFuture) -> anyhow::Result<(i32, i64)> {
    let delivery = future.await.context("delivery report dropped")?.map_err(|(e, _)| e)?;
    Ok((delivery.partition, delivery.offset))
}

/// Finds the `sluice-mock-broker` binary: [`MOCK_BROKER_BIN_ENV`], else next
/// to the running test's target directory, else builds it with cargo (once
/// per process).
pub fn mock_broker_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY.get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn locate_or_build() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var(MOCK_BROKER_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // Test binaries live in target/<profile>/deps, binaries in target/<profile>.
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(3).map(|dir| dir.join("sluice-mock-broker")).collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    // Build in the profile of the running binary, where it is looked for.
    let release = exe.components().any(|c| c.as_os_str() == "release");
    let mut args = vec!["build", "-p", "sluice-testkit", "--bin", "sluice-mock-broker"];
    if release {
        args.push("--release");
    }
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args(&args)
        .status()
        .context("run cargo to build sluice-mock-broker")?;
    anyhow::ensure!(status.success(), "cargo build of sluice-mock-broker failed");
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("sluice-mock-broker not found after building it; set {MOCK_BROKER_BIN_ENV}"))
}
