//! The purchase and spend models against the published CDNOW results: the 2,357-customer CDNOW sample that the
//! `lifetimes` wheel ships (fetched by `scripts/fetch-datasets.sh`, never committed), with the 39-week calibration
//! period of Fader, Hardie and Lee (2005) and time in weeks, and the 39-week holdout after it.
//!
//! Run with `--nocapture` to see the holdout comparison and the calibration table (copied into BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use audience_ingest::predict::bgnbd::{self, BgNbd, Dropout, History};
use audience_ingest::predict::gamma_gamma::{self, Spend};
use audience_ingest::predict::{Buyer, Options, TimeUnit, fit};
use chrono::NaiveDate;

/// Where `scripts/fetch-datasets.sh` puts the CDNOW files.
fn cdnow_dir() -> PathBuf {
    let base =
        std::env::var_os("AUDIENCE_DATASETS_DIR").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("XDG_DATA_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| dirs_home().join(".local/share"))
                .join("audience/datasets")
        });
    base.join("cdnow")
}

fn dirs_home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME"))
}

fn read(name: &str) -> String {
    let path = cdnow_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-datasets.sh (scripts/test.sh does)", path.display()))
}

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y%m%d").unwrap()
}

/// The end of the calibration period (39 weeks from 1997-01-01) and of the holdout (39 weeks more).
fn calibration_end() -> NaiveDate {
    NaiveDate::from_ymd_opt(1997, 9, 30).unwrap()
}
fn holdout_end() -> NaiveDate {
    NaiveDate::from_ymd_opt(1998, 6, 30).unwrap()
}

/// Per customer (the sample's id), the spend of each purchase day: lines of one day are one transaction.
fn transactions() -> BTreeMap<u32, BTreeMap<NaiveDate, f64>> {
    let mut customers: BTreeMap<u32, BTreeMap<NaiveDate, f64>> = BTreeMap::new();
    for line in read("CDNOW_sample.txt").lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (id, date, amount) = (fields[1].parse().unwrap(), day(fields[2]), fields[4].parse::<f64>().unwrap());
        *customers.entry(id).or_default().entry(date).or_default() += amount;
    }
    customers
}

/// One customer's calibration summary in weeks, and their purchase days in the holdout.
struct Customer {
    buyer: Buyer,
    holdout: u32,
}

fn customers() -> Vec<Customer> {
    let weeks = |from: NaiveDate, to: NaiveDate| (to - from).num_days() as f64 / 7.0;
    transactions()
        .into_values()
        .map(|days| {
            let calibration: Vec<(&NaiveDate, &f64)> = days.iter().filter(|(d, _)| **d <= calibration_end()).collect();
            let (first, _) = calibration[0];
            let (last, _) = calibration[calibration.len() - 1];
            let x = calibration.len() as u32 - 1;
            let repeat_spend: f64 = calibration[1..].iter().map(|(_, spend)| **spend).sum();
            let history = History { x, t_x: weeks(*first, *last), t: weeks(*first, calibration_end()) };
            let mean_repeat_spend = if x > 0 { repeat_spend / f64::from(x) } else { 0.0 };
            let holdout = days.keys().filter(|d| **d > calibration_end() && **d <= holdout_end()).count() as u32;
            Customer { buyer: Buyer { history, mean_repeat_spend }, holdout }
        })
        .collect()
}

fn assert_close(name: &str, got: f64, published: f64, tolerance: f64) {
    let error = (got - published).abs() / published.abs();
    assert!(error <= tolerance, "{name}: fitted {got:.4}, published {published}, off by {:.2}%", error * 100.0);
}

/// Our calibration summary of the raw transactions is the one `lifetimes` ships (so the fit below is on the
/// paper's data), and the BG/NBD fit on it gives the published parameters and log-likelihood.
#[test]
fn bgnbd_reproduces_the_published_cdnow_parameters() {
    let customers = customers();
    assert_eq!(customers.len(), 2357);
    let shipped: Vec<Vec<f64>> = read("cdnow_customers_summary.csv")
        .lines()
        .skip(1)
        .map(|line| line.split(',').skip(1).map(|v| v.parse().unwrap()).collect())
        .collect();
    for (ours, theirs) in customers.iter().zip(&shipped) {
        let h = ours.buyer.history;
        assert_eq!(f64::from(h.x), theirs[0]);
        assert!((h.t_x - theirs[1]).abs() < 0.006 && (h.t - theirs[2]).abs() < 0.006, "{h:?} vs {theirs:?}");
    }

    let histories: Vec<History> = customers.iter().map(|c| c.buyer.history).collect();
    let fitted = bgnbd::fit(&histories).unwrap();
    let BgNbd { r, alpha, dropout: Dropout::Beta { a, b } } = fitted.params else { panic!("{:?}", fitted.params) };
    println!(
        "CDNOW BG/NBD: r {r:.4} (published 0.243), alpha {alpha:.4} (4.414), a {a:.4} (0.793), b {b:.4} (2.426), \
         log-likelihood {:.2} (-9582.4)",
        fitted.log_likelihood
    );
    assert_close("r", r, 0.243, 0.01);
    assert_close("alpha", alpha, 4.414, 0.01);
    assert_close("a", a, 0.793, 0.01);
    assert_close("b", b, 2.426, 0.01);
    assert!((fitted.log_likelihood - -9582.4).abs() < 0.1, "log-likelihood {}", fitted.log_likelihood);
    assert!((fitted.params.log_likelihood(&histories) - fitted.log_likelihood).abs() < 1e-6);
}

/// Gamma-Gamma over the repeat buyers' mean spend gives the published p, q, v (v 15.44 in the paper, 15.45 in
/// `lifetimes` 0.11.3); our mean repeat spend is the shipped one.
#[test]
fn gamma_gamma_reproduces_the_published_cdnow_parameters() {
    let customers = customers();
    let shipped: Vec<(u32, f64)> = read("cdnow_customers_summary_with_transactions.csv")
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[1].parse().unwrap(), fields[4].parse().unwrap())
        })
        .collect();
    for (ours, (x, zbar)) in customers.iter().zip(&shipped) {
        assert_eq!(ours.buyer.history.x, *x);
        assert!((ours.buyer.mean_repeat_spend - zbar).abs() < 0.006, "{} vs {zbar}", ours.buyer.mean_repeat_spend);
    }
    let spends: Vec<Spend> = shipped.iter().map(|&(x, m)| Spend { x, m }).collect();
    let fitted = gamma_gamma::fit(&spends).unwrap();
    let gamma_gamma::GammaGamma { p, q, v } = fitted.params;
    println!(
        "CDNOW Gamma-Gamma: p {p:.4} (published 6.25), q {q:.4} (3.74), v {v:.4} (15.44; lifetimes 15.45), \
         log-likelihood {:.2}",
        fitted.log_likelihood
    );
    assert_close("p", p, 6.25, 0.01);
    assert_close("q", q, 3.74, 0.01);
    assert_close("v", v, 15.44, 0.01);
}

/// On the 39-week holdout, the model's expected purchases beat the two rules a marketer would use, and its
/// calibration by repeat-purchase bucket follows the actual purchases (the paper's figure 4).
#[test]
fn bgnbd_beats_simple_rules_on_the_holdout() {
    let customers = customers();
    let report = fit(
        &customers.iter().map(|c| c.buyer).collect::<Vec<_>>(),
        TimeUnit::Weeks,
        Options { horizon_days: 39 * 7, monthly_discount: 0.01 },
    );
    assert!(report.purchases.is_some() && report.spend.is_some(), "{:?}", report.notes);
    let holdout_weeks = 39.0;
    let predicted: Vec<f64> = customers.iter().map(|c| report.predict(&c.buyer).expected_purchases.unwrap()).collect();
    // "Same as last period": as many repeat purchases as in the 39 calibration weeks.
    let same_as_last: Vec<f64> = customers.iter().map(|c| f64::from(c.buyer.history.x)).collect();
    // The recency rule: a customer who bought in the last 90 days (12.86 weeks) keeps buying at their calibration
    // rate; anyone else has churned and buys nothing.
    let recency_rule: Vec<f64> = customers
        .iter()
        .map(|c| {
            let h = c.buyer.history;
            if h.t - h.t_x < 90.0 / 7.0 && h.t > 0.0 { f64::from(h.x) / h.t * holdout_weeks } else { 0.0 }
        })
        .collect();
    let actual: Vec<f64> = customers.iter().map(|c| f64::from(c.holdout)).collect();
    let mae = |guess: &[f64]| guess.iter().zip(&actual).map(|(g, a)| (g - a).abs()).sum::<f64>() / actual.len() as f64;
    let (model, last, recency) = (mae(&predicted), mae(&same_as_last), mae(&recency_rule));
    println!(
        "holdout (weeks 40-78, {} customers): actual {:.0} purchases, BG/NBD predicts {:.1}; MAE per customer: \
         BG/NBD {model:.4}, same as last period {last:.4}, recency rule {recency:.4}",
        actual.len(),
        actual.iter().sum::<f64>(),
        predicted.iter().sum::<f64>()
    );
    assert!(model < last && model < recency, "BG/NBD {model}, same as last period {last}, recency rule {recency}");

    println!("\n| repeat purchases in weeks 1-39 | customers | actual in weeks 40-78 (mean) | BG/NBD (mean) |");
    println!("|---|---|---|---|");
    let mut buckets: BTreeMap<u32, (u32, f64, f64)> = BTreeMap::new();
    for ((c, p), a) in customers.iter().zip(&predicted).zip(&actual) {
        let bucket = buckets.entry(c.buyer.history.x.min(7)).or_default();
        *bucket = (bucket.0 + 1, bucket.1 + a, bucket.2 + p);
    }
    for (x, (n, a, p)) in &buckets {
        let label = if *x == 7 { "7+".to_owned() } else { x.to_string() };
        let (a, p) = (a / f64::from(*n), p / f64::from(*n));
        println!("| {label} | {n} | {a:.2} | {p:.2} |");
        // The paper's figure 4: the conditional expectations follow the actual means (bucket 7+ pools few buyers).
        if *x < 7 {
            assert!((a - p).abs() < 0.35 * a.max(0.2), "bucket {label}: actual {a:.2}, predicted {p:.2}");
        }
    }
}

/// The whole prediction on CDNOW: probabilities in range, CLV positive where the spend is known, and customer 1's
/// P(alive) (x = 2, t_x = 30.43, T = 38.86) as the note's formula gives it by hand with the published parameters:
/// 1 / (1 + 0.793/3.426 · (43.274/34.844)^2.243) = 0.7266.
#[test]
fn predictions_on_cdnow_are_in_range() {
    let customers = customers();
    let report = fit(&customers.iter().map(|c| c.buyer).collect::<Vec<_>>(), TimeUnit::Weeks, Options::default());
    let model = report.purchases.unwrap().params;
    let p = model.p_alive(&History { x: 2, t_x: 30.43, t: 38.86 });
    assert!((p - 0.7266).abs() < 0.003, "P(alive) {p}");
    // The README's worked example: customer 1 (repeat purchases of 22.35 on average) as of 1997-09-30.
    let first = &customers[0].buyer;
    assert_eq!(first.history.x, 2);
    println!("CDNOW customer 1: {first:?}: {:?}", report.predict(first));
    for c in &customers {
        let prediction = report.predict(&c.buyer);
        let p = prediction.p_alive.unwrap();
        assert!((0.0..=1.0).contains(&p));
        assert!(prediction.expected_purchases.unwrap() >= 0.0);
        assert!(prediction.clv.unwrap() >= 0.0 && prediction.expected_avg_spend.unwrap() > 0.0);
    }
}
