//! How a table's rows are found and read: the table provider and its
//! snapshot of segments ([`table`]), filter translation ([`pushdown`]),
//! pruning and row selection ([`selection`]), reading the selected rows
//! ([`read`]), schema evolution ([`evolution`]), and the scan of a table
//! spread over the cluster ([`spread`]). The optimizer rules above rewrite
//! what these scans plan; nothing here knows them.

pub mod evolution;
pub mod pushdown;
pub(crate) mod read;
pub(crate) mod selection;
pub(crate) mod spread;
pub mod table;
