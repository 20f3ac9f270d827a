//! `audience metrics MEASURE... [--by DIMENSION] [--where CLAUSE] [--within-days N | --since/--until | --period]`:
//! a measure of the catalogue computed without the LLM, the arguments mapped onto the `metrics` tool's typed call.
//! It prints the value with its definition, or the rows as a table with a bar chart (a breakdown) or a sparkline (a
//! series); `--json` prints the tool's report (values or rows, definitions, measure names and the SQL).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use audience_tools::audience::definition::{Clause, Invalid};
use audience_tools::metrics::query::Direction;
use audience_tools::metrics::{Dimension, Measure, Metrics, MetricsArgs};
use audience_tools::vocabulary::Offered;
use chrono::NaiveDate;
use clap::Args;

use crate::Global;
use crate::cli::tool_command::{call, read_definition};
use audience::exit::{FailureExt, FailureKind};
use audience::open_stores::open_stores;
use audience::outln;
use audience::render::metrics::{answer, chart, table};
use audience::terminal;

const EXAMPLES: &str = "\
Examples:
  audience metrics net_revenue
  audience metrics net_revenue --within-days 30 --compare
  audience metrics orders,buyers --by country --top 5
  audience metrics gross_revenue --by month --period 2026
  audience metrics churn_rate --by segment
  audience metrics average_order_value --where '{\"type\": \"profile\", \"field\": \"country\", \"op\": \"=\", \"value\": \"PL\"}'
  audience metrics buyers --from vip.json --period 2026-Q2
  audience metrics --list

Filters are audience clauses in the JSON that `tool find_audience --args` takes (its include and exclude), or a
definition file (--from). Time: every event up to the data's last day; --within-days N is the N days ending on
that day; --since/--until or --period (2026, 2026-Q2, 2026-06) a calendar period, both days included, in UTC.";

#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct MetricsCommandArgs {
    /// Measures to compute (1 to 4, comma-separated or repeated); --list shows them with their definitions.
    #[arg(required_unless_present = "list", value_delimiter = ',')]
    measures: Vec<String>,
    /// Dimensions to break the measures down by (up to 2): country, product, month, ...
    #[arg(long = "by", value_name = "DIMENSION", value_delimiter = ',')]
    by: Vec<String>,
    /// An audience clause (JSON) the counted customers must meet; repeat for more.
    #[arg(long = "where", value_name = "CLAUSE")]
    filters: Vec<String>,
    /// An audience clause (JSON) the counted customers must not meet; repeat for more.
    #[arg(long, value_name = "CLAUSE")]
    exclude: Vec<String>,
    /// Only the customers of this audience definition (a definition file, or an `ask --json` answer).
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// The N days ending on the data's last day.
    #[arg(long, value_name = "N", alias = "last", conflicts_with_all = ["since", "until", "period"])]
    within_days: Option<u32>,
    /// The first day of a calendar period (YYYY-MM-DD, included).
    #[arg(long, value_name = "DAY")]
    since: Option<NaiveDate>,
    /// The last day of a calendar period (YYYY-MM-DD, included).
    #[arg(long, value_name = "DAY")]
    until: Option<NaiveDate>,
    /// A calendar period: a year (2026), a quarter (2026-Q2) or a month (2026-06).
    #[arg(long, value_name = "PERIOD", conflicts_with_all = ["since", "until"])]
    period: Option<String>,
    /// Also compute the previous period of the same length.
    #[arg(long)]
    compare: bool,
    /// A measure or dimension of the call to order the rows by (default: a series by time, a breakdown largest
    /// first; ties by the dimension values).
    #[arg(long, value_name = "NAME")]
    order_by: Option<String>,
    /// Order ascending instead.
    #[arg(long, conflicts_with = "desc")]
    asc: bool,
    /// Order descending instead.
    #[arg(long)]
    desc: bool,
    /// Only the first N rows (a top N).
    #[arg(long, value_name = "N", alias = "limit")]
    top: Option<usize>,
    /// Print the report as one JSON document: values or rows, definitions, measure names and the SQL.
    #[arg(long)]
    json: bool,
    /// List the measures and dimensions with their definitions.
    #[arg(long, conflicts_with = "measures")]
    list: bool,
}

pub async fn run(args: MetricsCommandArgs, global: &Global) -> Result<()> {
    if args.list {
        return list(args.json);
    }
    let json = args.json;
    let call_args = typed_call(args)?;
    // The call is checked before any store opens: a typo is a usage error whatever the state of the database.
    call_args.check().map_err(|Invalid(reason)| anyhow!(reason)).kind(FailureKind::Usage)?;
    let stores = open_stores(&global.data_dir).await?;
    let (output, trace) = call(Metrics::new(stores, &Offered::default()), serde_json::to_value(&call_args)?).await?;
    if global.verbose
        && let Some(trace) = &trace
    {
        eprintln!("trace: {}", serde_json::to_string(trace)?);
    }
    if json {
        outln!("{}", terminal::safe_json(&output)?)?;
        return Ok(());
    }
    let report = serde_json::from_value(output).context("the metrics report does not read back")?;
    outln!("{}", answer(&report))?;
    if !report.dimensions.is_empty() && !report.rows.is_empty() {
        outln!("\n{}", table(&report))?;
        if let Some(chart) = chart(&report) {
            outln!("\n{chart}")?;
        }
    }
    Ok(())
}

/// The command's arguments as the tool's typed call; a clause or a period that does not read is a usage error.
fn typed_call(args: MetricsCommandArgs) -> Result<MetricsArgs> {
    let clause = |text: &String, option: &str| -> Result<Clause> {
        serde_json::from_str(text)
            .with_context(|| format!("{option} {text:?} is not an audience clause (JSON, as find_audience takes)"))
            .kind(FailureKind::Usage)
    };
    let mut filters = Vec::new();
    let mut exclude = Vec::new();
    if let Some(path) = &args.from {
        let definition = read_definition(path)?;
        filters.extend(definition.include);
        exclude.extend(definition.exclude);
    }
    for text in &args.filters {
        filters.push(clause(text, "--where")?);
    }
    for text in &args.exclude {
        exclude.push(clause(text, "--exclude")?);
    }
    let (since, until) = match &args.period {
        Some(period) => {
            calendar_period(period).map(|(since, until)| (Some(since), Some(until))).kind(FailureKind::Usage)?
        }
        None => (args.since, args.until),
    };
    let order = match (args.asc, args.desc) {
        (true, _) => Some(Direction::Asc),
        (_, true) => Some(Direction::Desc),
        _ => None,
    };
    Ok(MetricsArgs {
        measures: args.measures,
        dimensions: args.by,
        filters,
        exclude,
        within_days: args.within_days,
        since,
        until,
        compare: args.compare,
        order_by: args.order_by,
        order,
        limit: args.top,
    })
}

/// The first and last day of a calendar period written `2026`, `2026-Q2` or `2026-06`.
fn calendar_period(text: &str) -> Result<(NaiveDate, NaiveDate)> {
    let unreadable = || anyhow!("--period {text:?} is not a year (2026), a quarter (2026-Q2) or a month (2026-06)");
    let text = text.trim();
    let (year, rest) = text.split_once('-').map_or((text, None), |(year, rest)| (year, Some(rest)));
    let year: i32 = year.parse().map_err(|_| unreadable())?;
    let (first_month, months) = match rest {
        None => (1, 12),
        Some(quarter) if quarter.starts_with(['Q', 'q']) => {
            let quarter: u32 = quarter[1..].parse().map_err(|_| unreadable())?;
            if !(1..=4).contains(&quarter) {
                return Err(unreadable());
            }
            (3 * quarter - 2, 3)
        }
        Some(month) => (month.parse::<u32>().map_err(|_| unreadable())?, 1),
    };
    let first = NaiveDate::from_ymd_opt(year, first_month, 1).ok_or_else(unreadable)?;
    let next = first.checked_add_months(chrono::Months::new(months)).ok_or_else(unreadable)?;
    let last = next.pred_opt().ok_or_else(unreadable)?;
    Ok((first, last))
}

/// The catalogue: every measure and dimension with its definition.
fn list(json: bool) -> Result<()> {
    if json {
        let measures: Vec<serde_json::Value> = Measure::ALL
            .iter()
            .map(|m| serde_json::json!({"name": m.name(), "label": m.label(), "definition": m.definition()}))
            .collect();
        let dimensions: Vec<serde_json::Value> = Dimension::ALL
            .iter()
            .map(|d| serde_json::json!({"name": d.name(), "definition": d.definition()}))
            .collect();
        outln!("{}", terminal::safe_json(&serde_json::json!({"measures": measures, "dimensions": dimensions}))?)?;
        return Ok(());
    }
    outln!("measures:")?;
    for measure in Measure::ALL {
        outln!("  {:<24} {}", measure.name(), measure.definition())?;
    }
    outln!("dimensions:")?;
    for dimension in Dimension::ALL {
        outln!("  {:<24} {}", dimension.name(), dimension.definition())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_periods_cover_whole_days() {
        let day = |text: &str| NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap();
        assert_eq!(calendar_period("2026").unwrap(), (day("2026-01-01"), day("2026-12-31")));
        assert_eq!(calendar_period("2026-Q2").unwrap(), (day("2026-04-01"), day("2026-06-30")));
        assert_eq!(calendar_period("2024-02").unwrap(), (day("2024-02-01"), day("2024-02-29")));
        assert_eq!(calendar_period("2026-12").unwrap(), (day("2026-12-01"), day("2026-12-31")));
        for bad in ["June", "2026-13", "2026-Q5", "2026-Q", ""] {
            assert!(calendar_period(bad).is_err(), "{bad}");
        }
    }
}
