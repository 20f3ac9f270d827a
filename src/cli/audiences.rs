//! Acting on audiences: `save`, `list`, `show`, `rm`, `overlap`, `export` and `lookalike`, as commands and as the
//! REPL's slash commands (the same argument syntax, parsed by clap). Saved audiences are written here, on the
//! owner's connection, and by `segments --save` (each segment frozen), nowhere else.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use audience::campaign::{self, ExportOptions, Format, Holdout};
use audience::exit::{Failure, FailureExt, FailureKind, tool_failure};
use audience_tools::audience::actions::ActionTable;
use audience_tools::audience::export::{Members, checked_export_fields, count_members, member_ids};
use audience_tools::audience::lookalike::{LookalikeArgs, find_lookalikes, spread_line};
use audience_tools::audience::report::evaluate;
use audience_tools::audience::saved::{SavedAudience, SavedAudiences, SavedError};
use audience_tools::audience::{AudienceDefinition, AudienceReport, AudienceSession};
use audience_tools::stores::Stores;
use audience_tools::trace::ToolTrace;
use clap::{Args, Parser};
use comfy_table::Table;
use serde_json::json;

use crate::cli::tool_command::read_definition;
use audience::outln;
use audience::render::{audience_summary, breakdown_line, member_table};
use audience::terminal;

/// The file in the data directory holding the audience of the last answer (`ask` or `chat`): what `audience save`
/// saves when no `--from` is given.
pub const CURRENT_AUDIENCE_FILE: &str = "current_audience.json";

#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
pub struct SaveArgs {
    /// The name to save under (letters, digits, '-' and '_').
    pub name: String,
    /// Save this definition file instead of the last answer's audience.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Also keep the member list as it is now: exports and lookalikes then use exactly these members.
    #[arg(long)]
    pub freeze: bool,
    /// Save over an audience of the same name.
    #[arg(long)]
    pub replace: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
pub struct NameArgs {
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
pub struct OverlapArgs {
    pub a: String,
    pub b: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
pub struct ExportArgs {
    /// The saved audience to export (or --from FILE; in the REPL, neither for the current audience).
    pub name: Option<String>,
    /// Export this definition file instead of a saved audience.
    #[arg(long, value_name = "FILE", conflicts_with = "name")]
    pub from: Option<PathBuf>,
    /// The file to write (replaced only when the export is complete).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// csv, json or jsonl (default: from the file name).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Profile fields to write, comma-separated (default: all); external_id always comes first.
    #[arg(long, value_delimiter = ',')]
    pub fields: Vec<String>,
    /// Hold out this percentage as a control group (a `group` column: treatment or control).
    #[arg(long, value_name = "PCT")]
    pub holdout: Option<f64>,
    /// The holdout's seed: the same seed keeps every customer in the same group.
    #[arg(long, requires = "holdout", default_value_t = 1)]
    pub seed: u64,
    /// Leave names out and write e-mails as SHA-256 hashes (email_sha256).
    #[arg(long)]
    pub mask_pii: bool,
    /// The next-best action rules for the `action` column (default: prompts/actions.toml).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
pub struct LookalikeCommandArgs {
    /// The saved audience to grow (or --ids, or, in the REPL, neither for the current audience).
    pub name: Option<String>,
    /// Seed customers by id, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "name")]
    pub ids: Vec<String>,
    /// Only lookalikes this definition file selects (e.g. only in DE, not churned).
    #[arg(long, value_name = "FILE")]
    pub within: Option<PathBuf>,
    /// How many lookalikes.
    #[arg(long, short, default_value_t = 50)]
    pub k: usize,
    #[arg(long)]
    pub json: bool,
}

/// Records `report` as the current audience of the data directory, for a later `audience save NAME`.
pub fn remember_current(data_dir: &Path, report: &AudienceReport) {
    let path = data_dir.join(CURRENT_AUDIENCE_FILE);
    let written = serde_json::to_vec_pretty(&json!({"definition": report.definition}))
        .map_err(anyhow::Error::from)
        .and_then(|bytes| {
            let mut temp = tempfile::NamedTempFile::new_in(data_dir)?;
            std::io::Write::write_all(&mut temp, &bytes)?;
            temp.persist(&path)?;
            Ok(())
        });
    if let Err(error) = written {
        tracing::warn!("cannot record the current audience in {}: {error:#}", path.display());
    }
}

/// A saved-audience error with its exit kind: a bad or unknown name and `--replace` are the user's (2).
fn kind(error: SavedError) -> anyhow::Error {
    match error {
        SavedError::Store(error) => error.context(Failure(FailureKind::Store)),
        other => anyhow!("{other}").context(Failure(FailureKind::Usage)),
    }
}

async fn report_of(stores: &Stores, definition: &AudienceDefinition) -> Result<AudienceReport> {
    evaluate(stores, definition, &[], &mut ToolTrace::new("audience")).await.map_err(tool_failure)
}

/// The members of a saved audience: the frozen list, or its definition evaluated now.
async fn members_of(saved: &SavedAudiences, audience: &SavedAudience) -> Result<Option<Vec<String>>> {
    if audience.frozen { Ok(Some(saved.frozen_members(&audience.name).await.map_err(kind)?)) } else { Ok(None) }
}

fn members<'a>(audience: &'a SavedAudience, frozen: &'a Option<Vec<String>>) -> Members<'a> {
    match frozen {
        Some(ids) => Members::Frozen(ids),
        None => Members::Definition(&audience.definition),
    }
}

/// `audience save`: from `--from`, else the session's current definition, else the data directory's last answer.
pub async fn save(stores: &Stores, args: SaveArgs, session: Option<&AudienceSession>, data_dir: &Path) -> Result<()> {
    let definition = match (&args.from, session.and_then(AudienceSession::current)) {
        (Some(path), _) => read_definition(path)?,
        (None, Some(current)) => current,
        (None, None) => {
            let path = data_dir.join(CURRENT_AUDIENCE_FILE);
            if !path.exists() {
                return Err(anyhow!("no audience to save: ask a question that finds customers, or pass --from FILE"))
                    .kind(FailureKind::Usage);
            }
            read_definition(&path)?
        }
    };
    let saved_audiences = SavedAudiences::new(&stores.db).map_err(kind)?;
    let report = report_of(stores, &definition).await?;
    let saved = saved_audiences.save(stores, &args.name, &report, args.freeze, args.replace).await.map_err(kind)?;
    if args.json {
        outln!("{}", terminal::safe_json(&saved)?)?;
    } else {
        let frozen = if saved.frozen { " (members frozen)" } else { "" };
        outln!("saved {}: {} members{frozen}: {}", saved.name, saved.size, terminal::safe(&saved.explanation))?;
    }
    Ok(())
}

/// `audience list`: each saved audience with its size then and now.
pub async fn list(stores: &Stores, args: ListArgs) -> Result<()> {
    let saved = SavedAudiences::new(&stores.db).map_err(kind)?;
    let mut rows = Vec::new();
    for audience in saved.list().await.map_err(kind)? {
        let frozen = members_of(&saved, &audience).await?;
        let now = count_members(stores, members(&audience, &frozen)).await.map_err(tool_failure)?;
        rows.push((audience, now));
    }
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(a, now)| {
                json!({"name": a.name, "size_then": a.size, "size_now": now, "saved_at": a.saved_at,
                       "frozen": a.frozen, "data_version": a.data_version, "explanation": a.explanation})
            })
            .collect();
        outln!("{}", terminal::safe_json(&list)?)?;
        return Ok(());
    }
    if rows.is_empty() {
        outln!("no saved audiences yet: `audience save NAME` saves the last answer's audience.")?;
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(["name", "size then", "size now", "saved", "frozen", "definition"]);
    for (a, now) in &rows {
        table.add_row(vec![
            terminal::safe(&a.name).to_string(),
            a.size.to_string(),
            now.to_string(),
            a.saved_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            if a.frozen { "yes" } else { "no" }.to_owned(),
            terminal::safe(&a.explanation).to_string(),
        ]);
    }
    outln!("{table}")?;
    Ok(())
}

/// `audience show NAME`: the definition, its explanation, size then and now, and the breakdown now.
pub async fn show(stores: &Stores, args: NameArgs) -> Result<()> {
    let saved = SavedAudiences::new(&stores.db).map_err(kind)?;
    let audience = saved.get(&args.name).await.map_err(kind)?;
    let frozen = members_of(&saved, &audience).await?;
    let report = report_of(stores, &audience.definition).await?;
    let frozen_now = match &frozen {
        Some(ids) => Some(count_members(stores, Members::Frozen(ids)).await.map_err(tool_failure)?),
        None => None,
    };
    let size_now = frozen_now.unwrap_or(report.size);
    if args.json {
        let value = json!({"saved": audience, "size_now": size_now, "definition_size_now": report.size,
                           "drift": size_now as i64 - audience.size as i64, "now": report});
        outln!("{}", terminal::safe_json(&value)?)?;
        return Ok(());
    }
    outln!("{}: {}", terminal::safe(&audience.name), terminal::safe(&audience.explanation))?;
    outln!(
        "saved {} from data version {} (as of {}): {} members",
        audience.saved_at.format("%Y-%m-%d %H:%M UTC"),
        audience.data_version,
        audience.as_of,
        audience.size
    )?;
    let drift = size_now as i64 - audience.size as i64;
    match frozen_now {
        Some(now) => {
            outln!(
                "frozen: {now} of its {} members are still in the data ({drift:+}); the definition selects {} now",
                audience.size,
                report.size
            )?;
            outln!("members when saved: {}", breakdown_line(&audience.breakdown))?;
        }
        None => outln!("now: {size_now} members ({drift:+} since saved)")?,
    }
    outln!("definition: {}", terminal::safe(&serde_json::to_string(&audience.definition)?))?;
    outln!("{}", audience_summary(&report))?;
    Ok(())
}

/// `audience rm NAME`.
pub async fn remove(stores: &Stores, args: NameArgs) -> Result<()> {
    SavedAudiences::new(&stores.db).map_err(kind)?.remove(&args.name).await.map_err(kind)?;
    if args.json {
        return outln!("{}", terminal::safe_json(&json!({"removed": args.name}))?);
    }
    outln!("removed {}", terminal::safe(&args.name))
}

/// `audience overlap A B`: |A∩B|, |A−B|, |B−A| and the Jaccard index, on the members now.
pub async fn overlap(stores: &Stores, args: OverlapArgs) -> Result<()> {
    let saved = SavedAudiences::new(&stores.db).map_err(kind)?;
    let mut sets = Vec::new();
    for name in [&args.a, &args.b] {
        let audience = saved.get(name).await.map_err(kind)?;
        let frozen = members_of(&saved, &audience).await?;
        sets.push(member_ids(stores, members(&audience, &frozen)).await.map_err(tool_failure)?);
    }
    let (a, b) = (&sets[0], &sets[1]);
    let both = a.iter().filter(|id| b.binary_search(id).is_ok()).count() as u64;
    let (only_a, only_b) = (a.len() as u64 - both, b.len() as u64 - both);
    let union = both + only_a + only_b;
    let jaccard = if union == 0 { 0.0 } else { ((both as f64 / union as f64) * 10_000.0).round() / 10_000.0 };
    if args.json {
        let value = json!({"a": args.a, "b": args.b, "size_a": a.len(), "size_b": b.len(), "both": both,
                           "only_a": only_a, "only_b": only_b, "jaccard": jaccard});
        outln!("{}", terminal::safe_json(&value)?)?;
    } else {
        outln!(
            "{a_name} ({}) and {b_name} ({}): both {both}, only {a_name} {only_a}, only {b_name} {only_b}, \
             Jaccard {jaccard:.4}",
            a.len(),
            b.len(),
            a_name = terminal::safe(&args.a),
            b_name = terminal::safe(&args.b),
        )?;
    }
    Ok(())
}

/// The audience a campaign command acts on: a saved one (with its frozen members, if any) or a definition.
pub enum Target {
    Saved { audience: Box<SavedAudience>, frozen: Option<Vec<String>> },
    Definition(AudienceDefinition),
}

impl Target {
    /// A saved audience by `name`, else the definition file `from`, else `current` (the REPL's audience).
    pub async fn resolve(
        stores: &Stores,
        name: Option<&str>,
        from: Option<&Path>,
        current: Option<AudienceDefinition>,
        verb: &str,
    ) -> Result<Self> {
        match (name, from, current) {
            (Some(name), _, _) => {
                let saved = SavedAudiences::new(&stores.db).map_err(kind)?;
                let audience = saved.get(name).await.map_err(kind)?;
                let frozen = members_of(&saved, &audience).await?;
                Ok(Self::Saved { audience: Box::new(audience), frozen })
            }
            (None, Some(path), _) => Ok(Self::Definition(read_definition(path)?)),
            (None, None, Some(current)) => Ok(Self::Definition(current)),
            (None, None, None) => {
                Err(anyhow!("name a saved audience to {verb}, or pass --from FILE")).kind(FailureKind::Usage)
            }
        }
    }

    pub fn members(&self) -> Members<'_> {
        match self {
            Self::Saved { audience, frozen } => members(audience, frozen),
            Self::Definition(definition) => Members::Definition(definition),
        }
    }

    /// The saved audience's name, or "the definition".
    pub fn label(&self) -> String {
        match self {
            Self::Saved { audience, .. } => audience.name.clone(),
            Self::Definition(_) => "the definition".to_owned(),
        }
    }

    /// True when the members are a frozen list, not the definition evaluated now.
    pub fn frozen(&self) -> bool {
        matches!(self, Self::Saved { frozen: Some(_), .. })
    }
}

/// The next-best action rules: a TOML file, or the shipped table. A file that is not a valid table is the user's
/// to fix.
pub fn read_rules(path: Option<&Path>) -> Result<ActionTable> {
    let Some(path) = path else {
        return ActionTable::defaults().map_err(anyhow::Error::from);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the action rules {}", path.display()))
        .kind(FailureKind::Usage)?;
    ActionTable::from_toml(&text)
        .with_context(|| format!("invalid action rules in {}", path.display()))
        .kind(FailureKind::Usage)
}

/// `audience export`: the whole membership to a file; `current` is the REPL's audience when no name is given.
pub async fn export(stores: &Stores, args: ExportArgs, current: Option<AudienceDefinition>) -> Result<()> {
    let format = match args.format {
        Some(format) => format,
        None => Format::from_path(&args.out).kind(FailureKind::Usage)?,
    };
    let fields = checked_export_fields(&args.fields).map_err(|e| anyhow!("--fields: {e}")).kind(FailureKind::Usage)?;
    let holdout = args.holdout.map(|percent| Holdout::new(percent, args.seed)).transpose().kind(FailureKind::Usage)?;
    let actions = read_rules(args.rules.as_deref())?;
    let options = ExportOptions { path: args.out.clone(), format, fields, holdout, mask_pii: args.mask_pii, actions };
    let target = Target::resolve(stores, args.name.as_deref(), args.from.as_deref(), current, "export").await?;
    let members = target.members();
    let summary = campaign::export(stores, members, &options).await?;
    if args.json {
        outln!("{}", terminal::safe_json(&summary)?)?;
        return Ok(());
    }
    outln!("exported {} member{} to {}", summary.members, plural(summary.members), summary.path.display())?;
    if let Some(holdout) = &summary.holdout {
        outln!(
            "holdout {}% (seed {}): treatment {}, control {}",
            holdout.percent,
            holdout.seed,
            holdout.treatment,
            holdout.control
        )?;
        for balance in &holdout.balance {
            let shares: Vec<String> = balance
                .shares
                .iter()
                .take(5)
                .map(|(value, t, c)| format!("{} {:.1}%/{:.1}%", terminal::safe(value), t * 100.0, c * 100.0))
                .collect();
            outln!(
                "  {} (treatment/control): {}; largest gap {:.1} points",
                balance.dimension,
                shares.join(", "),
                balance.max_gap_points
            )?;
        }
    }
    Ok(())
}

/// `audience lookalike`.
pub async fn lookalike(stores: &Stores, args: LookalikeCommandArgs, session: &AudienceSession) -> Result<()> {
    let within = args.within.as_deref().map(read_definition).transpose()?;
    let request = LookalikeArgs {
        audience: args.name.clone(),
        ids: args.ids.clone(),
        include: within.as_ref().map(|d| d.include.clone()).unwrap_or_default(),
        exclude: within.as_ref().map(|d| d.exclude.clone()).unwrap_or_default(),
        k: Some(args.k),
    };
    let report =
        find_lookalikes(stores, session, &request, &mut ToolTrace::new("lookalike")).await.map_err(tool_failure)?;
    if args.json {
        outln!("{}", terminal::safe_json(&report)?)?;
        return Ok(());
    }
    outln!(
        "{} lookalikes of the {} ({} members) among {} candidates{}",
        report.members.len(),
        terminal::safe(&report.seed),
        report.seed_size,
        report.candidates,
        report.within.as_ref().map(|w| format!(": {}", terminal::safe(w))).unwrap_or_default()
    )?;
    if !report.unknown_ids.is_empty() {
        outln!("unknown ids: {}", terminal::safe(&report.unknown_ids.join(", ")))?;
    }
    outln!("{}", spread_line(&report.spread))?;
    if !report.members.is_empty() {
        outln!("{}", member_table(&report.members))?;
    }
    Ok(())
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}
