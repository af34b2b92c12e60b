//! The batch jobs' pages: every job with its schedule, next run and last run; one job's run
//! history with durations; one run's steps and log, reloaded while it runs.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use maud::html;

use quiver_engine::time::utc_timestamp;
use quiver_operators::jobs::{RunRecord, RunStatus};

use super::svg::{self, Series};
use super::{Console, Page, PageError, badge, last_lines, layout, page_with};

/// How many of a run log's last lines its page shows.
const LOG_LINES: usize = 300;

/// A run's duration so far (to its end, or to its last heartbeat while it runs).
fn duration(run: &RunRecord) -> String {
    let seconds = run.ended.unwrap_or(run.heartbeat) - run.started;
    format!("{seconds:.1} s")
}

/// A time, or a dash.
fn time(t: Option<f64>) -> String {
    t.map_or_else(|| "–".into(), utc_timestamp)
}

/// Every job: schedule, next run, runs, the last run and its status.
pub(super) async fn list(State(console): State<Arc<Console>>) -> Page {
    let mut rows = Vec::new();
    for name in console.jobs.jobs().await? {
        let job = console.jobs.job(&name).await?;
        let runs = console.jobs.runs(&name).await?;
        rows.push((name, job, runs));
    }
    let body = html! {
        @if rows.is_empty() {
            p.empty { "No batch jobs have run on this store yet: quiver job run or quiver driver --jobs runs them." }
        } @else {
            table.grid {
                thead { tr { th { "job" } th { "schedule" } th { "next run" } th.num { "runs" }
                    th.num { "running" } th { "last run" } th { "last status" } th { "last duration" } } }
                tbody {
                    @for (name, job, runs) in &rows {
                        @let last = runs.last();
                        tr {
                            td { a href=(format!("/jobs/{name}")) { (name) } }
                            td { (job.as_ref().and_then(|j| j.schedule.as_deref()).map_or("manual".into(),
                                |s| format!("{s} ({})", job.as_ref().map_or("", |j| j.timezone.as_str())))) }
                            td { (time(job.as_ref().and_then(|j| j.next_run))) }
                            td.num { (runs.len()) }
                            td.num { (runs.iter().filter(|r| r.status == RunStatus::Running).count()) }
                            td { @if let Some(r) = last {
                                a href=(format!("/jobs/{name}/{}", r.run_id)) { (r.run_id) } } @else { "–" } }
                            td { @if let Some(r) = last { (badge(r.status.as_str())) } @else { "–" } }
                            td { (last.map_or("–".into(), duration)) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Jobs", Some(&console.store), body))
}

/// One job: where it was loaded from, its schedule, and its runs newest first with a chart of
/// their durations.
pub(super) async fn show(State(console): State<Arc<Console>>, Path(name): Path<String>) -> Page {
    let job = console.jobs.job(&name).await?;
    let runs = console.jobs.runs(&name).await?;
    if job.is_none() && runs.is_empty() {
        return Err(PageError(
            StatusCode::NOT_FOUND,
            format!("job '{name}' has not run on this store"),
        ));
    }
    let ended: Vec<(f64, f64)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.ended.map(|e| ((i + 1) as f64, e - r.started)))
        .collect();
    let body = html! {
        @if let Some(job) = &job {
            table.facts {
                tr { th { "schedule" } td { (job.schedule.as_deref().unwrap_or("manual runs only")) } }
                tr { th { "time zone" } td { (job.timezone) } }
                tr { th { "next run" } td { (time(job.next_run)) } }
                tr { th { "catch-up" } td { (job.catchup) } }
                tr { th { "max active runs" } td { (job.max_active_runs) } }
                tr { th { "job file" } td { code { (job.file) } } }
                tr { th { "loaded by" } td { (job.driver) " at " (utc_timestamp(job.loaded)) } }
            }
        }
        @if !ended.is_empty() {
            section.charts {
                (svg::line_chart("run duration (s)", "run", &[Series::line("seconds", ended)]))
            }
        }
        h2 { "Runs" }
        table.grid {
            thead { tr { th { "run" } th { "trigger" } th { "run date" } th { "status" }
                th { "started" } th { "duration" } th.num { "steps done" } th { "error" } } }
            tbody {
                @for run in runs.iter().rev() {
                    tr {
                        td { a href=(format!("/jobs/{name}/{}", run.run_id)) { (run.run_id) } }
                        td { (run.trigger) }
                        td { (run.run_date) }
                        td { (badge(run.status.as_str())) }
                        td { (utc_timestamp(run.started)) }
                        td { (duration(run)) }
                        td.num { (run.steps.iter().filter(|s| s.status == "succeeded").count())
                            "/" (run.steps.len()) }
                        td { (run.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    Ok(layout(&format!("Job {name}"), Some(&console.store), body))
}

/// One run: its steps with attempts, durations and errors, and the end of its log; the
/// browser reloads it every 5 seconds while it runs.
pub(super) async fn run(
    State(console): State<Arc<Console>>,
    Path((name, run_id)): Path<(String, String)>,
) -> Page {
    let run = console.jobs.run(&name, &run_id).await?.ok_or_else(|| {
        PageError(
            StatusCode::NOT_FOUND,
            format!("job '{name}' has no run '{run_id}'"),
        )
    })?;
    let log = console.jobs.log(&name, &run_id).await?;
    let log = log.map(|b| last_lines(&String::from_utf8_lossy(&b), LOG_LINES));
    let body = html! {
        table.facts {
            tr { th { "job" } td { a href=(format!("/jobs/{name}")) { (name) } } }
            tr { th { "status" } td { (badge(run.status.as_str())) } }
            @if let Some(error) = &run.error { tr { th { "error" } td.error { (error) } } }
            tr { th { "trigger" } td { (run.trigger) } }
            tr { th { "run date" } td { (run.run_date) } }
            tr { th { "started" } td { (utc_timestamp(run.started)) } }
            tr { th { "ended" } td { (time(run.ended)) } }
            tr { th { "duration" } td { (duration(&run)) } }
            tr { th { "last heartbeat" } td { (utc_timestamp(run.heartbeat)) } }
            tr { th { "process" } td { (run.host) " pid " (run.pid) } }
            @for (key, value) in &run.params {
                tr { th { "param " (key) } td { code { (value) } } }
            }
        }
        h2 { "Steps" }
        table.grid {
            thead { tr { th { "step" } th { "status" } th.num { "attempts" } th { "started" }
                th { "duration" } th { "error" } } }
            tbody {
                @for step in &run.steps {
                    tr {
                        td { (step.name) }
                        td { (badge(&step.status)) }
                        td.num { (step.attempts) }
                        td { (time(step.started)) }
                        td { (step.started.zip(step.ended)
                            .map_or("–".into(), |(s, e)| format!("{:.1} s", e - s))) }
                        td { (step.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Log" }
        @match &log {
            Some(text) => pre.log { (text) },
            None => p.empty { "No log yet." },
        }
    };
    let refresh = (run.status == RunStatus::Running).then_some(5);
    Ok(page_with(
        &format!("{name} · {run_id}"),
        Some(&console.store),
        refresh,
        body,
    ))
}
