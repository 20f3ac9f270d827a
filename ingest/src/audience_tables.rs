//! The tables the audience and metrics compilers read instead of the wide profiles and the raw events
//! (`customer_facts`, `event_totals` and the metrics' rollups, see `audience_tools::schema` and
//! `audience_tools::metrics::rollups`), derived inside the ingest transaction from the staging tables, so they are
//! swapped in with, and always describe, the data they come from.

use anyhow::{Context, Result};
use audience_tools::metrics::rollups;
use audience_tools::schema::{
    CUSTOMER_FACTS, CUSTOMER_FACTS_COLUMNS, DERIVED_TABLES, EVENT_TOTALS, is_return, spend_band_sql,
};
use chrono::NaiveDate;
use sqlx::PgConnection;

/// Creates `customer_facts_staging` from `profiles_staging`, and `event_totals_staging` and the metrics' rollups
/// from `events_staging` (replacing earlier ones). `as_of` is the profiles' day: `last_ts` counts only events up to its end, as an
/// audience clause's "within the last N days" does.
pub async fn build(conn: &mut PgConnection, as_of: NaiveDate) -> Result<()> {
    for name in DERIVED_TABLES {
        sqlx::query(&format!("DROP TABLE IF EXISTS {name}_staging")).execute(&mut *conn).await?;
    }
    let columns = CUSTOMER_FACTS_COLUMNS.join(", ");
    let band = spend_band_sql("total_spent");
    sqlx::query(&format!(
        "CREATE TABLE {CUSTOMER_FACTS}_staging AS \
         SELECT {columns}, ({band})::smallint AS spend_band FROM profiles_staging"
    ))
    .execute(&mut *conn)
    .await
    .context("cannot derive the customer facts")?;
    sqlx::query(&format!("ALTER TABLE {CUSTOMER_FACTS}_staging ADD PRIMARY KEY (customer_id)"))
        .execute(&mut *conn)
        .await?;
    // A return (`schema::is_return`) is not a purchase, which an audience clause on purchases leaves out (see
    // `audience::compile`); views and cart additions count whatever their quantity.
    let returned = is_return("quantity");
    sqlx::query(&format!(
        "CREATE TABLE {EVENT_TOTALS}_staging AS \
         SELECT customer_id, event_type, product, count(*)::integer AS events, \
                max(ts) FILTER (WHERE ts < (($1::date + 1)::timestamp AT TIME ZONE 'UTC')) AS last_ts, \
                min(price) AS min_price, max(price) AS max_price \
         FROM events_staging WHERE NOT (event_type = 'purchase' AND {returned}) \
         GROUP BY customer_id, event_type, product"
    ))
    .bind(as_of)
    .execute(&mut *conn)
    .await
    .context("cannot derive the event totals")?;
    for statement in rollups::build_statements("events_staging", as_of) {
        sqlx::query(&statement).execute(&mut *conn).await.context("cannot derive the metrics' rollups")?;
    }
    Ok(())
}
