//! The PostgreSQL data model as one column registry: table DDL, the columns the tools may read, the vector
//! payload and its indexes, and the read-only role.
//!
//! This is the one source of truth for table and column names. Ingest creates tables from it (`TableSpec::ddl`)
//! and reads CSV columns by these names, the SQL guard allows exactly these tables and columns, the retriever
//! builds its SELECT from the retrievable profile columns, and the vector payload (and its payload indexes) is
//! built from the columns marked for it.

use crate::vector::FieldKind;

/// The role that runs all model-written SQL. It logs in with SELECT on the schema's tables and nothing else.
pub const READER_ROLE: &str = "audience_reader";

/// Whether and how a profile column travels in the vector payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    No,
    /// Stored under `key`, without a payload index.
    Stored {
        key: &'static str,
    },
    /// Stored under `key`, with a payload index of `kind` (so vector filters can use it).
    Indexed {
        key: &'static str,
        kind: FieldKind,
    },
}

/// One column of one table.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    /// The PostgreSQL type and column constraints, as written in the DDL.
    pub sql: &'static str,
    /// `sql_data_retriever` may return it (profiles only).
    pub retrievable: bool,
    pub payload: Payload,
}

const fn column(name: &'static str, sql: &'static str) -> Column {
    Column { name, sql, retrievable: false, payload: Payload::No }
}

/// A profile column that the retriever may return.
const fn field(name: &'static str, sql: &'static str) -> Column {
    Column { name, sql, retrievable: true, payload: Payload::No }
}

/// A table: its name, its columns in DDL order (the first is the primary key), and table constraints.
#[derive(Debug)]
pub struct TableSpec {
    pub name: &'static str,
    pub columns: &'static [Column],
    pub constraints: &'static [&'static str],
}

impl TableSpec {
    /// The column list of `CREATE TABLE name (...)`.
    pub fn ddl(&self) -> String {
        let mut lines: Vec<String> = self.columns.iter().map(|c| format!("{} {}", c.name, c.sql)).collect();
        lines.extend(self.constraints.iter().map(|c| (*c).to_owned()));
        lines.join(",\n    ")
    }

    /// Column names in DDL order.
    pub fn columns(&self) -> Vec<&'static str> {
        self.columns.iter().map(|c| c.name).collect()
    }

    /// The position of `name` in the DDL order (a CSV reader's field index), if it is a column.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn primary_key(&self) -> &'static str {
        self.columns.first().map_or("", |c| c.name)
    }
}

/// Customer rows from the CRM export. `customer_id` is the internal key; `external_id` is the id as the file has
/// it (see `ingest::keys`): only the id is required, any other fact may be unknown (NULL).
pub const CUSTOMERS: TableSpec = TableSpec {
    name: "customers",
    columns: &[
        column("customer_id", "BIGINT PRIMARY KEY"),
        column("external_id", "TEXT NOT NULL"),
        column("first_name", "TEXT"),
        column("last_name", "TEXT"),
        column("email", "TEXT"),
        column("country", "TEXT"),
        column("age", "INTEGER"),
        column("favorite_color", "TEXT"),
        column("signup_date", "DATE"),
    ],
    constraints: &[],
};

/// Clickstream and purchase events. A negative quantity is a return. `amount` is the line total that spend sums:
/// the file's own (a mapped `amount`), else price x quantity; unknown when neither is given (a clickstream).
pub const EVENTS: TableSpec = TableSpec {
    name: "events",
    columns: &[
        column("event_id", "BIGINT PRIMARY KEY"),
        column("customer_id", "BIGINT NOT NULL"),
        column("event_type", "TEXT NOT NULL CHECK (event_type IN ('view', 'add_to_cart', 'purchase'))"),
        column("product", "TEXT"),
        column("color", "TEXT"),
        column("price", "NUMERIC(12,2)"),
        column("quantity", "INTEGER NOT NULL"),
        column("amount", "NUMERIC(14,2)"),
        column("ts", "TIMESTAMPTZ NOT NULL"),
    ],
    constraints: &[],
};

/// One row per customer, computed in SQL by ingest.
///
/// The vector payload holds only the id and the text hash: membership and every profile fact come from
/// PostgreSQL (the index only ranks by taste, within ids it is given), so a payload of profile facts would only go
/// stale when facts change without the text (the text carries tastes, not numbers, and the hash covers only it).
pub const PROFILES: TableSpec = TableSpec {
    name: "profiles",
    columns: &[
        Column {
            name: "customer_id",
            sql: "BIGINT PRIMARY KEY",
            retrievable: true,
            payload: Payload::Indexed { key: "customer_id", kind: FieldKind::Integer },
        },
        field("external_id", "TEXT NOT NULL"),
        field("first_name", "TEXT"),
        field("last_name", "TEXT"),
        field("email", "TEXT"),
        field("country", "TEXT"),
        field("age", "INTEGER"),
        field("favorite_color", "TEXT"),
        field("total_spent", "NUMERIC(14,2) NOT NULL"),
        field("order_count", "INTEGER NOT NULL"),
        field("return_count", "INTEGER NOT NULL"),
        field("first_purchase", "TIMESTAMPTZ"),
        field("last_purchase", "TIMESTAMPTZ"),
        field("recency_days", "INTEGER"),
        field("frequency", "INTEGER NOT NULL"),
        field("monetary", "NUMERIC(14,2) NOT NULL"),
        field("r_score", "SMALLINT NOT NULL"),
        field("f_score", "SMALLINT NOT NULL"),
        field("m_score", "SMALLINT NOT NULL"),
        field("churned", "BOOLEAN NOT NULL"),
        field("segment", "TEXT NOT NULL"),
        field("interests", "TEXT[] NOT NULL"),
        // The weight of each interest (purchase 3, add to cart 2, view 1 per event), for the profile text.
        column("interest_weights", "INTEGER[] NOT NULL"),
        field("preferred_colors", "TEXT[] NOT NULL"),
        field("likes_luxury", "BOOLEAN NOT NULL"),
        // Predicted by ingest's purchase and spend models (`ingest::predict`); NULL without a purchase, or when a
        // model could not be fitted.
        field("p_alive", "DOUBLE PRECISION"),
        field("expected_purchases", "DOUBLE PRECISION"),
        field("expected_avg_spend", "DOUBLE PRECISION"),
        field("clv_12m", "DOUBLE PRECISION"),
        // Ingest's bookkeeping: the rendered text and its hash (the hash also travels, for incremental embedding).
        column("profile_text", "TEXT NOT NULL"),
        Column {
            name: "text_hash",
            sql: "TEXT NOT NULL",
            retrievable: false,
            payload: Payload::Stored { key: "text_hash" },
        },
    ],
    constraints: &[],
};

/// The profile columns that ingest's purchase and spend models predict (in this order), rather than SQL.
pub const PREDICTED_COLUMNS: [&str; 4] = ["p_alive", "expected_purchases", "expected_avg_spend", "clv_12m"];

/// The tables ingest loads and swaps, and the tools read.
pub const TABLES: [TableSpec; 3] = [CUSTOMERS, EVENTS, PROFILES];

/// The profile columns that audience clauses and reports read, one narrow row per customer (no names, e-mails, texts
/// or lists: 9 MB at 100k customers against 65 MB of profiles). A scan of the wide `profiles` table is larger than
/// a quarter of PostgreSQL's default shared buffers, so it reads through a small ring buffer every time; this one
/// stays cached, and a membership of profile clauses is a scan of it.
pub const CUSTOMER_FACTS: &str = "customer_facts";
/// The columns of [`CUSTOMER_FACTS`] copied from `profiles`: the key and every scalar field an audience clause can
/// name, fixed-width ones first (PostgreSQL reads a row's columns in order). `spend_band` follows them.
pub const CUSTOMER_FACTS_COLUMNS: [&str; 18] = [
    "customer_id",
    "p_alive",
    "expected_purchases",
    "expected_avg_spend",
    "clv_12m",
    "age",
    "order_count",
    "return_count",
    "recency_days",
    "r_score",
    "f_score",
    "m_score",
    "churned",
    "likes_luxury",
    "total_spent",
    "country",
    "segment",
    "favorite_color",
];

/// The spend bands of an audience breakdown, in order; [`spend_band_sql`] gives a customer's band number.
pub const SPEND_BANDS: [&str; 5] = ["0", "under 100", "100-499", "500-999", "1000 or more"];

/// The index in [`SPEND_BANDS`] of the spend `total_spent` (a column or expression), as SQL. Ingest stores it in
/// `customer_facts.spend_band`, so a breakdown groups by a small integer instead of comparing numerics per member.
pub fn spend_band_sql(total_spent: &str) -> String {
    format!(
        "CASE WHEN {total_spent} <= 0 THEN 0 WHEN {total_spent} < 100 THEN 1 WHEN {total_spent} < 500 THEN 2 \
         WHEN {total_spent} < 1000 THEN 3 ELSE 4 END"
    )
}

/// The return rule, spelled once for every query that tells sales from returns (profiles, the derived event totals,
/// audience clauses, metrics): a purchase line with a positive quantity is a sale, and one with a quantity of zero or
/// less is a return (ingest refuses a zero quantity, and a negative one on any other event). `quantity` names the
/// column as the query sees it (`quantity`, `e.quantity`).
pub fn is_sale(quantity: &str) -> String {
    format!("{quantity} > 0")
}

/// The other half of the return rule (see [`is_sale`]): a purchase line that is a return.
pub fn is_return(quantity: &str) -> String {
    format!("{quantity} <= 0")
}

/// Days without a purchase after which a buyer counts as churned (ingest computes `churned` with it; the metrics
/// catalogue says it in words).
pub const CHURN_DAYS: i32 = 90;

/// Per customer, event type and product: how many events, the latest one up to the data's last day, and the lowest
/// and highest price (purchases only with a positive quantity: a return is not a purchase). An audience clause
/// such as "viewed watches" reads one row per customer here instead of every matching event.
pub const EVENT_TOTALS: &str = "event_totals";

/// The metrics' rollup of each customer's events up to the data's last day: one row per customer with events,
/// holding the facts the event measures aggregate (`metrics::rollups`).
pub const CUSTOMER_TOTALS: &str = "customer_totals";

/// The metrics' rollup per customer, UTC day, product and colour: the same facts, for periods and event dimensions.
pub const CUSTOMER_DAYS: &str = "customer_days";

/// The metrics' rollup per UTC day, event type, product and colour, without the customer: the summed facts only.
pub const DAILY_TOTALS: &str = "daily_totals";

/// Tables ingest derives from the loaded ones, in the same transaction, for the audience and metrics compilers.
/// The model does not see them (they are not in [`TABLES`]); a schema ingested before they existed is compiled
/// without them.
pub const DERIVED_TABLES: [&str; 5] = [CUSTOMER_FACTS, EVENT_TOTALS, CUSTOMER_TOTALS, CUSTOMER_DAYS, DAILY_TOTALS];

/// Every table an ingest replaces: the loaded ones, then the derived ones.
pub fn swapped_tables() -> Vec<&'static str> {
    TABLES.iter().map(|t| t.name).chain(DERIVED_TABLES).collect()
}

/// Columns the `sql_data_retriever` tool may return, the allow-list its query is built from.
pub fn profile_fields() -> Vec<&'static str> {
    PROFILES.columns.iter().filter(|c| c.retrievable).map(|c| c.name).collect()
}

/// Payload fields that get a payload index in the vector engine, and their kind.
pub fn indexed_payload_fields() -> Vec<(&'static str, FieldKind)> {
    PROFILES
        .columns
        .iter()
        .filter_map(|c| match c.payload {
            Payload::Indexed { key, kind } => Some((key, kind)),
            _ => None,
        })
        .collect()
}

/// A SQL expression over `profiles` that renders one profile's vector payload as JSON text: every payload column
/// under its key.
pub fn payload_json_sql() -> String {
    let pairs: Vec<String> = PROFILES
        .columns
        .iter()
        .filter_map(|c| {
            let key = match c.payload {
                Payload::No => return None,
                Payload::Stored { key } | Payload::Indexed { key, .. } => key,
            };
            // NUMERIC would come out as a JSON number anyway, but float8 keeps the payload's range queries simple.
            let value = if c.sql.starts_with("NUMERIC") { format!("{}::float8", c.name) } else { c.name.to_owned() };
            Some(format!("'{key}', {value}"))
        })
        .collect();
    format!("json_build_object({})::text", pairs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_and_columns_follow_the_registry() {
        assert_eq!(
            EVENTS.columns(),
            ["event_id", "customer_id", "event_type", "product", "color", "price", "quantity", "amount", "ts"]
        );
        assert!(EVENTS.ddl().starts_with("event_id BIGINT PRIMARY KEY,\n    customer_id BIGINT NOT NULL"));
        assert_eq!(CUSTOMERS.index("email"), Some(4));
        assert_eq!(PROFILES.primary_key(), "customer_id");
        let fields = profile_fields();
        assert!(fields.contains(&"interests") && !fields.contains(&"profile_text") && !fields.contains(&"text_hash"));
    }

    #[test]
    fn customer_facts_are_profile_columns() {
        let profiles = PROFILES.columns();
        for column in CUSTOMER_FACTS_COLUMNS {
            assert!(profiles.contains(&column), "{column} is not a profiles column");
        }
        assert_eq!(CUSTOMER_FACTS_COLUMNS[0], PROFILES.primary_key());
        assert!(!CUSTOMER_FACTS_COLUMNS.contains(&"profile_text") && !CUSTOMER_FACTS_COLUMNS.contains(&"email"));
    }

    #[test]
    fn predicted_columns_are_nullable_profile_columns() {
        for name in PREDICTED_COLUMNS {
            let column = PROFILES.columns.iter().find(|c| c.name == name).unwrap();
            assert!(column.retrievable && !column.sql.contains("NOT NULL"), "{name}");
        }
    }

    #[test]
    fn payload_carries_the_id_and_the_text_hash_only() {
        assert_eq!(payload_json_sql(), "json_build_object('customer_id', customer_id, 'text_hash', text_hash)::text");
        assert_eq!(indexed_payload_fields(), [("customer_id", FieldKind::Integer)]);
    }
}
