//! The measured lift of a campaign: the treatment group against the holdout's control group over the purchases
//! after the campaign date, with a 95% interval, a p-value, plain words, and a return on investment.
//!
//! - Conversion (the share of members with a purchase): the Newcombe hybrid score interval for the difference of two
//!   proportions (Wilson intervals combined; it stays inside [-1, 1] and behaves at rates near 0, where the Wald
//!   interval does not), the pooled two-proportion z-test, and the relative lift from the risk ratio's log interval.
//! - Revenue and orders per member (means of skewed, mostly-zero values): a seeded percentile bootstrap of the
//!   difference and of the ratio, and Welch's z-test for the p-value (the samples are far beyond the size where the
//!   t and normal distributions differ).
//!
//! Everything here is computed from the members' outcomes alone, in memory; the same seed gives the same intervals.

use anyhow::{Result, bail};
use audience_tools::audience::outcomes::Outcome;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};

use crate::campaign::Holdout;

/// What a lift is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// The share of members with at least one purchase.
    Conversion,
    /// Revenue per member.
    Revenue,
    /// Orders per member.
    Orders,
}

/// The level of every test and interval.
pub const ALPHA: f64 = 0.05;
/// The power the smallest detectable lift is given for.
pub const POWER: f64 = 0.8;
/// Bootstrap resamples: the 2.5% and 97.5% percentiles of 2,000 resamples move by well under a tenth of the
/// interval's width from one seed to another.
pub const BOOTSTRAP_RESAMPLES: usize = 2_000;

/// One member in the measured period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub control: bool,
    pub orders: u32,
    pub revenue: f64,
}

impl Observation {
    /// Each member's outcome in the measured period, with the holdout group it falls in.
    pub fn of_members(members: &[Outcome], holdout: &Holdout) -> Vec<Self> {
        members
            .iter()
            .map(|member| Self {
                control: holdout.group(&member.external_id) == "control",
                orders: member.orders,
                revenue: member.revenue,
            })
            .collect()
    }
}

/// The cost of contacting a member and the share of revenue that is profit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Economics {
    pub cost_per_contact: f64,
    pub margin: f64,
}

impl Economics {
    pub fn new(cost_per_contact: f64, margin: f64) -> Result<Self> {
        if !(cost_per_contact.is_finite() && cost_per_contact >= 0.0) {
            bail!("--cost-per-contact takes a non-negative amount, e.g. 0.05");
        }
        if !(margin > 0.0 && margin <= 1.0) {
            bail!("--margin takes the share of revenue that is profit, above 0 and at most 1, e.g. 0.3");
        }
        Ok(Self { cost_per_contact, margin })
    }
}

/// One group's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupStats {
    pub size: u64,
    pub converters: u64,
    pub conversion_rate: f64,
    pub orders: u64,
    pub orders_per_member: f64,
    pub revenue: f64,
    pub revenue_per_member: f64,
}

/// A 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    pub fn contains(&self, value: f64) -> bool {
        self.low <= value && value <= self.high
    }
}

/// The lift in the chosen metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lift {
    pub metric: Metric,
    /// The metric in each group (a rate, or an amount per member).
    pub treatment: f64,
    pub control: f64,
    /// Treatment minus control, and its interval.
    pub absolute: f64,
    pub absolute_interval: Interval,
    /// Treatment over control, minus 1; unknown when the control group has none of it.
    pub relative: Option<f64>,
    pub relative_interval: Option<Interval>,
    pub p_value: f64,
    pub significant: bool,
    /// The smallest absolute lift this size would find with 80% power at the 5% level.
    pub detectable: f64,
    /// How the interval and the p-value were computed.
    pub method: String,
    /// The result in plain words.
    pub verdict: String,
}

/// The campaign's return, from the revenue lift.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Roi {
    pub cost_per_contact: f64,
    pub margin: f64,
    /// The treatment group: the members contacted.
    pub contacts: u64,
    pub cost: f64,
    /// The revenue lift per member times the contacts, and its interval.
    pub incremental_revenue: f64,
    pub incremental_revenue_interval: Interval,
    /// Incremental revenue times the margin, minus the cost.
    pub incremental_profit: f64,
    /// Incremental profit over cost; unknown when the contacts cost nothing.
    pub roi: Option<f64>,
    pub roi_interval: Option<Interval>,
}

/// Both groups, the lift, and the return.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub treatment: GroupStats,
    pub control: GroupStats,
    pub lift: Lift,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roi: Option<Roi>,
}

fn z_critical() -> f64 {
    standard_normal().inverse_cdf(1.0 - ALPHA / 2.0)
}

fn standard_normal() -> Normal {
    // Mean 0 and deviation 1 are valid parameters; the fallback is never taken.
    Normal::new(0.0, 1.0).unwrap_or_else(|_| Normal::standard())
}

/// The two-sided p-value of a z statistic; 1 when there is no spread to test against.
fn p_value(difference: f64, standard_error: f64) -> f64 {
    if standard_error.is_nan() || standard_error <= 0.0 || standard_error.is_infinite() {
        return if difference == 0.0 { 1.0 } else { 0.0 };
    }
    2.0 * (1.0 - standard_normal().cdf((difference / standard_error).abs()))
}

fn stats(values: &[Observation]) -> GroupStats {
    let size = values.len() as u64;
    let converters = values.iter().filter(|o| o.orders > 0).count() as u64;
    let orders: u64 = values.iter().map(|o| u64::from(o.orders)).sum();
    let revenue: f64 = values.iter().map(|o| o.revenue).sum();
    let per = |total: f64| if size == 0 { 0.0 } else { total / size as f64 };
    GroupStats {
        size,
        converters,
        conversion_rate: per(converters as f64),
        orders,
        orders_per_member: per(orders as f64),
        revenue,
        revenue_per_member: per(revenue),
    }
}

/// Compares treatment with control over `observations`; `seed` seeds the bootstrap.
pub fn compare(
    observations: &[Observation],
    metric: Metric,
    seed: u64,
    economics: Option<Economics>,
) -> Result<Comparison> {
    let (control, treatment): (Vec<Observation>, Vec<Observation>) =
        observations.iter().partition(|observation| observation.control);
    if treatment.is_empty() || control.is_empty() {
        bail!(
            "the {} group is empty ({} members in all): nothing to compare",
            if treatment.is_empty() { "treatment" } else { "control" },
            observations.len()
        );
    }
    let (t, c) = (stats(&treatment), stats(&control));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let revenue = |o: &Observation| o.revenue;
    let lift = match metric {
        Metric::Conversion => conversion_lift(&t, &c),
        Metric::Revenue => mean_lift(metric, &treatment, &control, revenue, &mut rng),
        Metric::Orders => mean_lift(metric, &treatment, &control, |o| f64::from(o.orders), &mut rng),
    };
    let roi = economics.map(|economics| {
        let revenue_lift = match metric {
            Metric::Revenue => lift.clone(),
            _ => mean_lift(Metric::Revenue, &treatment, &control, revenue, &mut rng),
        };
        roi(economics, t.size, &revenue_lift)
    });
    Ok(Comparison { treatment: t, control: c, lift, roi })
}

/// The Wilson score interval of `successes` in `trials`.
fn wilson(successes: f64, trials: f64, z: f64) -> (f64, f64) {
    let p = successes / trials;
    let z2 = z * z;
    let denominator = 1.0 + z2 / trials;
    let centre = (p + z2 / (2.0 * trials)) / denominator;
    let half = z * (p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)).sqrt() / denominator;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn conversion_lift(t: &GroupStats, c: &GroupStats) -> Lift {
    let z = z_critical();
    let (xt, nt, xc, nc) = (t.converters as f64, t.size as f64, c.converters as f64, c.size as f64);
    let (pt, pc) = (xt / nt, xc / nc);
    let difference = pt - pc;
    let ((lt, ut), (lc, uc)) = (wilson(xt, nt, z), wilson(xc, nc, z));
    let absolute_interval = Interval {
        low: difference - ((pt - lt).powi(2) + (uc - pc).powi(2)).sqrt(),
        high: difference + ((ut - pt).powi(2) + (pc - lc).powi(2)).sqrt(),
    };
    let pooled = (xt + xc) / (nt + nc);
    let p_value = p_value(difference, (pooled * (1.0 - pooled) * (1.0 / nt + 1.0 / nc)).sqrt());
    let relative = (xc > 0.0).then(|| pt / pc - 1.0);
    let relative_interval = (xt > 0.0 && xc > 0.0).then(|| {
        let spread = z * (1.0 / xt - 1.0 / nt + 1.0 / xc - 1.0 / nc).max(0.0).sqrt();
        let log_ratio = (pt / pc).ln();
        Interval { low: (log_ratio - spread).exp() - 1.0, high: (log_ratio + spread).exp() - 1.0 }
    });
    let power_z = standard_normal().inverse_cdf(POWER);
    let detectable = (z + power_z) * (pc * (1.0 - pc) * (1.0 / nt + 1.0 / nc)).sqrt();
    finish(Lift {
        metric: Metric::Conversion,
        treatment: pt,
        control: pc,
        absolute: difference,
        absolute_interval,
        relative,
        relative_interval,
        p_value,
        significant: p_value < ALPHA,
        detectable,
        method: "Newcombe hybrid score interval; pooled two-proportion z-test".to_owned(),
        verdict: String::new(),
    })
}

fn mean_and_variance(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance =
        if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, variance)
}

fn mean_lift(
    metric: Metric,
    treatment: &[Observation],
    control: &[Observation],
    value: impl Fn(&Observation) -> f64,
    rng: &mut ChaCha8Rng,
) -> Lift {
    let t: Vec<f64> = treatment.iter().map(&value).collect();
    let c: Vec<f64> = control.iter().map(&value).collect();
    let ((mt, vt), (mc, vc)) = (mean_and_variance(&t), mean_and_variance(&c));
    let difference = mt - mc;
    let standard_error = (vt / t.len() as f64 + vc / c.len() as f64).sqrt();
    let p_value = p_value(difference, standard_error);
    let resample_mean = |values: &[f64], rng: &mut ChaCha8Rng| -> f64 {
        let n = values.len();
        (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64
    };
    let mut differences = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut ratios = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        let (bt, bc) = (resample_mean(&t, rng), resample_mean(&c, rng));
        differences.push(bt - bc);
        if bc > 0.0 {
            ratios.push(bt / bc - 1.0);
        }
    }
    let absolute_interval = percentile_interval(&mut differences);
    // A ratio is only an interval when (nearly) every resample has a control mean to divide by.
    let relative_interval = (ratios.len() * 100 >= BOOTSTRAP_RESAMPLES * 99).then(|| percentile_interval(&mut ratios));
    let detectable = (z_critical() + standard_normal().inverse_cdf(POWER)) * standard_error;
    finish(Lift {
        metric,
        treatment: mt,
        control: mc,
        absolute: difference,
        absolute_interval,
        relative: (mc > 0.0).then(|| mt / mc - 1.0),
        relative_interval,
        p_value,
        significant: p_value < ALPHA,
        detectable,
        method: format!("seeded percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples); Welch z-test"),
        verdict: String::new(),
    })
}

/// The 2.5% and 97.5% percentiles.
fn percentile_interval(values: &mut [f64]) -> Interval {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| -> f64 {
        let index = ((values.len() - 1) as f64 * q).round() as usize;
        values[index.min(values.len() - 1)]
    };
    Interval { low: at(ALPHA / 2.0), high: at(1.0 - ALPHA / 2.0) }
}

/// Adds the plain words.
fn finish(mut lift: Lift) -> Lift {
    let (more, unit) = match lift.metric {
        Metric::Conversion => ("converted more", format!("{:.1} points", lift.detectable * 100.0)),
        Metric::Revenue => ("spent more per member", format!("{:.2} per member", lift.detectable)),
        Metric::Orders => ("ordered more per member", format!("{:.3} orders per member", lift.detectable)),
    };
    lift.verdict = match (lift.significant, lift.absolute > 0.0) {
        (true, true) => format!("significant at the 5% level: the treatment group {more} than control"),
        (true, false) => "significant at the 5% level: the treatment group did worse than control".to_owned(),
        (false, _) => format!(
            "not significant at this size: the interval includes no effect (a lift below about {unit} would \
             usually go unseen)"
        ),
    };
    lift
}

fn roi(economics: Economics, contacts: u64, revenue_lift: &Lift) -> Roi {
    let n = contacts as f64;
    let cost = economics.cost_per_contact * n;
    let incremental = revenue_lift.absolute * n;
    let interval = revenue_lift.absolute_interval;
    let profit = |revenue: f64| revenue * economics.margin - cost;
    let over_cost = |revenue: f64| (cost > 0.0).then(|| profit(revenue) / cost);
    Roi {
        cost_per_contact: economics.cost_per_contact,
        margin: economics.margin,
        contacts,
        cost,
        incremental_revenue: incremental,
        incremental_revenue_interval: Interval { low: interval.low * n, high: interval.high * n },
        incremental_profit: profit(incremental),
        roi: over_cost(incremental),
        roi_interval: over_cost(interval.low * n)
            .zip(over_cost(interval.high * n))
            .map(|(low, high)| Interval { low, high }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(control: bool, size: usize, converters: usize, revenue: f64) -> Vec<Observation> {
        (0..size)
            .map(|i| {
                let bought = i < converters;
                Observation { control, orders: u32::from(bought), revenue: if bought { revenue } else { 0.0 } }
            })
            .collect()
    }

    #[test]
    fn conversion_interval_and_p_value_match_published_values() {
        // Newcombe (1998), example (a): 56/70 against 48/80: difference 0.2, hybrid score interval 0.0524 to 0.3339.
        let mut observations = group(false, 70, 56, 10.0);
        observations.extend(group(true, 80, 48, 10.0));
        let comparison = compare(&observations, Metric::Conversion, 1, None).unwrap();
        let lift = &comparison.lift;
        assert!((lift.absolute - 0.2).abs() < 1e-12);
        assert!((lift.absolute_interval.low - 0.0524).abs() < 5e-4, "{:?}", lift.absolute_interval);
        assert!((lift.absolute_interval.high - 0.3339).abs() < 5e-4, "{:?}", lift.absolute_interval);
        // Pooled z = 0.2 / sqrt(0.6933 * 0.3067 * (1/70 + 1/80)) = 2.650: p = 0.0080.
        assert!((lift.p_value - 0.0080).abs() < 2e-4, "{}", lift.p_value);
        assert!(lift.significant && lift.verdict.starts_with("significant at the 5% level"), "{}", lift.verdict);
        assert_eq!((comparison.treatment.size, comparison.control.converters), (70, 48));
    }

    #[test]
    fn no_difference_is_not_significant_and_says_so() {
        let mut observations = group(false, 500, 50, 20.0);
        observations.extend(group(true, 500, 50, 20.0));
        for metric in [Metric::Conversion, Metric::Revenue, Metric::Orders] {
            let lift = compare(&observations, metric, 7, None).unwrap().lift;
            assert_eq!(lift.absolute, 0.0);
            assert!(lift.absolute_interval.contains(0.0), "{metric:?}: {:?}", lift.absolute_interval);
            assert!((lift.p_value - 1.0).abs() < 1e-9, "{metric:?}: {}", lift.p_value);
            assert!(lift.verdict.starts_with("not significant at this size"), "{}", lift.verdict);
        }
    }

    #[test]
    fn the_bootstrap_is_seeded_and_roi_follows_the_revenue_lift() {
        let mut observations = group(false, 1600, 320, 50.0);
        observations.extend(group(true, 1600, 240, 50.0));
        let economics = Economics::new(1.0, 0.5).unwrap();
        let a = compare(&observations, Metric::Revenue, 3, Some(economics)).unwrap();
        let b = compare(&observations, Metric::Revenue, 3, Some(economics)).unwrap();
        assert_eq!(a, b, "the same seed gives the same intervals");
        // Revenue per member 10 against 7.5: +2.5 per member, 4,000 incremental over 1,600 contacts costing 1,600.
        assert!((a.lift.absolute - 2.5).abs() < 1e-9);
        assert!(a.lift.absolute_interval.contains(2.5) && a.lift.absolute_interval.low > 0.0);
        let roi = a.roi.unwrap();
        assert!((roi.incremental_revenue - 4000.0).abs() < 1e-6 && (roi.cost - 1600.0).abs() < 1e-9);
        assert!((roi.roi.unwrap() - 0.25).abs() < 1e-9, "(4000 x 0.5 - 1600) / 1600");
        assert!(roi.roi_interval.unwrap().contains(0.25));
        assert!(compare(&group(true, 10, 1, 1.0), Metric::Conversion, 1, None).is_err(), "no control group");
        assert!(Economics::new(0.1, 0.0).is_err() && Economics::new(-1.0, 0.3).is_err());
    }
}
