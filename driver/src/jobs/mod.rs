//! Scheduled batch jobs: job files ([`file`]), running one run ([`runner`]), the driver's
//! scheduler ([`scheduler`]) and `quiver job run|check|list|runs|logs|cancel`.

pub(crate) mod file;
pub(crate) mod runner;
pub(crate) mod scheduler;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use quiver_engine::time::{timestamp_micros, timestamp_type};
use quiver_engine::{QuiverError, Result, SessionOptions};
use quiver_operators::jobs::{JobStore, RunStatus};
use tokio::sync::watch;

use crate::run::{Output, print_new, run_all};
use quiver_engine::{bail, err};
use runner::{Stop, Trigger, active_runs, execute, new_run};

/// What `quiver job` does.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum JobCommand {
    /// Runs a job now on the embedded engine, with its log on stderr; fails when the run fails.
    Run {
        /// A job file (path or URL), or the name of a job a driver loaded.
        job: String,
        /// Replaces a parameter of the job file for this run (repeatable).
        #[arg(short, long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
        params: Vec<(String, String)>,
    },
    /// Checks a job file and shows its steps and next scheduled times.
    Check {
        /// The job file (path or URL).
        file: String,
    },
    /// The jobs in the store: schedule, next run, runs, last status, active runs.
    List,
    /// The runs of a job, oldest first.
    Runs {
        /// The job.
        job: String,
    },
    /// A run's log (the newest run when none is named); with --follow, until the run ends.
    Logs {
        /// The job.
        job: String,
        /// The run id (see `quiver job runs`).
        run: Option<String>,
        /// Keep printing new lines until the run ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Asks the running runs of a job (or one run) to stop; they end as cancelled.
    Cancel {
        /// The job.
        job: String,
        /// Only this run.
        run: Option<String>,
    },
}

fn key_value(text: &str) -> std::result::Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))
}

/// `quiver job ...`.
pub(crate) async fn job_command(
    options: SessionOptions,
    command: JobCommand,
    output: Output,
) -> Result<()> {
    let session = quiver_sql::session(options.clone())?;
    let jobs = JobStore::new(&session)?;
    match command {
        JobCommand::Run { job, params } => {
            let location = if job.ends_with(".toml") || job.contains('/') {
                job
            } else {
                jobs.job(&job).await?.map(|j| j.file).ok_or_else(|| {
                    err!(
                        QuiverError::Config,
                        "'{job}' is neither a job file (*.toml) nor a job a driver loaded into {}",
                        jobs.url(&job)
                    )
                })?
            };
            let job = file::load(&session, &location).await?;
            let active = active_runs(&jobs, &job.name).await?;
            if active.len() >= job.max_active_runs as usize {
                bail!(
                    QuiverError::Config,
                    "job {} has {} active run(s) ({}); max_active_runs = {}",
                    job.name,
                    active.len(),
                    active
                        .iter()
                        .map(|r| r.run_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    job.max_active_runs
                );
            }
            let overrides: BTreeMap<String, String> = params.into_iter().collect();
            let (record, values) = new_run(&job, Trigger::Manual, &overrides)?;
            if !jobs.create_run(&record).await? {
                bail!(QuiverError::Config, "run {} exists already", record.run_id);
            }
            eprintln!(
                "run {} of job {}: follow it with `quiver job logs {} {} --follow`",
                record.run_id, job.name, job.name, record.run_id
            );
            let (stop, _) = watch::channel::<Stop>(None);
            let on_signal = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    quiver_driver::shutdown_signal().await;
                    let _ = stop.send(Some((
                        RunStatus::Cancelled,
                        "cancelled: quiver job run was interrupted (Ctrl-C or SIGTERM)".into(),
                    )));
                })
            };
            let record = execute(&options, &job, record, values, true, stop).await;
            on_signal.abort();
            let record = record?;
            match record.status {
                RunStatus::Succeeded => Ok(()),
                status => Err(err!(
                    QuiverError::Config,
                    "run {} {}: {}",
                    record.run_id,
                    status.as_str(),
                    record.error.unwrap_or_default()
                )),
            }
        }
        JobCommand::Check { file } => {
            let job = file::load(&session, &file).await?;
            println!("job {} ({})", job.name, job.location);
            match &job.schedule {
                Some(s) => {
                    let mut t = Utc::now();
                    let mut next = Vec::new();
                    for _ in 0..3 {
                        match s.next_after(t) {
                            Some(n) => {
                                next.push(n.with_timezone(&s.timezone).to_rfc3339());
                                t = n;
                            }
                            None => break,
                        }
                    }
                    println!(
                        "schedule '{}' in {}, max_active_runs = {}, catchup = {}; next: {}",
                        s.pattern,
                        s.timezone.name(),
                        job.max_active_runs,
                        job.catchup.as_str(),
                        next.join(", ")
                    );
                }
                None => println!("no schedule: runs with quiver job run"),
            }
            for (key, value) in &job.params {
                println!("param {key} = {value}");
            }
            for (i, step) in job.steps.iter().enumerate() {
                let body = match &step.body {
                    file::StepBody::Sql(sql) => {
                        sql.split_whitespace().collect::<Vec<_>>().join(" ")
                    }
                    file::StepBody::File(url) => format!("file {url}"),
                };
                println!(
                    "step {} '{}': retries {}, retry delay {}s, timeout {}: {}",
                    i + 1,
                    step.name,
                    step.retries,
                    step.retry_delay.as_secs_f64(),
                    step.timeout
                        .map_or("none".into(), |t| format!("{}s", t.as_secs_f64())),
                    body
                );
            }
            Ok(())
        }
        JobCommand::List => {
            let names = jobs.jobs().await?;
            let mut rows: Vec<[Option<String>; 6]> = Vec::new();
            let mut next_runs = Vec::new();
            let mut counts = Vec::new();
            for name in &names {
                let job = jobs.job(name).await?;
                let runs = jobs.runs(name).await?;
                let active = active_runs(&jobs, name).await?.len() as u64;
                let last = runs.iter().max_by(|a, b| a.started.total_cmp(&b.started));
                rows.push([
                    Some(name.clone()),
                    job.as_ref().and_then(|j| j.schedule.clone()),
                    job.as_ref().map(|j| j.timezone.clone()),
                    last.map(|r| r.run_id.clone()),
                    last.map(|r| r.status.as_str().to_string()),
                    job.as_ref().map(|j| j.file.clone()),
                ]);
                next_runs.push(job.as_ref().and_then(|j| j.next_run).map(timestamp_micros));
                counts.push((runs.len() as u64, active));
            }
            let text = |i: usize| -> ArrayRef {
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>(),
                ))
            };
            let schema = Arc::new(Schema::new(vec![
                Field::new("job", DataType::Utf8, false),
                Field::new("schedule", DataType::Utf8, true),
                Field::new("timezone", DataType::Utf8, true),
                Field::new("next_run", timestamp_type(), true),
                Field::new("runs", DataType::UInt64, false),
                Field::new("active", DataType::UInt64, false),
                Field::new("last_run", DataType::Utf8, true),
                Field::new("last_status", DataType::Utf8, true),
                Field::new("file", DataType::Utf8, true),
            ]));
            let columns: Vec<ArrayRef> = vec![
                text(0),
                text(1),
                text(2),
                Arc::new(TimestampMicrosecondArray::from(next_runs).with_timezone("UTC")),
                Arc::new(UInt64Array::from(
                    counts.iter().map(|c| c.0).collect::<Vec<_>>(),
                )),
                Arc::new(UInt64Array::from(
                    counts.iter().map(|c| c.1).collect::<Vec<_>>(),
                )),
                text(3),
                text(4),
                text(5),
            ];
            let batch = RecordBatch::try_new(schema, columns)
                .map_err(datafusion::error::DataFusionError::from)?;
            output
                .print(&[batch])
                .map_err(datafusion::error::DataFusionError::from)?;
            Ok(())
        }
        JobCommand::Runs { job } => {
            let sql = format!(
                "SELECT run_id, trigger, status, scheduled_for, started, seconds, steps_done, \
                 steps, attempts, current_step, error FROM job_runs('{}') ORDER BY started, run_id",
                job.replace('\'', "''")
            );
            run_all(&session, &sql, output).await
        }
        JobCommand::Logs { job, run, follow } => {
            let run = match run {
                Some(run) => run,
                None => jobs
                    .runs(&job)
                    .await?
                    .last()
                    .map(|r| r.run_id.clone())
                    .ok_or_else(|| {
                        err!(
                            QuiverError::Config,
                            "job '{job}' has no runs at {}",
                            jobs.url(&job)
                        )
                    })?,
            };
            let mut printed = 0;
            loop {
                // Read the record first: a log read after a final status is complete.
                let record = jobs
                    .run(&job, &run)
                    .await?
                    .ok_or_else(|| err!(QuiverError::Config, "job '{job}' has no run '{run}'"))?;
                let log = jobs.log(&job, &run).await?.unwrap_or_default();
                print_new(&log, &mut printed)?;
                let host = runner::hostname();
                if !follow || !runner::is_alive(&record, &host) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        JobCommand::Cancel { job, run } => {
            let targets: Vec<String> = match run {
                Some(run) => {
                    let record = jobs.run(&job, &run).await?.ok_or_else(|| {
                        err!(QuiverError::Config, "job '{job}' has no run '{run}'")
                    })?;
                    if record.status.is_final() {
                        bail!(
                            QuiverError::Config,
                            "run {run} has ended already ({})",
                            record.status.as_str()
                        );
                    }
                    vec![run]
                }
                None => active_runs(&jobs, &job)
                    .await?
                    .into_iter()
                    .map(|r| r.run_id)
                    .collect(),
            };
            if targets.is_empty() {
                bail!(QuiverError::Config, "job '{job}' has no running runs");
            }
            for run in &targets {
                jobs.request_cancel(&job, run).await?;
            }
            // The running process checks for the marker every second.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            for run in &targets {
                loop {
                    let record = jobs.run(&job, run).await?;
                    match record {
                        Some(r) if r.status.is_final() => {
                            println!("{run}: {}", r.status.as_str());
                            break;
                        }
                        _ if tokio::time::Instant::now() >= deadline => {
                            bail!(
                                QuiverError::Config,
                                "run {run} did not stop within 30 s; it stops at its next check"
                            );
                        }
                        _ => tokio::time::sleep(Duration::from_millis(300)).await,
                    }
                }
            }
            Ok(())
        }
    }
}
