//! The stores every tool reads: PostgreSQL, the vector index (read side only) and the embedder.

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::OnceCell;

use crate::db::{Db, ReadLimits};
use crate::embed::LazyEmbedder;
use crate::sql_analytics::Grounding;
use crate::vector::VectorSearch;

/// Shared handles for the agent tools. Cheap to clone; clones share the connection pool, the index,
/// the loaded model and the cached schema grounding.
#[derive(Clone)]
pub struct Stores {
    pub db: Db,
    pub vectors: Arc<dyn VectorSearch>,
    pub embedder: LazyEmbedder,
    pub limits: ReadLimits,
    /// Live schema and sample values for the text-to-SQL prompt, read once per `Stores`.
    grounding: Arc<OnceCell<Arc<Grounding>>>,
}

impl Stores {
    pub fn new(db: Db, vectors: Arc<dyn VectorSearch>, embedder: LazyEmbedder, limits: ReadLimits) -> Self {
        Self { db, vectors, embedder, limits, grounding: Arc::new(OnceCell::new()) }
    }

    /// The schema grounding for the text-to-SQL prompt, read from the database the first time.
    pub async fn grounding(&self) -> Result<Arc<Grounding>> {
        self.grounding.get_or_try_init(|| async { Grounding::load(&self.db).await.map(Arc::new) }).await.cloned()
    }
}
