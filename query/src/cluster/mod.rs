//! How a query's tasks travel between query nodes on DataFusion
//! Distributed: the plan codec ([`codec`]), the worker that runs other
//! nodes' tasks ([`worker`]), the channels to other nodes ([`channels`])
//! and the token they present ([`auth`]). Which segments a task reads is
//! `crate::scan::spread`'s; who the nodes are, `crate::membership`'s.

pub mod auth;
pub(crate) mod channels;
pub(crate) mod codec;
pub(crate) mod worker;
