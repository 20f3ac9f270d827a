//! Incremental embedding: bring a vector index version in line with a profiles table.
//!
//! Each point's payload carries the SHA-256 of the text it was embedded from. A profile is embedded again only
//! when its text hash differs from the stored one (or it has no point yet); points of customers that are no
//! longer in the table are deleted. `SyncMode::Full` (`audience reindex`) embeds every profile.
//!
//! Many customers share a profile text (the same few purchases, or none), so each distinct text goes through the
//! model once per sync and its vector is written for every profile with that text: profiles are embedded in the
//! order of their text hashes, so a text that continues into the next chunk is still at hand there.
//!
//! The sync writes into a staging version that readers cannot see (`vector::VectorWriter`) and reads the profiles
//! over the caller's connection, so ingest can embed `profiles_staging` inside its transaction and publish the
//! version right after the commit: readers see old data with the old index, or new data with the new one.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use audience_tools::embed::LazyEmbedder;
use audience_tools::schema::payload_json_sql;
use audience_tools::vector::{VectorIndex, VectorPoint};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::PgConnection;

/// Profiles embedded and upserted per step. The embedder keeps a whole call's activations, so this bounds memory.
pub const CHUNK: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Embed only new and changed profiles.
    Incremental,
    /// Embed every profile.
    Full,
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SyncReport {
    /// Profiles whose vector was written.
    pub embedded: u64,
    /// Distinct profile texts the model ran on: profiles that share a text share its vector.
    pub texts_embedded: u64,
    pub deleted: u64,
    pub unchanged: u64,
    /// Model tokens embedded (for usage accounting).
    pub tokens: u64,
    /// Wall time of the whole sync.
    pub seconds: f64,
    /// Of which: running the embedding model.
    pub embed_seconds: f64,
    /// Of which: writing points to the vector index (upserts and deletes).
    pub upsert_seconds: f64,
}

/// One profile to embed: its id, its vector payload as JSON text (see `schema::payload_json_sql`) and its text.
#[derive(sqlx::FromRow)]
struct ProfileRow {
    customer_id: i64,
    payload: String,
    profile_text: String,
}

/// The profiles table a sync reads: the live one (reindex) or the one an ingest is about to swap in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfilesTable {
    Live,
    Staging,
}

impl ProfilesTable {
    pub fn name(self) -> &'static str {
        match self {
            Self::Live => "profiles",
            Self::Staging => "profiles_staging",
        }
    }
}

/// Embeds new or changed profiles of `table` (all in `Full` mode) into `index` and deletes vectors of customers
/// that are not in it. `conn` is the caller's connection (an ingest's transaction sees its staging tables).
pub async fn sync(
    conn: &mut PgConnection,
    table: ProfilesTable,
    index: &dyn VectorIndex,
    embedder: &LazyEmbedder,
    mode: SyncMode,
) -> Result<SyncReport> {
    let started = Instant::now();
    let table = table.name();
    index.ensure_collection().await.context("cannot prepare the vector index")?;
    let stored = index.text_hashes().await.context("cannot read the vector index")?;
    let current: Vec<(i64, String)> =
        sqlx::query_as(&format!("SELECT customer_id, text_hash FROM {table} ORDER BY customer_id"))
            .fetch_all(&mut *conn)
            .await
            .context("cannot read profiles")?;

    let current_ids: HashSet<u64> = current.iter().filter_map(|(id, _)| u64::try_from(*id).ok()).collect();
    let stale: Vec<u64> = stored.keys().filter(|id| !current_ids.contains(id)).copied().collect();
    let (to_embed, unchanged) = plan(&current, &stored, mode);

    let progress = progress_bar(to_embed.len() as u64);
    let (mut tokens, mut texts_embedded) = (0u64, 0u64);
    let (mut embed_seconds, mut upsert_seconds) = (0.0, 0.0);
    // The vector of each text of the previous chunk, by text.
    let mut previous_chunk: HashMap<String, Vec<f32>> = HashMap::new();
    for ids in to_embed.chunks(CHUNK) {
        let rows: Vec<ProfileRow> = sqlx::query_as(&format!(
            "SELECT customer_id, {} AS payload, profile_text FROM {table} WHERE customer_id = ANY($1) \
             ORDER BY customer_id",
            payload_json_sql()
        ))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await
        .context("cannot read profiles to embed")?;
        let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
        let mut new_texts: Vec<String> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for row in &rows {
            if !seen.insert(&row.profile_text) {
                continue;
            }
            match previous_chunk.remove(&row.profile_text) {
                Some(vector) => {
                    vectors.insert(row.profile_text.clone(), vector);
                }
                None => new_texts.push(row.profile_text.clone()),
            }
        }
        if !new_texts.is_empty() {
            let stage = Instant::now();
            let embedded = embedder.embed(new_texts.clone()).await.context("cannot embed profiles")?;
            embed_seconds += stage.elapsed().as_secs_f64();
            tokens += embedded.tokens;
            texts_embedded += new_texts.len() as u64;
            vectors.extend(new_texts.into_iter().zip(embedded.vectors));
        }
        let points = rows
            .into_iter()
            .map(|row| {
                let id = u64::try_from(row.customer_id)
                    .with_context(|| format!("customer id {} cannot be a vector id", row.customer_id))?;
                let payload = serde_json::from_str(&row.payload).context("a profile payload is not a JSON object")?;
                let vector = vectors.get(&row.profile_text).cloned().context("a profile text was not embedded")?;
                Ok(VectorPoint { id, vector, payload })
            })
            .collect::<Result<Vec<_>>>()?;
        previous_chunk = vectors;
        let count = points.len() as u64;
        let stage = Instant::now();
        index.upsert(points).await.context("cannot write vectors")?;
        upsert_seconds += stage.elapsed().as_secs_f64();
        progress.inc(count);
    }
    progress.finish_and_clear();

    let stage = Instant::now();
    for ids in stale.chunks(CHUNK) {
        index.delete(ids.to_vec()).await.context("cannot delete vectors of removed customers")?;
    }
    upsert_seconds += stage.elapsed().as_secs_f64();

    Ok(SyncReport {
        embedded: to_embed.len() as u64,
        texts_embedded,
        deleted: stale.len() as u64,
        unchanged,
        tokens,
        seconds: started.elapsed().as_secs_f64(),
        embed_seconds,
        upsert_seconds,
    })
}

/// Customer ids to embed, in the order of their text hashes (profiles with the same text side by side), and how
/// many profiles are already embedded with their current text.
fn plan(current: &[(i64, String)], stored: &HashMap<u64, String>, mode: SyncMode) -> (Vec<i64>, u64) {
    let mut to_embed: Vec<(&str, i64)> = Vec::new();
    let mut unchanged = 0;
    for (id, hash) in current {
        let same = u64::try_from(*id).ok().and_then(|id| stored.get(&id)).is_some_and(|stored| stored == hash);
        if same && mode == SyncMode::Incremental {
            unchanged += 1;
        } else {
            to_embed.push((hash, *id));
        }
    }
    to_embed.sort_unstable();
    (to_embed.into_iter().map(|(_, id)| id).collect(), unchanged)
}

/// A progress bar with rate and ETA on stderr, hidden when stderr is not a terminal (logs, CI, tests).
fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() || len == 0 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("embedding {bar:30} {pos}/{len} profiles, {per_sec}, ETA {eta} ({elapsed})")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_new_and_changed_profiles_only() {
        let current = vec![(1, "a".to_owned()), (2, "b".to_owned()), (3, "c".to_owned())];
        let stored = HashMap::from([(1, "a".to_owned()), (2, "old".to_owned()), (9, "z".to_owned())]);
        assert_eq!(plan(&current, &stored, SyncMode::Incremental), (vec![2, 3], 1));
        assert_eq!(plan(&current, &stored, SyncMode::Full), (vec![1, 2, 3], 0));
        // The same text side by side, whatever the ids.
        let shared = vec![(1, "y".to_owned()), (2, "x".to_owned()), (3, "y".to_owned()), (4, "x".to_owned())];
        assert_eq!(plan(&shared, &HashMap::new(), SyncMode::Full), (vec![2, 4, 1, 3], 0));
    }
}
