//! The read side of `audience`: store access (PostgreSQL, vector index, embedder) and the agent's tools.
//!
//! Architecture Invariant: nothing in this crate writes customer data. The vector write trait
//! (`vector::VectorIndex`) lives here so both engines are implemented once, but only the
//! `audience-ingest` crate calls its write methods; tools receive `Arc<dyn VectorSearch>`.

pub mod db;
pub mod embed;
pub mod paths;
pub mod profile;
pub mod schema;
pub mod vector;
