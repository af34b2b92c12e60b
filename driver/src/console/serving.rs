//! The serving pages: the models a `quiver serve` process has loaded (on its REST port), and
//! each served model's traffic from its prediction logs in the store (`serving/<model>/logs/`):
//! requests over time, latency percentiles, errors, the label distribution over time and the
//! latest predictions. The logs are in the store, so `quiver console` shows them too.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use maud::{Markup, html};
use object_store::ObjectStore;
use serde::Deserialize;

use quiver_engine::Session;
use quiver_engine::store::objects::{get_bytes, list, list_all};
use quiver_engine::time::utc_timestamp;
use quiver_operators::ml::MlError;

use super::svg::{self, Series};
use super::{Console, Page, PageError, badge_as, fixed, page_with};

/// A model a `quiver serve` process has loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The name clients ask for.
    pub name: String,
    /// The versions loaded, ascending.
    pub versions: Vec<u64>,
    /// `dnn_classifier`, `resnet_classifier`, ...
    pub model_type: String,
    /// How many classes it tells apart.
    pub classes: usize,
    /// The registry folder it was loaded from.
    pub source: String,
    /// Whether new versions are loaded as they are registered (else one version is pinned).
    pub follows: bool,
    /// Forward passes so far and the rows they took, per version.
    pub passes: BTreeMap<u64, (u64, f64)>,
}

/// What a `quiver serve` process has loaded now.
pub type LoadedModels = Arc<dyn Fn() -> Vec<Loaded> + Send + Sync>;

/// The newest prediction-log files a model's page reads.
const LOG_FILES: usize = 200;

/// Buckets of the charts over time.
const BUCKETS: usize = 30;

/// The fields of a prediction-log record that the pages show.
#[derive(Debug, Clone, Deserialize)]
struct Logged {
    timestamp: f64,
    version: Option<u64>,
    protocol: String,
    method: String,
    rows: usize,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    scores: Vec<f32>,
    latency_ms: f64,
    status: String,
    error: Option<String>,
}

/// The `serving/` folder of the default store.
pub(super) struct ServingLogs {
    store: Arc<dyn ObjectStore>,
    root: object_store::path::Path,
}

impl ServingLogs {
    pub(super) fn new(session: &Session) -> Result<Self, MlError> {
        let (store, root, _) = session.default_folder("serving/")?;
        Ok(Self { store, root })
    }

    /// Models with a prediction log (the folder of requests for unknown models left out).
    async fn models(&self) -> Result<Vec<String>, MlError> {
        let mut names = list(&self.store, &self.root).await?.dirs;
        names.retain(|n| !n.starts_with('_'));
        names.sort();
        Ok(names)
    }

    /// The records of `model`'s newest log files, oldest first.
    async fn records(&self, model: &str) -> Result<Vec<Logged>, MlError> {
        let dir = self.root.clone().join(model).join("logs");
        let mut files: Vec<_> = list_all(&self.store, &dir)
            .await?
            .into_iter()
            .map(|o| o.location)
            .collect();
        files.sort();
        let mut records = Vec::new();
        for file in &files[files.len().saturating_sub(LOG_FILES)..] {
            let Some(bytes) = get_bytes(&self.store, file).await? else {
                continue;
            };
            for line in String::from_utf8_lossy(&bytes).lines() {
                // A line of another shape (a newer server's) is left out rather than failing
                // the page.
                if let Ok(record) = serde_json::from_str::<Logged>(line) {
                    records.push(record);
                }
            }
        }
        records.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
        Ok(records)
    }
}

/// The `q` quantile (0 to 1) of `values`, by the nearest rank.
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Milliseconds with one decimal, or a dash.
fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.1}"))
}

/// A summary of some records: requests, errors, latency percentiles.
struct Traffic {
    requests: usize,
    errors: usize,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    last: Option<f64>,
}

impl Traffic {
    fn of(records: &[Logged]) -> Self {
        let latencies: Vec<f64> = records.iter().map(|r| r.latency_ms).collect();
        Self {
            requests: records.len(),
            errors: records.iter().filter(|r| r.status != "OK").count(),
            p50: quantile(&latencies, 0.5),
            p90: quantile(&latencies, 0.9),
            p99: quantile(&latencies, 0.99),
            last: records.last().map(|r| r.timestamp),
        }
    }
}

/// Every served model: what this server has loaded, and each prediction log's traffic.
pub(super) async fn list_page(State(console): State<Arc<Console>>) -> Page {
    let loaded = console.serving.as_ref().map(|f| f());
    let mut logged = Vec::new();
    for model in console.serving_logs.models().await? {
        let records = console.serving_logs.records(&model).await?;
        logged.push((model, Traffic::of(&records)));
    }
    let body = html! {
        @if let Some(loaded) = &loaded {
            h2 { "Loaded by this server" }
            table.grid.loaded {
                thead { tr { th { "model" } th { "versions" } th { "type" } th.num { "classes" }
                    th { "versions followed" } th.num { "forward passes" } th.num { "mean batch size" }
                    th { "from" } } }
                tbody {
                    @for m in loaded {
                        @let (passes, rows) = m.passes.values().fold((0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
                        tr {
                            td { a href=(format!("/serving/{}", m.name)) { (m.name) } }
                            td { (m.versions.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")) }
                            td { (m.model_type) }
                            td.num { (m.classes) }
                            td { (if m.follows { "new versions load" } else { "pinned" }) }
                            td.num { (passes) }
                            td.num { (if passes > 0 { format!("{:.2}", rows / passes as f64) } else { "–".into() }) }
                            td { code { (m.source) } }
                        }
                    }
                }
            }
        }
        h2 { "Prediction logs" }
        @if logged.is_empty() {
            p.empty { "No prediction logs in this store yet: quiver serve writes them as it answers." }
        } @else {
            table.grid.traffic {
                thead { tr { th { "model" } th.num { "requests" } th.num { "errors" }
                    th.num { "p50 ms" } th.num { "p90 ms" } th.num { "p99 ms" } th { "last request" } } }
                tbody {
                    @for (model, t) in &logged {
                        tr {
                            td { a href=(format!("/serving/{model}")) { (model) } }
                            td.num { (t.requests) }
                            td.num { (t.errors) }
                            td.num { (ms(t.p50)) }
                            td.num { (ms(t.p90)) }
                            td.num { (ms(t.p99)) }
                            td { (t.last.map_or("–".into(), utc_timestamp)) }
                        }
                    }
                }
            }
        }
    };
    let refresh = loaded.is_some().then_some(5);
    Ok(page_with("Serving", Some(&console.store), refresh, body))
}

/// Records grouped into [`BUCKETS`] equal spans of time: each bucket's start (seconds after the
/// first record) and records.
fn buckets(records: &[Logged]) -> (f64, Vec<(f64, Vec<&Logged>)>) {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return (0.0, Vec::new());
    };
    let span = ((last.timestamp - first.timestamp) / BUCKETS as f64).max(1.0);
    let mut out: Vec<(f64, Vec<&Logged>)> = Vec::new();
    for r in records {
        let i = ((r.timestamp - first.timestamp) / span) as usize;
        while out.len() <= i {
            out.push((out.len() as f64 * span, Vec::new()));
        }
        out[i].1.push(r);
    }
    (span, out)
}

/// One model's traffic: charts over time, status counts, labels and the latest predictions.
pub(super) async fn model_page(
    State(console): State<Arc<Console>>,
    Path(model): Path<String>,
) -> Page {
    let records = console.serving_logs.records(&model).await?;
    let loaded = console
        .serving
        .as_ref()
        .and_then(|f| f().into_iter().find(|m| m.name == model));
    if records.is_empty() && loaded.is_none() {
        return Err(PageError(
            StatusCode::NOT_FOUND,
            format!("model '{model}' has no prediction log in this store"),
        ));
    }
    let traffic = Traffic::of(&records);
    let (span, buckets) = buckets(&records);
    let per_second = |f: &dyn Fn(&[&Logged]) -> Option<f64>| -> Vec<(f64, f64)> {
        buckets
            .iter()
            .filter_map(|(x, rs)| f(rs).map(|y| (*x, y)))
            .collect()
    };
    let requests = [
        Series::line("requests/s", per_second(&|rs| Some(rs.len() as f64 / span))),
        Series::line(
            "errors/s",
            per_second(&|rs| Some(rs.iter().filter(|r| r.status != "OK").count() as f64 / span)),
        )
        .dashed(),
    ];
    let latency = |q: f64| {
        per_second(&|rs| quantile(&rs.iter().map(|r| r.latency_ms).collect::<Vec<_>>(), q))
    };
    let latencies = [
        Series::line("p50", latency(0.5)),
        Series::line("p90", latency(0.9)),
        Series::line("p99", latency(0.99)).dashed(),
    ];
    let mut label_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        for label in &r.labels {
            *label_counts.entry(label.as_str()).or_default() += 1;
        }
    }
    let shares: Vec<Series> = label_counts
        .keys()
        .map(|label| {
            let share = per_second(&|rs| {
                let all: usize = rs.iter().map(|r| r.labels.len()).sum();
                let this = rs
                    .iter()
                    .flat_map(|r| &r.labels)
                    .filter(|l| l == label)
                    .count();
                (all > 0).then(|| this as f64 / all as f64)
            });
            Series::line(label, share)
        })
        .collect();
    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        *statuses.entry(r.status.as_str()).or_default() += 1;
    }
    let axis = format!(
        "seconds after {}",
        records
            .first()
            .map_or("–".into(), |r| utc_timestamp(r.timestamp))
    );
    let body = html! {
        table.facts {
            @if let Some(m) = &loaded {
                tr { th { "loaded here" } td { "versions " (m.versions.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))
                    " (" (m.model_type) ", " (m.classes) " classes)" } }
                @for (version, (passes, rows)) in &m.passes {
                    tr { th { "version " (version) " batches" } td { (passes) " forward passes, "
                        (format!("{:.2}", if *passes > 0 { rows / *passes as f64 } else { 0.0 })) " rows each" } }
                }
            }
            tr { th { "requests" } td { (traffic.requests) " (" (records.iter().map(|r| r.rows).sum::<usize>()) " examples)" } }
            tr { th { "errors" } td { (traffic.errors) } }
            tr { th { "latency" } td { "p50 " (ms(traffic.p50)) " ms, p90 " (ms(traffic.p90)) " ms, p99 " (ms(traffic.p99)) " ms" } }
            tr { th { "last request" } td { (traffic.last.map_or("–".into(), utc_timestamp)) } }
        }
        section.charts {
            (svg::line_chart("requests per second", &axis, &requests))
            (svg::line_chart("latency (ms)", &axis, &latencies))
            (svg::line_chart("share of each predicted label", &axis, &shares))
        }
        section.evaluation {
            table.grid.statuses {
                thead { tr { th { "status" } th.num { "requests" } } }
                tbody { @for (status, n) in &statuses { tr { td { (badge_status(status)) } td.num { (n) } } } }
            }
            table.grid.labels {
                thead { tr { th { "predicted label" } th.num { "examples" } } }
                tbody { @for (label, n) in &label_counts { tr { td { (label) } td.num { (n) } } } }
            }
        }
        h2 { "Latest predictions" }
        (latest(&records))
    };
    let refresh = loaded.is_some().then_some(5);
    Ok(page_with(
        &format!("Serving {model}"),
        Some(&console.store),
        refresh,
        body,
    ))
}

/// `OK` as a success badge, an error code as a failure.
fn badge_status(status: &str) -> Markup {
    badge_as(
        if status == "OK" {
            "succeeded"
        } else {
            "failed"
        },
        status,
    )
}

/// The last 30 requests, newest first.
fn latest(records: &[Logged]) -> Markup {
    html! {
        table.grid.predictions {
            thead { tr { th { "time" } th.num { "version" } th { "protocol" } th { "method" }
                th.num { "examples" } th { "labels" } th.num { "top score" } th.num { "ms" }
                th { "status" } th { "error" } } }
            tbody {
                @for r in records.iter().rev().take(30) {
                    tr {
                        td { (utc_timestamp(r.timestamp)) }
                        td.num { (r.version.map_or("–".into(), |v| v.to_string())) }
                        td { (r.protocol) }
                        td { (r.method) }
                        td.num { (r.rows) }
                        td { (r.labels.iter().take(4).cloned().collect::<Vec<_>>().join(", "))
                            @if r.labels.len() > 4 { ", …" } }
                        td.num { (fixed(r.scores.iter().copied().map(f64::from).reduce(f64::max))) }
                        td.num { (format!("{:.1}", r.latency_ms)) }
                        td { (badge_status(&r.status)) }
                        td { (r.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}
