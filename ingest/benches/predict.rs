//! `cargo bench -p audience-ingest --bench predict`: the purchase and spend models' fit plus every customer's
//! predictions (p_alive, expected purchases in 90 days, expected spend, 12 monthly steps of CLV), the work ingest
//! adds per ingest, on purchase histories simulated from a BG/NBD and a Gamma-Gamma process (seeded, whole days,
//! as ingest summarises them). Prints one Markdown row per size for BENCHMARKS.md. Purchases of one day merge into
//! one, as at ingest, so the fitted parameters are not exactly the simulated ones (fast buyers lose purchases).

use std::time::Instant;

use audience_ingest::predict::bgnbd::History;
use audience_ingest::predict::{Buyer, Options, TimeUnit, fit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Gamma(shape, scale) by Marsaglia and Tsang (boosted for shape < 1).
fn gamma(rng: &mut ChaCha8Rng, shape: f64, scale: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random();
        return gamma(rng, shape + 1.0, scale) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        // A standard normal by Box-Muller.
        let (u1, u2): (f64, f64) = (rng.random(), rng.random());
        let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let v = (1.0 + c * z).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random();
        if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            return d * v * scale;
        }
    }
}

/// One simulated customer over `days` days: first purchase uniform in the period, purchases at a Gamma(0.25, 1/20)
/// daily rate, a Beta(0.8, 2.4) drop-out after each, spend per purchase Gamma(6, ν) with ν ~ Gamma(3.7, 1/15).
fn customer(rng: &mut ChaCha8Rng, days: f64) -> Buyer {
    let rate = gamma(rng, 0.25, 1.0 / 20.0);
    let (x1, x2) = (gamma(rng, 0.8, 1.0), gamma(rng, 2.4, 1.0));
    let drop = x1 / (x1 + x2);
    let nu = gamma(rng, 3.7, 1.0 / 15.0);
    let first = (rng.random::<f64>() * days).floor();
    let (mut now, mut last, mut x, mut spend) = (first, first, 0u32, 0.0);
    loop {
        if rng.random::<f64>() < drop {
            break;
        }
        now += -(1.0 - rng.random::<f64>()).ln() / rate.max(1e-12);
        if now >= days {
            break;
        }
        // Purchases on one day are one transaction, as ingest counts them.
        if now.floor() > last {
            last = now.floor();
            x += 1;
            spend += gamma(rng, 6.0, 1.0 / nu);
        }
    }
    let history = History { x, t_x: last - first, t: days - first };
    Buyer { history, mean_repeat_spend: if x > 0 { spend / f64::from(x) } else { 0.0 } }
}

fn main() {
    println!("| customers | repeat buyers | fit (s) | predictions (s) | total (s) |");
    println!("|---|---|---|---|---|");
    for customers in [10_000usize, 100_000] {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let buyers: Vec<Buyer> = (0..customers).map(|_| customer(&mut rng, 365.0)).collect();
        let started = Instant::now();
        let report = fit(&buyers, TimeUnit::Days, Options::default());
        let fitted = started.elapsed().as_secs_f64();
        assert!(report.purchases.is_some() && report.spend.is_some(), "{:?}", report.notes);
        let stage = Instant::now();
        let known = buyers.iter().map(|b| report.predict(b)).filter(|p| p.clv.is_some()).count();
        let predicted = stage.elapsed().as_secs_f64();
        assert_eq!(known, customers);
        println!(
            "| {customers} | {} | {fitted:.2} | {predicted:.2} | {:.2} |",
            report.repeat_buyers,
            started.elapsed().as_secs_f64()
        );
        eprintln!("{}", report.lines().join("\n"));
    }
}
