//! `sluice-mock-broker`: librdkafka's mock cluster in a process of its own, so
//! that `sluice` processes under test reach it over TCP like a real Kafka.
//!
//! It prints `BOOTSTRAP <host:port,...>` once listening, then takes one
//! command per line on stdin and answers `OK` or `ERR <reason>`:
//!
//! ```text
//! create-topic <name> <partitions>
//! down <broker-id> | up <broker-id>     (ids start at 1)
//! down-all | up-all
//! advertise <broker-id> <host> <port>   (what metadata tells clients)
//! quit
//! ```
//!
//! `advertise` puts a front in the path of every client: the test kit's
//! TLS/SASL front listens on its own port and forwards to the broker's, and
//! the broker's metadata must send clients back through the front.
//!
//! It exits when stdin closes, so it never outlives the test kit that owns it.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

fn main() -> ExitCode {
    let mut brokers = 1i32;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().map(|v| v.parse::<i32>())) {
            ("--brokers", Some(Ok(n))) if (1..=16).contains(&n) => brokers = n,
            _ => {
                eprintln!("usage: sluice-mock-broker [--brokers 1..16]");
                return ExitCode::from(2);
            }
        }
    }
    // The cluster hosted by a client (`test.mock.num.brokers`) rather than
    // `MockCluster::new`, because only the client hands out the native
    // cluster that `advertise` needs.
    let host: BaseProducer = match ClientConfig::new().set("test.mock.num.brokers", brokers.to_string()).create() {
        Ok(host) => host,
        Err(e) => {
            eprintln!("cannot start the mock cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(cluster) = host.client().mock_cluster() else {
        eprintln!("the client did not start a mock cluster");
        return ExitCode::FAILURE;
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "BOOTSTRAP {}", cluster.bootstrap_servers()).and_then(|_| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let result: Result<(), String> = match words.as_slice() {
            ["create-topic", name, partitions] => match partitions.parse::<i32>() {
                Ok(p) if p > 0 => cluster.create_topic(name, p, 1).map_err(|e| e.to_string()),
                _ => Err(format!("bad partition count `{partitions}`")),
            },
            ["down", id] => id
                .parse()
                .map_err(|_| format!("bad broker id `{id}`"))
                .and_then(|id| cluster.broker_down(id).map_err(|e| e.to_string())),
            ["up", id] => id
                .parse()
                .map_err(|_| format!("bad broker id `{id}`"))
                .and_then(|id| cluster.broker_up(id).map_err(|e| e.to_string())),
            ["down-all"] => (1..=brokers).try_for_each(|id| cluster.broker_down(id)).map_err(|e| e.to_string()),
            ["up-all"] => (1..=brokers).try_for_each(|id| cluster.broker_up(id)).map_err(|e| e.to_string()),
            ["advertise", id, host_name, port] => match (id.parse::<i32>(), port.parse::<u16>()) {
                (Ok(id), Ok(port)) if (1..=brokers).contains(&id) => {
                    advertise(&host, id, host_name, port);
                    Ok(())
                }
                _ => Err(format!("bad broker id `{id}` or port `{port}`")),
            },
            ["quit"] => break,
            _ => Err(format!("unknown command `{line}`")),
        };
        let answer = match result {
            Ok(()) => "OK".to_string(),
            Err(reason) => format!("ERR {reason}"),
        };
        if writeln!(out, "{answer}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// Makes the broker's metadata name `host:port` as broker `id`'s address.
fn advertise(client: &BaseProducer, id: i32, host: &str, port: u16) {
    let Ok(host) = std::ffi::CString::new(host) else { return };
    // SAFETY: the cluster belongs to `client`, which outlives this call; the
    // function copies `host` under the cluster's lock.
    unsafe {
        let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(client.client().native_ptr());
        if !cluster.is_null() {
            rdkafka::bindings::rd_kafka_mock_broker_set_host_port(cluster, id, host.as_ptr(), i32::from(port));
        }
    }
}
