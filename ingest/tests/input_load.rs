//! Input validation, the COPY load with staging swap, and the sample generator, against a real PostgreSQL.
//!
//! Each test works in its own schema `t_load_<random>` (dropped at the end). Set DATABASE_URL to override the
//! default `postgres://postgres@127.0.0.1:5432/test`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use anyhow::Result;
use audience_ingest::generate::{GenerateOptions, generate};
use audience_ingest::input::Mapping;
use audience_ingest::load::{LoadOptions, LoadReport, RejectLimit, load_staging, prepare_schema, swap_in};
use audience_tools::db::{Db, ReadLimits};
use audience_tools::schema::PROFILES;
use chrono::NaiveDate;
use futures::FutureExt;

const GOOD_CUSTOMERS: &str = include_str!("fixtures/customers.csv");
const GOOD_EVENTS: &str = include_str!("fixtures/events.csv");

/// The good files with one changed e-mail and one changed price: the bad loads start from these, so a bad load
/// that wrongly committed would show up as a change in the live data.
fn changed_good() -> (String, String) {
    (
        GOOD_CUSTOMERS.replace("anna.nowak1@example.com", "anna.changed1@example.com"),
        GOOD_EVENTS.replace("1,1,view,watches,gold,1200.00", "1,1,view,watches,gold,1300.00"),
    )
}

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `body` with a fresh prepared schema and drops the schema afterwards, also when `body` panics.
async fn with_schema<F, Fut>(body: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let schema = format!("t_load_{:016x}", rand::random::<u64>());
    let db = Db::connect(&database_url(), &schema).await.expect("PostgreSQL must be running for these tests");
    prepare_schema(&db.pool, &schema).await.expect("prepare_schema");
    let outcome = AssertUnwindSafe(body(db.clone())).catch_unwind().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&db.pool).await.expect("drop test schema");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The pipeline's transaction, minus the profile SQL: an empty `profiles_staging` stands in for it (and so the
/// customer facts are empty too).
async fn ingest(db: &Db, customers: &Path, events: &Path, opts: &LoadOptions) -> Result<LoadReport> {
    let mut tx = db.pool.begin().await?;
    let report = load_staging(&mut tx, customers, events, opts).await?;
    sqlx::query(&format!("CREATE TABLE profiles_staging ({})", PROFILES.ddl())).execute(&mut *tx).await?;
    audience_ingest::audience_tables::build(&mut tx, chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date"))
        .await?;
    swap_in(&mut tx).await?;
    tx.commit().await?;
    Ok(report)
}

/// Writes customers.csv and events.csv into a new temporary directory.
fn files(customers: &[u8], events: &[u8]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let customers_path = dir.path().join("customers.csv");
    let events_path = dir.path().join("events.csv");
    std::fs::write(&customers_path, customers).expect("write customers");
    std::fs::write(&events_path, events).expect("write events");
    (dir, customers_path, events_path)
}

/// Options without a reject limit: these tests reject a row or two of a few, far over the default 10%. The
/// reject limit has tests of its own.
fn options(dir: &Path, strict: bool) -> LoadOptions {
    LoadOptions {
        strict,
        rejects_path: dir.join("rejects.csv"),
        max_rejects: RejectLimit::NONE,
        mapping: None,
        dry_run: false,
    }
}

/// Everything a reader could see in the live tables.
async fn snapshot(db: &Db) -> (Vec<(i64, String, String)>, Vec<(i64, i64, String, String, i32)>) {
    let customers = sqlx::query_as("SELECT customer_id, email, country FROM customers ORDER BY customer_id")
        .fetch_all(&db.pool)
        .await
        .expect("read customers");
    let events =
        sqlx::query_as("SELECT event_id, customer_id, event_type, price::text, quantity FROM events ORDER BY event_id")
            .fetch_all(&db.pool)
            .await
            .expect("read events");
    (customers, events)
}

fn read_rejects(path: &Path) -> Vec<(String, u64, String)> {
    let mut reader = csv::Reader::from_path(path).expect("open rejects");
    assert_eq!(reader.headers().expect("rejects header"), vec!["file", "line", "reason"]);
    reader.deserialize().map(|row| row.expect("rejects row")).collect()
}

#[tokio::test]
async fn loads_good_files_and_swaps_them_in_for_the_reader() {
    with_schema(|db| async move {
        let (dir, customers, events) = files(GOOD_CUSTOMERS.as_bytes(), GOOD_EVENTS.as_bytes());
        let report = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect("load");
        assert_eq!((report.customers, report.events, report.rejected), (3, 6, 0));
        assert_eq!(report.rejects_path, None);
        assert!(!dir.path().join("rejects.csv").exists());

        let (live_customers, live_events) = snapshot(&db).await;
        assert_eq!(live_customers[1], (2, "liam.smith2@example.com".to_owned(), "GB".to_owned()));
        // The return is kept as a purchase with negative quantity; prices keep two decimals.
        assert_eq!(live_events[4], (5, 2, "purchase".to_owned(), "4.99".to_owned(), -1));
        assert_eq!(live_events[5].3, "89.90");
        let (age, signup): (Option<i32>, Option<NaiveDate>) =
            sqlx::query_as("SELECT age, signup_date FROM customers WHERE customer_id = 3")
                .fetch_one(&db.pool)
                .await
                .expect("customer 3");
        assert_eq!((age, signup), (None, None));
        let ts: String = sqlx::query_scalar(
            "SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM events WHERE event_id = 5",
        )
        .fetch_one(&db.pool)
        .await
        .expect("ts");
        assert_eq!(ts, "2024-03-09 11:00");

        // The SELECT-only role can read the swapped-in tables.
        let mut tx = db.begin_read_only(ReadLimits::default()).await.expect("read-only tx");
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut *tx).await.expect("select");
        assert_eq!(count, 6);
        let write = sqlx::query("DELETE FROM events").execute(&mut *tx).await;
        assert!(write.is_err(), "the reader must not write");
        drop(tx);

        // A second load swaps again: constraint and index names do not collide.
        let report = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect("second load");
        assert_eq!(report.events, 6);
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() ORDER BY indexname",
        )
        .fetch_all(&db.pool)
        .await
        .expect("indexes");
        assert_eq!(
            indexes,
            [
                "customer_days_day_idx",
                "customer_facts_pkey",
                "customer_keys_customer_id_key",
                "customer_keys_pkey",
                "customer_totals_pkey",
                "customers_external_id_idx",
                "customers_pkey",
                "daily_totals_day_idx",
                "dataset_pkey",
                "event_totals_last_ts_idx",
                "event_totals_max_price_idx",
                "event_totals_min_price_idx",
                "event_totals_product_idx",
                "events_customer_id_idx",
                "events_pkey",
                "events_product_color_idx",
                "events_ts_idx",
                "events_type_price_idx",
                "events_type_product_ts_idx",
                "events_type_ts_idx",
                "profiles_country_idx",
                "profiles_external_id_idx",
                "profiles_pkey",
                "profiles_segment_idx",
            ]
        );
    })
    .await;
}

/// A bad row: the file it goes into, the row, and the reason it is rejected with.
struct RowCase {
    in_events: bool,
    row: &'static str,
    reason: &'static str,
}

const ROW_CASES: &[RowCase] = &[
    RowCase {
        in_events: false,
        row: "4,Bad,Mail,not-an-email,PL,30,red,2024-01-01",
        reason: "email \"not-an-email\" is not an e-mail address",
    },
    RowCase {
        in_events: false,
        row: "4,Bad,Date,bad.date4@example.com,PL,30,red,2024-13-01",
        reason: "signup_date \"2024-13-01\" is not a date",
    },
    RowCase {
        in_events: false,
        row: "4,Bad,Country,bad.country4@example.com,Poland,30,red,2024-01-01",
        reason: "country \"Poland\" is not an ISO 3166-1 alpha-2 code",
    },
    RowCase {
        in_events: false,
        row: "2,Dup,Licate,dup2@example.com,PL,30,red,2024-01-01",
        reason: "duplicate customer_id 2",
    },
    RowCase { in_events: false, row: ",Nobody,Noname,nobody4@example.com,PL,30,red,", reason: "customer_id is empty" },
    RowCase {
        in_events: true,
        row: "7,1,view,socks,red,1.00,1,yesterday",
        reason: "ts \"yesterday\" is not a timestamp",
    },
    RowCase {
        in_events: true,
        row: "7,99,view,socks,red,1.00,1,2024-03-04T10:00:00Z",
        reason: "unknown customer_id 99",
    },
    RowCase { in_events: true, row: "6,1,view,socks,red,1.00,1,2024-03-04T10:00:00Z", reason: "duplicate event_id 6" },
    RowCase {
        in_events: true,
        row: "7,1,click,socks,red,1.00,1,2024-03-04T10:00:00Z",
        reason: "unknown event_type \"click\"",
    },
    RowCase {
        in_events: true,
        row: "7,1,view,socks,red,1.00,-1,2024-03-04T10:00:00Z",
        reason: "negative quantity on a view event",
    },
    RowCase {
        in_events: true,
        row: "7,1,purchase,socks,red,1.0.0,1,2024-03-04T10:00:00Z",
        reason: "price \"1.0.0\" is not a non-negative decimal",
    },
    RowCase {
        in_events: true,
        row: "x7,1,purchase,socks,red,1.00,1,2024-03-04T10:00:00Z",
        reason: "event_id \"x7\" is not an integer",
    },
];

#[tokio::test]
async fn bad_rows_are_rejected_or_stop_a_strict_load_without_touching_live_data() {
    with_schema(|db| async move {
        let (good_dir, good_customers, good_events) = files(GOOD_CUSTOMERS.as_bytes(), GOOD_EVENTS.as_bytes());
        ingest(&db, &good_customers, &good_events, &options(good_dir.path(), false)).await.expect("good load");
        let before = snapshot(&db).await;

        for case in ROW_CASES {
            let (mut customers_text, mut events_text) = changed_good();
            let (target, file, line) = if case.in_events {
                (&mut events_text, "events.csv", 8)
            } else {
                (&mut customers_text, "customers.csv", 5)
            };
            target.push_str(case.row);
            target.push('\n');
            let (dir, customers, events) = files(customers_text.as_bytes(), events_text.as_bytes());

            // Strict: the first bad row is the error, nothing changes, no rejects file.
            let error = ingest(&db, &customers, &events, &options(dir.path(), true)).await.expect_err(case.row);
            let message = format!("{error:#}");
            let expected_prefix = format!("{file}:{line}: {}", case.reason);
            assert!(message.contains(&expected_prefix), "{message:?} lacks {expected_prefix:?}");
            assert_eq!(message.lines().count(), 1, "{message}");
            assert_eq!(snapshot(&db).await, before, "strict failure changed live data ({})", case.row);
            assert!(!dir.path().join("rejects.csv").exists());
            assert!(!dir.path().join("rejects.csv.partial").exists());

            // Default: the row is rejected into the rejects file and the rest loads.
            let report = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect(case.row);
            assert_eq!(report.rejected, 1, "{}", case.row);
            assert_eq!((report.customers, report.events), (3, 6), "{}", case.row);
            let rejects_path = report.rejects_path.expect("rejects path");
            let rejects = read_rejects(&rejects_path);
            assert_eq!(rejects.len(), 1);
            assert!(rejects[0].0.ends_with(file), "{:?}", rejects[0]);
            assert_eq!(rejects[0].1, line);
            assert!(rejects[0].2.starts_with(case.reason), "{:?} vs {:?}", rejects[0].2, case.reason);
            let after = snapshot(&db).await;
            assert_eq!(after.0[0].1, "anna.changed1@example.com");
            assert_eq!(after.1[0].3, "1300.00");
            assert_eq!((after.0.len(), after.1.len()), (before.0.len(), before.1.len()), "the bad row was not loaded");

            // Back to the good data for the next case.
            ingest(&db, &good_customers, &good_events, &options(good_dir.path(), false)).await.expect("restore");
        }
    })
    .await;
}

#[tokio::test]
async fn unreadable_files_fail_whole_with_one_line_and_change_nothing() {
    with_schema(|db| async move {
        let (good_dir, customers, events) = files(GOOD_CUSTOMERS.as_bytes(), GOOD_EVENTS.as_bytes());
        ingest(&db, &customers, &events, &options(good_dir.path(), false)).await.expect("good load");
        let before = snapshot(&db).await;

        let (customers_text, events_text) = changed_good();
        let mut non_utf8 = events_text.as_bytes().to_vec();
        non_utf8.extend_from_slice(b"7,1,view,soc\xffks,red,1.00,1,2024-03-04T10:00:00Z\n");
        // The id is the one column a customers file cannot do without.
        let missing_id = customers_text
            .lines()
            .map(|line| {
                line.split(',').enumerate().filter(|(i, _)| *i != 0).map(|(_, f)| f).collect::<Vec<_>>().join(",")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let unterminated = "4,\"Open,Quote,oq4@example.com,PL,30,red,2024-01-01\n5,Next,Row,n5@example.com,PL,1,red,\n";
        let unterminated_last =
            "4,Ann,Lee,al4@example.com,PL,30,red,\"2024-01-01\n5,Next,Row,n5@example.com,PL,1,red,\n";
        let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
            (
                missing_id.into_bytes(),
                events_text.clone().into_bytes(),
                "customers.csv:1: missing required column \"customer_id\"",
            ),
            (customers_text.clone().into_bytes(), non_utf8, "events.csv:8: field 4 is not valid UTF-8"),
            (
                format!("{customers_text}{unterminated}").into_bytes(),
                events_text.clone().into_bytes(),
                "customers.csv:5: the quote opened on this line is never closed (unterminated quote)",
            ),
            (
                format!("{customers_text}{unterminated_last}").into_bytes(),
                events_text.clone().into_bytes(),
                "customers.csv:5: the quote opened on this line is never closed (unterminated quote)",
            ),
            (
                customers_text.clone().into_bytes(),
                format!("{events_text}7,1,view,socks\n").into_bytes(),
                "events.csv:8: expected 8 fields like the header, found 4",
            ),
        ];
        for (customers_bytes, events_bytes, expected) in cases {
            let (dir, customers, events) = files(&customers_bytes, &events_bytes);
            for strict in [false, true] {
                let error = ingest(&db, &customers, &events, &options(dir.path(), strict)).await.expect_err(expected);
                let message = format!("{error:#}");
                assert!(message.contains(expected), "{message:?} lacks {expected:?}");
                assert_eq!(message.lines().count(), 1, "{message}");
                assert_eq!(snapshot(&db).await, before, "{expected}");
                assert!(!dir.path().join("rejects.csv").exists(), "{expected}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn strict_stops_at_the_first_bad_row() {
    with_schema(|db| async move {
        let events_text = format!(
            "{GOOD_EVENTS}7,1,view,socks,red,1.00,1,2024-03-04T10:00:00Z\n8,1,click,socks,red,1.00,1,2024-03-04T10:00:00Z\n\
             9,99,view,socks,red,1.00,1,2024-03-04T10:00:00Z\n"
        );
        let (dir, customers, events) = files(GOOD_CUSTOMERS.as_bytes(), events_text.as_bytes());
        let error = ingest(&db, &customers, &events, &options(dir.path(), true)).await.expect_err("strict");
        let message = format!("{error:#}");
        assert!(message.ends_with("events.csv:9: unknown event_type \"click\" (expected view, add_to_cart or purchase)"), "{message}");
        let live: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('events')::text").fetch_one(&db.pool).await.expect("regclass");
        assert_eq!(live, None, "a failed first load creates no live tables");

        let report = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect("lenient");
        assert_eq!((report.events, report.rejected), (7, 2));
        let lines: Vec<u64> = read_rejects(&dir.path().join("rejects.csv")).into_iter().map(|r| r.1).collect();
        assert_eq!(lines, [9, 10]);
    })
    .await;
}

#[tokio::test]
async fn transaction_log_example_loads_through_its_mapping() {
    with_schema(|db| async move {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mapping = Mapping::from_file(&root.join("examples/mappings/transaction_log.toml")).expect("mapping");
        assert!(mapping.customers_from_events());
        let sample = root.join("examples/transaction_log_sample.csv");
        let dir = tempfile::tempdir().expect("tempdir");
        // 2 of its 14 lines are bad on purpose, over the default limit of 10%.
        let opts = LoadOptions {
            strict: false,
            rejects_path: dir.path().join("rejects.csv"),
            max_rejects: RejectLimit::Rows(2),
            mapping: Some(mapping),
            dry_run: false,
        };
        // With from_events the customers path is never read.
        let report = ingest(&db, Path::new("/nonexistent/customers.csv"), &sample, &opts).await.expect("load");
        assert_eq!((report.customers, report.events, report.rejected), (8, 12, 2));

        let rejects = read_rejects(&dir.path().join("rejects.csv"));
        let reasons: Vec<(u64, &str)> = rejects.iter().map(|r| (r.1, r.2.as_str())).collect();
        assert_eq!(
            reasons,
            [
                (13, "customer_id is empty"),
                (
                    14,
                    "customer_id 12346 has no valid customer row (country \"Unspecified\" is not an ISO 3166-1 alpha-2 code)"
                ),
            ]
        );
        let customer: (String, String, String, String) = sqlx::query_as(
            "SELECT first_name, last_name, email, country FROM customers WHERE customer_id = 14911",
        )
        .fetch_one(&db.pool)
        .await
        .expect("customer 14911");
        assert_eq!(customer, ("Customer".into(), "14911".into(), "customer14911@unknown.invalid".into(), "IE".into()));
        let returned: (i64, String, i32, String, String) = sqlx::query_as(
            "SELECT event_id, event_type, quantity, price::text, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') \
             FROM events WHERE quantity < 0",
        )
        .fetch_one(&db.pool)
        .await
        .expect("the return");
        assert_eq!(returned, (9, "purchase".into(), -80, "6.19".into(), "2019-12-09 00:00".into()));

        // A column the mapping names must be in the file: a whole-file error naming it.
        let text = std::fs::read_to_string(root.join("examples/mappings/transaction_log.toml")).expect("read mapping");
        let renamed = Mapping::parse(&text.replace("product = \"ProductName\"", "product = \"Product\"")).expect("parse");
        let opts = LoadOptions { mapping: Some(renamed), ..opts };
        let error = ingest(&db, &sample, &sample, &opts).await.expect_err("missing mapped column");
        assert!(
            format!("{error:#}").contains("transaction_log_sample.csv:1: missing column \"Product\" (mapped to product)"),
            "{error:#}"
        );
    })
    .await;
}

#[tokio::test]
async fn prepare_schema_is_idempotent_and_safe_concurrently() {
    let schema = format!("t_load_{:016x}", rand::random::<u64>());
    let db = Db::connect(&database_url(), &schema).await.expect("PostgreSQL must be running for these tests");
    let results = futures::future::join_all((0..4).map(|_| prepare_schema(&db.pool, &schema))).await;
    let failures: Vec<String> = results.into_iter().filter_map(|r| r.err()).map(|e| format!("{e:#}")).collect();
    let usage: Result<bool, sqlx::Error> =
        sqlx::query_scalar("SELECT has_schema_privilege('audience_reader', $1, 'USAGE')")
            .bind(&schema)
            .fetch_one(&db.pool)
            .await;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&db.pool).await.expect("drop schema");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(usage.expect("privilege check"));
    assert!(prepare_schema(&db.pool, "Bad-Name").await.is_err());
}

fn generate_into(dir: &Path, seed: u64, customers: u64) -> audience_ingest::generate::GenerateReport {
    let opts = GenerateOptions {
        customers,
        events_per_customer: 20,
        seed,
        end_date: NaiveDate::from_ymd_opt(2025, 1, 1).expect("date"),
        out_dir: dir.to_owned(),
        lift: None,
    };
    generate(&opts).expect("generate")
}

#[test]
fn generate_is_deterministic_with_the_documented_columns() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let report = generate_into(a.path(), 7, 300);
    generate_into(b.path(), 7, 300);
    generate_into(c.path(), 8, 300);
    for name in ["customers.csv", "events.csv", "labels.csv"] {
        let first = std::fs::read(a.path().join(name)).unwrap();
        assert_eq!(first, std::fs::read(b.path().join(name)).unwrap(), "{name} differs for the same seed");
        assert_ne!(first, std::fs::read(c.path().join(name)).unwrap(), "{name} ignores the seed");
    }
    let header = |name: &str| std::fs::read_to_string(a.path().join(name)).unwrap().lines().next().unwrap().to_owned();
    assert_eq!(
        header("customers.csv"),
        "customer_id,first_name,last_name,email,country,age,favorite_color,signup_date"
    );
    assert_eq!(header("events.csv"), "event_id,customer_id,event_type,product,color,price,quantity,ts");
    assert_eq!(header("labels.csv"), "customer_id,persona");
    assert_eq!(report.customers, 300);
    // The mean is 20 events per customer; persona activity and randomness keep it near that.
    assert!((4_500..=7_500).contains(&report.events), "{} events", report.events);

    // Personas stay hidden in labels.csv and shape behaviour.
    let labels: Vec<(u64, String)> =
        csv::Reader::from_path(a.path().join("labels.csv")).unwrap().deserialize().map(Result::unwrap).collect();
    let luxury: Vec<u64> = labels.iter().filter(|(_, p)| p == "luxury").map(|(id, _)| *id).collect();
    assert!((20..=60).contains(&luxury.len()), "{} luxury customers of 300", luxury.len());
    let lapsed: Vec<u64> = labels.iter().filter(|(_, p)| p == "lapsed").map(|(id, _)| *id).collect();
    assert!(!lapsed.is_empty());

    #[derive(serde::Deserialize)]
    struct Row {
        customer_id: u64,
        event_type: String,
        price: f64,
        quantity: i32,
        ts: chrono::DateTime<chrono::Utc>,
    }
    let cutoff = "2024-09-03T00:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap(); // 2025-01-01 - 120 days
    let start = "2024-01-02T00:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap(); // 365 days before
    let mut spend = std::collections::HashMap::<u64, f64>::new();
    let (mut purchases, mut returns) = (0, 0);
    for row in csv::Reader::from_path(a.path().join("events.csv")).unwrap().deserialize::<Row>() {
        let row = row.unwrap();
        assert!(row.ts >= start && row.ts < cutoff + chrono::Duration::days(120), "{} out of range", row.ts);
        if lapsed.contains(&row.customer_id) {
            assert!(row.ts < cutoff, "lapsed customer {} active at {}", row.customer_id, row.ts);
        }
        if row.event_type == "purchase" {
            if row.quantity < 0 {
                returns += 1;
            } else {
                purchases += 1;
                *spend.entry(row.customer_id).or_default() += row.price * f64::from(row.quantity);
            }
        }
    }
    assert!(returns > 0 && returns < purchases / 10, "{returns} returns of {purchases} purchases");
    let big_spenders = luxury.iter().filter(|id| spend.get(id).copied().unwrap_or(0.0) > 800.0).count();
    assert!(big_spenders * 10 >= luxury.len() * 7, "{big_spenders} of {} luxury customers spend > 800", luxury.len());
}

#[tokio::test]
async fn generated_sample_loads_without_rejects() {
    with_schema(|db| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated = generate_into(dir.path(), 42, 200);
        let opts = options(dir.path(), true);
        let report = ingest(&db, &generated.customers_path, &generated.events_path, &opts).await.expect("load");
        assert_eq!((report.customers, report.events, report.rejected), (200, generated.events, 0));
    })
    .await;
}

/// `text` with its LF line ends replaced by `eol`.
fn with_line_ends(text: &str, eol: &str) -> String {
    text.replace('\n', eol)
}

/// The rejects as (file name, line).
fn reject_lines(path: &Path) -> Vec<(String, u64)> {
    read_rejects(path)
        .into_iter()
        .map(|(file, line, _)| (Path::new(&file).file_name().unwrap().to_string_lossy().into_owned(), line))
        .collect()
}

#[tokio::test]
async fn rejects_name_the_physical_line_with_lf_crlf_or_cr_line_ends_and_blank_lines() {
    with_schema(|db| async move {
        // The blank line before the bad customer is skipped by the reader, but it is line 5 of the file.
        let customers_text = format!("{GOOD_CUSTOMERS}\n4,Bad,Mail,not-an-email,PL,30,red,2024-01-01\n");
        let events_text = format!(
            "{GOOD_EVENTS}7,1,click,socks,red,1.00,1,2024-03-04T10:00:00Z\n8,99,view,socks,red,1.00,1,2024-03-04T10:00:00Z\n"
        );
        for eol in ["\n", "\r\n", "\r"] {
            let (dir, customers, events) = files(
                with_line_ends(&customers_text, eol).as_bytes(),
                with_line_ends(&events_text, eol).as_bytes(),
            );
            let report = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect("lenient load");
            assert_eq!((report.customers, report.events, report.rejected), (3, 6, 3), "{eol:?}");
            let expected = [("customers.csv".to_owned(), 6), ("events.csv".to_owned(), 8), ("events.csv".to_owned(), 9)];
            assert_eq!(reject_lines(&dir.path().join("rejects.csv")), expected, "{eol:?}");

            let error = ingest(&db, &customers, &events, &options(dir.path(), true)).await.expect_err("strict");
            let message = format!("{error:#}");
            assert!(message.ends_with("customers.csv:6: email \"not-an-email\" is not an e-mail address"), "{eol:?}: {message}");
        }
    })
    .await;
}

#[tokio::test]
async fn quoted_fields_may_span_lines_and_later_rows_keep_their_physical_lines() {
    with_schema(|db| async move {
        for eol in ["\n", "\r\n"] {
            let customers_text = [
                "customer_id,first_name,last_name,email,country,age,favorite_color,signup_date",
                "1,\"Anna",
                "Maria\",Nowak,anna.nowak1@example.com,PL,34,black,2023-01-15",
                "2,Liam,Smith,liam.smith2@example.com,GB,41,gold,2022-11-02",
                "3,Emma,\"Muller",
                "",
                "Schmidt\",emma.muller3@example.com,DE,,,",
                "4,Bad,Mail,not-an-email,PL,30,red,2024-01-01",
                "",
            ]
            .join(eol);
            let events_text = [
                "event_id,customer_id,event_type,product,color,price,quantity,ts",
                "1,1,view,\"watches",
                "steel\",gold,1200.00,1,2024-03-01T10:00:00Z",
                "2,1,purchase,watches,gold,1200.00,1,2024-03-01T10:05:00Z",
                "3,2,view,\"socks, \"\"striped\"\"\",,4.99,1,2024-03-02T09:00:00Z",
                "4,2,click,socks,,4.99,2,2024-03-02T09:00:00Z",
                "",
            ]
            .join(eol);
            let (dir, customers, events) = files(customers_text.as_bytes(), events_text.as_bytes());
            let report = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect("load");
            assert_eq!((report.customers, report.events, report.rejected), (3, 3, 2), "{eol:?}");
            let expected = [("customers.csv".to_owned(), 8), ("events.csv".to_owned(), 6)];
            assert_eq!(reject_lines(&dir.path().join("rejects.csv")), expected, "{eol:?}");

            // The values keep their line breaks, through COPY and back.
            let names: Vec<(String, String)> =
                sqlx::query_as("SELECT first_name, last_name FROM customers ORDER BY customer_id")
                    .fetch_all(&db.pool)
                    .await
                    .expect("names");
            assert_eq!(names[0].0, format!("Anna{eol}Maria"));
            assert_eq!(names[2].1, format!("Muller{eol}{eol}Schmidt"));
            let products: Vec<String> = sqlx::query_scalar("SELECT product FROM events ORDER BY event_id")
                .fetch_all(&db.pool)
                .await
                .expect("products");
            assert_eq!(products, [format!("watches{eol}steel"), "watches".to_owned(), "socks, \"striped\"".to_owned()]);

            let error = ingest(&db, &customers, &events, &options(dir.path(), true)).await.expect_err("strict");
            assert!(format!("{error:#}").ends_with("customers.csv:8: email \"not-an-email\" is not an e-mail address"));

            // A quote still open at the end of the file fails the whole file, at the line where it opened.
            let open_quote = format!(
                "{customers_text}5,\"Open,Quote,oq5@example.com,PL,30,red,2024-01-01{eol}6,Next,Row,n6@example.com,PL,1,red,{eol}"
            );
            let (dir, customers, events) = files(open_quote.as_bytes(), events_text.as_bytes());
            let error = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect_err("open quote");
            let message = format!("{error:#}");
            assert!(
                message.ends_with("customers.csv:9: the quote opened on this line is never closed (unterminated quote)"),
                "{eol:?}: {message}"
            );
        }
    })
    .await;
}

/// The transaction log example and its mapping, which derives customers from the log.
fn transaction_log() -> (String, Mapping) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sample = std::fs::read_to_string(root.join("examples/transaction_log_sample.csv")).expect("sample");
    let mapping = Mapping::from_file(&root.join("examples/mappings/transaction_log.toml")).expect("mapping");
    (sample, mapping)
}

#[tokio::test]
async fn derived_customers_report_bad_customer_ids_on_their_physical_line() {
    with_schema(|db| async move {
        let (sample, mapping) = transaction_log();
        // As a spreadsheet on Windows exports it: CRLF line ends, and a product name over two lines (lines 2-3).
        let export = sample
            .replace("Set Of 2 Wooden Market Crates", "\"Set Of 2\nWooden Market Crates\"")
            .replace('\n', "\r\n");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("transaction_log.csv");
        std::fs::write(&log, export).expect("write log");
        let opts = LoadOptions {
            strict: false,
            rejects_path: dir.path().join("rejects.csv"),
            max_rejects: RejectLimit::Rows(2),
            mapping: Some(mapping),
            dry_run: false,
        };
        let report = ingest(&db, &log, &log, &opts).await.expect("load");
        assert_eq!((report.customers, report.events, report.rejected), (8, 12, 2));
        let rejects: Vec<(u64, String)> =
            read_rejects(&dir.path().join("rejects.csv")).into_iter().map(|(_, line, reason)| (line, reason)).collect();
        assert_eq!(
            rejects,
            [
                (14, "customer_id is empty".to_owned()),
                (
                    15,
                    "customer_id 12346 has no valid customer row (country \"Unspecified\" is not an ISO 3166-1 alpha-2 code)"
                        .to_owned()
                ),
            ]
        );
        let product: String = sqlx::query_scalar("SELECT product FROM events WHERE event_id = 1")
            .fetch_one(&db.pool)
            .await
            .expect("product");
        assert_eq!(product, "Set Of 2\r\nWooden Market Crates");

        let error = ingest(&db, &log, &log, &LoadOptions { strict: true, ..opts }).await.expect_err("strict");
        assert!(format!("{error:#}").ends_with("transaction_log.csv:14: customer_id is empty"), "{error:#}");
    })
    .await;
}

#[tokio::test]
async fn a_file_over_the_reject_limit_fails_changes_nothing_and_keeps_its_rejects() {
    with_schema(|db| async move {
        let (good_dir, good_customers, good_events) = files(GOOD_CUSTOMERS.as_bytes(), GOOD_EVENTS.as_bytes());
        ingest(&db, &good_customers, &good_events, &options(good_dir.path(), false)).await.expect("good load");
        let before = snapshot(&db).await;

        // 3 of 6 customer rows are bad, two of them for the same reason with different values.
        let (customers_text, events_text) = changed_good();
        let customers_text = format!(
            "{customers_text}4,Bad,Country,bc4@example.com,Poland,30,red,\n5,Bad,Mail,not-an-email,PL,30,red,\n\
             6,Bad,Mail,also@not,PL,30,red,\n"
        );
        let (dir, customers, events) = files(customers_text.as_bytes(), events_text.as_bytes());
        let rejects_path = dir.path().join("rejects.csv");
        let default_limit = LoadOptions { max_rejects: RejectLimit::default(), ..options(dir.path(), false) };
        let error = ingest(&db, &customers, &events, &default_limit).await.expect_err("over the limit");
        let message = format!("{error:#}");
        let expected = format!(
            "{}: 3 of 6 rows rejected, more than --max-rejects 10% allows; most common reason (2 rows), e.g. line 6: \
             email \"not-an-email\" is not an e-mail address; nothing was changed; all rejects are in {}",
            customers.display(),
            rejects_path.display()
        );
        assert_eq!(message, expected);
        assert_eq!(snapshot(&db).await, before, "a load over the limit changed live data");
        assert_eq!(reject_lines(&rejects_path).iter().map(|r| r.1).collect::<Vec<_>>(), [5, 6, 7]);
        assert!(!dir.path().join("rejects.csv.partial").exists());

        // Exactly at the limit is within it, as a count or as a share.
        for limit in [RejectLimit::Rows(3), "50%".parse().expect("limit")] {
            let opts = LoadOptions { max_rejects: limit, ..options(dir.path(), false) };
            let report = ingest(&db, &customers, &events, &opts).await.expect("at the limit");
            assert_eq!((report.customers, report.rejected), (3, 3), "{limit}");
        }
        ingest(&db, &good_customers, &good_events, &options(good_dir.path(), false)).await.expect("restore");

        // Each file has its own count: 1 bad event of 7 is over 10% although 0 of 3 customers are bad.
        let (customers_text, events_text) = changed_good();
        let events_text = format!("{events_text}7,1,click,socks,red,1.00,1,2024-03-04T10:00:00Z\n");
        let (dir, customers, events) = files(customers_text.as_bytes(), events_text.as_bytes());
        let opts = LoadOptions { max_rejects: RejectLimit::default(), ..options(dir.path(), false) };
        let error = ingest(&db, &customers, &events, &opts).await.expect_err("events over the limit");
        let message = format!("{error:#}");
        assert!(
            message.starts_with(&format!(
                "{}: 1 of 7 rows rejected, more than --max-rejects 10% allows",
                events.display()
            )),
            "{message}"
        );
        assert_eq!(snapshot(&db).await, before);
        assert_eq!(reject_lines(&dir.path().join("rejects.csv")), [("events.csv".to_owned(), 8)]);
    })
    .await;
}

#[tokio::test]
async fn a_load_that_leaves_no_customers_fails_whatever_the_reject_limit() {
    with_schema(|db| async move {
        let (good_dir, good_customers, good_events) = files(GOOD_CUSTOMERS.as_bytes(), GOOD_EVENTS.as_bytes());
        ingest(&db, &good_customers, &good_events, &options(good_dir.path(), false)).await.expect("good load");
        let before = snapshot(&db).await;

        // Every country spelled out: each row is rejected, and so would be every event.
        let bad_countries =
            GOOD_CUSTOMERS.replace(",PL,", ",Poland,").replace(",gb,", ",Britain,").replace(",DE,", ",Germany,");
        let (dir, customers, events) = files(bad_countries.as_bytes(), GOOD_EVENTS.as_bytes());
        let rejects_path = dir.path().join("rejects.csv");
        for limit in [RejectLimit::default(), RejectLimit::NONE] {
            let opts = LoadOptions { max_rejects: limit, ..options(dir.path(), false) };
            let error = ingest(&db, &customers, &events, &opts).await.expect_err("no customers");
            let expected = format!(
                "no valid customers in {}: 3 rows rejected, e.g. line 2: country \"Poland\" is not an ISO 3166-1 \
                 alpha-2 code; nothing was changed; all rejects are in {}",
                customers.display(),
                rejects_path.display()
            );
            assert_eq!(format!("{error:#}"), expected, "{limit}");
            assert_eq!(snapshot(&db).await, before, "{limit}: the live data was replaced");
            assert_eq!(read_rejects(&rejects_path).len(), 3, "only the customers are read");
        }

        let (dir, customers, events) = files(GOOD_CUSTOMERS.lines().next().unwrap().as_bytes(), GOOD_EVENTS.as_bytes());
        let error = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect_err("header only");
        let expected = format!("no customers in {}: it has no data rows; nothing was changed", customers.display());
        assert_eq!(format!("{error:#}"), expected);
        assert_eq!(snapshot(&db).await, before);

        // Derived from a log in which no line has a usable country.
        let (sample, mapping) = transaction_log();
        let mut lines = sample.lines();
        let header = lines.next().unwrap();
        let rows: String = lines.map(|line| format!("{},Atlantis\n", line.rsplit_once(',').unwrap().0)).collect();
        let no_country = format!("{header}\n{rows}");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("transaction_log.csv");
        std::fs::write(&log, no_country).expect("write log");
        let opts = LoadOptions { mapping: Some(mapping), ..options(dir.path(), false) };
        let error = ingest(&db, &log, &log, &opts).await.expect_err("no derived customers");
        let expected = format!(
            "no valid customers in {}: 14 rows rejected, e.g. line 2: country \"Atlantis\" is not an ISO 3166-1 \
             alpha-2 code; nothing was changed",
            log.display()
        );
        assert_eq!(format!("{error:#}"), expected);
        assert_eq!(snapshot(&db).await, before);
    })
    .await;
}

/// The reported case: a whitespace-separated file failed with `missing required column "customer_id"` although its
/// header has it. The message says what was found and which delimiter to set.
#[tokio::test]
async fn a_whitespace_file_read_as_csv_names_its_header_and_the_delimiter_to_set() {
    with_schema(|db| async move {
        let customers = "customer_id first_name last_name email country\n1 Ann Lee ann@example.com PL\n";
        let (dir, customers, events) = files(customers.as_bytes(), GOOD_EVENTS.as_bytes());
        let error = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect_err("whitespace");
        assert!(
            format!("{error:#}").ends_with(
                "customers.csv:1: missing required column \"customer_id\"; the header has 1 field: \
                 \"customer_id first_name last_name email country\"; it looks whitespace-separated: set delimiter = \
                 \"whitespace\" in the mapping"
            ),
            "{error:#}"
        );
    })
    .await;
}

/// `len` characters that PostgreSQL cannot compress, as a real long value (a pasted description) is: a repeated
/// character compresses to a small index entry and would not show the limit.
fn incompressible(len: usize) -> String {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'a' + (seed % 26) as u8)
        })
        .collect()
}

/// How messages name `file` of `dir`.
fn display(dir: &tempfile::TempDir, file: &str) -> String {
    dir.path().join(file).display().to_string()
}

/// The `--check` path: the same load, in a transaction that is rolled back, with no rejects file.
async fn check(db: &Db, customers: &Path, events: &Path, opts: &LoadOptions) -> Result<LoadReport> {
    let mut tx = db.pool.begin().await?;
    let report = load_staging(&mut tx, customers, events, &LoadOptions { dry_run: true, ..opts.clone() }).await?;
    tx.rollback().await?;
    Ok(report)
}

/// The reported cases: a product of 3,000 bytes failed the whole ingest when its index was built
/// (`index row size 3048 exceeds btree version 4 maximum 2704`), and a NUL byte failed COPY (exit 4), neither with
/// a file or line, while `--check` passed the long value. Each is now a row reject with its line, in a load, a
/// strict load and a check alike.
#[tokio::test]
async fn overlong_text_and_nul_bytes_are_row_rejects_with_their_line_in_ingest_and_check() {
    with_schema(|db| async move {
        let event = |product: &str, color: &str| format!("7,1,view,{product},{color},1.00,1,2024-03-04T10:00:00Z");
        let customer = |first: &str, last: &str, email: &str| format!("4,{first},{last},{email},PL,30,red,");
        let cases: Vec<(bool, String, &str)> = vec![
            (true, event(&incompressible(3000), "gold"), "product has 3000 characters, more than the 200 allowed"),
            (true, event("watches", &"é".repeat(201)), "color has 201 characters, more than the 200 allowed"),
            (
                false,
                customer(&"a".repeat(201), "Lee", "al4@example.com"),
                "first_name has 201 characters, more than the 200 allowed",
            ),
            (
                false,
                customer("Ann", &"b".repeat(201), "al4@example.com"),
                "last_name has 201 characters, more than the 200 allowed",
            ),
            (
                false,
                customer("Ann", "Lee", &format!("{}@example.com", "a".repeat(243))),
                "email has 255 characters, more than the 254 allowed",
            ),
            (true, event("soc\0ks", "red"), "the value contains a NUL byte in column product"),
            (false, customer("Ann", "Le\0e", "al4@example.com"), "the value contains a NUL byte in column last_name"),
            (
                false,
                "4\0,Ann,Lee,al4@example.com,PL,30,red,".to_owned(),
                "the value contains a NUL byte in column customer_id",
            ),
        ];
        for (in_events, row, reason) in cases {
            let (mut customers_text, mut events_text) = (GOOD_CUSTOMERS.to_owned(), GOOD_EVENTS.to_owned());
            let (target, file, line) =
                if in_events { (&mut events_text, "events.csv", 8) } else { (&mut customers_text, "customers.csv", 5) };
            target.push_str(&row);
            target.push('\n');
            let (dir, customers, events) = files(customers_text.as_bytes(), events_text.as_bytes());

            let report = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect(reason);
            assert_eq!((report.customers, report.events, report.rejected), (3, 6, 1), "{reason}");
            assert_eq!(read_rejects(&dir.path().join("rejects.csv")), [(display(&dir, file), line, reason.to_owned())]);

            let error = ingest(&db, &customers, &events, &options(dir.path(), true)).await.expect_err(reason);
            assert!(format!("{error:#}").ends_with(&format!("{file}:{line}: {reason}")), "{error:#}");

            let report = check(&db, &customers, &events, &options(dir.path(), false)).await.expect(reason);
            assert_eq!(report.rejected, 1, "{reason}");
            let rejected = &report.rejects_by_reason[0];
            assert_eq!((rejected.first_line, rejected.first_reason.as_str()), (line, reason));
        }

        // At the cap, even in 4-byte characters, product and colour fit their shared index entry.
        let at_cap = "😀".repeat(200);
        let events_text = format!("{GOOD_EVENTS}{}\n", event(&at_cap, &at_cap));
        let (dir, customers, events) = files(GOOD_CUSTOMERS.as_bytes(), events_text.as_bytes());
        let report = ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect("at the cap");
        assert_eq!((report.events, report.rejected), (7, 0));
        let product: String =
            sqlx::query_scalar("SELECT product FROM events WHERE event_id = 7").fetch_one(&db.pool).await.expect("7");
        assert_eq!(product, at_cap);
    })
    .await;
}

/// A European export: `;` between fields and `,` before the cents. A point in such a file may be a thousands
/// separator, so the row is rejected rather than read a thousand times too small or too large.
#[tokio::test]
async fn decimal_comma_reads_prices_and_amounts_and_rejects_an_ambiguous_point() {
    with_schema(|db| async move {
        let mapping = Mapping::parse(
            "[events]\ndelimiter = \"semicolon\"\ndecimal = \"comma\"\nevent_id = \"event_id\"\n\
             customer_id = \"customer_id\"\nevent_type = \"event_type\"\nproduct = \"product\"\nprice = \"price\"\n\
             quantity = \"quantity\"\namount = \"amount\"\nts = \"ts\"\n",
        )
        .expect("mapping");
        let events_text = "event_id;customer_id;event_type;product;price;quantity;amount;ts\n\
                           1;1;purchase;watches;1200,50;1;;2024-03-01T10:05:00Z\n\
                           2;2;purchase;socks;4,99;3;12,5;2024-03-02T09:01:00Z\n\
                           3;3;purchase;dresses;1.250;1;;2024-03-03 08:00:00\n\
                           4;3;purchase;dresses;89,90;-1;-89,90;2024-03-04 08:00:00\n";
        let (dir, customers, events) = files(GOOD_CUSTOMERS.as_bytes(), events_text.as_bytes());
        let opts = LoadOptions { mapping: Some(mapping), ..options(dir.path(), false) };
        let report = ingest(&db, &customers, &events, &opts).await.expect("load");
        assert_eq!((report.events, report.rejected), (3, 1));
        let rejects = read_rejects(&dir.path().join("rejects.csv"));
        assert_eq!((rejects[0].0.as_str(), rejects[0].1), (display(&dir, "events.csv").as_str(), 4));
        assert!(rejects[0].2.starts_with("price \"1.250\" is ambiguous with decimal = \"comma\""), "{}", rejects[0].2);
        let money: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT event_id, price::text, amount::text FROM events ORDER BY event_id")
                .fetch_all(&db.pool)
                .await
                .expect("money");
        assert_eq!(
            money,
            [
                (1, "1200.50".into(), "1200.50".into()),
                (2, "4.99".into(), "12.50".into()),
                (4, "89.90".into(), "-89.90".into())
            ]
        );

        // Without the key the same file's first price is refused, with the key to set.
        let mapping = Mapping::parse(
            "[events]\ndelimiter = \"semicolon\"\ncustomer_id = \"customer_id\"\nevent_type = \"event_type\"\n\
             price = \"price\"\nts = \"ts\"\n",
        )
        .expect("mapping");
        let opts = LoadOptions { mapping: Some(mapping), strict: true, ..options(dir.path(), false) };
        let error = ingest(&db, &customers, &events, &opts).await.expect_err("a comma without the key");
        assert!(
            format!("{error:#}").ends_with(
                "events.csv:2: price \"1200,50\" is not a non-negative decimal; for a decimal comma set decimal = \
                 \"comma\" in the mapping"
            ),
            "{error:#}"
        );
    })
    .await;
}

/// A date column without a format that rejects every row: the reason names the format to set (both, when day
/// and month cannot be told apart), and the summary keeps "RFC 3339" instead of masking it to "RFC #".
#[tokio::test]
async fn a_date_in_a_common_format_names_the_format_to_set() {
    with_schema(|db| async move {
        let dotted = GOOD_EVENTS
            .replace("2024-03-01T10:00:00Z", "01.03.2024 10:00")
            .replace("2024-03-02T09:00:00Z", "02.03.2024 09:00");
        let (dir, customers, events) = files(GOOD_CUSTOMERS.as_bytes(), dotted.as_bytes());
        let report = check(&db, &customers, &events, &options(dir.path(), false)).await.expect("check");
        assert_eq!(report.rejected, 2);
        let rejected = &report.rejects_by_reason[0];
        assert_eq!(rejected.rows, 2);
        assert_eq!(
            rejected.reason,
            "ts \"…\" is not a timestamp (RFC 3339, YYYY-MM-DD HH:MM:SS or YYYY-MM-DD); it reads as %d.%m.%Y %H:%M: \
             set format = \"…\" for column ts in the mapping"
        );
        assert_eq!(
            (rejected.first_line, rejected.first_reason.as_str()),
            (
                2,
                "ts \"01.03.2024 10:00\" is not a timestamp (RFC 3339, YYYY-MM-DD HH:MM:SS or YYYY-MM-DD); it reads as \
                 %d.%m.%Y %H:%M: set format = \"%d.%m.%Y %H:%M\" for column ts in the mapping"
            )
        );

        // Day first or month first: both are named. A signup date is a date column too.
        let slashed = GOOD_EVENTS.replace("2024-03-02T09:00:00Z", "03/02/2024");
        let customers_text = GOOD_CUSTOMERS.replace("2023-01-15", "15/01/2023");
        let (dir, customers, events) = files(customers_text.as_bytes(), slashed.as_bytes());
        ingest(&db, &customers, &events, &options(dir.path(), false)).await.expect("load");
        let rejects = read_rejects(&dir.path().join("rejects.csv"));
        let reason = |file: &str, line: u64| {
            rejects.iter().find(|r| r.0 == display(&dir, file) && r.1 == line).map(|r| r.2.clone()).expect("a reject")
        };
        assert_eq!(
            reason("customers.csv", 2),
            "signup_date \"15/01/2023\" is not a date (%Y-%m-%d); it reads as %d/%m/%Y: set format = \"%d/%m/%Y\" for \
             column signup_date in the mapping"
        );
        assert_eq!(
            reason("events.csv", 4),
            "ts \"03/02/2024\" is not a timestamp (RFC 3339, YYYY-MM-DD HH:MM:SS or YYYY-MM-DD); it reads day first or \
             month first (%d/%m/%Y or %m/%d/%Y): set format = \"%d/%m/%Y\" or format = \"%m/%d/%Y\" for column ts in \
             the mapping"
        );
    })
    .await;
}

/// The reported case: a header-only events file loaded with exit 0 and replaced every event with none.
#[tokio::test]
async fn a_load_that_leaves_no_events_where_there_were_some_fails_and_changes_nothing() {
    with_schema(|db| async move {
        let (good_dir, good_customers, good_events) = files(GOOD_CUSTOMERS.as_bytes(), GOOD_EVENTS.as_bytes());
        ingest(&db, &good_customers, &good_events, &options(good_dir.path(), false)).await.expect("good load");
        let before = snapshot(&db).await;
        assert!(!before.1.is_empty());

        let header = GOOD_EVENTS.lines().next().unwrap();
        let (dir, customers, events) = files(GOOD_CUSTOMERS.as_bytes(), format!("{header}\n").as_bytes());
        for limit in [RejectLimit::default(), RejectLimit::NONE] {
            let opts = LoadOptions { max_rejects: limit, ..options(dir.path(), false) };
            let error = ingest(&db, &customers, &events, &opts).await.expect_err("header-only events");
            let expected = format!(
                "no events in {}: it has no data rows, and loading it would remove every current event; nothing was \
                 changed",
                events.display()
            );
            assert_eq!(format!("{error:#}"), expected, "{limit}");
            assert_eq!(snapshot(&db).await, before, "{limit}: the live events were replaced");
        }

        // Every event of an unknown type: rejected, even where the reject limit would let them all go.
        let unknown_types = GOOD_EVENTS.replace(",view,", ",glance,").replace(",purchase,", ",glance,");
        let unknown_types = unknown_types.replace(",add_to_cart,", ",glance,");
        let (dir, customers, events) = files(GOOD_CUSTOMERS.as_bytes(), unknown_types.as_bytes());
        let opts = options(dir.path(), false);
        let error = ingest(&db, &customers, &events, &opts).await.expect_err("no valid events");
        let message = format!("{error:#}");
        let start = format!("no valid events in {}: ", events.display());
        assert!(message.starts_with(&start), "{message}");
        assert!(message.contains(", e.g. line 2: unknown event_type \"glance\""), "{message}");
        assert!(message.ends_with(&format!("nothing was changed; all rejects are in {}", opts.rejects_path.display())));
        assert_eq!(snapshot(&db).await, before);

        // A first load may have no events: there are none to lose.
        with_schema(|fresh| async move {
            let report = ingest(&fresh, &customers, &events, &options(dir.path(), false)).await.expect("first load");
            assert_eq!(report.events, 0);
        })
        .await;
    })
    .await;
}

/// The reported cases: with customers derived from the events, a customer whose every row was rejected was still
/// made (here `bob`, `cid` and `dan`, and `customer_id` from the header line); and a header line in a file the
/// mapping reads without one was rejected without saying why.
#[tokio::test]
async fn derived_customers_come_only_from_rows_that_load_and_a_header_line_is_named() {
    with_schema(|db| async move {
        let mapping = Mapping::parse(
            r#"
            [events]
            has_header = false
            columns = ["event_id", "customer_id", "event_type", "price", "ts"]
            event_id = "event_id"
            customer_id = "customer_id"
            event_type = "event_type"
            price = "price"
            ts = "ts"

            [customers]
            from_events = true
            customer_id = "customer_id"
            "#,
        )
        .unwrap();
        let log = "event_id,customer_id,event_type,price,ts\n\
                   1,ann,view,10.00,2024-05-01\n\
                   2,ann,purchase,10.00,2024-05-02\n\
                   3,bob,view,abc,2024-05-01\n\
                   4,bob,buy,5.00,2024-05-02\n\
                   5,cid,view,1.00,not-a-date\n\
                   1,dan,view,1.00,2024-05-03\n\
                   6,eve,view,1.00,2024-05-03\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("events.csv");
        std::fs::write(&events, log).expect("write events");
        let opts = LoadOptions { mapping: Some(mapping), ..options(dir.path(), false) };
        let report = ingest(&db, &events, &events, &opts).await.expect("load");
        assert_eq!((report.customers, report.events, report.rejected), (2, 3, 5));
        let customers: Vec<String> = sqlx::query_scalar("SELECT external_id FROM customers ORDER BY external_id")
            .fetch_all(&db.pool)
            .await
            .expect("customers");
        assert_eq!(customers, ["ann", "eve"]);

        let rejects = read_rejects(&dir.path().join("rejects.csv"));
        let lines: Vec<u64> = rejects.iter().map(|(_, line, _)| *line).collect();
        assert_eq!(lines, [1, 4, 5, 6, 7]);
        assert_eq!(
            rejects[0].2,
            "line 1 looks like a header: if the file has one, set has_header = true and remove columns = [...] in \
             the mapping (event_id \"event_id\" is not an integer)"
        );
        assert_eq!(rejects[4].2, "duplicate event_id 1");
    })
    .await;
}

/// Customers derived from the events file are made only from rows that load as events, and an event row is held
/// to every check of the events file (the decimal comma, the text caps, NUL bytes, the date hint), so none of
/// these rows makes a customer; a NUL byte in a column only the customers read still keeps its customer out.
#[tokio::test]
async fn derived_customers_hold_their_event_rows_to_every_event_check() {
    with_schema(|db| async move {
        let mapping = Mapping::parse(
            r#"
            [events]
            delimiter = "semicolon"
            decimal = "comma"
            event_id = "event_id"
            customer_id = "customer_id"
            event_type = "event_type"
            product = "product"
            price = "price"
            ts = "ts"

            [customers]
            from_events = true
            customer_id = "customer_id"
            first_name = "name"
            "#,
        )
        .unwrap();
        let log = format!(
            "event_id;customer_id;name;event_type;product;price;ts\n\
             1;ann;Ann;view;socks;12,50;2024-05-01\n\
             2;bob;Bob;view;socks;1.250;2024-05-01\n\
             3;cid;Cid;view;{};1,00;2024-05-01\n\
             4;dan;Dan;view;so\0cks;1,00;2024-05-01\n\
             5;eve;Eve;view;socks;1,00;31.12.2024\n\
             6;fay;F\0ay;view;socks;1,00;2024-05-01\n\
             7;gus;Gus;purchase;socks;4,99;2024-05-02\n",
            "p".repeat(201)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("events.csv");
        std::fs::write(&events, log).expect("write events");
        let opts = LoadOptions { mapping: Some(mapping), ..options(dir.path(), false) };
        let report = ingest(&db, &events, &events, &opts).await.expect("load");
        assert_eq!((report.customers, report.events, report.rejected), (2, 2, 5));
        let customers: Vec<(String, String)> =
            sqlx::query_as("SELECT external_id, first_name FROM customers ORDER BY external_id")
                .fetch_all(&db.pool)
                .await
                .expect("customers");
        assert_eq!(customers, [("ann".into(), "Ann".into()), ("gus".into(), "Gus".into())]);
        let prices: Vec<String> = sqlx::query_scalar("SELECT price::text FROM events ORDER BY event_id")
            .fetch_all(&db.pool)
            .await
            .expect("prices");
        assert_eq!(prices, ["12.50", "4.99"]);

        let rejects = read_rejects(&dir.path().join("rejects.csv"));
        let reasons: Vec<(u64, &str)> = rejects.iter().map(|(_, line, reason)| (*line, reason.as_str())).collect();
        assert_eq!(
            reasons,
            [
                (
                    3,
                    "price \"1.250\" is ambiguous with decimal = \"comma\": its point may be a thousands separator or \
                     a decimal point"
                ),
                (4, "product has 201 characters, more than the 200 allowed"),
                (5, "the value contains a NUL byte in column product"),
                (
                    6,
                    "ts \"31.12.2024\" is not a timestamp (RFC 3339, YYYY-MM-DD HH:MM:SS or YYYY-MM-DD); it reads as \
                     %d.%m.%Y: set format = \"%d.%m.%Y\" for column ts in the mapping"
                ),
                (7, "customer_id fay has no valid customer row (the value contains a NUL byte in column name)"),
            ]
        );
    })
    .await;
}
