//! The ingest pipeline end to end: real PostgreSQL (one schema per test), the real embedding model, and the
//! embedded vector index in a temporary directory.
//!
//! Needs `DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/test) and the model files
//! (`scripts/setup-models.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use serde_json::json;
use tempfile::TempDir;

use audience_ingest::generate::{GenerateOptions, GenerateReport, generate};
use audience_ingest::input::Mapping;
use audience_ingest::load::LoadOptions;
use audience_ingest::pipeline::{IngestReport, IngestRequest, ingest, refit, reindex};
use audience_ingest::predict::bgnbd::History;
use audience_ingest::predict::{self, Buyer, FitReport, TimeUnit};
use audience_ingest::render::text_hash;
use audience_tools::audience::AudienceDefinition;
use audience_tools::audience::compile::{Data, compile};
use audience_tools::dataset::Dataset;
use audience_tools::db::{Db, ReadLimits};
use audience_tools::embed::LazyEmbedder;
use audience_tools::metrics::query::{MetricsArgs, compile as compile_metrics};
use audience_tools::paths;
use audience_tools::vector::{VectorReader, VectorSearch, VectorStore};

/// One model for the whole test binary: loading it is the slowest part of a small test.
static EMBEDDER: LazyLock<LazyEmbedder> = LazyLock::new(|| LazyEmbedder::new(paths::models_dir()));

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// The example mappings the README documents: the tests ingest real-shaped files through them and nothing else.
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

/// Fields drop in order: the index reader must close its copy before the temporary directory is removed.
struct Env {
    db: Db,
    store: VectorStore,
    reader: VectorReader,
    dir: TempDir,
}

impl Env {
    async fn new() -> Result<Self> {
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("t_h3_{:08x}", rand::random::<u32>());
        let db = Db::connect(&url, &schema).await?;
        let dir = tempfile::tempdir()?;
        let store = VectorStore::new(None, dir.path(), &schema);
        let reader = store.reader();
        Ok(Self { db, store, reader, dir })
    }

    async fn ingest(&self, customers: &Path, events: &Path, as_of: Option<NaiveDate>) -> Result<IngestReport> {
        ingest(&self.db, &self.store, &EMBEDDER, self.request(customers, events, None, as_of)).await
    }

    /// Ingests an events file through one of the example mappings, which derive customers from the events.
    async fn ingest_mapped(&self, events: &Path, mapping: &str) -> Result<IngestReport> {
        let mapping = Mapping::from_file(&Path::new(EXAMPLES).join("mappings").join(mapping))?;
        ingest(&self.db, &self.store, &EMBEDDER, self.request(events, events, Some(mapping), None)).await
    }

    fn request(
        &self,
        customers: &Path,
        events: &Path,
        mapping: Option<Mapping>,
        as_of: Option<NaiveDate>,
    ) -> IngestRequest {
        IngestRequest {
            customers: customers.to_path_buf(),
            events: events.to_path_buf(),
            load: LoadOptions {
                strict: true,
                rejects_path: self.dir.path().join("rejects.csv"),
                max_rejects: Default::default(),
                mapping,
                dry_run: false,
            },
            as_of,
            predict: Default::default(),
        }
    }

    /// The current published version of the index, as readers see it.
    async fn index(&self) -> Result<Arc<dyn VectorSearch>> {
        Ok(self.reader.current().await?.expect("a published vector index version").search)
    }

    /// `customer_id -> text_hash` of every point of the current version.
    async fn stored_hashes(&self) -> Result<HashMap<u64, String>> {
        let ids: Vec<i64> = sqlx::query_scalar("SELECT customer_id FROM profiles").fetch_all(&self.db.pool).await?;
        let points = self.index().await?.retrieve(ids.into_iter().map(|id| id as u64).collect(), false).await?;
        Ok(points
            .into_iter()
            .filter_map(|p| p.payload.get("text_hash").and_then(|h| h.as_str()).map(|h| (p.id, h.to_owned())))
            .collect())
    }

    /// Writes a variant of the small fixture into the temp dir and returns (customers, events) paths.
    fn variant(&self, name: &str, edit: impl Fn(&str, &str) -> (String, String)) -> Result<(PathBuf, PathBuf)> {
        let customers = std::fs::read_to_string(fixture("small_customers.csv"))?;
        let events = std::fs::read_to_string(fixture("small_events.csv"))?;
        let (customers, events) = edit(&customers, &events);
        let customers_path = self.dir.path().join(format!("{name}_customers.csv"));
        let events_path = self.dir.path().join(format!("{name}_events.csv"));
        std::fs::write(&customers_path, customers)?;
        std::fs::write(&events_path, events)?;
        Ok((customers_path, events_path))
    }

    /// Generates the 500-customer sample (seed 42, events up to 2025-01-01) and ingests it.
    async fn ingest_sample(&self) -> Result<(GenerateReport, IngestReport)> {
        let generated = generate(&GenerateOptions {
            customers: 500,
            events_per_customer: 20,
            seed: 42,
            end_date: day("2025-01-01"),
            out_dir: self.dir.path().join("sample"),
            lift: None,
        })?;
        let report = self.ingest(&generated.customers_path, &generated.events_path, None).await?;
        Ok((generated, report))
    }

    /// Generates and ingests the 500-customer sample (seed 42) and returns each customer's hidden persona
    /// (labels.csv, never ingested).
    async fn load_persona_sample(&self) -> Result<HashMap<u64, String>> {
        let (generated, report) = self.ingest_sample().await?;
        assert_eq!(report.sync.embedded, 500);
        let mut labels = csv::Reader::from_path(&generated.labels_path)?;
        let mut persona = HashMap::new();
        for record in labels.records() {
            let record = record?;
            persona.insert(record[0].parse::<u64>()?, record[1].to_owned());
        }
        Ok(persona)
    }

    async fn drop_schema(self) -> Result<()> {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.db.schema)).execute(&self.db.pool).await?;
        Ok(())
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn day(s: &str) -> NaiveDate {
    s.parse().expect("test date")
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Facts {
    customer_id: i64,
    total_spent: String,
    order_count: i32,
    return_count: i32,
    recency_days: Option<i32>,
    r_score: i16,
    f_score: i16,
    m_score: i16,
    churned: bool,
    segment: String,
    interests: Vec<String>,
    preferred_colors: Vec<String>,
    likes_luxury: bool,
}

#[allow(clippy::too_many_arguments)]
fn facts(
    customer_id: i64,
    total_spent: &str,
    (order_count, return_count): (i32, i32),
    recency_days: Option<i32>,
    (r_score, f_score, m_score): (i16, i16, i16),
    churned: bool,
    segment: &str,
    interests: &[&str],
    preferred_colors: &[&str],
    likes_luxury: bool,
) -> Facts {
    Facts {
        customer_id,
        total_spent: total_spent.into(),
        order_count,
        return_count,
        recency_days,
        r_score,
        f_score,
        m_score,
        churned,
        segment: segment.into(),
        interests: interests.iter().map(|s| s.to_string()).collect(),
        preferred_colors: preferred_colors.iter().map(|s| s.to_string()).collect(),
        likes_luxury,
    }
}

async fn read_facts(db: &Db) -> Result<Vec<Facts>> {
    Ok(sqlx::query_as(
        "SELECT customer_id, total_spent::text AS total_spent, order_count, return_count, recency_days, \
         r_score, f_score, m_score, churned, segment, interests, preferred_colors, likes_luxury \
         FROM profiles ORDER BY customer_id",
    )
    .fetch_all(&db.pool)
    .await?)
}

/// Expected values worked out by hand from tests/fixtures/small_*.csv, as of 2024-06-30:
/// - Anna: purchases 500 + 300 + 150 = 950 (the -1 watches row is a return, excluded); last 06-20 -> 10 days.
///   Weights: jewelry 3+1+1 = 5, watches 3+1 = 4 (the return adds nothing), bags 3; black 3+1+3 = 7, gold 5.
/// - Ben: 2x5 + 5 + 15 + 15 = 45 over 4 orders; socks 6 and t_shirts 6 tie (name order), hats 2 (add_to_cart).
/// - Carla: 120 + 80 = 200, last purchase 02-01 -> 150 days -> churned; the recent scarf view still counts as interest.
/// - David: views only -> no purchases, not churned, scores 1/1/1.
/// - Emma: 60 + 2x40 = 140; her 999 watch on 07-05 is after as_of and ignored.
/// Scores place each tie group at the middle of its share of the 4 buyers and stretch the places to 1..5:
/// spend 45/140/200/950 -> places 1/8, 3/8, 5/8, 7/8 -> 1/2/4/5; orders 2,2/3/4 -> places 1/4, 5/8, 7/8 -> 1,1/3/5;
/// recency 150/29/10/2 days -> 1/2/4/5. VIP thresholds (80th percentile, continuous): spend 200 + 0.4 x 750 = 500,
/// orders 3 + 0.4 x 1 = 3.4 -> Anna (spend) and Ben (orders).
#[tokio::test]
async fn profile_facts_match_hand_computed_values() -> Result<()> {
    let env = Env::new().await?;
    let report =
        env.ingest(&fixture("small_customers.csv"), &fixture("small_events.csv"), Some(day("2024-06-30"))).await?;
    assert_eq!((report.load.customers, report.load.events, report.load.rejected), (5, 19, 0));
    assert_eq!(report.profiles.profiles, 5);
    assert_eq!(report.profiles.as_of, day("2024-06-30"));
    assert_eq!(
        (report.profiles.vip, report.profiles.churn_recovery, report.profiles.standard, report.profiles.likes_luxury),
        (2, 1, 2, 1)
    );

    let expected = vec![
        facts(
            1,
            "950.00",
            (3, 1),
            Some(10),
            (4, 3, 5),
            false,
            "VIP Loyalty",
            &["jewelry", "watches", "bags"],
            &["black", "gold"],
            true,
        ),
        facts(
            2,
            "45.00",
            (4, 0),
            Some(2),
            (5, 5, 1),
            false,
            "VIP Loyalty",
            &["socks", "t_shirts", "hats"],
            &["blue", "white"],
            false,
        ),
        facts(
            3,
            "200.00",
            (2, 0),
            Some(150),
            (1, 1, 4),
            true,
            "Churn Recovery",
            &["dresses", "jeans", "scarves"],
            &["blue", "red"],
            false,
        ),
        facts(4, "0.00", (0, 0), None, (1, 1, 1), false, "Standard Promo", &["shoes"], &["black"], false),
        facts(
            5,
            "140.00",
            (2, 0),
            Some(29),
            (2, 1, 2),
            false,
            "Standard Promo",
            &["running_gear", "yoga_wear"],
            &["green"],
            false,
        ),
    ];
    assert_eq!(read_facts(&env.db).await?, expected);

    // frequency/monetary mirror order_count/total_spent; purchase dates skip the return and the view-only customer.
    let (mirrors, first, last): (bool, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT bool_and(frequency = order_count AND monetary = total_spent), \
         (SELECT first_purchase AT TIME ZONE 'UTC' FROM profiles WHERE customer_id = 1)::text, \
         (SELECT last_purchase AT TIME ZONE 'UTC' FROM profiles WHERE customer_id = 1)::text FROM profiles",
    )
    .fetch_one(&env.db.pool)
    .await?;
    assert!(mirrors);
    assert_eq!(first.as_deref(), Some("2024-05-15 10:00:00"));
    assert_eq!(last.as_deref(), Some("2024-06-20 10:00:00"));

    let texts: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT customer_id, profile_text, text_hash FROM profiles ORDER BY customer_id")
            .fetch_all(&env.db.pool)
            .await?;
    assert_eq!(
        texts[0].1,
        "Shops for jewelry, watches and bags. Chooses black and gold; favourite colour black. Likes luxury items."
    );
    for (id, text, hash) in &texts {
        assert_eq!(hash, &text_hash(text), "hash of customer {id}");
        assert_eq!(text.contains("Likes luxury"), *id == 1, "luxury sentence of customer {id}");
        // Tastes only: money, counts and recency are for clauses.
        assert!(!text.chars().any(|c| c.is_ascii_digit()), "numbers in the text of customer {id}: {text}");
    }

    // Without --as-of the newest event's day is used, so Emma's 07-05 watch counts.
    let report = env.ingest(&fixture("small_customers.csv"), &fixture("small_events.csv"), None).await?;
    assert_eq!(report.profiles.as_of, day("2024-07-05"));
    let emma = read_facts(&env.db).await?.into_iter().find(|f| f.customer_id == 5).expect("Emma's profile");
    assert_eq!((emma.total_spent.as_str(), emma.order_count, emma.recency_days), ("1139.00", 3, Some(0)));
    assert!(emma.likes_luxury);
    assert_eq!(emma.interests, ["running_gear", "watches", "yoga_wear"]);

    env.drop_schema().await
}

#[tokio::test]
async fn second_ingest_embeds_only_changed_profiles_and_deletes_removed_ones() -> Result<()> {
    let env = Env::new().await?;
    let as_of = Some(day("2024-06-30"));
    let (customers, events) = (fixture("small_customers.csv"), fixture("small_events.csv"));

    let first = env.ingest(&customers, &events, as_of).await?.sync;
    assert_eq!((first.embedded, first.unchanged, first.deleted), (5, 0, 0));
    assert!(first.tokens > 5 * 10, "embedding tokens are counted: {}", first.tokens);

    let again = env.ingest(&customers, &events, as_of).await?.sync;
    assert_eq!((again.embedded, again.unchanged, again.deleted, again.tokens), (0, 5, 0, 0));

    // Emma's age is no taste: it changes no text, and nothing is embedded again.
    let (older, same_events) = env.variant("older", |c, e| (c.replace("FR,52,", "FR,53,"), e.to_owned()))?;
    let aged = env.ingest(&older, &same_events, as_of).await?.sync;
    assert_eq!((aged.embedded, aged.unchanged, aged.deleted), (0, 5, 0));
    // Her favourite colour is: it changes only her own text.
    let (recoloured, same_events) =
        env.variant("recoloured", |c, e| (c.replace("FR,52,green", "FR,52,purple"), e.to_owned()))?;
    let changed = env.ingest(&recoloured, &same_events, as_of).await?.sync;
    assert_eq!((changed.embedded, changed.unchanged, changed.deleted), (1, 4, 0));
    let text: String =
        sqlx::query_scalar("SELECT profile_text FROM profiles WHERE customer_id = 5").fetch_one(&env.db.pool).await?;
    assert!(text.contains("favourite colour purple"), "{text}");

    // David has no purchases, so removing him changes nobody else's quintiles.
    let (without_david, his_events_gone) = env.variant("no_david", |c, e| {
        let keep = |text: &str, drop: &str| -> String {
            text.lines().filter(|l| !l.starts_with(drop)).map(|l| format!("{l}\n")).collect()
        };
        (keep(&c.replace("FR,52,green", "FR,52,purple"), "4,"), keep(e, "16,"))
    })?;
    let removed = env.ingest(&without_david, &his_events_gone, as_of).await?.sync;
    assert_eq!((removed.embedded, removed.unchanged, removed.deleted), (0, 4, 1));
    assert_eq!(env.index().await?.count(None).await?, 4);
    let stored = env.stored_hashes().await?;
    let in_db: Vec<(i64, String)> =
        sqlx::query_as("SELECT customer_id, text_hash FROM profiles").fetch_all(&env.db.pool).await?;
    let in_db: HashMap<u64, String> = in_db.into_iter().map(|(id, hash)| (id as u64, hash)).collect();
    assert_eq!(stored, in_db);

    // `audience reindex` embeds everything again.
    let full = reindex(&env.db, &env.store, &EMBEDDER).await?;
    assert_eq!((full.embedded, full.unchanged, full.deleted), (4, 0, 0));

    env.drop_schema().await
}

/// A value with a line break (a quoted CSV field over two lines) goes through both COPY paths intact: the customer
/// row, and the profile text rendered from it.
#[tokio::test]
async fn a_value_with_a_line_break_reaches_the_profile_text_intact() -> Result<()> {
    let env = Env::new().await?;
    let (customers, events) = env.variant("line_break", |c, e| {
        let c = c.replace("Anna,Nowak", "\"Anna\nMaria\",Nowak").replace("PL,34,black,", "PL,34,\"jet\nblack\",");
        (c, e.to_owned())
    })?;
    let report = env.ingest(&customers, &events, Some(day("2024-06-30"))).await?;
    assert_eq!((report.load.customers, report.load.rejected, report.profiles.profiles), (5, 0, 5));
    let (first_name, color, text, hash): (String, String, String, String) = sqlx::query_as(
        "SELECT c.first_name, c.favorite_color, p.profile_text, p.text_hash \
         FROM customers c JOIN profiles p USING (customer_id) WHERE customer_id = 1",
    )
    .fetch_one(&env.db.pool)
    .await?;
    assert_eq!((first_name.as_str(), color.as_str()), ("Anna\nMaria", "jet\nblack"));
    assert!(text.ends_with("favourite colour jet\nblack. Likes luxury items."), "{text:?}");
    assert_eq!(hash, text_hash(&text));
    let stored = env.index().await?.retrieve(vec![1], false).await?;
    assert_eq!(stored[0].payload.get("text_hash").and_then(|v| v.as_str()), Some(hash.as_str()));

    env.drop_schema().await
}

/// Regression (issue 22, item 20): on a real purchase log most customers share one of a few profile texts, and each
/// profile was embedded on its own (84 of 88 s of an ingest). Each distinct text now goes through the model once per
/// ingest, also when its profiles span several chunks, and every profile with that text gets the same vector.
#[tokio::test]
async fn each_distinct_profile_text_is_embedded_once() -> Result<()> {
    let env = Env::new().await?;
    let customers_count = 2 * audience_ingest::sync::CHUNK + 100;
    let mut customers = String::from("customer_id,country\n");
    let mut events = String::from("event_id,customer_id,event_type,product,price,quantity,ts\n");
    for id in 1..=customers_count {
        let product = if id % 2 == 0 { "socks" } else { "watches" };
        customers.push_str(&format!("{id},PL\n"));
        events.push_str(&format!("{id},{id},purchase,{product},20.00,1,2024-06-01T10:00:00Z\n"));
    }
    let (customers_path, events_path) = (env.dir.path().join("same_c.csv"), env.dir.path().join("same_e.csv"));
    std::fs::write(&customers_path, customers)?;
    std::fs::write(&events_path, events)?;
    let sync = env.ingest(&customers_path, &events_path, None).await?.sync;

    let texts: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT profile_text FROM profiles ORDER BY 1").fetch_all(&env.db.pool).await?;
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert_eq!((sync.embedded, sync.texts_embedded), (customers_count as u64, 2));
    let alone = EMBEDDER.embed(texts.clone()).await?;
    assert_eq!(sync.tokens, alone.tokens, "only the two texts went through the model");

    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT customer_id, profile_text FROM profiles").fetch_all(&env.db.pool).await?;
    let ids: Vec<u64> = rows.iter().map(|(id, _)| *id as u64).collect();
    let points = env.index().await?.retrieve(ids, true).await?;
    assert_eq!(points.len(), customers_count);
    let text_of: HashMap<u64, &str> = rows.iter().map(|(id, text)| (*id as u64, text.as_str())).collect();
    let mut vector_of: HashMap<&str, Vec<f32>> = HashMap::new();
    for point in points {
        let vector = point.vector.expect("asked for vectors");
        let first = vector_of.entry(text_of[&point.id]).or_insert_with(|| vector.clone());
        assert_eq!(*first, vector, "customer {} has another vector than its text's", point.id);
    }
    env.drop_schema().await
}

/// On the generated 500-customer sample, each taste intent finds the hidden persona it describes: precision@10
/// against labels.csv (the personas are never ingested). The profile text carries tastes, not numbers, for this.
#[tokio::test]
async fn taste_intents_rank_their_persona_first() -> Result<()> {
    let env = Env::new().await?;
    let persona = env.load_persona_sample().await?;
    let index = env.index().await?;
    let mut lowest: f64 = 1.0;
    for (intent, expected) in [
        ("luxury watches and jewelry", "luxury"),
        ("running, yoga and sportswear", "sporty"),
        ("dresses, scarves and fashion", "fashion"),
        ("cheap basics like socks and t-shirts", "bargain"),
    ] {
        let total = persona.values().filter(|p| *p == expected).count();
        let (query, _) = EMBEDDER.embed_one(intent.into()).await?;
        let hits = index.search(query, None, 10).await?;
        let relevant = hits.iter().filter(|hit| persona.get(&hit.id).is_some_and(|p| p == expected)).count();
        let precision = relevant as f64 / hits.len() as f64;
        println!("precision@10 for {intent:?}: {precision:.2} ({total} {expected} of 500 customers)");
        lowest = lowest.min(precision);
    }
    assert!(lowest >= 0.9, "the weakest taste intent has precision@10 {lowest:.2}, below 0.9");
    drop(index);
    env.drop_schema().await
}

/// Behaviour, money and recency are answered by clauses, exactly, not by the text: the profile text carries tastes
/// only, so "stopped buying long ago" as an intent ranks customers regardless of recency, while the recency clause
/// returns exactly the customers who fit.
#[tokio::test]
async fn recency_questions_are_answered_by_clauses_not_by_the_text() -> Result<()> {
    use audience_tools::audience::{AudienceDefinition, report::evaluate};
    use audience_tools::db::ReadLimits;
    use audience_tools::stores::Stores;
    use audience_tools::trace::ToolTrace;

    let env = Env::new().await?;
    env.load_persona_sample().await?;
    let stale: Vec<i64> = sqlx::query_scalar("SELECT customer_id FROM profiles WHERE recency_days >= 120")
        .fetch_all(&env.db.pool)
        .await?;
    let fits = |ids: &[i64]| ids.iter().filter(|id| stale.contains(id)).count() as f64 / ids.len().max(1) as f64;

    let stores = Stores::new(env.db.clone(), env.store.reader(), EMBEDDER.clone(), ReadLimits::default());
    let clause = AudienceDefinition::from_json(
        r#"{"version": 1, "include": [{"type": "profile", "field": "recency_days", "op": ">=", "value": 120}], "limit": 10}"#,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report =
        evaluate(&stores, &clause, &[], &mut ToolTrace::new("test")).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let members: Vec<i64> = sqlx::query_scalar(&report.sql).fetch_all(&env.db.pool).await?;
    assert_eq!((report.size as usize, fits(&members)), (stale.len(), 1.0), "the clause is exact");

    let (query, _) = EMBEDDER.embed_one("customers who stopped buying a long time ago".into()).await?;
    let hits = env.index().await?.search(query, None, 10).await?;
    let by_intent = fits(&hits.iter().map(|hit| hit.id as i64).collect::<Vec<_>>());
    println!(
        "recency_days >= 120: {} of 500 customers; the clause returns all and only them, the same words as an intent \
         rank {by_intent:.2} of their top 10 among them",
        stale.len()
    );
    assert!(by_intent < 1.0, "the text carries no recency, so the intent cannot be exact ({by_intent:.2})");
    drop(stores);
    env.drop_schema().await
}

/// Spend, orders, last purchase and churn of every customer, keyed by the id as the file has it.
type Outcome = HashMap<String, (String, i32, Option<NaiveDate>, bool)>;

async fn outcomes(db: &Db) -> Result<Outcome> {
    let rows: Vec<(String, String, i32, Option<NaiveDate>, bool)> = sqlx::query_as(
        "SELECT external_id, total_spent::text, order_count, (last_purchase AT TIME ZONE 'UTC')::date, churned \
         FROM profiles",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(|(id, spent, orders, last, churned)| (id, (spent, orders, last, churned))).collect())
}

/// The same outcome computed by independent SQL over `raw(customer TEXT, day DATE, purchased BOOL, value NUMERIC)`
/// in schema `db.schema`: churned when the last purchase is 90 or more days before the newest event.
async fn independent_outcomes(db: &Db) -> Result<Outcome> {
    let rows: Vec<(String, String, i32, Option<NaiveDate>, bool)> = sqlx::query_as(
        "SELECT customer, (coalesce(sum(value) FILTER (WHERE purchased), 0))::numeric(14,2)::text, \
                (count(*) FILTER (WHERE purchased))::int, max(day) FILTER (WHERE purchased), \
                coalesce((SELECT max(day) FROM raw) - max(day) FILTER (WHERE purchased) >= 90, false) \
         FROM raw GROUP BY customer",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(|(id, spent, orders, last, churned)| (id, (spent, orders, last, churned))).collect())
}

/// Loads the test's own reading of a raw fixture into `raw`, for [`independent_outcomes`].
async fn load_raw(db: &Db, rows: &[(String, NaiveDate, bool, Option<String>)]) -> Result<()> {
    sqlx::query("CREATE TABLE raw (customer TEXT, day DATE, purchased BOOL, value NUMERIC)").execute(&db.pool).await?;
    for (customer, day, purchased, value) in rows {
        sqlx::query("INSERT INTO raw VALUES ($1, $2, $3, $4::numeric)")
            .bind(customer)
            .bind(day)
            .bind(purchased)
            .bind(value)
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

/// The real case: a headerless, whitespace-separated purchase log (customer, YYYYMMDD, items, dollar value of the
/// line) with no customers file, ingested through examples/mappings/purchase_log.toml alone. The dollar value is
/// the line total: spend must not multiply it by the item count.
#[tokio::test]
async fn a_headerless_whitespace_purchase_log_loads_through_its_mapping_alone() -> Result<()> {
    let env = Env::new().await?;
    let log = fixture("purchase_log.txt");
    let report = env.ingest_mapped(&log, "purchase_log.toml").await?;
    assert_eq!((report.load.customers, report.load.events, report.load.rejected), (12, 41, 0));

    let raw: Vec<(String, NaiveDate, bool, Option<String>)> = std::fs::read_to_string(&log)?
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let day = NaiveDate::parse_from_str(fields[1], "%Y%m%d").unwrap();
            (fields[0].to_owned(), day, true, Some(fields[3].to_owned()))
        })
        .collect();
    load_raw(&env.db, &raw).await?;
    let expected = independent_outcomes(&env.db).await?;
    assert_eq!(outcomes(&env.db).await?, expected);
    // Spot checks against the file: the ids keep their leading zeros; 00003 spent 20.76+20.76+19.54+57.45+20.96+16.99.
    assert_eq!(expected["00003"], ("156.46".to_owned(), 6, Some(day("1998-05-28")), false));
    assert!(expected["00001"].3, "a single purchase in January 1997 is churned by June 1998");

    // Nothing but the id is known of these customers: unknown, not invented.
    let unknown: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM profiles WHERE country IS NULL AND email IS NULL AND first_name IS NULL",
    )
    .fetch_one(&env.db.pool)
    .await?;
    assert_eq!(unknown, 12);

    // Ties share a score, and the scale still runs 1..5: the one-time buyers score f 1, not a middling 3.
    let (one_time, lowest, highest): (Vec<i16>, i16, i16) = sqlx::query_as(
        "SELECT array_agg(DISTINCT f_score) FILTER (WHERE order_count = 1), min(f_score), max(f_score) FROM profiles",
    )
    .fetch_one(&env.db.pool)
    .await?;
    assert_eq!((one_time, lowest, highest), (vec![1], 1, 5));
    env.drop_schema().await
}

/// The real case: a gzipped web clickstream with string and UUID user ids, page events mapped by a value map with a
/// default, no prices and no country, ingested through examples/mappings/clickstream.toml alone.
#[tokio::test]
async fn a_gzipped_clickstream_with_string_ids_loads_through_its_mapping_alone() -> Result<()> {
    let env = Env::new().await?;
    let clicks = fixture("clickstream.csv.gz");
    let report = env.ingest_mapped(&clicks, "clickstream.toml").await?;
    assert_eq!((report.load.customers, report.load.events, report.load.rejected), (6, 120, 0));
    // No prices: every buyer ties on spend, which the summary says, and spend makes nobody VIP.
    assert!(report.profiles.notes.iter().any(|note| note.contains("monetary")), "{:?}", report.profiles.notes);

    let text = {
        use std::io::Read;
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&clicks)?).read_to_string(&mut text)?;
        text
    };
    let raw: Vec<(String, NaiveDate, bool, Option<String>)> = text
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let day = NaiveDate::parse_from_str(&fields[1][..10], "%Y-%m-%d").unwrap();
            (fields[0].to_owned(), day, fields[2] == "purchase_complete", None)
        })
        .collect();
    load_raw(&env.db, &raw).await?;
    assert_eq!(outcomes(&env.db).await?, independent_outcomes(&env.db).await?);

    // The ids are the file's; the value map turned carts into add_to_cart and every other page into a view.
    let kinds: Vec<(String, i64)> =
        sqlx::query_as("SELECT event_type, count(*) FROM events GROUP BY event_type ORDER BY event_type")
            .fetch_all(&env.db.pool)
            .await?;
    let carts = text.lines().filter(|l| l.split(',').nth(2) == Some("cart")).count() as i64;
    let purchases = raw.iter().filter(|r| r.2).count() as i64;
    assert_eq!(
        kinds,
        [
            ("add_to_cart".to_owned(), carts),
            ("purchase".to_owned(), purchases),
            ("view".to_owned(), 120 - carts - purchases)
        ]
    );
    let (country_unknown, vip): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE country IS NULL), count(*) FILTER (WHERE segment = 'VIP Loyalty' AND order_count = 0) FROM profiles",
    )
    .fetch_one(&env.db.pool)
    .await?;
    assert_eq!((country_unknown, vip), (6, 0));
    // Spend says nothing here: every buyer scores the neutral 3 in it, and nobody is VIP by spend.
    let m_scores: Vec<i16> = sqlx::query_scalar("SELECT DISTINCT m_score FROM profiles WHERE order_count > 0")
        .fetch_all(&env.db.pool)
        .await?;
    assert_eq!(m_scores, [3]);
    let uuid: String = sqlx::query_scalar("SELECT external_id FROM profiles WHERE external_id LIKE '7f3c%'")
        .fetch_one(&env.db.pool)
        .await?;
    assert_eq!(uuid, "7f3c9a2e-1b4d-4c8e-9a0f-3d2b1c0e9f8a");
    env.drop_schema().await
}

/// A clickstream of 200 string-id users, each with a few page views and a purchase; `changed` users view one more
/// page, which changes their interests and nothing else of anyone.
fn string_id_clickstream(changed: &[usize], dropped: Option<usize>) -> String {
    let categories = ["shoes", "bags", "watches", "socks", "books", "hats"];
    let mut text = String::from("user_id,timestamp,event_name,category,platform\n");
    for user in (0..200).filter(|user| Some(*user) != dropped) {
        for step in 0..3 {
            let category = categories[(user + step) % categories.len()];
            let event = if step == 2 { "purchase_complete" } else { "product_page" };
            text.push_str(&format!(
                "user_{user:04},2024-03-{:02}T10:00:00Z,{event},{category},web\n",
                1 + step + user % 20
            ));
        }
        if changed.contains(&user) {
            text.push_str(&format!("user_{user:04},2024-03-25T10:00:00Z,product_page,jewelry,web\n"));
        }
    }
    text
}

/// Re-ingest after 1% of the users changed re-embeds exactly those users, with string ids; every id keeps its
/// key across ingests, also when another user leaves.
#[tokio::test]
async fn string_ids_keep_their_keys_and_a_one_percent_change_re_embeds_exactly_those_users() -> Result<()> {
    let env = Env::new().await?;
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let path = env.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let keys = || async {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT external_id, customer_id FROM profiles").fetch_all(&env.db.pool).await?;
        anyhow::Ok(rows.into_iter().collect::<HashMap<String, i64>>())
    };
    let first = env.ingest_mapped(&write("v1.csv", string_id_clickstream(&[], None))?, "clickstream.toml").await?;
    assert_eq!((first.sync.embedded, first.load.customers), (200, 200));
    let keys_before = keys().await?;
    assert!(keys_before.values().all(|key| *key > audience_ingest::keys::STRING_KEY_BASE));

    let changed =
        env.ingest_mapped(&write("v2.csv", string_id_clickstream(&[17, 140], None))?, "clickstream.toml").await?;
    assert_eq!((changed.sync.embedded, changed.sync.unchanged, changed.sync.deleted), (2, 198, 0));
    let texts: Vec<String> =
        sqlx::query_scalar("SELECT external_id FROM profiles WHERE 'jewelry' = ANY(interests) ORDER BY external_id")
            .fetch_all(&env.db.pool)
            .await?;
    assert_eq!(texts, ["user_0017", "user_0140"]);
    assert_eq!(keys().await?, keys_before, "an unchanged id keeps its key");

    // user_0050 leaves: only their point goes, and the ids after them keep their keys.
    let left =
        env.ingest_mapped(&write("v3.csv", string_id_clickstream(&[17, 140], Some(50)))?, "clickstream.toml").await?;
    assert_eq!((left.sync.embedded, left.sync.unchanged, left.sync.deleted), (0, 199, 1));
    let mut expected = keys_before.clone();
    expected.remove("user_0050");
    assert_eq!(keys().await?, expected);
    env.drop_schema().await
}

/// Reads a reader transaction runs: the membership's order (the derived tables, then the base tables), and each
/// pair alone, as the report's separate statements do.
const READS: [&str; 3] = [
    "SELECT count(*) FROM customer_facts f WHERE EXISTS (SELECT 1 FROM event_totals t WHERE t.customer_id = \
     f.customer_id) AND EXISTS (SELECT 1 FROM profiles p WHERE p.customer_id = f.customer_id) AND EXISTS (SELECT 1 \
     FROM events e WHERE e.customer_id = f.customer_id) AND EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = \
     f.customer_id)",
    "SELECT count(*) FROM customer_facts f JOIN profiles p ON p.customer_id = f.customer_id",
    "SELECT count(*) FROM event_totals t JOIN events e ON e.customer_id = t.customer_id",
];

/// The reported case: ingests beside readers that read the derived tables and then the base tables failed with
/// `cannot drop the old tables: deadlock detected` (and a reader could be the one that failed instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingests_and_concurrent_readers_never_deadlock() -> Result<()> {
    let env = Env::new().await?;
    let (customers, events) = (fixture("small_customers.csv"), fixture("small_events.csv"));
    env.ingest(&customers, &events, None).await?;

    let stop = Arc::new(AtomicBool::new(false));
    // As many readers as the reader pool has connections.
    let readers: Vec<_> = (0..4)
        .map(|reader| {
            let (db, stop) = (env.db.clone(), stop.clone());
            tokio::spawn(async move {
                let mut transactions = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut tx = db.begin_read_only(ReadLimits::default()).await?;
                    // Half the readers read in the membership's order, half in another.
                    let order: Vec<&str> =
                        if reader % 2 == 0 { READS.to_vec() } else { READS.iter().rev().copied().collect() };
                    for sql in order {
                        sqlx::query(sql).execute(&mut *tx).await.with_context(|| format!("reader {reader}: {sql}"))?;
                    }
                    tx.commit().await?;
                    transactions += 1;
                }
                anyhow::Ok(transactions)
            })
        })
        .collect();

    let started = Instant::now();
    let mut ingests = 0;
    let mut failed = None;
    while ingests < 10 && started.elapsed() < Duration::from_secs(60) {
        match env.ingest(&customers, &events, None).await {
            Ok(_) => ingests += 1,
            Err(error) => {
                failed = Some(error);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let transactions = reader.await??;
        assert!(transactions > 0, "a reader never finished a transaction");
    }
    if let Some(error) = failed {
        panic!("ingest {} failed: {error:#}", ingests + 1);
    }
    assert_eq!(ingests, 10, "10 ingests did not finish in 60 s");
    env.drop_schema().await
}

/// The reported case: during ingests, an intent-ranked audience counted one version while its members, names and
/// "why" lines came from the other (8 of 25 runs), and one listed id did not exist in the counted version.
/// Two versions alternate here: `A` (the fixture: 4 buyers) and `B` (every first name ends in "Bis", and a fifth
/// buyer). Every answer must be wholly one of them, and name the one it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_during_ingests_comes_from_one_data_version_and_names_it() -> Result<()> {
    use audience_tools::audience::report::evaluate;
    use audience_tools::audience::{AudienceReport, Edit};
    use audience_tools::stores::Stores;
    use audience_tools::trace::ToolTrace;

    let env = Env::new().await?;
    let a = (fixture("small_customers.csv"), fixture("small_events.csv"));
    let b = env.variant("b", |c, e| {
        let mut customers: String = c
            .lines()
            .enumerate()
            .map(|(line, row)| {
                let mut fields: Vec<String> = row.split(',').map(str::to_owned).collect();
                if line > 0 {
                    fields[1].push_str("Bis");
                }
                fields.join(",") + "\n"
            })
            .collect();
        customers.push_str("6,EveBis,Lind,eve.lind6@example.com,SE,29,green,2023-05-05\n");
        (customers, format!("{e}20,6,purchase,bags,green,80.00,1,2024-06-30T10:00:00Z\n"))
    })?;
    let expected_size = |label: char| if label == 'A' { 4 } else { 5 };

    // Which version holds which files: recorded after each ingest (ingests run one at a time).
    let versions: Arc<std::sync::Mutex<HashMap<i64, char>>> = Arc::default();
    let current_version = || async {
        anyhow::Ok(sqlx::query_scalar::<_, i64>("SELECT version FROM dataset").fetch_one(&env.db.pool).await?)
    };
    env.ingest(&a.0, &a.1, None).await?;
    let version = current_version().await?;
    versions.lock().unwrap().insert(version, 'A');

    let definition = serde_json::from_value::<Edit>(serde_json::json!({
        "include": [{"type": "event", "event_type": "purchase"}],
        "intent": "luxury watches and jewellery",
        "limit": 50
    }))?
    .apply(None)
    .map_err(|invalid| anyhow::anyhow!(invalid.0))?;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let stores = Stores::new(env.db.clone(), env.store.reader(), EMBEDDER.clone(), ReadLimits::default());
            let (definition, stop) = (definition.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reports: Vec<AudienceReport> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut trace = ToolTrace::new("find_audience");
                    match evaluate(&stores, &definition, &[], &mut trace).await {
                        Ok(report) => reports.push(report),
                        // On a loaded machine a read can straddle an ingest's commit on every attempt; it is then
                        // refused whole, which is correct too. A mixed answer is what must never come back.
                        Err(refused) if refused.to_string().contains("the data changed during each") => {}
                        Err(other) => return Err(anyhow::Error::from(other)),
                    }
                }
                anyhow::Ok(reports)
            })
        })
        .collect();

    for ingest in 0..10 {
        let (label, (customers, events)) = if ingest % 2 == 0 { ('B', &b) } else { ('A', &a) };
        env.ingest(customers, events, None).await?;
        let version = current_version().await?;
        versions.lock().unwrap().insert(version, label);
    }
    stop.store(true, Ordering::Relaxed);
    let versions = versions.lock().unwrap().clone();
    let mut answers = 0;
    for reader in readers {
        for report in reader.await?? {
            let version = report.data_version.expect("the answer names its data version");
            let label = versions[&version];
            let names: Vec<&str> = report.members.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(report.size, expected_size(label), "version {version} ({label}): size, members {names:?}");
            assert_eq!(report.members.len() as u64, report.size, "version {version} ({label}): {names:?}");
            assert!(
                names.iter().all(|name| name.contains("Bis") == (label == 'B')),
                "version {version} ({label}) lists {names:?}"
            );
            answers += 1;
        }
    }
    assert!(answers > 0, "no reader finished an answer");
    env.drop_schema().await
}

/// The reported case: a log with no product column gives every customer the text "No shopping interests yet.", so
/// an intent scored every member alike while the answer still said `ranked_by: "intent"`. The answer says why it
/// cannot rank by the intent, and ranks by spend.
#[tokio::test]
async fn an_intent_over_identical_profile_texts_ranks_by_spend_and_says_why() -> Result<()> {
    use audience_tools::audience::Edit;
    use audience_tools::audience::report::evaluate;
    use audience_tools::stores::Stores;
    use audience_tools::trace::ToolTrace;

    let env = Env::new().await?;
    env.ingest_mapped(&fixture("purchase_log.txt"), "purchase_log.toml").await?;
    let stores = Stores::new(env.db.clone(), env.store.reader(), EMBEDDER.clone(), ReadLimits::default());
    let definition = serde_json::from_value::<Edit>(serde_json::json!({"intent": "luxury watches", "limit": 5}))?
        .apply(None)
        .map_err(|invalid| anyhow::anyhow!(invalid.0))?;
    let report = evaluate(&stores, &definition, &[], &mut ToolTrace::new("find_audience")).await?;
    assert_eq!(report.ranked_by, "total_spent");
    assert!(report.warnings.iter().any(|w| w.contains("the intent cannot rank them")), "{:?}", report.warnings);
    let spend: Vec<String> =
        sqlx::query_scalar("SELECT external_id FROM profiles ORDER BY total_spent DESC, customer_id LIMIT 5")
            .fetch_all(&env.db.pool)
            .await?;
    let listed: Vec<&str> = report.members.iter().map(|m| m.external_id.as_str()).collect();
    assert_eq!(listed, spend);
    env.drop_schema().await
}

/// A buyer's purchase history as the predicted fields define it, written here from the live `events` table: every
/// sale of one UTC day is one purchase, times in days up to `as_of`, the mean spend of the repeat days.
async fn independent_buyers(db: &Db, as_of: NaiveDate) -> Result<Vec<(i64, Buyer)>> {
    let rows: Vec<(i64, Vec<NaiveDate>, Vec<f64>)> = sqlx::query_as(
        "SELECT customer_id, array_agg(day ORDER BY day), array_agg(spend ORDER BY day) FROM ( \
             SELECT customer_id, (ts AT TIME ZONE 'UTC')::date AS day, sum(amount)::float8 AS spend FROM events \
             WHERE event_type = 'purchase' AND quantity > 0 AND (ts AT TIME ZONE 'UTC')::date <= $1 GROUP BY 1, 2) d \
         GROUP BY customer_id ORDER BY customer_id",
    )
    .bind(as_of)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, days, spends)| {
            let x = days.len() as u32 - 1;
            let days_between = |a: NaiveDate, b: NaiveDate| (b - a).num_days() as f64;
            let history =
                History { x, t_x: days_between(days[0], days[days.len() - 1]), t: days_between(days[0], as_of) };
            let mean_repeat_spend = if x > 0 { spends[1..].iter().sum::<f64>() / f64::from(x) } else { 0.0 };
            (id, Buyer { history, mean_repeat_spend })
        })
        .collect())
}

type Predicted = (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

async fn predicted_fields(db: &Db) -> Result<Vec<Predicted>> {
    Ok(sqlx::query_as(
        "SELECT customer_id, p_alive, expected_purchases, expected_avg_spend, clv_12m FROM profiles ORDER BY customer_id",
    )
    .fetch_all(&db.pool)
    .await?)
}

/// Issue 23: the generated sample's purchase log fits both models; every buyer's predicted fields are the fit's
/// predictions for their history (summarised here independently, in SQL over `events`), prospects have none, and
/// the fit is stored with the data version it describes.
#[tokio::test]
async fn predicted_fields_follow_the_fit_stored_with_the_data() -> Result<()> {
    let env = Env::new().await?;
    let (_, report) = env.ingest_sample().await?;
    let fit = &report.profiles.prediction;
    assert!(fit.purchases.is_some() && fit.spend.is_some(), "{:?}", fit.notes);
    assert_eq!(fit.time_unit, TimeUnit::Days);
    // What the fit costs an ingest is reported, as the part of the profiles stage it took (`bench ingest` shows its
    // share of the total).
    let times = &report.times;
    assert!(times.predict > 0.0 && times.predict < times.profiles, "{times:?}");
    assert!(times.derived > 0.0 && times.predict + times.derived < times.profiles, "{times:?}");
    let stored: sqlx::types::Json<FitReport> =
        sqlx::query_scalar("SELECT prediction_fit FROM dataset WHERE id = 1").fetch_one(&env.db.pool).await?;
    assert_eq!(&stored.0, fit);

    let buyers: HashMap<i64, Buyer> = independent_buyers(&env.db, report.profiles.as_of).await?.into_iter().collect();
    assert_eq!(buyers.len() as u64, fit.buyers);
    let close = |stored: Option<f64>, computed: Option<f64>, decimals: i32| match (stored, computed) {
        (Some(s), Some(c)) => (s - c).abs() <= 0.5 * 10f64.powi(-decimals) + 1e-9,
        (s, c) => s.is_none() && c.is_none(),
    };
    for (id, p_alive, expected, spend, clv) in predicted_fields(&env.db).await? {
        let Some(buyer) = buyers.get(&id) else {
            assert_eq!((p_alive, expected, spend, clv), (None, None, None, None), "prospect {id}");
            continue;
        };
        let want = fit.predict(buyer);
        assert!(p_alive.is_some_and(|p| (0.0..=1.0).contains(&p)), "customer {id}");
        assert!(close(p_alive, want.p_alive, 4) && close(expected, want.expected_purchases, 4), "customer {id}");
        assert!(close(spend, want.expected_avg_spend, 2) && close(clv, want.clv, 2), "customer {id}: {clv:?} {want:?}");
    }

    // Audience clauses on the predicted fields (compiled over customer_facts) count what SQL over profiles counts;
    // a customer without a prediction is in no comparison, and so never excluded by one.
    let data = Data { as_of: report.profiles.as_of, derived_tables: true };
    let cases = [
        (
            json!({"include": [{"type": "profile", "field": "p_alive", "op": "<", "value": 0.3},
                               {"type": "profile", "field": "total_spent", "op": ">", "value": 500}]}),
            "p_alive < 0.3 AND total_spent > 500",
        ),
        (
            json!({"include": [{"type": "profile", "field": "expected_purchases", "op": ">=", "value": 0.3}]}),
            "expected_purchases >= 0.3",
        ),
        (
            json!({"exclude": [{"type": "profile", "field": "p_alive", "op": "<", "value": 0.5}]}),
            "NOT coalesce(p_alive < 0.5, false)",
        ),
        (
            json!({"include": [{"type": "profile", "field": "clv_12m", "op": ">", "value": 100},
                               {"type": "profile", "field": "expected_avg_spend", "op": "<=", "value": 200}]}),
            "clv_12m > 100 AND expected_avg_spend <= 200",
        ),
    ];
    for (clauses, condition) in cases {
        let mut definition = json!({"version": 1, "limit": 10});
        for (key, value) in clauses.as_object().unwrap() {
            definition[key] = value.clone();
        }
        let definition = AudienceDefinition::from_json(&definition.to_string())?;
        let membership = compile(&definition, data)?.membership;
        assert!(membership.contains("FROM customer_facts p"), "{membership}");
        let size: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM ({membership}) m")).fetch_one(&env.db.pool).await?;
        let expected: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM profiles WHERE {condition}"))
            .fetch_one(&env.db.pool)
            .await?;
        println!("{condition}: {size} of 500");
        assert_eq!(size, expected, "{condition}");
        assert!(size > 0 && size < 500, "{condition}: {size} customers says nothing about the clause");
    }

    // The catalogue's measures on the predicted fields, by segment, against SQL written here over profiles.
    let args: MetricsArgs = serde_json::from_value(
        json!({"measures": ["average_p_alive", "predicted_value"], "dimensions": ["segment"], "order_by": "segment"}),
    )?;
    let compiled = compile_metrics(&args.check()?, data)?;
    let got: Vec<(String, Option<f64>, Option<f64>)> = sqlx::query_as(&compiled.sql).fetch_all(&env.db.pool).await?;
    let want: Vec<(String, Option<f64>, Option<f64>)> =
        sqlx::query_as("SELECT segment, avg(p_alive), sum(clv_12m) FROM profiles GROUP BY segment ORDER BY segment")
            .fetch_all(&env.db.pool)
            .await?;
    assert_eq!(got.len(), want.len());
    for ((segment, alive, value), (want_segment, want_alive, want_value)) in got.iter().zip(&want) {
        assert_eq!(segment, want_segment);
        let same = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-6 * b.abs().max(1.0),
            (a, b) => a.is_none() && b.is_none(),
        };
        assert!(
            same(*alive, *want_alive) && same(*value, *want_value),
            "{segment}: {alive:?} {value:?} vs {want_alive:?} {want_value:?}"
        );
    }
    env.drop_schema().await
}

/// Issue 23's edge cases: no purchases at all, one buyer, and buyers who all bought once leave every predicted field
/// unknown (NULL) and say why, instead of a number from a model that could not be fitted.
#[tokio::test]
async fn data_the_purchase_model_cannot_describe_leaves_the_predictions_unknown() -> Result<()> {
    let env = Env::new().await?;
    let sales = |line: &str| line.contains(",purchase,") && !line.contains(",-1,");
    // (variant, the event line kept (by its index in the file) or rewritten, the reason a note must give)
    type Case<'a> = (&'a str, Box<dyn Fn(usize, &str) -> Option<String>>, &'a str);
    let cases: [Case; 3] = [
        (
            "none",
            Box::new(|_, line| (!line.contains(",-1,")).then(|| line.replace(",purchase,", ",view,"))),
            "no purchases",
        ),
        (
            "single",
            Box::new(
                move |_, line| {
                    if !sales(line) || line.contains(",1,purchase,") { Some(line.to_owned()) } else { None }
                },
            ),
            "single buyer",
        ),
        // One purchase line per buyer: the first of each customer's sales in the file.
        (
            "once",
            Box::new(move |i, line| (!sales(line) || [1, 8, 13, 17].contains(&i)).then(|| line.to_owned())),
            "second day",
        ),
    ];
    for (name, keep, reason) in cases {
        let (customers, events) = env.variant(name, |c, e| {
            let kept: Vec<String> = e.lines().enumerate().filter_map(|(i, line)| keep(i, line)).collect();
            (c.to_owned(), kept.join("\n") + "\n")
        })?;
        let report = env.ingest(&customers, &events, Some(day("2024-06-30"))).await?;
        let fit = &report.profiles.prediction;
        assert!(fit.purchases.is_none() && fit.spend.is_none(), "{name}");
        assert!(fit.notes.iter().any(|n| n.contains(reason) && n.contains("unknown")), "{name}: {:?}", fit.notes);
        for (id, p_alive, expected, spend, clv) in predicted_fields(&env.db).await? {
            assert_eq!((p_alive, expected, spend, clv), (None, None, None, None), "{name}: customer {id}");
        }
    }
    env.drop_schema().await
}

/// The data version and every customer's expected purchases in `profiles` and in `customer_facts`, read in one
/// statement (one snapshot).
const PREDICTION_SNAPSHOT: &str = "SELECT (SELECT version FROM dataset WHERE id = 1), \
     array_agg(p.expected_purchases ORDER BY customer_id), array_agg(f.expected_purchases ORDER BY customer_id) \
     FROM profiles p JOIN customer_facts f USING (customer_id)";

type PredictionSnapshot = (i64, Vec<Option<f64>>, Vec<Option<f64>>);

/// `audience fit`: a refit writes every profile's predictions (and the derived facts') with a new data version, in one
/// transaction. While refits with a 90-day and a 30-day horizon alternate, a reader that reads the version and the
/// predictions in one statement sees every customer with one horizon, the version of that refit, and the same values
/// in both tables: never a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refit_is_a_new_data_version_that_readers_see_whole_or_not_at_all() -> Result<()> {
    let env = Env::new().await?;
    env.ingest_sample().await?;
    let horizon = |horizon_days| predict::Options { horizon_days, ..Default::default() };
    let ninety: PredictionSnapshot = sqlx::query_as(PREDICTION_SNAPSHOT).fetch_one(&env.db.pool).await?;
    let report = refit(&env.db, horizon(30)).await?;
    assert_eq!((report.previous_version, report.version, report.profiles), (ninety.0, ninety.0 + 1, 500));
    let thirty: PredictionSnapshot = sqlx::query_as(PREDICTION_SNAPSHOT).fetch_one(&env.db.pool).await?;
    assert_eq!(thirty.0, ninety.0 + 1);
    assert_ne!(thirty.1, ninety.1, "another horizon gives other predictions");
    assert_eq!((&ninety.1, &thirty.1), (&ninety.2, &thirty.2), "customer_facts carries the profiles' predictions");

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (pool, stop, ninety, thirty) = (env.db.pool.clone(), stop.clone(), ninety.clone(), thirty.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (version, profiles, facts): PredictionSnapshot =
                    sqlx::query_as(PREDICTION_SNAPSHOT).fetch_one(&pool).await?;
                assert_eq!(profiles, facts, "version {version}: the two tables disagree");
                // Even steps from the ingest's version are 90-day refits, odd ones 30-day refits.
                let want = if (version - ninety.0) % 2 == 0 { &ninety.1 } else { &thirty.1 };
                assert!(&profiles == want, "version {version} holds predictions of another version or a mix");
                reads += 1;
            }
            anyhow::Ok(reads)
        })
    };
    for step in 0..6 {
        refit(&env.db, horizon(if step % 2 == 0 { 90 } else { 30 })).await?;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.await?? > 0, "the reader never read");
    let last: PredictionSnapshot = sqlx::query_as(PREDICTION_SNAPSHOT).fetch_one(&env.db.pool).await?;
    assert_eq!((last.0, &last.1), (ninety.0 + 7, &thirty.1));
    env.drop_schema().await
}

/// Issue 21: a metrics call gives the same rows from the rollups built at ingest as from the events, for every event
/// measure and each shape of call (the whole data, a window compared with the one before, a calendar period, event
/// and customer dimensions, filters of both kinds), on the generated sample and on the small fixture, whose last
/// event falls after the data's last day. Each rollup answers some of the calls.
#[tokio::test]
async fn the_metrics_rollups_give_what_the_events_give() -> Result<()> {
    use audience_tools::metrics::Measure;
    use audience_tools::metrics::catalogue::Grain;
    use audience_tools::metrics::rollups::Rows;

    let env = Env::new().await?;
    let bought = json!({"type": "event", "event_type": "purchase", "within_days": 90});
    let active = json!({"type": "profile", "field": "churned", "op": "=", "value": false});
    let shapes = [
        json!({}),
        json!({"filters": [bought]}),
        json!({"dimensions": ["country"], "exclude": [active]}),
        json!({"within_days": 30, "compare": true}),
        json!({"since": "2024-04-01", "until": "2024-06-30", "compare": true, "dimensions": ["product"]}),
        json!({"dimensions": ["color", "month"]}),
        json!({"dimensions": ["segment", "week"], "filters": [active]}),
        json!({"dimensions": ["day"], "within_days": 14, "filters": [bought]}),
        json!({"dimensions": ["quarter"], "until": "2024-06-15"}),
    ];
    let mut calls: Vec<serde_json::Value> = Vec::new();
    for measure in Measure::ALL.into_iter().filter(|measure| measure.grain() == Grain::Event) {
        for shape in &shapes {
            let mut call = shape.clone();
            call["measures"] = json!([measure.name()]);
            calls.push(call);
        }
    }
    calls.push(json!({"measures": ["events"], "dimensions": ["event_type"], "within_days": 60}));
    calls.push(json!({"measures": ["events", "active_customers"], "dimensions": ["event_type", "month"]}));
    calls.push(json!({"measures": ["buyers", "net_revenue"], "within_days": 45}));
    calls.push(json!({"measures": ["orders", "buyers"], "dimensions": ["color"], "since": "2024-03-01"}));
    calls.push(json!({"measures": ["repeat_purchase_rate", "items"], "until": "2030-01-01"}));

    let (customers, events) = (fixture("small_customers.csv"), fixture("small_events.csv"));
    for as_of in [None, Some(day("2024-06-30"))] {
        let report = match as_of {
            None => env.ingest_sample().await?.1,
            Some(_) => env.ingest(&customers, &events, as_of).await?,
        };
        let as_of = report.profiles.as_of;
        let mut read = std::collections::HashSet::new();
        for call in &calls {
            let query = serde_json::from_value::<MetricsArgs>(call.clone())?.check()?;
            let rolled = compile_metrics(&query, Data { as_of, derived_tables: true })?;
            let events = compile_metrics(&query, Data { as_of, derived_tables: false })?;
            assert_eq!(events.read_from, Rows::Events.table());
            read.insert(rolled.read_from);
            let (rolled, events) = (rolled.sql, events.sql);
            let (got, want) = (json_rows(&env.db, &rolled).await?, json_rows(&env.db, &events).await?);
            assert_eq!(got, want, "{call} on data up to {as_of}:\n{rolled}");
            assert!(want.len() > 2 || as_of == day("2024-06-30"), "{call} gives no rows on the sample");
        }
        if as_of != day("2024-06-30") {
            assert_eq!(read.len(), 4, "each rollup, and the events, answer some calls: {read:?}");
        }
        // A product with events in the window but no order is a row with 0 orders, not a missing one.
        let products = |measure: &str| -> Result<String> {
            let call =
                json!({"measures": [measure], "dimensions": ["product"], "within_days": 30, "order_by": "product"});
            let query = serde_json::from_value::<MetricsArgs>(call)?.check()?;
            Ok(compile_metrics(&query, Data { as_of, derived_tables: true })?.sql)
        };
        let labels = |rows: String| -> Vec<String> {
            let rows: Vec<serde_json::Value> = serde_json::from_str(&rows).unwrap();
            rows.iter().map(|row| row["product"].to_string()).collect()
        };
        let (orders, events) =
            (json_rows(&env.db, &products("orders")?).await?, json_rows(&env.db, &products("events")?).await?);
        assert_eq!(labels(orders.clone()), labels(events), "{orders}");
        // An ingest by a release that knows no rollups leaves them as they were and moves the version on: they are
        // then not read. A refit keeps them current.
        refit(&env.db, Default::default()).await?;
        assert!(Dataset::read(&env.db).await?.unwrap().derived_tables_current, "a refit keeps the rollups");
    }
    sqlx::query("UPDATE dataset SET version = version + 1, derived_version = version + 1")
        .execute(&env.db.pool)
        .await?;
    assert!(!Dataset::read(&env.db).await?.unwrap().derived_tables_current, "rollups of older data");
    env.drop_schema().await
}

/// The rows of `sql`, in its order, as JSON text.
async fn json_rows(db: &Db, sql: &str) -> Result<String> {
    Ok(sqlx::query_scalar(&format!("SELECT coalesce(json_agg(r), '[]')::text FROM ({sql}) r"))
        .fetch_one(&db.pool)
        .await?)
}
