//! The ingest pipeline end to end: real PostgreSQL (one schema per test), the real embedding model, and the
//! embedded vector index in a temporary directory.
//!
//! Needs `DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/test) and the model files
//! (`scripts/setup-models.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use anyhow::Result;
use chrono::NaiveDate;
use tempfile::TempDir;

use audience_ingest::generate::{GenerateOptions, generate};
use audience_ingest::load::LoadOptions;
use audience_ingest::pipeline::{IngestReport, IngestRequest, ingest, reindex};
use audience_ingest::render::text_hash;
use audience_tools::db::Db;
use audience_tools::embed::LazyEmbedder;
use audience_tools::paths;
use audience_tools::vector::{VectorReader, VectorSearch, VectorStore};

/// One model for the whole test binary: loading it is the slowest part of a small test.
static EMBEDDER: LazyLock<LazyEmbedder> = LazyLock::new(|| LazyEmbedder::new(paths::models_dir()));

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

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
        let request = IngestRequest {
            customers: customers.to_path_buf(),
            events: events.to_path_buf(),
            load: LoadOptions {
                strict: true,
                rejects_path: self.dir.path().join("rejects.csv"),
                max_rejects: Default::default(),
                mapping: None,
            },
            as_of,
        };
        ingest(&self.db, &self.store, &EMBEDDER, request).await
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

    /// Generates and ingests the 500-customer sample (seed 42) and returns each customer's hidden persona
    /// (labels.csv, never ingested).
    async fn load_persona_sample(&self) -> Result<HashMap<u64, String>> {
        let generated = generate(&GenerateOptions {
            customers: 500,
            events_per_customer: 20,
            seed: 42,
            end_date: day("2025-01-01"),
            out_dir: self.dir.path().join("sample"),
        })?;
        let report = self.ingest(&generated.customers_path, &generated.events_path, None).await?;
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
/// Scores are ceil(5 x cume_dist) over the 4 buyers: spend 45/140/200/950 -> 2/3/4/5, orders 2,2/3/4 -> 3,3/4/5,
/// recency 150/29/10/2 days -> 2/3/4/5. VIP thresholds (80th percentile, continuous): spend 200 + 0.4 x 750 = 500,
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
            (4, 4, 5),
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
            (5, 5, 2),
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
            (2, 3, 4),
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
            (3, 3, 3),
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
