//! A `metrics` report as the user reads it, written by the program from the typed report: the answer in words (each
//! value with the definition it was computed by, and whom and which days it counts), the rows as a table, and a
//! chart: bars for a breakdown, a sparkline for a series over time. Charts are plain Unicode block characters with no
//! colour codes, so they read the same on a terminal, in a pipe and under `NO_COLOR`.

use audience_tools::metrics::MetricsReport;
use audience_tools::metrics::catalogue::{Dimension, Unit};
use audience_tools::metrics::tool::MetricsRow;
use chrono::{Datelike, Days, Months, NaiveDate, Weekday};
use comfy_table::{CellAlignment, Table, presets::UTF8_FULL_CONDENSED};

use crate::terminal::safe;

/// Rows a breakdown's answer names inline; the table (and `--json`) has them all.
const NAMED_ROWS: usize = 5;
/// Characters of the longest bar.
const BAR_WIDTH: usize = 40;
/// Most groups a bar chart draws: a longer breakdown reads better as the table.
const MAX_BARS: usize = 30;

/// `value` with thousands separators and `decimals` places: `463279.65` -> `463,279.65`.
fn grouped(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, value.abs());
    let (whole, fraction) = text.split_once('.').map_or((text.as_str(), None), |(w, f)| (w, Some(f)));
    let mut digits = String::new();
    for (at, digit) in whole.chars().enumerate() {
        if at > 0 && (whole.len() - at) % 3 == 0 {
            digits.push(',');
        }
        digits.push(digit);
    }
    // -0.00 is written 0.00.
    let negative = value < 0.0 && text.chars().any(|c| c.is_ascii_digit() && c != '0');
    let sign = if negative { "-" } else { "" };
    match fraction {
        Some(fraction) => format!("{sign}{digits}.{fraction}"),
        None => format!("{sign}{digits}"),
    }
}

/// A measure's value as answers write it: counts whole, money and averages to two decimals, rates as a percentage
/// to one decimal, all with thousands separators; a value that does not exist (a rate without a denominator) is
/// `n/a`.
pub fn value(value: Option<f64>, unit: Unit) -> String {
    match value {
        None => "n/a".to_owned(),
        Some(value) => match unit {
            Unit::Count => grouped(value, 0),
            Unit::Money | Unit::Average => grouped(value, 2),
            Unit::Rate => format!("{}%", grouped(value * 100.0, 1)),
        },
    }
}

/// Whom and which days the report counts, in one sentence: "Over customers from PL, events 2026-06-01 to
/// 2026-06-29; compared with 2026-05-03 to 2026-05-31."
fn scope(report: &MetricsReport) -> String {
    let who =
        report.filters.as_deref().map_or_else(|| "all customers".to_owned(), |filters| safe(filters).into_owned());
    let when = match &report.period {
        Some(period) => format!("events {}", period.words()),
        None => format!("as they are now (data up to {})", report.as_of),
    };
    let compared = report.previous.as_ref().map(|previous| format!("; compared with {}", previous.words()));
    format!("Over {who}, {when}{}.", compared.unwrap_or_default())
}

/// A row's dimension values, as one label.
fn row_label(row: &MetricsRow) -> String {
    safe(&row.dimensions.join(" / ")).into_owned()
}

/// A row's values inline: `12,345.00`, or `net revenue 12,345.00, orders 120` for several measures, each with its
/// previous period's value when compared.
fn row_values(report: &MetricsReport, row: &MetricsRow) -> String {
    let one = report.measures.len() == 1;
    let values: Vec<String> = report
        .measures
        .iter()
        .enumerate()
        .map(|(at, measure)| {
            let current = value(row.values.get(at).copied().flatten(), measure.unit);
            let previous = row.previous.as_ref().map(|previous| {
                format!(" (previous period: {})", value(previous.get(at).copied().flatten(), measure.unit))
            });
            let shown = format!("{current}{}", previous.unwrap_or_default());
            if one { shown } else { format!("{} {shown}", measure.label) }
        })
        .collect();
    values.join(", ")
}

/// The answer in words. A single value: "net revenue = purchases minus returns: 463,279.65", one line per measure.
/// A breakdown or series: its first rows inline, then each measure's definition. Both end with whom and which days
/// were counted, so the number can be checked without reading SQL.
pub fn answer(report: &MetricsReport) -> String {
    let mut lines = Vec::new();
    if report.dimensions.is_empty() {
        let row = report.rows.first();
        for (at, measure) in report.measures.iter().enumerate() {
            let current = value(row.and_then(|row| row.values.get(at).copied().flatten()), measure.unit);
            let previous = row.and_then(|row| row.previous.as_ref()).map(|previous| {
                format!(" (previous period: {})", value(previous.get(at).copied().flatten(), measure.unit))
            });
            lines.push(format!(
                "{} = {}: {current}{}",
                measure.label,
                measure.definition,
                previous.unwrap_or_default()
            ));
        }
    } else {
        let labels: Vec<&str> = report.measures.iter().map(|measure| measure.label.as_str()).collect();
        let by: Vec<&str> = report.dimensions.iter().map(|dimension| dimension.name.as_str()).collect();
        let head = format!("{} by {}", labels.join(" and "), by.join(" and "));
        if report.rows.is_empty() {
            lines.push(format!("{head}: no rows (nothing was counted)"));
        } else {
            let named: Vec<String> = report
                .rows
                .iter()
                .take(NAMED_ROWS)
                .map(|row| format!("{} {}", row_label(row), row_values(report, row)))
                .collect();
            let more = match report.rows.len().saturating_sub(NAMED_ROWS) {
                0 => String::new(),
                1 => " (and 1 more row)".to_owned(),
                more => format!(" (and {more} more rows)"),
            };
            lines.push(format!("{head}: {}{more}", named.join("; ")));
        }
        lines.extend(report.measures.iter().map(|measure| format!("{} = {}", measure.label, measure.definition)));
    }
    lines.push(scope(report));
    if report.truncated {
        lines.push(format!("Only the first {} rows were read; there are more.", report.rows.len()));
    }
    lines.join("\n")
}

/// The rows as a table: the dimensions, then each measure (and its previous period's value when compared).
pub fn table(report: &MetricsReport) -> Table {
    let mut header: Vec<String> = report.dimensions.iter().map(|dimension| dimension.name.clone()).collect();
    for measure in &report.measures {
        header.push(measure.name.clone());
        if report.previous.is_some() {
            header.push(format!("{} (previous)", measure.name));
        }
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    for row in &report.rows {
        let mut cells: Vec<String> = row.dimensions.iter().map(|value| safe(value).into_owned()).collect();
        for (at, measure) in report.measures.iter().enumerate() {
            cells.push(value(row.values.get(at).copied().flatten(), measure.unit));
            if let Some(previous) = &row.previous {
                cells.push(value(previous.get(at).copied().flatten(), measure.unit));
            }
        }
        table.add_row(cells);
    }
    for column in report.dimensions.len()..table.column_count() {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Whether the report is a series: grouped by one dimension, a period of time.
fn is_series(report: &MetricsReport) -> bool {
    matches!(report.dimensions.as_slice(), [only] if Dimension::named(&only.name).is_some_and(Dimension::is_time))
}

/// The chart of a report grouped by one dimension, for its first measure: a sparkline for a series over time, bars
/// for a breakdown. `None` for a single value, two dimensions, a breakdown of more than [`MAX_BARS`] groups, or no
/// value to draw.
pub fn chart(report: &MetricsReport) -> Option<String> {
    if report.dimensions.len() != 1 || report.rows.is_empty() {
        return None;
    }
    let measure = report.measures.first()?;
    if is_series(report) {
        let series = timeline(report).unwrap_or_else(|| {
            report.rows.iter().map(|row| (row_label(row), row.values.first().copied().flatten())).collect()
        });
        return Some(sparkline(report, &series, measure.unit));
    }
    let values: Vec<Option<f64>> = report.rows.iter().map(|row| row.values.first().copied().flatten()).collect();
    let largest = values.iter().flatten().fold(0.0_f64, |largest, value| largest.max(value.abs()));
    if report.rows.len() > MAX_BARS {
        return None;
    }
    let labels: Vec<String> = report.rows.iter().map(row_label).collect();
    let label_width = labels.iter().map(|label| label.chars().count()).max().unwrap_or(0);
    let shown: Vec<String> = values.iter().map(|shown| value(*shown, measure.unit)).collect();
    let value_width = shown.iter().map(String::len).max().unwrap_or(0);
    let lines: Vec<String> = labels
        .iter()
        .zip(&values)
        .zip(&shown)
        .map(|((label, drawn), shown)| {
            let bar = drawn.map_or_else(String::new, |drawn| bar(drawn.abs(), largest));
            let padding = " ".repeat(label_width - label.chars().count());
            format!("{label}{padding}  {bar:<BAR_WIDTH$}  {shown:>value_width$}")
        })
        .collect();
    Some(format!("{} by {}\n{}", measure.label, report.dimensions[0].name, lines.join("\n")))
}

/// A bar of `value` on a scale whose `largest` value is [`BAR_WIDTH`] characters, in eighths of a character.
fn bar(value: f64, largest: f64) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    if largest <= 0.0 {
        return String::new();
    }
    let eighths = ((value / largest) * (BAR_WIDTH * 8) as f64).round() as usize;
    let mut text = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        text.push(EIGHTHS[eighths % 8]);
    }
    // A value too small to show still shows it is there.
    if text.is_empty() && value > 0.0 {
        text.push('▏');
    }
    text
}

/// The series in time order with every period from the first to the last, as `(label, value)`: a period the query
/// returned no row for had no event, which is 0 for a count or a sum and no value for an average or a rate. `None`
/// when a label does not read as its period.
fn timeline(report: &MetricsReport) -> Option<Vec<(String, Option<f64>)>> {
    let dimension = Dimension::named(&report.dimensions.first()?.name)?;
    let unit = report.measures.first()?.unit;
    let start = |label: &str| -> Option<NaiveDate> {
        match dimension {
            Dimension::Day => NaiveDate::parse_from_str(label, "%Y-%m-%d").ok(),
            Dimension::Month => NaiveDate::parse_from_str(&format!("{label}-01"), "%Y-%m-%d").ok(),
            Dimension::Quarter => {
                let (year, quarter) = label.split_once("-Q")?;
                NaiveDate::from_ymd_opt(year.parse().ok()?, 3 * quarter.parse::<u32>().ok()? - 2, 1)
            }
            Dimension::Week => {
                let (year, week) = label.split_once("-W")?;
                NaiveDate::from_isoywd_opt(year.parse().ok()?, week.parse().ok()?, Weekday::Mon)
            }
            _ => None,
        }
    };
    let next = |day: NaiveDate| -> Option<NaiveDate> {
        match dimension {
            Dimension::Day => day.succ_opt(),
            Dimension::Week => day.checked_add_days(Days::new(7)),
            Dimension::Month => day.checked_add_months(Months::new(1)),
            Dimension::Quarter => day.checked_add_months(Months::new(3)),
            _ => None,
        }
    };
    // The labels of the SQL (`Dimension::label_sql`), for the periods it returned no row for.
    let label_of = |day: NaiveDate| -> String {
        match dimension {
            Dimension::Week => day.format("%G-W%V").to_string(),
            Dimension::Month => day.format("%Y-%m").to_string(),
            Dimension::Quarter => format!("{}-Q{}", day.year(), day.month0() / 3 + 1),
            _ => day.format("%Y-%m-%d").to_string(),
        }
    };
    let mut known: Vec<(NaiveDate, String, Option<f64>)> = Vec::new();
    for row in &report.rows {
        let label = row.dimensions.first()?;
        known.push((start(label)?, label.clone(), row.values.first().copied().flatten()));
    }
    known.sort_by_key(|(day, _, _)| *day);
    let (first, last) = (known.first()?.0, known.last()?.0);
    let mut series = Vec::new();
    let mut day = first;
    let mut rows = known.into_iter().peekable();
    while day <= last {
        match rows.next_if(|(at, _, _)| *at == day) {
            Some((_, label, value)) => series.push((safe(&label).into_owned(), value)),
            None => series.push((label_of(day), unit.zero_when_missing().then_some(0.0))),
        }
        day = next(day)?;
    }
    Some(series)
}

/// One block per period, its height the value's share of the largest; a period without a value is a space. Then
/// the first and last period, and where the lowest and highest values fell.
fn sparkline(report: &MetricsReport, series: &[(String, Option<f64>)], unit: Unit) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let largest =
        series.iter().filter_map(|(_, value)| *value).fold(0.0_f64, |largest, value| largest.max(value.abs()));
    let line: String = series
        .iter()
        .map(|(_, shown)| match shown {
            None => ' ',
            Some(_) if largest <= 0.0 => LEVELS[0],
            Some(shown) => LEVELS[((shown.abs() / largest) * 7.0).round() as usize],
        })
        .collect();
    let label = |at: usize| series.get(at).map(|(label, _)| label.clone()).unwrap_or_default();
    let extreme = |better: fn(f64, f64) -> bool| -> Option<(usize, f64)> {
        series.iter().enumerate().filter_map(|(at, (_, shown))| shown.map(|shown| (at, shown))).fold(
            None,
            |best, next| match best {
                Some((_, kept)) if !better(next.1, kept) => best,
                _ => Some(next),
            },
        )
    };
    let measure = &report.measures[0].label;
    let mut text = format!(
        "{measure} by {}, {} to {}\n{line}",
        report.dimensions[0].name,
        label(0),
        label(series.len().saturating_sub(1))
    );
    if let (Some((low, lowest)), Some((high, highest))) = (extreme(|a, b| a < b), extreme(|a, b| a > b)) {
        text.push_str(&format!(
            "\nlowest {} ({}), highest {} ({})",
            value(Some(lowest), unit),
            label(low),
            value(Some(highest), unit),
            label(high)
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_people_write_them() {
        assert_eq!(value(Some(463_279.654), Unit::Money), "463,279.65");
        assert_eq!(value(Some(-1_234.5), Unit::Money), "-1,234.50");
        assert_eq!(value(Some(-0.001), Unit::Money), "0.00");
        assert_eq!(value(Some(1_000_000.0), Unit::Count), "1,000,000");
        assert_eq!(value(Some(506.0), Unit::Count), "506");
        assert_eq!(value(Some(0.23456), Unit::Rate), "23.5%");
        assert_eq!(value(Some(41.0), Unit::Average), "41.00");
        assert_eq!(value(None, Unit::Rate), "n/a");
    }

    /// A series with periods that had no event: they are drawn as 0 for a count, as a gap for a rate.
    #[test]
    fn a_series_has_every_period_from_its_first_to_its_last() {
        let report = |dimension: &str, unit: &str, rows: serde_json::Value| -> MetricsReport {
            serde_json::from_value(serde_json::json!({
                "explanation": "x", "as_of": "2026-06-29", "truncated": false, "sql": "",
                "measures": [{"name": "m", "label": "m", "definition": "d", "unit": unit}],
                "dimensions": [{"name": dimension, "definition": "d"}],
                "rows": rows,
            }))
            .unwrap()
        };
        let row = |label: &str, value: f64| serde_json::json!({"dimensions": [label], "values": [value]});
        let months = report("month", "count", serde_json::json!([row("2026-03", 4.0), row("2026-01", 8.0)]));
        assert_eq!(
            timeline(&months).unwrap(),
            [("2026-01".to_owned(), Some(8.0)), ("2026-02".to_owned(), Some(0.0)), ("2026-03".to_owned(), Some(4.0))]
        );
        assert_eq!(
            chart(&months).unwrap(),
            "m by month, 2026-01 to 2026-03\n█▁▅\nlowest 0 (2026-02), highest 8 (2026-01)"
        );
        let weeks = report("week", "rate", serde_json::json!([row("2025-W52", 0.5), row("2026-W02", 0.25)]));
        let labels: Vec<(String, Option<f64>)> = timeline(&weeks).unwrap();
        assert_eq!(labels[1], ("2026-W01".to_owned(), None), "a rate without events has no value");
        let quarters = report("quarter", "money", serde_json::json!([row("2025-Q4", 1.0), row("2026-Q2", 2.0)]));
        assert_eq!(timeline(&quarters).unwrap()[1].0, "2026-Q1");
    }

    #[test]
    fn bars_are_drawn_in_eighths_of_the_largest() {
        assert_eq!(bar(10.0, 10.0).chars().count(), BAR_WIDTH);
        assert_eq!(bar(5.0, 10.0), "█".repeat(BAR_WIDTH / 2));
        assert_eq!(bar(0.0, 10.0), "");
        assert_eq!(bar(0.001, 10.0), "▏", "a small value still shows");
    }
}
