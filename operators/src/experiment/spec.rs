//! What an experiment is: the model options every trial shares, the hyperparameters searched,
//! the search algorithm, the objective, and how trials are scheduled. Built from the options
//! of `CREATE EXPERIMENT ... OPTIONS (...)` or [`ExperimentBuilder`]; stored as
//! `experiment.json` so that a re-run can check it is resuming the same experiment.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::space::{DifferentialEvolution, Domain, SearchSpace};
use crate::ml::registry::validate_name;
use crate::ml::{EpochMetrics, MlError, ModelBuilder, ModelOptions, OptionValue};
use quiver_engine::options::{Flag, Maybe, Number, OneOf, Options, Positive, count, unknown};
use quiver_engine::{bail, err};

quiver_engine::options! {
    /// Options of `CREATE EXPERIMENT` besides the model options.
    pub struct ExperimentOptions {
        /// How trials are proposed.
        search: String = "grid".into(), OneOf(&["grid", "random", "evolutionary"]);
        /// The metric to optimise; unset, val_accuracy with a validation_query, else accuracy.
        objective: Option<String> = None, Maybe(OneOf(METRICS));
        /// Whether higher is better; unset, losses are minimized and accuracies maximized.
        goal: Option<String> = None, Maybe(OneOf(&["maximize", "minimize", "max", "min"]));
        /// Trials running at once, one per executor slot.
        max_parallel_trials: usize = 1, count(1);
        /// Random search: how many trials.
        num_trials: usize = 10, count(1);
        /// Evolutionary search: members per generation.
        population: usize = 6, count(4);
        /// Evolutionary search: generations, the first one random.
        generations: usize = 3, count(1);
        /// Evolutionary search: differential weight F.
        mutation: f64 = 0.8, Number;
        /// Evolutionary search: crossover rate.
        crossover: f64 = 0.7, Number;
        /// Seed of random and evolutionary proposals.
        search_seed: u64 = 0, count(0);
        /// 'asha': asynchronous successive halving stops poor trials early.
        scheduler: String = "none".into(), OneOf(&["none", "asha"]);
        /// ASHA: epochs before the first rung.
        grace_period: usize = 1, count(1);
        /// ASHA: each rung keeps the best 1/reduction_factor.
        reduction_factor: usize = 3, count(2);
        /// Reruns of a failed trial from its last checkpoint.
        max_retries: usize = 2, count(0);
        /// Seconds after which a trial attempt counts as failed; unset, no limit.
        trial_timeout: Option<f64> = None, Maybe(Positive);
        /// Register the best trial's model under the experiment's name.
        register_model: bool = true, Flag;
    }
}

/// The metrics an objective can name.
const METRICS: &[&str] = &["accuracy", "loss", "val_accuracy", "val_loss"];

/// How trials are proposed.
#[derive(Debug, Clone, PartialEq)]
pub enum Search {
    /// Every combination of the listed values.
    Grid,
    /// Independent draws.
    Random {
        /// How many trials.
        trials: usize,
        /// Seed of the draws.
        seed: u64,
    },
    /// Differential evolution over `generations` generations.
    Evolutionary {
        /// Population, rates and seed.
        de: DifferentialEvolution,
        /// Generations, the first one random.
        generations: usize,
    },
}

/// The metric an experiment optimises and in which direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// `accuracy`, `loss`, `val_accuracy` or `val_loss`.
    pub metric: String,
    /// Higher is better.
    pub maximize: bool,
}

impl Objective {
    /// The metric in one epoch's metrics.
    pub fn value(&self, m: &EpochMetrics) -> Option<f64> {
        metric(m, &self.metric)
    }

    /// The value with higher meaning better.
    pub fn score(&self, value: f64) -> f64 {
        if self.maximize { value } else { -value }
    }
}

/// An epoch metric by name.
pub fn metric(m: &EpochMetrics, name: &str) -> Option<f64> {
    match name {
        "accuracy" => Some(m.accuracy),
        "loss" => Some(m.loss),
        "val_accuracy" => m.val_accuracy,
        "val_loss" => m.val_loss,
        _ => None,
    }
}

/// Asynchronous successive halving settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AshaSettings {
    /// Epochs before the first rung.
    pub grace_period: usize,
    /// Each rung keeps the best `1/reduction_factor`.
    pub reduction_factor: usize,
}

/// A fully checked experiment, ready to run.
#[derive(Debug, Clone)]
pub struct ExperimentSpec {
    /// The experiment's name (and the name the best model is registered under).
    pub name: String,
    /// `dnn_classifier` or `cnn_classifier`.
    pub model_type: String,
    /// The options as given, in order (stored, and compared on resume).
    pub options: Vec<(String, OptionValue)>,
    /// Model options every trial shares.
    pub fixed: Vec<(String, OptionValue)>,
    /// The searched hyperparameters.
    pub space: SearchSpace,
    /// How trials are proposed.
    pub search: Search,
    /// What is optimised.
    pub objective: Objective,
    /// Trials at once.
    pub max_parallel_trials: usize,
    /// Early stopping of poor trials.
    pub asha: Option<AshaSettings>,
    /// Reruns of a failed trial.
    pub max_retries: usize,
    /// Seconds per trial attempt.
    pub trial_timeout: Option<f64>,
    /// Register the best trial's model.
    pub register_model: bool,
    /// Epochs per trial (the fixed `epochs` option, or the largest searched value).
    pub max_epochs: usize,
    /// The training query.
    pub query: String,
}

/// Builds an experiment; the Rust face of `CREATE EXPERIMENT`.
///
/// A model option given one value is shared by every trial. A list (for list-valued options
/// such as `hidden_units`, a list of lists) is searched over, as are the ranges
/// `'uniform(a, b)'`, `'log_uniform(a, b)'` and `'int(a, b)'`.
#[derive(Debug, Clone)]
pub struct ExperimentBuilder {
    name: String,
    model_type: String,
    options: Vec<(String, OptionValue)>,
}

impl ExperimentBuilder {
    /// An experiment named `name` over models of `model_type`.
    pub fn new(name: &str, model_type: &str) -> Result<Self, MlError> {
        validate_name(name)?;
        ModelBuilder::new(name, model_type)?;
        Ok(Self {
            name: name.to_string(),
            model_type: model_type.to_ascii_lowercase(),
            options: Vec::new(),
        })
    }

    /// Adds one option (a model option, fixed or searched, or an experiment option).
    pub fn option(mut self, key: &str, value: impl Into<OptionValue>) -> Result<Self, MlError> {
        self.set(key, value.into())?;
        Ok(self)
    }

    /// Adds one option in place; an option given twice is an error.
    pub fn set(&mut self, key: &str, value: OptionValue) -> Result<(), MlError> {
        let key = key.to_ascii_lowercase();
        if key == "model_type" {
            if value != OptionValue::Str(self.model_type.clone()) {
                bail!(
                    MlError::Option,
                    "model_type {value} differs from the experiment's '{}'",
                    self.model_type
                );
            }
            return Ok(());
        }
        if self.options.iter().any(|(k, _)| *k == key) {
            bail!(MlError::Option, "option '{key}' is given twice");
        }
        self.options.push((key, value));
        Ok(())
    }

    /// Checks every option and returns the experiment over `query`.
    pub fn build(&self, query: &str) -> Result<ExperimentSpec, MlError> {
        let mut fixed = Vec::new();
        let mut domains = Vec::new();
        let mut s = ExperimentOptions::default();
        let mut given = BTreeSet::new();
        let probe = ModelBuilder::new(&self.name, &self.model_type)?;
        for (key, value) in &self.options {
            if ExperimentOptions::knows(key) {
                s.set(key, value).map_err(MlError::Option)?;
                given.insert(key.as_str());
            } else if ModelOptions::knows(key) {
                match domain(key, value)? {
                    Some(_) if key == "device" => {
                        return Err(MlError::Option(
                            "device cannot be searched: each executor slot has its own device"
                                .into(),
                        ));
                    }
                    Some(domain) => {
                        for candidate in candidates(&domain) {
                            probe
                                .clone()
                                .option(key, candidate)
                                .map_err(|e| err!(MlError::Option, "searched option {key}: {e}"))?;
                        }
                        domains.push((key.clone(), domain));
                    }
                    None => {
                        probe.clone().option(key, value.clone())?;
                        fixed.push((key.clone(), value.clone()));
                    }
                }
            } else {
                let known = [ExperimentOptions::docs(), ModelOptions::docs()].concat();
                return Err(MlError::Option(unknown(key, &known)));
            }
        }
        let space = SearchSpace::new(domains).map_err(|e| {
            err!(
                MlError::Option,
                "experiment {}: {e}: give at least one model option a list of values, e.g. \
                 learning_rate = [0.001, 0.005]",
                self.name
            )
        })?;
        let search = match s.search.as_str() {
            "random" => Search::Random {
                trials: s.num_trials,
                seed: s.search_seed,
            },
            "evolutionary" => {
                let de = DifferentialEvolution {
                    population: s.population,
                    mutation: s.mutation,
                    crossover: s.crossover,
                    seed: s.search_seed,
                };
                de.check().map_err(MlError::Option)?;
                Search::Evolutionary {
                    de,
                    generations: s.generations,
                }
            }
            _ => {
                space.grid().map_err(MlError::Option)?;
                Search::Grid
            }
        };
        for (key, applies) in [
            ("num_trials", matches!(search, Search::Random { .. })),
            ("population", matches!(search, Search::Evolutionary { .. })),
            ("generations", matches!(search, Search::Evolutionary { .. })),
            ("mutation", matches!(search, Search::Evolutionary { .. })),
            ("crossover", matches!(search, Search::Evolutionary { .. })),
        ] {
            if given.contains(key) && !applies {
                bail!(
                    MlError::Option,
                    "{key} does not apply to {} search",
                    s.search
                );
            }
        }
        let has_validation = self.options.iter().any(|(k, _)| k == "validation_query");
        let metric = s.objective.unwrap_or_else(|| {
            if has_validation {
                "val_accuracy".into()
            } else {
                "accuracy".into()
            }
        });
        if metric.starts_with("val_") && !has_validation {
            bail!(
                MlError::Option,
                "objective '{metric}' needs a validation_query"
            );
        }
        let maximize = match s.goal.as_deref() {
            Some(goal) => goal.starts_with("max"),
            None => !metric.ends_with("loss"),
        };
        let asha = (s.scheduler == "asha").then_some(AshaSettings {
            grace_period: s.grace_period,
            reduction_factor: s.reduction_factor,
        });
        let max_epochs = match fixed.iter().find(|(k, _)| k == "epochs") {
            Some((_, OptionValue::Num(n))) => *n as usize,
            _ => domains_epochs(&space).unwrap_or(ModelOptions::default().epochs),
        };
        Ok(ExperimentSpec {
            name: self.name.clone(),
            model_type: self.model_type.clone(),
            options: self.options.clone(),
            fixed,
            space,
            search,
            objective: Objective { metric, maximize },
            max_parallel_trials: s.max_parallel_trials,
            asha,
            max_retries: s.max_retries,
            trial_timeout: s.trial_timeout,
            register_model: s.register_model,
            max_epochs,
            query: query.to_string(),
        })
    }
}

/// The largest searched `epochs` value.
fn domains_epochs(space: &SearchSpace) -> Option<usize> {
    match space.domain("epochs")? {
        Domain::Choice(values) => values
            .iter()
            .filter_map(|v| match v {
                OptionValue::Num(n) => Some(*n as usize),
                _ => None,
            })
            .max(),
        Domain::Int { high, .. } => Some(*high as usize),
        Domain::Uniform { high, .. } | Domain::LogUniform { high, .. } => Some(*high as usize),
    }
}

/// The search domain an option value describes, or `None` for a fixed value.
fn domain(key: &str, value: &OptionValue) -> Result<Option<Domain>, MlError> {
    Ok(match value {
        OptionValue::List(items)
            if ModelOptions::docs().iter().any(|d| d.name == key && d.list) =>
        {
            if !items.is_empty() && items.iter().all(|i| matches!(i, OptionValue::List(_))) {
                Some(Domain::Choice(items.clone()))
            } else {
                None
            }
        }
        OptionValue::List(items) => Some(Domain::Choice(items.clone())),
        OptionValue::Str(s) => range(key, s)?,
        _ => None,
    })
}

/// `uniform(a, b)`, `log_uniform(a, b)` or `int(a, b)`; other strings are plain values.
fn range(key: &str, text: &str) -> Result<Option<Domain>, MlError> {
    let t = text.trim().to_ascii_lowercase();
    let Some((kind, rest)) = t.split_once('(') else {
        return Ok(None);
    };
    let kind = kind.trim();
    if !["uniform", "log_uniform", "loguniform", "int"].contains(&kind) {
        return Ok(None);
    }
    let bad = || {
        err!(
            MlError::Option,
            "{key} = '{text}': a range is uniform(low, high), log_uniform(low, high) or \
             int(low, high)"
        )
    };
    let args: Vec<f64> = rest
        .strip_suffix(')')
        .ok_or_else(bad)?
        .split(',')
        .map(|a| a.trim().parse::<f64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [low, high] = args[..] else {
        return Err(bad());
    };
    Ok(Some(match kind {
        "uniform" => Domain::Uniform { low, high },
        "int" => {
            if low.fract() != 0.0 || high.fract() != 0.0 {
                return Err(bad());
            }
            Domain::Int {
                low: low as i64,
                high: high as i64,
            }
        }
        _ => Domain::LogUniform { low, high },
    }))
}

/// Values to check a domain with: every choice, or a range's ends and middle.
fn candidates(domain: &Domain) -> Vec<OptionValue> {
    match domain {
        Domain::Choice(values) => values.clone(),
        Domain::Uniform { low, high } => [*low, (low + high) / 2.0, *high]
            .map(OptionValue::Num)
            .to_vec(),
        Domain::LogUniform { low, high } => [*low, (low * high).sqrt(), *high]
            .map(OptionValue::Num)
            .to_vec(),
        Domain::Int { low, high } => [*low, *high].map(|v| OptionValue::Num(v as f64)).to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(options: &[(&str, OptionValue)]) -> ExperimentBuilder {
        let mut b = ExperimentBuilder::new("exp", "dnn_classifier").unwrap();
        for (k, v) in options {
            b.set(k, v.clone()).unwrap();
        }
        b
    }

    #[test]
    fn lists_are_searched_and_single_values_shared() {
        let spec = builder(&[
            ("learning_rate", OptionValue::from(vec![0.001, 0.005])),
            ("dropout", OptionValue::from(vec![0.45, 0.5, 0.55])),
            ("hidden_units", OptionValue::from(vec![64, 32])),
            ("epochs", OptionValue::from(3)),
            ("max_parallel_trials", OptionValue::from(2)),
        ])
        .build("SELECT * FROM t")
        .unwrap();
        assert_eq!(spec.space.grid().unwrap().len(), 6);
        assert_eq!(spec.fixed.len(), 2, "{:?}", spec.fixed);
        assert_eq!(spec.max_parallel_trials, 2);
        assert_eq!(spec.max_epochs, 3);
        assert_eq!(spec.objective.metric, "accuracy");
        assert!(spec.objective.maximize);
    }

    #[test]
    fn ranges_and_list_of_lists() {
        let spec = builder(&[
            (
                "learning_rate",
                OptionValue::from("log_uniform(1e-4, 1e-2)"),
            ),
            (
                "hidden_units",
                OptionValue::List(vec![
                    OptionValue::from(vec![64]),
                    OptionValue::from(vec![128, 64]),
                ]),
            ),
            ("search", OptionValue::from("random")),
            ("num_trials", OptionValue::from(4)),
        ])
        .build("SELECT 1")
        .unwrap();
        assert_eq!(spec.search, Search::Random { trials: 4, seed: 0 });
        assert!(matches!(
            spec.space.domain("learning_rate"),
            Some(Domain::LogUniform { .. })
        ));
        assert!(matches!(
            spec.space.domain("hidden_units"),
            Some(Domain::Choice(v)) if v.len() == 2
        ));
    }

    #[test]
    fn bad_options_name_the_option() {
        let err = |options: &[(&str, OptionValue)]| {
            builder(options).build("SELECT 1").unwrap_err().to_string()
        };
        let lr = ("learning_rate", OptionValue::from(vec![0.001, 0.005]));
        assert!(
            err(&[lr.clone(), ("dropout", OptionValue::from(vec![0.5, 1.5]))])
                .contains("searched option dropout")
        );
        assert!(
            err(&[lr.clone(), ("colour", OptionValue::from(1))])
                .contains("unknown option 'colour'")
        );
        assert!(
            err(&[("learning_rate", OptionValue::from("uniform(0.1)"))]).contains("a range is")
        );
        assert!(err(&[("epochs", OptionValue::from(2))]).contains("at least one model option"));
        assert!(
            err(&[lr.clone(), ("objective", OptionValue::from("val_loss"))])
                .contains("needs a validation_query")
        );
        assert!(
            err(&[lr.clone(), ("search", OptionValue::from("bayes"))]).contains("search 'bayes'")
        );
        assert!(
            err(&[lr.clone(), ("num_trials", OptionValue::from(3))])
                .contains("num_trials does not apply to grid search")
        );
        assert!(
            err(&[("learning_rate", OptionValue::from("uniform(0.001, 0.01)"))])
                .contains("grid search needs a list")
        );
        let mut b = builder(std::slice::from_ref(&lr));
        assert!(b.set("learning_rate", OptionValue::from(0.1)).is_err());
    }

    #[test]
    fn objective_defaults_follow_the_metric() {
        let spec = builder(&[
            ("learning_rate", OptionValue::from(vec![0.001, 0.005])),
            ("validation_query", OptionValue::from("SELECT 1")),
            ("objective", OptionValue::from("val_loss")),
        ])
        .build("SELECT 1")
        .unwrap();
        assert!(!spec.objective.maximize);
        assert_eq!(spec.objective.score(0.5), -0.5);
    }
}
