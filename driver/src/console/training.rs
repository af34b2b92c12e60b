//! The training runs' pages: every run folder of the store with its state, and one run's
//! curves, epochs, augmentation grid, checkpoints and log, refreshed while it trains.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;

use quiver_engine::time::{unix_now, utc_timestamp};
use quiver_operators::ml::runs::{RunFolder, failure};

use super::{Console, Page, PageError, badge, curves, fixed, last_lines, layout, page_with};

/// A run whose folder changed this recently is taken to be training: it logs a line at least
/// every 10 seconds and flushes its log every 2.
const LIVE_SECONDS: f64 = 60.0;

/// How many of the log's last lines a run's page shows.
const LOG_LINES: usize = 200;

/// How a run stands, given whether its model version is registered and its log.
fn state(run: &RunFolder, registered: bool, log: Option<&str>) -> &'static str {
    if registered {
        "registered"
    } else if log.and_then(failure).is_some() {
        "failed"
    } else if unix_now() - run.modified() < LIVE_SECONDS {
        "training"
    } else {
        "stopped"
    }
}

impl Console {
    /// A run's log, as text.
    async fn log(&self, model: &str, version: u64) -> Result<Option<String>, PageError> {
        let bytes = self.runs.file(model, version, "log.txt").await?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
}

/// Every training run: its state, epochs, last metrics and when it last wrote.
pub(super) async fn list(State(console): State<Arc<Console>>) -> Page {
    let mut versions = BTreeMap::new();
    let mut rows = Vec::new();
    for (model, version) in console.runs.list().await? {
        if !versions.contains_key(&model) {
            versions.insert(model.clone(), console.registry.versions(&model).await?);
        }
        let run = console.runs.folder(&model, version).await?;
        let state = if versions[&model].contains(&version) {
            state(&run, true, None)
        } else {
            state(&run, false, console.log(&model, version).await?.as_deref())
        };
        rows.push((state, run));
    }
    rows.sort_by(|a, b| b.1.modified().total_cmp(&a.1.modified()));
    let body = html! {
        @if rows.is_empty() {
            p.empty { "No training runs in this store yet: CREATE MODEL starts one." }
        } @else {
            table.grid {
                thead { tr { th { "model" } th { "run" } th { "state" } th.num { "epochs" }
                    th.num { "loss" } th.num { "accuracy" } th.num { "val_accuracy" }
                    th.num { "examples/s" } th { "last written" } } }
                tbody {
                    @for (state, run) in &rows {
                        @let last = run.history.last();
                        tr {
                            td { (run.model) }
                            td { a href=(page(run)) { "v" (run.version) } }
                            td { (badge(state)) }
                            td.num { (run.history.len()) }
                            td.num { (fixed(last.map(|m| m.loss))) }
                            td.num { (fixed(last.map(|m| m.accuracy))) }
                            td.num { (fixed(last.and_then(|m| m.val_accuracy))) }
                            td.num { (last.map_or("–".into(), |m| format!("{:.1}", m.examples_per_second))) }
                            td { (utc_timestamp(run.modified())) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Training runs", Some(&console.store), body))
}

/// A run's page.
fn page(run: &RunFolder) -> String {
    format!("/training/{}/v{}", run.model, run.version)
}

/// `v3` as 3.
fn version_number(version: &str) -> Result<u64, PageError> {
    version
        .strip_prefix('v')
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            PageError(
                StatusCode::NOT_FOUND,
                format!("'{version}' is not a run (v1, v2, ...)"),
            )
        })
}

/// One run: curves, epochs, augmentations, checkpoints and the end of its log.
pub(super) async fn show(
    State(console): State<Arc<Console>>,
    Path((model, version)): Path<(String, String)>,
) -> Page {
    let version = version_number(&version)?;
    let run = console.runs.folder(&model, version).await?;
    let registered = console.registry.versions(&model).await?.contains(&version);
    let log = console.log(&model, version).await?;
    let state = state(&run, registered, log.as_deref());
    let log = log.map(|text| last_lines(&text, LOG_LINES));
    let mut checkpoints: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for file in &run.files {
        if let Some((epoch, _)) = file
            .name
            .strip_prefix("checkpoints/")
            .and_then(|n| n.split_once('/'))
        {
            let entry = checkpoints.entry(epoch.to_string()).or_default();
            entry.0 += file.size;
            entry.1 = entry.1.max(file.modified);
        }
    }
    let title = format!("{model} · run v{version}");
    let body = html! {
        table.facts {
            tr { th { "state" } td { (badge(state)) } }
            @if let Some(why) = log.as_deref().and_then(failure) {
                tr { th { "error" } td.error { (why) } }
            }
            @if state == "registered" {
                tr { th { "model" } td { a href=(format!("/models/{model}/{version}")) {
                    (model) " version " (version) } } }
            }
            tr { th { "epochs" } td { (run.history.len()) } }
            tr { th { "last written" } td { (utc_timestamp(run.modified())) } }
            tr { th { "folder" } td { code { (run.url) } } }
        }
        (curves(&run.history))
        @if !run.history.is_empty() {
            h2 { "Epochs" }
            table.grid {
                thead { tr { th.num { "epoch" } th.num { "loss" } th.num { "accuracy" }
                    th.num { "val_loss" } th.num { "val_accuracy" } th.num { "examples" }
                    th.num { "seconds" } th.num { "waiting for input" } th.num { "examples/s" }
                    th.num { "learning rate" } } }
                tbody {
                    @for m in &run.history {
                        tr { td.num { (m.epoch) } td.num { (fixed(Some(m.loss))) }
                            td.num { (fixed(Some(m.accuracy))) } td.num { (fixed(m.val_loss)) }
                            td.num { (fixed(m.val_accuracy)) } td.num { (m.examples) }
                            td.num { (format!("{:.1}", m.seconds)) }
                            td.num { (format!("{:.1}", m.input_seconds)) }
                            td.num { (format!("{:.1}", m.examples_per_second)) }
                            td.num { (format!("{:.2e}", m.learning_rate)) } }
                    }
                }
            }
        }
        @if run.has("augmentations.png") {
            h2 { "Augmented training images (first batch)" }
            img.augmentations src=(format!("{}/augmentations.png", page(&run)))
                alt="a grid of augmented training images";
        }
        h2 { "Checkpoints" }
        @if checkpoints.is_empty() {
            p.empty { "None yet: a checkpoint is written after each epoch." }
        } @else {
            table.grid {
                thead { tr { th { "checkpoint" } th.num { "bytes" } th { "written" } } }
                tbody {
                    @for (name, (bytes, written)) in &checkpoints {
                        tr { td { code { (name) } } td.num { (bytes) }
                            td { (utc_timestamp(*written)) } }
                    }
                }
            }
        }
        h2 { "Log" }
        @match &log {
            Some(text) => pre.log { (text) },
            None => p.empty { "This run has no log.txt." },
        }
    };
    // While it trains, the browser reloads the page every 5 seconds.
    let refresh = (state == "training").then_some(5);
    Ok(page_with(&title, Some(&console.store), refresh, body))
}

/// A run's augmentation grid.
pub(super) async fn augmentations(
    State(console): State<Arc<Console>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let version = version_number(&version)?;
    match console
        .runs
        .file(&model, version, "augmentations.png")
        .await?
    {
        Some(png) => Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response()),
        None => Err(PageError(
            StatusCode::NOT_FOUND,
            format!("run v{version} of model '{model}' has no augmentations.png"),
        )),
    }
}
