//! Asynchronous successive halving (ASHA): which trials go on at each rung.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::spec::{AshaSettings, Objective};
use crate::ml::EpochMetrics;

/// Asynchronous successive halving: at each rung (`grace_period * reduction_factor^k`
/// epochs) a trial goes on only if its objective is at least the `1 - 1/reduction_factor`
/// quantile of the values recorded at that rung before it. Decisions depend on the order
/// trials reach a rung, as in every asynchronous scheduler.
#[derive(Debug, Clone)]
pub struct Asha {
    pub(super) rungs: Vec<usize>,
    reduction_factor: usize,
    objective: Objective,
    recorded: Arc<Mutex<BTreeMap<usize, Vec<f64>>>>,
}

impl Asha {
    /// Rungs below `max_epochs`.
    pub fn new(settings: AshaSettings, max_epochs: usize, objective: Objective) -> Self {
        let mut rungs = Vec::new();
        let mut epoch = settings.grace_period;
        while epoch < max_epochs {
            rungs.push(epoch);
            epoch *= settings.reduction_factor;
        }
        Self {
            rungs,
            reduction_factor: settings.reduction_factor,
            objective,
            recorded: Arc::default(),
        }
    }

    /// Records an epoch's result; `false` stops the trial.
    pub fn report(&self, m: &EpochMetrics) -> bool {
        let Some(value) = self.objective.value(m) else {
            return true;
        };
        if !self.rungs.contains(&m.epoch) {
            return true;
        }
        let score = self.objective.score(value);
        let mut recorded = self.recorded.lock().expect("asha lock");
        let rung = recorded.entry(m.epoch).or_default();
        let keep = quantile(rung, 1.0 - 1.0 / self.reduction_factor as f64)
            .is_none_or(|cutoff| score >= cutoff);
        rung.push(score);
        keep
    }

    /// Records the rungs a trial of an earlier run passed.
    pub fn replay(&self, history: &[EpochMetrics]) {
        for m in history {
            self.report(m);
        }
    }
}

/// The `q` quantile of `values` with linear interpolation (numpy's default); `None` if empty.
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert!((quantile(&[1.0, 2.0], 2.0 / 3.0).unwrap() - 1.6666667).abs() < 1e-6);
    }
}
