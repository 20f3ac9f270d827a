//! The stores every tool reads: PostgreSQL, the vector index (read side only) and the embedder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use tokio::sync::OnceCell;

use crate::dataset::Dataset;
use crate::db::{Db, ReadLimits};
use crate::embed::LazyEmbedder;
use crate::failure::ToolFailure;
use crate::sql_analytics::Grounding;
use crate::vector::{CurrentIndex, VectorReader, VectorSearch};

/// How long a tool waits for the vector index to catch up with PostgreSQL: an ingest commits its data and then
/// publishes its index version, a few milliseconds apart, and a question may fall in between.
const PUBLISH_GRACE: Duration = Duration::from_secs(3);

/// Times a read that spans several statements and the vector index is started again when an ingest commits during
/// it, before it is refused: each attempt takes milliseconds, and ingests take seconds, so a second attempt almost
/// always sees one version throughout.
const READ_ATTEMPTS: u32 = 3;

/// Shared handles for the agent tools. Cheap to clone; clones share the connection pools, the index reader,
/// the loaded model and the cached schema grounding.
#[derive(Clone)]
pub struct Stores {
    pub db: Db,
    vectors: Arc<VectorReader>,
    pub embedder: LazyEmbedder,
    pub limits: ReadLimits,
    /// Live schema and sample values for the text-to-SQL prompt, read once per `Stores`.
    grounding: Arc<OnceCell<Arc<Grounding>>>,
}

impl Stores {
    pub fn new(db: Db, vectors: VectorReader, embedder: LazyEmbedder, limits: ReadLimits) -> Self {
        Self { db, vectors: Arc::new(vectors), embedder, limits, grounding: Arc::new(OnceCell::new()) }
    }

    /// The schema grounding for the text-to-SQL prompt, read from the database the first time.
    pub async fn grounding(&self) -> Result<Arc<Grounding>> {
        self.grounding.get_or_try_init(|| async { Grounding::load(&self.db).await.map(Arc::new) }).await.cloned()
    }

    /// Where the vector index is, for messages.
    pub fn describe_vectors(&self) -> String {
        self.vectors.describe()
    }

    /// Starts a read that must see one data version in PostgreSQL and the vector index: see [`OneVersion`].
    pub fn one_version(&self) -> OneVersion<'_> {
        OneVersion { stores: self, attempts: 0 }
    }

    /// The vector index as it is now, checked against PostgreSQL: it must hold exactly the profiles PostgreSQL
    /// holds (same fingerprint, or at least the same count where the engine keeps no manifest). A missing, partial
    /// or foreign index is a fatal store error that says what to do, never an empty answer.
    pub async fn vectors(&self) -> Result<Arc<dyn VectorSearch>, ToolFailure> {
        let started = Instant::now();
        loop {
            let current = self.vectors.current().await.map_err(ToolFailure::Fatal)?;
            let dataset = Dataset::read(&self.db).await.map_err(ToolFailure::Fatal)?;
            let problem = match self.check(current, dataset.as_ref()).await? {
                Freshness::Current(search) => return Ok(search),
                Freshness::Publishing if started.elapsed() < PUBLISH_GRACE => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Freshness::Publishing => "was built from an older ingest than the data in PostgreSQL".to_owned(),
                Freshness::Stale(problem) => problem,
            };
            return Err(ToolFailure::Fatal(anyhow!(
                "the vector index in {} {problem}: run `audience reindex`",
                self.vectors.describe()
            )));
        }
    }

    async fn check(&self, current: Option<CurrentIndex>, dataset: Option<&Dataset>) -> Result<Freshness, ToolFailure> {
        let profiles = match dataset {
            Some(dataset) => dataset.profiles,
            None => Dataset::count_profiles(&self.db).await.map_err(ToolFailure::Fatal)?,
        };
        let Some(current) = current else {
            return Ok(Freshness::Stale(format!("holds 0 of {profiles} profiles")));
        };
        match (&current.manifest, dataset) {
            (Some(manifest), Some(dataset)) => {
                if manifest.fingerprint == dataset.fingerprint {
                    return Ok(Freshness::Current(current.search));
                }
                if manifest.data_version.is_some_and(|version| version < dataset.version) {
                    return Ok(Freshness::Publishing);
                }
                Ok(Freshness::Stale(format!(
                    "holds {} profiles built from other data than the {profiles} in PostgreSQL",
                    manifest.profiles
                )))
            }
            // Without both records, the counts must agree.
            _ => {
                let points = current.search.count(None).await.map_err(ToolFailure::Fatal)?;
                if points == profiles {
                    Ok(Freshness::Current(current.search))
                } else {
                    Ok(Freshness::Stale(format!("holds {points} of {profiles} profiles")))
                }
            }
        }
    }
}

/// Whether the vector index matches PostgreSQL.
enum Freshness {
    Current(Arc<dyn VectorSearch>),
    /// An ingest has committed newer data; its index version is about to be published.
    Publishing,
    /// What is wrong, completing "the vector index in DIR ...".
    Stale(String),
}

/// A read of several statements and the vector index at one data version.
///
/// Each statement of a read sees the data committed when it starts, and the vector index is checked against the
/// version PostgreSQL holds when it is opened; an ingest that commits between two of them would mix two versions
/// (a size from one, members and their facts from the other). The version only grows, one step per ingest, so a read
/// that finds the same version before and after saw that version throughout. Otherwise it is read again, and after
/// [`READ_ATTEMPTS`] refused with a reason.
///
/// ```ignore
/// let mut reading = stores.one_version();
/// let report = loop {
///     let version = reading.start().await?;
///     let report = read(stores).await?;
///     if reading.unchanged(version).await? { break report; }
/// };
/// ```
pub struct OneVersion<'a> {
    stores: &'a Stores,
    attempts: u32,
}

impl OneVersion<'_> {
    /// The data version an attempt starts at (`None` for a schema ingested before versions were recorded).
    pub async fn start(&mut self) -> Result<Option<i64>, ToolFailure> {
        self.attempts += 1;
        Dataset::version(&self.stores.db).await.map_err(ToolFailure::Fatal)
    }

    /// Whether the data is still at `version`; an error when it changed on every attempt.
    pub async fn unchanged(&self, version: Option<i64>) -> Result<bool, ToolFailure> {
        let now = Dataset::version(&self.stores.db).await.map_err(ToolFailure::Fatal)?;
        if now == version {
            return Ok(true);
        }
        if self.attempts >= READ_ATTEMPTS {
            return Err(ToolFailure::Fatal(anyhow!(
                "the data changed during each of {READ_ATTEMPTS} attempts to read it (ingests are running); \
                 try again when they have finished"
            )));
        }
        tracing::debug!(from = ?version, to = ?now, "an ingest committed during the read; reading again");
        Ok(false)
    }
}
