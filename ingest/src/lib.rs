//! The write side of `audience`: synthetic sample data, validated CSV ingest into PostgreSQL,
//! profiles computed in SQL, and incremental embedding into the vector index.
//!
//! Architecture Invariant: this is the only crate that writes customer data, profiles or vectors.

pub mod audience_tables;
pub mod generate;
pub mod input;
pub mod keys;
pub mod load;
pub mod pipeline;
pub mod predict;
pub mod profiles;
pub mod render;
pub mod sync;
