//! The Kafka client context of a pipeline's consumers: librdkafka's own
//! log lines and errors reach the node's log under the pipeline's name, and
//! the last connection failure (TLS, SASL, unreachable or unknown brokers)
//! is kept for `/health` and `sluice status`.
//!
//! librdkafka retries connections forever by itself, so a wrong password or
//! an untrusted certificate never fails a call: without this, the consumer
//! would wait in silence. Its detailed reason ("SASL authentication error:
//! Authentication failed: Invalid username or password") is only in its log
//! callback; the error events a consumer polls carry the code alone.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;

/// A consumer of a pipeline's source.
pub type SourceConsumer = StreamConsumer<SourceContext>;

/// The same failure is logged at most this often (librdkafka repeats it on
/// every reconnect).
const LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct SourceContext {
    /// The pipeline's table, which names it in logs and health.
    table: String,
    /// Set with `failure`, cleared by [`SourceContext::recovered`]: the
    /// consuming loop checks it per batch without taking the lock.
    failing: AtomicBool,
    failure: Mutex<Option<Failure>>,
}

#[derive(Debug, Clone)]
struct Failure {
    message: String,
    logged_at: Instant,
}

impl SourceContext {
    pub fn new(table: &str) -> Self {
        Self { table: table.to_string(), failing: AtomicBool::new(false), failure: Mutex::new(None) }
    }

    /// The last connection failure since records last arrived, as a
    /// sentence naming the pipeline.
    pub fn failure(&self) -> Option<String> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.as_ref().map(|f| format!("pipeline `{}` cannot read its Kafka source: {}", self.table, f.message))
    }

    /// Records arrived: whatever failed before is over.
    pub fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!(table = %self.table, "the Kafka source is reachable again");
        }
    }

    fn failed(&self, message: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        // The same failure again within LOG_EVERY changes nothing but the flag.
        let repeated = failure.as_ref().is_some_and(|f| f.message == message && f.logged_at.elapsed() < LOG_EVERY);
        if !repeated {
            tracing::error!(
                table = %self.table,
                "pipeline `{}` cannot read its Kafka source: {message}{}",
                self.table,
                hint(&message)
            );
            *failure = Some(Failure { message, logged_at: Instant::now() });
        }
        self.failing.store(true, Ordering::Relaxed);
    }
}

/// What to check, for the failures a misconfigured pipeline causes.
fn hint(message: &str) -> &'static str {
    let lower = message.to_ascii_lowercase();
    if lower.contains("sasl") || lower.contains("authentication") {
        " (check source.properties: sasl.mechanism, sasl.username, sasl.password)"
    } else if lower.contains("ssl") || lower.contains("certificate") || lower.contains("tls") {
        " (check source.properties: security.protocol and ssl.ca.location)"
    } else {
        ""
    }
}

/// librdkafka's log lines that mean the source cannot be read: a broker
/// connection failed (`FAIL`), or an error was raised (`ERROR`).
fn is_connection_failure(level: RDKafkaLogLevel, facility: &str) -> bool {
    (level as i32) <= (RDKafkaLogLevel::Error as i32) && matches!(facility, "FAIL" | "ERROR")
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if is_connection_failure(level, facility) {
            self.failed(message.to_string());
        } else if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            tracing::warn!(table = %self.table, facility, "librdkafka: {message}");
        } else {
            tracing::debug!(table = %self.table, facility, "librdkafka: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // A global error ("1/1 brokers are down") follows the broker's own
        // failure line, which says why: it never replaces that reason.
        if !self.failing.load(Ordering::Relaxed) {
            self.failed(format!("{reason} ({error})"));
        }
    }
}

impl ConsumerContext for SourceContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_pipeline_until_records_arrive() {
        let context = SourceContext::new("clicks");
        assert_eq!(context.failure(), None);
        context.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "sasl_ssl://127.0.0.1:9093/1: SASL authentication error: Authentication failed",
        );
        let failure = context.failure().unwrap();
        assert!(failure.contains("pipeline `clicks`") && failure.contains("SASL authentication error"), "{failure}");
        assert!(hint(&failure).contains("sasl.password"));
        context.log(RDKafkaLogLevel::Info, "FAIL", "not a failure at this level");
        context.log(RDKafkaLogLevel::Error, "CONFWARN", "not a connection failure");
        assert!(context.failure().unwrap().contains("SASL"));
        context.error(KafkaError::Global(rdkafka::types::RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down");
        assert!(context.failure().unwrap().contains("SASL"), "the broker's reason stays");
        context.recovered();
        assert_eq!(context.failure(), None);
        context.error(KafkaError::Global(rdkafka::types::RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down");
        assert!(context.failure().unwrap().contains("brokers are down"), "with nothing better, the global error");
    }
}
