//! Loading validated CSV rows into PostgreSQL: COPY into `*_staging` tables, then swap them in.
//!
//! The caller (the ingest pipeline) runs everything in ONE transaction on one connection:
//! `prepare_schema` (before, on the pool); `BEGIN; advisory lock; load_staging; build profiles_staging; swap_in;
//! COMMIT`. A failed ingest therefore leaves the old data untouched, and readers see old or new data, never a mix
//! (`swap_in` takes ACCESS EXCLUSIVE locks, so a reader waits for the COMMIT and then reads the new tables).
//!
//! The swap never deadlocks with readers: before its DROP it locks every live table in one `LOCK TABLE`, in the
//! order membership queries read them (`customer_facts`, `event_totals`, the metrics' rollups, `profiles`, `events`, `customers`), so
//! the DROP itself never waits while it holds a table. A reader whose transaction reads the tables in another order
//! could still hold one the LOCK waits for while it waits for one the LOCK took; so each attempt to lock waits at
//! most half of `deadlock_timeout` inside a savepoint, and on a timeout it releases what it took and tries again,
//! before any reader's deadlock check could fail that reader (see [`lock_live_tables`]).
//!
//! Memory stays flat: rows are validated one at a time, encoded as COPY text lines into a ~1 MB buffer and sent
//! chunk by chunk; only the sets of customer and event ids are kept (see [`crate::input::IdSet`]).
//!
//! A load never replaces live data with little or nothing because of its own rejects: it fails when more rows of
//! one file are rejected than [`LoadOptions::max_rejects`] allows, always when no customer is left, and when no
//! event is left where the live data has events (a header-only events file included). These checks run in
//! [`load_staging`], so the caller's transaction rolls back and nothing changes; the rejects file is kept in these
//! cases, since it is what the user needs to fix the data.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use audience_tools::dataset::DATASET_DDL;
use audience_tools::db::{check_identifier, prepare_reader, tolerate_existing};
use audience_tools::schema::{
    CUSTOMER_DAYS, CUSTOMER_FACTS, CUSTOMER_TOTALS, CUSTOMERS, DAILY_TOTALS, EVENT_TOTALS, EVENTS, PROFILES,
    READER_ROLE, TABLES, swapped_tables,
};
use sqlx::postgres::PgCopyIn;
use sqlx::{PgConnection, PgPool};

use crate::input::{Checked, Customer, CustomerReader, Event, EventReader, KnownCustomers, Mapping, Reject};
use crate::keys::{CUSTOMER_KEYS_DDL, CustomerKeys};

/// COPY data is sent in chunks of about this many bytes.
const CHUNK_BYTES: usize = 1 << 20;

/// How to load: strictness, where rejected rows go, how many may be rejected, and an optional column mapping.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Stop at the first bad row with `<file>:<line>: <reason>` instead of rejecting it.
    pub strict: bool,
    /// Where rejected rows are written as CSV (`file,line,reason`). The file is written only when a row is
    /// rejected, and only once the load has succeeded or has failed because of its rejects (over `max_rejects`,
    /// or no customer left); a load that fails for any other reason leaves no rejects file behind.
    pub rejects_path: PathBuf,
    /// How many rows of one file may be rejected before the load fails (default 10% of the file's rows).
    pub max_rejects: RejectLimit,
    /// Maps a foreign export's columns and values onto ours; `None` expects our own column names.
    pub mapping: Option<Mapping>,
    /// A dry run (`ingest --check`): rejects are counted by reason, but no rejects file is written.
    pub dry_run: bool,
}

/// How many rows of one file may be rejected before the load fails, changing nothing: a number of rows, or a
/// share of the rows read from the file. Written `100` or `5%` (`0.5%` too); `100%` turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectLimit {
    /// At most this many rejected rows per file.
    Rows(u64),
    /// At most this share of a file's rows, in hundredths of a percent (1000 = 10%, 10000 = no limit).
    Share(u32),
}

/// 10%: a few bad rows in a big export load, but a file that is mostly wrong (a wrong column, a wrong id format,
/// the wrong file) fails instead of replacing the live data with a fraction of it.
impl Default for RejectLimit {
    fn default() -> Self {
        RejectLimit::Share(1000)
    }
}

impl RejectLimit {
    /// No limit: `100%`.
    pub const NONE: RejectLimit = RejectLimit::Share(10_000);

    /// True when `rejected` of `read` rows is within the limit.
    pub fn allows(self, rejected: u64, read: u64) -> bool {
        match self {
            RejectLimit::Rows(rows) => rejected <= rows,
            RejectLimit::Share(hundredths) => {
                u128::from(rejected) * 10_000 <= u128::from(read) * u128::from(hundredths)
            }
        }
    }
}

impl FromStr for RejectLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = || format!("{text:?} is not a row count (100) or a percentage of the rows (5%, 0.5%, 100%)");
        let Some(percent) = text.strip_suffix('%') else {
            return text.parse().map(RejectLimit::Rows).map_err(|_| invalid());
        };
        let (whole, fraction) = percent.split_once('.').unwrap_or((percent, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 2 {
            return Err(invalid());
        }
        let whole: u32 = whole.parse().map_err(|_| invalid())?;
        let fraction: u32 = format!("{fraction:0<2}").parse().map_err(|_| invalid())?;
        match whole.checked_mul(100).and_then(|w| w.checked_add(fraction)) {
            Some(hundredths) if hundredths <= 10_000 => Ok(RejectLimit::Share(hundredths)),
            _ => Err(format!("{text:?} is more than 100%")),
        }
    }
}

/// Writes the limit as it is given on the command line (`100`, `10%`, `0.5%`).
impl fmt::Display for RejectLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RejectLimit::Rows(rows) => write!(f, "{rows}"),
            RejectLimit::Share(hundredths) if hundredths % 100 == 0 => write!(f, "{}%", hundredths / 100),
            RejectLimit::Share(hundredths) => {
                let fraction = format!("{:02}", hundredths % 100);
                write!(f, "{}.{}%", hundredths / 100, fraction.trim_end_matches('0'))
            }
        }
    }
}

/// What a load did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadReport {
    pub customers: u64,
    pub events: u64,
    pub rejected: u64,
    /// Set when at least one row was rejected (and the load was not a dry run).
    pub rejects_path: Option<PathBuf>,
    /// The rejects of each file by reason, most rows first.
    pub rejects_by_reason: Vec<RejectReason>,
    /// Seconds spent reading, validating and encoding rows.
    pub parse_secs: f64,
    /// Seconds spent waiting on PostgreSQL: creating the staging tables, sending COPY data (PostgreSQL ingests
    /// while the next chunk is parsed, so this is mostly the final wait for each COPY to finish).
    pub copy_secs: f64,
}

/// Creates `customers_staging` and `events_staging` in the current schema (replacing leftovers) and fills them
/// with validated rows via COPY. When the mapping derives customers from the events file (`from_events = true`),
/// the `customers` path is not read, and a derived customer none of whose events loaded is removed. Run it inside the caller's transaction; on error, roll back.
///
/// Errors: a whole-file problem (see [`crate::input`]) or, with `strict`, the first rejected row, as one line
/// `<file>:<line>: <reason>`; a file with more rejected rows than `max_rejects` allows, no valid customer at all,
/// or no event where the live data has events, as one line saying "nothing was changed" (the caller rolls back)
/// and where the rejects file is; or a database error.
pub async fn load_staging(
    conn: &mut PgConnection,
    customers: &Path,
    events: &Path,
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let started = Instant::now();
    let mapping = opts.mapping.as_ref();
    let derived = mapping.is_some_and(Mapping::customers_from_events);
    // Both headers are checked before any SQL runs, so a missing column fails fast.
    let keys = CustomerKeys::load(conn).await?;
    let mut customer_reader = CustomerReader::open(customers, events, mapping, keys)?;
    EventReader::open(events, mapping, KnownCustomers::default())?;

    let mut copy_secs = 0.0;
    let mut rejects = RejectSink::new(&opts.rejects_path, opts.strict, opts.dry_run);
    let timer = Instant::now();
    create_staging(conn).await?;
    copy_secs += timer.elapsed().as_secs_f64();

    let customers_loaded =
        copy_table(conn, "customers_staging", &CUSTOMERS.columns(), &mut customer_reader, &mut rejects, &mut copy_secs)
            .await?;
    // Checked before the events are read: they cannot help, and their rejects would only repeat the customers'.
    if customers_loaded == 0 {
        let file = customer_reader.file().to_owned();
        let read = customer_reader.rows_read();
        let example = customer_reader.first_failure().cloned();
        return Err(no_customers(&file, read, example, rejects));
    }
    let customer_rejects = rejects.end_file();
    let mut rejects_by_reason = customer_rejects.reasons();
    if !opts.max_rejects.allows(customer_rejects.count, customers_loaded + customer_rejects.count) {
        return Err(over_limit(customer_reader.file(), customers_loaded, customer_rejects, opts.max_rejects, rejects));
    }
    let mut event_reader = EventReader::open(events, mapping, customer_reader.into_known())?;
    let events_loaded =
        copy_table(conn, "events_staging", &EVENTS.columns(), &mut event_reader, &mut rejects, &mut copy_secs).await?;
    let event_rejects = rejects.end_file();
    // Like the customers' check above, and before the reject limit, whose message would not say that the load
    // would have emptied the events: a header-only or wholly rejected events file must not replace them with none.
    // Customers derived from the events would all be removed below, leaving none.
    if events_loaded == 0 && (derived || live_events_exist(conn).await?) {
        let example = event_rejects.first().cloned();
        let outcome =
            if derived { "so it gives no customer either" } else { "and loading it would remove every current event" };
        return Err(no_events(event_reader.file(), event_reader.rows_read(), example, outcome, rejects));
    }
    rejects_by_reason.extend(event_rejects.reasons());
    if !opts.max_rejects.allows(event_rejects.count, events_loaded + event_rejects.count) {
        return Err(over_limit(event_reader.file(), events_loaded, event_rejects, opts.max_rejects, rejects));
    }
    let customers_loaded =
        if derived { customers_loaded - remove_customers_without_events(conn).await? } else { customers_loaded };
    // In the same transaction as the data: a rolled-back ingest assigns no key, a committed one keeps its keys.
    event_reader.known().keys().save(conn).await?;

    let rejected = rejects.count;
    let rejects_path = rejects.finish()?;
    Ok(LoadReport {
        customers: customers_loaded,
        events: events_loaded,
        rejected,
        rejects_path,
        rejects_by_reason,
        parse_secs: (started.elapsed().as_secs_f64() - copy_secs).max(0.0),
        copy_secs,
    })
}

/// "1 row", "2 rows".
fn rows(count: u64) -> String {
    if count == 1 { "1 row".to_owned() } else { format!("{count} rows") }
}

/// Where the rejects went, for a failure message; empty when none were written.
fn kept_rejects(rejects: RejectSink) -> String {
    match rejects.finish() {
        Ok(Some(path)) => format!("; all rejects are in {}", path.display()),
        Ok(None) => String::new(),
        Err(error) => format!("; the rejects could not be kept: {error:#}"),
    }
}

/// The error for a customers file that gave no customer; keeps the rejects file.
fn no_customers(file: &str, read: u64, example: Option<Reject>, rejects: RejectSink) -> anyhow::Error {
    if read == 0 {
        return anyhow!("no customers in {file}: it has no data rows; nothing was changed");
    }
    let example = example.map(|first| format!(", e.g. line {}: {}", first.line, first.reason)).unwrap_or_default();
    let kept = kept_rejects(rejects);
    anyhow!("no valid customers in {file}: {} rejected{example}; nothing was changed{kept}", rows(read))
}

/// True when the live `events` table exists and has a row: a load with no events would then remove them all.
async fn live_events_exist(conn: &mut PgConnection) -> Result<bool> {
    let live: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(EVENTS.name)
        .fetch_one(&mut *conn)
        .await
        .context("cannot look for the live events")?;
    if live.is_none() {
        return Ok(false);
    }
    sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {})", EVENTS.name))
        .fetch_one(&mut *conn)
        .await
        .context("cannot read the live events")
}

/// Removes the customers derived from the events file (`from_events = true`) that have no loaded event, and
/// returns how many. The customer reader derives a customer only from a row whose values are all valid, but only
/// the events' pass knows which rows repeat an earlier `event_id`: a customer whose one such row was rejected as a
/// repeat would otherwise exist without a row that loaded.
async fn remove_customers_without_events(conn: &mut PgConnection) -> Result<u64> {
    let removed = sqlx::query(
        "DELETE FROM customers_staging c \
         WHERE NOT EXISTS (SELECT 1 FROM events_staging e WHERE e.customer_id = c.customer_id)",
    )
    .execute(&mut *conn)
    .await
    .context("cannot remove the derived customers without events")?;
    Ok(removed.rows_affected())
}

/// The error for an events file that gave no event where that may not be, `outcome` saying why; keeps the rejects
/// file.
fn no_events(file: &str, read: u64, example: Option<Reject>, outcome: &str, rejects: RejectSink) -> anyhow::Error {
    if read == 0 {
        return anyhow!("no events in {file}: it has no data rows, {outcome}; nothing was changed");
    }
    let example = example.map(|first| format!(", e.g. line {}: {}", first.line, first.reason)).unwrap_or_default();
    let kept = kept_rejects(rejects);
    anyhow!("no valid events in {file}: {} rejected{example}, {outcome}; nothing was changed{kept}", rows(read))
}

/// The error for a file with more rejects than the limit allows; keeps the rejects file.
fn over_limit(
    file: &str,
    loaded: u64,
    file_rejects: FileRejects,
    limit: RejectLimit,
    rejects: RejectSink,
) -> anyhow::Error {
    let read = loaded + file_rejects.count;
    let common = match file_rejects.most_common() {
        Some((count, example)) => {
            format!("; most common reason ({}), e.g. line {}: {}", rows(count), example.line, example.reason)
        }
        None => String::new(),
    };
    let kept = kept_rejects(rejects);
    anyhow!(
        "{file}: {} of {} rejected, more than --max-rejects {limit} allows{common}; nothing was changed{kept}",
        file_rejects.count,
        rows(read)
    )
}

async fn create_staging(conn: &mut PgConnection) -> Result<()> {
    let statements = [
        "DROP TABLE IF EXISTS customers_staging, events_staging".to_owned(),
        format!("CREATE TABLE customers_staging ({})", CUSTOMERS.ddl()),
        format!("CREATE TABLE events_staging ({})", EVENTS.ddl()),
    ];
    for statement in statements {
        sqlx::query(&statement).execute(&mut *conn).await.context("cannot create the staging tables")?;
    }
    Ok(())
}

/// A reader whose accepted rows can be appended to a COPY buffer.
trait CopyRows {
    /// Appends the next accepted row to `buf` as one COPY text line (returning `Checked::Row(())`), or returns
    /// the rejected row; `None` at the end.
    fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<Option<Checked<()>>>;
}

impl CopyRows for CustomerReader {
    fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<Option<Checked<()>>> {
        Ok(self.next_row()?.map(|checked| match checked {
            Checked::Row(customer) => {
                encode_customer(&customer, buf);
                Checked::Row(())
            }
            Checked::Rejected(reject) => Checked::Rejected(reject),
        }))
    }
}

impl CopyRows for EventReader {
    fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<Option<Checked<()>>> {
        Ok(self.next_row()?.map(|checked| match checked {
            Checked::Row(event) => {
                encode_event(&event, buf);
                Checked::Row(())
            }
            Checked::Rejected(reject) => Checked::Rejected(reject),
        }))
    }
}

/// COPYs every accepted row of `rows` into `table`; returns the number of rows copied.
async fn copy_table(
    conn: &mut PgConnection,
    table: &str,
    columns: &[&str],
    rows: &mut impl CopyRows,
    rejects: &mut RejectSink,
    copy_secs: &mut f64,
) -> Result<u64> {
    let statement = format!("COPY {table} ({}) FROM STDIN", columns.join(", "));
    let timer = Instant::now();
    let mut copy = conn.copy_in_raw(&statement).await.with_context(|| format!("cannot start COPY into {table}"))?;
    *copy_secs += timer.elapsed().as_secs_f64();
    match send_rows(&mut copy, rows, rejects, copy_secs).await {
        Ok(count) => {
            let timer = Instant::now();
            copy.finish().await.with_context(|| format!("COPY into {table} failed"))?;
            *copy_secs += timer.elapsed().as_secs_f64();
            Ok(count)
        }
        Err(error) => {
            // The input error is what the user must see; a failing abort only means the connection is gone,
            // which the caller's rollback reports anyway.
            let _ = copy.abort("audience: input rejected").await;
            Err(error)
        }
    }
}

async fn send_rows(
    copy: &mut PgCopyIn<&mut PgConnection>,
    rows: &mut impl CopyRows,
    rejects: &mut RejectSink,
    copy_secs: &mut f64,
) -> Result<u64> {
    let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
    let mut count = 0;
    while let Some(checked) = rows.next_into(&mut buf)? {
        match checked {
            Checked::Row(()) => count += 1,
            Checked::Rejected(reject) => rejects.push(reject)?,
        }
        if buf.len() >= CHUNK_BYTES {
            let timer = Instant::now();
            copy.send(buf.as_slice()).await.context("sending COPY data failed")?;
            *copy_secs += timer.elapsed().as_secs_f64();
            buf.clear();
        }
    }
    if !buf.is_empty() {
        let timer = Instant::now();
        copy.send(buf.as_slice()).await.context("sending COPY data failed")?;
        *copy_secs += timer.elapsed().as_secs_f64();
    }
    Ok(count)
}

// COPY text format: tab-separated, `\N` for NULL, backslash escapes for the separators.

/// `text` as a COPY text field.
pub fn copy_text(text: &str) -> String {
    let mut buf = Vec::with_capacity(text.len());
    push_text(&mut buf, text);
    // Escaping replaces ASCII bytes with ASCII bytes, so the UTF-8 stays valid.
    String::from_utf8_lossy(&buf).into_owned()
}

fn push_text(buf: &mut Vec<u8>, text: &str) {
    if !text.bytes().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        buf.extend_from_slice(text.as_bytes());
        return;
    }
    for byte in text.bytes() {
        match byte {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            other => buf.push(other),
        }
    }
}

fn push_opt_text(buf: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => push_text(buf, text),
        None => buf.extend_from_slice(b"\\N"),
    }
}

/// Appends `value`, or `\N` when it is unknown.
fn push_opt(buf: &mut Vec<u8>, value: Option<impl fmt::Display>) {
    match value {
        // Writing to a Vec cannot fail, so the io::Result of write! carries nothing.
        Some(value) => {
            let _ = write!(buf, "{value}");
        }
        None => buf.extend_from_slice(b"\\N"),
    }
}

/// Cents as a NUMERIC literal (`-1234` is `-12.34`).
struct Cents(i64);

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        write!(f, "{sign}{}.{:02}", self.0.unsigned_abs() / 100, self.0.unsigned_abs() % 100)
    }
}

fn encode_customer(c: &Customer, buf: &mut Vec<u8>) {
    let _ = write!(buf, "{}\t", c.customer_id);
    push_text(buf, &c.external_id);
    for text in [&c.first_name, &c.last_name, &c.email, &c.country] {
        buf.push(b'\t');
        push_opt_text(buf, text.as_deref());
    }
    buf.push(b'\t');
    push_opt(buf, c.age);
    buf.push(b'\t');
    push_opt_text(buf, c.favorite_color.as_deref());
    buf.push(b'\t');
    push_opt(buf, c.signup_date.map(|date| date.format("%Y-%m-%d")));
    buf.push(b'\n');
}

/// Appends `e` to `buf` as one COPY text line (also used by `audience bench` to time COPY alone).
pub fn encode_event(e: &Event, buf: &mut Vec<u8>) {
    let _ = write!(buf, "{}\t{}\t{}\t", e.event_id, e.customer_id, e.event_type);
    push_opt_text(buf, e.product.as_deref());
    buf.push(b'\t');
    push_opt_text(buf, e.color.as_deref());
    buf.push(b'\t');
    push_opt(buf, e.price_cents.map(Cents));
    let _ = write!(buf, "\t{}\t", e.quantity);
    push_opt(buf, e.amount_cents.map(Cents));
    let _ = writeln!(buf, "\t{}", e.ts.format("%Y-%m-%d %H:%M:%S%.f+00"));
}

/// Distinct reasons counted per file: beyond this, new reasons still count as rejects but not for "most common"
/// (masked reasons are few; this bounds memory should some value escape the masking).
const MAX_REASON_PATTERNS: usize = 1000;

/// Rows of one file rejected for one reason.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RejectReason {
    pub file: String,
    /// The reason with its values masked (`customer_id "…" is not an integer`).
    pub reason: String,
    pub rows: u64,
    /// The first such row: its line and its full reason.
    pub first_line: u64,
    pub first_reason: String,
}

/// The rejects of one file, for the reject limit's message and the report.
#[derive(Debug, Default)]
struct FileRejects {
    count: u64,
    /// Per reason with its values masked ([`reason_pattern`]): how many rows, and the first of them.
    by_reason: HashMap<String, (u64, Reject)>,
}

impl FileRejects {
    fn add(&mut self, reject: &Reject) {
        self.count += 1;
        let pattern = reason_pattern(&reject.reason);
        if let Some((count, _)) = self.by_reason.get_mut(&pattern) {
            *count += 1;
        } else if self.by_reason.len() < MAX_REASON_PATTERNS {
            self.by_reason.insert(pattern, (1, reject.clone()));
        }
    }

    /// Every reason, most rows first (the earliest first on a tie).
    fn reasons(&self) -> Vec<RejectReason> {
        let mut reasons: Vec<RejectReason> = self
            .by_reason
            .iter()
            .map(|(pattern, (rows, first))| RejectReason {
                file: first.file.clone(),
                reason: pattern.clone(),
                rows: *rows,
                first_line: first.line,
                first_reason: first.reason.clone(),
            })
            .collect();
        reasons.sort_by_key(|r| (std::cmp::Reverse(r.rows), r.first_line));
        reasons
    }

    /// The first rejected row (of those whose reason is counted, see [`MAX_REASON_PATTERNS`]).
    fn first(&self) -> Option<&Reject> {
        self.by_reason.values().map(|(_, first)| first).min_by_key(|first| first.line)
    }

    /// The reason most rows were rejected for (the earliest on a tie): how many, and its first row.
    fn most_common(&self) -> Option<(u64, &Reject)> {
        self.by_reason
            .values()
            .min_by_key(|(count, first)| (std::cmp::Reverse(*count), first.line))
            .map(|(count, first)| (*count, first))
    }
}

/// A reason with its values masked, so rows rejected for the same reason with different values count together:
/// quoted values (`"user_0001"`, written by `{:?}`) become `"…"`, and numbers standing alone (ids) become `#`.
/// Numbers that are part of a word (`ISO 3166-1`, `alpha-2`) stay, and so does the number of a standard after
/// its all-capitals name (`RFC 3339`, `ISO 8601`): it names the rule, not a value.
fn reason_pattern(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut chars = reason.chars().peekable();
    let mut prev = ' ';
    let part_of_word = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.');
    while let Some(c) = chars.next() {
        if c == '"' {
            // Skip to the closing quote; `{:?}` escapes quotes and backslashes inside with a backslash.
            while let Some(inner) = chars.next() {
                match inner {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
            out.push_str("\"…\"");
            prev = '"';
        } else if c.is_ascii_digit() && !part_of_word(prev) && !after_standard_name(&out) {
            let mut number = String::from(c);
            while let Some(&digit) = chars.peek().filter(|d| d.is_ascii_digit()) {
                number.push(digit);
                chars.next();
            }
            let standalone = chars.peek().is_none_or(|&next| !part_of_word(next));
            out.push_str(if standalone { "#" } else { &number });
            prev = '0';
        } else {
            out.push(c);
            prev = c;
        }
    }
    out
}

/// True when `text` ends with a space after a word of two or more capital letters (`RFC `, `ISO `), the name of a
/// standard whose number follows.
fn after_standard_name(text: &str) -> bool {
    let Some(before) = text.strip_suffix(' ') else { return false };
    let name_len = before.chars().rev().take_while(char::is_ascii_uppercase).count();
    let starts_word = before.chars().rev().nth(name_len).is_none_or(|c| !c.is_alphanumeric() && c != '_');
    name_len >= 2 && starts_word
}

/// Collects rejected rows into `<rejects_path>.partial`, renamed to `rejects_path` when the load succeeds or fails
/// because of its rejects.
struct RejectSink {
    path: PathBuf,
    partial: PathBuf,
    strict: bool,
    /// Count, write nothing.
    dry_run: bool,
    writer: Option<csv::Writer<File>>,
    count: u64,
    /// The rejects of the file being read.
    file: FileRejects,
}

impl RejectSink {
    fn new(path: &Path, strict: bool, dry_run: bool) -> Self {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        Self {
            path: path.to_owned(),
            partial: PathBuf::from(partial),
            strict,
            dry_run,
            writer: None,
            count: 0,
            file: FileRejects::default(),
        }
    }

    /// The rejects of the file just read; the next rejects count for the next file.
    fn end_file(&mut self) -> FileRejects {
        std::mem::take(&mut self.file)
    }

    fn push(&mut self, reject: Reject) -> Result<()> {
        if self.strict {
            bail!("{reject}");
        }
        if self.writer.is_none() && !self.dry_run {
            if let Some(parent) = self.partial.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let file = File::create(&self.partial)
                .with_context(|| format!("cannot create the rejects file {}", self.partial.display()))?;
            let mut writer = csv::Writer::from_writer(file);
            writer.write_record(["file", "line", "reason"])?;
            self.writer = Some(writer);
        }
        if let Some(writer) = self.writer.as_mut() {
            writer
                .write_record([reject.file.as_str(), &reject.line.to_string(), &reject.reason])
                .with_context(|| format!("cannot write the rejects file {}", self.partial.display()))?;
        }
        self.count += 1;
        self.file.add(&reject);
        Ok(())
    }

    /// Moves the rejects into place; the path when any row was rejected.
    fn finish(mut self) -> Result<Option<PathBuf>> {
        let Some(mut writer) = self.writer.take() else { return Ok(None) };
        writer.flush().with_context(|| format!("cannot write the rejects file {}", self.partial.display()))?;
        drop(writer);
        std::fs::rename(&self.partial, &self.path)
            .with_context(|| format!("cannot move the rejects file to {}", self.path.display()))?;
        Ok(Some(self.path.clone()))
    }
}

impl Drop for RejectSink {
    /// A failed load leaves no rejects behind.
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Replaces live `customers`/`events`/`profiles` and the derived audience tables with the `*_staging` tables (the
/// caller creates `profiles_staging`, e.g. from `PROFILES.ddl()`, and the derived ones with
/// `audience_tables::build`), names each primary key `<table>_pkey`, creates the indexes, grants SELECT to the
/// reader role and analyzes the tables. Run it inside the caller's transaction.
pub async fn swap_in(conn: &mut PgConnection) -> Result<()> {
    let names = swapped_tables();
    for name in &names {
        let staging = format!("{name}_staging");
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass($1)::text").bind(&staging).fetch_one(&mut *conn).await?;
        if exists.is_none() {
            bail!("cannot swap in new data: table {staging} does not exist");
        }
    }
    lock_live_tables(conn).await?;
    let live = names.join(", ");
    sqlx::query(&format!("DROP TABLE IF EXISTS {live}"))
        .execute(&mut *conn)
        .await
        .context("cannot drop the old tables")?;
    for name in &names {
        sqlx::query(&format!("ALTER TABLE {name}_staging RENAME TO {name}"))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("cannot rename {name}_staging"))?;
    }
    for table in &TABLES {
        ensure_primary_key(conn, table.name, table.primary_key()).await?;
    }
    ensure_primary_key(conn, CUSTOMER_FACTS, "customer_id").await?;
    ensure_primary_key(conn, CUSTOMER_TOTALS, "customer_id").await?;
    let statements = [
        "CREATE INDEX IF NOT EXISTS events_customer_id_idx ON events (customer_id)".to_owned(),
        // Audience clauses filter events by type and then price, product or time, and need only the customer (and
        // the quantity, which tells a purchase from a return): covering indexes answer them from the index alone
        // (after the VACUUM that follows the swap). "Bought anything priced 500 or more" at 100k customers / 5M
        // events: 3.4 s with a bitmap scan of every purchase, 38 ms from the index.
        "CREATE INDEX IF NOT EXISTS events_type_ts_idx ON events (event_type, ts) INCLUDE (customer_id, quantity)"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS events_type_price_idx ON events (event_type, price) INCLUDE (customer_id, quantity)"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS events_type_product_ts_idx ON events (event_type, product, ts) \
         INCLUDE (customer_id, quantity)"
            .to_owned(),
        // Recency alone ("active in the last 7 days") is a common gate; (event_type, ts) cannot serve it.
        "CREATE INDEX IF NOT EXISTS events_ts_idx ON events (ts)".to_owned(),
        "CREATE INDEX IF NOT EXISTS events_product_color_idx ON events (product, color)".to_owned(),
        // The audience compiler's event clauses: by product (with every total, so a count or a recency needs no
        // other read), by highest price ("bought anything priced 500 or more"), by lowest price ("bought
        // something under 20") and by latest event ("bought anything in the last 30 days"). The product index is
        // unique with the customer, which tells the planner that one product's rows name each customer once: it
        // then merge-joins them with the customers instead of hashing them to remove duplicates first ("viewed
        // watches" at 100k customers: 38 ms instead of 87 ms).
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {EVENT_TOTALS}_product_idx ON {EVENT_TOTALS} \
             (event_type, product, customer_id) INCLUDE (events, last_ts, min_price, max_price)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {EVENT_TOTALS}_max_price_idx ON {EVENT_TOTALS} (event_type, max_price) \
             INCLUDE (customer_id)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {EVENT_TOTALS}_min_price_idx ON {EVENT_TOTALS} (event_type, min_price) \
             INCLUDE (customer_id)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {EVENT_TOTALS}_last_ts_idx ON {EVENT_TOTALS} (event_type, last_ts) \
             INCLUDE (customer_id)"
        ),
        // The metrics' rollups by day: a window or a calendar period reads its own days only.
        format!("CREATE INDEX IF NOT EXISTS {CUSTOMER_DAYS}_day_idx ON {CUSTOMER_DAYS} (day)"),
        format!("CREATE INDEX IF NOT EXISTS {DAILY_TOTALS}_day_idx ON {DAILY_TOTALS} (day)"),
        "CREATE INDEX IF NOT EXISTS profiles_segment_idx ON profiles (segment)".to_owned(),
        "CREATE INDEX IF NOT EXISTS profiles_country_idx ON profiles (country)".to_owned(),
        // The tools look customers up by the ids users know; the reader already refused duplicates.
        "CREATE UNIQUE INDEX IF NOT EXISTS customers_external_id_idx ON customers (external_id)".to_owned(),
        "CREATE UNIQUE INDEX IF NOT EXISTS profiles_external_id_idx ON profiles (external_id)".to_owned(),
        // The dataset row too: the audience report reads the customer count from it, in its own snapshot.
        format!("GRANT SELECT ON {live}, dataset TO {READER_ROLE}"),
        format!("ANALYZE {live}"),
    ];
    for statement in statements {
        sqlx::query(&statement).execute(&mut *conn).await.with_context(|| format!("swap-in failed at: {statement}"))?;
    }
    Ok(())
}

/// The live tables in the order the swap locks them: the order membership queries read them in (the derived
/// tables, then `profiles`, `events` and `customers`; see the module doc).
const LOCK_ORDER: [&str; 8] = [
    CUSTOMER_FACTS,
    EVENT_TOTALS,
    CUSTOMER_TOTALS,
    CUSTOMER_DAYS,
    DAILY_TOTALS,
    PROFILES.name,
    EVENTS.name,
    CUSTOMERS.name,
];

/// The savepoint each attempt to lock the live tables runs in.
const LOCK_SAVEPOINT: &str = "audience_swap_locks";

/// The longest one attempt to lock the live tables may wait, in milliseconds; shorter when half the server's
/// `deadlock_timeout` is shorter (see [`lock_live_tables`]).
const LOCK_ATTEMPT_MS: i64 = 500;

/// How long the swap keeps trying to lock the live tables before the ingest fails. Readers' statements time out
/// after 10 s, so readers that hold the tables this long are stuck, not busy.
const LOCK_PATIENCE: Duration = Duration::from_secs(120);

/// Takes ACCESS EXCLUSIVE locks on the live tables that exist, in [`LOCK_ORDER`], in one `LOCK TABLE`, so the
/// swap's DROP never waits for a reader while it holds some of the tables.
///
/// A reader that read one table and then waits for another that the swap holds, while the swap waits for the first,
/// is a deadlock, which PostgreSQL breaks by failing one of the two. Locking in the readers' order avoids most of
/// these, but not all: a reader's transaction may run several statements in another order. So one attempt waits at
/// most half of `deadlock_timeout` (the server's, 1 s by default, and never above [`LOCK_ATTEMPT_MS`]) and runs in
/// a savepoint: on a timeout (or a deadlock, should the server's check come first) it rolls back to the savepoint,
/// which releases the locks it took, lets readers through for a moment and tries again. A reader waiting for a
/// table the swap holds began waiting after the attempt began, so the attempt gives up before the reader's deadlock
/// check runs: readers are never the victim, and the swap retries for up to [`LOCK_PATIENCE`].
async fn lock_live_tables(conn: &mut PgConnection) -> Result<()> {
    let mut live = Vec::new();
    for name in LOCK_ORDER {
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass($1)::text").bind(name).fetch_one(&mut *conn).await?;
        if exists.is_some() {
            live.push(name);
        }
    }
    if live.is_empty() {
        return Ok(());
    }
    let lock = format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", live.join(", "));
    let (attempt_ms, statement_timeout): (i64, String) = sqlx::query_as(
        "SELECT LEAST($1, GREATEST(1, EXTRACT(EPOCH FROM current_setting('deadlock_timeout')::interval) * 500))\
         ::int8, current_setting('statement_timeout')",
    )
    .bind(LOCK_ATTEMPT_MS)
    .fetch_one(&mut *conn)
    .await
    .context("cannot read the lock timeouts")?;
    let started = Instant::now();
    sqlx::query(&format!("SAVEPOINT {LOCK_SAVEPOINT}")).execute(&mut *conn).await?;
    loop {
        // Set inside the savepoint: a failed attempt's rollback restores the ingest's own timeout.
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(attempt_ms.to_string())
            .execute(&mut *conn)
            .await?;
        match sqlx::query(&lock).execute(&mut *conn).await {
            Ok(_) => break,
            Err(error) if is_lock_wait(&error) && started.elapsed() < LOCK_PATIENCE => {
                sqlx::query(&format!("ROLLBACK TO SAVEPOINT {LOCK_SAVEPOINT}")).execute(&mut *conn).await?;
                // Long enough for the readers that queued behind the attempt to finish, jittered so the swap does
                // not meet the same readers at the same point again.
                let pause = 20 + rand::random::<u64>() % 80;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(error) if is_lock_wait(&error) => bail!(
                "cannot swap in the new data: readers kept the tables locked for {} s; nothing was changed",
                LOCK_PATIENCE.as_secs()
            ),
            Err(error) => return Err(error).context("cannot lock the live tables"),
        }
    }
    sqlx::query("SELECT set_config('statement_timeout', $1, true)").bind(statement_timeout).execute(&mut *conn).await?;
    sqlx::query(&format!("RELEASE SAVEPOINT {LOCK_SAVEPOINT}")).execute(&mut *conn).await?;
    Ok(())
}

/// True for the errors of a lock wait given up: the attempt's timeout, or the deadlock check.
fn is_lock_wait(error: &sqlx::Error) -> bool {
    let code = error.as_database_error().and_then(|e| e.code());
    // query_canceled (the statement timeout), lock_not_available, deadlock_detected.
    code.is_some_and(|code| matches!(code.as_ref(), "57014" | "55P03" | "40P01"))
}

/// Names the table's primary key `<table>_pkey` (a renamed table keeps its staging constraint name), or adds one.
async fn ensure_primary_key(conn: &mut PgConnection, table: &str, column: &str) -> Result<()> {
    let current: Option<String> =
        sqlx::query_scalar("SELECT conname::text FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'")
            .bind(table)
            .fetch_optional(&mut *conn)
            .await?;
    let wanted = format!("{table}_pkey");
    let statement = match current {
        Some(name) if name == wanted => return Ok(()),
        Some(name) => format!("ALTER TABLE {table} RENAME CONSTRAINT \"{name}\" TO {wanted}"),
        None => format!("ALTER TABLE {table} ADD CONSTRAINT {wanted} PRIMARY KEY ({column})"),
    };
    sqlx::query(&statement)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("cannot set the primary key of {table}"))?;
    Ok(())
}

/// Creates `schema`, its `dataset` table and the SELECT-only reader role (idempotent, safe when run concurrently),
/// and grants the role what it needs to read the schema.
pub async fn prepare_schema(pool: &PgPool, schema: &str) -> Result<()> {
    for statement in schema_statements(schema)? {
        tolerate_existing(sqlx::query(&statement).execute(pool).await)
            .with_context(|| format!("cannot prepare schema {schema}: {statement}"))?;
    }
    prepare_reader(pool, schema).await
}

/// The tables a load needs besides its staging tables, created inside the caller's transaction (a dry run: the
/// rollback then removes whatever it created). The reader role is not needed, since nothing is swapped in.
pub async fn prepare_schema_in(conn: &mut PgConnection, schema: &str) -> Result<()> {
    for statement in schema_statements(schema)? {
        sqlx::query(&statement)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("cannot prepare schema {schema}: {statement}"))?;
    }
    Ok(())
}

/// The idempotent statements that create `schema`, its `dataset` table and its `customer_keys` table.
fn schema_statements(schema: &str) -> Result<[String; 7]> {
    check_identifier(schema)?;
    Ok([
        format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
        format!("CREATE TABLE IF NOT EXISTS {schema}.dataset ({DATASET_DDL})"),
        // Added after the first release of the table.
        format!("ALTER TABLE {schema}.dataset ADD COLUMN IF NOT EXISTS as_of DATE"),
        format!("ALTER TABLE {schema}.dataset ADD COLUMN IF NOT EXISTS derived_version BIGINT"),
        format!("ALTER TABLE {schema}.dataset ADD COLUMN IF NOT EXISTS prediction_fit JSONB"),
        format!("ALTER TABLE {schema}.dataset ADD COLUMN IF NOT EXISTS rollups_version BIGINT"),
        // Never dropped or swapped: a string id keeps its key across ingests (see `crate::keys`).
        format!("CREATE TABLE IF NOT EXISTS {schema}.customer_keys ({CUSTOMER_KEYS_DDL})"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_limits_parse_from_counts_and_percentages_and_print_back() {
        let parse = |text: &str| text.parse::<RejectLimit>();
        assert_eq!(parse("100"), Ok(RejectLimit::Rows(100)));
        assert_eq!(parse("0"), Ok(RejectLimit::Rows(0)));
        assert_eq!(parse("5%"), Ok(RejectLimit::Share(500)));
        assert_eq!(parse("0.5%"), Ok(RejectLimit::Share(50)));
        assert_eq!(parse("12.25%"), Ok(RejectLimit::Share(1225)));
        assert_eq!(parse("100%"), Ok(RejectLimit::NONE));
        for bad in ["", "-1", "x", "5 %", "%", ".5%", "1.234%", "1e3", "-5%"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse("100.01%").unwrap_err().contains("more than 100%"));
        for text in ["100", "10%", "0.5%", "12.25%", "100%"] {
            assert_eq!(parse(text).unwrap().to_string(), text);
        }
        assert_eq!(RejectLimit::default().to_string(), "10%");
    }

    #[test]
    fn reject_limits_allow_up_to_the_limit_and_fail_above_it() {
        let ten_percent = RejectLimit::default();
        assert!(ten_percent.allows(0, 0));
        assert!(ten_percent.allows(1, 10));
        assert!(!ten_percent.allows(2, 10));
        assert!(!ten_percent.allows(1, 9));
        assert!(ten_percent.allows(100_000_000, 1_000_000_000));
        assert!(RejectLimit::Rows(2).allows(2, 3));
        assert!(!RejectLimit::Rows(2).allows(3, 1_000));
        assert!(!RejectLimit::Rows(0).allows(1, 1_000_000));
        assert!(RejectLimit::NONE.allows(u64::MAX, u64::MAX));
    }

    #[test]
    fn the_swap_locks_every_table_it_replaces() {
        let mut locked = LOCK_ORDER.to_vec();
        let mut swapped = swapped_tables();
        locked.sort_unstable();
        swapped.sort_unstable();
        assert_eq!(locked, swapped);
    }

    #[test]
    fn reasons_with_different_values_share_a_pattern() {
        assert_eq!(
            reason_pattern("customer_id \"user_0001\" is not an integer"),
            "customer_id \"…\" is not an integer"
        );
        assert_eq!(reason_pattern("customer_id \"a\\\"b\" is not an integer"), "customer_id \"…\" is not an integer");
        assert_eq!(reason_pattern("duplicate event_id 6"), reason_pattern("duplicate event_id 1234"));
        assert_eq!(
            reason_pattern(
                "customer_id 12346 has no valid customer row (country \"XX\" is not an ISO 3166-1 alpha-2 code)"
            ),
            "customer_id # has no valid customer row (country \"…\" is not an ISO 3166-1 alpha-2 code)"
        );
        assert_eq!(reason_pattern("unknown customer_id -5"), "unknown customer_id -5");
        // The number of a standard is part of its name.
        assert_eq!(
            reason_pattern("ts \"x\" is not a timestamp (RFC 3339, YYYY-MM-DD HH:MM:SS or YYYY-MM-DD)"),
            "ts \"…\" is not a timestamp (RFC 3339, YYYY-MM-DD HH:MM:SS or YYYY-MM-DD)"
        );
        assert_eq!(reason_pattern("a date (ISO 8601) and ISO 3166 codes"), "a date (ISO 8601) and ISO 3166 codes");
        assert_eq!(
            reason_pattern("product has 3048 characters, more than the 200 allowed"),
            "product has # characters, more than the # allowed"
        );
    }
}
