//! Test fixtures shared by the tool tests: a private PostgreSQL schema with a small dataset, the reader
//! role, and optionally an embedded vector index filled with real embeddings of the profiles.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use audience_tools::db::{Db, ReadLimits, prepare_reader};
use audience_tools::embed::LazyEmbedder;
use audience_tools::schema::{READER_ROLE, TABLES, payload_json_sql};
use audience_tools::stores::Stores;
use audience_tools::vector::edge::EdgeIndex;
use audience_tools::vector::{VectorIndex, VectorPoint, VectorReader, VectorSearch};

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A unique schema name per test (tests run in parallel, in several processes).
fn unique_schema() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
    format!("t_h4_{}_{}_{}", std::process::id(), nanos, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// One customer of the fixture: (id, first, last, country, age, favorite color, segment, interests, luxury, spent, text).
pub struct Person {
    pub id: i64,
    pub first: &'static str,
    pub last: &'static str,
    pub country: &'static str,
    pub segment: &'static str,
    pub interests: &'static [&'static str],
    pub likes_luxury: bool,
    pub spent: f64,
    pub text: &'static str,
}

pub const PEOPLE: &[Person] = &[
    Person {
        id: 1,
        first: "Anna",
        last: "Schmidt",
        country: "DE",
        segment: "champions",
        interests: &["watches", "jewelry"],
        likes_luxury: true,
        spent: 2500.0,
        text: "Collects luxury Swiss watches and fine gold jewelry; buys premium timepieces.",
    },
    Person {
        id: 2,
        first: "Ben",
        last: "Weber",
        country: "DE",
        segment: "loyal",
        interests: &["hiking", "camping"],
        likes_luxury: false,
        spent: 300.0,
        text: "Loves hiking in the mountains, camping in tents and outdoor trekking gear.",
    },
    Person {
        id: 3,
        first: "Chloe",
        last: "Martin",
        country: "FR",
        segment: "champions",
        interests: &["handbags", "fashion"],
        likes_luxury: true,
        spent: 1800.0,
        text: "Designer handbags and haute couture fashion from Paris boutiques.",
    },
    Person {
        id: 4,
        first: "David",
        last: "Rossi",
        country: "IT",
        segment: "at_risk",
        interests: &["running", "fitness"],
        likes_luxury: false,
        spent: 150.0,
        text: "Marathon runner buying running shoes and fitness trackers.",
    },
    Person {
        id: 5,
        first: "Emma",
        last: "Jones",
        country: "GB",
        segment: "loyal",
        interests: &["watches", "gadgets"],
        likes_luxury: false,
        spent: 900.0,
        text: "Tech enthusiast: smart watches, gadgets and wireless headphones.",
    },
    Person {
        id: 6,
        first: "Felix",
        last: "Novak",
        country: "PL",
        segment: "new",
        interests: &["gaming", "electronics"],
        likes_luxury: false,
        spent: 60.0,
        text: "Video gaming, consoles and computer electronics.",
    },
    Person {
        id: 7,
        first: "Greta",
        last: "Berg",
        country: "SE",
        segment: "hibernating",
        interests: &["socks", "home"],
        likes_luxury: false,
        spent: 40.0,
        text: "Cozy wool socks, knitting and home decoration.",
    },
    Person {
        id: 8,
        first: "Hugo",
        last: "Silva",
        country: "PT",
        segment: "champions",
        interests: &["watches", "sailing"],
        likes_luxury: true,
        spent: 1200.0,
        text: "Sailing and diving; owns expensive luxury dive watches.",
    },
];

/// Events: (event_id, customer_id, type, product, color, price, quantity).
pub const EVENTS: &[(i64, i64, &str, &str, &str, f64, i32)] = &[
    (1, 1, "purchase", "watch", "gold", 1500.0, 1),
    (2, 1, "purchase", "necklace", "gold", 1000.0, 1),
    (3, 2, "purchase", "tent", "green", 300.0, 1),
    (4, 3, "purchase", "handbag", "black", 1800.0, 1),
    (5, 4, "purchase", "shoes", "blue", 150.0, 1),
    (6, 5, "purchase", "watch", "black", 900.0, 1),
    (7, 6, "purchase", "controller", "black", 60.0, 1),
    (8, 7, "purchase", "socks", "red", 20.0, 2),
    (9, 8, "purchase", "watch", "silver", 1200.0, 1),
    (10, 2, "view", "watch", "silver", 500.0, 1),
    (11, 6, "add_to_cart", "watch", "black", 200.0, 1),
];

/// A private schema with the three tables, the fixture rows and the reader role's grants. Dropped by `drop`.
pub struct TestDb {
    pub db: Db,
    pub schema: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let schema = unique_schema();
        let db = Db::connect(&database_url(), &schema).await.expect("connect to PostgreSQL (DATABASE_URL)");
        exec(&db, &format!("CREATE SCHEMA {schema}")).await;
        for table in TABLES {
            exec(&db, &format!("CREATE TABLE {}.{} ({})", schema, table.name, table.ddl())).await;
        }
        // The role is global and other tests prepare it concurrently, as ingest does.
        prepare_reader(&db.pool, &schema).await.expect("prepare the read-only role");
        exec(&db, &format!("GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {READER_ROLE}")).await;
        let this = Self { db, schema };
        this.insert_fixture().await;
        this
    }

    async fn insert_fixture(&self) {
        for p in PEOPLE {
            exec(
                &self.db,
                &format!(
                    "INSERT INTO customers VALUES ({}, '{}', '{}', '{}', '{}@example.com', '{}', {}, 'blue', DATE '2024-01-{:02}')",
                    p.id,
                    p.id,
                    p.first,
                    p.last,
                    p.first.to_lowercase(),
                    p.country,
                    25 + p.id,
                    p.id
                ),
            )
            .await;
            let interests = p.interests.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(",");
            exec(
                &self.db,
                &format!(
                    "INSERT INTO profiles VALUES ({id}, '{id}', '{first}', '{last}', '{mail}@example.com', '{country}', {age}, 'blue', \
                     {spent}, 1, 0, now() - interval '60 days', now() - interval '{id} days', {id}, 1, {spent}, 5, 1, 4, \
                     false, '{segment}', ARRAY[{interests}]::text[], ARRAY[3, 1]::int[], ARRAY['blue']::text[], {luxury}, \
                     NULL, NULL, NULL, NULL, '{text}', 'h{id}')",
                    id = p.id,
                    first = p.first,
                    last = p.last,
                    mail = p.first.to_lowercase(),
                    country = p.country,
                    age = 25 + p.id,
                    spent = p.spent,
                    segment = p.segment,
                    luxury = p.likes_luxury,
                    text = p.text,
                ),
            )
            .await;
        }
        for (id, customer, kind, product, color, price, quantity) in EVENTS {
            exec(
                &self.db,
                &format!(
                    "INSERT INTO events VALUES ({id}, {customer}, '{kind}', '{product}', '{color}', {price}, {quantity}, \
                     {price} * {quantity}, now() - interval '{id} days')"
                ),
            )
            .await;
        }
    }

    /// Count and md5 of every table's rows, to prove nothing changed.
    pub async fn checksums(&self) -> Vec<(String, i64, String)> {
        let mut sums = Vec::new();
        for table in TABLES {
            let (count, sum): (i64, Option<String>) = sqlx::query_as(&format!(
                "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {} t",
                table.name
            ))
            .fetch_one(&self.db.pool)
            .await
            .expect("checksum");
            sums.push((table.name.to_owned(), count, sum.unwrap_or_default()));
        }
        sums
    }

    /// Names of the relations in the schema, to prove nothing was created.
    pub async fn relations(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = $1 ORDER BY 1")
            .bind(&self.schema)
            .fetch_all(&self.db.pool)
            .await
            .expect("list relations")
    }

    /// Stores over this schema, with an embedded index in `dir` (filled with the profiles when `fill`).
    pub async fn stores(&self, dir: &std::path::Path, fill: bool, limits: ReadLimits) -> Stores {
        let index = Arc::new(EdgeIndex::open(dir).await.expect("open the embedded index"));
        index.ensure_collection().await.expect("create the collection");
        let embedder = LazyEmbedder::new(audience_tools::paths::models_dir());
        if fill {
            let profiles: Vec<(i64, String)> = sqlx::query_as(&format!(
                "SELECT customer_id, {} FROM profiles ORDER BY customer_id",
                payload_json_sql()
            ))
            .fetch_all(&self.db.pool)
            .await
            .expect("read profiles");
            let texts: Vec<String> = PEOPLE.iter().map(|p| p.text.to_owned()).collect();
            let embedded = embedder.embed(texts).await.expect("embed the profiles (run scripts/setup-models.sh)");
            let points = profiles
                .iter()
                .zip(embedded.vectors)
                .map(|((id, payload), vector)| VectorPoint {
                    id: *id as u64,
                    vector,
                    payload: serde_json::from_str(payload).expect("a payload object"),
                })
                .collect();
            index.upsert(points).await.expect("upsert profiles");
        }
        let vectors: Arc<dyn VectorSearch> = index;
        Stores::new(self.db.clone(), VectorReader::fixed(vectors), embedder, limits)
    }

    pub async fn drop(self) {
        exec(&self.db, &format!("DROP SCHEMA {} CASCADE", self.schema)).await;
        self.db.close().await;
    }
}

pub async fn exec(db: &Db, sql: &str) {
    sqlx::query(sql).execute(&db.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}
