//! Experiments as data: `experiments()` (what `SHOW EXPERIMENTS` runs) and
//! `experiment_trials('name')`, one row per trial with its hyperparameters as columns.

use quiver_engine::computed::{ComputeRows, ComputedTable};
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, RecordBatch, StringBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{
    Session as CatalogSession, TableFunctionArgs, TableFunctionImpl, TableProvider,
};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;

use super::display::plain;
use super::records::{ExperimentDir, Experiments, TrialRecord, best_trial};
use super::space::Domain;
use super::spec::{ExperimentBuilder, metric};
use crate::ml::{EpochMetrics, MlError, OptionValue};
use quiver_engine::err;

/// `experiments()` or `experiment_trials('name')`.
#[derive(Debug, Clone)]
pub struct ExperimentTableFunc {
    experiments: Experiments,
    trials: bool,
}

impl ExperimentTableFunc {
    /// `experiments()`: one row per experiment.
    pub fn experiments(experiments: Experiments) -> Self {
        Self {
            experiments,
            trials: false,
        }
    }

    /// `experiment_trials('name')`: one row per trial.
    pub fn trials(experiments: Experiments) -> Self {
        Self {
            experiments,
            trials: true,
        }
    }
}

/// Runs a store read while planning (table functions are planned synchronously).
fn block_on<F: Future>(future: F) -> F::Output {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(future))
        }
        _ => futures::executor::block_on(future),
    }
}

/// A searched hyperparameter's column type.
fn param_type(domain: &Domain) -> DataType {
    match domain {
        Domain::Choice(values) if values.iter().all(|v| matches!(v, OptionValue::Num(_))) => {
            DataType::Float64
        }
        Domain::Choice(values) if values.iter().all(|v| matches!(v, OptionValue::Bool(_))) => {
            DataType::Boolean
        }
        Domain::Choice(_) => DataType::Utf8,
        _ => DataType::Float64,
    }
}

impl TableFunctionImpl for ExperimentTableFunc {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if !self.trials {
            if !exprs.is_empty() {
                return plan_err!("experiments() takes no arguments");
            }
            return Ok(Arc::new(ComputedTable::new(ExperimentTable {
                schema: experiments_schema(),
                experiments: self.experiments.clone(),
                name: None,
                params: Vec::new(),
            })));
        }
        let name = match exprs {
            [
                Expr::Literal(
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::LargeUtf8(Some(s))
                    | ScalarValue::Utf8View(Some(s)),
                    _,
                ),
            ] => s.clone(),
            _ => return plan_err!("usage: experiment_trials('experiment name')"),
        };
        let dir = self.experiments.dir(&name)?;
        let file = block_on(dir.file())?.ok_or_else(|| {
            err!(
                MlError::NotFound,
                "experiment '{name}' does not exist at {}",
                dir.url
            )
        })?;
        let mut builder = ExperimentBuilder::new(&file.name, &file.model_type)?;
        for (k, v) in &file.options {
            builder.set(k, v.clone())?;
        }
        let spec = builder.build(&file.query)?;
        let params: Vec<(String, DataType)> = spec
            .space
            .domains()
            .map(|(n, d)| (n.clone(), param_type(d)))
            .collect();
        let mut fields = vec![
            Field::new("trial", DataType::Utf8, false),
            Field::new("generation", DataType::UInt64, false),
        ];
        fields.extend(
            params
                .iter()
                .map(|(n, t)| Field::new(n.as_str(), t.clone(), true)),
        );
        fields.extend([
            Field::new("status", DataType::Utf8, false),
            Field::new("objective", DataType::Float64, true),
            Field::new("epochs_trained", DataType::UInt64, false),
            Field::new("accuracy", DataType::Float64, true),
            Field::new("loss", DataType::Float64, true),
            Field::new("val_accuracy", DataType::Float64, true),
            Field::new("val_loss", DataType::Float64, true),
            Field::new("attempts", DataType::UInt64, true),
            Field::new("seconds", DataType::Float64, true),
            Field::new("checkpoint", DataType::Utf8, true),
            Field::new("error", DataType::Utf8, true),
        ]);
        Ok(Arc::new(ComputedTable::new(ExperimentTable {
            schema: Arc::new(Schema::new(fields)),
            experiments: self.experiments.clone(),
            name: Some(name),
            params,
        })))
    }
}

#[derive(Debug)]
struct ExperimentTable {
    schema: SchemaRef,
    experiments: Experiments,
    /// The experiment, for `experiment_trials`.
    name: Option<String>,
    params: Vec<(String, DataType)>,
}

#[async_trait]
impl ComputeRows for ExperimentTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self, _state: &dyn CatalogSession) -> Result<RecordBatch> {
        Ok(match &self.name {
            Some(name) => {
                let dir = self.experiments.dir(name)?;
                trials_batch(&dir, &self.params, &self.schema).await?
            }
            None => experiments_batch(&self.experiments, &self.schema).await?,
        })
    }
}

/// One trial as the table shows it: finished trials from `result.json`, others from their
/// `metrics.jsonl` so far.
struct TrialRow {
    trial: String,
    generation: usize,
    params: crate::experiment::Params,
    status: String,
    history: Vec<EpochMetrics>,
    record: Option<TrialRecord>,
}

async fn trials_batch(
    dir: &ExperimentDir,
    params: &[(String, DataType)],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let file = dir
        .file()
        .await?
        .ok_or_else(|| err!(MlError::NotFound, "experiment at {} vanished", dir.url))?;
    let mut rows = Vec::new();
    for trial in dir.trial_ids().await? {
        let Some(p) = dir.params(&trial).await? else {
            continue;
        };
        rows.push(match dir.result(&trial).await? {
            Some(record) => TrialRow {
                trial,
                generation: record.generation,
                params: record.params.clone(),
                status: record.status.as_str().to_string(),
                history: record.history.clone(),
                record: Some(record),
            },
            None => {
                let history = dir.progress(&trial).await?;
                TrialRow {
                    trial,
                    generation: p.generation,
                    params: p.params,
                    status: dir.unfinished_status(&p.trial, &history).await?.into(),
                    history,
                    record: None,
                }
            }
        });
    }
    let mut trial = StringBuilder::new();
    let mut generation = UInt64Builder::new();
    let mut status = StringBuilder::new();
    let mut epochs = UInt64Builder::new();
    let mut attempts = UInt64Builder::new();
    let [
        mut objective,
        mut accuracy,
        mut loss,
        mut val_accuracy,
        mut val_loss,
        mut seconds,
    ] = std::array::from_fn(|_| Float64Builder::new());
    let (mut checkpoint, mut error) = (StringBuilder::new(), StringBuilder::new());
    let mut param_columns: Vec<ArrayRef> = Vec::new();
    for (name, data_type) in params {
        let values = rows.iter().map(|r| r.params.get(name));
        param_columns.push(match data_type {
            DataType::Float64 => {
                let mut b = Float64Builder::new();
                for v in values {
                    b.append_option(match v {
                        Some(OptionValue::Num(n)) => Some(*n),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            DataType::Boolean => {
                let mut b = BooleanBuilder::new();
                for v in values {
                    b.append_option(match v {
                        Some(OptionValue::Bool(x)) => Some(*x),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            _ => {
                let mut b = StringBuilder::new();
                for v in values {
                    b.append_option(v.map(plain));
                }
                Arc::new(b.finish())
            }
        });
    }
    for row in &rows {
        let last = row.history.last();
        trial.append_value(&row.trial);
        generation.append_value(row.generation as u64);
        status.append_value(&row.status);
        objective.append_option(last.and_then(|m| metric(m, &file.objective.metric)));
        epochs.append_value(row.history.len() as u64);
        accuracy.append_option(last.map(|m| m.accuracy));
        loss.append_option(last.map(|m| m.loss));
        val_accuracy.append_option(last.and_then(|m| m.val_accuracy));
        val_loss.append_option(last.and_then(|m| m.val_loss));
        let r = row.record.as_ref();
        attempts.append_option(r.map(|r| r.attempts as u64));
        seconds.append_option(r.map(|r| r.finished_at - r.started_at));
        checkpoint.append_option(r.and_then(|r| r.checkpoint.clone()));
        error.append_option(r.and_then(|r| r.error.clone()));
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(trial.finish()), Arc::new(generation.finish())];
    columns.extend(param_columns);
    columns.extend([
        Arc::new(status.finish()) as ArrayRef,
        Arc::new(objective.finish()),
        Arc::new(epochs.finish()),
        Arc::new(accuracy.finish()),
        Arc::new(loss.finish()),
        Arc::new(val_accuracy.finish()),
        Arc::new(val_loss.finish()),
        Arc::new(attempts.finish()),
        Arc::new(seconds.finish()),
        Arc::new(checkpoint.finish()),
        Arc::new(error.finish()),
    ]);
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

fn experiments_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("model_type", DataType::Utf8, false),
        Field::new("objective", DataType::Utf8, false),
        Field::new("goal", DataType::Utf8, false),
        Field::new("trials", DataType::UInt64, false),
        Field::new("best_trial", DataType::Utf8, true),
        Field::new("best_value", DataType::Float64, true),
        Field::new("model", DataType::Utf8, true),
        Field::new("location", DataType::Utf8, false),
    ]))
}

async fn experiments_batch(experiments: &Experiments, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut status = StringBuilder::new();
    let mut model_type = StringBuilder::new();
    let mut objective = StringBuilder::new();
    let mut goal = StringBuilder::new();
    let mut trials = UInt64Builder::new();
    let mut best = StringBuilder::new();
    let mut best_value = Float64Builder::new();
    let mut model = StringBuilder::new();
    let mut location = StringBuilder::new();
    for n in experiments.names().await? {
        let dir = experiments.dir(&n)?;
        let Some(file) = dir.file().await? else {
            continue;
        };
        // A running experiment's best so far comes from the results written up to now.
        let ids = dir.trial_ids().await?;
        let records = dir.results(&ids).await?;
        let best_now = best_trial(&records, &file.objective);
        name.append_value(&file.name);
        status.append_value(&file.status);
        model_type.append_value(&file.model_type);
        objective.append_value(&file.objective.metric);
        goal.append_value(if file.objective.maximize {
            "maximize"
        } else {
            "minimize"
        });
        trials.append_value(ids.len() as u64);
        best.append_option(best_now.map(|b| b.trial.clone()));
        best_value.append_option(best_now.and_then(|b| b.objective));
        model.append_option(file.model.clone());
        location.append_value(dir.url.as_str());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(name.finish()),
        Arc::new(status.finish()),
        Arc::new(model_type.finish()),
        Arc::new(objective.finish()),
        Arc::new(goal.finish()),
        Arc::new(trials.finish()),
        Arc::new(best.finish()),
        Arc::new(best_value.finish()),
        Arc::new(model.finish()),
        Arc::new(location.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}
