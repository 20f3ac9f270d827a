//! The BG/NBD model of Fader, Hardie and Lee (2005), "Counting Your Customers the Easy Way": while alive, a customer
//! buys at a Poisson rate λ ~ Gamma(r, α); after each purchase they drop out with probability p ~ Beta(a, b).
//!
//! A customer is summarised by `x`, their repeat purchases (purchases after the first), `t_x`, the time from their
//! first to their last purchase, and `T`, the time from their first purchase to the end of the observation, all in
//! one time unit (days at ingest, weeks in the paper's CDNOW example); α is in that unit too.
//!
//! - The likelihood is the paper's equation (6) in logs, without the hypergeometric function:
//!   `L = B(a, b+x)/B(a, b) · Γ(r+x) α^r / (Γ(r) (α+T)^(r+x)) + [x > 0] B(a+1, b+x-1)/B(a, b) · Γ(r+x) α^r /
//!   (Γ(r) (α+t_x)^(r+x))`, summed as log-sum-exp so that large `x` neither overflows nor underflows.
//! - P(alive) is `1 / (1 + [x > 0] a/(b+x-1) · ((α+T)/(α+t_x))^(r+x))` (Fader, Hardie and Lee's note on P(alive)),
//!   a logistic of a log-ratio here; a customer without a repeat purchase has not had a chance to drop out: 1.
//! - The expected purchases in the next `t` is the paper's equation (10):
//!   `(a+b+x-1)/(a-1) · [1 - ((α+T)/(α+T+t))^(r+x) ₂F₁(r+x, b+x; a+b+x-1; z)] · P(alive)`, `z = t/(α+T+t)`,
//!   with the ₂F₁ of [`hyp2f1`] after Euler's transformation (see there).
//!
//! When every customer drops out with nearly the same probability (data without drop-out heterogeneity, such as
//! the generated sample), the likelihood keeps growing as a, b → ∞ with a/(a+b) → p: the maximum is the limit
//! model in which p is one number ([`Dropout::Homogeneous`]), and that is what is fitted then. Its formulas are
//! the limits of the ones above: `B(a, b+x)/B(a, b) → (1-p)^x`, `a/(b+x-1) → p/(1-p)`, and the expected purchases
//! in the next `t` of a customer with rate λ who is alive are `(1 - e^(-λpt))/p` (each purchase is followed by a
//! drop-out with probability p), which averaged over λ ~ Gamma(r+x, α+T) gives
//! `P(alive) · (1 - ((α+T)/(α+T+pt))^(r+x)) / p`.

use statrs::function::gamma::ln_gamma;

use super::optimize::{self, Estimate};

/// The fitted BG/NBD parameters; α is in the summaries' time unit.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub dropout: Dropout,
}

/// How the drop-out probability after a purchase varies over customers.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Dropout {
    /// p ~ Beta(a, b): the paper's model.
    Beta { a: f64, b: f64 },
    /// The same p for everyone: the limit of Beta(a, b) as a, b → ∞ with a/(a+b) = p.
    Homogeneous { p: f64 },
}

impl Dropout {
    /// ln B(a, b+x)/B(a, b): the log-probability of surviving x purchases.
    fn ln_survive(self, x: f64) -> f64 {
        match self {
            Self::Beta { a, b } => ln_gamma(a + b) + ln_gamma(b + x) - ln_gamma(b) - ln_gamma(a + b + x),
            Self::Homogeneous { p } => x * (-p).ln_1p(),
        }
    }

    /// ln(a/(b+x-1)): the log-odds of dropping out after the x-th purchase rather than surviving it (x > 0).
    fn ln_drop_odds(self, x: f64) -> f64 {
        match self {
            Self::Beta { a, b } => (a / (b + x - 1.0)).ln(),
            Self::Homogeneous { p } => p.ln() - (-p).ln_1p(),
        }
    }
}

/// One customer's purchase history, in one time unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct History {
    /// Repeat purchases: purchases after the first.
    pub x: u32,
    /// First to last purchase.
    pub t_x: f64,
    /// First purchase to the end of the observation.
    pub t: f64,
}

/// Why the model cannot be fitted to some data, before trying.
pub fn unfit_reason(histories: &[History]) -> Option<String> {
    if histories.is_empty() {
        return Some("no purchases: there is no buyer to fit the purchase model to".to_owned());
    }
    if histories.len() < 2 {
        return Some("a single buyer: the purchase model needs several buyers to tell them apart".to_owned());
    }
    if histories.iter().all(|h| h.x == 0) {
        return Some(
            "no buyer bought on a second day: the repeat-purchase and drop-out rates cannot be estimated".to_owned(),
        );
    }
    if histories.iter().any(|h| !(h.t_x >= 0.0 && h.t >= h.t_x && h.t.is_finite())) {
        return Some("a purchase history ends before it starts".to_owned());
    }
    None
}

/// Equal histories, counted once: at ingest, times are whole days, so 100k customers share a few thousand.
struct Grouped {
    /// The distinct repeat counts; the per-count terms of the likelihood are computed once per evaluation.
    counts: Vec<u32>,
    /// Index into `counts`, `t_x`, `T` (scaled), weight.
    rows: Vec<(usize, f64, f64, f64)>,
}

fn group(histories: &[History], scale: f64) -> Grouped {
    let mut sorted: Vec<(u32, u64, u64)> =
        histories.iter().map(|h| (h.x, (h.t_x / scale).to_bits(), (h.t / scale).to_bits())).collect();
    sorted.sort_unstable();
    let mut counts: Vec<u32> = Vec::new();
    let mut rows: Vec<(usize, f64, f64, f64)> = Vec::new();
    let mut previous = None;
    for key in sorted {
        if previous == Some(key) {
            if let Some(last) = rows.last_mut() {
                last.3 += 1.0;
            }
            continue;
        }
        previous = Some(key);
        if counts.last() != Some(&key.0) {
            counts.push(key.0);
        }
        rows.push((counts.len() - 1, f64::from_bits(key.1), f64::from_bits(key.2), 1.0));
    }
    Grouped { counts, rows }
}

fn log_add_exp(a: f64, b: f64) -> f64 {
    let high = a.max(b);
    if high == f64::NEG_INFINITY { high } else { high + ((a - high).exp() + (b - high).exp()).ln() }
}

impl Grouped {
    /// The log-likelihood of all histories under `model`.
    fn log_likelihood(&self, model: &BgNbd) -> f64 {
        let (r, alpha) = (model.r, model.alpha);
        let (ln_r, ln_alpha) = (ln_gamma(r), alpha.ln());
        // Per repeat count: ln Γ(r+x) - ln Γ(r) + ln P(survive x), and the drop-out log-odds for x > 0.
        let per_count: Vec<(f64, f64, f64)> = self
            .counts
            .iter()
            .map(|&x| {
                let x = f64::from(x);
                let common = ln_gamma(r + x) - ln_r + model.dropout.ln_survive(x);
                let drop = if x > 0.0 { model.dropout.ln_drop_odds(x) } else { f64::NEG_INFINITY };
                (common, drop, r + x)
            })
            .collect();
        self.rows
            .iter()
            .map(|&(i, t_x, t, weight)| {
                let (common, drop, rx) = per_count[i];
                let alive = -rx * (alpha + t).ln();
                let dropped = drop - rx * (alpha + t_x).ln();
                weight * (common + r * ln_alpha + log_add_exp(alive, dropped))
            })
            .sum()
    }
}

/// The fit: parameters and log-likelihood, in the histories' time unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fitted {
    pub params: BgNbd,
    pub log_likelihood: f64,
}

/// A and b both beyond this at the boundary: the likelihood grows towards homogeneous drop-out.
const HOMOGENEOUS_AB: f64 = 1e3;

/// Maximum-likelihood fit; `Err` says why there is none (see [`unfit_reason`] and `optimize`).
pub fn fit(histories: &[History]) -> Result<Fitted, String> {
    if let Some(reason) = unfit_reason(histories) {
        return Err(reason);
    }
    // Times are divided by the longest observation, so α is fitted on a scale near 1 whatever the unit.
    let scale = histories.iter().map(|h| h.t).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let grouped = group(histories, scale);
    let beta = |p: &[f64]| BgNbd { r: p[0], alpha: p[1], dropout: Dropout::Beta { a: p[2], b: p[3] } };
    let (model, log_likelihood) = match optimize::maximize(|p| grouped.log_likelihood(&beta(p)), &[1.0; 4]) {
        Estimate::Converged { params, log_likelihood } => (beta(&params), log_likelihood),
        Estimate::AtBoundary { params, log_likelihood: beta_ll }
            if params[2] > HOMOGENEOUS_AB && params[3] > HOMOGENEOUS_AB =>
        {
            // The drop-out probability's odds p/(1-p) are the free parameter, so p stays in (0, 1).
            let homogeneous =
                |p: &[f64]| BgNbd { r: p[0], alpha: p[1], dropout: Dropout::Homogeneous { p: p[2] / (1.0 + p[2]) } };
            let start = [params[0], params[1], params[2] / params[3]];
            match optimize::maximize(|p| grouped.log_likelihood(&homogeneous(p)), &start) {
                // The limit is the supremum only if it is at least as likely as the path towards it.
                Estimate::Converged { params, log_likelihood } if log_likelihood >= beta_ll - 1e-6 * beta_ll.abs() => {
                    (homogeneous(&params), log_likelihood)
                }
                Estimate::NotConverged { reason } => return Err(reason),
                Estimate::Converged { params, .. } | Estimate::AtBoundary { params, .. } => {
                    return Err(Estimate::boundary_reason(&params));
                }
            }
        }
        Estimate::AtBoundary { params, .. } => return Err(Estimate::boundary_reason(&params)),
        Estimate::NotConverged { reason } => return Err(reason),
    };
    let params = BgNbd { alpha: model.alpha * scale, ..model };
    // The likelihood is a density in the x repeat purchase times, so the scaled one is larger by scale^x per
    // customer.
    let repeats: f64 = histories.iter().map(|h| f64::from(h.x)).sum();
    Ok(Fitted { params, log_likelihood: log_likelihood - repeats * scale.ln() })
}

impl BgNbd {
    /// The log-likelihood of `histories`, in their unit.
    pub fn log_likelihood(&self, histories: &[History]) -> f64 {
        group(histories, 1.0).log_likelihood(self)
    }

    /// The probability that the customer has not dropped out by `T`: 1 / (1 + e^L) with the log-odds
    /// L = ln(a/(b+x-1)) + (r+x) ln((α+T)/(α+t_x)); 1 without a repeat purchase.
    pub fn p_alive(&self, h: &History) -> f64 {
        if h.x == 0 {
            return 1.0;
        }
        let x = f64::from(h.x);
        let odds = self.dropout.ln_drop_odds(x) + (self.r + x) * ((self.alpha + h.t) / (self.alpha + h.t_x)).ln();
        1.0 / (1.0 + odds.exp())
    }

    /// The expected purchases in the next `horizon` (in the histories' unit); `None` when the series does not
    /// converge or the parameters make the formula undefined (a = 1).
    pub fn expected_purchases(&self, h: &History, horizon: f64) -> Option<f64> {
        if horizon <= 0.0 {
            return Some(0.0);
        }
        let (r, alpha, x) = (self.r, self.alpha, f64::from(h.x));
        let value = match self.dropout {
            Dropout::Beta { a, b } => {
                let z = horizon / (alpha + h.t + horizon);
                // ((α+T)/(α+T+t))^(r+x) ₂F₁(r+x, b+x; a+b+x-1; z) = (1-z)^(a-1) ₂F₁(a+b-1-r, a-1; a+b+x-1; z).
                let tail = (1.0 - z).powf(a - 1.0) * hyp2f1(a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, z)?;
                (a + b + x - 1.0) / (a - 1.0) * (1.0 - tail)
            }
            Dropout::Homogeneous { p } => -(-(r + x) * (p * horizon / (alpha + h.t)).ln_1p()).exp_m1() / p,
        } * self.p_alive(h);
        (value.is_finite() && value >= 0.0).then_some(value)
    }
}

/// Terms of [`hyp2f1`]'s series before it gives up.
const HYP2F1_MAX_TERMS: usize = 200_000;

/// The Gauss hypergeometric function ₂F₁(a, b; c; z) for 0 ≤ z < 1 by its power series
/// Σ (a)ₙ(b)ₙ/((c)ₙ n!) zⁿ, or `None` when it has not converged within [`HYP2F1_MAX_TERMS`] terms.
///
/// Convergence: the ratio of consecutive terms, ρₙ = (a+n)(b+n)/((c+n)(n+1)) · z = z (1 + (a+b-c-1)/n + O(1/n²)),
/// tends to z < 1: from above when a+b-c-1 > 0 (then it falls towards z once n is past a+b-c-1), from below
/// otherwise. Past that point every later ratio is at most q = max(|ρₙ|, z) < 1, so the rest of the sum is at most
/// |termₙ| · q/(1-q), and the series stops when that bound is below 1e-16 of the sum. The BG/NBD calls it after
/// Euler's transformation, with a = a'+b'-1-r and b = a'-1 small and c = a'+b'+x-1 growing with the purchases,
/// so a frequent buyer's series converges in a few terms instead of first growing to huge terms (as
/// ₂F₁(r+x, b+x; ·) would); z = t/(α+T+t) is below 1 for every finite horizon, and near 1 only for customers
/// observed for a short time against a long horizon, which take a few thousand terms.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    if !((0.0..1.0).contains(&z) && a.is_finite() && b.is_finite() && c.is_finite()) {
        return None;
    }
    let monotone_from = (a + b - c - 1.0).max(0.0);
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 0..HYP2F1_MAX_TERMS {
        let n = n as f64;
        let denominator = (c + n) * (n + 1.0);
        if denominator == 0.0 {
            return None;
        }
        let ratio = (a + n) * (b + n) / denominator * z;
        term *= ratio;
        sum += term;
        let q = ratio.abs().max(z);
        if term == 0.0 || (n > monotone_from && q < 1.0 && term.abs() * q / (1.0 - q) <= 1e-16 * sum.abs()) {
            return sum.is_finite().then_some(sum);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyp2f1_matches_closed_forms() {
        // ₂F₁(1, 1; 2; z) = -ln(1-z)/z; ₂F₁(a, b; b; z) = (1-z)^-a.
        for z in [0.0, 0.1, 0.5, 0.9, 0.99] {
            let expected = if z == 0.0 { 1.0 } else { -(1.0f64 - z).ln() / z };
            let got = hyp2f1(1.0, 1.0, 2.0, z).unwrap();
            assert!((got - expected).abs() <= 1e-12 * expected, "z {z}: {got} vs {expected}");
            let got = hyp2f1(0.7, 2.5, 2.5, z).unwrap();
            let expected = (1.0 - z).powf(-0.7);
            assert!((got - expected).abs() <= 1e-12 * expected, "z {z}: {got} vs {expected}");
        }
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 1.0), None);
    }

    #[test]
    fn euler_form_agrees_with_the_direct_series() {
        // The paper's ₂F₁(r+x, b+x; a+b+x-1; z) (1-z)^(r+x), summed directly, against the transformed series.
        let (r, a, b, x, z) = (0.243, 0.793, 2.426, 3.0, 0.4);
        let direct = (1.0f64 - z).powf(r + x) * hyp2f1(r + x, b + x, a + b + x - 1.0, z).unwrap();
        let euler = (1.0f64 - z).powf(a - 1.0) * hyp2f1(a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, z).unwrap();
        assert!((direct - euler).abs() < 1e-12, "{direct} vs {euler}");
    }

    fn cdnow() -> BgNbd {
        BgNbd { r: 0.243, alpha: 4.414, dropout: Dropout::Beta { a: 0.793, b: 2.426 } }
    }

    #[test]
    fn homogeneous_dropout_is_the_limit_of_the_beta() {
        let (p, k) = (0.3, 2000.0);
        let beta = BgNbd { r: 0.5, alpha: 10.0, dropout: Dropout::Beta { a: p * k, b: (1.0 - p) * k } };
        let limit = BgNbd { dropout: Dropout::Homogeneous { p }, ..beta };
        for h in [History { x: 0, t_x: 0.0, t: 50.0 }, History { x: 4, t_x: 30.0, t: 50.0 }] {
            let (pa, pl) = (beta.p_alive(&h), limit.p_alive(&h));
            let (ea, el) = (beta.expected_purchases(&h, 20.0).unwrap(), limit.expected_purchases(&h, 20.0).unwrap());
            assert!((pa - pl).abs() < 0.002 && (ea - el).abs() < 0.005 * el, "{h:?}: {pa} {pl} {ea} {el}");
            let (la, ll) = (beta.log_likelihood(&[h]), limit.log_likelihood(&[h]));
            assert!((la - ll).abs() < 0.02, "{la} {ll}");
        }
    }

    #[test]
    fn large_frequencies_stay_finite() {
        let model = cdnow();
        let h = History { x: 5_000, t_x: 38.86, t: 38.86 };
        let p = model.p_alive(&h);
        let e = model.expected_purchases(&h, 39.0).unwrap();
        assert!(p > 0.999 && p <= 1.0 && e.is_finite() && e > 1000.0, "{p} {e}");
        let gone = History { x: 5_000, t_x: 1.0, t: 38.86 };
        assert!(model.p_alive(&gone) < 1e-100 && model.expected_purchases(&gone, 39.0).unwrap() < 1e-6);
    }

    #[test]
    fn no_repeat_purchase_is_alive_and_nobody_to_fit_says_why() {
        let model = cdnow();
        assert_eq!(model.p_alive(&History { x: 0, t_x: 0.0, t: 30.0 }), 1.0);
        assert!(fit(&[]).unwrap_err().contains("no purchases"));
        assert!(fit(&[History { x: 3, t_x: 10.0, t: 20.0 }]).unwrap_err().contains("single buyer"));
        let once = vec![History { x: 0, t_x: 0.0, t: 10.0 }, History { x: 0, t_x: 0.0, t: 20.0 }];
        assert!(fit(&once).unwrap_err().contains("second day"));
    }
}
