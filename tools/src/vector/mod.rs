//! The vector index behind one small trait, with two engines: Qdrant's in-process engine
//! (`qdrant-edge`, the embedded default) and a Qdrant server through `qdrant-client` (when `QDRANT_URL` is set).
//!
//! One filter model of our own ([`Filter`]) maps onto both engines, because their native filter types
//! (edge's internal REST-shaped `Filter`, the client's gRPC `Filter`) have no conversion between them. One order of
//! hits, too: best first and equal scores by ascending id ([`search_by_score_then_id`]), so customers with the same
//! profile text come back in the same order from either engine.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod edge;
pub mod server;
pub mod versions;

pub use versions::{EdgeReader, EdgeStore, EdgeWriter, Manifest, StagingStart};

/// Prefix of the server collection that holds one schema's customer profiles (`customer_profiles_<schema>`).
pub const COLLECTION: &str = "customer_profiles";
/// Name of the dense vector inside each point.
pub const VECTOR_NAME: &str = "profile";
/// Payload field holding the hash of the embedded profile text, used for incremental re-embedding.
pub const TEXT_HASH_FIELD: &str = "text_hash";

/// How a payload field is indexed (see `schema::indexed_payload_fields`).
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

/// Best first, and equal scores by ascending id.
fn score_then_id(a: &ScoredPoint, b: &ScoredPoint) -> Ordering {
    b.score.total_cmp(&a.score).then(a.id.cmp(&b.id))
}

/// The `limit` best points in the order both engines share: best first, equal scores by ascending id.
///
/// `nearest(above, n)` is an engine's own query: its best `n` points, only those scoring above `above` when given.
/// An engine cuts a group of equal scores (customers whose profile texts are the same) at the limit in an order of
/// its own, so the search asks for one point more than the limit; when that point ties with the last, it asks again
/// for every point scoring at least the tied score, and the sort keeps the lowest ids of the tie.
pub(crate) async fn search_by_score_then_id<F, Fut>(limit: usize, nearest: F) -> Result<Vec<ScoredPoint>>
where
    F: Fn(Option<f32>, usize) -> Fut,
    Fut: Future<Output = Result<Vec<ScoredPoint>>>,
{
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut hits = nearest(None, limit + 1).await?;
    if hits.len() > limit && hits[limit].score == hits[limit - 1].score {
        let tied = hits[limit].score;
        let mut wanted = (limit + 1).saturating_mul(2);
        hits = loop {
            // Just below the tied score: the whole tie passes whether an engine's bound is strict or not.
            let found = nearest(Some(tied.next_down()), wanted).await?;
            if found.len() < wanted {
                break found;
            }
            wanted = wanted.saturating_mul(2);
        };
    }
    hits.sort_by(score_then_id);
    hits.truncate(limit);
    Ok(hits)
}

/// Read access to the index. Agent tools get only this.
#[async_trait]
pub trait VectorSearch: Send + Sync {
    /// Up to `limit` points nearest to `vector` (cosine) that pass `filter`: best first, equal scores by ascending
    /// id, the same points and order from every engine.
    async fn search(&self, vector: Vec<f32>, filter: Option<Filter>, limit: usize) -> Result<Vec<ScoredPoint>>;
    /// Exact number of points that pass `filter`.
    async fn count(&self, filter: Option<Filter>) -> Result<u64>;
    /// Points by id (missing ids are skipped), with their vectors when `with_vectors`.
    async fn retrieve(&self, ids: Vec<u64>, with_vectors: bool) -> Result<Vec<StoredPoint>>;
    /// A short description for messages and traces, e.g. `embedded:/path (v000003)` or `server:http://…`.
    fn describe(&self) -> String;
}

/// Write access to the index. Only ingest calls these, on a version that readers cannot see yet.
#[async_trait]
pub trait VectorIndex: VectorSearch {
    /// Creates the collection and payload indexes if they do not exist.
    async fn ensure_collection(&self) -> Result<()>;
    /// Inserts or replaces points.
    async fn upsert(&self, points: Vec<VectorPoint>) -> Result<()>;
    /// Deletes points by id; unknown ids are ignored.
    async fn delete(&self, ids: Vec<u64>) -> Result<()>;
    /// `customer_id -> text_hash` of every stored point: what is embedded now, for incremental ingest.
    async fn text_hashes(&self) -> Result<HashMap<u64, String>>;
}

/// Where one schema's vectors live: the embedded engine's versioned directory under the data directory, or a
/// collection on a Qdrant server (`QDRANT_URL`).
#[derive(Clone, Debug)]
pub enum VectorStore {
    Embedded(EdgeStore),
    Server { url: String, collection: String },
}

impl VectorStore {
    /// The store of `schema`: on the server at `qdrant_url` when given, else under `<data_dir>/vectors/<schema>`.
    pub fn new(qdrant_url: Option<&str>, data_dir: &Path, schema: &str) -> Self {
        match qdrant_url {
            Some(url) => Self::Server { url: url.to_owned(), collection: format!("{COLLECTION}_{schema}") },
            None => Self::Embedded(EdgeStore::new(data_dir.join("vectors").join(schema))),
        }
    }

    /// [`Self::new`] with `QDRANT_URL` from the environment.
    pub fn from_env(data_dir: &Path, schema: &str) -> Self {
        let url = std::env::var("QDRANT_URL").ok().filter(|url| !url.trim().is_empty());
        Self::new(url.as_deref(), data_dir, schema)
    }

    /// Where the index is, for messages: `embedded:DIR` or `server:URL (collection NAME)`.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded(store) => format!("embedded:{}", store.root().display()),
            Self::Server { url, collection } => format!("server:{url} (collection {collection})"),
        }
    }

    /// A reader that always serves the current version.
    pub fn reader(&self) -> VectorReader {
        match self {
            Self::Embedded(store) => VectorReader(ReaderKind::Embedded(EdgeReader::new(store.clone()))),
            Self::Server { url, collection } => VectorReader(ReaderKind::Server {
                url: url.clone(),
                collection: collection.clone(),
                index: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// Starts writing a new version. With the embedded engine readers keep the current version until
    /// [`VectorWriter::publish`]; a Qdrant server collection is written in place (see [`server`]).
    pub async fn begin(&self, start: StagingStart) -> Result<VectorWriter> {
        match self {
            Self::Embedded(store) => Ok(VectorWriter::Embedded(store.begin(start).await?)),
            Self::Server { url, collection } => {
                let index = server::ServerIndex::connect(url, collection).await?;
                if start == StagingStart::Empty {
                    index.drop_collection().await?;
                }
                Ok(VectorWriter::Server(index))
            }
        }
    }
}

/// A version being written: sync into [`Self::index`], then [`Self::publish`]. Dropped unpublished, the
/// embedded engine's version is discarded.
pub enum VectorWriter {
    Embedded(EdgeWriter),
    Server(server::ServerIndex),
}

impl VectorWriter {
    pub fn index(&self) -> Result<&dyn VectorIndex> {
        match self {
            Self::Embedded(writer) => writer
                .index()
                .map(|index| index as &dyn VectorIndex)
                .ok_or_else(|| anyhow!("the staging index is closed")),
            Self::Server(index) => Ok(index),
        }
    }

    /// Makes the version current for every reader, recording what it was built from.
    pub async fn publish(self, manifest: &Manifest) -> Result<()> {
        match self {
            Self::Embedded(writer) => writer.publish(manifest).await.map(drop),
            Self::Server(_) => Ok(()),
        }
    }
}

/// The read side of a [`VectorStore`], shared by every tool of a process.
pub struct VectorReader(ReaderKind);

enum ReaderKind {
    Embedded(EdgeReader),
    Server {
        url: String,
        collection: String,
        index: tokio::sync::OnceCell<Arc<server::ServerIndex>>,
    },
    /// One index, as it is (tests and benchmarks that build their own).
    Fixed(Arc<dyn VectorSearch>),
}

/// The index a reader serves now, and what it was built from when the engine records that.
pub struct CurrentIndex {
    pub search: Arc<dyn VectorSearch>,
    pub manifest: Option<Manifest>,
}

impl VectorReader {
    /// A reader over one given index, which is never replaced.
    pub fn fixed(index: Arc<dyn VectorSearch>) -> Self {
        Self(ReaderKind::Fixed(index))
    }

    /// Where the index is, for messages.
    pub fn describe(&self) -> String {
        match &self.0 {
            ReaderKind::Embedded(reader) => format!("embedded:{}", reader.store().root().display()),
            ReaderKind::Server { url, collection, .. } => format!("server:{url} (collection {collection})"),
            ReaderKind::Fixed(index) => index.describe(),
        }
    }

    /// The current index; `None` when the embedded engine has no published version yet.
    pub async fn current(&self) -> Result<Option<CurrentIndex>> {
        match &self.0 {
            ReaderKind::Embedded(reader) => Ok(reader.current().await?.map(|copy| {
                let manifest = Some(copy.manifest().clone());
                CurrentIndex { search: copy, manifest }
            })),
            ReaderKind::Server { url, collection, index } => {
                let index = index
                    .get_or_try_init(|| async { server::ServerIndex::connect(url, collection).await.map(Arc::new) })
                    .await?;
                Ok(Some(CurrentIndex { search: index.clone(), manifest: None }))
            }
            ReaderKind::Fixed(index) => Ok(Some(CurrentIndex { search: index.clone(), manifest: None })),
        }
    }
}
