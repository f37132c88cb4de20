//! How a node connects to a pipeline's Kafka source: the same client
//! settings on workers (which commit) and query nodes (which read the
//! uncommitted tail), so both see the same records.

use rdkafka::ClientConfig;
use sluice_config::PipelineConfig;

/// The pipeline's `source.properties` (TLS, SASL, ...) and bootstrap servers.
pub fn kafka_config(config: &PipelineConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in &config.source.properties {
        client.set(key, value);
    }
    client.set("bootstrap.servers", &config.source.bootstrap_servers);
    client
}
