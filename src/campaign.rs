//! Campaign files: the whole membership of an audience written as CSV, JSON or JSON lines, with each member's
//! next-best action, an optional seeded A/B holdout and masked personal data.
//!
//! A file is written to a temporary file beside the target and renamed over it only when complete, so an export
//! that fails or is interrupted leaves no half file under the target name (the temporary file is removed when the
//! writer is dropped). Only a regular file is replaced, keeping its mode (a new file gets 0644); a symbolic link to
//! one is written through; a directory, FIFO, device or socket, and a read-only file, are refused before any
//! query runs ([`replaceable_target`]). The holdout group of a customer depends only on its file id, the seed and the percentage,
//! so re-running an export, or exporting after a re-ingest, keeps every customer in the same group.

use std::collections::BTreeMap;
use std::fs::Permissions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use audience_tools::audience::actions::{ActionTable, RULE_COLUMN, rule_column};
use audience_tools::audience::export::{Members, for_each_member};
use audience_tools::stores::Stores;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::exit::{self, FailureExt, FailureKind};

/// A file format of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Json,
    Jsonl,
}

impl Format {
    /// The format a file name's extension says.
    pub fn from_path(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(Self::Csv),
            Some("json") => Ok(Self::Json),
            Some("jsonl" | "ndjson") => Ok(Self::Jsonl),
            _ => bail!("cannot tell the format of {}: name it .csv, .json or .jsonl, or pass --format", path.display()),
        }
    }
}

/// A seeded split into treatment and control.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Holdout {
    /// The share of the audience held out as control, in percent (0 < percent < 100).
    pub percent: f64,
    pub seed: u64,
}

/// Buckets of the holdout hash: percentages with up to four decimals split exactly.
const BUCKETS: u64 = 1_000_000;

impl Holdout {
    pub fn new(percent: f64, seed: u64) -> Result<Self> {
        if !(percent > 0.0 && percent < 100.0) {
            bail!("--holdout takes a percentage between 0 and 100 (exclusive), e.g. 10");
        }
        Ok(Self { percent, seed })
    }

    /// `control` or `treatment`: from the SHA-256 of the seed and the file id, nothing else.
    pub fn group(&self, external_id: &str) -> &'static str {
        let mut hash = Sha256::new();
        hash.update(self.seed.to_be_bytes());
        hash.update(external_id.as_bytes());
        let digest = hash.finalize();
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        let bucket = u64::from_be_bytes(head) % BUCKETS;
        if (bucket as f64) < self.percent / 100.0 * BUCKETS as f64 { "control" } else { "treatment" }
    }
}

/// What to write and how.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub path: PathBuf,
    pub format: Format,
    /// Profile fields, from the export allow-list, led by `external_id`.
    pub fields: Vec<&'static str>,
    pub holdout: Option<Holdout>,
    /// Leave names out and write the e-mail as `email_sha256` (the SHA-256 of the trimmed, lower-cased address, the
    /// form ad platforms match on).
    pub mask_pii: bool,
    /// The next-best action rules that fill the `action` column.
    pub actions: ActionTable,
}

/// The column that carries each member's next-best action, after the profile fields.
pub const ACTION_COLUMN: &str = "action";

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExportSummary {
    pub path: PathBuf,
    pub format: Format,
    pub columns: Vec<String>,
    pub members: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout: Option<HoldoutSummary>,
}

/// The group sizes of a holdout, and how alike the groups are.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HoldoutSummary {
    pub percent: f64,
    pub seed: u64,
    pub treatment: u64,
    pub control: u64,
    pub balance: Vec<Balance>,
}

/// One dimension's shares in each group, and the largest gap between them in percentage points.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Balance {
    pub dimension: String,
    pub max_gap_points: f64,
    /// `(value, treatment share, control share)`, largest first.
    pub shares: Vec<(String, f64, f64)>,
}

/// The columns the file gets for `fields`: the holdout `group` after the id, masked names left out, the `action`
/// last.
pub fn columns(options: &ExportOptions) -> Vec<String> {
    let mut columns = Vec::new();
    for field in &options.fields {
        match *field {
            "first_name" | "last_name" if options.mask_pii => {}
            "email" if options.mask_pii => columns.push("email_sha256".to_owned()),
            field => columns.push(field.to_owned()),
        }
        if *field == "external_id" && options.holdout.is_some() {
            columns.push("group".to_owned());
        }
    }
    columns.push(ACTION_COLUMN.to_owned());
    columns
}

/// A masked e-mail: the SHA-256 of the trimmed, lower-cased address, the form ad platforms match on.
pub fn email_sha256(email: &str) -> String {
    hex::encode(Sha256::digest(email.trim().to_lowercase().as_bytes()))
}

/// The dimensions a holdout's balance is checked on.
const BALANCE_DIMENSIONS: [&str; 2] = ["country", "segment"];

/// Writes every member of `members` as `options` say; see the module comment for the guarantees. A file that
/// cannot be written is an I/O failure (exit 1); a definition the tools refuse, or a store that fails, has the
/// exit kind of any tool failure ([`exit::tool_failure`]).
pub async fn export(stores: &Stores, members: Members<'_>, options: &ExportOptions) -> Result<ExportSummary> {
    let columns = columns(options);
    let mut file = ExportFile::create(&options.path, options.format, columns.clone()).kind(FailureKind::Input)?;
    // Country and segment are read even when not written: the holdout's balance is checked on them.
    let mut query_fields = options.fields.clone();
    for dimension in BALANCE_DIMENSIONS {
        if options.holdout.is_some() && !query_fields.contains(&dimension) {
            query_fields.push(dimension);
        }
    }
    // counts[group][dimension][value]
    let mut counts: BTreeMap<&'static str, BTreeMap<&'static str, BTreeMap<String, u64>>> = BTreeMap::new();
    let rules = rule_column(stores, &options.actions).await.map_err(exit::tool_failure)?;
    let written = for_each_member(stores, members, &query_fields, &[rules], |mut record| {
        let assigned = options.actions.assigned(record.remove(RULE_COLUMN).as_ref());
        let (action, _) = options.actions.describe(assigned);
        record.insert(ACTION_COLUMN.to_owned(), Value::String(action.to_owned()));
        let id = record.get("external_id").and_then(Value::as_str).unwrap_or_default().to_owned();
        if let Some(holdout) = &options.holdout {
            let group = holdout.group(&id);
            let dimensions = counts.entry(group).or_default();
            for dimension in BALANCE_DIMENSIONS {
                let value = match record.get(dimension) {
                    Some(Value::String(text)) => text.clone(),
                    _ => "unknown".to_owned(),
                };
                *dimensions.entry(dimension).or_default().entry(value).or_default() += 1;
            }
            record.insert("group".to_owned(), Value::String(group.to_owned()));
        }
        if options.mask_pii {
            let email = record.remove("email");
            if let Some(Value::String(email)) = email {
                record.insert("email_sha256".to_owned(), Value::String(email_sha256(&email)));
            }
        }
        file.write(&record).kind(FailureKind::Input)
    })
    .await
    .map_err(exit::tool_failure)?;
    file.finish().kind(FailureKind::Input)?;
    let holdout = options.holdout.map(|holdout| {
        let size = |group: &str| -> u64 {
            counts.get(group).and_then(|d| d.get("country")).map_or(0, |values| values.values().sum())
        };
        let (treatment, control) = (size("treatment"), size("control"));
        let balance = BALANCE_DIMENSIONS
            .iter()
            .map(|dimension| {
                let shares_of = |group: &str, total: u64| -> BTreeMap<String, f64> {
                    counts
                        .get(group)
                        .and_then(|d| d.get(dimension))
                        .map(|values| {
                            values.iter().map(|(value, n)| (value.clone(), *n as f64 / total.max(1) as f64)).collect()
                        })
                        .unwrap_or_default()
                };
                let (t, c) = (shares_of("treatment", treatment), shares_of("control", control));
                let mut values: Vec<&String> = t.keys().chain(c.keys()).collect();
                values.sort();
                values.dedup();
                let mut shares: Vec<(String, f64, f64)> = values
                    .into_iter()
                    .map(|v| (v.clone(), *t.get(v).unwrap_or(&0.0), *c.get(v).unwrap_or(&0.0)))
                    .collect();
                shares.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let gap = shares.iter().map(|(_, t, c)| (t - c).abs() * 100.0).fold(0.0, f64::max);
                Balance { dimension: (*dimension).to_owned(), max_gap_points: (gap * 100.0).round() / 100.0, shares }
            })
            .collect();
        HoldoutSummary { percent: holdout.percent, seed: holdout.seed, treatment, control, balance }
    });
    Ok(ExportSummary { path: options.path.clone(), format: options.format, columns, members: written, holdout })
}

/// A file being written: a temporary file in the target's directory until [`ExportFile::finish`] renames it into
/// place. Dropped unfinished (an error, a cancelled export), it removes the temporary file and leaves the target
/// as it was.
pub struct ExportFile {
    out: BufWriter<tempfile::NamedTempFile>,
    /// The regular file the export replaces or creates (a symbolic link resolved).
    path: PathBuf,
    /// The mode the finished file gets: the replaced file's, or [`NEW_FILE_MODE`].
    mode: u32,
    format: Format,
    columns: Vec<String>,
    rows: u64,
}

impl ExportFile {
    pub fn create(path: &Path, format: Format, columns: Vec<String>) -> Result<Self> {
        let (target, mode) = replaceable_target(path)?;
        let directory = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".audience-export-")
            .tempfile_in(&directory)
            .with_context(|| format!("cannot write in {}", directory.display()))?;
        let mut file = Self { out: BufWriter::new(temp), path: target, mode, format, columns, rows: 0 };
        match format {
            Format::Csv => {
                let header = csv_line(file.columns.iter().map(String::as_str))?;
                file.out.write_all(&header)?;
            }
            Format::Json => file.out.write_all(b"[")?,
            Format::Jsonl => {}
        }
        Ok(file)
    }

    /// Appends one member: a CSV row of the columns, or the record as a JSON object.
    pub fn write(&mut self, record: &Map<String, Value>) -> Result<()> {
        match self.format {
            Format::Csv => {
                let cells: Vec<String> = self.columns.iter().map(|column| csv_cell(record.get(column))).collect();
                let line = csv_line(cells.iter().map(String::as_str))?;
                self.out.write_all(&line)?;
            }
            Format::Json | Format::Jsonl => {
                let ordered: Map<String, Value> = self
                    .columns
                    .iter()
                    .map(|column| (column.clone(), record.get(column).cloned().unwrap_or(Value::Null)))
                    .collect();
                if self.format == Format::Json {
                    self.out.write_all(if self.rows == 0 { b"\n" } else { b",\n" })?;
                }
                serde_json::to_writer(&mut self.out, &ordered)?;
                if self.format == Format::Jsonl {
                    self.out.write_all(b"\n")?;
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Completes the file and renames it over the target; returns the rows written.
    pub fn finish(mut self) -> Result<u64> {
        if self.format == Format::Json {
            self.out.write_all(if self.rows == 0 { b"]\n" } else { b"\n]\n" })?;
        }
        let temp = self.out.into_inner().map_err(|e| e.into_error())?;
        temp.as_file().set_permissions(Permissions::from_mode(self.mode))?;
        temp.as_file().sync_all()?;
        temp.persist(&self.path).with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(self.rows)
    }
}

/// The mode of a file an export creates: the owner writes, everyone reads, as a file written by any editor.
const NEW_FILE_MODE: u32 = 0o644;

/// The file an export may write for `path`, and the mode it gets. Renaming over a directory, FIFO, device or socket
/// would replace it by a file (or fail half-way); a read-only file says it is not to be changed. A symbolic link is
/// followed, so the link stays and the file it names gets the export.
fn replaceable_target(path: &Path) -> Result<(PathBuf, u32)> {
    let link = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((path.to_path_buf(), NEW_FILE_MODE)),
        Err(error) => return Err(error).with_context(|| format!("cannot inspect {}", path.display())),
    };
    let (target, metadata) = if link.file_type().is_symlink() {
        let target = std::fs::canonicalize(path)
            .with_context(|| format!("{} is a symbolic link to a file that does not exist", path.display()))?;
        let metadata = std::fs::metadata(&target).with_context(|| format!("cannot inspect {}", target.display()))?;
        (target, metadata)
    } else {
        (path.to_path_buf(), link)
    };
    let file_type = metadata.file_type();
    let what = if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "a device"
    } else if file_type.is_socket() {
        "a socket"
    } else if metadata.permissions().readonly() {
        "a read-only file"
    } else {
        return Ok((target, metadata.permissions().mode() & 0o7777));
    };
    let named = if target == path { String::new() } else { format!(" (the link names {})", target.display()) };
    bail!("will not replace {}{named}: it is {what}; export to a regular file", path.display())
}

fn csv_line<'a>(cells: impl IntoIterator<Item = &'a str>) -> Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(cells)?;
    writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}

fn csv_cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        // Lists (interests) as one cell, `;`-separated, so spreadsheets keep one row per customer.
        Some(Value::Array(items)) => items.iter().map(|item| csv_cell(Some(item))).collect::<Vec<_>>().join(";"),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_keep_lists_in_one_cell() {
        use serde_json::json;
        assert_eq!(csv_cell(Some(&json!(["hiking", "tea"]))), "hiking;tea");
        assert_eq!(csv_cell(Some(&json!("Ann, B"))), "Ann, B");
        assert_eq!(csv_cell(Some(&json!(12.5))), "12.5");
        assert_eq!(csv_cell(None), "");
    }

    #[test]
    fn holdout_groups_depend_on_id_seed_and_percent_only() {
        let holdout = Holdout::new(10.0, 7).unwrap();
        let control = (0..10_000).filter(|i| holdout.group(&format!("c{i}")) == "control").count();
        assert!((900..=1100).contains(&control), "{control}");
        assert_eq!(holdout.group("c42"), Holdout::new(10.0, 7).unwrap().group("c42"));
        let other_seed = Holdout::new(10.0, 8).unwrap();
        assert!((0..1000).any(|i| holdout.group(&format!("c{i}")) != other_seed.group(&format!("c{i}"))));
        assert!(Holdout::new(0.0, 1).is_err() && Holdout::new(100.0, 1).is_err());
    }

    #[test]
    fn an_unfinished_file_leaves_nothing_under_the_target_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        std::fs::write(&path, "the previous export\n").unwrap();
        let mut file = ExportFile::create(&path, Format::Csv, vec!["external_id".into()]).unwrap();
        let record: Map<String, Value> = [("external_id".to_owned(), Value::from("a"))].into_iter().collect();
        file.write(&record).unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the previous export\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file was left behind");
        let mut file = ExportFile::create(&path, Format::Json, vec!["external_id".into()]).unwrap();
        file.write(&record).unwrap();
        assert_eq!(file.finish().unwrap(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[\n{\"external_id\":\"a\"}\n]\n");
    }

    fn export_one(path: &Path) -> Result<u64> {
        let record: Map<String, Value> = [("external_id".to_owned(), Value::from("a"))].into_iter().collect();
        let mut file = ExportFile::create(path, Format::Csv, vec!["external_id".into()])?;
        file.write(&record)?;
        file.finish()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Regression (issue 22, item 10): a FIFO, a device, a symbolic link or a read-only file was replaced by a
    /// regular file of mode 0600 (as root, `--out /dev/null` would have deleted the device node).
    #[test]
    fn only_a_regular_file_is_replaced_and_it_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.csv");
        export_one(&new).unwrap();
        assert_eq!(mode(&new), 0o644, "a new file is readable by everyone, as an editor writes it");

        let kept = dir.path().join("kept.csv");
        std::fs::write(&kept, "old\n").unwrap();
        std::fs::set_permissions(&kept, Permissions::from_mode(0o640)).unwrap();
        export_one(&kept).unwrap();
        assert_eq!((mode(&kept), std::fs::read_to_string(&kept).unwrap()), (0o640, "external_id\na\n".to_owned()));

        // A link to a regular file is written through: the link stays, the file it names gets the export.
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&new, &link).unwrap();
        std::fs::write(&new, "old\n").unwrap();
        export_one(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&new).unwrap(), "external_id\na\n");

        let fifo = dir.path().join("fifo.csv");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let read_only = dir.path().join("read_only.csv");
        std::fs::write(&read_only, "keep me\n").unwrap();
        std::fs::set_permissions(&read_only, Permissions::from_mode(0o444)).unwrap();
        // A link to a device: the device itself is never the test's target.
        let device = dir.path().join("device.csv");
        std::os::unix::fs::symlink("/dev/null", &device).unwrap();
        let directory = dir.path().join("directory.csv");
        std::fs::create_dir(&directory).unwrap();
        for (path, what) in
            [(&fifo, "a FIFO"), (&read_only, "a read-only file"), (&device, "a device"), (&directory, "a directory")]
        {
            let error = format!("{:#}", export_one(path).unwrap_err());
            assert!(error.contains("will not replace") && error.contains(what), "{}: {error}", path.display());
        }
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(std::fs::read_to_string(&read_only).unwrap(), "keep me\n");
        assert_eq!(std::fs::read_link(&device).unwrap(), Path::new("/dev/null"));
        assert!(std::fs::symlink_metadata("/dev/null").unwrap().file_type().is_char_device());
        assert!(directory.is_dir());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 7, "no temporary file left behind: {names:?}");
    }
}
