//! The server engine: a Qdrant server reached over gRPC with `qdrant-client`, selected by `QDRANT_URL`.
//!
//! Point ids are the customer ids (numeric ids). Writes wait for the server to apply them, so a read that
//! follows a write sees it, as with the embedded engine.

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};
use async_trait::async_trait;
use qdrant_client::qdrant::r#match::MatchValue as GrpcMatch;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vector_output::Vector as VectorOutput;
use qdrant_client::qdrant::{
    self, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder,
    Distance, FieldType, GetPointsBuilder, PayloadIncludeSelector, PointId, PointStruct, PointsIdsList, Query,
    QueryPointsBuilder, RepeatedIntegers, RepeatedStrings, ScrollPointsBuilder, UpsertPointsBuilder,
    VectorParamsBuilder, VectorsConfigBuilder, VectorsOutput,
};
use qdrant_client::{Qdrant, QdrantError};
use serde_json::{Map, Value};

use super::{
    Condition, FieldKind, Filter, MatchValue, ScoredPoint, StoredPoint, TEXT_HASH_FIELD, VECTOR_NAME, VectorIndex,
    VectorPoint, VectorSearch,
};

/// Dimension of the profile vectors (the embedding model's output size).
const DIMENSIONS: u64 = 384;
/// Page size when scrolling every point for `text_hashes`.
const SCROLL_PAGE: u32 = 1_000;

/// A collection on a Qdrant server.
pub struct ServerIndex {
    client: Qdrant,
    url: String,
    collection: String,
}

impl ServerIndex {
    /// Connects to the server at `url` (the gRPC port, e.g. `http://127.0.0.1:6334`) for `collection`.
    /// The client's version check is skipped: it only warns, and servers a minor version apart work fine.
    pub async fn connect(url: &str, collection: &str) -> Result<Self> {
        let client = Qdrant::from_url(url)
            .skip_compatibility_check()
            .build()
            .map_err(|e| server_error(url, format!("cannot create a Qdrant client for {url}"), e))?;
        Ok(Self { client, url: url.to_string(), collection: collection.to_string() })
    }

    /// Deletes the whole collection if it exists (used to clean up after tests and to rebuild from scratch).
    pub async fn drop_collection(&self) -> Result<()> {
        if self.exists().await? {
            self.client.delete_collection(&self.collection).await.map_err(|e| {
                server_error(&self.url, format!("cannot delete collection {} on {}", self.collection, self.url), e)
            })?;
        }
        Ok(())
    }

    async fn exists(&self) -> Result<bool> {
        self.client
            .collection_exists(&self.collection)
            .await
            .map_err(|e| server_error(&self.url, format!("cannot reach the Qdrant server at {}", self.url), e))
    }
}

/// Whether the vector server caused `error` (unreachable, refused, failed): a store failure, like a database one.
pub fn is_server_failure(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.downcast_ref::<QdrantError>().is_some())
}

/// A failed server call as an error that says what was being done. The client speaks gRPC; pointed at the REST port
/// it gets only "h2 protocol error", so that error also says which port is wanted.
fn server_error(url: &str, what: String, error: QdrantError) -> anyhow::Error {
    let hint = if error.to_string().contains("h2 protocol error") {
        format!(
            " ({url} does not speak gRPC: QDRANT_URL must name the server's gRPC port, 6334 by default, not its REST port 6333)"
        )
    } else {
        String::new()
    };
    anyhow::Error::new(error).context(format!("{what}{hint}"))
}

fn grpc_match(value: &MatchValue) -> GrpcMatch {
    // Built directly rather than through `From<String>`, which turns strings with spaces into full-text matches.
    match value {
        MatchValue::Bool(b) => GrpcMatch::Boolean(*b),
        MatchValue::Integer(i) => GrpcMatch::Integer(*i),
        MatchValue::Keyword(s) => GrpcMatch::Keyword(s.clone()),
    }
}

fn grpc_condition(condition: &Condition) -> qdrant::Condition {
    match condition {
        Condition::Match { key, value } => qdrant::Condition::matches(key.clone(), grpc_match(value)),
        Condition::MatchAny { key, values } => {
            let keywords: Option<Vec<String>> = values
                .iter()
                .map(|v| match v {
                    MatchValue::Keyword(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            let integers: Option<Vec<i64>> = values
                .iter()
                .map(|v| match v {
                    MatchValue::Integer(i) => Some(*i),
                    _ => None,
                })
                .collect();
            match (keywords, integers) {
                (Some(strings), _) => {
                    qdrant::Condition::matches(key.clone(), GrpcMatch::Keywords(RepeatedStrings { strings }))
                }
                (None, Some(integers)) => {
                    qdrant::Condition::matches(key.clone(), GrpcMatch::Integers(RepeatedIntegers { integers }))
                }
                // Match-any takes only keywords or only integers; bools or a mix become OR-ed matches.
                (None, None) => qdrant::Filter::should(
                    values.iter().map(|v| qdrant::Condition::matches(key.clone(), grpc_match(v))),
                )
                .into(),
            }
        }
        Condition::Range { key, gt, gte, lt, lte } => {
            qdrant::Condition::range(key.clone(), qdrant::Range { gt: *gt, gte: *gte, lt: *lt, lte: *lte })
        }
        Condition::HasId { ids } => qdrant::Condition::has_id(ids.iter().copied()),
        Condition::Nested { filter } => grpc_filter(filter).into(),
    }
}

fn grpc_filter(filter: &Filter) -> qdrant::Filter {
    let list = |conditions: &[Condition]| conditions.iter().map(grpc_condition).collect();
    qdrant::Filter {
        must: list(&filter.must),
        should: list(&filter.should),
        must_not: list(&filter.must_not),
        min_should: None,
    }
}

fn field_type(kind: FieldKind) -> FieldType {
    match kind {
        FieldKind::Keyword => FieldType::Keyword,
        FieldKind::Integer => FieldType::Integer,
        FieldKind::Float => FieldType::Float,
        FieldKind::Bool => FieldType::Bool,
    }
}

fn numeric_id(id: Option<PointId>) -> Result<u64> {
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Num(n)) => Ok(n),
        Some(PointIdOptions::Uuid(u)) => bail!("unexpected UUID point id {u} in the vector index"),
        None => bail!("the Qdrant server returned a point without an id"),
    }
}

fn payload_map(payload: HashMap<String, qdrant::Value>) -> Map<String, Value> {
    qdrant_client::Payload::from(payload).into()
}

fn dense_vector(vectors: Option<VectorsOutput>) -> Result<Vec<f32>> {
    match vectors.and_then(|v| v.get_vector_by_name(VECTOR_NAME)) {
        Some(VectorOutput::Dense(dense)) => Ok(dense.data),
        Some(_) => bail!("stored vector `{VECTOR_NAME}` is not dense"),
        None => Err(anyhow!("stored point has no vector `{VECTOR_NAME}`")),
    }
}

impl ServerIndex {
    /// The server's own nearest-neighbour query: its best `limit` points, only those scoring above `above` when
    /// given (see [`super::search_by_score_then_id`]).
    async fn nearest(
        &self,
        vector: Vec<f32>,
        filter: Option<qdrant::Filter>,
        above: Option<f32>,
        limit: usize,
    ) -> Result<Vec<ScoredPoint>> {
        let mut request = QueryPointsBuilder::new(&self.collection)
            .query(Query::new_nearest(vector))
            .using(VECTOR_NAME)
            .limit(limit as u64)
            .with_payload(true);
        if let Some(filter) = filter {
            request = request.filter(filter);
        }
        if let Some(above) = above {
            request = request.score_threshold(above);
        }
        let response = self
            .client
            .query(request)
            .await
            .map_err(|e| server_error(&self.url, "vector search on the Qdrant server failed".to_owned(), e))?;
        response
            .result
            .into_iter()
            .map(|hit| Ok(ScoredPoint { id: numeric_id(hit.id)?, score: hit.score, payload: payload_map(hit.payload) }))
            .collect()
    }
}

#[async_trait]
impl VectorSearch for ServerIndex {
    async fn search(&self, vector: Vec<f32>, filter: Option<Filter>, limit: usize) -> Result<Vec<ScoredPoint>> {
        // The server rejects a zero limit; the shared search answers it with no hits before asking.
        let filter = filter.filter(|f| !f.is_empty()).map(|filter| grpc_filter(&filter));
        super::search_by_score_then_id(limit, |above, limit| self.nearest(vector.clone(), filter.clone(), above, limit))
            .await
    }

    async fn count(&self, filter: Option<Filter>) -> Result<u64> {
        let mut request = CountPointsBuilder::new(&self.collection).exact(true);
        if let Some(filter) = filter.filter(|f| !f.is_empty()) {
            request = request.filter(grpc_filter(&filter));
        }
        let response = self
            .client
            .count(request)
            .await
            .map_err(|e| server_error(&self.url, "vector count on the Qdrant server failed".to_owned(), e))?;
        Ok(response.result.map(|r| r.count).unwrap_or(0))
    }

    async fn retrieve(&self, ids: Vec<u64>, with_vectors: bool) -> Result<Vec<StoredPoint>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<PointId> = ids.into_iter().map(PointId::from).collect();
        let request = GetPointsBuilder::new(&self.collection, ids).with_payload(true).with_vectors(with_vectors);
        let response = self
            .client
            .get_points(request)
            .await
            .map_err(|e| server_error(&self.url, "vector retrieve on the Qdrant server failed".to_owned(), e))?;
        response
            .result
            .into_iter()
            .map(|point| {
                let vector = if with_vectors { Some(dense_vector(point.vectors)?) } else { None };
                Ok(StoredPoint { id: numeric_id(point.id)?, vector, payload: payload_map(point.payload) })
            })
            .collect()
    }

    fn describe(&self) -> String {
        format!("server:{}", self.url)
    }
}

#[async_trait]
impl VectorIndex for ServerIndex {
    async fn text_hashes(&self) -> Result<HashMap<u64, String>> {
        let mut hashes = HashMap::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut request = ScrollPointsBuilder::new(&self.collection)
                .limit(SCROLL_PAGE)
                .with_payload(PayloadIncludeSelector::new(vec![TEXT_HASH_FIELD.to_string()]))
                .with_vectors(false);
            if let Some(offset) = offset.take() {
                request = request.offset(offset);
            }
            let response = self
                .client
                .scroll(request)
                .await
                .map_err(|e| server_error(&self.url, "vector scroll on the Qdrant server failed".to_owned(), e))?;
            for point in response.result {
                let id = numeric_id(point.id)?;
                if let Some(Value::String(hash)) = payload_map(point.payload).remove(TEXT_HASH_FIELD) {
                    hashes.insert(id, hash);
                }
            }
            match response.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(hashes),
            }
        }
    }

    async fn ensure_collection(&self) -> Result<()> {
        if !self.exists().await? {
            let mut vectors = VectorsConfigBuilder::default();
            vectors.add_named_vector_params(VECTOR_NAME, VectorParamsBuilder::new(DIMENSIONS, Distance::Cosine));
            self.client
                .create_collection(CreateCollectionBuilder::new(&self.collection).vectors_config(vectors))
                .await
                .map_err(|e| {
                    server_error(&self.url, format!("cannot create collection {} on {}", self.collection, self.url), e)
                })?;
        }
        let info = self.client.collection_info(&self.collection).await.map_err(|e| {
            server_error(&self.url, format!("cannot read collection {} on {}", self.collection, self.url), e)
        })?;
        let existing = info.result.map(|r| r.payload_schema).unwrap_or_default();
        for (field, kind) in crate::schema::indexed_payload_fields() {
            if existing.contains_key(field) {
                continue;
            }
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(&self.collection, field, field_type(kind)).wait(true),
                )
                .await
                .map_err(|e| {
                    server_error(&self.url, format!("cannot create payload index {field} on {}", self.collection), e)
                })?;
        }
        Ok(())
    }

    async fn upsert(&self, points: Vec<VectorPoint>) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let mut structs = Vec::with_capacity(points.len());
        for point in points {
            if point.vector.len() as u64 != DIMENSIONS {
                bail!("point {} has a {}-d vector, expected {DIMENSIONS}", point.id, point.vector.len());
            }
            let vectors = HashMap::from([(VECTOR_NAME.to_string(), point.vector)]);
            structs.push(PointStruct::new(point.id, vectors, qdrant_client::Payload::from(point.payload)));
        }
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, structs).wait(true))
            .await
            .map_err(|e| server_error(&self.url, "vector upsert on the Qdrant server failed".to_owned(), e))?;
        Ok(())
    }

    async fn delete(&self, ids: Vec<u64>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<PointId> = ids.into_iter().map(PointId::from).collect();
        self.client
            .delete_points(DeletePointsBuilder::new(&self.collection).points(PointsIdsList { ids }).wait(true))
            .await
            .map_err(|e| server_error(&self.url, "vector delete on the Qdrant server failed".to_owned(), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use qdrant_client::qdrant::condition::ConditionOneOf;

    use super::*;

    fn field_match(condition: &qdrant::Condition) -> Option<GrpcMatch> {
        match &condition.condition_one_of {
            Some(ConditionOneOf::Field(field)) => field.r#match.as_ref().and_then(|m| m.match_value.clone()),
            _ => None,
        }
    }

    #[test]
    fn keyword_with_space_stays_a_keyword_match() {
        let condition = grpc_condition(&Condition::Match {
            key: "segment".into(),
            value: MatchValue::Keyword("high value".into()),
        });
        assert_eq!(field_match(&condition), Some(GrpcMatch::Keyword("high value".into())));
    }

    #[test]
    fn match_any_maps_by_value_kind() {
        let keywords = grpc_condition(&Condition::MatchAny {
            key: "country".into(),
            values: vec![MatchValue::Keyword("PL".into()), MatchValue::Keyword("DE".into())],
        });
        assert_eq!(
            field_match(&keywords),
            Some(GrpcMatch::Keywords(RepeatedStrings { strings: vec!["PL".into(), "DE".into()] }))
        );
        let integers = grpc_condition(&Condition::MatchAny {
            key: "age".into(),
            values: vec![MatchValue::Integer(30), MatchValue::Integer(40)],
        });
        assert_eq!(field_match(&integers), Some(GrpcMatch::Integers(RepeatedIntegers { integers: vec![30, 40] })));
        let bools =
            grpc_condition(&Condition::MatchAny { key: "churned".into(), values: vec![MatchValue::Bool(true)] });
        match bools.condition_one_of {
            Some(ConditionOneOf::Filter(filter)) => {
                assert_eq!(filter.should.len(), 1);
                assert_eq!(field_match(&filter.should[0]), Some(GrpcMatch::Boolean(true)));
            }
            other => panic!("bool match-any must become a should filter, got {other:?}"),
        }
    }

    #[test]
    fn range_has_id_and_nested_map_structurally() {
        let filter = grpc_filter(&Filter {
            must: vec![
                Condition::Range { key: "total_spent".into(), gt: Some(1.0), gte: None, lt: None, lte: Some(9.0) },
                Condition::Nested {
                    filter: Filter { should: vec![Condition::HasId { ids: vec![4, 2] }], ..Filter::default() },
                },
            ],
            should: vec![],
            must_not: vec![Condition::Match { key: "churned".into(), value: MatchValue::Bool(true) }],
        });
        match &filter.must[0].condition_one_of {
            Some(ConditionOneOf::Field(field)) => {
                assert_eq!(field.range, Some(qdrant::Range { gt: Some(1.0), gte: None, lt: None, lte: Some(9.0) }));
            }
            other => panic!("expected a range condition, got {other:?}"),
        }
        match &filter.must[1].condition_one_of {
            Some(ConditionOneOf::Filter(inner)) => match &inner.should[0].condition_one_of {
                Some(ConditionOneOf::HasId(has_id)) => {
                    assert_eq!(has_id.has_id, vec![PointId::from(4), PointId::from(2)]);
                }
                other => panic!("expected has_id, got {other:?}"),
            },
            other => panic!("expected a nested filter, got {other:?}"),
        }
        assert_eq!(field_match(&filter.must_not[0]), Some(GrpcMatch::Boolean(true)));
        assert!(filter.should.is_empty());
    }
}
