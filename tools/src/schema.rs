//! The PostgreSQL data model: table DDL, the columns the tools may read, and the read-only role.
//!
//! This is the one source of truth for table and column names: ingest creates tables from it,
//! the SQL guard allows exactly these tables and columns, and the retriever builds its SELECT
//! from `PROFILE_FIELDS`.

/// The role that runs all model-written SQL. It has USAGE on the schema and SELECT on its tables, nothing else.
pub const READER_ROLE: &str = "audience_reader";

/// Customer rows from the CRM export.
pub const CUSTOMERS_DDL: &str = "
    customer_id    BIGINT PRIMARY KEY,
    first_name     TEXT NOT NULL,
    last_name      TEXT NOT NULL,
    email          TEXT NOT NULL,
    country        TEXT NOT NULL,
    age            INTEGER,
    favorite_color TEXT,
    signup_date    DATE";

/// Clickstream and purchase events. A negative quantity is a return.
pub const EVENTS_DDL: &str = "
    event_id    BIGINT PRIMARY KEY,
    customer_id BIGINT NOT NULL,
    event_type  TEXT NOT NULL CHECK (event_type IN ('view', 'add_to_cart', 'purchase')),
    product     TEXT NOT NULL,
    color       TEXT,
    price       NUMERIC(12,2) NOT NULL,
    quantity    INTEGER NOT NULL,
    ts          TIMESTAMPTZ NOT NULL";

/// One row per customer, computed in SQL by ingest.
pub const PROFILES_DDL: &str = "
    customer_id      BIGINT PRIMARY KEY,
    first_name       TEXT NOT NULL,
    last_name        TEXT NOT NULL,
    email            TEXT NOT NULL,
    country          TEXT NOT NULL,
    age              INTEGER,
    favorite_color   TEXT,
    total_spent      NUMERIC(14,2) NOT NULL,
    order_count      INTEGER NOT NULL,
    return_count     INTEGER NOT NULL,
    first_purchase   TIMESTAMPTZ,
    last_purchase    TIMESTAMPTZ,
    recency_days     INTEGER,
    frequency        INTEGER NOT NULL,
    monetary         NUMERIC(14,2) NOT NULL,
    r_score          SMALLINT NOT NULL,
    f_score          SMALLINT NOT NULL,
    m_score          SMALLINT NOT NULL,
    churned          BOOLEAN NOT NULL,
    segment          TEXT NOT NULL,
    interests        TEXT[] NOT NULL,
    preferred_colors TEXT[] NOT NULL,
    likes_luxury     BOOLEAN NOT NULL,
    profile_text     TEXT NOT NULL,
    text_hash        TEXT NOT NULL";

/// Table name and its column list, in DDL order.
pub struct TableSpec {
    pub name: &'static str,
    pub ddl: &'static str,
}

pub const TABLES: [TableSpec; 3] = [
    TableSpec { name: "customers", ddl: CUSTOMERS_DDL },
    TableSpec { name: "events", ddl: EVENTS_DDL },
    TableSpec { name: "profiles", ddl: PROFILES_DDL },
];

impl TableSpec {
    /// Column names in DDL order (the first word of each non-constraint line).
    pub fn columns(&self) -> Vec<&'static str> {
        self.ddl
            .split(',')
            .filter_map(|line| line.split_whitespace().next())
            .filter(|word| word.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .filter(|word| !matches!(*word, "primary" | "check"))
            .collect()
    }
}

/// Columns the `sql_data_retriever` tool may return, the allow-list its query is built from.
pub const PROFILE_FIELDS: &[&str] = &[
    "customer_id",
    "first_name",
    "last_name",
    "email",
    "country",
    "age",
    "favorite_color",
    "total_spent",
    "order_count",
    "return_count",
    "first_purchase",
    "last_purchase",
    "recency_days",
    "frequency",
    "monetary",
    "r_score",
    "f_score",
    "m_score",
    "churned",
    "segment",
    "interests",
    "preferred_colors",
    "likes_luxury",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_follow_ddl_order() {
        assert_eq!(
            TABLES[1].columns(),
            ["event_id", "customer_id", "event_type", "product", "color", "price", "quantity", "ts"]
        );
        let profile_columns = TABLES[2].columns();
        for field in PROFILE_FIELDS {
            assert!(profile_columns.contains(field), "{field} is not a profiles column");
        }
    }
}
