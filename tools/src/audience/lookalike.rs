//! Lookalikes: the customers most like a seed audience who are not in it, optionally only among those a
//! definition selects ("lookalikes of my VIPs, only in DE, not churned").
//!
//! The seed's profile vectors are averaged into a centroid, and the vector index searches it with every seed member
//! excluded (or, with a definition, only within its members minus the seed), so a seed member can never come back
//! as its own lookalike. The report shows where similarity falls off: the score at ranks 1, 10, 25, 50, ... next
//! to how close the seed's own members are to their centroid.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::compile::compile;
use super::definition::{AudienceDefinition, Clause, Invalid};
use super::export::{Members, member_ids};
use super::report::{Member, data_for_compile, describe_members};
use super::saved::{SavedAudiences, SavedError};
use super::session::{AudienceSession, Edit};
use crate::failure::ToolFailure;
use crate::observe;
use crate::stores::Stores;
use crate::trace::{ToolTrace, TracedTool};
use crate::vocabulary::{Offered, profile_clause_list_schema, schema_of};

/// Lookalikes listed when the caller does not say.
pub const DEFAULT_K: usize = 50;
/// Most lookalikes one call lists.
pub const MAX_K: usize = 1_000;
/// Seed members whose vectors make the centroid: an evenly spaced sample of a larger seed describes it as well and
/// keeps the call fast.
const MAX_CENTROID_MEMBERS: usize = 10_000;
/// Ranks at which the score spread is reported (those within the list, and the last).
const SPREAD_RANKS: [usize; 7] = [1, 10, 25, 50, 100, 250, 500];

/// What to grow and where: a saved audience, or customers by file id, or (neither) the conversation's current
/// audience; `include`/`exclude` clauses limit where lookalikes may come from; `k` is how many to list.
///
/// The model sees the schema generated from this type, with `include`/`exclude` replaced by the profile clauses of
/// the question's vocabulary ([`profile_clause_list_schema`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookalikeArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200), inner(length(max = 128)))]
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<serde_json::Value>")]
    pub include: Vec<Clause>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<serde_json::Value>")]
    pub exclude: Vec<Clause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub k: Option<usize>,
}

/// The lookalikes of a seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LookalikeReport {
    /// Where the seed came from: `saved audience NAME`, `ids`, or `current audience`.
    pub seed: String,
    pub seed_size: u64,
    /// File ids given that are no customer's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_ids: Vec<String>,
    /// The definition lookalikes must meet, in plain words, and how many customers (seed excluded) meet it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
    pub candidates: u64,
    /// The lookalikes, most similar first, each with its score (cosine to the seed's centroid).
    pub members: Vec<Member>,
    pub spread: ScoreSpread,
    /// The ingest the seed, the candidates and the members come from (`dataset.version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_version: Option<i64>,
}

/// Where similarity falls off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreSpread {
    /// `(rank, score)` at ranks 1, 10, 25, 50, ... within the list, and at the last one.
    pub at_rank: Vec<(usize, f64)>,
    /// The median score of the seed's own members against their centroid: a lookalike scoring near it is as close
    /// to the seed as a typical member.
    pub seed_median: f64,
}

/// Finds the lookalikes `args` asks for; `session` supplies the seed when no audience or ids are given. The seed,
/// the candidates, the vectors and the members' facts all come from one data version, which the report names.
pub async fn find_lookalikes(
    stores: &Stores,
    session: &AudienceSession,
    args: &LookalikeArgs,
    trace: &mut ToolTrace,
) -> Result<LookalikeReport, ToolFailure> {
    let mut reading = stores.one_version();
    loop {
        let version = reading.start().await?;
        let report = find_lookalikes_once(stores, session, args, trace).await?;
        if reading.unchanged(version).await? {
            return Ok(LookalikeReport { data_version: version, ..report });
        }
    }
}

async fn find_lookalikes_once(
    stores: &Stores,
    session: &AudienceSession,
    args: &LookalikeArgs,
    trace: &mut ToolTrace,
) -> Result<LookalikeReport, ToolFailure> {
    let k = args.k.unwrap_or(DEFAULT_K);
    if k == 0 || k > MAX_K {
        return Err(ToolFailure::correctable(format!("k must be between 1 and {MAX_K}")));
    }
    let start = Instant::now();
    let (seed_name, seed, unknown_ids) = seed_members(stores, session, args).await?;
    if seed.is_empty() {
        return Err(ToolFailure::correctable(format!("the seed ({seed_name}) has no members; nothing to grow")));
    }
    let within = if args.include.is_empty() && args.exclude.is_empty() {
        None
    } else {
        let edit = Edit { new: true, include: args.include.clone(), exclude: args.exclude.clone(), ..Edit::default() };
        Some(edit.apply(None).map_err(|Invalid(reason)| ToolFailure::Correctable(reason))?)
    };
    let candidates = match &within {
        Some(definition) => {
            let inside = member_ids(stores, Members::Definition(definition)).await?;
            Some(inside.into_iter().filter(|id| seed.binary_search(id).is_err()).collect::<Vec<_>>())
        }
        None => None,
    };
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles").fetch_one(&stores.db.pool).await?;
    trace.time("sql", start);
    let candidate_count =
        candidates.as_ref().map_or((total as u64).saturating_sub(seed.len() as u64), |c| c.len() as u64);

    let start = Instant::now();
    let vectors = stores.vectors().await?;
    let sample = evenly_spaced(&seed, MAX_CENTROID_MEMBERS);
    let points = vectors.retrieve(sample, true).await.map_err(ToolFailure::Fatal)?;
    let seed_vectors: Vec<Vec<f32>> = points.into_iter().filter_map(|point| point.vector).collect();
    let Some(centroid) = centroid(&seed_vectors) else {
        return Err(ToolFailure::Fatal(anyhow::anyhow!(
            "the vector index in {} holds none of the seed's profiles: run `audience reindex`",
            stores.describe_vectors()
        )));
    };
    let spread_of_seed = median(seed_vectors.iter().map(|vector| f64::from(dot(vector, &centroid))).collect());
    let filter = match &candidates {
        Some(ids) => crate::vector::Filter::must([crate::vector::Condition::HasId { ids: to_points(ids) }]),
        None => crate::vector::Filter {
            must_not: vec![crate::vector::Condition::HasId { ids: to_points(&seed) }],
            ..Default::default()
        },
    };
    let hits = if candidate_count == 0 {
        Vec::new()
    } else {
        vectors.search(centroid, Some(filter), k).await.map_err(ToolFailure::Fatal)?
    };
    trace.time("vector", start);

    let start = Instant::now();
    let ranked: Vec<(i64, Option<f64>)> =
        hits.iter().filter_map(|hit| Some((i64::try_from(hit.id).ok()?, Some(round4(f64::from(hit.score)))))).collect();
    let data = data_for_compile(stores).await?;
    let as_of = data.as_of;
    let plain = AudienceDefinition::default();
    let compiled = compile(&plain, data).map_err(|Invalid(reason)| ToolFailure::Correctable(reason))?;
    let mut tx = stores.db.begin_read_only(stores.limits).await.map_err(ToolFailure::Fatal)?;
    let mut members = describe_members(&mut tx, &plain, &compiled, &ranked, as_of).await?;
    let seed_interests: Vec<String> = sqlx::query_scalar(
        "SELECT i FROM profiles, unnest(interests) i WHERE customer_id = ANY($1) GROUP BY i ORDER BY count(*) DESC, \
         i LIMIT 5",
    )
    .bind(&seed)
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    for member in &mut members {
        let shared: Vec<&str> =
            member.interests.iter().filter(|interest| seed_interests.contains(interest)).map(String::as_str).collect();
        if !shared.is_empty() {
            member.why.push(format!("shares the seed's interests: {}", shared.join(", ")));
        }
    }
    trace.time("members", start);
    trace.audience_size = Some(members.len() as u64);

    let mut at_rank: Vec<(usize, f64)> = SPREAD_RANKS
        .iter()
        .filter(|rank| **rank <= members.len())
        .filter_map(|rank| Some((*rank, members[rank - 1].score?)))
        .collect();
    if let Some(last) = members.last().and_then(|member| member.score)
        && at_rank.last().map(|(rank, _)| *rank) != Some(members.len())
    {
        at_rank.push((members.len(), last));
    }
    Ok(LookalikeReport {
        seed: seed_name,
        seed_size: seed.len() as u64,
        unknown_ids,
        within: within.map(|definition| definition.explain()),
        candidates: candidate_count,
        members,
        spread: ScoreSpread { at_rank, seed_median: round4(spread_of_seed) },
        data_version: None,
    })
}

/// The seed's name for messages, its members' internal ids (ascending), and the given file ids that match no one.
async fn seed_members(
    stores: &Stores,
    session: &AudienceSession,
    args: &LookalikeArgs,
) -> Result<(String, Vec<i64>, Vec<String>), ToolFailure> {
    match (&args.audience, args.ids.is_empty()) {
        (Some(_), false) => Err(ToolFailure::correctable("give either a saved audience or ids as the seed, not both")),
        (Some(name), true) => {
            let saved = SavedAudiences::new(&stores.db).map_err(saved_failure)?;
            let audience = saved.get(name).await.map_err(saved_failure)?;
            let ids = if audience.frozen {
                let frozen = saved.frozen_members(name).await.map_err(saved_failure)?;
                member_ids(stores, Members::Frozen(&frozen)).await?
            } else {
                member_ids(stores, Members::Definition(&audience.definition)).await?
            };
            Ok((format!("saved audience {name}"), ids, Vec::new()))
        }
        (None, false) => {
            let mut tx = stores.db.begin_read_only(stores.limits).await.map_err(ToolFailure::Fatal)?;
            let found: Vec<(i64, String)> = sqlx::query_as(
                "SELECT customer_id, external_id FROM profiles WHERE external_id = ANY($1) ORDER BY customer_id",
            )
            .bind(&args.ids)
            .fetch_all(&mut *tx)
            .await?;
            tx.rollback().await?;
            let unknown: Vec<String> =
                args.ids.iter().filter(|id| !found.iter().any(|(_, known)| known == *id)).cloned().collect();
            Ok(("ids".to_owned(), found.into_iter().map(|(id, _)| id).collect(), unknown))
        }
        (None, true) => {
            let Some(definition) = session.current() else {
                return Err(ToolFailure::correctable(
                    "there is no current audience to grow: name a saved audience or give customer ids",
                ));
            };
            let ids = member_ids(stores, Members::Definition(&definition)).await?;
            Ok(("current audience".to_owned(), ids, Vec::new()))
        }
    }
}

/// A missing name is the model's to fix; a broken store ends the run.
fn saved_failure(error: SavedError) -> ToolFailure {
    match error {
        SavedError::Store(error) => ToolFailure::Fatal(error),
        other => ToolFailure::Correctable(other.to_string()),
    }
}

fn to_points(ids: &[i64]) -> Vec<u64> {
    ids.iter().filter_map(|id| u64::try_from(*id).ok()).collect()
}

/// At most `most` of `ids`, evenly spaced, as point ids.
fn evenly_spaced(ids: &[i64], most: usize) -> Vec<u64> {
    let step = ids.len().div_ceil(most).max(1);
    to_points(&ids.iter().step_by(step).copied().collect::<Vec<_>>())
}

/// The normalized mean of `vectors`; `None` when there are none.
fn centroid(vectors: &[Vec<f32>]) -> Option<Vec<f32>> {
    let first = vectors.first()?;
    let mut sum = vec![0f32; first.len()];
    for vector in vectors {
        for (total, value) in sum.iter_mut().zip(vector) {
            *total += value;
        }
    }
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        sum.iter_mut().for_each(|v| *v /= norm);
    }
    Some(sum)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn round4(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

/// The `lookalike` tool: the agent's way to grow an audience.
#[derive(Clone)]
pub struct Lookalike {
    stores: Stores,
    session: AudienceSession,
    /// The schema of `include`/`exclude`: the profile clauses `find_audience` offers for the question.
    clause_list: Value,
}

impl Lookalike {
    pub fn new(stores: Stores, session: AudienceSession) -> Self {
        Self { stores, session, clause_list: profile_clause_list_schema(&Offered::default()) }
    }

    /// The tool as the agent offers it for one question: profile clauses with the question's values (see
    /// `vocabulary`).
    pub fn for_question(mut self, offered: &Offered) -> Self {
        self.clause_list = profile_clause_list_schema(offered);
        self
    }
}

impl TracedTool for Lookalike {
    type Report = LookalikeReport;

    /// The seed, the candidates, where similarity falls off, and the lookalikes in a table.
    fn observe(report: &LookalikeReport) -> String {
        let mut lines = vec![format!(
            "{} lookalikes of the {} ({} members), from {} candidates{}.",
            report.members.len(),
            report.seed,
            report.seed_size,
            report.candidates,
            report.within.as_ref().map(|within| format!(" ({within})")).unwrap_or_default()
        )];
        if !report.unknown_ids.is_empty() {
            lines.push(format!("unknown ids (no such customer): {}", report.unknown_ids.join(", ")));
        }
        lines.push(spread_line(&report.spread));
        if !report.members.is_empty() {
            let shown = report.members.len().min(5);
            lines.push(format!("top {shown}:"));
            let rows = report.members[..shown].iter().map(|m| {
                vec![
                    observe::cell(&Value::String(m.external_id.clone())),
                    observe::cell(&Value::String(m.name.clone())),
                    observe::cell(&json!(m.country)),
                    observe::cell(&json!(m.score)),
                    observe::cell(&Value::String(m.why.join("; "))),
                ]
            });
            lines.push(observe::table(&["customer_id", "name", "country", "score", "why"], rows));
        }
        lines.join("\n")
    }

    async fn execute(&self, args: LookalikeArgs, trace: &mut ToolTrace) -> Result<LookalikeReport, ToolFailure> {
        find_lookalikes(&self.stores, &self.session, &args, trace).await
    }
}

/// `similarity: #1 0.91, #10 0.88, #50 0.80 (seed members: median 0.90)`.
pub fn spread_line(spread: &ScoreSpread) -> String {
    let points: Vec<String> = spread.at_rank.iter().map(|(rank, score)| format!("#{rank} {score:.3}")).collect();
    format!(
        "similarity: {} (the seed's own members: median {:.3})",
        if points.is_empty() { "none".to_owned() } else { points.join(", ") },
        spread.seed_median
    )
}

crate::traced_tool!(Lookalike, crate::registry::LOOKALIKE, LookalikeArgs, |tool| arguments_schema(&tool.clause_list));

/// The schema of [`LookalikeArgs`] with `clause_list` as its `include` and `exclude`.
fn arguments_schema(clause_list: &Value) -> Value {
    let mut schema = schema_of::<LookalikeArgs>();
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert("include".into(), clause_list.clone());
        properties.insert("exclude".into(), clause_list.clone());
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_generated_from_the_arguments_with_profile_clauses_only() {
        let schema = arguments_schema(&profile_clause_list_schema(&Offered::default()));
        let properties = schema["properties"].as_object().unwrap();
        let names: Vec<&str> = properties.keys().map(String::as_str).collect();
        assert_eq!(names, ["audience", "ids", "include", "exclude", "k"]);
        assert_eq!(schema["properties"]["k"]["maximum"], MAX_K);
        let forms = schema["properties"]["include"]["items"]["oneOf"].as_array().unwrap();
        assert!(forms.iter().all(|form| form["properties"]["type"]["const"] == "profile"), "{forms:?}");
    }

    #[test]
    fn centroid_is_the_normalized_mean() {
        let c = centroid(&[vec![1.0, 0.0], vec![0.0, 1.0]]).unwrap();
        assert!((c[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6 && (c[0] - c[1]).abs() < 1e-6);
        assert_eq!(centroid(&[]), None);
    }

    #[test]
    fn samples_a_large_seed_evenly() {
        let ids: Vec<i64> = (1..=25).collect();
        assert_eq!(evenly_spaced(&ids, 10), [1, 4, 7, 10, 13, 16, 19, 22, 25]);
        assert_eq!(evenly_spaced(&ids[..3], 10), [1, 2, 3]);
    }
}
