//! Reading and validating customer and event CSV files (streaming), optionally through a column mapping.
//!
//! # What fails the whole file, and what rejects one row
//!
//! A file that cannot be read as a table fails with ONE error line `<file>:<line>: <reason>` and nothing is loaded:
//! - a required column is missing from the header (or a column the mapping names is missing);
//! - bytes that are not valid UTF-8;
//! - a row with a different number of fields than the header (a stray delimiter, or a stray quote that pairs up
//!   with a later one);
//! - a quote that is never closed, so its field would run to the end of the file (reported at the line where the
//!   quote opens).
//!
//! A quoted field may contain line breaks (RFC 4180); the value keeps them. Lines are physical lines of the file,
//! ended by LF, CRLF or CR, including the lines inside quoted fields and blank lines, and a row is reported at the
//! line where it starts (see [`LineTracker`]).
//!
//! A row whose values are wrong is rejected: it is skipped, counted, and written to the rejects CSV
//! (`file,line,reason`). With `--strict` the first rejected row stops the load instead, with the error
//! `<file>:<line>: <reason>`. Rows are rejected for:
//! - a customer id that is empty, longer than 128 characters, has control characters, or repeats an earlier row's
//!   id (the first row wins); an event id that is not an integer or repeats;
//! - an empty essential value (`event_type`, `ts`);
//! - a NUL byte in a field that a column is read from (PostgreSQL text cannot hold one);
//! - a text longer than its cap ([`TEXT_MAX_CHARS`]: 200 characters for names, colours and products, 254 for an
//!   e-mail address), which would otherwise fail the whole ingest when its index is built;
//! - an e-mail address that is not `local@domain.tld`;
//! - a country that is not an ISO 3166-1 alpha-2 code (after the mapping's value map);
//! - an age that is not an integer between 0 and 130, a date or timestamp that does not parse (when the column's
//!   first such value reads with a common format, [`COMMON_DATE_FORMATS`], the reason names the `format` to set);
//! - a price or amount that is not a decimal (a price must not be negative), or, with `decimal = "comma"`, one
//!   with a point (a thousands separator or a decimal point: ambiguous); a quantity that is not a non-zero
//!   integer;
//! - an event type other than `view`, `add_to_cart`, `purchase`;
//! - an event whose customer is not in the customers file;
//! - a negative quantity on anything but a purchase.
//!
//! A negative quantity on a purchase is a return: it is kept, and the profile SQL excludes it from spend.
//!
//! Customer ids are text, kept as the file has them (`external_id`); [`crate::keys`] gives each its integer key.
//! Essential columns: customers `customer_id`; events `customer_id, event_type, ts`. Every other column may be
//! absent from the file or empty in a row, and is then unknown (NULL): `event_id` defaults to the row number and
//! `quantity` to 1. `amount` is the line total; without it, it is price x quantity when the price is known.
//! Timestamps without a format are RFC 3339 (`2024-05-01T10:00:00Z`), `YYYY-MM-DD HH:MM:SS` (UTC) or
//! `YYYY-MM-DD` (midnight UTC); dates are `YYYY-MM-DD`.
//!
//! # Column mapping
//!
//! A [`Mapping`] (TOML, see `examples/mappings/`) maps a foreign export onto our columns.
//! Each key of `[customers]` or `[events]` is one of our columns and its value says where it comes from:
//! `"TheirColumn"`; `{ column = "Date", format = "%m/%d/%Y" }` (chrono format, only for `ts` and `signup_date`:
//! elsewhere it is a mapping error);
//! `{ column = "event", map = { cart = "add_to_cart" }, default = "view" }` (a value map with a default for the
//! values it does not list); `{ value = "purchase" }` (a constant); `{ row_number = true }` (the data row number,
//! 1 for the first row); `{ template = "customer{CustomerNo}@unknown.invalid" }` (their columns in braces).
//! `[events.values.<column>]` / `[customers.values.<column>]` tables translate values, e.g.
//! `"United Kingdom" = "GB"`; a value missing from the table passes through unchanged.
//! `delimiter` (comma, tab, semicolon, pipe, whitespace), `decimal` (point, or comma for `12,50`) and
//! `has_header = false` with `columns = [...]` describe the file's layout ([`LAYOUT_KEYS`]); a `.gz` file is
//! decompressed while it is read.
//! A table that is not in the mapping uses our own column names.
//! `[customers] from_events = true` says there is no customer file: one customer is derived from the first
//! valid row of each customer id in the events file, with the `[customers]` keys read from that file. A valid row
//! is one whose customer values and event values are all valid, so a customer whose every row is rejected is not
//! made (the load also removes a customer none of whose events loaded: see `load::load_staging`).
//! When a file read with `has_header = false` has a first row that is rejected and reads like a header, its reason
//! says so.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use audience_tools::schema::{CUSTOMERS, EVENTS, TableSpec};

use crate::keys::{CustomerKeys, check_external_id};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use csv::StringRecord;
use serde::Deserialize;

/// Customer columns that must have a value: only the id; every other fact may be unknown.
const CUSTOMER_REQUIRED: &[&str] = &["customer_id"];
/// Event columns that must have a value: whose event, what kind, when. Without `event_id` the row number is the
/// id; without `quantity` it is 1; price and amount may be absent (a clickstream).
const EVENT_REQUIRED: &[&str] = &["customer_id", "event_type", "ts"];
/// The event types the `events.event_type` CHECK constraint allows.
pub const EVENT_TYPES: &[&str] = &["view", "add_to_cart", "purchase"];

/// The columns a `format` applies to: the ones read as dates or timestamps.
const DATE_COLUMNS: &[&str] = &["ts", "signup_date"];

/// The keys of `[customers]`/`[events]` that describe the file rather than map one of our columns.
const LAYOUT_KEYS: &[&str] = &["delimiter", "decimal", "has_header", "columns", "values", "from_events"];

/// The longest free-text values, in characters. PostgreSQL refuses a btree index entry over 2,704 bytes, and
/// `product` and `color` share one index entry (`events_product_color_idx`): at up to 4 bytes a character, two
/// values of 200 stay far below it, so a long value is a row reject with its line instead of an index build that
/// fails the whole ingest. Names and colours are held to the same cap; 254 is the longest e-mail address that
/// SMTP can deliver (RFC 5321's 256-byte path less its angle brackets).
const TEXT_MAX_CHARS: &[(&str, usize)] = &[
    ("first_name", 200),
    ("last_name", 200),
    ("email", 254),
    ("favorite_color", 200),
    ("product", 200),
    ("color", 200),
];

/// Formats a date that the default parsing refuses is tried against, to name the `format` to set. Day-first and
/// month-first both parse a date whose day is 12 or less: the message then names both.
const COMMON_DATE_FORMATS: &[&str] = &["%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%Y%m%d", "%d-%m-%Y", "%Y/%m/%d"];

/// ISO 3166-1 alpha-2 codes, officially assigned.
const ISO_COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ \
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET \
    FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR \
    IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN \
    MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY \
    QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR \
    TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// Which of our tables a file feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Customers,
    Events,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Customers => "customers",
            Table::Events => "events",
        }
    }

    fn spec(self) -> &'static TableSpec {
        match self {
            Table::Customers => &CUSTOMERS,
            Table::Events => &EVENTS,
        }
    }

    fn columns(self) -> Vec<&'static str> {
        self.spec().columns()
    }

    fn required(self) -> &'static [&'static str] {
        match self {
            Table::Customers => CUSTOMER_REQUIRED,
            Table::Events => EVENT_REQUIRED,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Mapping
// ---------------------------------------------------------------------------------------------------------------

/// How a foreign export's columns and values map onto ours, read from a small TOML file (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    customers: Option<TableMapping>,
    events: Option<TableMapping>,
    customers_from_events: bool,
}

/// One table's sources, keyed by our column name, and how its file is laid out.
#[derive(Clone, Debug, Default)]
struct TableMapping {
    sources: BTreeMap<String, Source>,
    values: BTreeMap<String, HashMap<String, String>>,
    layout: Layout,
}

/// How a file separates its fields, whether it names them, and how it writes decimals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub delimiter: Delimiter,
    /// The column names of a file without a header row (`has_header = false`, `columns = [...]`).
    pub columns: Option<Vec<String>>,
    pub decimal: DecimalMark,
}

impl Default for Layout {
    fn default() -> Self {
        Self { delimiter: Delimiter::Byte(b','), columns: None, decimal: DecimalMark::Point }
    }
}

/// What separates a price's or amount's whole part from its cents: `12.50`, or `12,50` as European exports write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecimalMark {
    Point,
    Comma,
}

impl DecimalMark {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "." | "point" => Self::Point,
            "," | "comma" => Self::Comma,
            other => bail!("decimal {other:?} is not one of point, comma"),
        })
    }
}

/// A field separator: one byte, or any run of spaces and tabs (a fixed-width or `ls`-style export).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delimiter {
    Byte(u8),
    Whitespace,
}

impl Delimiter {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "," | "comma" => Self::Byte(b','),
            "\t" | "\\t" | "tab" => Self::Byte(b'\t'),
            ";" | "semicolon" => Self::Byte(b';'),
            "|" | "pipe" => Self::Byte(b'|'),
            "whitespace" | "space" | " " => Self::Whitespace,
            other => bail!("delimiter {other:?} is not one of comma, tab, semicolon, pipe, whitespace"),
        })
    }

    /// The byte csv splits on (whitespace is turned into tabs before csv sees it).
    fn byte(self) -> u8 {
        match self {
            Self::Byte(byte) => byte,
            Self::Whitespace => b'\t',
        }
    }
}

/// Where one of our columns comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// A column of the file, with an optional format (dates) and an inline value map with a default for the values
    /// it does not list.
    Column {
        name: String,
        format: Option<String>,
        map: BTreeMap<String, String>,
        default: Option<String>,
    },
    Value(String),
    RowNumber,
    Template(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    customers: Option<TableFile>,
    events: Option<TableFile>,
}

#[derive(Deserialize)]
struct TableFile {
    #[serde(default)]
    from_events: bool,
    #[serde(default)]
    values: BTreeMap<String, BTreeMap<String, String>>,
    delimiter: Option<String>,
    decimal: Option<String>,
    has_header: Option<bool>,
    columns: Option<Vec<String>>,
    /// Kept as raw values so a typo inside `{ ... }` gets serde's precise "unknown field" message.
    #[serde(flatten)]
    sources: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSpec {
    column: Option<String>,
    format: Option<String>,
    map: Option<BTreeMap<String, String>>,
    default: Option<String>,
    value: Option<String>,
    row_number: Option<bool>,
    template: Option<String>,
}

impl Mapping {
    /// Reads and checks a mapping file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read mapping file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid mapping file {}", path.display()))
    }

    /// Parses and checks mapping TOML.
    pub fn parse(text: &str) -> Result<Self> {
        let file: MappingFile = toml::from_str(text).map_err(|e| anyhow!("{}", e.message()))?;
        let customers_from_events = file.customers.as_ref().is_some_and(|t| t.from_events);
        if file.events.as_ref().is_some_and(|t| t.from_events) {
            bail!("from_events belongs in [customers], not [events]");
        }
        let customers = file.customers.map(|t| TableMapping::build(Table::Customers, t)).transpose()?;
        let events = file.events.map(|t| TableMapping::build(Table::Events, t)).transpose()?;
        if customers_from_events && customers.as_ref().is_some_and(|t| t.sources.is_empty()) {
            bail!("[customers] from_events = true needs the customer columns mapped from the events file");
        }
        Ok(Self { customers, events, customers_from_events })
    }

    /// True when there is no customer file and customers are derived from the events file.
    pub fn customers_from_events(&self) -> bool {
        self.customers_from_events
    }

    fn table(&self, table: Table) -> Option<&TableMapping> {
        match table {
            Table::Customers => self.customers.as_ref(),
            Table::Events => self.events.as_ref(),
        }
    }

    /// The layout of the file `table` is read from: customers derived from events are read from the events file.
    fn layout(&self, table: Table) -> Layout {
        let file_table = if table == Table::Customers && self.customers_from_events { Table::Events } else { table };
        self.table(file_table).map(|t| t.layout.clone()).unwrap_or_default()
    }
}

impl TableMapping {
    fn build(table: Table, file: TableFile) -> Result<Self> {
        let columns = table.columns();
        let mut sources = BTreeMap::new();
        for (target, spec) in file.sources {
            if !columns.contains(&target.as_str()) {
                // `from_events` is read by serde wherever it is; only `[customers]` may say it.
                let keys = LAYOUT_KEYS.iter().filter(|k| table == Table::Customers || **k != "from_events");
                bail!(
                    "[{}] has no column or key {target:?}; expected a column ({}) or a layout key ({})",
                    table.name(),
                    columns.join(", "),
                    keys.copied().collect::<Vec<_>>().join(", ")
                );
            }
            let context = || format!("[{}] {target}", table.name());
            let source = match spec {
                toml::Value::String(name) => Source::Column { name, format: None, map: BTreeMap::new(), default: None },
                toml::Value::Table(spec) => spec
                    .try_into::<SourceSpec>()
                    .map_err(|e| anyhow!("{}", e.message()))
                    .and_then(SourceSpec::into_source)
                    .with_context(context)?,
                other => bail!(
                    "{}: expected \"Column\" or {{ column | value | row_number | template = ... }}, found {}",
                    context(),
                    other.type_str()
                ),
            };
            if let Source::Column { format: Some(format), .. } = &source
                && !DATE_COLUMNS.contains(&target.as_str())
            {
                bail!(
                    "[{}] {target}: format = {format:?} applies only to the date columns ({}); remove the format key",
                    table.name(),
                    DATE_COLUMNS.join(", ")
                );
            }
            // What the mapping itself writes into a row reaches PostgreSQL as it is, and text cannot hold a NUL.
            let written: Vec<&String> = match &source {
                Source::Column { map, default, .. } => map.values().chain(default).collect(),
                Source::Value(text) | Source::Template(text) => vec![text],
                Source::RowNumber => Vec::new(),
            };
            if written.iter().any(|text| text.contains('\0')) {
                bail!("[{}] {target}: a value contains a NUL byte, which PostgreSQL text cannot hold", table.name());
            }
            sources.insert(target, source);
        }
        for required in table.required() {
            if !sources.contains_key(*required) {
                bail!("[{}] does not map the required column {required}", table.name());
            }
        }
        let mut values = BTreeMap::new();
        for (target, map) in file.values {
            if !columns.contains(&target.as_str()) {
                bail!("[{}.values] has no column {target:?}", table.name());
            }
            if map.values().any(|text| text.contains('\0')) {
                bail!(
                    "[{}.values.{target}]: a value contains a NUL byte, which PostgreSQL text cannot hold",
                    table.name()
                );
            }
            values.insert(target, map.into_iter().collect());
        }
        let delimiter = match &file.delimiter {
            Some(name) => Delimiter::parse(name).with_context(|| format!("[{}] delimiter", table.name()))?,
            None => Delimiter::Byte(b','),
        };
        let decimal = match &file.decimal {
            Some(name) => DecimalMark::parse(name).with_context(|| format!("[{}] decimal", table.name()))?,
            None => DecimalMark::Point,
        };
        let columns = match (file.has_header, file.columns) {
            (Some(false), Some(columns)) if !columns.is_empty() => Some(columns),
            (Some(false), _) => bail!("[{}] has_header = false needs columns = [\"name\", ...]", table.name()),
            (_, Some(_)) => bail!(
                "[{}] columns = [...] names the fields of a file without a header: add has_header = false",
                table.name()
            ),
            (_, None) => None,
        };
        Ok(Self { sources, values, layout: Layout { delimiter, columns, decimal } })
    }
}

impl SourceSpec {
    fn into_source(self) -> Result<Source> {
        let source = match (self.column, self.value, self.row_number, self.template) {
            (Some(name), None, None, None) => {
                return Ok(Source::Column {
                    name,
                    format: self.format,
                    map: self.map.unwrap_or_default(),
                    default: self.default,
                });
            }
            (None, Some(value), None, None) => Source::Value(value),
            (None, None, Some(true), None) => Source::RowNumber,
            (None, None, None, Some(template)) => Source::Template(template),
            _ => bail!("give exactly one of column, value, row_number = true, template"),
        };
        if self.format.is_some() || self.map.is_some() || self.default.is_some() {
            bail!("format, map and default only apply to column = ...");
        }
        Ok(source)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------------------------

/// A validated customer row: its key (see [`crate::keys`]), its id as the file has it, and what is known of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Customer {
    pub customer_id: i64,
    pub external_id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub country: Option<String>,
    pub age: Option<i32>,
    pub favorite_color: Option<String>,
    pub signup_date: Option<NaiveDate>,
}

/// A validated event row. Money is in cents; `amount` is the line total (the file's, else price x quantity); a
/// negative `quantity` is a return.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event_id: i64,
    pub customer_id: i64,
    pub event_type: &'static str,
    pub product: Option<String>,
    pub color: Option<String>,
    pub price_cents: Option<i64>,
    pub quantity: i32,
    pub amount_cents: Option<i64>,
    pub ts: DateTime<Utc>,
}

/// A row that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub file: String,
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

/// One row's outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Checked<T> {
    Row(T),
    Rejected(Reject),
}

/// A set of ids: a bitmap for the usual small non-negative ids (1 bit each, so 50M event ids take ~6 MB),
/// and a hash set for the rest.
#[derive(Clone, Debug, Default)]
pub struct IdSet {
    bits: Vec<u64>,
    other: HashSet<i64>,
    len: u64,
}

/// Ids below this go into the bitmap (at most 32 MB).
const BITMAP_LIMIT: i64 = 1 << 28;

impl IdSet {
    /// Adds `id`; false when it was already present.
    pub fn insert(&mut self, id: i64) -> bool {
        let added = if (0..BITMAP_LIMIT).contains(&id) {
            let (word, bit) = ((id / 64) as usize, id % 64);
            if word >= self.bits.len() {
                self.bits.resize((word + 1).next_power_of_two(), 0);
            }
            let was = self.bits[word] & (1 << bit) != 0;
            self.bits[word] |= 1 << bit;
            !was
        } else {
            self.other.insert(id)
        };
        self.len += u64::from(added);
        added
    }

    pub fn contains(&self, id: i64) -> bool {
        if (0..BITMAP_LIMIT).contains(&id) {
            self.bits.get((id / 64) as usize).is_some_and(|word| word & (1 << (id % 64)) != 0)
        } else {
            self.other.contains(&id)
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reading a CSV file through a plan
// ---------------------------------------------------------------------------------------------------------------

/// How one of our columns is read from the current file.
#[derive(Debug)]
enum Getter {
    Column(usize),
    Value(String),
    RowNumber,
    Template(Vec<Piece>),
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Column(usize),
}

/// Per target column: its getter (None = absent optional column), its value map with the default for values it
/// does not list, and its format.
#[derive(Debug)]
struct Field {
    getter: Option<Getter>,
    values: Option<HashMap<String, String>>,
    default: Option<String>,
    format: Option<String>,
    /// The common formats that read a date column's first refused value. Every later refused value is tried
    /// against these alone: trying every common format on each of millions of refused rows would cost more than
    /// the load.
    hint_formats: OnceCell<Vec<String>>,
}

/// A CSV file opened for one of our tables, with each of our columns resolved against its header.
struct CsvInput {
    file: String,
    /// csv buffers the file itself, so the tracker sees each byte once, just before csv parses it.
    reader: csv::Reader<LineTracker<Box<dyn Read>>>,
    record: StringRecord,
    row_number: u64,
    line: u64,
    /// Our table's columns, in registry order.
    table: Table,
    fields: Vec<Field>,
    /// The file's column names (the header, or the mapping's `columns`), to name the column a bad byte is in and
    /// to tell a header line read as data.
    header: StringRecord,
    /// The file has no header row (`has_header = false`): `header` is the mapping's `columns = [...]`.
    headerless: bool,
    decimal: DecimalMark,
    /// Customers derived from an events file: the events' columns of the same rows, to check that a row loads as an
    /// event too.
    event_fields: Option<Vec<Field>>,
}

/// The current record of a [`CsvInput`] read as one of our tables. Its checks use the file's header and decimal
/// mark through `input`, so a row read as an event checks the same whether the events or the customers read it.
struct Row<'a> {
    input: &'a CsvInput,
    table: Table,
    fields: &'a [Field],
}

impl CsvInput {
    /// Opens `path` for `table` and resolves our columns against its header. `events` is given to read the same
    /// rows as events too, through that mapping (`None` within: our own column names).
    fn open(
        path: &Path,
        table: Table,
        mapping: Option<&TableMapping>,
        layout: &Layout,
        events: Option<Option<&TableMapping>>,
    ) -> Result<Self> {
        let file = path.display().to_string();
        let handle = File::open(path).with_context(|| format!("cannot open {file}"))?;
        // A `.gz` export is read as it is; whitespace-separated lines become tab-separated before csv sees them.
        let mut input: Box<dyn Read> = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(handle)))
        } else {
            Box::new(handle)
        };
        if layout.delimiter == Delimiter::Whitespace {
            input = Box::new(WhitespaceToTabs::new(input));
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(layout.columns.is_none())
            .delimiter(layout.delimiter.byte())
            .from_reader(LineTracker::new(input, layout.delimiter.byte()));
        let (header, header_line) = match &layout.columns {
            Some(columns) => (StringRecord::from(columns.clone()), 0),
            None => {
                let header = reader.headers().cloned();
                let tracker = reader.get_mut();
                check_quotes_closed(&file, tracker)?;
                let header = header.map_err(|e| csv_error(&file, e, tracker))?;
                let line = header.position().map_or(1, |p| tracker.line_at(p.byte()));
                (header, line)
            }
        };
        let find = |name: &str| {
            let name = name.trim();
            header
                .iter()
                .position(|h| h.trim() == name)
                .or_else(|| header.iter().position(|h| h.trim().eq_ignore_ascii_case(name)))
        };
        let missing = |column: &str, target: &str| {
            let what = if column == target {
                format!("missing required column {column:?}")
            } else {
                format!("missing column {column:?} (mapped to {target})")
            };
            let place =
                if header_line == 0 { format!("{file}: in columns = [...]") } else { format!("{file}:{header_line}") };
            anyhow!("{place}: {what}{}", header_hint(&header, layout))
        };
        let resolve = |table: Table, mapping: Option<&TableMapping>| -> Result<Vec<Field>> {
            let mut fields = Vec::new();
            for target in table.columns() {
                let required = table.required().contains(&target);
                let source = match mapping {
                    Some(m) => m.sources.get(target).cloned(),
                    None => Some(Source::Column {
                        name: target.to_owned(),
                        format: None,
                        map: BTreeMap::new(),
                        default: None,
                    }),
                };
                let mut values: HashMap<String, String> =
                    mapping.and_then(|m| m.values.get(target)).cloned().unwrap_or_default();
                let mut default = None;
                let (getter, format) = match source {
                    None => (None, None),
                    Some(Source::Column { name, format, map, default: fallback }) => {
                        values.extend(map);
                        default = fallback;
                        match find(&name) {
                            Some(index) => (Some(Getter::Column(index)), format),
                            // Our own format may leave out optional columns; a mapping that names a column means it.
                            None if !required && mapping.is_none() => (None, None),
                            None => return Err(missing(&name, target)),
                        }
                    }
                    Some(Source::Value(value)) => (Some(Getter::Value(value)), None),
                    Some(Source::RowNumber) => (Some(Getter::RowNumber), None),
                    Some(Source::Template(template)) => {
                        let pieces = parse_template(&template)?
                            .into_iter()
                            .map(|piece| match piece {
                                TemplatePiece::Text(text) => Ok(Piece::Text(text)),
                                TemplatePiece::Column(name) => {
                                    find(&name).map(Piece::Column).ok_or_else(|| missing(&name, target))
                                }
                            })
                            .collect::<Result<Vec<_>>>()?;
                        (Some(Getter::Template(pieces)), None)
                    }
                };
                let values = (!values.is_empty()).then_some(values);
                fields.push(Field { getter, values, default, format, hint_formats: OnceCell::new() });
            }
            Ok(fields)
        };
        let fields = resolve(table, mapping)?;
        let event_fields = events.map(|mapping| resolve(Table::Events, mapping)).transpose()?;
        Ok(Self {
            file,
            reader,
            record: StringRecord::new(),
            row_number: 0,
            line: 1,
            table,
            fields,
            headerless: layout.columns.is_some(),
            header,
            decimal: layout.decimal,
            event_fields,
        })
    }

    /// Reads the next record; false at the end of the file. Unreadable input is a whole-file error.
    fn advance(&mut self) -> Result<bool> {
        let read = self.reader.read_record(&mut self.record);
        let tracker = self.reader.get_mut();
        // Checked first: a quote left open swallows the rest of the file into one record, so the field count or
        // the UTF-8 error csv reports for that record would point away from the cause.
        check_quotes_closed(&self.file, tracker)?;
        if !read.map_err(|e| csv_error(&self.file, e, tracker))? {
            return Ok(false);
        }
        self.row_number += 1;
        self.line = self.record.position().map_or(tracker.line(), |p| tracker.line_at(p.byte()));
        Ok(true)
    }

    /// The current record as our table.
    fn row(&self) -> Row<'_> {
        Row { input: self, table: self.table, fields: &self.fields }
    }

    /// The current record as an event, when the file is read for both (customers derived from events).
    fn event_row(&self) -> Option<Row<'_>> {
        self.event_fields.as_deref().map(|fields| Row { input: self, table: Table::Events, fields })
    }

    /// The current row, rejected for `reason`; when it is the first row of a file read without a header and reads
    /// like a header, the reason says so, since every value in it is then wrong for the same cause.
    fn reject(&self, reason: String) -> Reject {
        let reason = if self.row_number == 1 && self.looks_like_header() {
            format!(
                "line {} looks like a header: if the file has one, set has_header = true and remove columns = [...] \
                 in the mapping ({reason})",
                self.line
            )
        } else {
            reason
        };
        Reject { file: self.file.clone(), line: self.line, reason }
    }

    /// True when the file is read without a header row but the current record reads like one: a field is the name
    /// of a column (one of the mapping's `columns` or ours), or, in an events file, no field has a digit, which
    /// its timestamp must have.
    fn looks_like_header(&self) -> bool {
        if !self.headerless {
            return false;
        }
        let fields: Vec<&str> = self.record.iter().map(str::trim).filter(|field| !field.is_empty()).collect();
        let names_a_column = fields.iter().any(|field| {
            self.header.iter().chain(self.table.columns()).any(|name| name.trim().eq_ignore_ascii_case(field))
        });
        let no_digits = !fields.is_empty() && fields.iter().all(|field| !field.bytes().any(|b| b.is_ascii_digit()));
        names_a_column || (self.table == Table::Events && no_digits)
    }
}

impl<'a> Row<'a> {
    /// The value of our column `column` in the record; None when absent or empty.
    fn get(&self, column: &str) -> Option<Cow<'a, str>> {
        let field = self.field(column)?;
        let record = &self.input.record;
        let raw: Cow<'a, str> = match field.getter.as_ref()? {
            Getter::Column(i) => Cow::Borrowed(record.get(*i).unwrap_or("").trim()),
            Getter::Value(value) => Cow::Borrowed(value.as_str()),
            Getter::RowNumber => Cow::Owned(self.input.row_number.to_string()),
            Getter::Template(pieces) => {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => out.push_str(text),
                        Piece::Column(i) => out.push_str(record.get(*i).unwrap_or("").trim()),
                    }
                }
                Cow::Owned(out)
            }
        };
        if raw.is_empty() {
            return None;
        }
        let mapped = match (field.values.as_ref().and_then(|values| values.get(raw.as_ref())), &field.default) {
            (Some(mapped), _) => Cow::Owned(mapped.clone()),
            (None, Some(default)) => Cow::Owned(default.clone()),
            (None, None) => raw,
        };
        (!mapped.is_empty()).then_some(mapped)
    }

    fn format(&self, column: &str) -> Option<&'a str> {
        self.field(column)?.format.as_deref()
    }

    /// The value of free-text column `column`, refused when it is longer than its cap in [`TEXT_MAX_CHARS`].
    fn text(&self, column: &str) -> Result<Option<String>, String> {
        let Some(value) = self.get(column) else { return Ok(None) };
        let cap = TEXT_MAX_CHARS.iter().find(|(name, _)| *name == column).map_or(usize::MAX, |(_, cap)| *cap);
        // A character is at least one byte: the usual short value is not counted character by character.
        if value.len() > cap {
            let chars = value.chars().count();
            if chars > cap {
                return Err(format!("{column} has {chars} characters, more than the {cap} allowed"));
            }
        }
        Ok(Some(value.into_owned()))
    }

    /// Refuses a row with a NUL byte in a field that one of this row's columns is read from: PostgreSQL text cannot
    /// hold one, and COPY would fail the whole load without naming the row. Fields none is read from are never
    /// loaded (as this table), so they may.
    fn check_nul(&self) -> Result<(), String> {
        // One scan of the whole record; the fields are only looked at in the rare row that has one.
        let record = &self.input.record;
        if !record.as_slice().contains('\0') {
            return Ok(());
        }
        let read = self.fields.iter().filter_map(|field| field.getter.as_ref()).flat_map(|getter| match getter {
            Getter::Column(index) => vec![*index],
            Getter::Template(pieces) => pieces
                .iter()
                .filter_map(|piece| match piece {
                    Piece::Column(index) => Some(*index),
                    Piece::Text(_) => None,
                })
                .collect(),
            Getter::Value(_) | Getter::RowNumber => Vec::new(),
        });
        let mut bad = read.filter(|index| record.get(*index).is_some_and(|value| value.contains('\0')));
        match bad.next() {
            Some(index) => Err(self.nul_reason(index)),
            None => Ok(()),
        }
    }

    fn nul_reason(&self, index: usize) -> String {
        let name = self.input.header.get(index).map_or_else(|| (index + 1).to_string(), |name| name.trim().to_owned());
        format!("the value contains a NUL byte in column {name}")
    }

    /// The reason the date or timestamp `text` of `column` is refused: `reason`, and when `text` reads with the
    /// common formats that read the column's first refused value, the format to set.
    fn date_reason(&self, column: &str, text: &str, reason: String) -> String {
        let Some(field) = self.field(column) else { return reason };
        let candidates = field.hint_formats.get_or_init(|| formats_reading(text, common_formats()));
        format!("{reason}{}", format_hint(column, &formats_reading(text, candidates.iter().cloned())))
    }

    /// Our column `column` (a registry name) as read from this file.
    fn field(&self, column: &str) -> Option<&'a Field> {
        let index = self.table.spec().index(column);
        debug_assert!(index.is_some(), "{column} is not a {} column", self.table.name());
        self.fields.get(index?)
    }
}

enum TemplatePiece {
    Text(String),
    Column(String),
}

fn parse_template(template: &str) -> Result<Vec<TemplatePiece>> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(TemplatePiece::Text(rest[..open].to_owned()));
        }
        let close = rest[open..].find('}').ok_or_else(|| anyhow!("template {template:?} has an unclosed {{"))?;
        pieces.push(TemplatePiece::Column(rest[open + 1..open + close].to_owned()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(TemplatePiece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

/// What a header that lacks a column looks like, and the layout it suggests: a one-field header with spaces, tabs,
/// `;` or `|` in it is a file split on something other than the mapping's delimiter.
fn header_hint(header: &StringRecord, layout: &Layout) -> String {
    let fields: Vec<&str> = header.iter().collect();
    let shown = fields.iter().take(8).map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ");
    let found = format!("; the header has {} field{}: {shown}", fields.len(), if fields.len() == 1 { "" } else { "s" });
    let suggestion = match fields.as_slice() {
        [only] if layout.delimiter == Delimiter::Byte(b',') => {
            [('\t', "tab"), (';', "semicolon"), ('|', "pipe"), (' ', "whitespace")]
                .iter()
                .find(|(c, _)| only.contains(*c))
                .map(|(_, name)| format!("; it looks {name}-separated: set delimiter = \"{name}\" in the mapping"))
        }
        _ => None,
    };
    format!("{found}{}", suggestion.unwrap_or_default())
}

/// Turns each run of spaces and tabs into one tab, line by line, so csv can split a whitespace-separated file.
/// Leading and trailing runs go; line ends stay, so line numbers stay true.
struct WhitespaceToTabs<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
    out: Vec<u8>,
    at: usize,
}

impl<R: Read> WhitespaceToTabs<R> {
    fn new(inner: R) -> Self {
        Self { inner: BufReader::new(inner), line: Vec::new(), out: Vec::new(), at: 0 }
    }
}

impl<R: Read> Read for WhitespaceToTabs<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.out.len() {
            self.line.clear();
            if std::io::BufRead::read_until(&mut self.inner, b'\n', &mut self.line)? == 0 {
                return Ok(0);
            }
            let body_end = self.line.iter().rposition(|b| !matches!(b, b'\n' | b'\r')).map_or(0, |i| i + 1);
            let (body, end) = self.line.split_at(body_end);
            self.out.clear();
            self.at = 0;
            for (index, field) in body.split(|b| matches!(b, b' ' | b'\t')).filter(|f| !f.is_empty()).enumerate() {
                if index > 0 {
                    self.out.push(b'\t');
                }
                self.out.extend_from_slice(field);
            }
            self.out.extend_from_slice(end);
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Fails when the file ended inside a quoted field, naming the line where the quote opened.
fn check_quotes_closed(file: &str, tracker: &LineTracker<Box<dyn Read>>) -> Result<()> {
    match tracker.unclosed_quote_line() {
        Some(line) => bail!("{file}:{line}: the quote opened on this line is never closed (unterminated quote)"),
        None => Ok(()),
    }
}

/// One line naming the file and line for a CSV error.
fn csv_error(file: &str, error: csv::Error, tracker: &mut LineTracker<Box<dyn Read>>) -> anyhow::Error {
    let line = error.position().map_or(tracker.line(), |p| tracker.line_at(p.byte()));
    match error.kind() {
        csv::ErrorKind::Utf8 { err, .. } => {
            anyhow!("{file}:{line}: field {} is not valid UTF-8; save the file as UTF-8", err.field() + 1)
        }
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => anyhow!(
            "{file}:{line}: expected {expected_len} fields like the header, found {len} \
             (unterminated quote or stray delimiter?)"
        ),
        csv::ErrorKind::Io(err) => anyhow!("cannot read {file}: {err}"),
        _ => anyhow!("{file}:{line}: {error}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Physical line numbers
// ---------------------------------------------------------------------------------------------------------------

/// The UTF-8 byte order mark, which csv drops from the start of a file.
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// Where the tracker is in csv's grammar (csv-core with the default settings: `,`, `"` doubled to escape,
/// records ended by `\n`, `\r` or `\r\n`, blank lines skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// After a record's end (or at the start of the file): line ends and blank lines, until a record starts.
    BetweenRecords,
    /// In a record, outside quotes.
    Unquoted,
    /// Inside a quoted field, where line breaks and delimiters are data.
    Quoted,
    /// Just after a quote inside a quoted field: the next byte tells an escaped quote from the closing one.
    QuoteInQuoted,
}

/// The byte offset where a record's first byte is, and its physical line.
#[derive(Clone, Copy, Debug)]
struct RecordStart {
    byte: u64,
    line: u64,
}

/// Passes a CSV file's bytes to the csv reader and follows csv's grammar over them just far enough to know the
/// physical line where every record starts, and whether the file ends inside a quoted field.
///
/// Why not `csv::Position::line()`: it is one plus the number of `\n` bytes csv consumed before it began reading
/// the record, and csv consumes the end of a record lazily. After a CRLF line the `\n` is still unread, so every
/// row of a CRLF file is one line too low; blank lines are skipped only when the next record is read, so the row
/// after them is too low by their number; and a bare `\r` is never counted. csv does report the byte offset where
/// it began reading a record, and the record starts at the first byte after it that is not a line end: this
/// tracker records the line of each such byte.
///
/// csv reads ahead by its buffer (8 KiB), so the queue of record starts stays that small; [`Self::line_at`] drops
/// the ones csv has passed. Runs of plain bytes are skipped with `memchr`: only quotes and line ends are looked
/// at. Measured on 2M event rows (release build): csv alone 110 ms, with the tracker 160 ms; parsing and
/// validating them takes about 830 ms (BENCHMARKS.md: 2.4M rows/s), so the tracker adds about 5%.
struct LineTracker<R> {
    inner: R,
    /// Bytes passed to csv so far.
    offset: u64,
    /// The physical line of the next byte.
    line: u64,
    state: Scan,
    /// The last byte of the previous chunk: a quote opens a field only after a delimiter, and a `\n` after a
    /// `\r` ends the same line.
    prev: u8,
    /// The offset of the current record's first byte: a quote there opens a field too.
    record_start: u64,
    starts: VecDeque<RecordStart>,
    /// The line where the current quoted field opened.
    quote_line: u64,
    at_end: bool,
    /// The field separator: a quote right after it opens a field.
    delimiter: u8,
}

impl<R: Read> LineTracker<R> {
    fn new(inner: R, delimiter: u8) -> Self {
        Self {
            delimiter,
            inner,
            offset: 0,
            line: 1,
            state: Scan::BetweenRecords,
            prev: b'\n',
            record_start: 0,
            starts: VecDeque::new(),
            quote_line: 0,
            at_end: false,
        }
    }

    /// The physical line of the record csv began reading at byte offset `byte` (a record's `Position::byte()`).
    /// Forgets the records before it, so it must be asked in file order.
    fn line_at(&mut self, byte: u64) -> u64 {
        while self.starts.front().is_some_and(|start| start.byte < byte) {
            self.starts.pop_front();
        }
        self.starts.front().map_or(self.line, |start| start.line)
    }

    /// The physical line of the next byte to be read.
    fn line(&self) -> u64 {
        self.line
    }

    /// When the whole file has been read and it ended inside a quoted field: the line where that quote opened.
    fn unclosed_quote_line(&self) -> Option<u64> {
        (self.at_end && self.state == Scan::Quoted).then_some(self.quote_line)
    }

    /// Follows `bytes`, the chunk that starts at offset `base`.
    fn scan(&mut self, bytes: &[u8], base: u64) {
        let prev_of = |at: usize, carried: u8| if at == 0 { carried } else { bytes[at - 1] };
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                Scan::BetweenRecords => {
                    let byte = bytes[at];
                    if byte == b'\n' || byte == b'\r' {
                        self.count_line_end(byte, prev_of(at, self.prev));
                        at += 1;
                    } else {
                        self.record_start = base + at as u64;
                        self.starts.push_back(RecordStart { byte: self.record_start, line: self.line });
                        self.state = Scan::Unquoted;
                    }
                }
                Scan::Unquoted => match memchr::memchr3(b'"', b'\n', b'\r', &bytes[at..]) {
                    None => at = bytes.len(),
                    Some(skip) => {
                        let found = at + skip;
                        if bytes[found] == b'"' {
                            // Elsewhere in a field a quote is a plain character, as in csv.
                            if prev_of(found, self.prev) == self.delimiter || base + found as u64 == self.record_start {
                                self.state = Scan::Quoted;
                                self.quote_line = self.line;
                            }
                            at = found + 1;
                        } else {
                            self.state = Scan::BetweenRecords;
                            at = found;
                        }
                    }
                },
                Scan::Quoted => match memchr::memchr3(b'"', b'\n', b'\r', &bytes[at..]) {
                    None => at = bytes.len(),
                    Some(skip) => {
                        let found = at + skip;
                        match bytes[found] {
                            b'"' => self.state = Scan::QuoteInQuoted,
                            byte => self.count_line_end(byte, prev_of(found, self.prev)),
                        }
                        at = found + 1;
                    }
                },
                Scan::QuoteInQuoted => {
                    if bytes[at] == b'"' {
                        self.state = Scan::Quoted;
                        at += 1;
                    } else {
                        // The field is closed; this byte is read as outside quotes.
                        self.state = Scan::Unquoted;
                    }
                }
            }
        }
        if let Some(&last) = bytes.last() {
            self.prev = last;
        }
    }

    /// Counts the line end `byte` (`\n` or `\r`), preceded by `prev`: `\r\n` ends one line.
    fn count_line_end(&mut self, byte: u8, prev: u8) {
        if !(byte == b'\n' && prev == b'\r') {
            self.line += 1;
        }
    }
}

impl<R: Read> Read for LineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        if read == 0 && !buf.is_empty() {
            self.at_end = true;
        }
        let chunk = &buf[..read];
        // csv drops a byte order mark before parsing, so a quote right after it opens the first field.
        let skip = if self.offset == 0 && chunk.starts_with(UTF8_BOM) { UTF8_BOM.len() } else { 0 };
        self.scan(&chunk[skip..], self.offset + skip as u64);
        self.offset += read as u64;
        Ok(read)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Value checks: each returns the reason a value is rejected
// ---------------------------------------------------------------------------------------------------------------

fn required<'a>(value: Option<&'a Cow<'a, str>>, column: &str) -> Result<&'a str, String> {
    value.map(|v| v.as_ref()).ok_or_else(|| format!("{column} is empty"))
}

fn parse_id(value: Option<Cow<'_, str>>, column: &str) -> Result<i64, String> {
    let text = required(value.as_ref(), column)?;
    text.parse().map_err(|_| format!("{column} {text:?} is not an integer"))
}

fn check_email(email: &str) -> Result<(), String> {
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
                && !email.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '<' | '>'))
        }
        None => false,
    };
    if valid { Ok(()) } else { Err(format!("email {email:?} is not an e-mail address")) }
}

fn parse_country(country: &str) -> Result<String, String> {
    let upper = country.to_ascii_uppercase();
    let valid = upper.len() == 2 && ISO_COUNTRIES.split_whitespace().any(|code| code == upper);
    if valid { Ok(upper) } else { Err(format!("country {country:?} is not an ISO 3166-1 alpha-2 code")) }
}

fn parse_date(text: &str, format: Option<&str>, column: &str) -> Result<NaiveDate, String> {
    let format = format.unwrap_or("%Y-%m-%d");
    NaiveDate::parse_from_str(text, format)
        .or_else(|_| NaiveDateTime::parse_from_str(text, format).map(|dt| dt.date()))
        .map_err(|_| format!("{column} {text:?} is not a date ({format})"))
}

fn parse_ts(text: &str, format: Option<&str>) -> Result<DateTime<Utc>, String> {
    let parsed = match format {
        Some(format) => DateTime::parse_from_str(text, format)
            .map(|dt| dt.with_timezone(&Utc))
            .or_else(|_| NaiveDateTime::parse_from_str(text, format).map(|dt| dt.and_utc()))
            .or_else(|_| NaiveDate::parse_from_str(text, format).map(|d| d.and_time(NaiveTime::MIN).and_utc()))
            .ok(),
        None => DateTime::parse_from_rfc3339(text)
            .map(|dt| dt.with_timezone(&Utc))
            .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map(|dt| dt.and_utc()))
            .or_else(|_| NaiveDate::parse_from_str(text, "%Y-%m-%d").map(|d| d.and_time(NaiveTime::MIN).and_utc()))
            .ok(),
    };
    parsed.ok_or_else(|| match format {
        Some(format) => format!("ts {text:?} is not a timestamp ({format})"),
        None => format!("ts {text:?} is not a timestamp (RFC 3339, YYYY-MM-DD HH:MM:SS or YYYY-MM-DD)"),
    })
}

/// Parses a non-negative decimal written with `mark` into cents, rounding half away from zero like PostgreSQL's
/// NUMERIC(12,2).
fn parse_price(text: &str, mark: DecimalMark) -> Result<i64, String> {
    let point = with_decimal_point(text, mark, "price")?;
    parse_point_price(&point, text).map_err(|reason| {
        if mark == DecimalMark::Point && reads_as_comma_decimal(text) {
            format!("{reason}; for a decimal comma set decimal = \"comma\" in the mapping")
        } else {
            reason
        }
    })
}

/// `text` with its decimal comma turned into a point. A point in a decimal-comma file is refused: `1.250` may be
/// 1250 written with a thousands separator or a price written the other way, and guessing could change it a
/// thousandfold.
fn with_decimal_point<'a>(text: &'a str, mark: DecimalMark, column: &str) -> Result<Cow<'a, str>, String> {
    match mark {
        DecimalMark::Point => Ok(Cow::Borrowed(text)),
        DecimalMark::Comma if text.contains('.') => Err(format!(
            "{column} {text:?} is ambiguous with decimal = \"comma\": its point may be a thousands separator or a \
             decimal point"
        )),
        DecimalMark::Comma => Ok(Cow::Owned(text.replace(',', "."))),
    }
}

/// True for `12,50` or `,5`: digits with one comma and at most two digits after it, as a decimal comma is written.
fn reads_as_comma_decimal(text: &str) -> bool {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    text.split_once(',').is_some_and(|(whole, cents)| {
        digits(whole) && digits(cents) && (1..=2).contains(&cents.len()) && !(whole.is_empty() && cents.is_empty())
    })
}

/// Parses a non-negative decimal written with a point into cents (see [`parse_price`]); `shown` is the value as
/// the file wrote it, for the reason.
fn parse_point_price(text: &str, shown: &str) -> Result<i64, String> {
    let invalid = || format!("price {shown:?} is not a non-negative decimal");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let whole = whole.strip_prefix('+').unwrap_or(whole);
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if text.starts_with('-') && (digits(&whole[1..]) && digits(fraction)) {
        return Err(format!("price {shown:?} is negative"));
    }
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(invalid());
    }
    let whole_value: i64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| invalid())? };
    if whole_value >= 10_000_000_000 {
        return Err(format!("price {shown:?} is too large"));
    }
    let fraction = fraction.as_bytes();
    let digit = |i: usize| fraction.get(i).map_or(0, |b| i64::from(b - b'0'));
    let round = i64::from(digit(2) >= 5);
    Ok(whole_value * 100 + digit(0) * 10 + digit(1) + round)
}

/// Parses a line total written with `mark` into cents: a decimal, negative for a return.
fn parse_amount(text: &str, mark: DecimalMark) -> Result<i64, String> {
    let point = with_decimal_point(text, mark, "amount")?;
    let (negative, digits) = match point.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, point.as_ref()),
    };
    let cents = parse_point_price(digits, text).map_err(|_| {
        let hint = if mark == DecimalMark::Point && reads_as_comma_decimal(digits) {
            "; for a decimal comma set decimal = \"comma\" in the mapping"
        } else {
            ""
        };
        format!("amount {text:?} is not a decimal{hint}")
    })?;
    Ok(if negative { -cents } else { cents })
}

/// The formats among `candidates` that read `text` as a date or as a date and time.
fn formats_reading(text: &str, candidates: impl IntoIterator<Item = String>) -> Vec<String> {
    candidates
        .into_iter()
        .filter(|format| {
            NaiveDate::parse_from_str(text, format).is_ok() || NaiveDateTime::parse_from_str(text, format).is_ok()
        })
        .collect()
}

/// [`COMMON_DATE_FORMATS`] alone and followed by a time of day.
fn common_formats() -> impl Iterator<Item = String> {
    COMMON_DATE_FORMATS.iter().flat_map(|date| ["", " %H:%M", " %H:%M:%S"].map(|time| format!("{date}{time}")))
}

/// What to set when a value of `column` reads with `formats`, as `; it reads as %d.%m.%Y: set format =
/// "%d.%m.%Y" for column ts in the mapping`; empty when no format reads it.
fn format_hint(column: &str, formats: &[String]) -> String {
    let set = formats.iter().map(|format| format!("format = {format:?}")).collect::<Vec<_>>().join(" or ");
    match formats {
        [] => String::new(),
        [only] => format!("; it reads as {only}: set {set} for column {column} in the mapping"),
        _ => format!(
            "; it reads day first or month first ({}): set {set} for column {column} in the mapping",
            formats.join(" or ")
        ),
    }
}

fn parse_event_type(text: &str) -> Result<&'static str, String> {
    EVENT_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(text))
        .copied()
        .ok_or_else(|| format!("unknown event_type {text:?} (expected view, add_to_cart or purchase)"))
}

// ---------------------------------------------------------------------------------------------------------------
// Customers
// ---------------------------------------------------------------------------------------------------------------

/// Streams validated customers from a customers file, or derives them from an events file when the mapping
/// says `from_events = true`.
pub struct CustomerReader {
    source: CsvInput,
    /// The keys of the customers accepted so far.
    seen: IdSet,
    keys: CustomerKeys,
    derived: bool,
    /// Derived mode: why a customer id has no valid row yet, reported on its events.
    failed: HashMap<i64, String>,
    /// The first row that gave no customer, with why: the example when a file gives none at all.
    first_failure: Option<Reject>,
}

/// The customers a [`CustomerReader`] accepted, handed to the [`EventReader`], and the keys of their ids.
#[derive(Debug, Default)]
pub struct KnownCustomers {
    ids: IdSet,
    keys: CustomerKeys,
    failed: HashMap<i64, String>,
}

impl KnownCustomers {
    pub fn len(&self) -> u64 {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The keys, with the ones this ingest assigned (to save with the data).
    pub fn keys(&self) -> &CustomerKeys {
        &self.keys
    }
}

impl CustomerReader {
    /// Opens `customers` (or `events` when the mapping derives customers from it) and checks its header. `keys`
    /// are the stored keys of string ids; new ids get new keys.
    pub fn open(customers: &Path, events: &Path, mapping: Option<&Mapping>, keys: CustomerKeys) -> Result<Self> {
        let derived = mapping.is_some_and(Mapping::customers_from_events);
        let path = if derived { events } else { customers };
        let layout = mapping.map(|m| m.layout(Table::Customers)).unwrap_or_default();
        let events_mapping = derived.then(|| mapping.and_then(|m| m.table(Table::Events)));
        let customers_mapping = mapping.and_then(|m| m.table(Table::Customers));
        let source = CsvInput::open(path, Table::Customers, customers_mapping, &layout, events_mapping)?;
        Ok(Self { source, seen: IdSet::default(), keys, derived, failed: HashMap::new(), first_failure: None })
    }

    /// The file rows are read from.
    pub fn file(&self) -> &str {
        &self.source.file
    }

    /// The data rows read so far.
    pub fn rows_read(&self) -> u64 {
        self.source.row_number
    }

    /// The first row that gave no customer (rejected, or in derived mode skipped), and why.
    pub fn first_failure(&self) -> Option<&Reject> {
        self.first_failure.as_ref()
    }

    /// The next accepted or rejected row; `Ok(None)` at the end. In derived mode rows whose customer was already
    /// derived are skipped, and bad rows are not rejected here: their events are rejected with the reason.
    pub fn next_row(&mut self) -> Result<Option<Checked<Customer>>> {
        while self.source.advance()? {
            let id = self.external_id().map(|external| (self.keys.key(&external), external));
            if self.derived {
                let (id, external) = match id {
                    Ok(id) => id,
                    Err(reason) => {
                        self.note_failure(&reason);
                        continue;
                    }
                };
                if self.seen.contains(id) {
                    continue;
                }
                // A customer comes only from a row that loads as an event too, so one whose every row is rejected
                // is not made. The event's own reason is reported on that row; only a customer's reason is kept
                // for its other rows.
                if let Some(Err(reason)) = self.source.event_row().map(|row| parse_event(&row)) {
                    self.note_failure(&reason);
                    continue;
                }
                match self.customer(id, external) {
                    Ok(customer) => {
                        self.seen.insert(id);
                        self.failed.remove(&id);
                        return Ok(Some(Checked::Row(customer)));
                    }
                    Err(reason) => {
                        self.note_failure(&reason);
                        self.failed.entry(id).or_insert(reason);
                    }
                }
                continue;
            }
            // A NUL byte is named as such, also in the id (where it would otherwise be "control characters").
            let checked = self.source.row().check_nul().and(id).and_then(|(id, external)| {
                let customer = self.customer(id, external)?;
                if self.seen.insert(id) {
                    Ok(customer)
                } else {
                    Err(format!("duplicate customer_id {}", customer.external_id))
                }
            });
            return Ok(Some(match checked {
                Ok(customer) => Checked::Row(customer),
                Err(reason) => {
                    self.note_failure(&reason);
                    Checked::Rejected(self.source.reject(reason))
                }
            }));
        }
        Ok(None)
    }

    fn note_failure(&mut self, reason: &str) {
        if self.first_failure.is_none() {
            self.first_failure = Some(self.source.reject(reason.to_owned()));
        }
    }

    /// The current row's customer id as the file has it.
    fn external_id(&self) -> Result<String, String> {
        let external = required(self.source.row().get("customer_id").as_ref(), "customer_id")?.to_owned();
        check_external_id(&external)?;
        Ok(external)
    }

    fn customer(&self, customer_id: i64, external_id: String) -> Result<Customer, String> {
        let s = self.source.row();
        s.check_nul()?;
        let email = s.text("email")?;
        if let Some(email) = &email {
            check_email(email)?;
        }
        let age = match s.get("age") {
            None => None,
            Some(age) => match age.parse::<i32>() {
                Ok(age) if (0..=130).contains(&age) => Some(age),
                _ => return Err(format!("age {age:?} is not an integer between 0 and 130")),
            },
        };
        let signup_date = match s.get("signup_date") {
            None => None,
            Some(date) => Some(
                parse_date(&date, s.format("signup_date"), "signup_date")
                    .map_err(|reason| s.date_reason("signup_date", &date, reason))?,
            ),
        };
        Ok(Customer {
            customer_id,
            external_id,
            first_name: s.text("first_name")?,
            last_name: s.text("last_name")?,
            email,
            country: s.get("country").map(|country| parse_country(&country)).transpose()?,
            age,
            favorite_color: s.text("favorite_color")?,
            signup_date,
        })
    }

    /// The accepted customer ids and their keys, for checking events.
    pub fn into_known(self) -> KnownCustomers {
        KnownCustomers { ids: self.seen, keys: self.keys, failed: self.failed }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------------------------

/// Streams validated events, checking that each belongs to a known customer.
pub struct EventReader {
    source: CsvInput,
    seen: IdSet,
    known: KnownCustomers,
}

impl EventReader {
    /// Opens `events` and checks its header.
    pub fn open(events: &Path, mapping: Option<&Mapping>, known: KnownCustomers) -> Result<Self> {
        let layout = mapping.map(|m| m.layout(Table::Events)).unwrap_or_default();
        let source =
            CsvInput::open(events, Table::Events, mapping.and_then(|m| m.table(Table::Events)), &layout, None)?;
        Ok(Self { source, seen: IdSet::default(), known })
    }

    /// The data rows read so far.
    pub fn rows_read(&self) -> u64 {
        self.source.row_number
    }

    /// The customers and keys the events were checked against.
    pub fn known(&self) -> &KnownCustomers {
        &self.known
    }

    /// The file rows are read from.
    pub fn file(&self) -> &str {
        &self.source.file
    }

    /// The next accepted or rejected row; `Ok(None)` at the end.
    pub fn next_row(&mut self) -> Result<Option<Checked<Event>>> {
        if !self.source.advance()? {
            return Ok(None);
        }
        Ok(Some(match self.event() {
            Ok(event) => Checked::Row(event),
            Err(reason) => Checked::Rejected(self.source.reject(reason)),
        }))
    }

    fn event(&mut self) -> Result<Event, String> {
        let (external, mut event) = parse_event(&self.source.row())?;
        let customer_id = self.known.keys.lookup(&external).filter(|key| self.known.ids.contains(*key));
        let Some(customer_id) = customer_id else {
            let key = self.known.keys.lookup(&external);
            return Err(match key.and_then(|key| self.known.failed.get(&key)) {
                Some(reason) => format!("customer_id {external} has no valid customer row ({reason})"),
                None => format!("unknown customer_id {external}"),
            });
        };
        if !self.seen.insert(event.event_id) {
            return Err(format!("duplicate event_id {}", event.event_id));
        }
        event.customer_id = customer_id;
        Ok(event)
    }
}

/// The current row of an events file as an event, checked as far as the row alone can tell: every value, but not
/// whether its customer is known or its `event_id` repeats an earlier row's. Returns the customer id as the file
/// has it, and the event with `customer_id` 0, for the caller to set to that customer's key.
fn parse_event(s: &Row<'_>) -> Result<(String, Event), String> {
    s.check_nul()?;
    // Without an event id, the row number is one: unique within the file, as ids must be.
    let event_id = match s.get("event_id") {
        Some(_) => parse_id(s.get("event_id"), "event_id")?,
        None => i64::try_from(s.input.row_number).map_err(|_| "too many rows".to_owned())?,
    };
    let external = required(s.get("customer_id").as_ref(), "customer_id")?.to_owned();
    let event_type = parse_event_type(required(s.get("event_type").as_ref(), "event_type")?)?;
    let product = s.text("product")?;
    let color = s.text("color")?;
    let price_cents = s.get("price").map(|price| parse_price(&price, s.input.decimal)).transpose()?;
    let quantity: i32 = match s.get("quantity") {
        None => 1,
        Some(text) => match text.parse() {
            Ok(0) | Err(_) => return Err(format!("quantity {text:?} is not a non-zero integer")),
            Ok(q) => q,
        },
    };
    if quantity < 0 && event_type != "purchase" {
        return Err(format!("negative quantity on a {event_type} event (only a purchase can be returned)"));
    }
    // The line total: the file's own, else price x quantity.
    let amount_cents = match s.get("amount") {
        Some(amount) => Some(parse_amount(&amount, s.input.decimal)?),
        None => price_cents.map(|price| price * i64::from(quantity)),
    };
    let ts_value = s.get("ts");
    let ts_text = required(ts_value.as_ref(), "ts")?;
    let ts = parse_ts(ts_text, s.format("ts")).map_err(|reason| s.date_reason("ts", ts_text, reason))?;
    let event = Event { event_id, customer_id: 0, event_type, product, color, price_cents, quantity, amount_cents, ts };
    Ok((external, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out `data` a few bytes at a time, so records and `\r\n` pairs straddle the tracker's chunks.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            // Then 1 to 7 bytes a read. The first read is larger (the caller's choice) because csv drops a byte
            // order mark only when its first read holds all of it, as a file's first read does.
            self.step = self.step % 7 + 1;
            Ok(n)
        }
    }

    /// The line of the record csv began reading at `byte`, counted naively: skip line ends (and, at the start,
    /// the byte order mark), then count `\n`, `\r\n` and `\r` before that point.
    fn naive_line(data: &[u8], byte: usize) -> u64 {
        let mut start = if byte == 0 && data.starts_with(UTF8_BOM) { UTF8_BOM.len() } else { byte };
        while data.get(start).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            start += 1;
        }
        let text = &data[..start];
        let crlf = text.windows(2).filter(|pair| pair == b"\r\n").count();
        (1 + text.iter().filter(|b| matches!(b, b'\r' | b'\n')).count() - crlf) as u64
    }

    #[test]
    fn line_tracker_numbers_every_record_like_a_naive_count() {
        let alphabet = [b'a', b',', b'"', b'\n', b'\r', b'b', 0xef];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..20_000 {
            let len = (random() % 40) as usize;
            let mut data: Vec<u8> = if case % 5 == 0 { UTF8_BOM.to_vec() } else { Vec::new() };
            data.extend((0..len).map(|_| alphabet[(random() % alphabet.len() as u64) as usize]));
            let tracker = LineTracker::new(Trickle { data: &data, step: 16 }, b',');
            let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(tracker);
            let mut record = csv::ByteRecord::new();
            while reader.read_byte_record(&mut record).unwrap() {
                let byte = record.position().unwrap().byte();
                let shown = String::from_utf8_lossy(&data);
                assert_eq!(reader.get_mut().line_at(byte), naive_line(&data, byte as usize), "{shown:?} at {byte}");
            }
        }
    }

    #[test]
    fn line_tracker_finds_a_quote_left_open_at_the_end() {
        let open = |text: &str| {
            let mut reader = csv::Reader::from_reader(LineTracker::new(text.as_bytes(), b','));
            while reader.records().next().is_some() {}
            reader.get_ref().unclosed_quote_line()
        };
        assert_eq!(open("a,b\r\n1,\"x\r\ny\"\r\n2,\"open\r\n3,z\r\n"), Some(4));
        assert_eq!(open("a,b\n1,\"x\n\"\"y\"\n"), None);
        // A quote inside an unquoted field is a plain character.
        assert_eq!(open("a,b\n1,5\" screen\n2,x\n"), None);
        assert_eq!(open("\u{feff}\"a\nb,c\n"), Some(1));
    }

    #[test]
    fn prices_round_like_numeric_12_2() {
        let point = DecimalMark::Point;
        assert_eq!(parse_price("12.34", point), Ok(1234));
        assert_eq!(parse_price("12.345", point), Ok(1235));
        assert_eq!(parse_price("7", point), Ok(700));
        assert_eq!(parse_price(".5", point), Ok(50));
        assert!(parse_price("-1.00", point).unwrap_err().contains("negative"));
        assert!(parse_price("1,00", point).is_err());
        assert!(parse_price("abc", point).is_err());
        assert!(parse_price("", point).is_err());
    }

    #[test]
    fn id_set_uses_bitmap_and_fallback() {
        let mut set = IdSet::default();
        assert!(set.insert(5));
        assert!(!set.insert(5));
        assert!(set.insert(-3));
        assert!(set.insert(1 << 40));
        assert!(set.contains(5) && set.contains(-3) && set.contains(1 << 40));
        assert!(!set.contains(6) && !set.contains(1 << 41));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn checks_emails_and_countries() {
        assert!(check_email("ann.lee1@example.com").is_ok());
        assert!(check_email("ann.example.com").is_err());
        assert!(check_email("ann@example").is_err());
        assert!(check_email("a b@example.com").is_err());
        assert_eq!(parse_country("pl"), Ok("PL".to_owned()));
        assert!(parse_country("XX").is_err());
        assert!(parse_country("United Kingdom").is_err());
    }

    #[test]
    fn parses_timestamps_with_and_without_format() {
        let expected = "2019-12-09T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(parse_ts("12/9/2019", Some("%m/%d/%Y")), Ok(expected));
        assert_eq!(parse_ts("2019-12-09", None), Ok(expected));
        assert_eq!(parse_ts("2019-12-09T01:00:00+01:00", None), Ok(expected));
        assert!(parse_ts("2019-13-09", None).is_err());
    }

    #[test]
    fn mapping_rejects_unknown_columns_and_missing_required_ones() {
        let error = Mapping::parse("[events]\nbogus = \"X\"").unwrap_err().to_string();
        assert!(error.contains("no column or key \"bogus\""), "{error}");
        let error = Mapping::parse("[events]\nevent_id = \"X\"").unwrap_err().to_string();
        assert!(error.contains("required column customer_id"), "{error}");
        let error = Mapping::parse("[events]\nevent_id = { value = \"1\", row_number = true }").unwrap_err();
        assert!(format!("{error:#}").contains("exactly one"), "{error:#}");
        let error = Mapping::parse("[events]\nevent_id = { colum = \"Id\" }").unwrap_err();
        assert!(format!("{error:#}").contains("unknown field `colum`"), "{error:#}");
        let error = Mapping::parse("[events]\nevent_id = 3").unwrap_err();
        assert!(format!("{error:#}").contains("[events] event_id: expected"), "{error:#}");
    }

    #[test]
    fn an_unknown_key_lists_the_columns_and_the_layout_keys() {
        let error = Mapping::parse("[events]\ndelimeter = \"tab\"").unwrap_err().to_string();
        assert!(error.starts_with("[events] has no column or key \"delimeter\"; expected a column ("), "{error}");
        assert!(error.ends_with(") or a layout key (delimiter, decimal, has_header, columns, values)"), "{error}");
        assert!(error.contains("a column (event_id, customer_id, event_type, product, color, price"), "{error}");
        let error = Mapping::parse("[customers]\ncustomer_id = \"id\"\nfrom_event = true").unwrap_err().to_string();
        assert!(error.ends_with("(delimiter, decimal, has_header, columns, values, from_events)"), "{error}");
    }

    #[test]
    fn a_nul_byte_the_mapping_would_write_is_a_mapping_error() {
        let mapping = "[events]\ncustomer_id = \"c\"\nevent_type = \"e\"\nts = \"t\"\n";
        let error = Mapping::parse(&format!("{mapping}product = {{ value = \"a\\u0000b\" }}")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "[events] product: a value contains a NUL byte, which PostgreSQL text cannot hold"
        );
        let error = Mapping::parse(&format!("{mapping}[events.values.color]\nRed = \"r\\u0000\"")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "[events.values.color]: a value contains a NUL byte, which PostgreSQL text cannot hold"
        );
        assert!(Mapping::parse(&format!("{mapping}color = {{ column = \"c\", default = \"\\u0000\" }}")).is_err());
    }

    #[test]
    fn format_is_a_mapping_error_on_a_column_that_is_not_a_date() {
        let mapping = "[events]\ncustomer_id = \"c\"\nevent_type = \"e\"\nts = \"t\"\n";
        let error = Mapping::parse(&format!("{mapping}price = {{ column = \"p\", format = \"%.2f\" }}")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "[events] price: format = \"%.2f\" applies only to the date columns (ts, signup_date); remove the format key"
        );
        assert!(
            Mapping::parse(&format!(
                "{mapping}[customers]\ncustomer_id = \"c\"\nsignup_date = {{ column = \"s\", format = \"%d.%m.%Y\" }}"
            ))
            .is_ok()
        );
    }

    #[test]
    fn decimal_comma_reads_12_50_and_refuses_a_point() {
        let mapping = "[events]\ncustomer_id = \"c\"\nevent_type = \"e\"\nts = \"t\"\ndecimal = \"comma\"";
        assert_eq!(Mapping::parse(mapping).unwrap().layout(Table::Events).decimal, DecimalMark::Comma);
        let error = Mapping::parse(&mapping.replace("\"comma\"", "\"dot\"")).unwrap_err();
        assert_eq!(format!("{error:#}"), "[events] decimal: decimal \"dot\" is not one of point, comma");
        let comma = DecimalMark::Comma;
        assert_eq!(parse_price("12,50", comma), Ok(1250));
        assert_eq!(parse_price("7", comma), Ok(700));
        assert_eq!(parse_price(",5", comma), Ok(50));
        assert_eq!(parse_amount("-12,5", comma), Ok(-1250));
        let ambiguous = parse_price("1.250", comma).unwrap_err();
        assert!(ambiguous.starts_with("price \"1.250\" is ambiguous with decimal = \"comma\""), "{ambiguous}");
        assert!(parse_amount("1.234,50", comma).unwrap_err().contains("ambiguous"));
        assert_eq!(parse_price("1,2,3", comma), Err("price \"1,2,3\" is not a non-negative decimal".to_owned()));
        assert_eq!(parse_price("-1,00", comma), Err("price \"-1,00\" is negative".to_owned()));
        // Without the key, a decimal comma is refused with the key to set.
        assert_eq!(
            parse_price("12,50", DecimalMark::Point),
            Err("price \"12,50\" is not a non-negative decimal; for a decimal comma set decimal = \"comma\" in the \
                 mapping"
                .to_owned())
        );
        assert!(
            parse_amount("-12,50", DecimalMark::Point).unwrap_err().ends_with("set decimal = \"comma\" in the mapping")
        );
    }

    #[test]
    fn a_date_in_a_common_format_names_the_format_to_set() {
        let hint = |text: &str| format_hint("ts", &formats_reading(text, common_formats()));
        assert_eq!(
            hint("31.12.2024"),
            "; it reads as %d.%m.%Y: set format = \"%d.%m.%Y\" for column ts in the mapping"
        );
        assert_eq!(
            hint("31.12.2024 10:30"),
            "; it reads as %d.%m.%Y %H:%M: set format = \"%d.%m.%Y %H:%M\" for column ts in the mapping"
        );
        assert!(hint("20241231").contains("set format = \"%Y%m%d\""));
        assert!(hint("12/31/2024 10:30:00").contains("set format = \"%m/%d/%Y %H:%M:%S\" for column ts"));
        assert!(hint("2024/12/31").contains("set format = \"%Y/%m/%d\""));
        assert!(hint("31-12-2024").contains("set format = \"%d-%m-%Y\""));
        assert_eq!(
            hint("05/06/2024"),
            "; it reads day first or month first (%d/%m/%Y or %m/%d/%Y): set format = \"%d/%m/%Y\" or format = \
             \"%m/%d/%Y\" for column ts in the mapping"
        );
        assert_eq!(hint("yesterday"), "");
        assert_eq!(hint("31.13.2024"), "");
    }
}
