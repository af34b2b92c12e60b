//! The experiments' pages: every experiment as `experiments()` lists it, and one experiment's
//! trials (sortable by any column, the best marked), their objective curves overlaid, and each
//! numeric hyperparameter plotted against the objective.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use maud::{Markup, html};
use serde::Deserialize;

use quiver_engine::options::OptionValue;
use quiver_operators::experiment::records::{ExperimentFile, TrialRecord, best_trial};

use super::svg::{self, Series};
use super::{Console, Page, fixed, layout, page_with};

/// Every experiment: status, objective, trials and the best so far.
pub(super) async fn list(State(console): State<Arc<Console>>) -> Page {
    let mut rows = Vec::new();
    for name in console.experiments.names().await? {
        let dir = console.experiments.dir(&name)?;
        let Some(file) = dir.file().await? else {
            continue;
        };
        let ids = dir.trial_ids().await?;
        let results = dir.results(&ids).await?;
        let best = best_trial(&results, &file.objective).map(|b| (b.trial.clone(), b.objective));
        rows.push((file, ids.len(), best));
    }
    let body = html! {
        @if rows.is_empty() {
            p.empty { "No experiments in this store yet: CREATE EXPERIMENT runs one." }
        } @else {
            table.grid {
                thead { tr { th { "experiment" } th { "status" } th { "type" } th { "objective" }
                    th.num { "trials" } th { "best trial" } th.num { "best value" } } }
                tbody {
                    @for (file, trials, best) in &rows {
                        tr {
                            td { a href=(format!("/experiments/{}", file.name)) { (file.name) } }
                            td { (file.status) }
                            td { (file.model_type) }
                            td { (goal(file)) }
                            td.num { (trials) }
                            td { (best.as_ref().map_or("–", |b| b.0.as_str())) }
                            td.num { (fixed(best.as_ref().and_then(|b| b.1))) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Experiments", Some(&console.store), body))
}

/// `maximize val_accuracy`.
fn goal(file: &ExperimentFile) -> String {
    let direction = if file.objective.maximize {
        "maximize"
    } else {
        "minimize"
    };
    format!("{direction} {}", file.objective.metric)
}

/// The console page of a registry folder's URL (`.../models/<name>/<version>/`).
fn model_page(url: &str) -> String {
    let mut parts = url.trim_end_matches('/').rsplit('/');
    let (version, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    format!("/models/{name}/{version}")
}

/// `?sort=<column>&desc=1` on the trials table.
#[derive(Debug, Deserialize)]
pub(super) struct Sort {
    sort: Option<String>,
    desc: Option<u8>,
}

/// One cell of the trials table: its text, and its number where it sorts as one.
struct Cell(String, Option<f64>);

impl Cell {
    fn number(v: Option<f64>) -> Self {
        Self(fixed(v), v)
    }

    fn option(v: Option<&OptionValue>) -> Self {
        match v {
            Some(OptionValue::Num(n)) => Self(OptionValue::Num(*n).to_string(), Some(*n)),
            Some(other) => Self(other.to_string(), None),
            None => Self("–".into(), None),
        }
    }

    fn compare(&self, other: &Self) -> Ordering {
        match (self.1, other.1) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            _ => self.0.cmp(&other.0),
        }
    }
}

/// A trial as the page shows it: ended (its result) or still running (its epochs so far).
struct Trial {
    id: String,
    params: BTreeMap<String, OptionValue>,
    generation: usize,
    status: String,
    objective: Option<f64>,
    history: Vec<quiver_operators::ml::train::EpochMetrics>,
    seconds: Option<f64>,
}

impl Trial {
    fn ended(r: TrialRecord) -> Self {
        Self {
            id: r.trial,
            params: r.params,
            generation: r.generation,
            status: r.status.as_str().into(),
            objective: r.objective,
            history: r.history,
            seconds: Some(r.finished_at - r.started_at),
        }
    }
}

/// One experiment: facts, the trials table, the objective's curves and the hyperparameters
/// against the objective.
pub(super) async fn show(
    State(console): State<Arc<Console>>,
    Path(name): Path<String>,
    Query(sort): Query<Sort>,
) -> Page {
    let dir = console.experiments.dir(&name)?;
    let file = dir.file().await?.ok_or_else(|| {
        super::PageError(
            axum::http::StatusCode::NOT_FOUND,
            format!("experiment '{name}' does not exist in this store"),
        )
    })?;
    let ids = dir.trial_ids().await?;
    let results = dir.results(&ids).await?;
    let best = best_trial(&results, &file.objective).map(|b| b.trial.clone());
    let mut trials: Vec<Trial> = results.into_iter().map(Trial::ended).collect();
    for id in ids {
        if trials.iter().any(|t| t.id == id) {
            continue;
        }
        let Some(params) = dir.params(&id).await? else {
            continue;
        };
        let history = dir.progress(&id).await?;
        trials.push(Trial {
            objective: history.last().and_then(|m| file.objective.value(m)),
            status: dir.unfinished_status(&id, &history).await?.into(),
            id,
            params: params.params,
            generation: params.generation,
            history,
            seconds: None,
        });
    }
    let names: Vec<String> = trials
        .iter()
        .flat_map(|t| t.params.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut columns = vec!["trial".to_string(), "generation".into()];
    columns.extend(names.iter().cloned());
    columns.extend(["status", "objective", "epochs", "val_accuracy", "seconds"].map(String::from));
    let mut rows: Vec<(&Trial, Vec<Cell>)> = trials
        .iter()
        .map(|t| {
            let last = t.history.last();
            let mut cells = vec![
                Cell(t.id.clone(), None),
                Cell(t.generation.to_string(), Some(t.generation as f64)),
            ];
            cells.extend(names.iter().map(|n| Cell::option(t.params.get(n))));
            cells.extend([
                Cell(t.status.clone(), None),
                Cell::number(t.objective),
                Cell(t.history.len().to_string(), Some(t.history.len() as f64)),
                Cell::number(last.and_then(|m| m.val_accuracy)),
                Cell(
                    t.seconds.map_or("–".into(), |s| format!("{s:.1}")),
                    t.seconds,
                ),
            ]);
            (t, cells)
        })
        .collect();
    let by = sort
        .sort
        .as_ref()
        .and_then(|s| columns.iter().position(|c| c == s));
    let descending = sort.desc.unwrap_or(0) == 1;
    if let Some(i) = by {
        rows.sort_by(|a, b| {
            let order = a.1[i].compare(&b.1[i]);
            if descending { order.reverse() } else { order }
        });
    }
    let curves: Vec<Series> = trials
        .iter()
        .map(|t| {
            let points = t
                .history
                .iter()
                .filter_map(|m| file.objective.value(m).map(|v| (m.epoch as f64, v)))
                .collect();
            Series::line(&t.id, points)
        })
        .collect();
    let scatters: Vec<Markup> = names
        .iter()
        .filter(|n| {
            trials
                .iter()
                .all(|t| matches!(t.params.get(*n), Some(OptionValue::Num(_))))
        })
        .map(|n| {
            let point = |t: &Trial| match (t.params.get(n), t.objective) {
                (Some(OptionValue::Num(x)), Some(y)) => Some((*x, y)),
                _ => None,
            };
            let is_best = |t: &&Trial| best.as_deref() == Some(t.id.as_str());
            let others = trials.iter().filter(|t| !is_best(t)).filter_map(point);
            let mut series = vec![Series::points("trials", others.collect())];
            series.extend(
                trials
                    .iter()
                    .filter(is_best)
                    .filter_map(point)
                    .map(|p| Series::points("best trial", vec![p])),
            );
            svg::line_chart(
                &format!("{} against {n}", file.objective.metric),
                n,
                &series,
            )
        })
        .collect();
    let body = html! {
        table.facts {
            tr { th { "status" } td { (file.status) } }
            tr { th { "model type" } td { (file.model_type) } }
            tr { th { "objective" } td { (goal(&file)) } }
            tr { th { "trials" } td { (trials.len()) " (" (file.trials_finished) " finished)" } }
            tr { th { "best trial" } td { (best.as_deref().unwrap_or("–")) } }
            @if let Some(model) = &file.model {
                tr { th { "best model" } td { a href=(model_page(model)) { code { (model) } } } }
            }
            tr { th { "training data" } td { pre { (file.query) } } }
            tr { th { "folder" } td { code { (dir.url) } } }
        }
        h2 { "Trials" }
        table.grid.trials {
            thead { tr {
                @for c in &columns {
                    @let desc = by.is_some_and(|i| columns[i] == *c) && !descending;
                    th { a href=(format!("?sort={c}{}", if desc { "&desc=1" } else { "" })) { (c) } }
                }
            } }
            tbody {
                @for (trial, cells) in &rows {
                    @let mark = best.as_deref() == Some(trial.id.as_str());
                    tr class=[mark.then_some("best")] {
                        @for (i, cell) in cells.iter().enumerate() {
                            td class=[cell.1.is_some().then_some("num")] {
                                (cell.0)
                                @if i == 0 && mark { " ★" }
                            }
                        }
                    }
                }
            }
        }
        section.charts {
            (svg::line_chart(&format!("{} per epoch", file.objective.metric), "epoch", &curves))
            @for chart in &scatters { (chart) }
        }
    };
    // While it runs, the browser reloads the page every 5 seconds.
    let refresh = (file.status == "running").then_some(5);
    Ok(page_with(
        &format!("Experiment {name}"),
        Some(&console.store),
        refresh,
        body,
    ))
}
