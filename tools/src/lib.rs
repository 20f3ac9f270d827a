//! The read side of `audience`: store access (PostgreSQL, vector index, embedder) and the agent's tools.
//!
//! Architecture Invariant: nothing in this crate writes customer data. The vector write trait
//! (`vector::VectorIndex`) lives here so both engines are implemented once, but only the
//! `audience-ingest` crate calls its write methods; tools receive `Arc<dyn VectorSearch>`.

pub mod audience;
pub mod clarify;
pub mod dataset;
pub mod db;
pub mod embed;
pub mod examples;
pub mod failure;
pub mod grounding;
pub mod metrics;
pub mod observe;
pub mod paths;
pub mod question;
pub mod registry;
pub mod respond;
pub mod schema;
pub mod segments;
pub mod sql_analytics;
pub mod sql_data_retriever;
pub mod sql_guard;
pub mod stores;
pub mod trace;
pub mod triage;
pub mod vector;
pub mod vocabulary;
