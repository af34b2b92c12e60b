//! Prometheus metrics of the training runs in this process (an executor's, or `quiver sql`'s),
//! labelled by run folder, at `/metrics` where the process serves one.

use std::sync::LazyLock;

use prometheus::{GaugeVec, IntCounterVec, Opts};
use quiver_engine::metrics::register;

/// Training examples stepped through, counted once per global batch (by worker 0 of a gang).
static EXAMPLES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "quiver_training_examples_total",
            "Training examples stepped through, by run folder",
        ),
        &["run"],
    ))
});

/// The running mean of the current epoch's training loss.
static LOSS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(GaugeVec::new(
        Opts::new(
            "quiver_training_loss",
            "Mean training loss of the current epoch so far, by run folder",
        ),
        &["run"],
    ))
});

/// The running training accuracy of the current epoch.
static ACCURACY: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(GaugeVec::new(
        Opts::new(
            "quiver_training_accuracy",
            "Training accuracy of the current epoch so far, by run folder",
        ),
        &["run"],
    ))
});

/// The epoch being trained.
static EPOCH: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(GaugeVec::new(
        Opts::new(
            "quiver_training_epoch",
            "The epoch being trained, by run folder",
        ),
        &["run"],
    ))
});

/// Records a step of `run`: `examples` more, and the epoch's running loss and accuracy.
pub(super) fn step(run: &str, epoch: usize, examples: u64, loss: f64, accuracy: f64) {
    EXAMPLES.with_label_values(&[run]).inc_by(examples);
    LOSS.with_label_values(&[run]).set(loss);
    ACCURACY.with_label_values(&[run]).set(accuracy);
    EPOCH.with_label_values(&[run]).set(epoch as f64);
}
