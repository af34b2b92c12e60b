//! Reporting an experiment while it runs: the live table of trials (or log lines).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use quiver_engine::LogSink;

use super::trials::Slot;

use super::records::TrialRecord;
use super::space::Params;
use super::spec::ExperimentSpec;
use crate::ml::{EpochMetrics, MlError, OptionValue};

/// `name=value` pairs of a trial's hyperparameters.
pub fn params_text(params: &Params) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", plain(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value without the quotes SQL puts around strings.
pub fn plain(v: &OptionValue) -> String {
    match v {
        OptionValue::Str(s) => s.clone(),
        OptionValue::Num(n) => format!("{}", (n * 1e10).round() / 1e10),
        other => other.to_string(),
    }
}

/// The live table of trials: one line per trial on a terminal, a log line per event otherwise.
#[derive(Clone)]
pub(super) struct Display {
    multi: MultiProgress,
    header: ProgressBar,
    bars: Arc<Mutex<BTreeMap<String, (ProgressBar, String)>>>,
    terminal: bool,
    metric: String,
    epochs: usize,
    planned: usize,
    finished: Arc<AtomicU64>,
    /// Where lines go instead of stderr (the live table is hidden then).
    log: Option<LogSink>,
}

impl Display {
    pub(super) fn new(spec: &ExperimentSpec, planned: usize, log: Option<LogSink>) -> Self {
        let terminal = log.is_none() && std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let header = multi.add(ProgressBar::new(planned as u64));
        header.set_style(
            ProgressStyle::with_template("experiment {prefix} [{bar:20}] {pos}/{len} trials {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        header.set_prefix(spec.name.clone());
        Self {
            multi,
            header,
            bars: Arc::default(),
            terminal,
            metric: spec.objective.metric.clone(),
            epochs: spec.max_epochs,
            planned,
            finished: Arc::default(),
            log,
        }
    }

    /// One line of the experiment's log, above the live table.
    pub(super) fn line(&self, text: &str) {
        match &self.log {
            Some(sink) => sink(text),
            None => self.multi.suspend(|| eprintln!("{text}")),
        }
    }

    pub(super) fn started(
        &self,
        trial: &str,
        params: &Params,
        slot: &Slot,
        progress: Arc<AtomicU64>,
    ) {
        let text = params_text(params);
        if !self.terminal {
            self.line(&format!("{trial} started on {slot}: {text}"));
            return;
        }
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {prefix} {spinner} {msg} ({pos} examples)")
                .expect("valid template"),
        );
        bar.set_prefix(trial.to_string());
        bar.set_message(format!("running  epoch 1/{} {text}", self.epochs));
        bar.enable_steady_tick(Duration::from_millis(250));
        // Examples of the current epoch, refreshed while the trial runs.
        let ticker = bar.clone();
        tokio::spawn(async move {
            while !ticker.is_finished() {
                ticker.set_position(progress.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        self.bars
            .lock()
            .expect("display lock")
            .insert(trial.to_string(), (bar, text));
    }

    pub(super) fn epoch(&self, trial: &str, m: &EpochMetrics) {
        let value =
            super::spec::metric(m, &self.metric).map_or("-".to_string(), |v| format!("{v:.4}"));
        match self.bars.lock().expect("display lock").get(trial) {
            Some((bar, text)) if self.terminal => bar.set_message(format!(
                "running  epoch {}/{} {} {value} {text}",
                m.epoch + 1,
                self.epochs,
                self.metric
            )),
            _ => self.line(&format!(
                "{trial} epoch {}/{}: {} {value}",
                m.epoch, self.epochs, self.metric
            )),
        }
    }

    pub(super) fn failed_attempt(&self, trial: &str, attempt: usize, error: &MlError) {
        self.line(&format!("{trial} attempt {attempt} failed: {error}"));
    }

    pub(super) fn done_before(&self, record: &TrialRecord) {
        self.line(&format!(
            "{} {} in an earlier run: skipped",
            record.trial,
            record.status.as_str()
        ));
        self.count();
    }

    pub(super) fn finished(&self, record: &TrialRecord) {
        let value = record
            .objective
            .map_or("-".to_string(), |v| format!("{v:.4}"));
        let line = format!(
            "{:<9} {} {value} after {} epoch(s), {:.1}s {}",
            record.status.as_str(),
            self.metric,
            record.history.len(),
            record.finished_at - record.started_at,
            params_text(&record.params)
        );
        match self.bars.lock().expect("display lock").get(&record.trial) {
            Some((bar, _)) if self.terminal => {
                bar.set_style(
                    ProgressStyle::with_template("  {prefix} {msg}").expect("valid template"),
                );
                bar.finish_with_message(line);
            }
            _ => self.line(&format!("{} {line}", record.trial)),
        }
        self.count();
    }

    pub(super) fn count(&self) {
        let done = self.finished.fetch_add(1, Ordering::Relaxed) + 1;
        self.header.set_position(done);
        if !self.terminal {
            self.line(&format!("{done}/{} trials finished", self.planned));
        }
    }

    pub(super) fn finish(&self) {
        self.header.finish();
    }
}
