//! The Postgres wire protocol on a query node (`[pgwire] listen`), for psql,
//! psycopg and the Postgres data sources of Grafana, Metabase and DBeaver.
//!
//! Built on `pgwire` directly: every statement runs through
//! [`QueryEngine::query_arrow`], so the read-only refusal, the statement
//! limits, the timeout, the memory pool and the concurrency slots are those
//! of `/query/sql`. The users of `http.auth` log in with their passwords
//! (cleartext, as Postgres' `password` method: put it behind TLS). Session
//! statements clients send on connect (`SET`, `SHOW`, `BEGIN`/`COMMIT`,
//! `DISCARD`) are answered harmlessly. The extended protocol's parameters
//! are bound as SQL literals (numbers validated as numbers, anything else
//! quoted), never as SQL text. Results go out in text format, with each
//! Arrow type's Postgres type; errors carry a SQLSTATE. What tools read
//! about the catalog is answered by a `pg_catalog` of the served tables
//! (`catalog.rs`) and by rewriting the Postgres spellings of those queries
//! that DataFusion's SQL lacks (`rewrite.rs`).

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, Float64Type, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use futures::{Sink, stream};
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo, QueryResponse, Response,
    Tag,
};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use sluice_config::{HttpUser, PgWireConfig};
use tokio::sync::watch;

use crate::engine::QueryEngine;
use crate::error::QueryError;

pub(crate) mod catalog;
mod guard;
mod rewrite;

/// Binds `config.listen` and serves until `shutdown` turns true. Returns
/// the bound address and the accept loop's task.
pub async fn serve(
    config: &PgWireConfig,
    users: Option<Vec<HttpUser>>,
    engine: Arc<QueryEngine>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    // A statement longer than `limits.max_query_size` is refused anyway; a
    // message may carry it plus its parameters.
    let max_message = engine.limits().max_query_size.as_u64().max(64 << 10) as usize + (1 << 20);
    let admission = Arc::new(guard::Admission::new(config, max_message));
    let backend = Arc::new(Backend { engine, parser: Arc::new(NoopQueryParser::new()) });
    let users = users.map(|users| Users(Arc::new(users)));
    let task = tokio::spawn(async move {
        loop {
            let (socket, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => (socket, peer.ip()),
                    Err(e) => {
                        // Out of file descriptors, say: counted, and the
                        // loop goes on after a pause.
                        metrics::counter!("sluice_query_pgwire_accept_errors_total").increment(1);
                        tracing::warn!(error = %e, "pgwire: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            // Admitted as a startup (the oldest startup makes room at the
            // cap); a session slot is taken once it has logged in (`guard`).
            let startup = admission.admit();
            let _ = socket.set_nodelay(true);
            let (backend, users, admission) = (backend.clone(), users.clone(), admission.clone());
            tokio::spawn(async move {
                let open = metrics::gauge!("sluice_query_pgwire_connections");
                open.increment(1.0);
                let _closed = scopeguard(move || open.decrement(1.0));
                let socket = match guard::relay(socket, peer, admission, startup) {
                    Ok(socket) => socket,
                    Err(e) => {
                        tracing::warn!(error = %e, "pgwire: cannot relay a connection");
                        return;
                    }
                };
                let served = match users {
                    None => pgwire::tokio::process_socket_unix(socket, Arc::new(Open(backend))).await,
                    Some(users) => {
                        let handlers = Authenticated { backend, users };
                        pgwire::tokio::process_socket_unix(socket, Arc::new(handlers)).await
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(error = %e, "pgwire connection ended");
                }
            });
        }
    });
    Ok((addr, task))
}

/// Runs `f` when dropped (a connection's end, however it ends).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Runs statements for both protocols.
struct Backend {
    engine: Arc<QueryEngine>,
    parser: Arc<NoopQueryParser>,
}

/// Without `http.auth`: anyone who reaches the port, as on `/query/sql`.
struct Open(Arc<Backend>);

/// With `http.auth`: its users, by password.
struct Authenticated {
    backend: Arc<Backend>,
    users: Users,
}

#[derive(Clone)]
struct Users(Arc<Vec<HttpUser>>);

impl Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} users", self.0.len())
    }
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().and_then(|name| self.0.iter().find(|u| u.username == name));
        match user {
            Some(user) => Ok(Password::new(None, user.password.as_bytes().to_vec())),
            None => Err(login_failed(login)),
        }
    }

    /// One answer for an unknown user and a wrong password (nothing tells
    /// which names exist), every password compared in full.
    async fn verify_password(&self, login: &LoginInfo, presented: &[u8]) -> PgWireResult<Option<()>> {
        let name = login.user().unwrap_or_default();
        let matched = self.0.iter().fold(false, |found, user| {
            found
                | (sluice_http::constant_time_eq(user.username.as_bytes(), name.as_bytes())
                    & sluice_http::constant_time_eq(user.password.as_bytes(), presented))
        });
        if matched { Ok(None) } else { Err(login_failed(login)) }
    }
}

fn login_failed(login: &LoginInfo) -> PgWireError {
    let name = login.user().unwrap_or_default();
    user_error("FATAL", "28P01", &format!("password authentication failed for user \"{name}\""))
}

impl NoopStartupHandler for Open {}

impl PgWireServerHandlers for Open {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Open(self.0.clone()))
    }
}

impl PgWireServerHandlers for Authenticated {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.backend.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.backend.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(CleartextPasswordAuthStartupHandler::new(
            self.users.clone(),
            DefaultServerParameterProvider::default(),
        ))
    }
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if is_empty_statement(query) {
            return Ok(vec![Response::EmptyQuery]);
        }
        Ok(vec![self.run(query, user(client)).await?])
    }
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<String>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = portal_sql(portal)?;
        if is_empty_statement(&sql) {
            return Ok(Response::EmptyQuery);
        }
        self.run(&sql, user(client)).await
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        statement: &StoredStatement<String>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Unknown parameter types are sent as text; the columns are those
        // of the statement with every parameter NULL.
        let count = placeholders(&statement.statement);
        let types: Vec<Type> =
            (0..count).map(|i| statement.parameter_types.get(i).cloned().flatten().unwrap_or(Type::TEXT)).collect();
        let nulls = vec![None; count];
        let fields = match bind(&statement.statement, &nulls) {
            Ok(sql) => self.describe(&sql, user(client)).await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        Ok(DescribeStatementResponse::new(types, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<String>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = portal_sql(portal)?;
        Ok(DescribePortalResponse::new(self.describe(&sql, user(client)).await?))
    }
}

impl Backend {
    /// One statement: a session statement answered here, else a query.
    async fn run(&self, sql: &str, user: &str) -> PgWireResult<Response> {
        if let Some(session) = session_statement(sql) {
            return Ok(session.response());
        }
        let sql = self.postgres_sql(sql, user);
        let (schema, batches, _) = self.engine.query_arrow(&sql).await.map_err(query_error)?;
        let fields = Arc::new(fields(&schema));
        let rows = encode_rows(&fields, &batches)?;
        Ok(Response::Query(QueryResponse::new(fields, stream::iter(rows.into_iter().map(Ok)))))
    }

    /// The columns `sql` answers with, without running it.
    async fn describe(&self, sql: &str, user: &str) -> PgWireResult<Vec<FieldInfo>> {
        if let Some(session) = session_statement(sql) {
            return Ok(session.fields());
        }
        let sql = self.postgres_sql(sql, user);
        let schema = self.engine.output_schema(&sql).await.map_err(query_error)?;
        Ok(fields(&schema))
    }

    /// `sql` with the Postgres spellings of catalog queries rewritten
    /// (`rewrite.rs`); other statements as they are.
    fn postgres_sql<'a>(&self, sql: &'a str, user: &str) -> std::borrow::Cow<'a, str> {
        match rewrite::rewrite(sql, user, |name| self.engine.table(name).is_some()) {
            Some(rewritten) => std::borrow::Cow::Owned(rewritten),
            None => std::borrow::Cow::Borrowed(sql),
        }
    }
}

/// The session's login name.
fn user<C: ClientInfo>(client: &C) -> &str {
    client.metadata().get(pgwire::api::METADATA_USER).map_or(catalog::DATABASE, String::as_str)
}

/// Whether `sql` holds no statement (whitespace and semicolons): Postgres
/// answers it with `EmptyQueryResponse`.
fn is_empty_statement(sql: &str) -> bool {
    sql.trim().trim_end_matches(';').trim().is_empty()
}

/// A statement about the session rather than the data.
enum Session {
    /// `SET`, `BEGIN`, `COMMIT`, ...: acknowledged with this tag.
    Acknowledged(&'static str),
    /// `SHOW name`: one row, one column.
    Show(String, String),
}

impl Session {
    fn response(self) -> Response {
        match self {
            Session::Acknowledged(tag) => Response::Execution(Tag::new(tag)),
            Session::Show(name, value) => {
                let fields = Arc::new(vec![FieldInfo::new(name, None, None, Type::TEXT, FieldFormat::Text)]);
                let mut encoder = DataRowEncoder::new(fields.clone());
                let row = encoder.encode_field(&Some(value)).map(|()| encoder.take_row());
                Response::Query(QueryResponse::new(fields, stream::iter(vec![row])))
            }
        }
    }

    fn fields(&self) -> Vec<FieldInfo> {
        match self {
            Session::Acknowledged(_) => Vec::new(),
            Session::Show(name, _) => vec![FieldInfo::new(name.clone(), None, None, Type::TEXT, FieldFormat::Text)],
        }
    }
}

/// What clients send on connect and around their queries: answered without
/// touching the session (the node is read-only, and its settings are the
/// node's own).
fn session_statement(sql: &str) -> Option<Session> {
    let words: Vec<String> = sql.trim().trim_end_matches(';').split_whitespace().map(str::to_ascii_lowercase).collect();
    let first = words.first()?.as_str();
    Some(match first {
        "set" | "reset" => Session::Acknowledged("SET"),
        "begin" | "start" => Session::Acknowledged("BEGIN"),
        "commit" | "end" => Session::Acknowledged("COMMIT"),
        "rollback" | "abort" => Session::Acknowledged("ROLLBACK"),
        "discard" => Session::Acknowledged("DISCARD ALL"),
        "deallocate" => Session::Acknowledged("DEALLOCATE"),
        "show" => {
            let name = words.get(1..).map(|w| w.join(" ")).unwrap_or_default();
            // `SHOW TRANSACTION ISOLATION LEVEL` is `transaction_isolation`.
            let setting = if name == "transaction isolation level" { "transaction_isolation" } else { &name };
            let value = catalog::setting(setting).unwrap_or_default();
            Session::Show(name, value.to_string())
        }
        _ => return None,
    })
}

/// The Postgres columns of an Arrow schema (every value is sent as text).
fn fields(schema: &SchemaRef) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .map(|f| FieldInfo::new(f.name().clone(), None, None, pg_type(f.data_type()), FieldFormat::Text))
        .collect()
}

fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..) => Type::NUMERIC,
        DataType::Float32 => Type::FLOAT4,
        DataType::Float16 | DataType::Float64 => Type::FLOAT8,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Dictionary(_, values) => pg_type(values),
        _ => Type::TEXT,
    }
}

/// Every row of `batches` as Postgres text values.
fn encode_rows(
    fields: &Arc<Vec<FieldInfo>>,
    batches: &[RecordBatch],
) -> PgWireResult<Vec<pgwire::messages::data::DataRow>> {
    let options = FormatOptions::new()
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f%:z"))
        .with_date_format(Some("%Y-%m-%d"));
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<Text> =
            batch.columns().iter().map(|c| Text::of(c.as_ref(), &options)).collect::<Result<_, _>>()?;
        let mut encoder = DataRowEncoder::new(fields.clone());
        for row in 0..batch.num_rows() {
            for column in &columns {
                encoder.encode_field(&column.value(row))?;
            }
            rows.push(encoder.take_row());
        }
    }
    Ok(rows)
}

/// How a column's values are written in Postgres' text format.
enum Text<'a> {
    Bool(&'a arrow::array::BooleanArray),
    Float(&'a dyn Array, bool),
    Other(&'a dyn Array, ArrayFormatter<'a>),
}

impl<'a> Text<'a> {
    fn of(array: &'a dyn Array, options: &'a FormatOptions<'a>) -> PgWireResult<Self> {
        Ok(match array.data_type() {
            DataType::Boolean => Text::Bool(array.as_boolean()),
            DataType::Float32 => Text::Float(array, true),
            DataType::Float64 => Text::Float(array, false),
            _ => Text::Other(
                array,
                ArrayFormatter::try_new(array, options).map_err(|e| PgWireError::ApiError(Box::new(e)))?,
            ),
        })
    }

    fn value(&self, row: usize) -> Option<String> {
        match self {
            Text::Bool(a) => a.is_valid(row).then(|| if a.value(row) { "t" } else { "f" }.to_string()),
            Text::Float(a, single) => a.is_valid(row).then(|| {
                let v = if *single {
                    f64::from(a.as_primitive::<Float32Type>().value(row))
                } else {
                    a.as_primitive::<Float64Type>().value(row)
                };
                match v {
                    v if v.is_nan() => "NaN".to_string(),
                    v if v.is_infinite() && v > 0.0 => "Infinity".to_string(),
                    v if v.is_infinite() => "-Infinity".to_string(),
                    v => v.to_string(),
                }
            }),
            Text::Other(a, formatter) => a.is_valid(row).then(|| formatter.value(row).to_string()),
        }
    }
}

/// A portal's statement with its parameters bound. As Postgres, a Bind
/// with more values than the statement takes is a protocol violation, not
/// a statement with ignored values.
fn portal_sql(portal: &Portal<String>) -> PgWireResult<String> {
    let takes = placeholders(&portal.statement.statement).max(portal.statement.parameter_types.len());
    if portal.parameter_len() > takes {
        let message = format!(
            "bind message supplies {} parameters, but prepared statement requires {takes}",
            portal.parameter_len()
        );
        return Err(user_error("ERROR", "08P01", &message));
    }
    bind(&portal.statement.statement, &portal_parameters(portal)?)
}

/// A portal's parameters as SQL literals (None for NULL).
fn portal_parameters(portal: &Portal<String>) -> PgWireResult<Vec<Option<String>>> {
    (0..portal.parameter_len())
        .map(|i| {
            let Some(bytes) = portal.parameters.get(i).cloned().flatten() else { return Ok(None) };
            let declared = portal.statement.parameter_types.get(i).cloned().flatten().unwrap_or(Type::UNKNOWN);
            let binary = matches!(&portal.parameter_format, Format::UnifiedBinary)
                || matches!(&portal.parameter_format, Format::Individual(codes) if codes.get(i) == Some(&1));
            literal(&bytes, &declared, binary).map(Some)
        })
        .collect()
}

/// One parameter as a SQL literal: a number (checked to be one) bare,
/// anything else as a quoted string.
fn literal(bytes: &[u8], declared: &Type, binary: bool) -> PgWireResult<String> {
    let invalid = |what: &str| user_error("ERROR", "22P02", &format!("invalid {what} parameter"));
    let number = |text: String| -> PgWireResult<String> {
        if text.parse::<f64>().is_ok() && !text.contains(|c: char| c.is_alphabetic() && c != 'e' && c != 'E') {
            Ok(text)
        } else {
            Err(invalid(declared.name()))
        }
    };
    if binary {
        let fixed = |n: usize| bytes.get(..n).filter(|_| bytes.len() == n).ok_or_else(|| invalid(declared.name()));
        return match *declared {
            Type::BOOL => Ok(if fixed(1)?[0] != 0 { "TRUE" } else { "FALSE" }.to_string()),
            Type::INT2 => Ok(i16::from_be_bytes(fixed(2)?.try_into().expect("2 bytes")).to_string()),
            Type::INT4 => Ok(i32::from_be_bytes(fixed(4)?.try_into().expect("4 bytes")).to_string()),
            Type::INT8 => Ok(i64::from_be_bytes(fixed(8)?.try_into().expect("8 bytes")).to_string()),
            Type::FLOAT4 => number(f32::from_be_bytes(fixed(4)?.try_into().expect("4 bytes")).to_string()),
            Type::FLOAT8 => number(f64::from_be_bytes(fixed(8)?.try_into().expect("8 bytes")).to_string()),
            Type::OID => Ok(u32::from_be_bytes(fixed(4)?.try_into().expect("4 bytes")).to_string()),
            Type::TEXT | Type::VARCHAR | Type::UNKNOWN | Type::NAME | Type::BPCHAR => {
                quoted(std::str::from_utf8(bytes).map_err(|_| invalid("text"))?)
            }
            // Microseconds and days since 2000-01-01 (Postgres' epoch).
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                let micros = i64::from_be_bytes(fixed(8)?.try_into().expect("8 bytes"));
                let time = micros
                    .checked_add(POSTGRES_EPOCH_DAYS * 86_400_000_000)
                    .and_then(arrow::temporal_conversions::timestamp_us_to_datetime)
                    .ok_or_else(|| invalid(declared.name()))?;
                let zone = if *declared == Type::TIMESTAMPTZ { "+00:00" } else { "" };
                Ok(format!("TIMESTAMP '{}{zone}'", time.format("%Y-%m-%d %H:%M:%S%.6f")))
            }
            Type::DATE => {
                let days = i32::from_be_bytes(fixed(4)?.try_into().expect("4 bytes"));
                let date = i64::from(days)
                    .checked_add(POSTGRES_EPOCH_DAYS)
                    .and_then(|d| i32::try_from(d).ok())
                    .and_then(arrow::temporal_conversions::date32_to_datetime)
                    .ok_or_else(|| invalid("date"))?;
                Ok(format!("DATE '{}'", date.format("%Y-%m-%d")))
            }
            _ => Err(user_error(
                "ERROR",
                "0A000",
                &format!("binary parameters of type {} are not supported; send it as text", declared.name()),
            )),
        };
    }
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("text"))?;
    match *declared {
        Type::INT2 | Type::INT4 | Type::INT8 | Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC | Type::OID => {
            number(text.trim().to_string())
        }
        Type::BOOL => match text.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "on" | "yes" | "y" => Ok("TRUE".into()),
            "f" | "false" | "0" | "off" | "no" | "n" => Ok("FALSE".into()),
            _ => Err(invalid("boolean")),
        },
        _ => quoted(text),
    }
}

/// Days from 1970-01-01 to 2000-01-01, Postgres' epoch of binary dates and
/// timestamps.
const POSTGRES_EPOCH_DAYS: i64 = 10_957;

/// A string literal: quotes doubled (standard-conforming strings: a
/// backslash is a backslash), no NUL.
fn quoted(text: &str) -> PgWireResult<String> {
    if text.contains('\0') {
        return Err(user_error("ERROR", "22021", "a parameter holds a NUL character"));
    }
    Ok(format!("'{}'", text.replace('\'', "''")))
}

/// `sql` with `$n` placeholders (outside strings, quoted identifiers and
/// comments) replaced by `parameters[n - 1]` (NULL for None).
fn bind(sql: &str, parameters: &[Option<String>]) -> PgWireResult<String> {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for (_, d) in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek().is_some_and(|(_, d)| *d == '-') => {
                out.push(c);
                for (_, d) in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek().is_some_and(|(_, d)| *d == '*') => {
                out.push(c);
                let mut last = ' ';
                for (_, d) in chars.by_ref() {
                    out.push(d);
                    if last == '*' && d == '/' {
                        break;
                    }
                    last = d;
                }
            }
            '$' if chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) => {
                let mut digits = String::new();
                while let Some((_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n: usize = digits.parse().unwrap_or(0);
                let value = n.checked_sub(1).and_then(|i| parameters.get(i)).ok_or_else(|| {
                    user_error("ERROR", "08P01", &format!("${n} has no parameter ({} bound)", parameters.len()))
                })?;
                out.push_str(value.as_deref().unwrap_or("NULL"));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// How many parameters `sql` refers to (its highest `$n`).
fn placeholders(sql: &str) -> usize {
    let mut highest = 0;
    let bytes = sql.as_bytes();
    for (i, _) in sql.match_indices('$') {
        let digits: String = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).map(|b| *b as char).collect();
        highest = highest.max(digits.parse::<usize>().unwrap_or(0));
    }
    highest.min(65_535)
}

fn user_error(severity: &str, code: &str, message: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(severity.to_string(), code.to_string(), message.to_string())))
}

/// A query's failure with its SQLSTATE.
fn query_error(e: QueryError) -> PgWireError {
    let code = match &e {
        QueryError::ReadOnly { .. } => "25006",
        QueryError::Timeout { .. } => "57014",
        QueryError::Overloaded { .. } => "53000",
        _ => match e.status() {
            400 => "42000",
            413 => "54000",
            503 => "53000",
            _ => "XX000",
        },
    };
    user_error("ERROR", code, &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_bind_as_literals_outside_strings_and_comments() {
        let params = vec![Some("'FR'".to_string()), Some("3".to_string()), None];
        let sql = "SELECT '$1', \"$2\" FROM t -- $3\nWHERE c = $1 AND n > $2 /* $1 */ OR x IS $3";
        assert_eq!(
            bind(sql, &params).unwrap(),
            "SELECT '$1', \"$2\" FROM t -- $3\nWHERE c = 'FR' AND n > 3 /* $1 */ OR x IS NULL"
        );
        assert!(bind("SELECT $4", &params).is_err());
        assert_eq!(placeholders(sql), 3);
    }

    #[test]
    fn a_hostile_parameter_stays_a_literal() {
        let text = literal(b"x'; DROP TABLE t; --", &Type::TEXT, false).unwrap();
        assert_eq!(text, "'x''; DROP TABLE t; --'");
        assert!(literal(b"1; DROP TABLE t", &Type::INT4, false).is_err());
        assert!(literal(b"1e3", &Type::INT8, false).is_ok());
        assert_eq!(literal(&7i32.to_be_bytes(), &Type::INT4, true).unwrap(), "7");
        assert!(literal(&[0, 1], &Type::INT4, true).is_err());
        assert!(literal(b"a\0b", &Type::TEXT, false).is_err());
    }

    #[test]
    fn binary_times_are_typed_literals() {
        // 2026-12-02 01:02:03.000004 UTC, in microseconds since 2000-01-01.
        let micros: i64 = (1_796_173_323 - 946_684_800) * 1_000_000 + 4;
        let at = literal(&micros.to_be_bytes(), &Type::TIMESTAMPTZ, true).unwrap();
        assert_eq!(at, "TIMESTAMP '2026-12-02 01:02:03.000004+00:00'");
        let plain = literal(&micros.to_be_bytes(), &Type::TIMESTAMP, true).unwrap();
        assert_eq!(plain, "TIMESTAMP '2026-12-02 01:02:03.000004'");
        assert_eq!(literal(&(-1i32).to_be_bytes(), &Type::DATE, true).unwrap(), "DATE '1999-12-31'");
        assert!(literal(&i64::MAX.to_be_bytes(), &Type::TIMESTAMP, true).is_err(), "out of range is refused");
        assert!(literal(&[0; 7], &Type::TIMESTAMP, true).is_err());
    }

    #[test]
    fn session_statements_are_answered_here() {
        assert!(matches!(session_statement("SET datestyle TO 'ISO'"), Some(Session::Acknowledged("SET"))));
        assert!(
            matches!(session_statement("show server_version;"), Some(Session::Show(n, v)) if n == "server_version" && v == "16.6")
        );
        assert!(session_statement("SELECT 1").is_none());
        assert!(session_statement("CREATE TABLE t (a int)").is_none());
    }
}
