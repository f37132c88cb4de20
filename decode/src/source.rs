//! How a node connects to a pipeline's Kafka source: the same client
//! settings on workers (which commit) and query nodes (which read the
//! uncommitted tail), so both see the same records.

use rdkafka::ClientConfig;
use sluice_config::PipelineConfig;

const FETCH_WAIT: &str = "fetch.wait.max.ms";

/// The pipeline's `source.properties` (TLS, SASL, ...) and bootstrap servers.
pub fn kafka_config(config: &PipelineConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in &config.source.properties {
        client.set(key, value);
    }
    client.set("bootstrap.servers", &config.source.bootstrap_servers);
    client
}

/// [`kafka_config`] with sluice's consumer defaults.
pub fn consumer_config(config: &PipelineConfig) -> ClientConfig {
    let mut client = kafka_config(config);
    // A fetch that finds nothing new is answered within 100 ms rather than
    // librdkafka's 500 ms, unless the pipeline says otherwise: the tail's
    // freshness and a worker's catch-up both wait on it (a broker answers at
    // once when data arrives; the test-kit broker waits the bound out).
    if !config.source.properties.contains_key(FETCH_WAIT) {
        client.set(FETCH_WAIT, "100");
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(properties: &str) -> PipelineConfig {
        let text = format!(
            "table = \"t\"\n[source]\nbootstrap_servers = \"b:9092\"\ntopic = \"t\"\n[source.properties]\n{properties}\n\
             [schema]\ntime_column = \"ts\"\n[[schema.columns]]\nname = \"ts\"\ntype = \"timestamp\"\n"
        );
        sluice_config::parse_pipeline(&text, std::path::Path::new("t.toml"), &|_: &str| None).unwrap()
    }

    #[test]
    fn consumers_wait_at_most_100ms_for_a_fetch_unless_the_pipeline_says_otherwise() {
        assert_eq!(consumer_config(&pipeline("")).get(FETCH_WAIT), Some("100"));
        assert_eq!(kafka_config(&pipeline("")).get(FETCH_WAIT), None, "producers get no consumer property");
        let own = pipeline("\"fetch.wait.max.ms\" = \"20\"");
        assert_eq!(consumer_config(&own).get(FETCH_WAIT), Some("20"));
        assert_eq!(consumer_config(&own).get("bootstrap.servers"), Some("b:9092"));
    }
}
