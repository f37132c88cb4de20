//! A Kafka-protocol cluster that requires TLS and/or SASL: the mock cluster
//! of [`KafkaBroker`] behind one [`KafkaFront`] per broker, every broker
//! advertising its front. Clients connect with [`SecureKafka::client_properties`]
//! exactly as they would to a managed Kafka.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use rdkafka::ClientConfig;

use crate::kafka::wait_for_partitions;
use crate::kafka_front::{FrontSecurity, KafkaFront, SaslUser};
use crate::{KafkaBroker, TestProducer};

/// A self-signed certificate for `127.0.0.1` and `localhost` (which a
/// client trusts as itself: `ssl.ca.location`, `coordinator.tls.ca`), made
/// by the `openssl` command. Returns `(certificate, key)` PEM paths in `dir`.
pub fn self_signed_certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        // Not a CA: rustls' verifier refuses a CA certificate as a server's
        // own; trusted as itself, a self-signed leaf needs no CA flag.
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run openssl (Debian package `openssl`)")?;
    anyhow::ensure!(made.success(), "openssl could not make a certificate");
    Ok((cert, key))
}

/// What a [`SecureKafka`] requires.
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    pub tls: bool,
    pub sasl: Option<SaslUser>,
}

pub struct SecureKafka {
    broker: KafkaBroker,
    fronts: Vec<KafkaFront>,
    requirements: Requirements,
    /// The certificate clients trust.
    ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl SecureKafka {
    /// A one-broker mock cluster reachable only through a front with
    /// `requirements`.
    pub async fn start(requirements: Requirements) -> anyhow::Result<Self> {
        let broker = KafkaBroker::start_mock(1)?;
        let dir = tempfile::tempdir()?;
        let tls = if requirements.tls { Some(self_signed_certificate(dir.path())?) } else { None };
        let upstreams: Vec<SocketAddr> = broker
            .bootstrap_servers()
            .split(',')
            .map(|addr| addr.parse().with_context(|| format!("mock broker address {addr}")))
            .collect::<anyhow::Result<_>>()?;
        let mut fronts = Vec::new();
        // The mock cluster lists its brokers by id, from 1.
        for (id, upstream) in (1..).zip(upstreams) {
            let security = FrontSecurity { tls: tls.clone(), sasl: requirements.sasl.clone() };
            let front = KafkaFront::start(upstream, security).await?;
            broker.advertise(id, front.addr())?;
            fronts.push(front);
        }
        Ok(Self { broker, fronts, ca: tls.map(|(cert, _)| cert), requirements, _dir: dir })
    }

    /// The fronts' addresses, for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.fronts.iter().map(|f| f.addr().to_string()).collect::<Vec<_>>().join(",")
    }

    /// `security.protocol`, the CA and the SASL settings a client needs, as
    /// a pipeline's `source.properties` would hold them.
    pub fn client_properties(&self) -> BTreeMap<String, String> {
        let mut properties = BTreeMap::new();
        let protocol = match (self.requirements.tls, &self.requirements.sasl) {
            (false, None) => "PLAINTEXT",
            (true, None) => "SSL",
            (false, Some(_)) => "SASL_PLAINTEXT",
            (true, Some(_)) => "SASL_SSL",
        };
        properties.insert("security.protocol".to_string(), protocol.to_string());
        if let Some(ca) = &self.ca {
            properties.insert("ssl.ca.location".to_string(), ca.display().to_string());
        }
        if let Some(user) = &self.requirements.sasl {
            properties.insert("sasl.mechanism".to_string(), user.mechanism.name().to_string());
            properties.insert("sasl.username".to_string(), user.username.clone());
            properties.insert("sasl.password".to_string(), user.password.clone());
        }
        properties
    }

    /// The certificate a client must trust, when TLS is required.
    pub fn ca_location(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// Client settings: the fronts and [`SecureKafka::client_properties`].
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap_servers());
        for (key, value) in self.client_properties() {
            config.set(key, value);
        }
        config
    }

    /// Creates `topic` and waits until a client that authenticates sees it.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        self.broker.create_topic_unchecked(topic, partitions)?;
        wait_for_partitions(self.client_config(), topic, partitions).await
    }

    /// A producer that connects as [`SecureKafka::client_config`] says.
    pub fn producer(&self) -> anyhow::Result<TestProducer> {
        TestProducer::with_config(self.client_config())
    }

    /// The underlying mock cluster (its own ports speak plaintext).
    pub fn mock(&self) -> &KafkaBroker {
        &self.broker
    }
}
