//! The Gamma-Gamma spend model (Fader, Hardie and Lee 2005, "RFM and CLV"; Fader and Hardie's note "The
//! Gamma-Gamma Model of Monetary Value"): a customer's transaction values are Gamma(p, ν) around their own mean,
//! and ν ~ Gamma(q, v) across customers. It is fitted to the mean value `m` of each repeat buyer's `x` repeat
//! transactions (the first purchase is left out, as in the paper and `lifetimes`).
//!
//! - The likelihood of one buyer is
//!   `Γ(px+q)/(Γ(px)Γ(q)) · v^q · m^(px-1) · x^(px) / (v + x·m)^(px+q)`.
//! - The expected average spend of a customer given `m` and `x` is the weighted mean
//!   `(1-w) · pv/(q-1) + w · m` with `w = px/(px+q-1)`; with no repeat transaction (x = 0) it is the population
//!   mean `pv/(q-1)`. Both need q > 1 (a finite mean spend), so a fit with q ≤ 1 is not used.

use statrs::function::gamma::ln_gamma;

use super::optimize::{self, Estimate};

/// The fitted Gamma-Gamma parameters; v is in the spend's currency.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GammaGamma {
    pub p: f64,
    pub q: f64,
    pub v: f64,
}

/// A repeat buyer's spend: `x` repeat transactions of mean value `m`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spend {
    pub x: u32,
    pub m: f64,
}

/// The fit: parameters and log-likelihood.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fitted {
    pub params: GammaGamma,
    pub log_likelihood: f64,
}

/// The buyers' spends, scaled, with the per-count terms precomputed.
struct Prepared {
    counts: Vec<u32>,
    /// Index into `counts`, x, ln m, m (scaled), ln x.
    rows: Vec<(usize, f64, f64, f64, f64)>,
}

impl Prepared {
    fn new(spends: &[Spend], scale: f64) -> Self {
        let mut counts: Vec<u32> = spends.iter().map(|s| s.x).collect();
        counts.sort_unstable();
        counts.dedup();
        let rows = spends
            .iter()
            .map(|s| {
                let index = counts.binary_search(&s.x).unwrap_or(0);
                let (x, m) = (f64::from(s.x), s.m / scale);
                (index, x, m.ln(), m, x.ln())
            })
            .collect();
        Self { counts, rows }
    }

    fn log_likelihood(&self, params: &[f64]) -> f64 {
        let (p, q, v) = (params[0], params[1], params[2]);
        let constant = q * v.ln() - ln_gamma(q);
        let per_count: Vec<f64> =
            self.counts.iter().map(|&x| ln_gamma(p * f64::from(x) + q) - ln_gamma(p * f64::from(x))).collect();
        self.rows
            .iter()
            .map(|&(i, x, ln_m, m, ln_x)| {
                let px = p * x;
                per_count[i] + constant + (px - 1.0) * ln_m + px * ln_x - (px + q) * (v + x * m).ln()
            })
            .sum()
    }
}

/// Maximum-likelihood fit over the repeat buyers with a positive mean spend; `Err` says why there is none.
pub fn fit(spends: &[Spend]) -> Result<Fitted, String> {
    let spends: Vec<Spend> = spends.iter().copied().filter(|s| s.x > 0 && s.m > 0.0 && s.m.is_finite()).collect();
    if spends.len() < 2 {
        return Err(format!(
            "{} repeat buyer(s) with a positive spend: the spend model needs at least 2",
            spends.len()
        ));
    }
    // Spend is divided by the mean spend, so v is fitted on a scale near 1 whatever the currency.
    let scale = spends.iter().map(|s| s.m).sum::<f64>() / spends.len() as f64;
    let prepared = Prepared::new(&spends, scale);
    match optimize::maximize(|p| prepared.log_likelihood(p), &[1.0, 1.0, 1.0]) {
        Estimate::Converged { params, log_likelihood, .. } => {
            let params = GammaGamma { p: params[0], q: params[1], v: params[2] * scale };
            if params.q <= 1.0 {
                return Err(format!("q = {:.3} ≤ 1: the fitted spend distribution has no finite mean", params.q));
            }
            // The likelihood is a density in m, so the scaled one is larger by `scale` per buyer.
            Ok(Fitted { params, log_likelihood: log_likelihood - spends.len() as f64 * scale.ln() })
        }
        Estimate::AtBoundary { params, .. } => Err(Estimate::boundary_reason(&params)),
        Estimate::NotConverged { reason } => Err(reason),
    }
}

impl GammaGamma {
    /// The expected value of the customer's transactions given `x` repeat transactions of mean `m` (`m` is
    /// ignored when x = 0).
    pub fn expected_average_spend(&self, x: u32, m: f64) -> f64 {
        let population = self.p * self.v / (self.q - 1.0);
        if x == 0 {
            return population;
        }
        let px = self.p * f64::from(x);
        let weight = px / (px + self.q - 1.0);
        (1.0 - weight) * population + weight * m
    }

    /// The log-likelihood of `spends` (repeat buyers only).
    pub fn log_likelihood(&self, spends: &[Spend]) -> f64 {
        Prepared::new(spends, 1.0).log_likelihood(&[self.p, self.q, self.v])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_spend_shrinks_towards_the_population_mean() {
        let model = GammaGamma { p: 6.25, q: 3.74, v: 15.44 };
        let population = 6.25 * 15.44 / 2.74;
        assert!((model.expected_average_spend(0, 999.0) - population).abs() < 1e-12);
        let one = model.expected_average_spend(1, 100.0);
        let many = model.expected_average_spend(50, 100.0);
        assert!(population < one && one < many && many < 100.0, "{population} {one} {many}");
    }

    #[test]
    fn too_few_repeat_buyers_say_so() {
        assert!(fit(&[Spend { x: 2, m: 10.0 }, Spend { x: 0, m: 0.0 }]).unwrap_err().contains("1 repeat buyer"));
    }
}
