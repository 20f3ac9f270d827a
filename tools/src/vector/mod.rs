//! The vector index behind one small trait, with two engines: Qdrant's in-process engine
//! (`qdrant-edge`, the embedded default) and a Qdrant server through `qdrant-client` (when `QDRANT_URL` is set).
//!
//! One filter model of our own ([`Filter`]) maps onto both engines, because their native filter types
//! (edge's internal REST-shaped `Filter`, the client's gRPC `Filter`) have no conversion between them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod edge;
pub mod server;

/// Name of the collection (server) that holds customer profiles; the embedded engine keeps one shard per directory.
pub const COLLECTION: &str = "customer_profiles";
/// Name of the dense vector inside each point.
pub const VECTOR_NAME: &str = "profile";
/// Payload field holding the hash of the embedded profile text, used for incremental re-embedding.
pub const TEXT_HASH_FIELD: &str = "text_hash";

/// Payload fields that get an index, and their kind.
pub const INDEXED_FIELDS: &[(&str, FieldKind)] = &[
    ("customer_id", FieldKind::Integer),
    ("country", FieldKind::Keyword),
    ("segment", FieldKind::Keyword),
    ("favorite_color", FieldKind::Keyword),
    ("calculated_interests", FieldKind::Keyword),
    ("likes_luxury", FieldKind::Bool),
    ("churned", FieldKind::Bool),
    ("total_spent", FieldKind::Float),
    ("age", FieldKind::Integer),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Keyword,
    Integer,
    Float,
    Bool,
}

/// A point to write: id = customer_id, a 384-d vector, and the profile payload (a JSON object).
#[derive(Clone, Debug)]
pub struct VectorPoint {
    pub id: u64,
    pub vector: Vec<f32>,
    pub payload: Map<String, Value>,
}

/// A search hit.
#[derive(Clone, Debug, Serialize)]
pub struct ScoredPoint {
    pub id: u64,
    pub score: f32,
    pub payload: Map<String, Value>,
}

/// A stored point, read back by id. `vector` is present only when asked for.
#[derive(Clone, Debug)]
pub struct StoredPoint {
    pub id: u64,
    pub vector: Option<Vec<f32>>,
    pub payload: Map<String, Value>,
}

/// A value a keyword, integer or bool field is matched against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MatchValue {
    Bool(bool),
    Integer(i64),
    Keyword(String),
}

/// One condition of a filter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// `key` equals `value` (for an array field: contains it).
    Match { key: String, value: MatchValue },
    /// `key` equals any of `values`.
    MatchAny { key: String, values: Vec<MatchValue> },
    /// `key` is a number within the bounds.
    Range {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gt: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gte: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lt: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lte: Option<f64>,
    },
    /// The point id is one of `ids`.
    HasId { ids: Vec<u64> },
    /// A nested filter, for (a OR b) AND c.
    Nested { filter: Filter },
}

/// Boolean combination of conditions, with Qdrant's semantics: all of `must`, at least one of
/// `should` (when non-empty), none of `must_not`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub should: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must_not: Vec<Condition>,
}

impl Filter {
    pub fn must(conditions: impl IntoIterator<Item = Condition>) -> Self {
        Self { must: conditions.into_iter().collect(), ..Self::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.should.is_empty() && self.must_not.is_empty()
    }
}

/// Read access to the index. Agent tools get only this.
#[async_trait]
pub trait VectorSearch: Send + Sync {
    /// Up to `limit` points nearest to `vector` (cosine, best first) that pass `filter`.
    async fn search(&self, vector: Vec<f32>, filter: Option<Filter>, limit: usize) -> Result<Vec<ScoredPoint>>;
    /// Exact number of points that pass `filter`.
    async fn count(&self, filter: Option<Filter>) -> Result<u64>;
    /// Points by id (missing ids are skipped), with their vectors when `with_vectors`.
    async fn retrieve(&self, ids: Vec<u64>, with_vectors: bool) -> Result<Vec<StoredPoint>>;
    /// `customer_id -> text_hash` of every stored point: what is embedded now, for incremental ingest.
    async fn text_hashes(&self) -> Result<HashMap<u64, String>>;
    /// A short description for logs and traces, e.g. `embedded:/path` or `server:http://…`.
    fn describe(&self) -> String;
}

/// Write access to the index. Only ingest calls these.
#[async_trait]
pub trait VectorIndex: VectorSearch {
    /// Creates the collection and payload indexes if they do not exist.
    async fn ensure_collection(&self) -> Result<()>;
    /// Inserts or replaces points.
    async fn upsert(&self, points: Vec<VectorPoint>) -> Result<()>;
    /// Deletes points by id; unknown ids are ignored.
    async fn delete(&self, ids: Vec<u64>) -> Result<()>;
}

/// Opens the configured engine: a Qdrant server when `qdrant_url` is given, else the embedded engine under `data_dir`.
pub async fn open(qdrant_url: Option<&str>, data_dir: &Path) -> Result<Arc<dyn VectorIndex>> {
    match qdrant_url {
        Some(url) => Ok(Arc::new(server::ServerIndex::connect(url, COLLECTION).await?)),
        None => Ok(Arc::new(edge::EdgeIndex::open(&data_dir.join("vectors")).await?)),
    }
}

/// Opens the engine chosen by the environment (`QDRANT_URL`, `AUDIENCE_DATA_DIR`).
pub async fn open_from_env() -> Result<Arc<dyn VectorIndex>> {
    let url = std::env::var("QDRANT_URL").ok().filter(|v| !v.is_empty());
    open(url.as_deref(), &crate::paths::data_dir()).await
}
