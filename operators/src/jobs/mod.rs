//! Batch job runs in the shared store, and `job_runs(['job'])` over them.
//!
//! Layout: `jobs/<job>/job.json` (the job as a driver loaded it: schedule, next run) and
//! `jobs/<job>/runs/<run-id>/{run.json, log.txt, cancel}`. `run.json` is rewritten at every
//! change of state and at every heartbeat of the process running it, `log.txt` while the run
//! writes its log; `cancel` is the marker `quiver job cancel` leaves for that process. A
//! scheduled run's id is derived from its scheduled time and created only if absent, so two
//! drivers, or a driver restarted, never run the same scheduled time twice.

use quiver_engine::computed::{ComputeRows, ComputedTable};
use quiver_engine::time::{timestamp_builder, timestamp_micros, timestamp_type};
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, ListBuilder, RecordBatch, StringBuilder, StructBuilder,
    UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::catalog::{
    Session as CatalogSession, TableFunctionArgs, TableFunctionImpl, TableProvider,
};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::ml::MlError;
use quiver_engine::err;
use quiver_engine::store::objects::{create_bytes, exists, get_bytes, list, put_bytes};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Steps are running.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed after its retries.
    Failed,
    /// The process running it died or was stopped; found by a driver.
    Interrupted,
    /// Cancelled with `quiver job cancel`.
    Cancelled,
}

impl RunStatus {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        self != Self::Running
    }
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name.
    pub name: String,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped`, `cancelled`, `interrupted`.
    pub status: String,
    /// Attempts started (1 + retries used).
    pub attempts: u32,
    /// Start of the first attempt (Unix seconds).
    pub started: Option<f64>,
    /// End of the last attempt (Unix seconds).
    pub ended: Option<f64>,
    /// The last attempt's error.
    pub error: Option<String>,
}

/// A run of a job: `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The job.
    pub job: String,
    /// `manual__<time>_<n>` or `scheduled__<time>`.
    pub run_id: String,
    /// `manual` or `schedule`.
    pub trigger: String,
    /// The scheduled time (Unix seconds) of a scheduled run.
    pub scheduled_for: Option<f64>,
    /// `${run_date}` of this run (the scheduled or start date in the job's time zone).
    pub run_date: String,
    /// The parameters after substitution of command-line values.
    pub params: BTreeMap<String, String>,
    /// Where it stands.
    pub status: RunStatus,
    /// Start (Unix seconds).
    pub started: f64,
    /// End (Unix seconds).
    pub ended: Option<f64>,
    /// Last sign of life of the process running it (Unix seconds).
    pub heartbeat: f64,
    /// Host of the process running it.
    pub host: String,
    /// Process id of the process running it.
    pub pid: u32,
    /// The steps, in order.
    pub steps: Vec<StepRecord>,
    /// Why the run failed, was interrupted or cancelled.
    pub error: Option<String>,
}

/// A job as a driver loaded it: `job.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job.
    pub name: String,
    /// The job file it was loaded from.
    pub file: String,
    /// The cron schedule, if any.
    pub schedule: Option<String>,
    /// The schedule's time zone.
    pub timezone: String,
    /// Runs at most this many at once.
    pub max_active_runs: u32,
    /// What happens to schedule times missed while no driver ran: `none`, `latest`, `all`.
    pub catchup: String,
    /// The next scheduled time (Unix seconds).
    pub next_run: Option<f64>,
    /// Host and process id of the driver that loaded it.
    pub driver: String,
    /// When it was loaded (Unix seconds).
    pub loaded: f64,
}

/// The `jobs/` folder of the default store.
#[derive(Debug, Clone)]
pub struct JobStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: Url,
}

fn check_name(what: &str, name: &str) -> Result<(), MlError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(err!(
            MlError::Option,
            "{what} '{name}' must be letters, digits, '_', '-' or '.'"
        ))
    }
}

impl JobStore {
    /// The `jobs/` folder of `session`'s default store.
    pub fn new(session: &quiver_engine::Session) -> Result<Self, MlError> {
        let (store, root, url) = session.default_folder("jobs/")?;
        Ok(Self { store, root, url })
    }

    /// The URL of a job's folder, for messages.
    pub fn url(&self, job: &str) -> String {
        format!("{}{job}/", self.url)
    }

    fn job_dir(&self, job: &str) -> Result<Path, MlError> {
        check_name("job name", job)?;
        Ok(self.root.clone().join(job))
    }

    fn run_file(&self, job: &str, run: &str, file: &str) -> Result<Path, MlError> {
        check_name("run id", run)?;
        Ok(self.job_dir(job)?.join("runs").join(run).join(file))
    }

    /// Names of the jobs with a folder in the store.
    pub async fn jobs(&self) -> Result<Vec<String>, MlError> {
        let mut names = list(&self.store, &self.root).await?.dirs;
        names.sort();
        Ok(names)
    }

    /// Records that a driver loaded `job`.
    pub async fn put_job(&self, job: &JobRecord) -> Result<(), MlError> {
        let path = self.job_dir(&job.name)?.join("job.json");
        Ok(put_bytes(&self.store, &path, serde_json::to_vec_pretty(job)?).await?)
    }

    /// The job as a driver last loaded it.
    pub async fn job(&self, job: &str) -> Result<Option<JobRecord>, MlError> {
        let path = self.job_dir(job)?.join("job.json");
        match get_bytes(&self.store, &path).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Creates a run; `false` when a run with its id exists already.
    pub async fn create_run(&self, run: &RunRecord) -> Result<bool, MlError> {
        let path = self.run_file(&run.job, &run.run_id, "run.json")?;
        Ok(create_bytes(&self.store, &path, serde_json::to_vec_pretty(run)?).await?)
    }

    /// Writes a run's record.
    pub async fn put_run(&self, run: &RunRecord) -> Result<(), MlError> {
        let path = self.run_file(&run.job, &run.run_id, "run.json")?;
        Ok(put_bytes(&self.store, &path, serde_json::to_vec_pretty(run)?).await?)
    }

    /// One run's record.
    pub async fn run(&self, job: &str, run: &str) -> Result<Option<RunRecord>, MlError> {
        let path = self.run_file(job, run, "run.json")?;
        match get_bytes(&self.store, &path).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| err!(MlError::Checkpoint, "{path}: not a run record: {e}")),
            None => Ok(None),
        }
    }

    /// Every run of `job`, oldest first.
    pub async fn runs(&self, job: &str) -> Result<Vec<RunRecord>, MlError> {
        let dir = self.job_dir(job)?.join("runs");
        let ids = list(&self.store, &dir).await?.dirs;
        let reads = ids.iter().map(|id| self.run(job, id));
        let mut runs: Vec<RunRecord> = futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect();
        runs.sort_by(|a, b| {
            a.started
                .total_cmp(&b.started)
                .then_with(|| a.run_id.cmp(&b.run_id))
        });
        Ok(runs)
    }

    /// Replaces a run's log.
    pub async fn put_log(&self, job: &str, run: &str, log: Vec<u8>) -> Result<(), MlError> {
        Ok(put_bytes(&self.store, &self.run_file(job, run, "log.txt")?, log).await?)
    }

    /// A run's log so far.
    pub async fn log(&self, job: &str, run: &str) -> Result<Option<Vec<u8>>, MlError> {
        Ok(get_bytes(&self.store, &self.run_file(job, run, "log.txt")?).await?)
    }

    /// Asks the process running `run` to cancel it.
    pub async fn request_cancel(&self, job: &str, run: &str) -> Result<(), MlError> {
        Ok(put_bytes(&self.store, &self.run_file(job, run, "cancel")?, Vec::new()).await?)
    }

    /// Whether `run` was asked to cancel.
    pub async fn cancel_requested(&self, job: &str, run: &str) -> Result<bool, MlError> {
        Ok(exists(&self.store, &self.run_file(job, run, "cancel")?).await?)
    }
}

/// `job_runs()` (every job) or `job_runs('job')`.
#[derive(Debug, Clone)]
pub struct JobRunsFunc {
    jobs: JobStore,
}

impl JobRunsFunc {
    /// The table function over `jobs`.
    pub fn new(jobs: JobStore) -> Self {
        Self { jobs }
    }
}

impl TableFunctionImpl for JobRunsFunc {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let job = match args.exprs() {
            [] => None,
            [
                Expr::Literal(
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::LargeUtf8(Some(s))
                    | ScalarValue::Utf8View(Some(s)),
                    _,
                ),
            ] => {
                check_name("job name", s)?;
                Some(s.clone())
            }
            _ => return plan_err!("usage: job_runs() or job_runs('job name')"),
        };
        Ok(Arc::new(ComputedTable::new(JobRunsTable {
            jobs: self.jobs.clone(),
            job,
        })))
    }
}

#[derive(Debug)]
struct JobRunsTable {
    jobs: JobStore,
    job: Option<String>,
}

fn step_fields() -> Fields {
    Fields::from(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("attempts", DataType::UInt32, false),
        Field::new("seconds", DataType::Float64, true),
        Field::new("error", DataType::Utf8, true),
    ])
}

fn runs_schema() -> SchemaRef {
    let time = |name: &str, nullable| Field::new(name, timestamp_type(), nullable);
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        time("scheduled_for", true),
        Field::new("run_date", DataType::Utf8, false),
        time("started", false),
        time("ended", true),
        Field::new("seconds", DataType::Float64, true),
        Field::new("steps_done", DataType::UInt64, false),
        Field::new("steps", DataType::UInt64, false),
        Field::new("attempts", DataType::UInt64, false),
        Field::new("current_step", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("host", DataType::Utf8, false),
        Field::new("pid", DataType::UInt32, false),
        Field::new(
            "step_details",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(step_fields()),
                true,
            ))),
            false,
        ),
    ]))
}

fn runs_batch(runs: &[RunRecord]) -> DfResult<RecordBatch> {
    let mut job = StringBuilder::new();
    let mut run_id = StringBuilder::new();
    let mut trigger = StringBuilder::new();
    let mut status = StringBuilder::new();
    let mut scheduled = timestamp_builder();
    let mut run_date = StringBuilder::new();
    let mut started = timestamp_builder();
    let mut ended = timestamp_builder();
    let mut seconds = Float64Builder::new();
    let mut done = UInt64Builder::new();
    let mut steps = UInt64Builder::new();
    let mut attempts = UInt64Builder::new();
    let mut current = StringBuilder::new();
    let mut error = StringBuilder::new();
    let mut host = StringBuilder::new();
    let mut pid = UInt32Builder::new();
    let mut details = ListBuilder::new(StructBuilder::from_fields(step_fields(), 0));
    for run in runs {
        job.append_value(&run.job);
        run_id.append_value(&run.run_id);
        trigger.append_value(&run.trigger);
        status.append_value(run.status.as_str());
        scheduled.append_option(run.scheduled_for.map(timestamp_micros));
        run_date.append_value(&run.run_date);
        started.append_value(timestamp_micros(run.started));
        ended.append_option(run.ended.map(timestamp_micros));
        seconds.append_option(run.ended.map(|e| e - run.started));
        done.append_value(run.steps.iter().filter(|s| s.status == "succeeded").count() as u64);
        steps.append_value(run.steps.len() as u64);
        attempts.append_value(run.steps.iter().map(|s| u64::from(s.attempts)).sum());
        // The running step, or the one that ended the run.
        current.append_option(
            run.steps
                .iter()
                .find(|s| s.status == "running")
                .or_else(|| run.steps.iter().find(|s| s.error.is_some()))
                .map(|s| s.name.as_str()),
        );
        error.append_option(run.error.as_deref());
        host.append_value(&run.host);
        pid.append_value(run.pid);
        for step in &run.steps {
            let item = details.values();
            item.field_builder::<StringBuilder>(0)
                .expect("name")
                .append_value(&step.name);
            item.field_builder::<StringBuilder>(1)
                .expect("status")
                .append_value(&step.status);
            item.field_builder::<UInt32Builder>(2)
                .expect("attempts")
                .append_value(step.attempts);
            item.field_builder::<Float64Builder>(3)
                .expect("seconds")
                .append_option(step.started.zip(step.ended).map(|(s, e)| e - s));
            item.field_builder::<StringBuilder>(4)
                .expect("error")
                .append_option(step.error.as_deref());
            item.append(true);
        }
        details.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(job.finish()),
        Arc::new(run_id.finish()),
        Arc::new(trigger.finish()),
        Arc::new(status.finish()),
        Arc::new(scheduled.finish()),
        Arc::new(run_date.finish()),
        Arc::new(started.finish()),
        Arc::new(ended.finish()),
        Arc::new(seconds.finish()),
        Arc::new(done.finish()),
        Arc::new(steps.finish()),
        Arc::new(attempts.finish()),
        Arc::new(current.finish()),
        Arc::new(error.finish()),
        Arc::new(host.finish()),
        Arc::new(pid.finish()),
        Arc::new(details.finish()),
    ];
    Ok(RecordBatch::try_new(runs_schema(), columns)?)
}

#[async_trait]
impl ComputeRows for JobRunsTable {
    fn schema(&self) -> SchemaRef {
        runs_schema()
    }

    async fn rows(&self, _state: &dyn CatalogSession) -> DfResult<RecordBatch> {
        let names = match &self.job {
            Some(job) => vec![job.clone()],
            None => self.jobs.jobs().await?,
        };
        let mut runs = Vec::new();
        for name in names {
            runs.extend(self.jobs.runs(&name).await?);
        }
        runs_batch(&runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job: &str, id: &str, started: f64) -> RunRecord {
        RunRecord {
            job: job.into(),
            run_id: id.into(),
            trigger: "manual".into(),
            scheduled_for: None,
            run_date: "2026-11-27".into(),
            params: BTreeMap::new(),
            status: RunStatus::Running,
            started,
            ended: None,
            heartbeat: started,
            host: "h".into(),
            pid: 1,
            steps: vec![StepRecord {
                name: "etl".into(),
                status: "running".into(),
                attempts: 1,
                started: Some(started),
                ended: None,
                error: None,
            }],
            error: None,
        }
    }

    #[tokio::test]
    async fn runs_are_created_once_and_listed_in_order() {
        let session = quiver_engine::Session::try_new(quiver_engine::SessionOptions {
            default_store: "memory://jobs-test/".into(),
            ..Default::default()
        })
        .unwrap();
        let jobs = JobStore::new(&session).unwrap();
        let late = record("nightly", "scheduled__20261127T000010Z", 20.0);
        let early = record("nightly", "manual__20261127T000000Z_1", 10.0);
        assert!(jobs.create_run(&late).await.unwrap());
        assert!(
            !jobs.create_run(&late).await.unwrap(),
            "a second create of the same run id must fail"
        );
        assert!(jobs.create_run(&early).await.unwrap());
        let runs = jobs.runs("nightly").await.unwrap();
        assert_eq!(runs, vec![early.clone(), late]);
        assert!(
            !jobs
                .cancel_requested("nightly", &early.run_id)
                .await
                .unwrap()
        );
        jobs.request_cancel("nightly", &early.run_id).await.unwrap();
        assert!(
            jobs.cancel_requested("nightly", &early.run_id)
                .await
                .unwrap()
        );
        assert_eq!(jobs.jobs().await.unwrap(), vec!["nightly".to_string()]);
        assert!(jobs.runs("../x").await.is_err());

        let ctx = session.context();
        ctx.register_udtf("job_runs", Arc::new(JobRunsFunc::new(jobs)));
        let batches = ctx
            .sql("SELECT run_id, status, current_step, steps FROM job_runs('nightly')")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        datafusion::assert_batches_eq!(
            [
                "+-----------------------------+---------+--------------+-------+",
                "| run_id                      | status  | current_step | steps |",
                "+-----------------------------+---------+--------------+-------+",
                "| manual__20261127T000000Z_1  | running | etl          | 1     |",
                "| scheduled__20261127T000010Z | running | etl          | 1     |",
                "+-----------------------------+---------+--------------+-------+",
            ],
            &batches
        );
    }
}
