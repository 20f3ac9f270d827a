//! The metrics layer: a catalogue of measures and dimensions, each with its exact SQL and its definition in words
//! ([`catalogue`]); a call that names them, checked in Rust and compiled to ONE read-only query whose filters the
//! audience compiler compiles ([`query`]), from rollups built at ingest where one answers it ([`rollups`]); and the `metrics` tool that runs it and reports the value or the rows
//! with the definitions used ([`tool`]). What a question that ranks groups asks for is read from its words
//! ([`ranking`]).
//!
//! Architecture Invariant: the program writes the SQL. The model (or a user) only picks names from the catalogue,
//! audience clauses and a period; a measure is defined once, in the catalogue.

pub mod catalogue;
pub mod query;
pub mod ranking;
pub mod rollups;
pub mod tool;

pub use catalogue::{Dimension, Measure};
pub use query::MetricsArgs;
pub use tool::{Metrics, MetricsReport};
