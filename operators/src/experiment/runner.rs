//! Scheduling an experiment: proposes trials (grid, random, differential evolution), runs them
//! on a trial runner's slots ([`super::execute`] runs each, retrying failures from their last
//! checkpoint), stops poor ones early with ASHA ([`super::asha`]), writes the records
//! ([`super::records`]) to the shared store as it happens, reports progress
//! ([`super::display`]), and registers the best trial's model.
//!
//! Layout under `<store>/experiments/<name>/`: `experiment.json` (spec and status),
//! `events.out.tfevents.*` (the HParams plugin's experiment summary) and per trial
//! `trials/<trial>/{params.json, log.txt, checkpoints/, metrics.jsonl, events.out.tfevents.*,
//! weights.safetensors, result.json}`, `result.json` written last.

use std::collections::VecDeque;
use std::sync::Arc;

use quiver_engine::Session;

use super::trials::{LocalTrialRunner, Slot, TRIAL_WEIGHTS, TrialRunner};
use quiver_engine::store::objects::{get_bytes, put_bytes};
use quiver_engine::time::unix_now;

use super::asha::Asha;
use super::display::Display;
use super::hparams::{HParamDomain, experiment_summary};
use super::records::{
    ExperimentDir, ExperimentFile, ExperimentReport, Experiments, TrialParams, TrialRecord,
    TrialStatus, best_trial,
};
use super::space::{DifferentialEvolution, Domain, Params};
use super::spec::{ExperimentBuilder, ExperimentSpec, Search};
use crate::ml::events::EventFile;
use crate::ml::{MlError, ModelCard, OptionValue, registry};
use quiver_engine::{bail, err};

/// Runs (or resumes) `spec` on `runner`'s slots and registers the best trial's model.
pub async fn run_experiment(
    spec: &ExperimentSpec,
    session: &Session,
    runner: Arc<dyn TrialRunner>,
) -> Result<ExperimentReport, MlError> {
    let exp = Experiments::new(session)?.dir(&spec.name)?;
    let mut file = match exp.file().await? {
        Some(stored) => {
            if stored.model_type != spec.model_type
                || stored.options != spec.options
                || stored.query != spec.query
            {
                bail!(
                    MlError::Exists,
                    "experiment '{}' exists at {} with other options or another query: give the \
                     new one another name (re-running the same statement resumes it)",
                    spec.name,
                    exp.url
                );
            }
            ExperimentFile {
                status: "running".into(),
                updated_at: unix_now(),
                ..stored
            }
        }
        None => ExperimentFile {
            name: spec.name.clone(),
            model_type: spec.model_type.clone(),
            options: spec.options.clone(),
            query: spec.query.clone(),
            status: "running".into(),
            objective: spec.objective.clone(),
            trials_finished: 0,
            best_trial: None,
            best_value: None,
            model: None,
            created_at: unix_now(),
            updated_at: unix_now(),
            quiver_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    };
    exp.write_json(&exp.path("experiment.json"), &file).await?;
    write_experiment_summary(&exp, spec, file.created_at).await?;
    let slots: Vec<Slot> = runner
        .slots()
        .into_iter()
        .take(spec.max_parallel_trials)
        .collect();
    if slots.is_empty() {
        return Err(MlError::Training(
            "the trial runner offers no slots to run trials on".into(),
        ));
    }
    // Grid and random search propose every trial up front; evolution breeds each generation
    // from the results of the one before.
    let (planned, upfront) = match &spec.search {
        Search::Grid => {
            let proposals = spec.space.grid().map_err(MlError::Option)?;
            (proposals.len(), proposals)
        }
        Search::Random { trials, seed } => (*trials, spec.space.random(*trials, *seed)),
        Search::Evolutionary { de, generations } => (de.population * generations, Vec::new()),
    };
    let runner = Arc::new(Runner {
        spec: spec.clone(),
        exp: exp.clone(),
        trial_runner: runner,
        asha: spec
            .asha
            .map(|s| Asha::new(s, spec.max_epochs, spec.objective.clone())),
        display: Display::new(spec, planned, session.log_sink().cloned()),
    });
    runner.display.line(&format!(
        "experiment {}: {planned} trials on {} slot(s) [{}], results in {}",
        spec.name,
        slots.len(),
        slots
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        exp.url
    ));
    let trials = match &spec.search {
        Search::Evolutionary { de, generations } => {
            Arc::clone(&runner).evolve(de, *generations, &slots).await?
        }
        Search::Grid | Search::Random { .. } => {
            Arc::clone(&runner).run_batch(0, 0, upfront, &slots).await?
        }
    };
    runner.display.finish();
    let best = best_trial(&trials, &spec.objective);
    file.trials_finished = trials.len();
    file.best_trial = best.map(|b| b.trial.clone());
    file.best_value = best.and_then(|b| b.objective);
    if spec.register_model
        && let Some(card) = best.and_then(|b| b.model.clone())
    {
        let best = best.expect("has a model");
        file.model = Some(register_best(session, &exp, best, card, &spec.name).await?);
    }
    file.status = if best.is_some() {
        "completed".into()
    } else {
        "failed".into()
    };
    file.updated_at = unix_now();
    exp.write_json(&exp.path("experiment.json"), &file).await?;
    Ok(ExperimentReport {
        file,
        trials,
        url: exp.url.to_string(),
    })
}

/// Registers the best trial's model under `name`, once: a resumed experiment finds the version
/// it registered before.
async fn register_best(
    session: &Session,
    exp: &ExperimentDir,
    best: &TrialRecord,
    mut card: ModelCard,
    name: &str,
) -> Result<String, MlError> {
    let registry = registry(session)?;
    for version in registry.versions(name).await? {
        let (existing, _) = registry.load(name, Some(version)).await?;
        if existing.run == card.run {
            return Ok(registry.version_url(name, version));
        }
    }
    let weights_path = exp.trial_dir(&best.trial).clone().join(TRIAL_WEIGHTS);
    let weights = get_bytes(&exp.store, &weights_path).await?.ok_or_else(|| {
        err!(
            MlError::Checkpoint,
            "{}trials/{}/{TRIAL_WEIGHTS} is missing",
            exp.url,
            best.trial
        )
    })?;
    card.name = name.to_string();
    let card = registry.register(card, weights).await?;
    session.log(&format!(
        "registered the best trial {} as model {} version {}",
        best.trial, card.name, card.version
    ));
    Ok(registry.version_url(&card.name, card.version))
}

/// The HParams plugin's experiment summary at the experiment's root (same content on resume).
async fn write_experiment_summary(
    exp: &ExperimentDir,
    spec: &ExperimentSpec,
    created: f64,
) -> Result<(), MlError> {
    let hparams: Vec<(String, HParamDomain)> = spec
        .space
        .domains()
        .map(|(name, domain)| {
            let domain = match domain {
                Domain::Choice(values) => HParamDomain::Discrete(values.clone()),
                Domain::Uniform { low, high } | Domain::LogUniform { low, high } => {
                    HParamDomain::Interval(*low, *high)
                }
                Domain::Int { low, high } => HParamDomain::Interval(*low as f64, *high as f64),
            };
            (name.clone(), domain)
        })
        .collect();
    let validation = spec.options.iter().any(|(k, _)| k == "validation_query");
    let mut metrics = vec!["epoch_accuracy", "epoch_loss"];
    if validation {
        metrics.extend(["val_accuracy", "val_loss"]);
    }
    let summary = experiment_summary(
        &spec.name,
        &format!("{} search over {}", spec.model_type, spec.query),
        created,
        &hparams,
        &metrics,
    );
    let mut events = EventFile::new(created);
    events.plugin_summary(created, 0, &summary);
    let path = exp.path(&format!("events.out.tfevents.{}.quiver", created as u64));
    Ok(put_bytes(&exp.store, &path, events.bytes().to_vec()).await?)
}

/// What every trial task shares.
pub(super) struct Runner {
    pub(super) spec: ExperimentSpec,
    pub(super) exp: ExperimentDir,
    pub(super) trial_runner: Arc<dyn TrialRunner>,
    pub(super) asha: Option<Asha>,
    pub(super) display: Display,
}

impl Runner {
    /// Runs `proposals` as trials `first..`, at most one per slot at a time; trials that
    /// finished in an earlier run are read back instead.
    async fn run_batch(
        self: Arc<Self>,
        generation: usize,
        first: usize,
        proposals: Vec<Params>,
        slots: &[Slot],
    ) -> Result<Vec<TrialRecord>, MlError> {
        let mut records: Vec<Option<TrialRecord>> = vec![None; proposals.len()];
        let mut queue = VecDeque::new();
        for (i, params) in proposals.into_iter().enumerate() {
            let trial = format!("trial-{:04}", first + i);
            match self.exp.result(&trial).await? {
                Some(done) if done.status != TrialStatus::Failed && done.params == params => {
                    if let Some(asha) = &self.asha {
                        asha.replay(&done.history);
                    }
                    self.display.done_before(&done);
                    records[i] = Some(done);
                }
                _ => {
                    let trial = TrialParams {
                        trial,
                        generation,
                        params,
                    };
                    // Every trial of the batch is visible (as pending) before it starts.
                    self.write_params(&trial).await?;
                    queue.push_back((i, trial));
                }
            }
        }
        let mut free: Vec<Slot> = slots.iter().rev().cloned().collect();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while !free.is_empty() && !queue.is_empty() {
                let slot = free.pop().expect("checked");
                let (i, trial) = queue.pop_front().expect("checked");
                let runner = Arc::clone(&self);
                running.spawn(async move {
                    let record = runner.run_trial(&slot, trial).await;
                    (slot, i, record)
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (slot, i, record) =
                joined.map_err(|e| err!(MlError::Training, "a trial task failed: {e}"))?;
            free.push(slot);
            records[i] = Some(record?);
        }
        Ok(records
            .into_iter()
            .map(|r| r.expect("every trial ran"))
            .collect())
    }

    /// Differential evolution: a random first generation, then children bred from the best
    /// members so far, each replacing its parent when it scores at least as well.
    async fn evolve(
        self: Arc<Self>,
        de: &DifferentialEvolution,
        generations: usize,
        slots: &[Slot],
    ) -> Result<Vec<TrialRecord>, MlError> {
        let objective = self.spec.objective.clone();
        let score = |r: &TrialRecord| {
            r.objective
                .map_or(f64::NEG_INFINITY, |v| objective.score(v))
        };
        let first = Arc::clone(&self)
            .run_batch(0, 0, de.initial(&self.spec.space), slots)
            .await?;
        let mut members: Vec<(Params, f64)> =
            first.iter().map(|r| (r.params.clone(), score(r))).collect();
        let mut all = first;
        for generation in 1..generations {
            let parents: Vec<Params> = members.iter().map(|(p, _)| p.clone()).collect();
            let children = de.breed(&self.spec.space, &parents, generation as u64);
            let records = Arc::clone(&self)
                .run_batch(generation, generation * de.population, children, slots)
                .await?;
            let scored: Vec<(Params, f64)> = records
                .iter()
                .map(|r| (r.params.clone(), score(r)))
                .collect();
            members = DifferentialEvolution::select(&members, &scored);
            let best = members
                .iter()
                .map(|(_, s)| *s)
                .fold(f64::NEG_INFINITY, f64::max);
            self.display.line(&format!(
                "generation {generation}: best {} {:.4}",
                objective.metric,
                objective.score(best)
            ));
            all.extend(records);
        }
        Ok(all)
    }
}

impl ExperimentBuilder {
    /// Runs (or resumes) the experiment over `query` on this process's trial runner: one slot per
    /// parallel trial on the `device` option's device.
    pub async fn run(&self, session: &Session, query: &str) -> Result<ExperimentReport, MlError> {
        let spec = self.build(query)?;
        let device = match spec.fixed.iter().find(|(k, _)| k == "device") {
            Some((_, OptionValue::Str(d))) => d.clone(),
            _ => "cpu".to_string(),
        };
        let runner = LocalTrialRunner::new(session.clone(), spec.max_parallel_trials, &device)?;
        self.run_on(session, query, Arc::new(runner)).await
    }

    /// Runs (or resumes) the experiment over `query` on `runner`'s slots (a cluster's).
    pub async fn run_on(
        &self,
        session: &Session,
        query: &str,
        runner: Arc<dyn TrialRunner>,
    ) -> Result<ExperimentReport, MlError> {
        let spec = self.build(query)?;
        session.sql(query).await.map_err(|e| {
            err!(
                MlError::Option,
                "the training query of experiment {} does not plan: {e}",
                spec.name
            )
        })?;
        run_experiment(&spec, session, runner).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use crate::experiment::trials::{TrialOutput, TrialTask};
    use crate::ml::{EpochMetrics, TrainHooks};

    use crate::experiment::spec::{AshaSettings, Objective};

    use async_trait::async_trait;
    use quiver_engine::SessionOptions;

    /// A trial runner whose "training" scores a known function of the hyperparameters, so that
    /// the optimum is known; it can fail or hang chosen trials.
    struct KnownOptimum {
        slots: usize,
        fail_first_attempt: Vec<String>,
        always_fail: Vec<String>,
        hang: Vec<String>,
        attempts: Mutex<BTreeMap<String, usize>>,
    }

    impl KnownOptimum {
        fn new(slots: usize) -> Self {
            Self {
                slots,
                fail_first_attempt: Vec::new(),
                always_fail: Vec::new(),
                hang: Vec::new(),
                attempts: Mutex::default(),
            }
        }
    }

    fn num(params: &[(String, OptionValue)], key: &str) -> f64 {
        match params.iter().rev().find(|(k, _)| k == key) {
            Some((_, OptionValue::Num(n))) => *n,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[async_trait]
    impl TrialRunner for KnownOptimum {
        fn slots(&self) -> Vec<Slot> {
            (0..self.slots)
                .map(|index| Slot {
                    index,
                    device: "cpu".into(),
                    threads: 1,
                })
                .collect()
        }

        async fn run_trial(
            &self,
            _slot: &Slot,
            task: &TrialTask,
            hooks: TrainHooks,
        ) -> Result<TrialOutput, MlError> {
            let attempt = {
                let mut attempts = self.attempts.lock().unwrap();
                let n = attempts.entry(task.trial.clone()).or_default();
                *n += 1;
                *n
            };
            if self.always_fail.contains(&task.trial) {
                return Err(MlError::Training("this trial always fails".into()));
            }
            if attempt == 1 && self.fail_first_attempt.contains(&task.trial) {
                panic!("simulated crash of {}", task.trial);
            }
            if self.hang.contains(&task.trial) {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            // The optimum: learning_rate 0.004, dropout 0.35, where accuracy is 1.
            let lr = num(&task.options, "learning_rate");
            let dropout = num(&task.options, "dropout");
            let accuracy = 1.0 - ((lr - 0.004) / 0.01).powi(2) - (dropout - 0.35).powi(2);
            let epochs = num(&task.options, "epochs") as usize;
            let mut history = Vec::new();
            for e in 1..=epochs {
                let m = epoch(e, accuracy * e as f64 / epochs as f64);
                history.push(m.clone());
                if let Some(hook) = &hooks.on_epoch
                    && e < epochs
                    && !hook(m).await
                {
                    return Ok(TrialOutput {
                        history,
                        evaluation: None,
                        stopped_by_scheduler: true,
                        model: None,
                    });
                }
            }
            Ok(TrialOutput {
                history,
                evaluation: None,
                stopped_by_scheduler: false,
                model: None,
            })
        }
    }

    fn memory_session(name: &str) -> Session {
        Session::try_new(SessionOptions {
            default_store: format!("memory://{name}/"),
            ..Default::default()
        })
        .unwrap()
    }

    fn experiment(options: &[(&str, OptionValue)]) -> ExperimentSpec {
        let mut b = ExperimentBuilder::new("exp", "dnn_classifier").unwrap();
        for (k, v) in options {
            b.set(k, v.clone()).unwrap();
        }
        b.build("SELECT 1").unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evolution_improves_towards_the_known_optimum() {
        let spec = experiment(&[
            ("learning_rate", OptionValue::from("uniform(0.0001, 0.01)")),
            ("dropout", OptionValue::from("uniform(0, 0.9)")),
            ("epochs", OptionValue::from(1)),
            ("search", OptionValue::from("evolutionary")),
            ("population", OptionValue::from(8)),
            ("generations", OptionValue::from(12)),
            ("search_seed", OptionValue::from(7)),
            ("max_parallel_trials", OptionValue::from(2)),
        ]);
        let session = memory_session("evolution");
        let report = run_experiment(&spec, &session, Arc::new(KnownOptimum::new(2)))
            .await
            .unwrap();
        assert_eq!(report.trials.len(), 96);
        let best_of = |generation: usize| {
            report
                .trials
                .iter()
                .filter(|t| t.generation <= generation)
                .filter_map(|t| t.objective)
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let first = best_of(0);
        let last = best_of(11);
        assert!(last > first, "no improvement: {first} -> {last}");
        assert!(last > 0.97, "best {last} is far from the optimum 1.0");
        // Children of later generations are better on average: the population converges.
        let mean_of = |generation: usize| {
            let values: Vec<f64> = report
                .trials
                .iter()
                .filter(|t| t.generation == generation)
                .filter_map(|t| t.objective)
                .collect();
            values.iter().sum::<f64>() / values.len() as f64
        };
        assert!(
            mean_of(11) > mean_of(0) + 0.05,
            "{} -> {}",
            mean_of(0),
            mean_of(11)
        );
        assert_eq!(report.file.status, "completed");
        assert_eq!(report.file.best_value, Some(last));
        // Everything is in the store: params and result of every trial.
        let exp = Experiments::new(&session).unwrap().dir("exp").unwrap();
        assert_eq!(exp.trial_ids().await.unwrap().len(), 96);
        let stored = exp.result("trial-0095").await.unwrap().unwrap();
        assert_eq!(stored.generation, 11);
        assert!(exp.log("trial-0095").await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_trials_retry_and_never_stop_the_others() {
        let spec = experiment(&[
            ("learning_rate", OptionValue::from(vec![0.001, 0.004])),
            ("dropout", OptionValue::from(vec![0.2, 0.35])),
            ("epochs", OptionValue::from(2)),
            ("max_parallel_trials", OptionValue::from(2)),
            ("max_retries", OptionValue::from(1)),
            ("trial_timeout", OptionValue::from(2)),
        ]);
        let mut runner = KnownOptimum::new(2);
        runner.fail_first_attempt = vec!["trial-0001".into()];
        runner.always_fail = vec!["trial-0002".into()];
        runner.hang = vec!["trial-0003".into()];
        let session = memory_session("retries");
        let report = run_experiment(&spec, &session, Arc::new(runner))
            .await
            .unwrap();
        let status: Vec<_> = report
            .trials
            .iter()
            .map(|t| (t.status, t.attempts))
            .collect();
        assert_eq!(
            status,
            vec![
                (TrialStatus::Completed, 1),
                (TrialStatus::Completed, 2),
                (TrialStatus::Failed, 2),
                (TrialStatus::Failed, 2),
            ]
        );
        assert!(report.trials[1].error.is_none());
        assert!(
            report.trials[2]
                .error
                .as_deref()
                .unwrap()
                .contains("always fails")
        );
        assert!(
            report.trials[3]
                .error
                .as_deref()
                .unwrap()
                .contains("trial_timeout")
        );
        let exp = Experiments::new(&session).unwrap().dir("exp").unwrap();
        let log = String::from_utf8(exp.log("trial-0001").await.unwrap().unwrap()).unwrap();
        assert!(log.contains("simulated crash of trial-0001"), "{log}");
        // The best of the completed trials: learning_rate 0.004 is closer to the optimum.
        assert_eq!(report.file.best_trial.as_deref(), Some("trial-0001"));

        // A re-run keeps the finished trials and retries only the failed ones.
        let again = KnownOptimum::new(2);
        let report = run_experiment(&spec, &session, Arc::new(again))
            .await
            .unwrap();
        let status: Vec<_> = report.trials.iter().map(|t| t.status).collect();
        assert_eq!(status, vec![TrialStatus::Completed; 4]);
        assert_eq!(report.trials[1].attempts, 2, "trial-0001 was not rerun");
        assert_eq!(report.file.best_trial.as_deref(), Some("trial-0003"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asha_stops_poor_trials_of_a_random_search() {
        let spec = experiment(&[
            (
                "learning_rate",
                OptionValue::from("log_uniform(0.0001, 0.01)"),
            ),
            ("dropout", OptionValue::from("uniform(0, 0.9)")),
            ("epochs", OptionValue::from(9)),
            ("search", OptionValue::from("random")),
            ("num_trials", OptionValue::from(12)),
            ("scheduler", OptionValue::from("asha")),
            ("max_parallel_trials", OptionValue::from(1)),
        ]);
        let session = memory_session("asha");
        let report = run_experiment(&spec, &session, Arc::new(KnownOptimum::new(1)))
            .await
            .unwrap();
        let stopped = report
            .trials
            .iter()
            .filter(|t| t.status == TrialStatus::Stopped)
            .count();
        assert!(stopped >= 4, "only {stopped} of 12 trials stopped early");
        let best = best_trial(&report.trials, &spec.objective).unwrap();
        assert_eq!(best.status, TrialStatus::Completed);
        assert_eq!(best.history.len(), 9);
        // The best completed trial beats every trial that was stopped.
        for t in report
            .trials
            .iter()
            .filter(|t| t.status == TrialStatus::Stopped)
        {
            assert!(t.history.len() < 9);
            // The toy accuracy grows linearly to its final value over 9 epochs.
            let full = t.objective.unwrap() * 9.0 / t.history.len() as f64;
            assert!(best.objective.unwrap() >= full - 1e-9);
        }
    }

    fn epoch(epoch: usize, accuracy: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            loss: 1.0 - accuracy,
            accuracy,
            val_loss: None,
            val_accuracy: None,
            examples: 10,
            seconds: 1.0,
            input_seconds: 0.0,
            examples_per_second: 10.0,
            learning_rate: 0.001,
        }
    }

    #[test]
    fn asha_keeps_the_top_third_at_each_rung() {
        let objective = Objective {
            metric: "accuracy".into(),
            maximize: true,
        };
        let asha = Asha::new(
            AshaSettings {
                grace_period: 1,
                reduction_factor: 3,
            },
            9,
            objective,
        );
        assert_eq!(asha.rungs, vec![1, 3]);
        // The first trial at a rung always goes on; later ones need the 2/3 quantile.
        assert!(asha.report(&epoch(1, 0.5)));
        assert!(!asha.report(&epoch(1, 0.4)));
        assert!(asha.report(&epoch(1, 0.9)));
        // Not a rung.
        assert!(asha.report(&epoch(2, 0.1)));
        assert!(asha.report(&epoch(3, 0.7)));
        assert!(!asha.report(&epoch(3, 0.6)));
    }

    #[test]
    fn minimising_flips_the_comparison() {
        let asha = Asha::new(
            AshaSettings {
                grace_period: 2,
                reduction_factor: 2,
            },
            8,
            Objective {
                metric: "loss".into(),
                maximize: false,
            },
        );
        assert_eq!(asha.rungs, vec![2, 4]);
        assert!(asha.report(&epoch(2, 0.5))); // loss 0.5
        assert!(asha.report(&epoch(2, 0.8))); // loss 0.2: better
        assert!(!asha.report(&epoch(2, 0.1))); // loss 0.9: worse than the median
    }

    #[test]
    fn best_trial_prefers_completed_and_the_objective() {
        let record = |trial: &str, status, objective| TrialRecord {
            trial: trial.into(),
            generation: 0,
            params: Params::new(),
            status,
            objective,
            history: Vec::new(),
            attempts: 1,
            started_at: 0.0,
            finished_at: 0.0,
            slot: String::new(),
            error: None,
            checkpoint: None,
            model: None,
        };
        let trials = vec![
            record("a", TrialStatus::Stopped, Some(0.99)),
            record("b", TrialStatus::Completed, Some(0.7)),
            record("c", TrialStatus::Completed, Some(0.8)),
            record("d", TrialStatus::Failed, None),
            record("e", TrialStatus::Completed, Some(0.8)),
        ];
        let max = Objective {
            metric: "accuracy".into(),
            maximize: true,
        };
        assert_eq!(best_trial(&trials, &max).unwrap().trial, "c");
        let min = Objective {
            metric: "accuracy".into(),
            maximize: false,
        };
        assert_eq!(best_trial(&trials, &min).unwrap().trial, "b");
    }
}
