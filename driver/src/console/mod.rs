//! The web console: read-only HTML pages over a store's model registry (each version's
//! training curves, evaluation, confusion matrix and lineage), training runs (live curves,
//! checkpoints and log), experiments (trials, curves, hyperparameters against the objective)
//! and batch jobs (schedules, run history, steps and live logs), rendered on the server with
//! SVG charts drawn here; nothing is fetched from elsewhere and no script runs in the page.
//! Everything is read from the store per request, so `quiver console --store URL` on a
//! colleague's store shows the same pages.

mod cluster;
mod experiments;
mod jobs;
mod serving;
mod svg;
mod training;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};

use quiver_engine::Session;
use quiver_engine::time::utc_timestamp;
use quiver_operators::experiment::records::Experiments;
use quiver_operators::jobs::JobStore;
use quiver_operators::ml::registry::{ModelCard, Registry};
use quiver_operators::ml::runs::Runs;
use quiver_operators::ml::train::EpochMetrics;
use quiver_operators::ml::{MlError, registry};

pub use cluster::{ClusterView, Scheduler};
pub use serving::{Loaded, LoadedModels};
use svg::Series;

/// What the pages read.
pub struct Console {
    registry: Registry,
    runs: Runs,
    experiments: Experiments,
    jobs: JobStore,
    store: String,
    serving_logs: serving::ServingLogs,
    /// The driver's scheduler, in a driver's console.
    cluster: Option<Arc<ClusterView>>,
    /// What `quiver serve` has loaded, in its console.
    serving: Option<LoadedModels>,
}

impl Console {
    /// The console of `session`'s default store.
    pub fn new(session: &Session) -> Result<Self, MlError> {
        Ok(Self {
            registry: registry(session)?,
            runs: Runs::new(session)?,
            experiments: Experiments::new(session)?,
            jobs: JobStore::new(session)?,
            serving_logs: serving::ServingLogs::new(session)?,
            store: session.default_store().to_string(),
            cluster: None,
            serving: None,
        })
    }

    /// This console with the models a `quiver serve` process has loaded.
    pub fn with_serving(self, loaded: LoadedModels) -> Self {
        Self {
            serving: Some(loaded),
            ..self
        }
    }

    /// This console with the driver's pages (queries, executors) over `cluster`.
    pub fn with_cluster(self, cluster: Arc<ClusterView>) -> Self {
        Self {
            cluster: Some(cluster),
            ..self
        }
    }
}

/// A page that cannot be shown: its status and message.
struct PageError(StatusCode, String);

impl From<MlError> for PageError {
    fn from(e: MlError) -> Self {
        let status = match e {
            MlError::NotFound(_) => StatusCode::NOT_FOUND,
            MlError::Option(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, e.to_string())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = layout("Not shown", None, html! { p.error { (self.1) } });
        (self.0, page).into_response()
    }
}

type Page = Result<Markup, PageError>;

/// The console's style sheet, served at `/console.css`.
const CSS: &str = include_str!("console.css");

/// Scripts, frames and inline styles are refused; only the console's own style sheet and
/// images load.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The console's routes, with `/metrics` (Prometheus) beside them and a page for any other
/// path: the router of `quiver console`.
pub fn router(console: Arc<Console>) -> Router {
    routes()
        .route("/", get(|| async { Redirect::to("/models") }))
        .route("/metrics", get(quiver_engine::metrics::page))
        .fallback(|| async {
            PageError(StatusCode::NOT_FOUND, "no such page".into()).into_response()
        })
        .layer(axum::middleware::map_response(secure))
        .with_state(console)
}

/// The console's pages alone (not `/`), to be merged into a server's own routes (a driver's,
/// `quiver serve`'s).
pub fn pages(console: Arc<Console>) -> Router {
    routes()
        .layer(axum::middleware::map_response(secure))
        .with_state(console)
}

fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/models", get(models))
        .route("/models/{name}", get(latest))
        .route("/models/{name}/{version}", get(version))
        .route("/training", get(training::list))
        .route("/training/{model}/{version}", get(training::show))
        .route(
            "/training/{model}/{version}/augmentations.png",
            get(training::augmentations),
        )
        .route("/experiments", get(experiments::list))
        .route("/experiments/{name}", get(experiments::show))
        .route("/jobs", get(jobs::list))
        .route("/jobs/{job}", get(jobs::show))
        .route("/jobs/{job}/{run}", get(jobs::run))
        .route("/serving", get(serving::list_page))
        .route("/serving/{model}", get(serving::model_page))
        .route("/queries", get(cluster::queries))
        .route("/queries/{id}", get(cluster::query))
        .route("/executors", get(cluster::executors))
        .route(
            "/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
}

/// Adds the security headers to every response.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The page around `body`, with the navigation; `store` names the store in the header.
fn layout(title: &str, store: Option<&str>, body: Markup) -> Markup {
    page_with(title, store, None, body)
}

/// [`layout`], reloaded by the browser every `refresh` seconds if given.
fn page_with(title: &str, store: Option<&str>, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if let Some(seconds) = refresh { meta http-equiv="refresh" content=(seconds); }
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Quiver" }
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    a.brand href="/" { "Quiver" }
                    nav {
                        a href="/models" { "Models" }
                        a href="/training" { "Training" }
                        a href="/experiments" { "Experiments" }
                        a href="/jobs" { "Jobs" }
                        a href="/serving" { "Serving" }
                        a href="/queries" { "Queries" }
                        a href="/executors" { "Executors" }
                        a href="/metrics" { "Metrics" }
                    }
                    @if let Some(store) = store { span.store title="store" { (store) } }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A ratio with four decimals, or a dash.
fn fixed(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.4}"))
}

/// Every version of every model: by name, the newest version first.
async fn models(State(console): State<Arc<Console>>) -> Page {
    let mut cards = console.registry.cards().await?;
    cards.sort_by(|a, b| a.name.cmp(&b.name).then(b.version.cmp(&a.version)));
    let body = html! {
        @if cards.is_empty() {
            p.empty { "No models are registered in this store yet: CREATE MODEL registers one." }
        } @else {
            table.grid {
                thead { tr {
                    th { "model" } th { "version" } th { "type" } th.num { "classes" }
                    th.num { "epochs" } th.num { "accuracy" } th.num { "val_accuracy" } th { "created" }
                } }
                tbody {
                    @for card in &cards {
                        tr {
                            td { a href=(format!("/models/{}", card.name)) { (card.name) } }
                            td.num { a href=(format!("/models/{}/{}", card.name, card.version)) { (card.version) } }
                            td { (card.architecture.model_type()) }
                            td.num { (card.labels.labels.len()) }
                            td.num { (card.history.len()) }
                            td.num { (fixed(card.history.last().map(|m| m.accuracy))) }
                            td.num { (fixed(card.evaluation.as_ref().map(|e| e.accuracy))) }
                            td { (utc_timestamp(card.created_at as f64)) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Models", Some(&console.store), body))
}

/// `/models/<name>`: the newest version's page.
async fn latest(State(console): State<Arc<Console>>, Path(name): Path<String>) -> Response {
    match console.registry.versions(&name).await {
        Ok(versions) if !versions.is_empty() => {
            Redirect::to(&format!("/models/{name}/{}", versions[versions.len() - 1]))
                .into_response()
        }
        Ok(_) => PageError(
            StatusCode::NOT_FOUND,
            format!("model '{name}' is not in the registry"),
        )
        .into_response(),
        Err(e) => PageError::from(e).into_response(),
    }
}

/// One version: its curves, evaluation, lineage and options, and links to the other versions.
async fn version(
    State(console): State<Arc<Console>>,
    Path((name, version)): Path<(String, String)>,
) -> Page {
    let version: u64 = version.parse().map_err(|_| {
        PageError(
            StatusCode::NOT_FOUND,
            format!("'{version}' is not a version number"),
        )
    })?;
    let card = console.registry.card(&name, version).await?;
    let versions = console.registry.versions(&name).await?;
    let title = format!("{name} · version {version}");
    Ok(layout(
        &title,
        Some(&console.store),
        version_body(&console.registry, &card, &versions),
    ))
}

fn version_body(registry: &Registry, card: &ModelCard, versions: &[u64]) -> Markup {
    html! {
        nav.versions {
            "Versions: "
            @for v in versions {
                @if *v == card.version { strong { (v) } } @else {
                    a href=(format!("/models/{}/{v}", card.name)) { (v) }
                }
                " "
            }
        }
        table.facts {
            tr { th { "type" } td { (card.architecture.model_type()) } }
            tr { th { "classes" } td { (card.labels.labels.join(", ")) } }
            tr { th { "input" } td { (card.input.column) " " (format!("{:?}", card.input.shape)) } }
            tr { th { "epochs" } td { (card.history.len()) } }
            tr { th { "accuracy" } td { (fixed(card.history.last().map(|m| m.accuracy))) } }
            tr { th { "val_accuracy" } td { (fixed(card.evaluation.as_ref().map(|e| e.accuracy))) } }
            tr { th { "created" } td { (utc_timestamp(card.created_at as f64)) } }
            tr { th { "location" } td { code { (registry.version_url(&card.name, card.version)) } } }
        }
        (curves(&card.history))
        @if let Some(eval) = &card.evaluation {
            h2 { "Evaluation on the validation query" }
            p { (eval.examples) " examples, accuracy " (fixed(Some(eval.accuracy)))
                ", loss " (fixed(Some(eval.loss))) }
            section.evaluation {
                (svg::heatmap(&card.labels.labels, &eval.confusion))
                table.grid {
                    thead { tr { th { "label" } th.num { "precision" } th.num { "recall" }
                        th.num { "f1_score" } th.num { "support" } } }
                    tbody {
                        @for c in &eval.classes {
                            tr { td { (c.label) } td.num { (fixed(Some(c.precision))) }
                                td.num { (fixed(Some(c.recall))) } td.num { (fixed(Some(c.f1))) }
                                td.num { (c.support) } }
                        }
                    }
                }
            }
        }
        h2 { "Lineage" }
        table.facts {
            tr { th { "training data" } td { pre { (card.training_data) } } }
            @if let Some(from) = &card.training.warm_start {
                tr { th { "started from model" } td {
                    @let (parent, v) = from.split_once(':').unwrap_or((from, ""));
                    a href=(format!("/models/{parent}/{v}")) { (from) } } }
            }
            @if let Some(weights) = &card.training.weights {
                tr { th { "started from weights" } td { code { (weights) } } }
            }
            tr { th { "run folder" } td {
                @let run = format!("training/{}/v{}/", card.name, card.version);
                @if card.run.ends_with(&run) {
                    a href=(format!("/{}", run.trim_end_matches('/'))) { code { (card.run) } }
                } @else { code { (card.run) } }
            } }
            tr { th { "Quiver" } td { (card.quiver_version) } }
        }
        h2 { "Architecture and training options" }
        pre { (pretty(&card.architecture)) }
        pre { (pretty(&card.training)) }
    }
}

/// Loss, accuracy (training and, with a validation query, validation) and speed per epoch.
fn curves(history: &[EpochMetrics]) -> Markup {
    let epochs = |f: fn(&EpochMetrics) -> Option<f64>| {
        history
            .iter()
            .filter_map(|m| f(m).map(|v| (m.epoch as f64, v)))
            .collect::<Vec<_>>()
    };
    // A model trained without a validation query has no validation curves.
    let present = |mut series: Vec<Series>| {
        series.retain(|s| !s.points.is_empty());
        series
    };
    let loss = present(vec![
        Series::line("training", epochs(|m| Some(m.loss))),
        Series::line("validation", epochs(|m| m.val_loss)).dashed(),
    ]);
    let accuracy = present(vec![
        Series::line("training", epochs(|m| Some(m.accuracy))),
        Series::line("validation", epochs(|m| m.val_accuracy)).dashed(),
    ]);
    let speed = [Series::line(
        "examples/s",
        epochs(|m| Some(m.examples_per_second)),
    )];
    html! {
        section.charts {
            (svg::line_chart("loss", "epoch", &loss))
            (svg::line_chart("accuracy", "epoch", &accuracy))
            (svg::line_chart("training speed", "epoch", &speed))
        }
    }
}

/// A state (`running`, `failed`, ...) as a coloured badge.
fn badge(state: &str) -> Markup {
    badge_as(state, state)
}

/// `text` as a badge coloured as the state `state` is.
fn badge_as(state: &str, text: &str) -> Markup {
    html! { span class=(format!("state {state}")) { (text) } }
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `value` as indented JSON.
fn pretty<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| e.to_string())
}
