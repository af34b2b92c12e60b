//! The driver's own pages: its distributed queries (the scheduler's jobs) with their physical
//! plans, stages and tasks (durations, rows, executors, failures and retries), and its
//! executors, live and lost. Read from the scheduler's state on each request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use ballista_core::JobId;
use ballista_core::serde::protobuf::job_status::Status as QueryStatus;
use ballista_core::serde::protobuf::task_status::Status as TaskState;
use ballista_scheduler::cluster::JobState;
use ballista_scheduler::scheduler_server::SchedulerServer;
use ballista_scheduler::state::execution_graph::ExecutionGraphBox;
use ballista_scheduler::state::execution_stage::{ExecutionStage, TaskInfo};
use datafusion::physical_plan::displayable;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use maud::{Markup, html};

use quiver_engine::time::{unix_now, utc_timestamp};

use super::{Console, Page, PageError, badge, page_with};

/// The driver's scheduler.
pub type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// An executor as last seen.
#[derive(Debug, Clone)]
struct Seen {
    host: String,
    port: u16,
    slots: u32,
    /// Last heartbeat, Unix seconds.
    heartbeat: u64,
}

/// What the driver's pages read: the scheduler, its job store, and every executor seen since the
/// driver started (the scheduler forgets lost ones).
pub struct ClusterView {
    scheduler: Arc<Scheduler>,
    jobs: Arc<dyn JobState>,
    /// Seconds without a heartbeat after which an executor counts as lost.
    timeout: u64,
    seen: Mutex<BTreeMap<String, Seen>>,
}

impl ClusterView {
    /// The view of `scheduler` (whose jobs are kept in `jobs`), looking at its executors every
    /// 2 seconds so that lost ones stay listed.
    pub fn new(scheduler: Arc<Scheduler>, jobs: Arc<dyn JobState>, timeout: u64) -> Arc<Self> {
        let view = Arc::new(Self {
            scheduler,
            jobs,
            timeout,
            seen: Mutex::default(),
        });
        let weak: Weak<Self> = Arc::downgrade(&view);
        tokio::spawn(async move {
            while let Some(view) = weak.upgrade() {
                view.look().await;
                drop(view);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        view
    }

    /// Records the executors registered now.
    async fn look(&self) {
        let state = self
            .scheduler
            .state
            .executor_manager
            .get_executors_state()
            .await
            .unwrap_or_default();
        let mut seen = self.seen.lock().expect("executors lock");
        for (meta, beat, _) in state {
            seen.insert(
                meta.id.clone(),
                Seen {
                    host: meta.host.clone(),
                    port: meta.grpc_port,
                    slots: meta.specification.vcores,
                    heartbeat: beat.map_or(0, |b| b.as_secs()),
                },
            );
        }
    }

    /// A job's execution graph: the live one while it runs, else the stored one.
    async fn graph(&self, id: &str) -> Option<ExecutionGraphBox> {
        let job: JobId = id.to_string().into();
        let running = self.scheduler.state.task_manager.get_running_job_cache();
        if let Some(cached) = running.get(&job) {
            return Some(cached.execution_graph.read().await.cloned());
        }
        self.jobs.get_execution_graph(&job).await.ok().flatten()
    }
}

/// The view, or the page that says this console has none.
fn view(console: &Console) -> Result<&Arc<ClusterView>, PageError> {
    console.cluster.as_ref().ok_or_else(|| {
        PageError(
            StatusCode::NOT_FOUND,
            "this console is not a driver's: queries and executors are shown on the driver's \
             port (quiver driver)"
                .into(),
        )
    })
}

/// A status's name: `queued`, `running`, `failed`, `completed`.
fn job_state(status: Option<&QueryStatus>) -> &'static str {
    match status {
        Some(QueryStatus::Queued(_)) => "queued",
        Some(QueryStatus::Running(_)) => "running",
        Some(QueryStatus::Failed(_)) => "failed",
        Some(QueryStatus::Successful(_)) => "completed",
        None => "unknown",
    }
}

/// Milliseconds since the epoch as a UTC time, or a dash for 0.
fn millis(ms: u64) -> String {
    if ms == 0 {
        "–".into()
    } else {
        utc_timestamp(ms as f64 / 1e3)
    }
}

/// From `start` to `end` (or to now while running), in seconds.
fn span(start: u64, end: u64) -> String {
    let end = if end == 0 {
        (unix_now() * 1e3) as u64
    } else {
        end
    };
    format!("{:.2} s", end.saturating_sub(start) as f64 / 1e3)
}

/// Every query the driver knows, newest first; reloaded while one runs.
pub(super) async fn queries(State(console): State<Arc<Console>>) -> Page {
    let view = view(&console)?;
    let mut jobs = view
        .scheduler
        .state
        .task_manager
        .get_all_jobs()
        .await
        .map_err(|e| PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    jobs.sort_by_key(|j| std::cmp::Reverse(j.start_time));
    let live = jobs.iter().any(|j| {
        matches!(
            j.status.status,
            Some(QueryStatus::Queued(_) | QueryStatus::Running(_))
        )
    });
    let body = html! {
        @if jobs.is_empty() {
            p.empty { "No queries have run on this driver yet." }
        } @else {
            table.grid {
                thead { tr { th { "query" } th { "name" } th { "state" } th { "started" }
                    th { "duration" } th.num { "stages done" } } }
                tbody {
                    @for job in &jobs {
                        tr {
                            td { a href=(format!("/queries/{}", job.job_id)) { code { (job.job_id) } } }
                            td { (job.job_name) }
                            td { (badge(job_state(job.status.status.as_ref()))) }
                            td { (millis(job.start_time)) }
                            td { (span(job.start_time, job.end_time)) }
                            td.num { (job.completed_stages) "/" (job.num_stages) }
                        }
                    }
                }
            }
        }
    };
    let refresh = live.then_some(2);
    Ok(page_with("Queries", Some(&console.store), refresh, body))
}

/// A stage's tasks, task failures and error, whatever state it is in.
fn stage_parts(stage: &ExecutionStage) -> (&[TaskInfo], usize, Option<&str>) {
    match stage {
        ExecutionStage::Running(s) => (&s.task_infos, s.task_failure_numbers.iter().sum(), None),
        ExecutionStage::Successful(s) => (&s.task_infos, 0, None),
        ExecutionStage::Failed(s) => (&s.task_infos, 0, Some(s.error_message.as_str())),
        ExecutionStage::UnResolved(_) | ExecutionStage::Resolved(_) => (&[], 0, None),
    }
}

/// A task's state, executor and error.
fn task_parts(task: &TaskInfo) -> (&'static str, &str, Option<&str>) {
    match &task.task_status {
        TaskState::Running(t) => ("running", t.executor_id.as_str(), None),
        TaskState::Successful(t) => ("succeeded", t.executor_id.as_str(), None),
        TaskState::Failed(t) => ("failed", "", Some(t.error.as_str())),
    }
}

/// The rows and bytes a finished task wrote to its shuffle files.
fn written(task: &TaskInfo) -> Option<(u64, u64)> {
    match &task.task_status {
        TaskState::Successful(t) => Some(
            t.partitions
                .iter()
                .fold((0, 0), |(r, b), p| (r + p.num_rows, b + p.num_bytes)),
        ),
        _ => None,
    }
}

/// One query: its state, physical plan, and each stage with its tasks.
pub(super) async fn query(State(console): State<Arc<Console>>, Path(id): Path<String>) -> Page {
    let view = view(&console)?;
    let graph = view.graph(&id).await.ok_or_else(|| {
        PageError(
            StatusCode::NOT_FOUND,
            format!("the driver has no query '{id}'"),
        )
    })?;
    let job = graph.as_ref();
    let status = job.status().status.as_ref();
    let state = job_state(status);
    let error = match status {
        Some(QueryStatus::Failed(f)) => Some(f.error.clone()),
        _ => None,
    };
    let plan = displayable(job.physical_plan().as_ref())
        .indent(false)
        .to_string();
    let mut stages: Vec<_> = job.stages().iter().collect();
    stages.sort_by_key(|(id, _)| **id);
    let body = html! {
        table.facts {
            tr { th { "state" } td { (badge(state)) } }
            @if let Some(error) = &error { tr { th { "error" } td.error { (error) } } }
            tr { th { "name" } td { (job.job_name()) } }
            tr { th { "started" } td { (millis(job.start_time())) } }
            tr { th { "ended" } td { (millis(job.end_time())) } }
            tr { th { "duration" } td { (span(job.start_time(), job.end_time())) } }
            tr { th { "stages done" } td { (job.completed_stages()) "/" (job.stage_count()) } }
        }
        h2 { "Stages" }
        table.grid.stages {
            thead { tr { th.num { "stage" } th { "state" } th.num { "stage retries" }
                th.num { "tasks done" } th.num { "rows written" } th.num { "bytes written" }
                th.num { "task failures" } th { "error" } } }
            tbody {
                @for (id, stage) in &stages {
                    @let (tasks, failures, error) = stage_parts(stage);
                    @let (rows, bytes) = tasks.iter().filter_map(written)
                        .fold((0, 0), |(r, b), (tr, tb)| (r + tr, b + tb));
                    tr {
                        td.num { (id) }
                        td { (badge(&stage.variant_name().to_lowercase())) }
                        td.num { (stage_attempt(stage)) }
                        td.num { (tasks.iter().filter(|t| matches!(t.task_status, TaskState::Successful(_))).count())
                            "/" (tasks.len()) }
                        td.num { (rows) }
                        td.num { (bytes) }
                        td.num { (failures) }
                        td { (error.unwrap_or("")) }
                    }
                }
            }
        }
        @for (id, stage) in &stages {
            @let (tasks, _, _) = stage_parts(stage);
            @if !tasks.is_empty() {
                h2 { "Stage " (id) " tasks" }
                (task_table(tasks))
            }
        }
        h2 { "Physical plan" }
        pre { (plan) }
    };
    let refresh = matches!(
        status,
        Some(QueryStatus::Queued(_) | QueryStatus::Running(_))
    )
    .then_some(2);
    Ok(page_with(
        &format!("Query {id}"),
        Some(&console.store),
        refresh,
        body,
    ))
}

fn stage_attempt(stage: &ExecutionStage) -> usize {
    match stage {
        ExecutionStage::UnResolved(s) => s.stage_attempt_num,
        ExecutionStage::Resolved(s) => s.stage_attempt_num,
        ExecutionStage::Running(s) => s.stage_attempt_num,
        ExecutionStage::Successful(s) => s.stage_attempt_num,
        ExecutionStage::Failed(s) => s.stage_attempt_num,
    }
}

fn task_table(tasks: &[TaskInfo]) -> Markup {
    html! {
        table.grid.tasks {
            thead { tr { th.num { "task" } th { "partitions" } th { "executor" } th { "state" }
                th.num { "seconds" } th.num { "rows written" } th.num { "bytes written" }
                th { "error" } } }
            tbody {
                @for task in tasks {
                    @let (state, executor, error) = task_parts(task);
                    tr {
                        td.num { (task.task_id) }
                        td { (task.global_input_partition_ids.iter().map(|p| p.to_string())
                            .collect::<Vec<_>>().join(", ")) }
                        td { code { (executor) } }
                        td { (badge(state)) }
                        td.num { @if task.end_exec_time >= task.start_exec_time && task.start_exec_time > 0 {
                            (format!("{:.3}", (task.end_exec_time - task.start_exec_time) as f64 / 1e3)) } }
                        @let out = written(task);
                        td.num { (out.map_or("–".into(), |o| o.0.to_string())) }
                        td.num { (out.map_or("–".into(), |o| o.1.to_string())) }
                        td { (error.unwrap_or("")) }
                    }
                }
            }
        }
    }
}

/// Every executor seen: address, slots, device, tasks running now, last heartbeat, and whether
/// it is live or lost.
pub(super) async fn executors(State(console): State<Arc<Console>>) -> Page {
    let view = view(&console)?;
    view.look().await;
    let mut running: BTreeMap<String, usize> = BTreeMap::new();
    let jobs = view.scheduler.state.task_manager.get_running_job_cache();
    for cached in jobs.values() {
        for task in cached.execution_graph.read().await.running_tasks() {
            *running.entry(task.executor_id).or_default() += 1;
        }
    }
    let now = unix_now() as u64;
    let seen = view.seen.lock().expect("executors lock").clone();
    let body = html! {
        @if seen.is_empty() {
            p.empty { "No executor has registered with this driver yet." }
        } @else {
            table.grid {
                thead { tr { th { "executor" } th { "state" } th { "address" } th { "device" }
                    th.num { "slots" } th.num { "running tasks" } th { "last heartbeat" } } }
                tbody {
                    @for (id, e) in &seen {
                        @let lost = now.saturating_sub(e.heartbeat) > view.timeout;
                        tr {
                            td { code { (id) } }
                            td { (badge(if lost { "lost" } else { "live" })) }
                            td { (e.host) ":" (e.port) }
                            td { (id.rsplit('/').next().unwrap_or("cpu")) }
                            td.num { (e.slots) }
                            td.num { (running.get(id).copied().unwrap_or(0)) }
                            td { (utc_timestamp(e.heartbeat as f64)) " (" (now.saturating_sub(e.heartbeat)) " s ago)" }
                        }
                    }
                }
            }
        }
    };
    Ok(page_with("Executors", Some(&console.store), Some(5), body))
}
