//! Customer keys: the internal integer key of each customer id as the file gives it (its external id), the same in
//! every ingest, so incremental embedding and saved audiences keep working when ids are strings.
//!
//! The engines need integers (primary keys, joins, vector point ids); CRMs and analytics tools export strings and
//! UUIDs (`user_0203`, `C-10023`). An id that is a canonical non-negative integer below [`STRING_KEY_BASE`] is its
//! own key, so numeric exports keep their ids as keys; any other id gets the next key above the base, recorded in
//! `customer_keys`, which ingest creates once and never drops or swaps, so an id keeps its key in every later ingest
//! (and gets it back if it leaves and returns). Keys stay below 2^53, exact in every JSON reader.

use std::collections::HashMap;

use anyhow::{Context, Result};
use sqlx::PgConnection;

/// String ids get keys above this one; numeric ids below it are their own keys.
pub const STRING_KEY_BASE: i64 = 1_000_000_000_000_000;
/// Longest external id accepted: longer is not an id but a mistake in the mapping.
pub const MAX_EXTERNAL_ID_CHARS: usize = 128;

/// The table of string ids and their keys.
pub const CUSTOMER_KEYS_DDL: &str = "external_id TEXT PRIMARY KEY, customer_id BIGINT NOT NULL UNIQUE";

/// The key of a numeric id: digits only, no leading zero (so `007` stays a string id, as its owner wrote it), below
/// the base.
pub fn numeric_key(external_id: &str) -> Option<i64> {
    let canonical = !external_id.is_empty()
        && external_id.bytes().all(|b| b.is_ascii_digit())
        && (external_id == "0" || !external_id.starts_with('0'));
    if !canonical || external_id.len() > 16 {
        return None;
    }
    external_id.parse::<i64>().ok().filter(|key| *key < STRING_KEY_BASE)
}

/// Why `external_id` cannot be a customer id, if it cannot.
pub fn check_external_id(external_id: &str) -> Result<(), String> {
    if external_id.is_empty() {
        return Err("customer_id is empty".to_owned());
    }
    if external_id.chars().count() > MAX_EXTERNAL_ID_CHARS {
        return Err(format!("customer_id is longer than {MAX_EXTERNAL_ID_CHARS} characters"));
    }
    if external_id.chars().any(char::is_control) {
        return Err(format!("customer_id {external_id:?} contains control characters"));
    }
    Ok(())
}

/// The keys of string ids, as stored plus the ones this ingest assigns.
#[derive(Debug)]
pub struct CustomerKeys {
    stored: HashMap<String, i64>,
    /// Assigned during this ingest, in order; saved with [`Self::save`].
    added: Vec<(String, i64)>,
    next: i64,
}

/// No stored keys: the first string id gets the first key above the base.
impl Default for CustomerKeys {
    fn default() -> Self {
        Self { stored: HashMap::new(), added: Vec::new(), next: STRING_KEY_BASE + 1 }
    }
}

impl CustomerKeys {
    /// Reads the stored keys (the table exists: `load::prepare_schema` creates it).
    pub async fn load(conn: &mut PgConnection) -> Result<Self> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT external_id, customer_id FROM customer_keys")
            .fetch_all(&mut *conn)
            .await
            .context("cannot read the customer keys")?;
        let next = rows.iter().map(|(_, key)| *key).max().unwrap_or(STRING_KEY_BASE).max(STRING_KEY_BASE) + 1;
        Ok(Self { stored: rows.into_iter().collect(), added: Vec::new(), next })
    }

    /// The key of `external_id`, assigning a new one to a string id seen for the first time.
    pub fn key(&mut self, external_id: &str) -> i64 {
        if let Some(key) = self.lookup(external_id) {
            return key;
        }
        let key = self.next;
        self.next += 1;
        self.stored.insert(external_id.to_owned(), key);
        self.added.push((external_id.to_owned(), key));
        key
    }

    /// The key of `external_id` if it has one.
    pub fn lookup(&self, external_id: &str) -> Option<i64> {
        numeric_key(external_id).or_else(|| self.stored.get(external_id).copied())
    }

    /// Records the keys this ingest assigned, in the caller's transaction.
    pub async fn save(&self, conn: &mut PgConnection) -> Result<()> {
        if self.added.is_empty() {
            return Ok(());
        }
        let mut rows = String::new();
        for (external_id, key) in &self.added {
            rows.push_str(&crate::load::copy_text(external_id));
            rows.push('\t');
            rows.push_str(&key.to_string());
            rows.push('\n');
        }
        let mut copy = conn
            .copy_in_raw("COPY customer_keys (external_id, customer_id) FROM STDIN")
            .await
            .context("cannot save the customer keys")?;
        copy.send(rows.into_bytes()).await?;
        copy.finish().await.context("cannot save the customer keys")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_are_their_own_keys_and_strings_get_fresh_ones() {
        assert_eq!(numeric_key("17"), Some(17));
        assert_eq!(numeric_key("0"), Some(0));
        assert_eq!(numeric_key("007"), None, "leading zeros are part of a string id");
        assert_eq!(numeric_key("user_0203"), None);
        assert_eq!(numeric_key("1000000000000000"), None, "at the base, a string id");
        let mut keys = CustomerKeys::default();
        let a = keys.key("user_0203");
        assert_eq!((a, keys.key("C-10023"), keys.key("user_0203"), keys.key("42")), (a, a + 1, a, 42));
        assert!(a > STRING_KEY_BASE && a < (1 << 53));
        assert_eq!(keys.added.len(), 2);
        assert!(check_external_id("0f8c4a").is_ok());
        assert!(check_external_id("").is_err() && check_external_id("a\u{7}").is_err());
    }
}
