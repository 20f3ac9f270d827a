//! Summaries of repeated measurements (median and spread, percentiles) and Markdown tables to print them.

use audience::outln;
use std::fmt::Write;

/// Repeated measurements of one figure.
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut values = self.0.clone();
        values.sort_by(f64::total_cmp);
        values
    }

    /// The nearest-rank percentile (`p` in 0..=100); 0 when empty.
    pub fn percentile(&self, p: f64) -> f64 {
        let values = self.sorted();
        if values.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    }

    pub fn median(&self) -> f64 {
        let values = self.sorted();
        match values.len() {
            0 => 0.0,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(0.0)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(0.0)
    }

    /// `median (min–max)` with `decimals` digits; the spread is left out for a single run.
    pub fn spread(&self, decimals: usize) -> String {
        if self.len() <= 1 {
            return format!("{:.decimals$}", self.median());
        }
        format!("{:.decimals$} ({:.decimals$}–{:.decimals$})", self.median(), self.min(), self.max())
    }
}

/// A Markdown table built row by row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: ToString>(header: impl IntoIterator<Item = S>) -> Self {
        Self { header: header.into_iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(|c| c.to_string()).collect());
    }

    /// Prints the table to stdout with a title line before it.
    pub fn print(&self, title: &str) -> anyhow::Result<()> {
        outln!("\n{title}\n\n{self}")
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::new();
        let line = |cells: &[String]| format!("| {} |", cells.join(" | "));
        let _ = writeln!(text, "{}", line(&self.header));
        let _ = writeln!(text, "|{}", "---|".repeat(self.header.len()));
        for row in &self.rows {
            let _ = writeln!(text, "{}", line(row));
        }
        f.write_str(text.trim_end())
    }
}

/// A count with thousands separators, e.g. `5,012,345`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[f64]) -> Samples {
        let mut samples = Samples::default();
        for value in values {
            samples.push(*value);
        }
        samples
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = samples(&values);
        assert_eq!(s.percentile(50.0), 50.0);
        assert_eq!(s.percentile(95.0), 95.0);
        assert_eq!(s.percentile(100.0), 100.0);
        assert_eq!(samples(&[3.0]).percentile(95.0), 3.0);
        assert_eq!(Samples::default().percentile(50.0), 0.0);
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(samples(&[5.0, 1.0, 3.0]).median(), 3.0);
        assert_eq!(samples(&[4.0, 1.0, 3.0, 2.0]).median(), 2.5);
        assert_eq!(samples(&[2.0, 1.0, 3.0]).spread(1), "2.0 (1.0–3.0)");
        assert_eq!(samples(&[2.0]).spread(2), "2.00");
    }

    #[test]
    fn tables_render_as_markdown() {
        let mut table = Table::new(["a", "b"]);
        table.row(["1", "2"]);
        assert_eq!(table.to_string(), "| a | b |\n|---|---|\n| 1 | 2 |");
        assert_eq!(thousands(5_012_345.4), "5,012,345");
        assert_eq!(thousands(999.0), "999");
    }
}
