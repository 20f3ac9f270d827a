//! Maximum likelihood by Nelder-Mead in log-parameter space, shared by the BG/NBD and Gamma-Gamma fits.
//!
//! Every parameter of both models is positive, so the simplex moves over their logarithms: no bound is ever
//! crossed, and parameters of very different scales (α in days next to r near 0.2) take comparable steps. A
//! Nelder-Mead run can stall on a flat ridge before the optimum, so it is restarted from its best point with a
//! fresh simplex until a restart no longer improves the log-likelihood; a fit that hits the iteration limit, ends
//! on a non-finite value or walks off to a degenerate parameter (outside `e^±LOG_BOUND`) is reported as not
//! converged, and its parameters are never used. The models hand over scale-free parameters (times divided by a
//! typical time, spend by a typical spend), so that bound means the same on every dataset.

use argmin::core::{CostFunction, Executor, State, TerminationReason, TerminationStatus};
use argmin::solver::neldermead::NelderMead;

/// One run stops when the standard deviation of the simplex's negative log-likelihoods falls below this share of
/// the starting one: a log-likelihood is a sum over many customers, whose rounding noise (about 1e-13 of it) an
/// absolute tolerance could never get under.
const SD_TOLERANCE: f64 = 1e-11;
/// Iterations of one run; 4 parameters converge in a few hundred.
const MAX_ITERS: u64 = 5_000;
/// A run is checked every this many iterations: one that has reached the wall by then stops there (see
/// [`Estimate::AtBoundary`]) instead of spending the rest of its iterations against it (a BG/NBD fit heading for
/// homogeneous drop-out spent 98 s there on a 100k-customer sample), and one still on its way goes on from its
/// best point with a fresh simplex.
const CHECK_ITERS: u64 = 250;
/// Restarts from the best point after the first run.
const MAX_RESTARTS: usize = 8;
/// A restart that improves the log-likelihood by less than this (relative) ends the fit.
const RESTART_GAIN: f64 = 1e-9;
/// Scale-free log-parameters beyond ±this (parameters beyond e^±15, 3.3e6) mean the likelihood has no interior
/// maximum: it keeps growing towards a degenerate model.
const LOG_BOUND: f64 = 15.0;
/// The initial simplex: each vertex moves one log-parameter by this much (a factor of about 1.65).
const SIMPLEX_STEP: f64 = 0.5;

/// A maximum-likelihood estimate, or why there is none.
#[derive(Clone, Debug, PartialEq)]
pub enum Estimate {
    Converged {
        params: Vec<f64>,
        log_likelihood: f64,
    },
    /// The likelihood keeps growing towards the edge of the parameter space: `params` is the best point found,
    /// with a parameter at e^±[`LOG_BOUND`]. A model may know the limit it tends to (see `bgnbd::fit`).
    AtBoundary {
        params: Vec<f64>,
        log_likelihood: f64,
    },
    NotConverged {
        reason: String,
    },
}

impl Estimate {
    /// Why a boundary estimate is not a fit, in words.
    pub fn boundary_reason(params: &[f64]) -> String {
        let far = params.iter().copied().fold(1.0, |far: f64, p| if p.ln().abs() > far.ln().abs() { p } else { far });
        format!("a parameter runs off to {far:e}: the likelihood has no maximum inside the model")
    }
}

/// The negative log-likelihood as a function of the log-parameters.
struct LogSpace<F>(F);

impl<F: Fn(&[f64]) -> f64> CostFunction for LogSpace<F> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, log_params: &Self::Param) -> Result<f64, argmin::core::Error> {
        // Outside the box the model is degenerate: the simplex stays inside, and an optimum on its wall is reported
        // as such.
        if log_params.iter().any(|p| p.abs() > LOG_BOUND) {
            return Ok(f64::MAX);
        }
        let params: Vec<f64> = log_params.iter().map(|p| p.exp()).collect();
        let value = -(self.0)(&params);
        // A non-finite likelihood (an overflow far from the optimum) is the worst possible point, not an error, so
        // the simplex moves away from it.
        Ok(if value.is_finite() { value } else { f64::MAX })
    }
}

/// Maximises `log_likelihood` (over positive parameters) from `start`.
pub fn maximize(log_likelihood: impl Fn(&[f64]) -> f64, start: &[f64]) -> Estimate {
    let mut best: Vec<f64> = start.iter().map(|p| p.ln()).collect();
    let mut best_ll = f64::NEG_INFINITY;
    let cost = LogSpace(&log_likelihood);
    let tolerance = match cost.cost(&best) {
        Ok(start) if start < f64::MAX => SD_TOLERANCE * start.abs().max(1.0),
        _ => return Estimate::NotConverged { reason: "the log-likelihood is not finite at the start".to_owned() },
    };
    let (mut restarts, mut run_iters) = (0, 0);
    while restarts <= MAX_RESTARTS {
        let mut simplex = vec![best.clone()];
        for i in 0..best.len() {
            let mut vertex = best.clone();
            vertex[i] += SIMPLEX_STEP;
            simplex.push(vertex);
        }
        let solver = match NelderMead::new(simplex).with_sd_tolerance(tolerance) {
            Ok(solver) => solver,
            Err(e) => return Estimate::NotConverged { reason: e.to_string() },
        };
        let result =
            match Executor::new(LogSpace(&log_likelihood), solver).configure(|s| s.max_iters(CHECK_ITERS)).run() {
                Ok(result) => result,
                Err(e) => return Estimate::NotConverged { reason: format!("the optimiser failed: {e}") },
            };
        let state = result.state();
        let (Some(point), ll) = (state.get_best_param(), -state.get_best_cost()) else {
            return Estimate::NotConverged { reason: "the optimiser returned no point".to_owned() };
        };
        if state.get_termination_status() != &TerminationStatus::Terminated(TerminationReason::SolverConverged) {
            run_iters += CHECK_ITERS;
            let at_wall = point.iter().any(|p| p.abs() > LOG_BOUND - 1.0);
            if run_iters < MAX_ITERS && !at_wall && ll.is_finite() {
                if ll > best_ll {
                    best = point.clone();
                }
                continue;
            }
            // At the wall, or still crawling along a ridge far out (the likelihood's gain there is tiny per step):
            // heading for the edge, not for a maximum inside.
            if ll.is_finite() && point.iter().any(|p| p.abs() > LOG_BOUND / 2.0) {
                return Estimate::AtBoundary { params: point.iter().map(|p| p.exp()).collect(), log_likelihood: ll };
            }
            return Estimate::NotConverged {
                reason: format!("no convergence within {MAX_ITERS} Nelder-Mead iterations"),
            };
        }
        run_iters = 0;
        restarts += 1;
        if !ll.is_finite() || ll <= -f64::MAX {
            return Estimate::NotConverged { reason: "the log-likelihood is not finite at any point".to_owned() };
        }
        let gain = ll - best_ll;
        if ll > best_ll {
            best = point.clone();
            best_ll = ll;
        }
        if gain.is_finite() && gain <= RESTART_GAIN * best_ll.abs().max(1.0) {
            let params = best.iter().map(|p| p.exp()).collect();
            // Within a step of the wall: the maximum is not inside the box.
            if best.iter().any(|p| p.abs() > LOG_BOUND - 1.0) {
                return Estimate::AtBoundary { params, log_likelihood: best_ll };
            }
            return Estimate::Converged { params, log_likelihood: best_ll };
        }
    }
    Estimate::NotConverged { reason: format!("still improving after {MAX_RESTARTS} Nelder-Mead restarts") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_maximum_of_a_smooth_function_of_positive_parameters() {
        // Maximum at (2, 0.1): log-likelihood-like, concave in the logs.
        let ll = |p: &[f64]| -((p[0].ln() - 2f64.ln()).powi(2) + (p[1].ln() - 0.1f64.ln()).powi(2));
        let Estimate::Converged { params, .. } = maximize(ll, &[1.0, 1.0]) else { panic!("no convergence") };
        assert!((params[0] - 2.0).abs() < 1e-3 && (params[1] - 0.1).abs() < 1e-4, "{params:?}");
    }

    /// Regression (issue 23): a BG/NBD likelihood on purchases with the same drop-out probability for everyone
    /// grows towards homogeneous drop-out (a, b -> infinity) and is reported at the wall once the simplex gets there.
    /// A run spent its 5,000 iterations against the wall before: 28,746 evaluations on a 100k-customer sample, 98 s
    /// of an ingest.
    #[test]
    fn a_ridge_to_the_boundary_stops_at_the_wall() {
        use crate::predict::bgnbd::{BgNbd, Dropout, History};
        use rand::{Rng, SeedableRng};
        // 2,000 customers over 365 days: purchase rates ~ Gamma(3, 1/200) a day, drop-out 0.08 after each purchase.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let histories: Vec<History> = (0..2_000)
            .map(|_| {
                let rate: f64 = (0..3).map(|_| -(1.0 - rng.random::<f64>()).ln()).sum::<f64>() / 200.0;
                let first = (rng.random::<f64>() * 365.0).floor();
                let (mut now, mut last, mut x) = (first, first, 0);
                while rng.random::<f64>() >= 0.08 {
                    now += -(1.0 - rng.random::<f64>()).ln() / rate;
                    if now >= 365.0 {
                        break;
                    }
                    (last, x) = (now.floor(), x + 1);
                }
                History { x, t_x: (last - first) / 365.0, t: (365.0 - first) / 365.0 }
            })
            .collect();
        let evaluations = std::cell::Cell::new(0);
        let ll = |p: &[f64]| {
            evaluations.set(evaluations.get() + 1);
            BgNbd { r: p[0], alpha: p[1], dropout: Dropout::Beta { a: p[2], b: p[3] } }.log_likelihood(&histories)
        };
        let estimate = maximize(ll, &[1.0; 4]);
        let Estimate::AtBoundary { params, .. } = &estimate else { panic!("not at the boundary: {estimate:?}") };
        assert!(params[2] > 1e3 && params[3] > 1e3, "{params:?}");
        assert!(evaluations.get() < 2_000, "{} evaluations", evaluations.get());
    }

    #[test]
    fn a_maximum_at_the_boundary_is_not_a_fit() {
        // Increasing in p forever: no interior maximum.
        let ll = |p: &[f64]| -1.0 / p[0];
        let Estimate::AtBoundary { params, .. } = maximize(ll, &[1.0]) else { panic!("not at the boundary") };
        assert!(params[0] > 1e6, "{params:?}");
    }
}
