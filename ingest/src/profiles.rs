//! Customer profiles computed in SQL from `customers_staging` and `events_staging` into `profiles_staging`.
//!
//! Definitions (the README copies this list):
//! - `as_of` is the day profiles are computed for: `--as-of`, else the UTC day of the newest event. Events after
//!   that day are ignored, so a profile "as of" a past day is what it would have been on that day.
//! - A purchase is a `purchase` event with a positive quantity; a negative quantity is a return. Returns count in
//!   `return_count` and are excluded from spend, orders and interests.
//! - `total_spent` = `monetary` = sum of the line totals (`amount`: the file's own, else price x quantity; 0 when
//!   the file gives neither) over purchases; `order_count` = `frequency` = number of purchases; `recency_days` =
//!   `as_of` minus the UTC day of the last purchase (NULL without purchases).
//! - `r_score`, `f_score`, `m_score` are 1..5 (5 = most recent / most frequent / highest spend) among customers with
//!   at least one purchase. Equal values share a score: each tie group is placed at the middle of its share of the
//!   buyers, and the places are stretched so the lowest group scores 1 and the highest 5 (so 51% one-time buyers
//!   score f 1, not 3). A dimension in which every buyer has the same value (every spend 0 in a clickstream) carries
//!   no information: every buyer scores 3 in it, and the ingest summary says so ([`ProfileStats::notes`]).
//!   Customers without purchases get 1, 1, 1.
//! - `churned`: has purchased, but not within the 90 days up to `as_of` (`recency_days >= 90`). A customer who never
//!   purchased is NOT churned: there is nothing to win back, they are a prospect (segment `Standard Promo`).
//! - `segment`: `Churn Recovery` when churned; else `VIP Loyalty` when monetary or frequency is at or above the 80th
//!   percentile (continuous, among customers with purchases) and above that dimension's lowest value (so a tie at
//!   the bottom, such as every spend 0, makes nobody VIP); else `Standard Promo`.
//! - Interests: each event weighs purchase 3, add_to_cart 2, view 1 towards its product category; `interests` are
//!   the top 3 categories by weight (ties by name), with their weights in `interest_weights`; `preferred_colors`
//!   the top 2 colors by the same weights.
//! - `likes_luxury`: `total_spent > 800`.
//! - `p_alive`, `expected_purchases`, `expected_avg_spend`, `clv_12m`: predicted by the purchase and spend models
//!   of [`crate::predict`] (see there), NULL for a customer without a purchase or when a model was not fitted.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{NaiveDate, Utc};
use sqlx::PgConnection;

use crate::predict::{self, FitReport, PREDICTIONS_TABLE};
use crate::render::{self, ProfileFacts};
use audience_tools::schema::{CHURN_DAYS, PREDICTED_COLUMNS, PROFILES, is_return, is_sale};
/// Spend above which a customer "likes luxury items".
pub const LUXURY_SPEND: f64 = 800.0;
/// Profiles rendered per round trip; bounds memory at any customer count.
const RENDER_PAGE: i64 = 10_000;

/// What [`compute`] produced.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProfileStats {
    pub profiles: u64,
    pub as_of: NaiveDate,
    pub vip: u64,
    pub churn_recovery: u64,
    pub standard: u64,
    pub likes_luxury: u64,
    /// What the data could not tell: a dimension every buyer ties in, or no purchases at all.
    pub notes: Vec<String>,
    /// The purchase and spend models fitted for the predicted fields.
    pub prediction: FitReport,
    /// Seconds the predicted fields took: reading the purchase histories, fitting both models and writing every
    /// buyer's predictions (part of the profiles stage; issue 23 bounds what the fit adds to an ingest).
    pub prediction_seconds: f64,
}

/// Creates and fills `profiles_staging` (replacing any earlier one) from the staging tables on `conn`.
///
/// Run it inside the ingest transaction, after `load_staging` and before `swap_in`. It uses two temporary tables
/// (`profile_facts`, `profile_texts`) and drops them before returning.
pub async fn compute(
    conn: &mut PgConnection,
    as_of: Option<NaiveDate>,
    prediction: predict::Options,
) -> Result<ProfileStats> {
    let as_of = match as_of {
        Some(day) => day,
        None => {
            sqlx::query_scalar::<_, Option<NaiveDate>>("SELECT (max(ts) AT TIME ZONE 'UTC')::date FROM events_staging")
                .fetch_one(&mut *conn)
                .await
                .context("cannot read the newest event time")?
                .unwrap_or_else(|| Utc::now().date_naive())
        }
    };

    for statement in [
        "DROP TABLE IF EXISTS profile_facts",
        "DROP TABLE IF EXISTS profile_texts",
        "DROP TABLE IF EXISTS profiles_staging",
    ] {
        sqlx::query(statement).execute(&mut *conn).await?;
    }
    sqlx::query(&facts_sql())
        .bind(as_of)
        .bind(CHURN_DAYS)
        .bind(LUXURY_SPEND)
        .execute(&mut *conn)
        .await
        .context("cannot compute profile facts")?;
    sqlx::query("ALTER TABLE profile_facts ADD PRIMARY KEY (customer_id)").execute(&mut *conn).await?;
    sqlx::query("CREATE TEMP TABLE profile_texts (customer_id BIGINT PRIMARY KEY, profile_text TEXT NOT NULL, text_hash TEXT NOT NULL)")
        .execute(&mut *conn)
        .await?;

    render_texts(conn).await.context("cannot write profile texts")?;
    let started = Instant::now();
    let prediction = predict::fit_profiles(conn, "events_staging", as_of, prediction).await?;
    let prediction_seconds = started.elapsed().as_secs_f64();

    sqlx::query(&format!("CREATE TABLE profiles_staging ({})", PROFILES.ddl())).execute(&mut *conn).await?;
    let facts = fact_columns().join(", ");
    let predicted = PREDICTED_COLUMNS.join(", ");
    sqlx::query(&format!(
        "INSERT INTO profiles_staging ({facts}, {predicted}, profile_text, text_hash) \
         SELECT {facts}, {predicted}, t.profile_text, t.text_hash \
         FROM profile_facts JOIN profile_texts t USING (customer_id) LEFT JOIN {PREDICTIONS_TABLE} USING (customer_id)"
    ))
    .execute(&mut *conn)
    .await
    .context("cannot fill profiles_staging")?;
    sqlx::query(&format!("DROP TABLE profile_facts, profile_texts, {PREDICTIONS_TABLE}")).execute(&mut *conn).await?;

    let (profiles, vip, churn_recovery, standard, likes_luxury): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE segment = 'VIP Loyalty'), \
         count(*) FILTER (WHERE segment = 'Churn Recovery'), count(*) FILTER (WHERE segment = 'Standard Promo'), \
         count(*) FILTER (WHERE likes_luxury) FROM profiles_staging",
    )
    .fetch_one(&mut *conn)
    .await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let mut notes = uninformative_dimensions(conn).await?;
    notes.extend(no_products(conn).await?);
    Ok(ProfileStats {
        profiles: count(profiles),
        as_of,
        vip: count(vip),
        churn_recovery: count(churn_recovery),
        standard: count(standard),
        likes_luxury: count(likes_luxury),
        notes,
        prediction,
        prediction_seconds,
    })
}

/// A note when no event names a product: interests come only from products, so every profile text then says "No
/// shopping interests yet." and an intent has nothing to rank customers by. Usually the mapping names no product
/// column.
async fn no_products(conn: &mut PgConnection) -> Result<Option<String>> {
    let any_product: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events_staging WHERE product IS NOT NULL)")
            .fetch_one(&mut *conn)
            .await
            .context("cannot look for products")?;
    Ok((!any_product).then(|| {
        "no event names a product (is a product column mapped?): profiles get no interests, so ranking by an intent \
         cannot tell customers apart; map the column that names the product or category to `product`"
            .to_owned()
    }))
}

/// Min, median and max of one profile figure over all customers.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// How spend and purchases spread over the customers: a line total mapped to `price` (spend multiplied by the
/// quantity) or purchases that were never mapped show here before they reach the data.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Distribution {
    pub spend: Spread,
    pub orders: Spread,
    /// The share of customers with any purchase, 0 to 1.
    pub buyers_share: f64,
}

/// The [`Distribution`] of `profiles_staging` (after [`compute`]).
pub async fn distribution(conn: &mut PgConnection) -> Result<Distribution> {
    type Row = (f64, f64, f64, f64, f64, f64, f64);
    let (spend_min, spend_median, spend_max, orders_min, orders_median, orders_max, buyers_share): Row =
        sqlx::query_as(
            "SELECT coalesce(min(total_spent), 0)::float8,              coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY total_spent), 0)::float8,              coalesce(max(total_spent), 0)::float8, coalesce(min(order_count), 0)::float8,              coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY order_count), 0)::float8,              coalesce(max(order_count), 0)::float8, coalesce(avg((order_count > 0)::int), 0)::float8              FROM profiles_staging",
        )
        .fetch_one(&mut *conn)
        .await
        .context("cannot read the spend and order distribution")?;
    Ok(Distribution {
        spend: Spread { min: spend_min, median: spend_median, max: spend_max },
        orders: Spread { min: orders_min, median: orders_median, max: orders_max },
        buyers_share,
    })
}

/// Notes on the RFM dimensions in which every buyer has the same value, and on data without purchases.
async fn uninformative_dimensions(conn: &mut PgConnection) -> Result<Vec<String>> {
    let (buyers, recencies, frequencies, spends, spend): (i64, i64, i64, i64, Option<String>) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT recency_days), count(DISTINCT order_count), count(DISTINCT total_spent), \
         min(total_spent)::text FROM profiles_staging WHERE order_count > 0",
    )
    .fetch_one(&mut *conn)
    .await?;
    if buyers == 0 {
        return Ok(vec!["no purchases: every customer is a prospect (RFM scores 1, none churned, no VIP)".to_owned()]);
    }
    let mut notes = Vec::new();
    let mut note = |distinct: i64, dimension: &str, what: String| {
        if distinct == 1 && buyers > 1 {
            notes.push(format!("{dimension} carries no information: {what}, so every buyer scores 3 in it"));
        }
    };
    note(recencies, "recency", "every buyer last purchased on the same day".to_owned());
    note(frequencies, "frequency", "every buyer has the same number of purchases".to_owned());
    let spend = spend.unwrap_or_default();
    note(spends, "monetary", format!("every buyer spent {spend} (no prices or amounts in the file?)"));
    Ok(notes)
}

/// Reads facts page by page (keyset on customer_id), renders each text and COPYs it into `profile_texts`.
async fn render_texts(conn: &mut PgConnection) -> Result<()> {
    let mut after = i64::MIN;
    loop {
        let page: Vec<ProfileFacts> = sqlx::query_as(
            "SELECT customer_id, favorite_color, interests, interest_weights, preferred_colors, likes_luxury \
             FROM profile_facts WHERE customer_id > $1 ORDER BY customer_id LIMIT $2",
        )
        .bind(after)
        .bind(RENDER_PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = page.last() else { return Ok(()) };
        after = last.customer_id;

        let mut rows = String::with_capacity(page.len() * 400);
        for facts in &page {
            let text = render::render(facts);
            let hash = render::text_hash(&text);
            let _ = writeln!(rows, "{}\t{}\t{}", facts.customer_id, copy_escape(&text), hash);
        }
        let mut copy = conn.copy_in_raw("COPY profile_texts (customer_id, profile_text, text_hash) FROM STDIN").await?;
        copy.send(rows.into_bytes()).await?;
        copy.finish().await?;
    }
}

/// Escapes a value for COPY's text format, where backslash, tab, newline and carriage return are special.
fn copy_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// The profile columns computed in SQL: every profiles column but the rendered text and its hash, and the
/// predicted ones.
fn fact_columns() -> Vec<&'static str> {
    PROFILES
        .columns()
        .into_iter()
        .filter(|c| !matches!(*c, "profile_text" | "text_hash") && !PREDICTED_COLUMNS.contains(c))
        .collect()
}

/// `$1` = as_of (date), `$2` = churn days, `$3` = luxury spend. Events are scanned twice: once for purchase totals,
/// once (pre-aggregated per customer, product and color) for interests and colors.
fn facts_sql() -> String {
    let (sale, returned) = (is_sale("quantity"), is_return("quantity"));
    format!(
        "
CREATE TEMP TABLE profile_facts AS
WITH purchases AS (
    SELECT customer_id,
           sum(coalesce(amount, 0)) FILTER (WHERE {sale}) AS total_spent,
           count(*) FILTER (WHERE {sale}) AS order_count,
           count(*) FILTER (WHERE {returned}) AS return_count,
           min(ts) FILTER (WHERE {sale}) AS first_purchase,
           max(ts) FILTER (WHERE {sale}) AS last_purchase
    FROM events_staging
    WHERE event_type = 'purchase' AND ts < (($1::date + 1)::timestamp AT TIME ZONE 'UTC')
    GROUP BY customer_id
),
cells AS (
    SELECT customer_id, product, color,
           sum(CASE event_type WHEN 'purchase' THEN 3 WHEN 'add_to_cart' THEN 2 ELSE 1 END) AS weight
    FROM events_staging
    WHERE NOT (event_type = 'purchase' AND {returned}) AND ts < (($1::date + 1)::timestamp AT TIME ZONE 'UTC')
    GROUP BY customer_id, product, color
),
interest_rank AS (
    SELECT customer_id, product, sum(weight) AS weight,
           row_number() OVER (PARTITION BY customer_id ORDER BY sum(weight) DESC, product) AS rank
    FROM cells WHERE product IS NOT NULL AND product <> '' GROUP BY customer_id, product
),
interests AS (
    SELECT customer_id, array_agg(product ORDER BY rank) AS interests,
           array_agg(weight::integer ORDER BY rank) AS interest_weights
    FROM interest_rank WHERE rank <= 3 GROUP BY customer_id
),
color_rank AS (
    SELECT customer_id, color,
           row_number() OVER (PARTITION BY customer_id ORDER BY sum(weight) DESC, color) AS rank
    FROM cells WHERE color IS NOT NULL AND color <> '' GROUP BY customer_id, color
),
colors AS (
    SELECT customer_id, array_agg(color ORDER BY rank) AS colors
    FROM color_rank WHERE rank <= 2 GROUP BY customer_id
),
base AS (
    SELECT c.customer_id, c.external_id, c.first_name, c.last_name, c.email, c.country, c.age, c.favorite_color,
           coalesce(p.total_spent, 0)::numeric(14,2) AS total_spent,
           coalesce(p.order_count, 0)::integer AS order_count,
           coalesce(p.return_count, 0)::integer AS return_count,
           p.first_purchase, p.last_purchase,
           ($1::date - (p.last_purchase AT TIME ZONE 'UTC')::date)::integer AS recency_days,
           coalesce(i.interests, '{{}}') AS interests,
           coalesce(i.interest_weights, '{{}}') AS interest_weights,
           coalesce(co.colors, '{{}}') AS preferred_colors
    FROM customers_staging c
    LEFT JOIN purchases p USING (customer_id)
    LEFT JOIN interests i USING (customer_id)
    LEFT JOIN colors co USING (customer_id)
),
thresholds AS (
    SELECT percentile_cont(0.8) WITHIN GROUP (ORDER BY total_spent) AS monetary_p80,
           percentile_cont(0.8) WITHIN GROUP (ORDER BY order_count) AS frequency_p80,
           min(total_spent) AS monetary_min, min(order_count) AS frequency_min
    FROM base WHERE order_count > 0
),
-- Each buyer's place in each dimension: the middle of its tie group's share of the buyers (ties share a place).
placed AS (
    SELECT b.*,
           ((rank() OVER r - 1)::float8 / count(*) OVER () + cume_dist() OVER r) / 2 AS r_place,
           ((rank() OVER f - 1)::float8 / count(*) OVER () + cume_dist() OVER f) / 2 AS f_place,
           ((rank() OVER m - 1)::float8 / count(*) OVER () + cume_dist() OVER m) / 2 AS m_place
    FROM base b WHERE b.order_count > 0
    WINDOW r AS (ORDER BY b.recency_days DESC), f AS (ORDER BY b.order_count), m AS (ORDER BY b.total_spent)
),
-- Places stretched so the lowest tie group scores 1 and the highest 5 (to the nearest, halves up); a dimension in which every buyer has the
-- same value says nothing, and scores a neutral 3.
scores AS (
    SELECT customer_id,
           coalesce(1 + floor(0.5 + 4 * (r_place - min(r_place) OVER ())
                                 / nullif(max(r_place) OVER () - min(r_place) OVER (), 0)), 3) AS r_score,
           coalesce(1 + floor(0.5 + 4 * (f_place - min(f_place) OVER ())
                                 / nullif(max(f_place) OVER () - min(f_place) OVER (), 0)), 3) AS f_score,
           coalesce(1 + floor(0.5 + 4 * (m_place - min(m_place) OVER ())
                                 / nullif(max(m_place) OVER () - min(m_place) OVER (), 0)), 3) AS m_score
    FROM placed
),
scored AS (
    SELECT b.*,
           coalesce(s.r_score, 1)::smallint AS r_score,
           coalesce(s.f_score, 1)::smallint AS f_score,
           coalesce(s.m_score, 1)::smallint AS m_score,
           (b.order_count > 0 AND b.recency_days >= $2) AS churned,
           -- Above the lowest value too: when most buyers tie at the bottom (every spend 0), the tie is not VIP.
           (b.order_count > 0 AND ((b.total_spent >= t.monetary_p80 AND b.total_spent > t.monetary_min)
                                   OR (b.order_count >= t.frequency_p80 AND b.order_count > t.frequency_min))) AS top_buyer
    FROM base b CROSS JOIN thresholds t LEFT JOIN scores s USING (customer_id)
)
SELECT customer_id, external_id, first_name, last_name, email, country, age, favorite_color, total_spent,
       order_count, return_count, first_purchase, last_purchase, recency_days,
       order_count AS frequency, total_spent AS monetary, r_score, f_score, m_score, churned,
       CASE WHEN churned THEN 'Churn Recovery' WHEN top_buyer THEN 'VIP Loyalty' ELSE 'Standard Promo' END AS segment,
       interests, interest_weights, preferred_colors,
       total_spent > $3::numeric AS likes_luxury
FROM scored"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_copy_text_specials() {
        assert_eq!(copy_escape("a\\b\tc\nd\re"), "a\\\\b\\tc\\nd\\re");
    }
}
