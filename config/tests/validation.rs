//! One test per class of mistake a user can make in a config file. Each checks
//! that the error names the field, what was found and what was expected.

use std::path::Path;

use sluice_config::{ConfigError, PipelineConfig, parse_pipeline, parse_query_node, parse_worker};

const PIPELINE: &str = r#"
table = "clicks"

[source]
bootstrap_servers = "kafka1:9092,kafka2:9092"
topic = "clicks"
start_position = "earliest"

[source.properties]
"security.protocol" = "SASL_SSL"
"sasl.password" = "${KAFKA_PASSWORD}"

[schema]
time_column = "ts"

[[schema.columns]]
name = "ts"
type = "timestamp"
unit = "ms"
nullable = false

[[schema.columns]]
name = "user_id"
type = "string"
nullable = false

[[schema.columns]]
name = "country"
type = "string"
path = "geo.country"
default = "unknown"

[[schema.columns]]
name = "latency_ms"
type = "int32"

[indexes]
inverted = ["country"]
sorted = ["user_id"]
range = ["latency_ms"]
bloom = ["user_id"]

[flush]
rows = 100000
time = "5m"
bytes = "128MiB"

[bad_records]
policy = "dead_letter"
topic = "clicks-dlq"
"#;

fn env(name: &str) -> Option<String> {
    (name == "KAFKA_PASSWORD").then(|| "s3cr\"et".to_string())
}

fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
    parse_pipeline(text, Path::new("pipelines/clicks.toml"), &env)
}

/// The base pipeline with `from` replaced by `to` (which must change it).
fn variant(from: &str, to: &str) -> String {
    assert!(PIPELINE.contains(from), "test bug: {from:?} is not in the base pipeline");
    PIPELINE.replacen(from, to, 1)
}

/// Asserts that `text` is refused with a problem at `field` whose found and
/// expected parts contain the given fragments; returns the rendered error.
fn assert_problem(text: &str, field: &str, found: &str, expected: &str) -> String {
    let error = parse(text).expect_err("the config should be refused");
    let rendered = error.to_string();
    let problem = error
        .problems()
        .iter()
        .find(|p| p.field == field)
        .unwrap_or_else(|| panic!("no problem at {field}; got: {rendered}"));
    assert!(problem.found.contains(found), "found {:?} lacks {found:?}", problem.found);
    assert!(problem.expected.contains(expected), "expected {:?} lacks {expected:?}", problem.expected);
    assert!(rendered.starts_with("pipelines/clicks.toml: "), "the error names the file: {rendered}");
    rendered
}

#[test]
fn the_base_pipeline_is_valid_and_interpolated() {
    let config = parse(PIPELINE).unwrap();
    assert_eq!(config.source.properties["sasl.password"], "s3cr\"et");
    assert_eq!(config.indexes.sorted_column(), Some("user_id"));
    assert_eq!(config.schema.column("country").unwrap().field_path(), vec!["geo", "country"]);
    assert_eq!(config.flush.time, std::time::Duration::from_secs(300));
}

#[test]
fn toml_syntax_error_has_line_and_column() {
    let text = variant("topic = \"clicks\"", "topic = \"clicks");
    let error = parse(&text).unwrap_err();
    match &error {
        ConfigError::Syntax { line, column, .. } => {
            assert_eq!(*line, 6, "{error}");
            assert!(*column >= 9, "{error}");
        }
        other => panic!("expected a syntax error, got {other}"),
    }
    assert!(error.to_string().starts_with("pipelines/clicks.toml:6:"), "{error}");
}

#[test]
fn unknown_field() {
    let text = variant(
        "nullable = false\n\n[[schema.columns]]\nname = \"user_id\"",
        "nullable = false\ncolour = \"red\"\n\n[[schema.columns]]\nname = \"user_id\"",
    );
    assert_problem(&text, "schema.columns[0].colour", "unknown field `colour`", "`name`");
}

#[test]
fn unknown_top_level_section() {
    let text = format!("{PIPELINE}\n[flushing]\nrows = 5\n");
    assert_problem(&text, "flushing", "unknown field `flushing`", "`flush`");
}

#[test]
fn missing_required_field() {
    let text = variant("topic = \"clicks\"\n", "");
    assert_problem(&text, "source.topic", "nothing", "`topic`");
}

#[test]
fn unknown_column_type() {
    let text = variant("type = \"int32\"", "type = \"int128\"");
    assert_problem(&text, "schema.columns[3].type", "`int128`", "`int64`");
}

#[test]
fn index_on_a_column_that_does_not_exist() {
    let text = variant("inverted = [\"country\"]", "inverted = [\"country\", \"city\"]");
    assert_problem(&text, "indexes.inverted[1]", "\"city\"", "a column name");
}

#[test]
fn sorted_index_on_more_than_one_column() {
    let text = variant("sorted = [\"user_id\"]", "sorted = [\"user_id\", \"country\"]");
    assert_problem(&text, "indexes.sorted", "2 columns", "at most one sorted column");
}

#[test]
fn time_column_missing() {
    let text = variant("time_column = \"ts\"", "time_column = \"event_time\"");
    assert_problem(&text, "schema.time_column", "\"event_time\", which is not a column", "timestamp");
    let text = variant("time_column = \"ts\"\n", "");
    assert_problem(&text, "schema.time_column", "nothing", "`time_column`");
}

#[test]
fn time_column_not_a_timestamp() {
    let text = variant("time_column = \"ts\"", "time_column = \"latency_ms\"");
    assert_problem(&text, "schema.time_column", "a column of type int32", "type timestamp");
}

#[test]
fn zero_or_negative_flush_thresholds() {
    assert_problem(&variant("rows = 100000", "rows = 0"), "flush.rows", "0", "greater than zero");
    assert_problem(&variant("rows = 100000", "rows = -5"), "flush.rows", "-5", "greater than zero");
    assert_problem(&variant("time = \"5m\"", "time = \"0s\""), "flush.time", "0s", "greater than zero");
    assert_problem(&variant("time = \"5m\"", "time = \"-5m\""), "flush.time", "-5m", "`30s`");
    assert_problem(&variant("bytes = \"128MiB\"", "bytes = 0"), "flush.bytes", "0 bytes", "greater than zero");
    assert_problem(
        &variant("bytes = \"128MiB\"", "bytes = \"-1MiB\""),
        "flush.bytes",
        "negative size",
        "greater than zero",
    );
}

#[test]
fn malformed_bootstrap_servers() {
    let text = variant("kafka1:9092,kafka2:9092", "kafka1:9092,kafka2");
    assert_problem(&text, "source.bootstrap_servers", "has no `:port`", "host:port");
}

#[test]
fn unsupported_deep_store_scheme() {
    let text = format!("{PIPELINE}\n[deep_store]\nuri = \"ftp://example.com/segments\"\n");
    assert_problem(&text, "deep_store.uri", "unsupported scheme `ftp`", "file");
    let text = format!("{PIPELINE}\n[deep_store]\nuri = \"file://relative/dir\"\n");
    assert_problem(&text, "deep_store.uri", "absolute path", "file");
    let text = format!("{PIPELINE}\n[deep_store]\nuri = \"s3:///no-bucket\"\n");
    assert_problem(&text, "deep_store.uri", "without a bucket", "s3");
    for uri in ["s3://bucket/prefix", "gs://bucket", "az://container/p", "abfss://c@account.dfs.core.windows.net/p"] {
        parse(&format!("{PIPELINE}\n[deep_store]\nuri = \"{uri}\"\n")).unwrap_or_else(|e| panic!("{uri}: {e}"));
    }
}

#[test]
fn object_store_options_are_checked() {
    let base = "cache_dir = \"/c\"\n[coordinator]\nconnect = \"zk1:2181\"\n[object_store]\n";
    let check = |extra: &str| parse_query_node(&format!("{base}{extra}"), Path::new("query.toml"), &env);
    let config = check("endpoint = \"http://minio:9000\"\nallow_http = true\nregion = \"eu-west-1\"\n").unwrap();
    assert_eq!(config.object_store.endpoint.as_deref(), Some("http://minio:9000"));
    assert_eq!(config.object_store.max_retries, 10, "a default");
    let error = check("endpoint = \"http://minio:9000\"\nrequest_timeout = \"0s\"\n").unwrap_err().to_string();
    assert!(error.contains("object_store.endpoint") && error.contains("allow_http"), "{error}");
    assert!(error.contains("object_store.request_timeout"), "every problem at once: {error}");
    let error = check("endpont = \"https://x\"\n").unwrap_err().to_string();
    assert!(error.contains("endpont"), "{error}");
}

#[test]
fn duplicate_column_names() {
    let text = variant("name = \"latency_ms\"", "name = \"Country\"");
    assert_problem(&text, "schema.columns[3].name", "duplicate column name", "unique");
}

#[test]
fn reserved_column_names() {
    let text = variant("name = \"latency_ms\"", "name = \"__offset\"");
    assert_problem(&text, "schema.columns[3].name", "starts with `__`", "reserved");
}

#[test]
fn dead_letter_policy_without_a_topic() {
    let text = variant("topic = \"clicks-dlq\"\n", "");
    assert_problem(&text, "bad_records.topic", "nothing", "dead-letter topic");
}

#[test]
fn dead_letter_topic_with_another_policy_is_refused() {
    let text = variant("policy = \"dead_letter\"", "policy = \"skip\"");
    assert_problem(&text, "bad_records.topic", "policy `skip`", "dead_letter");
}

#[test]
fn undefined_environment_variable() {
    let text = variant("${KAFKA_PASSWORD}", "${KAFKA_PASSWORD_TYPO}");
    assert_problem(
        &text,
        "source.properties.\"sasl.password\"",
        "KAFKA_PASSWORD_TYPO is not defined",
        "KAFKA_PASSWORD_TYPO",
    );
}

#[test]
fn reserved_kafka_property() {
    let text = variant("\"security.protocol\"", "\"enable.auto.commit\" = \"true\"\n\"security.protocol\"");
    assert_problem(&text, "source.properties.\"enable.auto.commit\"", "sluice sets itself", "ZooKeeper");
}

#[test]
fn start_position_forms() {
    let config = parse(&variant("start_position = \"earliest\"", "start_position = 42")).unwrap();
    assert_eq!(config.source.start_position, sluice_config::StartPosition::Offset(42));
    let config = parse(&variant("start_position = \"earliest\"", "start_position = \"latest\"")).unwrap();
    assert_eq!(config.source.start_position, sluice_config::StartPosition::Latest);
    assert_problem(
        &variant("start_position = \"earliest\"", "start_position = \"newest\""),
        "source.start_position",
        "`newest`",
        "earliest",
    );
}

#[test]
fn column_default_must_match_its_type() {
    let text = variant("default = \"unknown\"", "default = 7");
    assert_problem(&text, "schema.columns[2].default", "7", "a value of type string");
}

#[test]
fn timestamp_options_on_other_columns_are_refused() {
    let text = variant("type = \"int32\"", "type = \"int32\"\nunit = \"s\"");
    assert_problem(&text, "schema.columns[3].unit", "column of type int32", "only on timestamp columns");
}

#[test]
fn several_problems_are_all_reported() {
    let text = variant("rows = 100000", "rows = 0").replace("sorted = [\"user_id\"]", "sorted = [\"a\", \"b\"]");
    let error = parse(&text).unwrap_err();
    let fields: Vec<&str> = error.problems().iter().map(|p| p.field.as_str()).collect();
    for expected in ["flush.rows", "indexes.sorted", "indexes.sorted[0]", "indexes.sorted[1]"] {
        assert!(fields.contains(&expected), "{expected} missing from {fields:?}");
    }
    assert_eq!(error.to_string().lines().count(), error.problems().len());
}

#[test]
fn table_names_must_be_identifiers() {
    assert_problem(&variant("table = \"clicks\"", "table = \"Click Stream\""), "table", "Click Stream", "lower-case");
    assert_problem(&variant("table = \"clicks\"", "table = \"a__b\""), "table", "a__b", "without `__`");
}

const WORKER: &str = r#"
node_id = "worker-1"
data_dir = "/var/lib/sluice"
memory_budget = "2GiB"

[coordinator]
connect = "zk1:2181,zk2:2181,zk3:2181"
root = "/sluice"
session_timeout = "10s"

[http]
listen = "0.0.0.0:9100"

[pipelines]
files = []
from_coordinator = true
"#;

fn worker(text: &str) -> Result<sluice_config::WorkerConfig, ConfigError> {
    parse_worker(text, Path::new("worker.toml"), &env)
}

#[test]
fn worker_file_parses() {
    let config = worker(WORKER).unwrap();
    assert_eq!(config.memory_budget, sluice_config::ByteSize::gib(2));
    match config.coordinator.endpoint().unwrap() {
        sluice_config::CoordinatorEndpoint::ZooKeeper(servers) => assert_eq!(servers.len(), 3),
        other => panic!("{other:?}"),
    }
    let embedded = worker(&WORKER.replace("zk1:2181,zk2:2181,zk3:2181", "embedded")).unwrap();
    assert_eq!(embedded.coordinator.endpoint().unwrap(), sluice_config::CoordinatorEndpoint::Embedded);
}

#[test]
fn malformed_zookeeper_connect_string() {
    for bad in ["zk1:2181,,zk2:2181", "zk1", "zk1:21x81", "zk1:2181/chroot"] {
        let error = worker(&WORKER.replace("zk1:2181,zk2:2181,zk3:2181", bad)).unwrap_err();
        let problem = &error.problems()[0];
        assert_eq!(problem.field, "coordinator.connect", "{error}");
        assert!(problem.expected.contains("zk1:2181,zk2:2181"), "{error}");
    }
}

#[test]
fn zookeeper_tls_needs_both_or_neither_of_cert_and_key() {
    let with_tls =
        |tls: &str| WORKER.replace("session_timeout = \"10s\"\n", &format!("session_timeout = \"10s\"\n{tls}"));
    let config = worker(&with_tls("[coordinator.tls]\nca = \"/etc/zk/ca.pem\"\n")).unwrap();
    assert_eq!(config.coordinator.tls.unwrap().ca, Path::new("/etc/zk/ca.pem"));
    let error = worker(&with_tls("[coordinator.tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"\n")).unwrap_err();
    assert_eq!(error.problems()[0].field, "coordinator.tls", "{error}");
    let error = worker(&with_tls("[coordinator.tls]\nca = \"/ca.pem\"\ncertificate = \"/c.pem\"\n")).unwrap_err();
    assert!(error.to_string().contains("certificate"), "unknown fields are refused: {error}");
}

#[test]
fn worker_rules() {
    let error = worker(&WORKER.replace("root = \"/sluice\"", "root = \"sluice/\"")).unwrap_err();
    assert_eq!(error.problems()[0].field, "coordinator.root");
    let error = worker(&WORKER.replace("\"10s\"", "\"100ms\"")).unwrap_err();
    assert_eq!(error.problems()[0].field, "coordinator.session_timeout");
    let error = worker(&WORKER.replace("from_coordinator = true", "from_coordinator = false")).unwrap_err();
    assert_eq!(error.problems()[0].field, "pipelines");
    let error = worker(&WORKER.replace("listen = \"0.0.0.0:9100\"", "listen = \"nowhere\"")).unwrap_err();
    assert_eq!(error.problems()[0].field, "http.listen", "{error}");
}

#[test]
fn query_node_file() {
    let text = r#"
cache_dir = "/var/cache/sluice"
[coordinator]
connect = "zk1:2181"
[http]
listen = "127.0.0.1:8099"
[limits]
query_timeout = "10s"
max_result_rows = 50000
max_concurrent_queries = 4
memory = "1GiB"
"#;
    let config = parse_query_node(text, Path::new("query.toml"), &env).unwrap();
    assert_eq!(config.limits.max_result_rows, 50_000);
    let error = parse_query_node(
        &text.replace("max_concurrent_queries = 4", "max_concurrent_queries = 0"),
        Path::new("query.toml"),
        &env,
    )
    .unwrap_err();
    assert_eq!(error.problems()[0].field, "limits.max_concurrent_queries");
    let error =
        parse_query_node(&text.replace("memory = \"1GiB\"", "memroy = \"1GiB\""), Path::new("query.toml"), &env)
            .unwrap_err();
    assert_eq!(error.problems()[0].field, "limits.memroy", "{error}");
}

#[test]
fn configs_round_trip_through_serde() {
    let config = parse(PIPELINE).unwrap();
    let text = toml::to_string(&config).unwrap();
    let again = parse(&text).unwrap();
    assert_eq!(config, again);
}

/// Type errors are not reported one per run: every field that does not fit
/// is named, in words ("an integer", not "i64").
#[test]
fn every_type_error_of_a_file_is_reported() {
    let text = variant("rows = 100000", "rows = \"many\"").replacen("time = \"5m\"", "time = 5", 1).replacen(
        "topic = \"clicks\"\n",
        "topic = 7\n",
        1,
    );
    let error = parse(&text).expect_err("refused");
    let fields: Vec<&str> = error.problems().iter().map(|p| p.field.as_str()).collect();
    assert!(fields.contains(&"flush.rows"), "{error}");
    assert!(fields.contains(&"flush.time"), "{error}");
    assert!(fields.contains(&"source.topic"), "{error}");
    let rows = error.problems().iter().find(|p| p.field == "flush.rows").unwrap();
    assert_eq!(rows.expected, "an integer", "{error}");
    assert!(!error.to_string().contains("i64"), "{error}");
    // A removed required value is not reported again as missing.
    assert_eq!(fields.iter().filter(|f| **f == "source.topic").count(), 1, "{error}");
}

/// Durations that would overflow a deadline are refused, and so is a query
/// timeout beyond a day; HTTP limits are checked; scheme case is free.
#[test]
fn absurd_durations_and_limits_are_refused() {
    let node = |limits: &str| {
        let text = format!("[coordinator]\nconnect = \"zk1:2181\"\n[limits]\n{limits}\n");
        parse_query_node(&text, Path::new("query.toml"), &env)
    };
    let error = node("query_timeout = \"100000000years\"").unwrap_err();
    assert_eq!(error.problems()[0].field, "limits.query_timeout", "{error}");
    assert!(error.problems()[0].expected.contains("at most 10 years"), "{error}");
    let error = node("query_timeout = \"2days\"").unwrap_err();
    assert!(error.problems()[0].expected.contains("24h"), "{error}");
    let error = node("max_expression_depth = 100000\nmax_result_bytes = 1").unwrap_err();
    let fields: Vec<&str> = error.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["limits.max_expression_depth", "limits.max_result_bytes"], "{error}");
    let error = node("threads = 0").unwrap_err();
    assert_eq!(error.problems()[0].field, "limits.threads", "{error}");
    assert_eq!(node("threads = 3").unwrap().limits.threads, Some(3));
    let text = "[coordinator]\nconnect = \"zk1:2181\"\n[http]\nlisten = \"127.0.0.1:1\"\nmax_connections = 0\nheader_read_timeout = \"2h\"\n";
    let error = parse_query_node(text, Path::new("query.toml"), &env).unwrap_err();
    let fields: Vec<&str> = error.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["http.header_read_timeout", "http.max_connections"], "{error}");
    let upper = PIPELINE.to_string() + "[deep_store]\nuri = \"FILE:///var/lib/sluice\"\n";
    parse(&upper).expect("URI schemes are case-insensitive");
}

/// `[pgwire]`: an address, a connection cap in range, not the HTTP port.
#[test]
fn the_postgres_wire_protocol_section_is_checked() {
    let base = "[coordinator]\nconnect = \"zk1:2181\"\n[http]\nlisten = \"127.0.0.1:8099\"\n[pgwire]\n";
    let node = |pgwire: &str| parse_query_node(&format!("{base}{pgwire}"), Path::new("query.toml"), &env);
    let config = node("listen = \"0.0.0.0:5432\"").unwrap();
    let pg = config.pgwire.unwrap();
    assert_eq!((pg.listen.port(), pg.max_connections), (5432, 256));
    let error = node("listen = \"127.0.0.1:8099\"\nmax_connections = 0").unwrap_err();
    let fields: Vec<&str> = error.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["pgwire.max_connections", "pgwire.listen"], "{error}");
    let error = node("listen = \"127.0.0.1:5432\"\nport = 5432").unwrap_err();
    assert!(error.to_string().contains("port"), "{error}");
}

#[test]
fn http_auth_and_tls_are_checked() {
    let base = "cache_dir = \"/c\"\n[coordinator]\nconnect = \"zk1:2181\"\n";
    let check = |extra: &str| parse_query_node(&format!("{base}{extra}"), Path::new("query.toml"), &env);
    let config = check(
        "[http]\nlisten = \"0.0.0.0:8443\"\n[http.tls]\ncert = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"\n\
         [http.auth]\nusers = [{ username = \"analyst\", password = \"long enough\" }]\n",
    )
    .unwrap();
    let auth = config.http.auth.as_ref().unwrap();
    assert!(!format!("{auth:?}").contains("long enough"), "a password never reaches a log: {auth:?}");
    let error = check(
        "[http]\nlisten = \"0.0.0.0:8099\"\n[http.auth]\n\
         users = [{ username = \"a:b\", password = \"short\" }, { username = \"x\", password = \"long enough\" }]\n\
         tokens = [\"tiny\"]\n",
    )
    .unwrap_err()
    .to_string();
    for field in ["http.auth.users[0].username", "http.auth.users[0].password", "http.auth.tokens[0]"] {
        assert!(error.contains(field), "{field} in: {error}");
    }
    let error = check("[http]\nlisten = \"0.0.0.0:8099\"\n[http.auth]\n").unwrap_err().to_string();
    assert!(error.contains("at least one user or token"), "{error}");
}

/// A Flight port other machines can reach runs any plan it is sent: it
/// needs the cluster's token, a real secret that never reaches a log.
#[test]
fn the_cluster_token_is_checked() {
    let base = "cache_dir = \"/c\"\n[coordinator]\nconnect = \"zk1:2181\"\n";
    let check = |extra: &str| parse_query_node(&format!("{extra}{base}"), Path::new("query.toml"), &env);
    let fields =
        |extra: &str| -> Vec<String> { check(extra).unwrap_err().problems().iter().map(|p| p.field.clone()).collect() };
    assert_eq!(fields("flight_listen = \"10.0.0.11:8098\"\n"), ["flight_token"]);
    assert_eq!(fields("flight_listen = \"10.0.0.11:8098\"\nflight_token = \"short\"\n"), ["flight_token"]);
    assert_eq!(fields("flight_token = \"a-secret-of-at-least-16\"\n"), ["flight_token"], "without flight_listen");
    assert_eq!(
        fields("flight_listen = \"10.0.0.11:8098\"\nflight_token = \"with a space in it, long\"\n"),
        ["flight_token"]
    );
    check("flight_listen = \"127.0.0.1:0\"\n").expect("a loopback port without a token");
    let config = check("flight_listen = \"10.0.0.11:8098\"\nflight_token = \"a-secret-of-at-least-16\"\n").unwrap();
    assert!(!format!("{config:?}").contains("a-secret"), "the token never reaches a log");
    let error = check("flight_listen = \"0.0.0.0:8098\"\n").unwrap_err();
    assert!(error.to_string().contains("any query plan"), "{error}");
}

/// Batches between nodes go uncompressed unless a node asks for lz4 or
/// zstd; anything else is refused with the choices.
#[test]
fn the_flight_compression_is_one_of_three() {
    let base = "flight_listen = \"127.0.0.1:0\"\ncache_dir = \"/c\"\n";
    let parse_with = |extra: &str| {
        parse_query_node(
            &format!("{extra}{base}[coordinator]\nconnect = \"zk1:2181\"\n"),
            Path::new("query.toml"),
            &env,
        )
    };
    assert_eq!(parse_with("").unwrap().flight_compression, sluice_config::FlightCompression::None);
    assert_eq!(
        parse_with("flight_compression = \"zstd\"\n").unwrap().flight_compression,
        sluice_config::FlightCompression::Zstd
    );
    let error = parse_with("flight_compression = \"brotli\"\n").unwrap_err().to_string();
    assert!(error.contains("flight_compression") && error.contains("lz4"), "{error}");
}

/// The shuffle threshold belongs to a node in a cluster; alone, setting it
/// is a mistake named with the field.
#[test]
fn shuffle_min_groups_needs_a_cluster() {
    let parse_with = |extra: &str| {
        parse_query_node(
            &format!("{extra}cache_dir = \"/c\"\n[coordinator]\nconnect = \"zk1:2181\"\n"),
            Path::new("query.toml"),
            &env,
        )
    };
    let clustered = parse_with("flight_listen = \"127.0.0.1:0\"\nshuffle_min_groups = 0\n").unwrap();
    assert_eq!(clustered.shuffle_min_groups, Some(0));
    let error = parse_with("shuffle_min_groups = 10\n").unwrap_err().to_string();
    assert!(error.contains("shuffle_min_groups") && error.contains("flight_listen"), "{error}");
    let error = parse_with("flight_listen = \"127.0.0.1:0\"\nshuffle_min_groups = -1\n").unwrap_err().to_string();
    assert!(error.contains("shuffle_min_groups"), "{error}");
}

/// A table's own replication is checked like the query nodes'.
#[test]
fn a_tables_replication_is_checked() {
    parse(&format!("replication = 3\n{PIPELINE}")).expect("a table on three query nodes");
    for wrong in ["0", "17"] {
        assert_problem(
            &format!("replication = {wrong}\n{PIPELINE}"),
            "replication",
            wrong,
            "from 1 to 16 query nodes per segment",
        );
    }
}

#[test]
fn star_trees_are_read_and_every_mistake_in_one_is_named() {
    let tree = "bloom = [\"user_id\"]\n\n[[indexes.star_tree]]\ndimensions = [\"country\"]\nmetrics = [\"COUNT(*)\", \"max(latency_ms)\"]\n";
    let config = parse(&variant("bloom = [\"user_id\"]\n", tree)).unwrap();
    let parsed = &config.indexes.star_tree[0];
    assert_eq!(parsed.max_leaf_records, 10_000, "the default");
    let metrics: Vec<String> = parsed.parsed_metrics().iter().map(ToString::to_string).collect();
    assert_eq!(metrics, ["COUNT(*)", "MAX(latency_ms)"]);

    let bad = "bloom = [\"user_id\"]\n\n[[indexes.star_tree]]\ndimensions = [\"country\", \"city\", \"country\"]\n\
               metrics = [\"SUM(user_id)\", \"MEDIAN(latency_ms)\", \"SUM(nothing)\"]\nmax_leaf_records = 0\n";
    let text = variant("bloom = [\"user_id\"]\n", bad);
    assert_problem(&text, "indexes.star_tree[0].dimensions[1]", "\"city\"", "a column name");
    assert_problem(&text, "indexes.star_tree[0].dimensions[2]", "listed twice", "once");
    assert_problem(&text, "indexes.star_tree[0].metrics[0]", "SUM of \"user_id\", a column of type string", "int64");
    assert_problem(&text, "indexes.star_tree[0].metrics[1]", "MEDIAN", "COUNT, SUM, AVG, MIN, MAX");
    assert_problem(&text, "indexes.star_tree[0].metrics[2]", "\"nothing\"", "a column name");
    assert_problem(&text, "indexes.star_tree[0].max_leaf_records", "0", "greater than zero");
    let typo = variant(
        "bloom = [\"user_id\"]\n",
        "bloom = [\"user_id\"]\n\n[[indexes.star_tree]]\ndimension = [\"country\"]\nmetrics = [\"COUNT(*)\"]\n",
    );
    assert!(parse(&typo).unwrap_err().to_string().contains("dimension"), "an unknown field is named");
}

/// The base pipeline reading raw Avro with `schema` (inline).
fn avro_variant(schema: &str) -> String {
    variant(
        "start_position = \"earliest\"\n",
        &format!("start_position = \"earliest\"\nformat = \"avro\"\navro_schema = '''{schema}'''\n"),
    )
}

const CLICK_AVRO: &str = r#"{"type": "record", "name": "Click", "fields": [
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "user_id", "type": "string"},
  {"name": "geo", "type": ["null", {"type": "record", "name": "Geo", "fields": [{"name": "country", "type": "string"}]}]},
  {"name": "latency_ms", "type": ["null", "int"]}]}"#;

#[test]
fn an_avro_pipeline_with_an_inline_or_file_schema_is_valid() {
    let config = parse(&avro_variant(CLICK_AVRO)).unwrap();
    assert_eq!(config.source.format, sluice_config::SourceFormat::Avro);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("click.avsc"), CLICK_AVRO).unwrap();
    let text = variant(
        "start_position = \"earliest\"\n",
        "start_position = \"earliest\"\nformat = \"avro\"\navro_schema_file = \"click.avsc\"\n",
    );
    let from_file = parse_pipeline(&text, &dir.path().join("clicks.toml"), &env).unwrap();
    assert_eq!(from_file.source.avro_schema.as_deref(), Some(CLICK_AVRO), "the file is read and kept inline");
    assert_eq!(from_file.source.avro_schema_file, None);
    assert_problem(&text, "source.avro_schema_file", "click.avsc", "relative to this pipeline file");
}

#[test]
fn an_avro_pipeline_names_each_column_its_schema_cannot_fill() {
    let schema =
        CLICK_AVRO.replace(r#""name": "user_id", "type": "string""#, r#""name": "user_id", "type": "boolean""#);
    let rendered = assert_problem(
        &avro_variant(&schema),
        "schema.columns[1].type",
        "string, but the Avro field is boolean",
        "converts to",
    );
    let schema = CLICK_AVRO.replace("\"country\"", "\"land\"");
    assert_problem(
        &avro_variant(&schema),
        "schema.columns[2].path",
        "\"geo.country\", which is not a field",
        "a field",
    );
    assert_problem(&avro_variant("{\"type\": \"record\""), "source.avro_schema", "not JSON", "an Avro schema");
    assert!(!rendered.contains("columns[0]"), "the timestamp-millis field fills a timestamp column: {rendered}");
}

#[test]
fn avro_options_must_go_together() {
    let avro = "start_position = \"earliest\"\nformat = \"avro\"\n";
    assert_problem(
        &variant("start_position = \"earliest\"\n", avro),
        "source.format",
        "without a schema",
        "schema_registry",
    );
    let both = format!("{avro}schema_registry = \"http://r:8081\"\navro_schema = '{{}}'\n");
    assert_problem(&variant("start_position = \"earliest\"\n", &both), "source.schema_registry", "both", "one of them");
    let json = "start_position = \"earliest\"\nschema_registry = \"http://r:8081\"\n";
    assert_problem(
        &variant("start_position = \"earliest\"\n", json),
        "source.schema_registry",
        "format = \"json\"",
        "avro",
    );
    let bad_url = format!("{avro}schema_registry = \"registry:8081\"\n");
    assert_problem(
        &variant("start_position = \"earliest\"\n", &bad_url),
        "source.schema_registry",
        "not an http",
        "http://",
    );
    let registry = format!("{avro}schema_registry = \"https://registry.example.com\"\n");
    assert!(parse(&variant("start_position = \"earliest\"\n", &registry)).is_ok());
}
