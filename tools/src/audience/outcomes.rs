//! Each member's purchases in a period after a campaign: what the campaign's lift is measured on. A purchase is a
//! sale by the one return rule (`schema::is_sale`), and its revenue the line total that spend sums (`amount`), as
//! in the profiles; returns are left out, as they are from spend.

use chrono::{Days, NaiveDate};

use super::export::{Members, membership_query};
use super::report::data_for_compile;
use crate::failure::ToolFailure;
use crate::schema::is_sale;
use crate::stores::Stores;

/// One member's purchases in the period.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub external_id: String,
    pub orders: u32,
    pub revenue: f64,
}

/// Every member's outcome, in customer order, and the data's last day.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcomes {
    pub as_of: NaiveDate,
    pub members: Vec<Outcome>,
}

/// The purchases of every member from the start of `since` to the end of `until` (UTC days; without `until`, up to
/// the newest event), in one read-only query.
pub async fn outcomes(
    stores: &Stores,
    members: Members<'_>,
    since: NaiveDate,
    until: Option<NaiveDate>,
) -> Result<Outcomes, ToolFailure> {
    let as_of = data_for_compile(stores).await?.as_of;
    let (membership, bound) = membership_query(stores, members).await?;
    let mut window = format!("e.ts >= TIMESTAMPTZ '{since} 00:00:00+00'");
    if let Some(until) = until {
        let next = until.checked_add_days(Days::new(1)).unwrap_or(NaiveDate::MAX);
        window.push_str(&format!(" AND e.ts < TIMESTAMPTZ '{next} 00:00:00+00'"));
    }
    // One aggregate of the period's sales joined to the members: a hash join, cheaper than a lookup per member.
    let sql = format!(
        "SELECT p.external_id, coalesce(o.orders, 0), coalesce(o.revenue, 0)::float8 \
         FROM ({membership}) m JOIN profiles p ON p.customer_id = m.customer_id \
         LEFT JOIN (SELECT e.customer_id, count(*) AS orders, sum(coalesce(e.amount, 0)) AS revenue FROM events e \
                    WHERE e.event_type = 'purchase' AND {} AND {window} GROUP BY e.customer_id) o \
         ON o.customer_id = m.customer_id ORDER BY p.customer_id",
        is_sale("e.quantity")
    );
    let mut tx = stores.db.begin_read_only(stores.limits).await.map_err(ToolFailure::Fatal)?;
    let mut query = sqlx::query_as::<_, (String, i64, f64)>(&sql);
    if matches!(members, Members::Frozen(_)) {
        query = query.bind(bound);
    }
    let rows = query.fetch_all(&mut *tx).await?;
    tx.rollback().await?;
    let members = rows
        .into_iter()
        .map(|(external_id, orders, revenue)| Outcome {
            external_id,
            orders: u32::try_from(orders).unwrap_or(u32::MAX),
            revenue,
        })
        .collect();
    Ok(Outcomes { as_of, members })
}
