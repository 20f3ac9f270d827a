//! Acting on an audience and measuring it: `actions` (each member's next-best action from the rule table), `draft`
//! (e-mail drafts of its members, written by `audience::drafts::batch`) and `measure` (the lift of a campaign,
//! treatment against the holdout's control group).

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use audience_tools::audience::AudienceDefinition;
use audience_tools::audience::actions::{self, Assigned};
use audience_tools::audience::outcomes::outcomes;
use chrono::NaiveDate;
use clap::{Args, Parser};
use comfy_table::Table;
use serde::Serialize;

use crate::cli::audiences::{Target, read_rules};
use audience::campaign::Holdout;
use audience::drafts::DraftPrompts;
use audience::drafts::batch::{self, Batch, DraftSummary, Per, Writer};
use audience::exit::{FailureExt, FailureKind, tool_failure};
use audience::lift::{Comparison, Economics, GroupStats, Interval, Metric, Observation, compare};
use audience::outln;
use audience::provider::{ProviderConfig, ProviderKind};
use audience::terminal;
use audience_tools::stores::Stores;

// Parser as well: the REPL parses its `/actions` line with the same syntax.
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
pub struct ActionsArgs {
    /// The saved audience (or --from FILE).
    pub name: Option<String>,
    /// A definition file instead of a saved audience.
    #[arg(long, value_name = "FILE", conflicts_with = "name")]
    pub from: Option<PathBuf>,
    /// The rule table (TOML; default: prompts/actions.toml).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// One JSON document: the counts per rule and every member's action.
    #[arg(long)]
    pub json: bool,
}

/// One rule's line of the summary (the last line is `none`).
#[derive(Debug, Serialize)]
struct RuleCount {
    /// The rule's place in the table, from 1; `None` for the members no rule matched.
    rule: Option<usize>,
    action: String,
    reason: String,
    members: u64,
}

#[derive(Debug, Serialize)]
struct MemberAction<'a> {
    external_id: &'a str,
    action: &'a str,
}

/// `audience actions`: how many members each rule gives its action, and with `--json` every member's.
/// `current` is the REPL's audience, used when neither a name nor a file is given.
pub async fn actions(stores: &Stores, args: ActionsArgs, current: Option<AudienceDefinition>) -> Result<()> {
    let table = read_rules(args.rules.as_deref())?;
    let target =
        Target::resolve(stores, args.name.as_deref(), args.from.as_deref(), current, "plan actions for").await?;
    let assigned = actions::assign(stores, target.members(), &table).await.map_err(tool_failure)?;
    let mut counts = vec![0u64; table.rules.len() + 1];
    for (_, assignment) in &assigned {
        match assignment {
            Assigned::Rule(index) => counts[*index] += 1,
            Assigned::None => counts[table.rules.len()] += 1,
        }
    }
    let lines: Vec<RuleCount> = counts
        .iter()
        .enumerate()
        .map(|(index, members)| {
            let assignment = if index < table.rules.len() { Assigned::Rule(index) } else { Assigned::None };
            let (action, reason) = table.describe(assignment);
            let rule = (index < table.rules.len()).then_some(index + 1);
            RuleCount { rule, action: action.to_owned(), reason: reason.to_owned(), members: *members }
        })
        .collect();
    let rules_source = match &args.rules {
        Some(path) => path.display().to_string(),
        None => "prompts/actions.toml (shipped)".to_owned(),
    };
    if args.json {
        let members: Vec<MemberAction> = assigned
            .iter()
            .map(|(id, assignment)| MemberAction { external_id: id, action: table.describe(*assignment).0 })
            .collect();
        let value = serde_json::json!({"audience": target.label(), "rules": rules_source,
                                       "members": assigned.len(), "actions": lines, "per_member": members});
        return outln!("{}", terminal::safe_json(&value)?);
    }
    let total = assigned.len() as u64;
    outln!(
        "{}: {total} member{}; {} rules from {}, the first that matches gives the action",
        terminal::safe(&target.label()),
        if total == 1 { "" } else { "s" },
        table.rules.len(),
        terminal::safe(&rules_source)
    )?;
    let mut rendered = Table::new();
    rendered.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    rendered.set_header(["rule", "action", "members", "share", "reason"]);
    for line in &lines {
        let share = if total == 0 { 0.0 } else { line.members as f64 / total as f64 * 100.0 };
        rendered.add_row(vec![
            line.rule.map_or("-".to_owned(), |rule| rule.to_string()),
            terminal::safe(&line.action).to_string(),
            line.members.to_string(),
            format!("{share:.1}%"),
            terminal::safe(&line.reason).to_string(),
        ]);
    }
    outln!("{rendered}")
}

#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// The saved audience the campaign went to (or --from FILE).
    pub name: Option<String>,
    /// A definition file instead of a saved audience.
    #[arg(long, value_name = "FILE", conflicts_with = "name")]
    pub from: Option<PathBuf>,
    /// The campaign date: purchases from the start of this day (UTC, YYYY-MM-DD) count.
    #[arg(long, value_name = "DATE")]
    pub since: NaiveDate,
    /// The last day (inclusive) that counts (default: the data's last day).
    #[arg(long, value_name = "DATE")]
    pub until: Option<NaiveDate>,
    #[arg(long, value_enum, default_value_t = Metric::Conversion)]
    pub metric: Metric,
    /// The holdout percentage the campaign's export used (saved audiences do not record it).
    #[arg(long, value_name = "PCT")]
    pub holdout: f64,
    /// The holdout's seed the export used (export's default is 1); it also seeds the bootstrap.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// What contacting one member cost, for the ROI.
    #[arg(long, value_name = "X", requires = "margin")]
    pub cost_per_contact: Option<f64>,
    /// The share of revenue that is profit (0 to 1), for the ROI.
    #[arg(long, value_name = "Y", requires = "cost_per_contact")]
    pub margin: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

/// What `measure` reports.
#[derive(Debug, Serialize)]
struct MeasureReport {
    audience: String,
    /// `frozen` (the list kept at save time) or `live` (the definition evaluated on the data now).
    membership: &'static str,
    since: NaiveDate,
    until: NaiveDate,
    holdout: Holdout,
    #[serde(flatten)]
    comparison: Comparison,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// Why a live audience measures less exactly than a frozen one.
const LIVE_NOTE: &str = "the definition was evaluated on the data now: purchases after the campaign can move members \
                         in or out of it. Save an audience with --freeze before its campaign to measure exactly the \
                         members it went to.";

/// `audience measure`: treatment against control over the purchases after `--since`.
pub async fn measure(stores: &Stores, args: MeasureArgs) -> Result<()> {
    let holdout = Holdout::new(args.holdout, args.seed).kind(FailureKind::Usage)?;
    let economics = match (args.cost_per_contact, args.margin) {
        (Some(cost), Some(margin)) => Some(Economics::new(cost, margin).kind(FailureKind::Usage)?),
        _ => None,
    };
    if let Some(until) = args.until
        && until < args.since
    {
        return Err(anyhow!("--until {until} is before --since {}", args.since)).kind(FailureKind::Usage);
    }
    let target = Target::resolve(stores, args.name.as_deref(), args.from.as_deref(), None, "measure").await?;
    let found = outcomes(stores, target.members(), args.since, args.until).await.map_err(tool_failure)?;
    if args.since > found.as_of {
        return Err(anyhow!(
            "no purchases can count from {}: the data ends on {}; ingest the events after the campaign first",
            args.since,
            found.as_of
        ))
        .kind(FailureKind::Usage);
    }
    let observations = Observation::of_members(&found.members, &holdout);
    let comparison = compare(&observations, args.metric, args.seed, economics).kind(FailureKind::Usage)?;
    let live = !target.frozen();
    let report = MeasureReport {
        audience: target.label(),
        membership: if live { "live" } else { "frozen" },
        since: args.since,
        until: args.until.unwrap_or(found.as_of).min(found.as_of),
        holdout,
        comparison,
        note: live.then(|| LIVE_NOTE.to_owned()),
    };
    if args.json {
        return outln!("{}", terminal::safe_json(&report)?);
    }
    render_measure(&report)
}

fn render_measure(report: &MeasureReport) -> Result<()> {
    let comparison = &report.comparison;
    outln!(
        "lift of {}: purchases from {} to {}; holdout {}% (seed {}); members: {}",
        terminal::safe(&report.audience),
        report.since,
        report.until,
        report.holdout.percent,
        report.holdout.seed,
        if report.membership == "frozen" { "the frozen list" } else { "the definition now" }
    )?;
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(["group", "members", "converters", "conversion", "orders/member", "revenue/member"]);
    for (name, group) in [("treatment", &comparison.treatment), ("control", &comparison.control)] {
        table.add_row(group_row(name, group));
    }
    outln!("{table}")?;
    let lift = &comparison.lift;
    let relative = match (lift.relative, lift.relative_interval) {
        (Some(relative), Some(interval)) => format!(
            ", relative {} (95% CI {} to {})",
            signed_percent(relative),
            signed_percent(interval.low),
            signed_percent(interval.high)
        ),
        (Some(relative), None) => format!(", relative {}", signed_percent(relative)),
        (None, _) => String::new(),
    };
    outln!(
        "{}: treatment {}, control {}: {} (95% CI {} to {}){relative}, {}",
        metric_name(lift.metric),
        level(lift.metric, lift.treatment),
        level(lift.metric, lift.control),
        difference(lift.metric, lift.absolute, true),
        difference(lift.metric, lift.absolute_interval.low, false),
        difference(lift.metric, lift.absolute_interval.high, true),
        p_value(lift.p_value)
    )?;
    outln!("{}", lift.verdict)?;
    if let Some(roi) = &comparison.roi {
        let ratio = match (roi.roi, roi.roi_interval) {
            (Some(value), Some(Interval { low, high })) => {
                format!("; ROI {} (95% CI {} to {})", signed_percent(value), signed_percent(low), signed_percent(high))
            }
            _ => String::new(),
        };
        outln!(
            "return: {} contacts at {:.2} cost {:.2}; incremental revenue {:.2} (95% CI {:.2} to {:.2}); at a {}% \
             margin, incremental profit {:.2}{ratio}",
            roi.contacts,
            roi.cost_per_contact,
            roi.cost,
            roi.incremental_revenue,
            roi.incremental_revenue_interval.low,
            roi.incremental_revenue_interval.high,
            roi.margin * 100.0,
            roi.incremental_profit,
        )?;
    }
    if let Some(note) = &report.note {
        outln!("note: {note}")?;
    }
    Ok(())
}

fn group_row(name: &str, group: &GroupStats) -> Vec<String> {
    vec![
        name.to_owned(),
        group.size.to_string(),
        group.converters.to_string(),
        format!("{:.1}%", group.conversion_rate * 100.0),
        format!("{:.3}", group.orders_per_member),
        format!("{:.2}", group.revenue_per_member),
    ]
}

fn metric_name(metric: Metric) -> &'static str {
    match metric {
        Metric::Conversion => "conversion",
        Metric::Revenue => "revenue per member",
        Metric::Orders => "orders per member",
    }
}

/// A group's value of the metric.
fn level(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Conversion => format!("{:.1}%", value * 100.0),
        Metric::Revenue => format!("{value:.2}"),
        Metric::Orders => format!("{value:.3}"),
    }
}

/// A difference in the metric, signed, with its unit when `unit`.
fn difference(metric: Metric, value: f64, unit: bool) -> String {
    match metric {
        Metric::Conversion if unit => format!("{:+.1} points", value * 100.0),
        Metric::Conversion => format!("{:+.1}", value * 100.0),
        Metric::Revenue => format!("{value:+.2}"),
        Metric::Orders => format!("{value:+.3}"),
    }
}

fn signed_percent(value: f64) -> String {
    format!("{:+.1}%", value * 100.0)
}

fn p_value(p: f64) -> String {
    if p < 0.001 { "p < 0.001".to_owned() } else { format!("p = {p:.3}") }
}

// Parser as well: the REPL parses its `/draft` line with the same syntax.
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
pub struct DraftArgs {
    /// The saved audience (or --from FILE).
    pub name: Option<String>,
    /// A definition file instead of a saved audience.
    #[arg(long, value_name = "FILE", conflicts_with = "name")]
    pub from: Option<PathBuf>,
    /// The file to write: .csv or .jsonl (replaced only when complete).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The campaign's offer, in words ("20% off watches until Sunday"); without one, drafts state no discount.
    #[arg(long, value_name = "TEXT")]
    pub offer: Option<String>,
    /// One draft per member, or one per segment or action (with the {{first_name}} merge tag).
    #[arg(long, value_enum, default_value_t = Per::Member)]
    pub per: Per,
    /// Write at most this many drafts in this run (with --resume, the next ones in a later run).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Keep the drafts an interrupted run finished and write the rest.
    #[arg(long)]
    pub resume: bool,
    /// Write e-mails as SHA-256 hashes (email_sha256).
    #[arg(long)]
    pub mask_pii: bool,
    /// The holdout the export used: its control group gets no draft.
    #[arg(long, value_name = "PCT")]
    pub holdout: Option<f64>,
    #[arg(long, requires = "holdout", default_value_t = 1)]
    pub seed: u64,
    /// The next-best action rules (default: prompts/actions.toml).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// A directory of edited draft prompts (system.md, system_group.md, tone.toml; each file it holds replaces the
    /// shipped one). Default: <data dir>/prompts/drafts when it exists.
    #[arg(long, value_name = "DIR")]
    pub prompts: Option<PathBuf>,
    /// Requests in flight at most (default: the provider's, 4 for a hosted one); the local model always gets one
    /// at a time.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: Option<u16>,
    #[arg(long)]
    pub json: bool,
}

/// `audience draft`: e-mail drafts for the audience's treatment members (or its segments or actions).
/// `current` is the REPL's audience, used when neither a name nor a file is given.
pub async fn draft(
    stores: &Stores,
    args: DraftArgs,
    data_dir: &Path,
    current: Option<AudienceDefinition>,
) -> Result<DraftSummary> {
    let holdout = args.holdout.map(|percent| Holdout::new(percent, args.seed)).transpose().kind(FailureKind::Usage)?;
    let rules = read_rules(args.rules.as_deref())?;
    let target = Target::resolve(stores, args.name.as_deref(), args.from.as_deref(), current, "draft for").await?;
    let prompts_dir = args.prompts.clone().unwrap_or_else(|| data_dir.join("prompts").join("drafts"));
    if args.prompts.is_some() && !prompts_dir.is_dir() {
        return Err(anyhow!("--prompts {}: no such directory", prompts_dir.display())).kind(FailureKind::Usage);
    }
    let prompts = DraftPrompts::load(&prompts_dir).kind(FailureKind::Usage)?;
    let batch = Batch {
        members: target.members(),
        out: args.out.clone(),
        offer: args.offer.clone(),
        per: args.per,
        limit: args.limit,
        resume: args.resume,
        mask_pii: args.mask_pii,
        holdout,
        rules: &rules,
        prompts,
    };
    let prepared = batch::prepare(stores, batch).await?;

    let provider = ProviderConfig::load(data_dir)?;
    let _server = match (&provider.kind, &provider.base_url) {
        (ProviderKind::Local, Some(url)) => {
            Some(audience::local_llm::ensure(url, &provider.model, data_dir).await.kind(FailureKind::Provider)?)
        }
        _ => None,
    };
    let concurrency = provider.kind.concurrency(args.concurrency.map(usize::from));
    if let Some(asked) = args.concurrency.filter(|asked| usize::from(*asked) != concurrency) {
        eprintln!("note: the local model serves one request at a time; --concurrency {asked} is not used");
    }
    let model = provider.chat_model()?;
    let writer =
        Writer { model: &model, provider: provider.kind.name(), model_name: &provider.model, data_dir, concurrency };
    let summary = prepared.generate(writer).await?;
    if args.json {
        outln!("{}", terminal::safe_json(&summary)?)?;
        return Ok(summary);
    }
    outln!(
        "{}{}",
        terminal::safe(&summary.line()),
        if summary.remaining > 0 {
            format!("; {} left: run again with --resume", summary.remaining)
        } else {
            String::new()
        },
    )?;
    Ok(summary)
}
