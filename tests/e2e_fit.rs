//! `audience fit` against the real stack: on an ingested sample, a refit with another horizon writes predictions
//! that a computation written here from the fit's parameters reproduces, as a new data version, and changes no
//! other profile field; a purchase log the models cannot describe leaves the fields NULL and says so.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod common;

use std::collections::HashMap;

use audience_ingest::predict::FitReport;
use audience_ingest::predict::bgnbd::{BgNbd, Dropout};
use audience_tools::db::Db;
use common::{Run, TestEnv, database_url};
use serde_json::Value;

fn ok(env: &TestEnv, args: &[&str]) -> Run {
    let run = Run::from(env.command(args).output().unwrap());
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    run
}

/// A buyer's history in days up to `as_of`, summarised here from the live `events`: every sale of one UTC day is one
/// purchase; `x` repeat days, `t_x` first to last day, `t` first day to `as_of`.
struct History {
    x: f64,
    t_x: f64,
    t: f64,
}

/// The profiles' columns other than the predicted ones, one text per customer, to prove they did not change.
const OTHER_FIELDS: &str = "SELECT customer_id, md5(row(external_id, first_name, last_name, email, country, age, \
    favorite_color, total_spent, order_count, return_count, first_purchase, last_purchase, recency_days, frequency, \
    monetary, r_score, f_score, m_score, churned, segment, interests, interest_weights, preferred_colors, \
    likes_luxury, profile_text, text_hash)::text) FROM profiles ORDER BY customer_id";

type Predicted = (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

async fn predicted(db: &Db, table: &str) -> Vec<Predicted> {
    sqlx::query_as(&format!(
        "SELECT customer_id, p_alive, expected_purchases, expected_avg_spend, clv_12m FROM {table} \
         ORDER BY customer_id"
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn version(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT version FROM dataset WHERE id = 1").fetch_one(&db.pool).await.unwrap()
}

async fn histories(db: &Db, as_of: chrono::NaiveDate) -> HashMap<i64, History> {
    let rows: Vec<(i64, i64, i32, i32)> = sqlx::query_as(
        "SELECT customer_id, count(*) - 1, max(day) - min(day), $1::date - min(day) FROM ( \
             SELECT DISTINCT customer_id, (ts AT TIME ZONE 'UTC')::date AS day FROM events \
             WHERE event_type = 'purchase' AND quantity > 0 AND (ts AT TIME ZONE 'UTC')::date <= $1) d \
         GROUP BY customer_id",
    )
    .bind(as_of)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, x, t_x, t)| (id, History { x: x as f64, t_x: f64::from(t_x), t: f64::from(t) }))
        .collect()
}

/// The Gauss hypergeometric series ₂F₁(a, b; c; z) for |z| < 1.
fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let (mut term, mut sum) = (1.0, 1.0);
    for n in 0..10_000 {
        let n = f64::from(n);
        term *= (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        sum += term;
        if term.abs() < 1e-15 * sum.abs() {
            break;
        }
    }
    sum
}

/// BG/NBD's expected purchases in the next `t` days (Fader, Hardie and Lee 2005, equation 10), and its limit with
/// one drop-out probability `p` for everyone: P(alive) · (1 - ((α+T)/(α+T+pt))^(r+x)) / p.
fn expected_purchases(model: &BgNbd, h: &History, t: f64) -> f64 {
    let (r, alpha, x) = (model.r, model.alpha, h.x);
    let ratio = (alpha + h.t) / (alpha + h.t_x);
    match model.dropout {
        Dropout::Beta { a, b } => {
            let z = t / (alpha + h.t + t);
            let head = (a + b + x - 1.0) / (a - 1.0);
            let tail = ((alpha + h.t) / (alpha + h.t + t)).powf(r + x) * hyp2f1(r + x, b + x, a + b + x - 1.0, z);
            let odds = if x > 0.0 { a / (b + x - 1.0) * ratio.powf(r + x) } else { 0.0 };
            head * (1.0 - tail) / (1.0 + odds)
        }
        Dropout::Homogeneous { p } => {
            let odds = if x > 0.0 { p / (1.0 - p) * ratio.powf(r + x) } else { 0.0 };
            let alive = 1.0 / (1.0 + odds);
            alive * (1.0 - ((alpha + h.t) / (alpha + h.t + p * t)).powf(r + x)) / p
        }
    }
}

#[tokio::test]
async fn a_refit_with_another_horizon_writes_a_new_version_and_changes_nothing_else() {
    let env = TestEnv::empty("fit");
    env.ingest_generated(env.data_dir(), 300, 42);
    let db = Db::connect(&database_url(), &env.schema).await.unwrap();
    let before_version = version(&db).await;
    let before = predicted(&db, "profiles").await;
    let other_fields: Vec<(i64, String)> = sqlx::query_as(OTHER_FIELDS).fetch_all(&db.pool).await.unwrap();
    let fingerprint: String =
        sqlx::query_scalar("SELECT fingerprint FROM dataset WHERE id = 1").fetch_one(&db.pool).await.unwrap();

    let report = ok(&env, &["fit", "--horizon-days", "30", "--json"]).json();
    assert_eq!(report["previous_version"], before_version);
    assert_eq!(report["version"], before_version + 1);
    assert_eq!(report["profiles"], 300);
    assert_eq!(version(&db).await, before_version + 1, "the data version changed");
    let fit: FitReport = serde_json::from_value(report["fit"].clone()).unwrap();
    assert_eq!(fit.options.horizon_days, 30);
    let stored: sqlx::types::Json<FitReport> =
        sqlx::query_scalar("SELECT prediction_fit FROM dataset WHERE id = 1").fetch_one(&db.pool).await.unwrap();
    assert_eq!(stored.0, fit, "the fit is kept with the version it wrote");
    let model = fit.purchases.expect("the purchase model fits the generated sample").params;

    // Each buyer's expected purchases over 30 days, computed here from the reported parameters and the purchase log.
    let as_of: chrono::NaiveDate = report["as_of"].as_str().unwrap().parse().unwrap();
    let histories = histories(&db, as_of).await;
    assert_eq!(histories.len() as u64, fit.buyers);
    let after = predicted(&db, "profiles").await;
    let mut shorter = 0;
    for ((id, alive, expected, spend, clv), (_, alive_90, expected_90, spend_90, clv_90)) in after.iter().zip(&before) {
        let Some(history) = histories.get(id) else {
            assert_eq!((alive, expected, spend, clv), (&None, &None, &None, &None), "prospect {id}");
            continue;
        };
        let want = expected_purchases(&model, history, 30.0);
        let got = expected.expect("a buyer's expected purchases");
        assert!((got - want).abs() <= 0.5e-4 + 1e-9, "customer {id}: stored {got}, computed {want}");
        assert!(got <= expected_90.unwrap(), "customer {id}: 30 days expect no more than 90");
        shorter += usize::from(got < expected_90.unwrap());
        // The same data and as-of day: the same fit, so the fields that do not depend on the horizon stay.
        assert_eq!((alive, spend, clv), (alive_90, spend_90, clv_90), "customer {id}");
    }
    assert!(shorter * 2 > histories.len(), "only {shorter} of {} buyers expect fewer purchases", histories.len());

    // Nothing else changed: the other fields, the texts (so the vector index stays current), the derived facts agree.
    let unchanged: Vec<(i64, String)> = sqlx::query_as(OTHER_FIELDS).fetch_all(&db.pool).await.unwrap();
    assert_eq!(unchanged, other_fields);
    let same_fingerprint: String =
        sqlx::query_scalar("SELECT fingerprint FROM dataset WHERE id = 1").fetch_one(&db.pool).await.unwrap();
    assert_eq!(same_fingerprint, fingerprint);
    assert_eq!(predicted(&db, "customer_facts").await, after, "customer_facts carries the new predictions");
    let current: bool = sqlx::query_scalar("SELECT derived_version = version FROM dataset WHERE id = 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(current, "the derived tables stay current with the new version");

    // The default horizon again: the 90-day values come back, as a further version; the text names the fit.
    let text = ok(&env, &["fit"]).stdout;
    assert!(text.contains(&format!("as data version {} (was {})", before_version + 2, before_version + 1)), "{text}");
    assert!(text.contains("purchase model (BG/NBD, ") && text.contains("log-likelihood"), "{text}");
    assert_eq!(predicted(&db, "profiles").await, before);
}

#[tokio::test]
async fn a_purchase_log_the_models_cannot_describe_leaves_the_fields_unknown() {
    let env = TestEnv::empty("fitnone");
    let refused = Run::from(env.command(&["fit"]).output().unwrap());
    assert_eq!(refused.code, 4, "nothing ingested yet is a store error: {}", refused.stderr);
    assert!(refused.stderr.contains("run `audience ingest` first"), "{}", refused.stderr);

    env.ingest_generated(env.data_dir(), 60, 7);
    // The purchases turned into views behind ingest's back: there is nobody left to fit the models to.
    env.execute("UPDATE events SET event_type = 'view' WHERE event_type = 'purchase'");
    let run = ok(&env, &["fit", "--json"]);
    let report = run.json();
    assert_eq!(report["fit"]["purchases"], Value::Null);
    assert_eq!(report["fit"]["spend"], Value::Null);
    let notes: Vec<&str> = report["fit"]["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(notes.iter().any(|n| n.contains("no purchases") && n.contains("unknown")), "{notes:?}");
    let db = Db::connect(&database_url(), &env.schema).await.unwrap();
    for table in ["profiles", "customer_facts"] {
        for (id, alive, expected, spend, clv) in predicted(&db, table).await {
            assert_eq!((alive, expected, spend, clv), (None, None, None, None), "{table}: customer {id}");
        }
    }
    let text = ok(&env, &["fit"]).stdout;
    assert!(text.contains("purchase model not fitted (no purchases"), "{text}");
}
