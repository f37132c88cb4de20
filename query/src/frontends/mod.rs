//! The ways in: the Pinot-compatible HTTP API ([`http`]), the Postgres wire
//! protocol with its catalog ([`postgres`]) and the web console
//! ([`console`]). Each turns a request into a query of
//! `crate::engine::QueryEngine` and its answer into the client's format;
//! none runs a query itself.

pub(crate) mod console;
pub mod http;
pub mod postgres;
