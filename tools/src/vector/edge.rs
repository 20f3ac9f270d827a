//! The embedded engine: one `qdrant-edge` shard in a local directory, searched exactly (no HNSW build).
//!
//! `EdgeShard` methods block, so every call runs on tokio's blocking pool through an `Arc`. Our own
//! read/write lock serialises writers against everything else, because the shard's `flush` uses `try_lock`
//! on its internals and panics when another thread holds them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    CountRequest, CreateIndex, Distance, EdgeConfigBuilder, EdgeShard, EdgeVectorParamsBuilder, FieldIndexOperations,
    JsonPath, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations, PointOperations,
    PointStruct, QueryEnum, QueryRequest, ScoringQuery, ScrollRequest, UpdateOperation, VectorInternal,
    VectorStructInternal, Vectors, WithPayloadInterface, WithVector,
};
use serde_json::{Map, Value};

use super::{
    Condition, FieldKind, Filter, MatchValue, ScoredPoint, StoredPoint, TEXT_HASH_FIELD, VECTOR_NAME, VectorIndex,
    VectorPoint, VectorSearch,
};

/// Dimension of the profile vectors (the embedding model's output size).
const DIMENSIONS: usize = 384;
/// Page size when scrolling every point for `text_hashes`.
const SCROLL_PAGE: usize = 1_000;

/// The embedded vector index.
pub struct EdgeIndex {
    /// Always `Some` until dropped (see the `Drop` impl).
    shard: Option<Arc<EdgeShard>>,
    /// Readers share, writers (update + flush) are exclusive; see the module comment.
    lock: Arc<RwLock<()>>,
    dir: PathBuf,
}

impl EdgeIndex {
    /// Opens the shard in `dir`, creating the directory and an empty shard when needed.
    /// Fails with "vector index busy" when another process (or handle) holds the directory.
    pub async fn open(dir: &Path) -> Result<Self> {
        let dir = dir.to_path_buf();
        let path = dir.clone();
        let shard = tokio::task::spawn_blocking(move || -> Result<EdgeShard> {
            std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
            let config = EdgeConfigBuilder::new()
                .vector(VECTOR_NAME, EdgeVectorParamsBuilder::new(DIMENSIONS, Distance::Cosine).build())
                .build();
            EdgeShard::load(&path, Some(config)).map_err(|e| {
                let message = e.to_string();
                // The write-ahead log takes an exclusive file lock; a second holder gets WouldBlock.
                if message.contains("WouldBlock") {
                    anyhow!("vector index busy: another audience process is using {}", path.display())
                } else {
                    anyhow!("cannot open vector index {}: {message}", path.display())
                }
            })
        })
        .await
        .context("vector index open task failed")??;
        Ok(Self { shard: Some(Arc::new(shard)), lock: Arc::new(RwLock::new(())), dir })
    }

    fn shard(&self) -> Result<Arc<EdgeShard>> {
        self.shard.clone().ok_or_else(|| anyhow!("the vector index {} is closed", self.dir.display()))
    }

    /// Runs `op` on the blocking pool with shared access to the shard.
    async fn read<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> Result<T> + Send + 'static,
    {
        let shard = self.shard()?;
        let lock = Arc::clone(&self.lock);
        tokio::task::spawn_blocking(move || {
            let _guard = lock.read().map_err(|_| anyhow!("vector index lock poisoned"))?;
            op(&shard)
        })
        .await
        .context("vector index task failed")?
    }

    /// Applies `operations` in order with exclusive access, then flushes so another process sees them.
    async fn write(&self, operations: Vec<UpdateOperation>) -> Result<()> {
        let shard = self.shard()?;
        let lock = Arc::clone(&self.lock);
        tokio::task::spawn_blocking(move || {
            let _guard = lock.write().map_err(|_| anyhow!("vector index lock poisoned"))?;
            for operation in operations {
                shard.update(operation).context("vector index update failed")?;
            }
            shard.flush();
            Ok(())
        })
        .await
        .context("vector index task failed")?
    }
}

impl Drop for EdgeIndex {
    /// The shard flushes when it closes and panics if its files are gone (a data directory deleted under a running
    /// process). Then there is nothing left to flush into: the shard is left unclosed rather than abort the process.
    fn drop(&mut self) {
        if let Some(shard) = self.shard.take()
            && !self.dir.join("wal").is_dir()
        {
            tracing::warn!("the vector index directory {} disappeared while open", self.dir.display());
            std::mem::forget(shard);
        }
    }
}

/// Our filter as Qdrant REST filter JSON, which edge's `Filter` deserializes.
fn filter_json(filter: &Filter) -> Value {
    let list = |conditions: &[Condition]| Value::Array(conditions.iter().map(condition_json).collect());
    let mut out = Map::new();
    if !filter.must.is_empty() {
        out.insert("must".into(), list(&filter.must));
    }
    if !filter.should.is_empty() {
        out.insert("should".into(), list(&filter.should));
    }
    if !filter.must_not.is_empty() {
        out.insert("must_not".into(), list(&filter.must_not));
    }
    Value::Object(out)
}

fn match_value_json(value: &MatchValue) -> Value {
    match value {
        MatchValue::Bool(b) => Value::Bool(*b),
        MatchValue::Integer(i) => Value::from(*i),
        MatchValue::Keyword(s) => Value::String(s.clone()),
    }
}

fn condition_json(condition: &Condition) -> Value {
    match condition {
        Condition::Match { key, value } => serde_json::json!({"key": key, "match": {"value": match_value_json(value)}}),
        Condition::MatchAny { key, values } => {
            let all_keywords = values.iter().all(|v| matches!(v, MatchValue::Keyword(_)));
            let all_integers = values.iter().all(|v| matches!(v, MatchValue::Integer(_)));
            if all_keywords || all_integers {
                let any: Vec<Value> = values.iter().map(match_value_json).collect();
                serde_json::json!({"key": key, "match": {"any": any}})
            } else {
                // Qdrant's match-any takes only keywords or only integers; bools or a mix become OR-ed matches.
                let should: Vec<Value> = values
                    .iter()
                    .map(|v| serde_json::json!({"key": key, "match": {"value": match_value_json(v)}}))
                    .collect();
                serde_json::json!({"should": should})
            }
        }
        Condition::Range { key, gt, gte, lt, lte } => {
            let mut range = Map::new();
            for (name, bound) in [("gt", gt), ("gte", gte), ("lt", lt), ("lte", lte)] {
                if let Some(bound) = bound {
                    range.insert(name.into(), Value::from(*bound));
                }
            }
            serde_json::json!({"key": key, "range": range})
        }
        Condition::HasId { ids } => serde_json::json!({"has_id": ids}),
        Condition::Nested { filter } => filter_json(filter),
    }
}

/// Converts our filter into edge's native filter.
fn to_edge_filter(filter: Option<&Filter>) -> Result<Option<qdrant_edge::Filter>> {
    match filter {
        Some(filter) if !filter.is_empty() => {
            Ok(Some(serde_json::from_value(filter_json(filter)).context("filter rejected by the vector engine")?))
        }
        _ => Ok(None),
    }
}

fn json_path(field: &str) -> Result<JsonPath> {
    field.parse().map_err(|()| anyhow!("invalid payload field name: {field}"))
}

fn numeric_id(id: PointId) -> Result<u64> {
    match id {
        PointId::NumId(n) => Ok(n),
        PointId::Uuid(u) => bail!("unexpected UUID point id {u} in the vector index"),
    }
}

fn payload_map(payload: Option<qdrant_edge::Payload>) -> Map<String, Value> {
    payload.map(|p| p.0.into_iter().collect()).unwrap_or_default()
}

fn dense_vector(vector: Option<VectorStructInternal>) -> Result<Vec<f32>> {
    match vector {
        Some(VectorStructInternal::Named(mut named)) => match named.remove(VECTOR_NAME) {
            Some(VectorInternal::Dense(v)) => Ok(v),
            _ => bail!("stored point has no dense vector `{VECTOR_NAME}`"),
        },
        Some(VectorStructInternal::Single(v)) => Ok(v),
        _ => bail!("stored point has no dense vector `{VECTOR_NAME}`"),
    }
}

fn schema_type(kind: FieldKind) -> PayloadSchemaType {
    match kind {
        FieldKind::Keyword => PayloadSchemaType::Keyword,
        FieldKind::Integer => PayloadSchemaType::Integer,
        FieldKind::Float => PayloadSchemaType::Float,
        FieldKind::Bool => PayloadSchemaType::Bool,
    }
}

impl EdgeIndex {
    /// The shard's own nearest-neighbour query: its best `limit` points, only those scoring above `above` when given
    /// (see [`super::search_by_score_then_id`]).
    async fn nearest(
        &self,
        vector: Vec<f32>,
        filter: Option<qdrant_edge::Filter>,
        above: Option<f32>,
        limit: usize,
    ) -> Result<Vec<ScoredPoint>> {
        let hits = self
            .read(move |shard| {
                shard
                    .query(QueryRequest {
                        query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::new(
                            VectorInternal::Dense(vector),
                            VECTOR_NAME,
                        )))),
                        filter,
                        with_payload: WithPayloadInterface::Bool(true),
                        prefetches: vec![],
                        score_threshold: above.map(OrderedFloat),
                        limit,
                        offset: 0,
                        params: None,
                        with_vector: WithVector::Bool(false),
                    })
                    .context("vector search failed")
            })
            .await?;
        hits.into_iter()
            .map(|hit| Ok(ScoredPoint { id: numeric_id(hit.id)?, score: hit.score, payload: payload_map(hit.payload) }))
            .collect()
    }
}

#[async_trait]
impl VectorSearch for EdgeIndex {
    async fn search(&self, vector: Vec<f32>, filter: Option<Filter>, limit: usize) -> Result<Vec<ScoredPoint>> {
        let filter = to_edge_filter(filter.as_ref())?;
        super::search_by_score_then_id(limit, |above, limit| self.nearest(vector.clone(), filter.clone(), above, limit))
            .await
    }

    async fn count(&self, filter: Option<Filter>) -> Result<u64> {
        let filter = to_edge_filter(filter.as_ref())?;
        let n = self
            .read(move |shard| shard.count(CountRequest { filter, exact: true }).context("vector count failed"))
            .await?;
        Ok(n as u64)
    }

    async fn retrieve(&self, ids: Vec<u64>, with_vectors: bool) -> Result<Vec<StoredPoint>> {
        let records = self
            .read(move |shard| {
                let ids: Vec<PointId> = ids.into_iter().map(PointId::NumId).collect();
                shard
                    .retrieve(&ids, Some(WithPayloadInterface::Bool(true)), Some(WithVector::Bool(with_vectors)))
                    .context("vector retrieve failed")
            })
            .await?;
        records
            .into_iter()
            .map(|record| {
                let vector = if with_vectors { Some(dense_vector(record.vector)?) } else { None };
                Ok(StoredPoint { id: numeric_id(record.id)?, vector, payload: payload_map(record.payload) })
            })
            .collect()
    }

    fn describe(&self) -> String {
        format!("embedded:{}", self.dir.display())
    }
}

#[async_trait]
impl VectorIndex for EdgeIndex {
    async fn text_hashes(&self) -> Result<HashMap<u64, String>> {
        let selector = json_path(TEXT_HASH_FIELD)?;
        self.read(move |shard| {
            let mut hashes = HashMap::new();
            let mut offset = None;
            loop {
                let (page, next) = shard
                    .scroll(ScrollRequest {
                        offset,
                        limit: Some(SCROLL_PAGE),
                        filter: None,
                        with_payload: Some(WithPayloadInterface::Fields(vec![selector.clone()])),
                        with_vector: WithVector::Bool(false),
                        order_by: None,
                    })
                    .context("vector scroll failed")?;
                for record in page {
                    let id = numeric_id(record.id)?;
                    if let Some(Value::String(hash)) = payload_map(record.payload).remove(TEXT_HASH_FIELD) {
                        hashes.insert(id, hash);
                    }
                }
                match next {
                    Some(next) => offset = Some(next),
                    None => return Ok(hashes),
                }
            }
        })
        .await
    }

    async fn ensure_collection(&self) -> Result<()> {
        // The shard itself exists once opened; only missing payload indexes are created, so that a second call
        // neither rebuilds an index nor grows the write-ahead log.
        let existing = self.read(|shard| Ok(shard.info().payload_schema)).await?;
        let mut operations = Vec::new();
        for (field, kind) in crate::schema::indexed_payload_fields() {
            let field_name = json_path(field)?;
            if existing.contains_key(&field_name) {
                continue;
            }
            operations.push(UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                field_name,
                field_schema: Some(PayloadFieldSchema::FieldType(schema_type(kind))),
            })));
        }
        if operations.is_empty() {
            return Ok(());
        }
        self.write(operations).await
    }

    async fn upsert(&self, points: Vec<VectorPoint>) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let mut structs = Vec::with_capacity(points.len());
        for point in points {
            if point.vector.len() != DIMENSIONS {
                bail!("point {} has a {}-d vector, expected {DIMENSIONS}", point.id, point.vector.len());
            }
            // PointStruct::new panics on a non-object payload; ours is a map, so the value is always an object.
            let payload = Value::Object(point.payload);
            structs.push(PointStruct::new(point.id, Vectors::new_named([(VECTOR_NAME, point.vector)]), payload).into());
        }
        self.write(vec![UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(structs),
        ))])
        .await
    }

    async fn delete(&self, ids: Vec<u64>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.into_iter().map(PointId::NumId).collect();
        self.write(vec![UpdateOperation::PointOperation(PointOperations::DeletePoints { ids })]).await
    }
}
