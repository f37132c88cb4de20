//! The physical rules that make sluice's plans its own, over the scans of
//! `crate::scan`: answers from star-trees ([`star_tree`]), grouping by
//! dictionary ids ([`dictionary_group`]), many groups hashed into smaller
//! tables ([`hashed_groups`]), and where a cluster query's plan is cut
//! into stages and where each stage runs ([`boundaries`]). The engine
//! registers them in this order, after DataFusion's own.

pub mod boundaries;
pub(crate) mod dictionary_group;
pub(crate) mod hashed_groups;
pub(crate) mod star_tree;
