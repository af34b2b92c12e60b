//! The driver's job scheduler: loads job files, fires runs at their cron times (respecting
//! `max_active_runs` and the catch-up policy), and marks runs whose process died as
//! interrupted. The store is the source of truth: a scheduled run's id is its time, created
//! only if absent, so a restarted driver neither loses nor repeats runs.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use quiver_engine::time::unix_now;
use quiver_engine::{QuiverError, Result, Session, SessionOptions};
use quiver_operators::jobs::{JobRecord, JobStore, RunStatus};
use tokio::sync::watch;
use tokio::task::JoinSet;
use url::Url;

use super::file::{Catchup, JobFile, job_files, load, read_text};
use super::runner::{Stop, Trigger, active_runs, execute, hostname, is_alive, new_run};
use quiver_engine::bail;

/// Scheduled times kept waiting per job with `catchup = "all"`, at most.
const MAX_PENDING: usize = 1000;

/// One scheduled job.
struct Scheduled {
    job: JobFile,
    /// The last scheduled time handled (run, queued or skipped).
    last: DateTime<Utc>,
    /// Times waiting for a free run slot.
    pending: VecDeque<DateTime<Utc>>,
}

fn utc(seconds: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis((seconds * 1000.0).round() as i64).unwrap_or_default()
}

/// Marks runs of `job` that claim to be running but whose process is gone as interrupted.
pub(crate) async fn recover(jobs: &JobStore, job: &str) -> Result<usize> {
    let host = hostname();
    let me = format!("{host}:{}", std::process::id());
    let mut count = 0;
    for mut run in jobs.runs(job).await? {
        if run.status != RunStatus::Running || is_alive(&run, &host) {
            continue;
        }
        let why = format!(
            "interrupted: the process running it ({}:{}) stopped (last heartbeat {}); found by the driver {me}",
            run.host,
            run.pid,
            utc(run.heartbeat).to_rfc3339()
        );
        eprintln!("job {job}: run {} {why}", run.run_id);
        run.status = RunStatus::Interrupted;
        run.ended = Some(unix_now());
        for step in &mut run.steps {
            match step.status.as_str() {
                "running" => {
                    step.status = "interrupted".into();
                    step.error = Some(why.clone());
                }
                "pending" => step.status = "skipped".into(),
                _ => {}
            }
        }
        run.error = Some(why);
        jobs.put_run(&run).await?;
        count += 1;
    }
    Ok(count)
}

impl Scheduled {
    /// Picks up where the store says the schedule was: the newest scheduled run, and applies
    /// the catch-up policy to the times missed since.
    async fn start(job: JobFile, jobs: &JobStore, now: DateTime<Utc>) -> Result<Self> {
        let schedule = job
            .schedule
            .as_ref()
            .expect("scheduled jobs have a schedule");
        let last_run = jobs
            .runs(&job.name)
            .await?
            .iter()
            .filter_map(|r| r.scheduled_for)
            .map(utc)
            .max();
        let mut pending = VecDeque::new();
        if let Some(last) = last_run {
            let mut missed = Vec::new();
            let mut t = last;
            while let Some(next) = schedule.next_after(t) {
                if next > now || missed.len() >= MAX_PENDING {
                    break;
                }
                missed.push(next);
                t = next;
            }
            if !missed.is_empty() {
                eprintln!(
                    "job {}: {} scheduled time(s) missed since {} (catchup = {})",
                    job.name,
                    missed.len(),
                    last.to_rfc3339(),
                    job.catchup.as_str()
                );
            }
            match job.catchup {
                Catchup::None => {}
                Catchup::Latest => pending.extend(missed.last()),
                Catchup::All => pending.extend(missed),
            }
        }
        Ok(Self {
            job,
            last: now,
            pending,
        })
    }

    /// Queues the times that came since the last tick, by the catch-up policy.
    fn tick(&mut self, now: DateTime<Utc>) {
        let schedule = self.job.schedule.as_ref().expect("scheduled");
        while let Some(next) = schedule.next_after(self.last) {
            if next > now {
                break;
            }
            self.last = next;
            // Every time that came while the driver ran is queued, also when a busy machine
            // makes a tick late; [`Self::drop_waiting`] drops those max_active_runs blocks.
            if self.pending.len() < MAX_PENDING {
                self.pending.push_back(next);
            }
        }
    }

    /// With `catchup` none or latest, a time that cannot start because max_active_runs is
    /// reached is dropped when a newer one comes: only the newest waits. Returns whether any
    /// was dropped.
    fn drop_waiting(&mut self) -> bool {
        if self.job.catchup == Catchup::All {
            return false;
        }
        let mut dropped = false;
        while self.pending.len() > 1 {
            let old = self.pending.pop_front().expect("more than one");
            eprintln!(
                "job {}: skipping the run for {} (max_active_runs = {} reached)",
                self.job.name,
                old.to_rfc3339(),
                self.job.max_active_runs
            );
            dropped = true;
        }
        dropped
    }

    async fn record(&self, jobs: &JobStore) -> Result<()> {
        let schedule = self.job.schedule.as_ref().expect("scheduled");
        let next = self
            .pending
            .front()
            .copied()
            .or_else(|| schedule.next_after(self.last));
        jobs.put_job(&JobRecord {
            name: self.job.name.clone(),
            file: self.job.location.to_string(),
            schedule: Some(schedule.pattern.clone()),
            timezone: schedule.timezone.name().to_string(),
            max_active_runs: self.job.max_active_runs,
            catchup: self.job.catchup.as_str().into(),
            next_run: next.map(|t| t.timestamp_millis() as f64 / 1000.0),
            driver: format!("{}:{}", hostname(), std::process::id()),
            loaded: unix_now(),
        })
        .await?;
        Ok(())
    }
}

/// The job files of the driver's folder as last read: their text and the jobs scheduled.
struct JobFiles {
    location: String,
    texts: BTreeMap<Url, String>,
    scheduled: Vec<Scheduled>,
}

impl JobFiles {
    /// Loads new and changed job files, and stops scheduling the jobs of removed ones. A file
    /// that no longer loads keeps its job as it was, with the error logged.
    async fn reload(&mut self, session: &Session, jobs: &JobStore) -> Result<()> {
        let files = job_files(session, &self.location).await?;
        let gone: Vec<Url> = self
            .texts
            .keys()
            .filter(|u| !files.contains(u))
            .cloned()
            .collect();
        for url in gone {
            self.texts.remove(&url);
            if let Some(i) = self.scheduled.iter().position(|s| s.job.location == url) {
                let s = self.scheduled.remove(i);
                eprintln!(
                    "job {}: {url} was removed, the job is no longer scheduled",
                    s.job.name
                );
            }
        }
        for url in files {
            let text = match read_text(session, &url).await {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("cannot read {url}: {e}");
                    continue;
                }
            };
            if self.texts.get(&url) == Some(&text) {
                continue;
            }
            let reloaded = self.texts.insert(url.clone(), text).is_some();
            let job = match load(session, url.as_str()).await {
                Ok(job) => job,
                Err(e) => {
                    eprintln!("skipping {url}: {e}");
                    continue;
                }
            };
            let previous = self.scheduled.iter().position(|s| s.job.location == url);
            if let Some(other) = self
                .scheduled
                .iter()
                .find(|s| s.job.name == job.name && s.job.location != url)
            {
                eprintln!(
                    "skipping {url}: job {} is already scheduled from {}",
                    job.name, other.job.location
                );
                continue;
            }
            let recovered = recover(jobs, &job.name).await?;
            if recovered > 0 {
                eprintln!("job {}: {recovered} interrupted run(s) recorded", job.name);
            }
            if job.schedule.is_none() {
                if let Some(i) = previous {
                    self.scheduled.remove(i);
                }
                eprintln!(
                    "job {} has no schedule: run it with quiver job run",
                    job.name
                );
                continue;
            }
            let now = Utc::now();
            let s = match previous {
                // The same job, changed: its place in the schedule and waiting times stay.
                Some(i) if self.scheduled[i].job.name == job.name => {
                    let mut s = self.scheduled.remove(i);
                    s.job = job;
                    s
                }
                Some(i) => {
                    self.scheduled.remove(i);
                    Scheduled::start(job, jobs, now).await?
                }
                None => Scheduled::start(job, jobs, now).await?,
            };
            s.record(jobs).await?;
            eprintln!(
                "job {}: {}schedule '{}' ({}), next run {}",
                s.job.name,
                if reloaded { "reloaded, " } else { "" },
                s.job.schedule.as_ref().map_or("", |s| s.pattern.as_str()),
                s.job.schedule.as_ref().map_or("UTC", |s| s.timezone.name()),
                s.pending
                    .front()
                    .copied()
                    .or_else(|| s.job.schedule.as_ref().and_then(|c| c.next_after(now)))
                    .map_or("never".into(), |t| t.to_rfc3339())
            );
            self.scheduled.push(s);
        }
        Ok(())
    }
}

/// `quiver driver --jobs <location>`: schedules every job file there until Ctrl-C or SIGTERM,
/// then stops the runs it started (they are recorded as interrupted). The files are read again
/// every `reload`: new and changed files are loaded, removed ones stop being scheduled.
pub(crate) async fn drive(
    options: SessionOptions,
    location: &str,
    tick: Duration,
    reload: Duration,
) -> Result<()> {
    let session = quiver_sql::session(options.clone())?;
    let jobs = JobStore::new(&session)?;
    if job_files(&session, location).await?.is_empty() {
        bail!(QuiverError::Config, "no job files (*.toml) at {location}");
    }
    let mut files = JobFiles {
        location: location.to_string(),
        texts: BTreeMap::new(),
        scheduled: Vec::new(),
    };
    files.reload(&session, &jobs).await?;
    if files.scheduled.is_empty() {
        bail!(
            QuiverError::Config,
            "no scheduled job could be loaded from {location}"
        );
    }
    let mut last_reload = tokio::time::Instant::now();
    let (shutdown, _) = watch::channel::<Stop>(None);
    let mut running: JoinSet<(String, Result<String>)> = JoinSet::new();
    let mut active: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_recover = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(tick);
    let signal = quiver_driver::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut signal => break,
            Some(done) = running.join_next() => {
                if let Ok((job, result)) = done {
                    *active.entry(job.clone()).or_default() -= 1;
                    match result {
                        Ok(line) => eprintln!("{line}"),
                        Err(e) => eprintln!("job {job}: {e}"),
                    }
                }
                continue;
            }
        }
        if last_reload.elapsed() >= reload {
            last_reload = tokio::time::Instant::now();
            if let Err(e) = files.reload(&session, &jobs).await {
                eprintln!("cannot reload the job files at {location}: {e}");
            }
        }
        let now = Utc::now();
        if last_recover.elapsed() >= Duration::from_secs(10) {
            last_recover = tokio::time::Instant::now();
            for s in &files.scheduled {
                if let Err(e) = recover(&jobs, &s.job.name).await {
                    eprintln!("job {}: {e}", s.job.name);
                }
            }
        }
        for s in &mut files.scheduled {
            let before = s.pending.len();
            s.tick(now);
            let mut changed = s.pending.len() != before;
            while let Some(&when) = s.pending.front() {
                // Runs of this driver, and runs elsewhere (quiver job run, another driver).
                let mine = active.get(&s.job.name).copied().unwrap_or(0);
                let others = match active_runs(&jobs, &s.job.name).await {
                    Ok(runs) => runs
                        .iter()
                        .filter(|r| r.pid != std::process::id() || r.host != hostname())
                        .count(),
                    Err(e) => {
                        eprintln!("job {}: {e}", s.job.name);
                        break;
                    }
                };
                if mine + others >= s.job.max_active_runs as usize {
                    break;
                }
                s.pending.pop_front();
                changed = true;
                let (record, values) =
                    match new_run(&s.job, Trigger::Schedule(when), &BTreeMap::new()) {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("job {}: {e}", s.job.name);
                            continue;
                        }
                    };
                match jobs.create_run(&record).await {
                    Ok(true) => {}
                    Ok(false) => {
                        eprintln!("job {}: run {} exists already", s.job.name, record.run_id);
                        continue;
                    }
                    Err(e) => {
                        eprintln!(
                            "job {}: cannot create run {}: {e}",
                            s.job.name, record.run_id
                        );
                        continue;
                    }
                }
                eprintln!("job {}: starting run {}", s.job.name, record.run_id);
                *active.entry(s.job.name.clone()).or_default() += 1;
                let (job, options, stop) = (s.job.clone(), options.clone(), shutdown.clone());
                running.spawn(async move {
                    let name = job.name.clone();
                    let stop_tx = watch::channel::<Stop>(None).0;
                    let mut global = stop.subscribe();
                    let forward = {
                        let stop_tx = stop_tx.clone();
                        tokio::spawn(async move {
                            if global.wait_for(Option::is_some).await.is_ok() {
                                let why = global.borrow().clone();
                                let _ = stop_tx.send(why);
                            }
                        })
                    };
                    let result = execute(&options, &job, record, values, false, stop_tx).await;
                    forward.abort();
                    let line = result.map(|r| {
                        format!(
                            "job {name}: run {} {}{}",
                            r.run_id,
                            r.status.as_str(),
                            r.error.map(|e| format!(": {e}")).unwrap_or_default()
                        )
                    });
                    (name, line)
                });
            }
            changed |= s.drop_waiting();
            if changed && let Err(e) = s.record(&jobs).await {
                eprintln!("job {}: {e}", s.job.name);
            }
        }
    }
    eprintln!(
        "driver stopping: {} run(s) in progress are stopped and recorded as interrupted",
        running.len()
    );
    let _ = shutdown.send(Some((
        RunStatus::Interrupted,
        "interrupted: the driver was stopped".into(),
    )));
    while let Some(done) = running.join_next().await {
        if let Ok((job, Err(e))) = done {
            eprintln!("job {job}: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn every_second(catchup: &str) -> Scheduled {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tick.toml");
        std::fs::write(
            &path,
            format!(
                "name = \"tick\"\nschedule = \"* * * * * *\"\ncatchup = \"{catchup}\"\n\
                 [[steps]]\nsql = \"SELECT 1\"\n"
            ),
        )
        .unwrap();
        let session = quiver_sql::session(Default::default()).unwrap();
        let job = load(&session, path.to_str().unwrap()).await.unwrap();
        Scheduled {
            job,
            last: "2026-12-01T10:00:00Z".parse().unwrap(),
            pending: VecDeque::new(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// A tick that comes late (a busy machine) queues every second that passed: none is
    /// skipped while the driver runs.
    #[tokio::test]
    async fn a_late_tick_queues_every_time_that_came() {
        let mut s = every_second("none").await;
        s.tick(at("2026-12-01T10:00:03.500Z"));
        let queued: Vec<String> = s.pending.iter().map(|t| t.to_rfc3339()).collect();
        assert_eq!(
            queued,
            [
                "2026-12-01T10:00:01+00:00",
                "2026-12-01T10:00:02+00:00",
                "2026-12-01T10:00:03+00:00"
            ]
        );
    }

    /// Times that max_active_runs keeps waiting are dropped for newer ones (none, latest), or
    /// kept in order (all).
    #[tokio::test]
    async fn blocked_times_wait_by_the_catchup_policy() {
        for (catchup, kept) in [("none", 1), ("latest", 1), ("all", 3)] {
            let mut s = every_second(catchup).await;
            s.tick(at("2026-12-01T10:00:03.500Z"));
            assert_eq!(s.drop_waiting(), kept == 1, "{catchup}");
            assert_eq!(s.pending.len(), kept, "{catchup}");
            assert_eq!(
                s.pending.back().copied(),
                Some(at("2026-12-01T10:00:03Z")),
                "{catchup}"
            );
        }
    }
}
