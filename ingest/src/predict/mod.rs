//! Purchase prediction and customer value, fitted at ingest (or again by `audience fit`) on the purchase log: who is still a customer
//! (`p_alive`), how many purchases to expect in the next days (`expected_purchases`), the expected value of a
//! purchase (`expected_avg_spend`) and the discounted value of the next 12 months (`clv_12m`).
//!
//! Two standard models, fitted by maximum likelihood ([`bgnbd`], [`gamma_gamma`]):
//! - BG/NBD (Fader, Hardie and Lee 2005) for the purchases, over every buyer;
//! - Gamma-Gamma for the spend per purchase, over the repeat buyers.
//!
//! A purchase here is a *purchase day*: every sale (`schema::is_sale`) of a customer on one UTC day is one
//! transaction, as `lifetimes` counts them, so a basket of three lines is one purchase. Its value is the day's
//! spend. The time unit at ingest is the day ([`TimeUnit::Days`]): `T` counts from the first purchase day to
//! `as_of`. Customers without a purchase are not in the models (there is no purchase process to describe yet):
//! their fields are NULL, as are everyone's when a model cannot be fitted or does not converge ([`FitReport`]
//! says why); a number is never made up.
//!
//! CLV follows `lifetimes`' `customer_lifetime_value`: over months i = 1..12 (a month is 30 days, or 4.345 weeks),
//! the expected purchases of month i (the difference of the cumulative expectations) times the expected average
//! spend, discounted by (1 + d)^i at the monthly rate d ([`Options::monthly_discount`], 1% by default).

pub mod bgnbd;
pub mod gamma_gamma;
mod optimize;

use std::fmt::Write as _;

use anyhow::{Context, Result};
use audience_tools::schema::{PREDICTED_COLUMNS, is_sale};
use chrono::NaiveDate;
use sqlx::PgConnection;

use bgnbd::{BgNbd, Dropout, History};
use gamma_gamma::{GammaGamma, Spend};

/// The unit that purchase histories and α are measured in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    Days,
    /// The unit of the BG/NBD paper's CDNOW example.
    Weeks,
}

impl TimeUnit {
    pub fn days(self) -> f64 {
        match self {
            Self::Days => 1.0,
            Self::Weeks => 7.0,
        }
    }

    /// A month in this unit, as `lifetimes` counts it for CLV (30 days; 4.345 weeks).
    pub fn month(self) -> f64 {
        match self {
            Self::Days => 30.0,
            Self::Weeks => 4.345,
        }
    }
}

/// What to predict.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Options {
    /// The horizon of `expected_purchases`, in days.
    pub horizon_days: u32,
    /// The monthly discount rate of `clv_12m` (0.01 = 1% a month).
    pub monthly_discount: f64,
}

/// The horizon of `expected_purchases` when none is given.
pub const DEFAULT_HORIZON_DAYS: u32 = 90;
/// The months that `clv_12m` covers.
pub const CLV_MONTHS: u32 = 12;

impl Default for Options {
    fn default() -> Self {
        Self { horizon_days: DEFAULT_HORIZON_DAYS, monthly_discount: 0.01 }
    }
}

/// One buyer: their purchase history and the mean value of their repeat purchases (0 without one).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Buyer {
    pub history: History,
    pub mean_repeat_spend: f64,
}

/// A fitted model's parameters and maximised log-likelihood.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelFit<P> {
    pub params: P,
    pub log_likelihood: f64,
}

/// What a fit found: the models that converged, and why the others did not.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitReport {
    pub time_unit: TimeUnit,
    pub options: Options,
    pub buyers: u64,
    pub repeat_buyers: u64,
    pub purchases: Option<ModelFit<BgNbd>>,
    pub spend: Option<ModelFit<GammaGamma>>,
    /// Why a model was not fitted or not used, in words.
    pub notes: Vec<String>,
}

impl FitReport {
    /// One line per model for the ingest summary.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let unit = match self.time_unit {
            TimeUnit::Days => "days",
            TimeUnit::Weeks => "weeks",
        };
        if let Some(fit) = &self.purchases {
            let BgNbd { r, alpha, dropout } = fit.params;
            let dropout = match dropout {
                Dropout::Beta { a, b } => format!("a {a:.4}, b {b:.4}"),
                Dropout::Homogeneous { p } => format!("drop-out p {p:.4} for everyone (a, b -> infinity)"),
            };
            lines.push(format!(
                "purchase model (BG/NBD, {} buyers, time in {unit}): r {r:.4}, alpha {alpha:.4}, {dropout}, \
                 log-likelihood {:.2}",
                self.buyers, fit.log_likelihood
            ));
        }
        if let Some(fit) = &self.spend {
            let GammaGamma { p, q, v } = fit.params;
            lines.push(format!(
                "spend model (Gamma-Gamma, {} repeat buyers): p {p:.4}, q {q:.4}, v {v:.4}, log-likelihood {:.2}",
                self.repeat_buyers, fit.log_likelihood
            ));
        }
        lines.extend(self.notes.iter().cloned());
        lines
    }
}

/// Fits both models to `buyers` (histories in `unit`).
pub fn fit(buyers: &[Buyer], unit: TimeUnit, options: Options) -> FitReport {
    let histories: Vec<History> = buyers.iter().map(|b| b.history).collect();
    let mut notes = Vec::new();
    let purchases = match bgnbd::fit(&histories) {
        Ok(fit) => Some(ModelFit { params: fit.params, log_likelihood: fit.log_likelihood }),
        Err(reason) => {
            notes.push(format!(
                "purchase model not fitted ({reason}): p_alive, expected_purchases and clv_12m are unknown"
            ));
            None
        }
    };
    let spends: Vec<Spend> = buyers.iter().map(|b| Spend { x: b.history.x, m: b.mean_repeat_spend }).collect();
    let spend = match gamma_gamma::fit(&spends) {
        Ok(fit) => Some(ModelFit { params: fit.params, log_likelihood: fit.log_likelihood }),
        Err(reason) => {
            notes.push(format!("spend model not fitted ({reason}): expected_avg_spend and clv_12m are unknown"));
            None
        }
    };
    let repeat_buyers = buyers.iter().filter(|b| b.history.x > 0).count() as u64;
    FitReport { time_unit: unit, options, buyers: buyers.len() as u64, repeat_buyers, purchases, spend, notes }
}

/// One buyer's predicted fields; `None` is NULL.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prediction {
    pub p_alive: Option<f64>,
    pub expected_purchases: Option<f64>,
    pub expected_avg_spend: Option<f64>,
    pub clv: Option<f64>,
}

impl FitReport {
    /// The predicted fields of `buyer` (in the fit's unit) from whichever models were fitted: the spend model
    /// alone gives `expected_avg_spend`, CLV needs both.
    pub fn predict(&self, buyer: &Buyer) -> Prediction {
        let h = &buyer.history;
        let expected_avg_spend = self.spend.map(|fit| fit.params.expected_average_spend(h.x, buyer.mean_repeat_spend));
        let Some(purchases) = self.purchases.map(|fit| fit.params) else {
            return Prediction { expected_avg_spend, ..Prediction::default() };
        };
        let horizon = f64::from(self.options.horizon_days) / self.time_unit.days();
        Prediction {
            p_alive: Some(purchases.p_alive(h)),
            expected_purchases: purchases.expected_purchases(h, horizon),
            expected_avg_spend,
            clv: expected_avg_spend.and_then(|spend| self.clv(&purchases, h, spend)),
        }
    }

    /// The discounted value of the next [`CLV_MONTHS`] months (see the module documentation).
    fn clv(&self, purchases: &BgNbd, h: &History, spend: f64) -> Option<f64> {
        let month = self.time_unit.month();
        let mut value = 0.0;
        let mut before = 0.0;
        for i in 1..=CLV_MONTHS {
            let cumulative = purchases.expected_purchases(h, f64::from(i) * month)?;
            value += spend * (cumulative - before) / (1.0 + self.options.monthly_discount).powi(i as i32);
            before = cumulative;
        }
        Some(value)
    }
}

/// The temporary table [`fit_profiles`] leaves the predictions in, one row per buyer, for the profiles insert (or,
/// in a refit, the update).
pub const PREDICTIONS_TABLE: &str = "profile_predictions";

/// Fits the models to the purchases in `events_table` up to `as_of` (in days) and writes every buyer's predictions
/// into the temporary table [`PREDICTIONS_TABLE`] (which `profiles::compute` and `pipeline::refit` read and drop),
/// under the column names of `schema::PREDICTED_COLUMNS`. `events_table` is `events_staging` inside an ingest, the
/// live `events` when `audience fit` refits the data already ingested.
pub async fn fit_profiles(
    conn: &mut PgConnection,
    events_table: &str,
    as_of: NaiveDate,
    options: Options,
) -> Result<FitReport> {
    let buyers = read_buyers(conn, events_table, as_of).await?;
    let report = fit(&buyers.iter().map(|(_, b)| *b).collect::<Vec<_>>(), TimeUnit::Days, options);

    sqlx::query(&format!("DROP TABLE IF EXISTS {PREDICTIONS_TABLE}")).execute(&mut *conn).await?;
    let columns = PREDICTED_COLUMNS.iter().map(|c| format!("{c} DOUBLE PRECISION")).collect::<Vec<_>>().join(", ");
    sqlx::query(&format!("CREATE TEMP TABLE {PREDICTIONS_TABLE} (customer_id BIGINT PRIMARY KEY, {columns})"))
        .execute(&mut *conn)
        .await
        .context("cannot create the predictions table")?;
    if report.purchases.is_none() && report.spend.is_none() {
        return Ok(report);
    }
    let mut rows = String::with_capacity(buyers.len() * 48);
    // Rounded as they are shown: a probability and a count to 4 decimals, money to cents.
    let cell = |value: Option<f64>, decimals: usize| match value {
        Some(v) => format!("{v:.decimals$}"),
        None => "\\N".to_owned(),
    };
    for (customer_id, buyer) in &buyers {
        let p = report.predict(buyer);
        let _ = writeln!(
            rows,
            "{customer_id}\t{}\t{}\t{}\t{}",
            cell(p.p_alive, 4),
            cell(p.expected_purchases, 4),
            cell(p.expected_avg_spend, 2),
            cell(p.clv, 2)
        );
    }
    let mut copy = conn
        .copy_in_raw(&format!("COPY {PREDICTIONS_TABLE} (customer_id, {}) FROM STDIN", PREDICTED_COLUMNS.join(", ")))
        .await?;
    copy.send(rows.into_bytes()).await?;
    copy.finish().await.context("cannot write the predictions")?;
    Ok(report)
}

/// Every buyer's purchase days in `events_table` up to `as_of`: repeat days, first to last day, first day to
/// `as_of`, and the mean spend of the repeat days.
async fn read_buyers(conn: &mut PgConnection, events_table: &str, as_of: NaiveDate) -> Result<Vec<(i64, Buyer)>> {
    let sale = is_sale("quantity");
    let rows: Vec<(i64, i32, i32, i32, f64)> = sqlx::query_as(&format!(
        "WITH days AS (
             SELECT customer_id, (ts AT TIME ZONE 'UTC')::date AS day, sum(coalesce(amount, 0))::float8 AS spend
             FROM {events_table}
             WHERE event_type = 'purchase' AND {sale} AND ts < (($1::date + 1)::timestamp AT TIME ZONE 'UTC')
             GROUP BY 1, 2
         )
         SELECT customer_id, (count(*) - 1)::int4, (max(day) - min(day))::int4, ($1::date - min(day))::int4,
                coalesce((sum(spend) - (array_agg(spend ORDER BY day))[1]) / nullif(count(*) - 1, 0), 0)::float8
         FROM days GROUP BY customer_id ORDER BY customer_id"
    ))
    .bind(as_of)
    .fetch_all(&mut *conn)
    .await
    .context("cannot read the purchase histories")?;
    Ok(rows
        .into_iter()
        .map(|(customer_id, x, t_x, t, m)| {
            let history = History { x: u32::try_from(x).unwrap_or(0), t_x: f64::from(t_x), t: f64::from(t) };
            (customer_id, Buyer { history, mean_repeat_spend: m })
        })
        .collect())
}
