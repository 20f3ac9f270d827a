//! Evaluates an audience definition against the data: its exact size, the size after each clause, a breakdown by
//! country, segment, status and spend band, and the top members ranked by the intent, each with why it fits.
//!
//! Every number comes from the compiled membership query (or its prefixes), in ONE read-only statement, so size,
//! funnel and breakdown describe the same snapshot; the listed members are then described by the next statements
//! (read committed: an ingest that commits in between is seen by them). The vector index orders the members by the
//! intent within the membership (by id); it never adds or drops one.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::compile::{Compiled, Data, compile};
use super::definition::{AudienceDefinition, Invalid, ProfileField, Rule};
use crate::dataset::Dataset;
use crate::failure::ToolFailure;
use crate::schema::{CUSTOMER_FACTS, DERIVED_TABLES, SPEND_BANDS, profile_fields};
use crate::stores::Stores;
use crate::trace::ToolTrace;
use crate::vector::{Condition, Filter};

/// An evaluated audience: what `ask --json` prints under `audience`, and what the REPL shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AudienceReport {
    /// The definition, in its canonical JSON form.
    pub definition: AudienceDefinition,
    /// The definition in plain language, generated from it.
    pub explanation: String,
    /// The membership query: exactly the customers in the audience.
    pub sql: String,
    /// Customers in the audience.
    pub size: u64,
    /// Customers in the data, for shares.
    pub total_customers: u64,
    /// The size after each clause, includes first, then excludes.
    pub funnel: Vec<FunnelStep>,
    pub breakdown: Breakdown,
    /// `intent` (vector similarity within the audience) or `total_spent` (no intent).
    pub ranked_by: String,
    /// The top members, best first (at most the definition's limit).
    pub members: Vec<Member>,
    /// The day the data was computed for; relative days count back from it.
    pub as_of: NaiveDate,
    /// The ingest every figure and member comes from (`dataset.version`; absent for data ingested before versions
    /// were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_version: Option<i64>,
    /// Values a clause names that the data does not have (a country code no customer has, a product no event
    /// names): such a clause matches nobody, which is rarely what was meant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunnelStep {
    pub clause: String,
    pub exclude: bool,
    pub text: String,
    /// Customers left after this clause and every one before it.
    pub size: u64,
}

/// Counts and shares of the audience's members.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    pub country: Vec<Share>,
    pub segment: Vec<Share>,
    /// `churned` or `active`.
    pub status: Vec<Share>,
    pub spend_band: Vec<Share>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub value: String,
    pub count: u64,
    /// Of the audience's size, 0 to 1.
    pub share: f64,
}

/// One listed member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The internal key (the file's id when that is a plain number).
    pub customer_id: i64,
    /// The id as the customer's file has it, as users know it.
    pub external_id: String,
    /// First and last name; else the e-mail; else empty (the file has neither).
    pub name: String,
    pub country: Option<String>,
    pub segment: String,
    pub total_spent: f64,
    pub interests: Vec<String>,
    /// Similarity to the intent (cosine, four decimals), when ranked by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Why the member is in the audience: the latest event that meets each event clause, and the profile facts
    /// the other clauses and the intent look at.
    pub why: Vec<String>,
    /// Further profile fields the caller asked for (`fields`), by name.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

/// Evaluates `definition`, recording the membership SQL, timings and embedding tokens in `trace`. The listed members
/// carry the profile `fields` asked for besides their usual ones. Size, funnel, breakdown, ranking and members all
/// come from one data version, which the report names.
pub async fn evaluate(
    stores: &Stores,
    definition: &AudienceDefinition,
    fields: &[String],
    trace: &mut ToolTrace,
) -> Result<AudienceReport, ToolFailure> {
    let mut reading = stores.one_version();
    loop {
        let version = reading.start().await?;
        let report = evaluate_once(stores, definition, fields, trace).await?;
        if reading.unchanged(version).await? {
            return Ok(AudienceReport { data_version: version, ..report });
        }
    }
}

async fn evaluate_once(
    stores: &Stores,
    definition: &AudienceDefinition,
    fields: &[String],
    trace: &mut ToolTrace,
) -> Result<AudienceReport, ToolFailure> {
    let (fields, too_many) = checked_fields(fields)?;
    let data = data_for_compile(stores).await?;
    let as_of = data.as_of;
    let compiled = compile(definition, data).map_err(|Invalid(reason)| ToolFailure::Correctable(reason))?;
    trace.sql = Some(compiled.membership.clone());

    let start = Instant::now();
    let mut tx = stores.db.begin_read_only(stores.limits).await.map_err(ToolFailure::Fatal)?;
    let mut warnings = unknown_values(&mut tx, definition, compiled.customers).await?;
    warnings.extend(too_many);
    let ranks_by_intent = definition.intent.is_some();
    let summary =
        summarize(&mut tx, &compiled, definition.limit, ranks_by_intent.then_some(stores.limits.member_cap)).await?;
    trace.time("sql", start);
    let size = summary.size;
    trace.audience_size = Some(size);

    let cap = stores.limits.member_cap;
    if summary.member_ids.as_ref().is_some_and(|ids| ids.len() > cap) {
        return Err(ToolFailure::correctable(format!(
            "the audience has more than {cap} members, too many to rank; add a clause"
        )));
    }
    let same_texts = match &summary.member_ids {
        Some(ids) if size > 1 => !texts_differ(&mut tx, ids).await?,
        _ => false,
    };
    if same_texts {
        warnings.push(SAME_TEXTS.to_owned());
    }
    let (ranked, ranked_by) = match (&definition.intent, summary.member_ids) {
        (Some(intent), Some(ids)) if size > 0 && !same_texts => {
            tx.rollback().await?;
            // Customer ids are positive by construction; a negative one could not be a vector point id anyway.
            let ids = ids.into_iter().filter_map(|id| u64::try_from(id).ok()).collect();
            let ranked = rank_by_intent(stores, intent, ids, summary.total, definition.limit, trace).await?;
            tx = stores.db.begin_read_only(stores.limits).await.map_err(ToolFailure::Fatal)?;
            (ranked, "intent")
        }
        _ => (summary.top_spenders.into_iter().map(|id| (id, None)).collect(), "total_spent"),
    };
    let breakdown = summary.breakdown;
    let start = Instant::now();
    let mut members = describe_members(&mut tx, definition, &compiled, &ranked, as_of).await?;
    add_fields(&mut tx, &mut members, &fields).await?;
    tx.rollback().await?;
    trace.time("members", start);

    let steps: Vec<(String, bool, String)> = definition
        .clauses()
        .map(|(clause, exclude)| {
            let text = if exclude { clause.rule.noun() } else { clause.rule.predicate() };
            (clause.id.clone(), exclude, text)
        })
        .collect();
    let funnel = steps
        .into_iter()
        .zip(summary.after_each.iter().copied().chain(std::iter::repeat(size)))
        .map(|((clause, exclude, text), size)| FunnelStep { clause, exclude, text, size })
        .collect();
    Ok(AudienceReport {
        definition: definition.clone(),
        explanation: definition.explain(),
        sql: compiled.membership,
        size,
        total_customers: summary.total,
        funnel,
        breakdown,
        ranked_by: ranked_by.to_owned(),
        members,
        as_of,
        data_version: None,
        warnings,
    })
}

/// The warning when an intent cannot rank: its similarity is the same for every member.
const SAME_TEXTS: &str = "every member's profile text is the same (the data names no products or colours for them), \
                          so the intent cannot rank them: ranked by total spent instead";

/// Whether the members' profile texts are not all the same. It stops at the first text that differs from the first
/// member's, so it reads one row or two in the usual case and every member only when they all match (as when the
/// mapping names no product column and every text says "No shopping interests yet.").
async fn texts_differ(tx: &mut Tx, ids: &[i64]) -> Result<bool, ToolFailure> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM profiles WHERE customer_id = ANY($1) \
         AND text_hash <> (SELECT text_hash FROM profiles WHERE customer_id = $2))",
    )
    .bind(ids)
    .bind(ids.first().copied().unwrap_or_default())
    .fetch_one(&mut **tx)
    .await?)
}

/// Warnings for the countries, segments and products the definition names that no customer or event has, with the
/// countries the data does have (colours are not checked: no index finds one fast among every event).
pub(crate) async fn unknown_values(
    tx: &mut Tx,
    definition: &AudienceDefinition,
    customers: &str,
) -> Result<Vec<String>, ToolFailure> {
    let (mut countries, mut segments, mut products) = (Vec::new(), Vec::new(), Vec::new());
    for (clause, _) in definition.clauses() {
        match &clause.rule {
            Rule::Profile { field: field @ (ProfileField::Country | ProfileField::Segment), value, .. } => {
                let values = match value {
                    Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                    value => value.as_str().into_iter().collect::<Vec<_>>(),
                };
                let list = if *field == ProfileField::Country { &mut countries } else { &mut segments };
                list.extend(values.into_iter().map(str::to_owned));
            }
            Rule::Event { products: named, .. } => products.extend(named.iter().cloned()),
            _ => {}
        }
    }
    let mut warnings = Vec::new();
    if countries.is_empty() && segments.is_empty() && products.is_empty() {
        return Ok(warnings);
    }
    // Countries are stored upper-case and compared as they are; segments regardless of case (as compiled).
    let (countries, segments, products): (Vec<String>, Vec<String>, Vec<String>) = sqlx::query_as(&format!(
        "SELECT ARRAY(SELECT v FROM unnest($1::text[]) v WHERE NOT EXISTS (SELECT 1 FROM {customers} p WHERE p.country = v)), \
                ARRAY(SELECT v FROM unnest($2::text[]) v \
                      WHERE NOT EXISTS (SELECT 1 FROM {customers} p WHERE lower(p.segment) = lower(v))), \
                ARRAY(SELECT v FROM unnest($3::text[]) v WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.product = v))"
    ))
    .bind(&countries)
    .bind(&segments)
    .bind(&products)
    .fetch_one(&mut **tx)
    .await?;
    // Only when a value is missing: the values there are, to correct it with.
    let known = async |tx: &mut Tx, column: &str| -> Result<String, ToolFailure> {
        let values: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT {column} FROM {customers} WHERE {column} IS NOT NULL ORDER BY {column}"
        ))
        .fetch_all(&mut **tx)
        .await?;
        Ok(values.join(", "))
    };
    if !countries.is_empty() {
        let hint = if countries.iter().any(|c| c == "UK") { " (the United Kingdom's ISO code is GB)" } else { "" };
        let known = known(tx, "country").await?;
        warnings.push(format!("no customer is from {}{hint}; the data's countries: {known}", countries.join(", ")));
    }
    if !segments.is_empty() {
        let known = known(tx, "segment").await?;
        warnings.push(format!("no customer is in segment {}; the segments: {known}", segments.join(", ")));
    }
    if !products.is_empty() {
        warnings.push(format!("no event names the product {}", products.join(", ")));
    }
    Ok(warnings)
}

pub(crate) type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Most extra fields one call may ask for; `find_audience`'s schema caps its `fields` list at this.
pub const MAX_FIELDS: usize = 10;

/// The requested extra fields, each one a retrievable profile column, once each and without `customer_id` (every
/// member has it). Fields are what the listing shows, not who is in the audience: past `MAX_FIELDS`, the first ones
/// are listed and a warning says so (the 1.5B model asked for all 22, and repeated the call after an error).
fn checked_fields(fields: &[String]) -> Result<(Vec<&'static str>, Option<String>), ToolFailure> {
    let allowed = profile_fields();
    let mut checked: Vec<&'static str> = Vec::new();
    for field in fields {
        let known = allowed.iter().copied().find(|known| *known == field.trim()).ok_or_else(|| {
            ToolFailure::Correctable(format!("unknown field `{field}`; choose from: {}", allowed.join(", ")))
        })?;
        if known != "customer_id" && !checked.contains(&known) {
            checked.push(known);
        }
    }
    let warning = (checked.len() > MAX_FIELDS)
        .then(|| format!("only the first {MAX_FIELDS} of the {} fields asked for are listed", checked.len()));
    checked.truncate(MAX_FIELDS);
    Ok((checked, warning))
}

/// Adds the requested fields to each listed member, in one query (the names come from the registry).
async fn add_fields(tx: &mut Tx, members: &mut [Member], fields: &[&'static str]) -> Result<(), ToolFailure> {
    if fields.is_empty() || members.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = members.iter().map(|m| m.customer_id).collect();
    let sql = format!(
        "SELECT customer_id, row_to_json(r)::text FROM (SELECT customer_id, {} FROM profiles \
         WHERE customer_id = ANY($1)) r",
        fields.join(", ")
    );
    let rows: Vec<(i64, String)> = sqlx::query_as(&sql).bind(&ids).fetch_all(&mut **tx).await?;
    let mut by_id: HashMap<i64, Map<String, Value>> = HashMap::new();
    for (id, text) in rows {
        let mut record: Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| ToolFailure::Fatal(anyhow::anyhow!("PostgreSQL returned a row that is not JSON: {e}")))?;
        record.remove("customer_id");
        by_id.insert(id, record);
    }
    for member in members {
        member.fields = by_id.remove(&member.customer_id).unwrap_or_default();
    }
    Ok(())
}

/// What the compiler needs to know of the data: the day it was computed for (from the dataset row, or, for schemas
/// ingested before it recorded one, the day of the newest event), and whether the ingest that wrote the current
/// data built the derived audience tables (with the dataset's day, which their event totals were cut at).
pub(crate) async fn data_for_compile(stores: &Stores) -> Result<Data, ToolFailure> {
    let dataset = Dataset::read(&stores.db).await.map_err(ToolFailure::Fatal)?;
    let recorded = dataset.as_ref().and_then(|dataset| dataset.as_of);
    let current = dataset.as_ref().is_some_and(|dataset| dataset.derived_tables_current);
    let derived_tables = match recorded {
        Some(_) if current => {
            let names = DERIVED_TABLES.map(|name| format!("{}.{name}", stores.db.schema));
            sqlx::query_scalar("SELECT bool_and(to_regclass(name) IS NOT NULL) FROM unnest($1::text[]) name")
                .bind(&names[..])
                .fetch_one(&stores.db.pool)
                .await
                .map_err(|e| ToolFailure::Fatal(anyhow::Error::new(e).context("cannot look up the audience tables")))?
        }
        _ => false,
    };
    let as_of = match recorded {
        Some(day) => day,
        None => {
            Dataset::as_of(&stores.db).await.map_err(ToolFailure::Fatal)?.unwrap_or_else(|| Utc::now().date_naive())
        }
    };
    Ok(Data { as_of, derived_tables })
}

/// What one scan of the membership gives: the customer count, the funnel, the size, the breakdown, the top
/// spenders, and (when the members are to be ranked by an intent) their ids.
struct Summary {
    total: u64,
    /// Sizes after each clause but the last (the last is the size itself).
    after_each: Vec<u64>,
    size: u64,
    breakdown: Breakdown,
    top_spenders: Vec<i64>,
    /// At most the cap plus one, so a caller can tell that the cap was passed.
    member_ids: Option<Vec<i64>>,
}

/// Derives size, breakdown, top spenders and the member ids from the membership in one statement, with the funnel's
/// prefix counts alongside: one round trip and one snapshot for every figure. The breakdown is grouped once by every dimension together (a few hundred
/// groups at most) and the marginals are summed here, which is cheaper than PostgreSQL's grouping sets.
async fn summarize(
    tx: &mut Tx,
    compiled: &Compiled,
    limit: usize,
    member_cap: Option<usize>,
) -> Result<Summary, ToolFailure> {
    // Ingest records the profile count in the dataset row, in the transaction that swaps the profiles in, so in
    // this snapshot it is the count; it saves a scan of every customer (schemas whose ingest built the derived
    // tables always have the row, and let the reader read it).
    let total = if compiled.customers == CUSTOMER_FACTS {
        "(SELECT profiles FROM dataset WHERE id = 1)".to_owned()
    } else {
        format!("(SELECT count(*) FROM {})", compiled.customers)
    };
    let member_ids = match member_cap {
        Some(cap) => format!("ARRAY(SELECT customer_id FROM m LIMIT {})", cap.saturating_add(1)),
        None => "NULL::bigint[]".to_owned(),
    };
    let sql = format!(
        "WITH {ctes} \
         SELECT ARRAY[{total}]::bigint[] || {funnel}, \
                (SELECT coalesce(json_agg(json_build_array(country, segment, churned, spend_band, n)), '[]')::text \
                 FROM (SELECT country, segment, churned, spend_band, count(*) AS n FROM m GROUP BY 1, 2, 3, 4) g), \
                ARRAY(SELECT customer_id FROM m ORDER BY total_spent DESC, customer_id LIMIT {limit}), \
                {member_ids}",
        ctes = compiled.report_ctes,
        funnel = compiled.funnel,
    );
    let (counts, groups, top_spenders, member_ids): (Vec<i64>, String, Vec<i64>, Option<Vec<i64>>) =
        sqlx::query_as(&sql).fetch_one(&mut **tx).await?;
    let counts: Vec<u64> = counts.into_iter().map(|n| u64::try_from(n).unwrap_or(0)).collect();
    let groups: Vec<BreakdownGroup> = serde_json::from_str(&groups)
        .map_err(|e| ToolFailure::Fatal(anyhow::anyhow!("PostgreSQL returned a breakdown that is not JSON: {e}")))?;
    let (size, breakdown) = breakdown_of(groups);
    Ok(Summary {
        total: counts.first().copied().unwrap_or(0),
        after_each: counts.into_iter().skip(1).collect(),
        size,
        breakdown,
        top_spenders,
        member_ids,
    })
}

/// Members counted by country, RFM segment, churned and spend band (the index in `SPEND_BANDS`).
pub(crate) type BreakdownGroup = (Option<String>, String, bool, usize, u64);

/// The size and the [`Breakdown`] of members counted by [`BreakdownGroup`]: the marginals of each dimension,
/// countries and segments by count, status and spend bands in their own order.
pub(crate) fn breakdown_of(groups: impl IntoIterator<Item = BreakdownGroup>) -> (u64, Breakdown) {
    let mut size = 0;
    let mut marginals: [HashMap<String, u64>; 4] = Default::default();
    for (country, segment, churned, band, count) in groups {
        size += count;
        let status = if churned { "churned" } else { "active" };
        for (dimension, value) in marginals.iter_mut().zip([
            country.unwrap_or_else(|| "unknown".to_owned()),
            segment,
            status.to_owned(),
            SPEND_BANDS.get(band).copied().unwrap_or("unknown").to_owned(),
        ]) {
            *dimension.entry(value).or_default() += count;
        }
    }
    let [country, segment, status, band] = marginals;
    let shares = |values: HashMap<String, u64>, order: Option<&[&str]>| -> Vec<Share> {
        let mut values: Vec<(String, u64)> = values.into_iter().collect();
        match order {
            Some(order) => {
                values.sort_by_key(|(value, _)| order.iter().position(|o| o == value).unwrap_or(order.len()))
            }
            None => values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))),
        }
        values
            .into_iter()
            .map(|(value, count)| Share {
                value,
                count,
                share: if size == 0 { 0.0 } else { (count as f64 / size as f64 * 10_000.0).round() / 10_000.0 },
            })
            .collect()
    };
    let breakdown = Breakdown {
        country: shares(country, None),
        segment: shares(segment, None),
        status: shares(status, Some(&["active", "churned"])),
        spend_band: shares(band, Some(&SPEND_BANDS)),
    };
    (size, breakdown)
}

/// The `limit` members most similar to the intent: the vector index searches only the members' ids (or everyone,
/// when the audience is every customer).
async fn rank_by_intent(
    stores: &Stores,
    intent: &str,
    ids: Vec<u64>,
    total: u64,
    limit: usize,
    trace: &mut ToolTrace,
) -> Result<Vec<(i64, Option<f64>)>, ToolFailure> {
    let start = Instant::now();
    let embedded = stores.embedder.embed_one(intent.trim().to_owned()).await;
    trace.time("embed", start);
    let (vector, tokens) = embedded.map_err(ToolFailure::Fatal)?;
    trace.embedding_tokens += tokens;
    let vectors = stores.vectors().await?;
    let filter = (ids.len() as u64 != total).then(|| Filter::must([Condition::HasId { ids }]));
    let start = Instant::now();
    let hits = vectors.search(vector, filter, limit).await.map_err(ToolFailure::Fatal)?;
    trace.time("vector", start);
    Ok(hits
        .into_iter()
        .filter_map(|hit| {
            Some((i64::try_from(hit.id).ok()?, Some((f64::from(hit.score) * 10_000.0).round() / 10_000.0)))
        })
        .collect())
}

type ProfileRow = (i64, String, Option<String>, Option<String>, String, f64, Vec<String>, Option<i32>, bool, bool);

/// The listed members with their profile facts and the evidence for each clause.
pub(crate) async fn describe_members(
    tx: &mut Tx,
    definition: &AudienceDefinition,
    compiled: &Compiled,
    ranked: &[(i64, Option<f64>)],
    as_of: NaiveDate,
) -> Result<Vec<Member>, ToolFailure> {
    if ranked.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = ranked.iter().map(|(id, _)| *id).collect();
    let rows: Vec<ProfileRow> = sqlx::query_as(
        "SELECT customer_id, external_id, \
         coalesce(nullif(trim(concat_ws(' ', first_name, last_name)), ''), email), country, segment, \
         total_spent::float8, interests, recency_days, churned, likes_luxury FROM profiles WHERE customer_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut profiles: HashMap<i64, ProfileRow> = rows.into_iter().map(|row| (row.0, row)).collect();
    // The latest event meeting each event clause, per listed member.
    let mut evidence: HashMap<i64, Vec<String>> = HashMap::new();
    for (_, condition) in &compiled.evidence {
        let rows: Vec<(i64, String, Option<String>, DateTime<Utc>)> = sqlx::query_as(&format!(
            "SELECT DISTINCT ON (e.customer_id) e.customer_id, e.event_type, e.product, e.ts \
             FROM events e WHERE e.customer_id = ANY($1) AND {condition} ORDER BY e.customer_id, e.ts DESC"
        ))
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
        for (id, event_type, product, ts) in rows {
            // A clickstream may name no product: then a page was viewed, an item bought.
            let (verb, unnamed) = match event_type.as_str() {
                "purchase" => ("bought", "an item"),
                "view" => ("viewed", "a page"),
                _ => ("added to the cart", "an item"),
            };
            let product = product.unwrap_or_else(|| unnamed.to_owned());
            let days = (as_of - ts.date_naive()).num_days().max(0);
            let when = match days {
                0 => "on the last day".to_owned(),
                1 => "1 day ago".to_owned(),
                days => format!("{days} days ago"),
            };
            // Two clauses met by the same event (any purchase, a purchase over 50) say it once.
            let lines = evidence.entry(id).or_default();
            let line = format!("{verb} {product} {when}");
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
    }
    let mut members = Vec::with_capacity(ranked.len());
    for (id, score) in ranked {
        let Some((_, external_id, name, country, segment, spent, interests, recency, churned, luxury)) =
            profiles.remove(id)
        else {
            continue;
        };
        let mut why = evidence.remove(id).unwrap_or_default();
        // The profile facts that the include clauses looked at (an event clause's evidence is its event).
        for clause in &definition.include {
            let fact = match &clause.rule {
                Rule::Event { .. } => None,
                Rule::Profile { field, .. } => match field {
                    ProfileField::Country => country.clone().map(|c| format!("from {c}")),
                    ProfileField::Segment => Some(format!("segment {segment}")),
                    ProfileField::Churned => Some(if churned { "churned" } else { "active" }.to_owned()),
                    ProfileField::LikesLuxury => {
                        Some(if luxury { "likes luxury" } else { "no luxury leaning" }.to_owned())
                    }
                    ProfileField::TotalSpent => Some(format!("spent {}", money(spent))),
                    ProfileField::RecencyDays => recency.map(|days| format!("last purchase {days} days ago")),
                    ProfileField::Interests => Some(format!("interests: {}", interests.join(", "))),
                    other => Some(format!("{} fits", other.column())),
                },
                Rule::Sql { .. } => Some(format!("matches clause {}", clause.id)),
            };
            if let Some(fact) = fact.filter(|fact| !why.contains(fact)) {
                why.push(fact);
            }
        }
        if definition.intent.is_some() && !interests.is_empty() {
            let fact = format!("interests: {}", interests.join(", "));
            if !why.contains(&fact) {
                why.push(fact);
            }
        }
        members.push(Member {
            customer_id: *id,
            external_id,
            name: name.unwrap_or_default(),
            country,
            segment,
            total_spent: spent,
            interests,
            score: *score,
            why,
            fields: Map::new(),
        });
    }
    Ok(members)
}

fn money(amount: f64) -> String {
    format!("{amount:.2}")
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// An evaluated-looking report of `definition` with no data.
    pub fn report(definition: AudienceDefinition) -> AudienceReport {
        AudienceReport {
            explanation: definition.explain(),
            definition,
            sql: String::new(),
            size: 0,
            total_customers: 0,
            funnel: Vec::new(),
            breakdown: Breakdown::default(),
            ranked_by: "total_spent".to_owned(),
            members: Vec::new(),
            as_of: NaiveDate::MIN,
            data_version: None,
            warnings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_listed_once_without_the_id_and_at_most_ten_with_a_warning() {
        let all: Vec<String> = crate::schema::profile_fields().iter().map(|f| (*f).to_owned()).collect();
        let mut asked = vec!["customer_id".to_owned(), "email".to_owned(), "email".to_owned()];
        asked.extend(all.iter().cloned());
        let (fields, warning) = super::checked_fields(&asked).unwrap();
        assert_eq!(fields.len(), super::MAX_FIELDS);
        assert_eq!(fields[0], "email");
        assert!(!fields.contains(&"customer_id"));
        assert!(warning.unwrap().starts_with("only the first 10 of the"));
        let (fields, warning) = super::checked_fields(&["customer_id".to_owned(), "country".to_owned()]).unwrap();
        assert_eq!((fields, warning), (vec!["country"], None));
        assert!(super::checked_fields(&["shoe_size".to_owned()]).is_err());
    }
}
