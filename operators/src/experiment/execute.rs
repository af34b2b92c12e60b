//! Running one trial of an experiment: its `params.json`, its attempts on a slot (a failed one
//! retried from the last checkpoint), the training hooks that report its epochs to the display
//! and to ASHA, and the record of how it ended.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::FutureExt;

use super::display::params_text;
use super::hparams::session_start;
use super::records::{TrialParams, TrialRecord, TrialStatus};
use super::runner::Runner;
use super::trials::{Slot, TrialOutput, TrialTask};
use crate::ml::runs::RunLog;
use crate::ml::{EpochMetrics, MlError, TrainHooks};
use quiver_engine::err;
use quiver_engine::time::unix_now;

impl Runner {
    /// Writes a trial's `params.json` unless it holds these parameters already.
    pub(super) async fn write_params(&self, trial: &TrialParams) -> Result<(), MlError> {
        if self.exp.params(&trial.trial).await?.as_ref() != Some(trial) {
            let path = self.exp.trial_dir(&trial.trial).clone().join("params.json");
            self.exp.write_json(&path, trial).await?;
        }
        Ok(())
    }

    /// Runs one trial to its end, retrying failed attempts from the last checkpoint.
    pub(super) async fn run_trial(
        &self,
        slot: &Slot,
        trial: TrialParams,
    ) -> Result<TrialRecord, MlError> {
        let dir = self.exp.trial_dir(&trial.trial);
        let run_url = self.exp.trial_url(&trial.trial)?;
        let log = RunLog::open(&self.exp.store, dir.clone().join("log.txt")).await?;
        let following = log.follow();
        let mut options = self.spec.fixed.clone();
        options.extend(trial.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        let task = TrialTask {
            experiment: self.spec.name.clone(),
            trial: trial.trial.clone(),
            model_type: self.spec.model_type.clone(),
            options,
            query: self.spec.query.clone(),
            run_url: run_url.to_string(),
        };
        let started_at = unix_now();
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            log.line(&format!(
                "attempt {attempt} on {slot}: {}",
                params_text(&trial.params)
            ));
            log.flush().await?;
            let progress = Arc::new(AtomicU64::new(0));
            self.display
                .started(&trial.trial, &trial.params, slot, Arc::clone(&progress));
            let hooks = self.hooks(&trial, Arc::clone(&log), progress, started_at);
            let runner = Arc::clone(&self.trial_runner);
            let (slot_c, task_c) = (slot.clone(), task.clone());
            let handle =
                tokio::spawn(async move { runner.run_trial(&slot_c, &task_c, hooks).await });
            let result = match self.spec.trial_timeout {
                Some(seconds) => {
                    let abort = handle.abort_handle();
                    match tokio::time::timeout(Duration::from_secs_f64(seconds), handle).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            abort.abort();
                            Ok(Err(err!(
                                MlError::Training,
                                "the attempt ran past trial_timeout ({seconds} s)"
                            )))
                        }
                    }
                }
                None => handle.await,
            };
            let result = result.unwrap_or_else(|e| {
                let why = match e.try_into_panic() {
                    Ok(panic) => panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into()),
                    Err(e) => e.to_string(),
                };
                Err(err!(MlError::Training, "the trial crashed: {why}"))
            });
            match result {
                Ok(output) => break Ok(output),
                Err(e) => {
                    log.line(&format!("attempt {attempt} failed: {e}"));
                    self.display.failed_attempt(&trial.trial, attempt, &e);
                    if attempt > self.spec.max_retries {
                        break Err(e);
                    }
                }
            }
        };
        drop(following);
        let record = self.record(&trial, slot, attempt, started_at, outcome);
        log.line(&format!(
            "{}: {} {}",
            record.status.as_str(),
            self.spec.objective.metric,
            record
                .objective
                .map_or("-".to_string(), |v| format!("{v:.4}"))
        ));
        log.flush().await?;
        self.exp
            .write_json(&dir.clone().join("result.json"), &record)
            .await?;
        self.display.finished(&record);
        Ok(record)
    }

    fn hooks(
        &self,
        trial: &TrialParams,
        log: Arc<RunLog>,
        progress: Arc<AtomicU64>,
        started_at: f64,
    ) -> TrainHooks {
        let sink_log = Arc::clone(&log);
        let asha = self.asha.clone();
        let display = self.display.clone();
        let id = trial.trial.clone();
        TrainHooks {
            log: Some(Arc::new(move |line: &str| sink_log.line(line))),
            transcript: None,
            on_epoch: Some(Arc::new(move |m: EpochMetrics| {
                display.epoch(&id, &m);
                let keep = asha.as_ref().is_none_or(|a| a.report(&m));
                if !keep {
                    log.line(&format!(
                        "ASHA: below the rung's cutoff after epoch {}",
                        m.epoch
                    ));
                }
                async move { keep }.boxed()
            })),
            progress: Some(progress),
            threads: None,
            summaries: vec![session_start(&trial.params, &trial.trial, started_at)],
            collective: None,
        }
    }

    fn record(
        &self,
        trial: &TrialParams,
        slot: &Slot,
        attempts: usize,
        started_at: f64,
        outcome: Result<TrialOutput, MlError>,
    ) -> TrialRecord {
        let (status, history, error, model) = match outcome {
            Ok(out) => (
                if out.stopped_by_scheduler {
                    TrialStatus::Stopped
                } else {
                    TrialStatus::Completed
                },
                out.history,
                None,
                out.model,
            ),
            Err(e) => (TrialStatus::Failed, Vec::new(), Some(e.to_string()), None),
        };
        let last = history.last();
        TrialRecord {
            trial: trial.trial.clone(),
            generation: trial.generation,
            params: trial.params.clone(),
            status,
            objective: last.and_then(|m| self.spec.objective.value(m)),
            checkpoint: last.map(|m| {
                format!(
                    "{}trials/{}/checkpoints/epoch-{:04}/",
                    self.exp.url, trial.trial, m.epoch
                )
            }),
            history,
            attempts,
            started_at,
            finished_at: unix_now(),
            slot: slot.to_string(),
            error,
            model,
        }
    }
}
