//! Learning-rate schedules: the rate of every optimizer step of a run, from the step's index
//! alone, so a resumed run takes the steps an uninterrupted one would.

use serde::{Deserialize, Serialize};

/// How the learning rate moves over a run (after any linear warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Half a cosine from the base rate down to zero at the end of the run (Keras's
    /// `CosineDecay`, Hugging Face's `get_cosine_schedule_with_warmup`).
    Cosine,
    /// The base rate times `gamma` every `every` epochs (PyTorch's `StepLR`).
    Step {
        /// Epochs between two decays.
        every: usize,
        /// The factor of each decay.
        gamma: f64,
    },
    /// PyTorch's `OneCycleLR` with its defaults: from base/25 up to the base rate over the
    /// warm-up (30% of the steps unless `warmup_epochs` says) and down to base/25/10⁴ at the
    /// end, both halves cosine.
    OneCycle,
}

impl LrSchedule {
    /// The names `lr_schedule` takes.
    pub const NAMES: &[&str] = &["constant", "cosine", "step", "one_cycle"];
}

/// The rates of one run's steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// The schedule.
    pub schedule: LrSchedule,
    /// The base (peak) rate.
    pub base: f64,
    /// Optimizer steps in one epoch.
    pub steps_per_epoch: usize,
    /// Epochs of the run.
    pub epochs: usize,
    /// Epochs of linear warm-up from zero (may be fractional).
    pub warmup_epochs: f64,
}

/// `one_cycle`'s start is the base rate over this, its end the start over [`FINAL_DIV`].
const DIV: f64 = 25.0;
const FINAL_DIV: f64 = 1e4;
/// `one_cycle`'s rising share of the steps without `warmup_epochs`.
const PCT_START: f64 = 0.3;

/// Cosine interpolation from `from` (at `pct` 0) to `to` (at `pct` 1).
fn cosine(from: f64, to: f64, pct: f64) -> f64 {
    to + (from - to) / 2.0 * (1.0 + (std::f64::consts::PI * pct.clamp(0.0, 1.0)).cos())
}

impl Rates {
    /// Whether the rate changes over the run, so that the schedule needs `steps_per_epoch`.
    pub fn varies(schedule: LrSchedule, warmup_epochs: f64) -> bool {
        schedule != LrSchedule::Constant || warmup_epochs > 0.0
    }

    fn total(&self) -> usize {
        (self.steps_per_epoch * self.epochs).max(1)
    }

    fn warmup(&self) -> usize {
        (self.warmup_epochs * self.steps_per_epoch as f64).round() as usize
    }

    /// The rate of 0-based optimizer step `step` of the run.
    pub fn at(&self, step: usize) -> f64 {
        let (base, total, warmup) = (self.base, self.total(), self.warmup());
        if let LrSchedule::OneCycle = self.schedule {
            // PyTorch counts phases in steps: the peak at step pct * total - 1, the end at the
            // last step.
            let peak = if warmup > 0 {
                warmup as f64 - 1.0
            } else {
                PCT_START * total as f64 - 1.0
            };
            let (start, last) = (base / DIV, (total - 1) as f64);
            let s = step as f64;
            return if s <= peak {
                cosine(start, base, if peak > 0.0 { s / peak } else { 1.0 })
            } else {
                cosine(base, start / FINAL_DIV, (s - peak) / (last - peak).max(1.0))
            };
        }
        if step < warmup {
            return base * step as f64 / warmup as f64;
        }
        match self.schedule {
            LrSchedule::Constant | LrSchedule::OneCycle => base,
            LrSchedule::Cosine => cosine(
                base,
                0.0,
                (step - warmup) as f64 / (total - warmup).max(1) as f64,
            ),
            LrSchedule::Step { every, gamma } => {
                let epoch = step / self.steps_per_epoch.max(1);
                base * gamma.powi((epoch / every.max(1)) as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(schedule: LrSchedule, warmup_epochs: f64) -> Rates {
        Rates {
            schedule,
            base: 0.1,
            steps_per_epoch: 10,
            epochs: 5,
            warmup_epochs,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Keras's CosineDecay(0, decay_steps = 40, warmup_target = 0.1, warmup_steps = 10): zero
    /// at step 0, the base at the end of warm-up, half of it half-way through the decay.
    #[test]
    fn cosine_with_warmup_follows_keras() {
        let r = rates(LrSchedule::Cosine, 1.0);
        assert!(close(r.at(0), 0.0));
        assert!(close(r.at(5), 0.05));
        assert!(close(r.at(10), 0.1));
        assert!(close(r.at(30), 0.05));
        let pct = 39.0 / 40.0;
        assert!(close(
            r.at(49),
            0.05 * (1.0 + (std::f64::consts::PI * pct).cos())
        ));
        assert!(close(rates(LrSchedule::Constant, 0.0).at(49), 0.1));
        assert!(close(rates(LrSchedule::Constant, 0.5).at(2), 0.04));
    }

    #[test]
    fn step_decays_every_n_epochs() {
        let r = rates(
            LrSchedule::Step {
                every: 2,
                gamma: 0.5,
            },
            0.0,
        );
        let per_epoch: Vec<f64> = (0..5).map(|e| r.at(e * 10 + 3)).collect();
        assert_eq!(per_epoch, [0.1, 0.1, 0.05, 0.05, 0.025]);
    }

    /// PyTorch's OneCycleLR(max_lr = 0.1, total_steps = 50): base/25 at step 0, the peak at
    /// step 0.3 * 50 - 1 = 14, base/25/1e4 at step 49, cosine in between.
    #[test]
    fn one_cycle_follows_pytorch() {
        let r = rates(LrSchedule::OneCycle, 0.0);
        assert!(close(r.at(0), 0.004));
        assert!(close(r.at(7), 0.004 + (0.1 - 0.004) / 2.0));
        assert!(close(r.at(14), 0.1));
        assert!(close(r.at(49), 0.004 / 1e4));
        // warmup_epochs places the peak instead of the 30%.
        assert!(close(rates(LrSchedule::OneCycle, 2.0).at(19), 0.1));
    }
}
