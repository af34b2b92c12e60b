//! Running one job: its record in the store, steps in order with timeouts and retries, a log
//! written while it runs (readable from another terminal), a heartbeat, and cancellation
//! through a marker in the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use quiver_engine::time::unix_now;
use quiver_engine::{QuiverError, Result, SessionOptions};
use quiver_operators::jobs::{JobStore, RunRecord, RunStatus, StepRecord};
use tokio::sync::watch;

use super::file::{BUILTINS, JobFile, run_values, step_text, substitute};
use crate::run::{Format, Output, run_all_until};

/// How often a running run rewrites its record (its heartbeat).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);
/// A running run whose heartbeat is older than this is taken as dead.
pub(crate) const STALE: Duration = Duration::from_secs(20);

/// Why a run should stop before its steps are done.
pub(crate) type Stop = Option<(RunStatus, String)>;

/// How a run was started.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Trigger {
    /// `quiver job run`.
    Manual,
    /// The driver's scheduler, for this scheduled time.
    Schedule(DateTime<Utc>),
}

/// This host's name, recorded with each run.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether the process `pid` on this host is alive (not gone, not a zombie).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether a run is still running somewhere: its status says so, its heartbeat is recent, and
/// when it runs on this host, its process exists.
pub(crate) fn is_alive(run: &RunRecord, host: &str) -> bool {
    run.status == RunStatus::Running
        && unix_now() - run.heartbeat < STALE.as_secs_f64()
        && (run.host != host || pid_alive(run.pid))
}

/// The runs of `job` that are running now.
pub(crate) async fn active_runs(jobs: &JobStore, job: &str) -> Result<Vec<RunRecord>> {
    let host = hostname();
    Ok(jobs
        .runs(job)
        .await?
        .into_iter()
        .filter(|r| is_alive(r, &host))
        .collect())
}

/// A new run's record and the values its `${...}` resolve to.
pub(crate) fn new_run(
    job: &JobFile,
    trigger: Trigger,
    overrides: &BTreeMap<String, String>,
) -> Result<(RunRecord, BTreeMap<String, String>)> {
    let now = Utc::now();
    let (run_id, when, trigger_name, scheduled_for) = match trigger {
        Trigger::Manual => (
            format!(
                "manual__{}_{}",
                now.format("%Y%m%dT%H%M%S%3fZ"),
                std::process::id()
            ),
            now,
            "manual",
            None,
        ),
        Trigger::Schedule(t) => (
            format!("scheduled__{}", t.format("%Y%m%dT%H%M%SZ")),
            t,
            "schedule",
            Some(t.timestamp_millis() as f64 / 1000.0),
        ),
    };
    let tz = job.schedule.as_ref().map_or(chrono_tz::UTC, |s| s.timezone);
    let local = when.with_timezone(&tz);
    let builtins: BTreeMap<String, String> = BUILTINS
        .iter()
        .map(|b| {
            let value = match *b {
                "job" => job.name.clone(),
                "run_id" => run_id.clone(),
                "run_date" => local.format("%Y-%m-%d").to_string(),
                _ => local.to_rfc3339(),
            };
            (b.to_string(), value)
        })
        .collect();
    let values = run_values(job, &builtins, overrides).map_err(QuiverError::Config)?;
    let started = unix_now();
    let record = RunRecord {
        job: job.name.clone(),
        run_id,
        trigger: trigger_name.into(),
        scheduled_for,
        run_date: builtins["run_date"].clone(),
        params: values
            .iter()
            .filter(|(k, _)| job.params.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        status: RunStatus::Running,
        started,
        ended: None,
        heartbeat: started,
        host: hostname(),
        pid: std::process::id(),
        steps: job
            .steps
            .iter()
            .map(|s| StepRecord {
                name: s.name.clone(),
                status: "pending".into(),
                attempts: 0,
                started: None,
                ended: None,
                error: None,
            })
            .collect(),
        error: None,
    };
    Ok((record, values))
}

/// The run's record and log, written to the store by one writer at a time.
struct Shared {
    jobs: JobStore,
    record: tokio::sync::Mutex<RunRecord>,
    log: Arc<Mutex<Vec<u8>>>,
    /// How much of the log is in the store.
    written: AtomicUsize,
}

impl Shared {
    /// Changes the record and writes it.
    async fn update(&self, change: impl FnOnce(&mut RunRecord)) -> Result<()> {
        let mut record = self.record.lock().await;
        change(&mut record);
        record.heartbeat = unix_now();
        self.jobs.put_run(&record).await?;
        Ok(())
    }

    /// Writes the log if it grew since it was last written.
    async fn flush_log(&self) -> Result<()> {
        // The record's lock makes the writes of the log one at a time, in order.
        let record = self.record.lock().await;
        let log = {
            let log = self.log.lock().expect("log lock");
            if log.len() == self.written.load(Ordering::Acquire) {
                return Ok(());
            }
            log.clone()
        };
        let len = log.len();
        self.jobs.put_log(&record.job, &record.run_id, log).await?;
        self.written.store(len, Ordering::Release);
        Ok(())
    }
}

/// Writes the log every second and the heartbeat every [`HEARTBEAT`]; turns a cancel marker
/// into a stop.
async fn keep(shared: Arc<Shared>, stop: watch::Sender<Stop>) {
    let (job, run) = {
        let r = shared.record.lock().await;
        (r.job.clone(), r.run_id.clone())
    };
    let mut beat = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(e) = shared.flush_log().await {
            eprintln!("job {job} run {run}: cannot write the log: {e}");
        }
        if beat.elapsed() >= HEARTBEAT {
            beat = tokio::time::Instant::now();
            if let Err(e) = shared.update(|_| {}).await {
                eprintln!("job {job} run {run}: cannot write the heartbeat: {e}");
            }
        }
        if stop.borrow().is_none()
            && matches!(shared.jobs.cancel_requested(&job, &run).await, Ok(true))
        {
            let _ = stop.send(Some((
                RunStatus::Cancelled,
                "cancelled with quiver job cancel".into(),
            )));
        }
    }
}

/// Resolves when a stop is requested.
async fn stopped(rx: &mut watch::Receiver<Stop>) -> (RunStatus, String) {
    loop {
        if let Some(stop) = rx.borrow_and_update().clone() {
            return stop;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// How an attempt ended.
enum Attempt {
    Done,
    Failed(String),
    Stopped(RunStatus, String),
}

/// Runs `record` (already created in the store) to its end and returns its final record.
/// Log lines go to the store, and to stderr with `echo`. Sending a stop on `stop` ends the run
/// with that status.
pub(crate) async fn execute(
    options: &SessionOptions,
    job: &JobFile,
    record: RunRecord,
    values: BTreeMap<String, String>,
    echo: bool,
    stop: watch::Sender<Stop>,
) -> Result<RunRecord> {
    let log: Arc<Mutex<Vec<u8>>> = Arc::default();
    let prefix = format!("{} {}", job.name, record.run_id);
    let sink: quiver_engine::LogSink = {
        let log = Arc::clone(&log);
        Arc::new(move |text: &str| {
            let time = Utc::now().format("%H:%M:%S");
            let mut log = log.lock().expect("log lock");
            for line in text.lines() {
                let line = format!("[{time}] {line}\n");
                if echo {
                    eprint!("{line}");
                }
                log.extend_from_slice(line.as_bytes());
            }
        })
    };
    let session = quiver_sql::session(options.clone())?.with_log(Arc::clone(&sink));
    let shared = Arc::new(Shared {
        jobs: quiver_operators::jobs::JobStore::new(&session)?,
        record: tokio::sync::Mutex::new(record),
        log: Arc::clone(&log),
        written: AtomicUsize::new(0),
    });
    let mut rx = stop.subscribe();
    let keeper = tokio::spawn(keep(Arc::clone(&shared), stop));
    session.log(&format!(
        "run {} of job {} ({} steps) on {}:{}",
        prefix,
        job.name,
        job.steps.len(),
        hostname(),
        std::process::id()
    ));
    let output = Output {
        format: Format::Table,
        max_rows: 20,
    };
    let total = job.steps.len();
    let mut outcome: Option<(RunStatus, String)> = None;
    for (i, step) in job.steps.iter().enumerate() {
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            // What was logged so far is in the store before each attempt (a crash loses none).
            shared.flush_log().await?;
            let key = format!("{}/{}/attempt-{attempt}", job.name, step.name);
            quiver_engine::fault::point_async("job_step", &key).await?;
            shared
                .update(|r| {
                    let s = &mut r.steps[i];
                    s.status = "running".into();
                    s.attempts = attempt;
                    s.started.get_or_insert_with(unix_now);
                })
                .await?;
            session.log(&format!(
                "step '{}' ({}/{total}), attempt {attempt} of {}",
                step.name,
                i + 1,
                step.retries + 1
            ));
            // A stop (cancel, the driver stopping) or the step's timeout cancels the running
            // statement, which aborts a write it was making before it returns.
            let deadline = step
                .timeout
                .map(|limit| tokio::time::Instant::now() + limit);
            let stop_rx = rx.clone();
            let mut cancel = move || -> futures::future::BoxFuture<'static, ()> {
                let mut stop_rx = stop_rx.clone();
                Box::pin(async move {
                    tokio::select! {
                        _ = stopped(&mut stop_rx) => {}
                        () = async {
                            match deadline {
                                Some(deadline) => tokio::time::sleep_until(deadline).await,
                                None => std::future::pending().await,
                            }
                        } => {}
                    }
                })
            };
            let ran = async {
                let text = step_text(&session, step).await?;
                let sql = substitute(&text, &values).map_err(QuiverError::Config)?;
                run_all_until(&session, &sql, output, &mut cancel).await
            }
            .await;
            let stop = rx.borrow().clone();
            let result = match (ran, stop) {
                (_, Some((status, why))) => Attempt::Stopped(status, why),
                (Ok(()), None) => Attempt::Done,
                (Err(_), None) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                    Attempt::Failed(format!(
                        "timed out after {}s (timeout_seconds)",
                        step.timeout.unwrap_or_default().as_secs_f64()
                    ))
                }
                (Err(e), None) => Attempt::Failed(e.to_string()),
            };
            match result {
                Attempt::Failed(e) if attempt <= step.retries => {
                    session.log(&format!(
                        "step '{}' attempt {attempt} failed: {e}; retrying in {}s",
                        step.name,
                        step.retry_delay.as_secs_f64()
                    ));
                    shared
                        .update(|r| r.steps[i].error = Some(e.clone()))
                        .await?;
                    tokio::select! {
                        () = tokio::time::sleep(step.retry_delay) => {}
                        (status, why) = stopped(&mut rx) => break Attempt::Stopped(status, why),
                    }
                }
                other => break other,
            }
        };
        let ended = unix_now();
        match result {
            Attempt::Done => {
                session.log(&format!("step '{}' succeeded", step.name));
                shared
                    .update(|r| {
                        let s = &mut r.steps[i];
                        s.status = "succeeded".into();
                        s.ended = Some(ended);
                        s.error = None;
                    })
                    .await?;
            }
            Attempt::Failed(e) => {
                session.log(&format!(
                    "step '{}' failed after {attempt} attempt(s): {e}",
                    step.name
                ));
                shared
                    .update(|r| {
                        let s = &mut r.steps[i];
                        s.status = "failed".into();
                        s.ended = Some(ended);
                        s.error = Some(e.clone());
                    })
                    .await?;
                outcome = Some((
                    RunStatus::Failed,
                    format!(
                        "step '{}' failed after {attempt} attempt(s): {e}",
                        step.name
                    ),
                ));
                break;
            }
            Attempt::Stopped(status, why) => {
                session.log(&format!("step '{}' stopped: {why}", step.name));
                shared
                    .update(|r| {
                        let s = &mut r.steps[i];
                        s.status = status.as_str().into();
                        s.ended = Some(ended);
                        s.error = Some(why.clone());
                    })
                    .await?;
                outcome = Some((status, why));
                break;
            }
        }
    }
    keeper.abort();
    let _ = keeper.await;
    let (status, error) = match outcome {
        Some((status, why)) => (status, Some(why)),
        None => (RunStatus::Succeeded, None),
    };
    session.log(&format!("run {} {}", prefix, status.as_str()));
    shared
        .update(|r| {
            r.status = status;
            r.ended = Some(unix_now());
            r.error = error.clone();
            for s in &mut r.steps {
                if s.status == "pending" {
                    s.status = "skipped".into();
                }
            }
        })
        .await?;
    shared.flush_log().await?;
    let record = shared.record.lock().await.clone();
    Ok(record)
}
