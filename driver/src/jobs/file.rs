//! Job files: TOML with a name, an optional cron schedule and time zone, parameters, defaults
//! and ordered SQL steps (inline or `.sql` files), plus includes. Everything is checked when
//! the file is loaded, and every error names the file, the line and the reason.
//!
//! ```toml
//! name = "nightly_fashion"
//! schedule = "0 2 * * *"          # cron: 5 fields, or 6 with seconds first
//! timezone = "Europe/Berlin"      # default UTC
//! max_active_runs = 1             # default 1
//! catchup = "latest"              # none (default) | latest | all
//! include = ["common.toml"]       # params, defaults and steps of other files, first
//!
//! [params]
//! out = "/data/out/${run_date}"
//!
//! [defaults]
//! timeout_seconds = 3600
//! retries = 1
//! retry_delay_seconds = 30
//!
//! [[steps]]
//! name = "etl"
//! sql = "COPY (SELECT ...) TO '${out}/' STORED AS TFRECORD"
//!
//! [[steps]]
//! name = "train"
//! file = "train.sql"              # relative to this file
//! retries = 0
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use object_store::ObjectStoreExt;
use quiver_engine::options::{Maybe, NonNegative, OptionValue, Options, count};
use quiver_engine::{QuiverError, Result, Session, resolve_location};
use quiver_engine::{bail, err};
use serde::Deserialize;
use toml::Spanned;
use url::Url;

/// A loaded, checked job.
#[derive(Debug, Clone)]
pub(crate) struct JobFile {
    /// The job's name (its folder under `jobs/`).
    pub(crate) name: String,
    /// Where the job file was read from.
    pub(crate) location: Url,
    /// The schedule, when the job runs by itself.
    pub(crate) schedule: Option<Schedule>,
    /// At most this many runs at once.
    pub(crate) max_active_runs: u32,
    /// What happens to schedule times missed while no driver ran, or while runs were blocked.
    pub(crate) catchup: Catchup,
    /// Parameters, before substitution of `${run_date}` and friends.
    pub(crate) params: BTreeMap<String, String>,
    /// The steps, included files' first.
    pub(crate) steps: Vec<Step>,
}

/// A cron schedule in a time zone.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// The pattern as written.
    pub(crate) pattern: String,
    cron: Cron,
    /// The time zone the pattern is read in.
    pub(crate) timezone: chrono_tz::Tz,
}

impl Schedule {
    /// The first scheduled time strictly after `after`.
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// What to do with scheduled times that were missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Catchup {
    /// Skip them: only times that come while the driver runs and a run may start are run.
    None,
    /// Run the most recent one.
    Latest,
    /// Run every one, oldest first.
    All,
}

impl Catchup {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Latest => "latest",
            Self::All => "all",
        }
    }
}

/// One step.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    /// The step's name (`step-N` when not given).
    pub(crate) name: String,
    /// What it runs.
    pub(crate) body: StepBody,
    /// Each attempt is stopped after this long.
    pub(crate) timeout: Option<Duration>,
    /// Attempts after the first.
    pub(crate) retries: u32,
    /// Pause between attempts.
    pub(crate) retry_delay: Duration,
}

/// What a step runs.
#[derive(Debug, Clone)]
pub(crate) enum StepBody {
    /// SQL statements written in the job file.
    Sql(String),
    /// SQL statements in a file, read again at every attempt.
    File(Url),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Option<Spanned<String>>,
    description: Option<String>,
    schedule: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    max_active_runs: Option<Spanned<i64>>,
    catchup: Option<Spanned<String>>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<toml::Value>>,
    defaults: Option<Spanned<toml::Table>>,
    #[serde(default)]
    steps: Vec<Spanned<toml::Table>>,
}

/// Names every `${...}` of a step may use besides the job's parameters.
pub(crate) const BUILTINS: [&str; 4] = ["job", "run_id", "run_date", "run_ts"];

quiver_engine::options! {
    /// Keys of a step and of `[defaults]`: how long an attempt may run and how it is retried.
    pub(crate) struct StepOptions {
        /// Each attempt is stopped after this many seconds; 0 or unset, never.
        timeout_seconds: Option<f64> = None, Maybe(NonNegative);
        /// Attempts after the first.
        retries: u32 = 0, count(0).max(100);
        /// Seconds between attempts.
        retry_delay_seconds: f64 = 5.0, NonNegative;
    }
}

/// Step keys as written in `[defaults]` or a step, checked; later ones win.
type Policy = Vec<(String, OptionValue)>;

/// Reads a job file, or the `.toml` files of a folder.
struct Loader<'a> {
    session: &'a Session,
    /// Files being read, outermost first, to find include cycles.
    stack: Vec<Url>,
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Reads a text file from any store.
pub(crate) async fn read_text(session: &Session, url: &Url) -> std::result::Result<String, String> {
    let store = session.store_for(url).map_err(|e| e.to_string())?;
    let path = quiver_engine::store::object_path(url).map_err(|e| e.to_string())?;
    let bytes = match store.get(&path).await {
        Ok(r) => r.bytes().await.map_err(|e| e.to_string())?,
        Err(object_store::Error::NotFound { .. }) => return Err("not found".into()),
        Err(e) => return Err(e.to_string()),
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| "not UTF-8 text".into())
}

/// Where `relative` points, seen from the file at `base` (absolute URLs and paths stay).
fn relative_url(base: &Url, relative: &str) -> std::result::Result<Url, String> {
    if relative.contains("://") || relative.starts_with('/') {
        resolve_location(relative).map_err(|e| e.to_string())
    } else {
        base.join(relative).map_err(|e| e.to_string())
    }
}

/// A TOML value as an option value.
fn option_value(key: &str, value: &toml::Value) -> std::result::Result<OptionValue, String> {
    Ok(match value {
        toml::Value::String(s) => OptionValue::Str(s.clone()),
        toml::Value::Integer(n) => OptionValue::Num(*n as f64),
        toml::Value::Float(f) => OptionValue::Num(*f),
        toml::Value::Boolean(b) => OptionValue::Bool(*b),
        toml::Value::Array(items) => OptionValue::List(
            items
                .iter()
                .map(|i| option_value(key, i))
                .collect::<std::result::Result<_, _>>()?,
        ),
        other => {
            return Err(format!(
                "{key} must be a number, string, boolean or list, not {other}"
            ));
        }
    })
}

/// The step keys of `table`, checked; `allowed_extra` are the other keys it may have.
fn policy(table: &toml::Table, allowed_extra: &[&str]) -> std::result::Result<Policy, String> {
    let mut p = Policy::new();
    for (key, value) in table {
        if allowed_extra.contains(&key.as_str()) {
            continue;
        }
        if !StepOptions::knows(key) {
            let known: Vec<_> = StepOptions::docs()
                .iter()
                .map(|d| d.name)
                .chain(allowed_extra.iter().copied())
                .collect();
            return Err(format!("unknown key '{key}' (known: {})", known.join(", ")));
        }
        let value = option_value(key, value)?;
        StepOptions::default().set(key, &value)?;
        p.push((key.clone(), value));
    }
    Ok(p)
}

/// What one file (and the files it includes) contributes.
#[derive(Default)]
struct Parts {
    params: BTreeMap<String, String>,
    defaults: Policy,
    /// Steps with their policy as written (defaults applied at the end), and where they are.
    steps: Vec<(String, StepBody, Policy, String)>,
}

fn error(url: &Url, line: usize, reason: impl std::fmt::Display) -> QuiverError {
    err!(QuiverError::Config, "job file {url}, line {line}: {reason}")
}

impl Loader<'_> {
    /// Reads `url` and what it includes; `top` is false for included files.
    async fn read(&mut self, url: Url, top: bool) -> Result<(RawFile, String, Parts)> {
        let text = read_text(self.session, &url)
            .await
            .map_err(|e| err!(QuiverError::Config, "cannot read job file {url}: {e}"))?;
        let raw: RawFile = toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(&text, s.start));
            error(&url, line, e.message())
        })?;
        let at = |span: std::ops::Range<usize>| line_of(&text, span.start);
        if !top {
            for (key, span) in [
                ("name", raw.name.as_ref().map(|s| s.span())),
                ("schedule", raw.schedule.as_ref().map(|s| s.span())),
                ("timezone", raw.timezone.as_ref().map(|s| s.span())),
                ("catchup", raw.catchup.as_ref().map(|s| s.span())),
                (
                    "max_active_runs",
                    raw.max_active_runs.as_ref().map(|s| s.span()),
                ),
            ] {
                if let Some(span) = span {
                    return Err(error(
                        &url,
                        at(span),
                        format!(
                            "an included file cannot set '{key}' (only params, defaults, steps and include)"
                        ),
                    ));
                }
            }
        }
        let mut parts = Parts::default();
        for include in &raw.include {
            let target = relative_url(&url, include.get_ref())
                .map_err(|e| error(&url, at(include.span()), e))?;
            if let Some(i) = self.stack.iter().position(|u| u == &target) {
                let chain: Vec<String> = self.stack[i..]
                    .iter()
                    .chain(std::iter::once(&target))
                    .map(|u| {
                        u.path_segments()
                            .and_then(|mut s| s.next_back())
                            .unwrap_or("?")
                            .to_string()
                    })
                    .collect();
                return Err(error(
                    &url,
                    at(include.span()),
                    format!("cyclic include: {}", chain.join(" -> ")),
                ));
            }
            self.stack.push(target.clone());
            let (_, _, included) =
                Box::pin(self.read(target.clone(), false))
                    .await
                    .map_err(|e| match e {
                        QuiverError::Config(m) if m.starts_with("cannot read job file") => error(
                            &url,
                            at(include.span()),
                            format!("include '{}': {m}", include.get_ref()),
                        ),
                        other => other,
                    })?;
            self.stack.pop();
            parts.params.extend(included.params);
            parts.defaults.extend(included.defaults);
            parts.steps.extend(included.steps);
        }
        for (key, value) in &raw.params {
            if !valid_name(key) {
                return Err(error(
                    &url,
                    at(value.span()),
                    format!("parameter name '{key}' must be letters, digits and '_'"),
                ));
            }
            if BUILTINS.contains(&key.as_str()) {
                return Err(error(
                    &url,
                    at(value.span()),
                    format!("parameter '{key}' is set by Quiver for every run"),
                ));
            }
            let text = match value.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    value.get_ref().to_string()
                }
                other => {
                    return Err(error(
                        &url,
                        at(value.span()),
                        format!(
                            "parameter '{key}' must be a string, number or boolean, found {}",
                            other.type_str()
                        ),
                    ));
                }
            };
            parts.params.insert(key.clone(), text);
        }
        if let Some(defaults) = &raw.defaults {
            let p = policy(defaults.get_ref(), &[])
                .map_err(|e| error(&url, at(defaults.span()), format!("[defaults]: {e}")))?;
            parts.defaults.extend(p);
        }
        for (i, step) in raw.steps.iter().enumerate() {
            let line = at(step.span());
            let table = step.get_ref();
            let name = match table.get("name") {
                None => format!("step-{}", parts.steps.len() + 1),
                Some(toml::Value::String(s)) if !s.trim().is_empty() => s.clone(),
                Some(other) => {
                    return Err(error(
                        &url,
                        line,
                        format!(
                            "step {}: name must be a non-empty string, found {other}",
                            i + 1
                        ),
                    ));
                }
            };
            let what = format!("step '{name}'");
            let body = match (table.get("type"), table.get("sql"), table.get("file")) {
                (Some(toml::Value::String(t)), _, _) if t != "sql" => {
                    return Err(error(
                        &url,
                        line,
                        format!(
                            "{what}: unknown step type '{t}' (steps run SQL: sql = \"...\" or file = \"path.sql\")"
                        ),
                    ));
                }
                (_, Some(toml::Value::String(sql)), None) => StepBody::Sql(sql.clone()),
                (_, None, Some(toml::Value::String(file))) => {
                    let target = relative_url(&url, file)
                        .map_err(|e| error(&url, line, format!("{what}: file '{file}': {e}")))?;
                    read_text(self.session, &target).await.map_err(|e| {
                        error(&url, line, format!("{what}: file '{file}' ({target}): {e}"))
                    })?;
                    StepBody::File(target)
                }
                (_, Some(_), Some(_)) => {
                    return Err(error(
                        &url,
                        line,
                        format!("{what}: give either sql or file, not both"),
                    ));
                }
                (_, Some(other), None) | (_, None, Some(other)) => {
                    return Err(error(
                        &url,
                        line,
                        format!("{what}: sql and file must be strings, found {other}"),
                    ));
                }
                (_, None, None) => {
                    let unknown = table.keys().find(|k| {
                        ![
                            "name",
                            "type",
                            "timeout_seconds",
                            "retries",
                            "retry_delay_seconds",
                        ]
                        .contains(&k.as_str())
                    });
                    return Err(error(
                        &url,
                        line,
                        match unknown {
                            Some(k) => format!(
                                "{what}: unknown step type '{k}' (steps run SQL: sql = \"...\" or file = \"path.sql\")"
                            ),
                            None => format!(
                                "{what}: nothing to run (give sql = \"...\" or file = \"path.sql\")"
                            ),
                        },
                    ));
                }
            };
            let p = policy(table, &["name", "type", "sql", "file"])
                .map_err(|e| error(&url, line, format!("{what}: {e}")))?;
            parts.steps.push((name, body, p, format!("{url}:{line}")));
        }
        Ok((raw, text, parts))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces `${name}` with `values[name]` and `$$` with `$`; an unknown name is an error.
pub(crate) fn substitute(
    text: &str,
    values: &BTreeMap<String, String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed '${{' in: {}", short(&rest[i..])))?;
            let name = tail[..end].trim();
            let value = values.get(name).ok_or_else(|| {
                let mut known: Vec<&str> = values.keys().map(String::as_str).collect();
                known.sort();
                format!(
                    "unknown parameter '${{{name}}}' (known: {})",
                    known.join(", ")
                )
            })?;
            out.push_str(value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

/// The values `${...}` resolves to in one run: the builtins, then the parameters (which may use
/// the builtins), with `overrides` from the command line replacing parameters.
pub(crate) fn run_values(
    job: &JobFile,
    builtins: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut values = builtins.clone();
    for (key, value) in &job.params {
        let value = overrides.get(key).unwrap_or(value);
        let value = substitute(value, builtins).map_err(|e| format!("parameter '{key}': {e}"))?;
        values.insert(key.clone(), value);
    }
    for key in overrides.keys() {
        if !job.params.contains_key(key) {
            let mut known: Vec<&String> = job.params.keys().collect();
            known.sort();
            return Err(format!(
                "--param {key}: job '{}' has no parameter '{key}' (parameters: {})",
                job.name,
                known
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(values)
}

/// Loads and checks the job file at `location`.
pub(crate) async fn load(session: &Session, location: &str) -> Result<JobFile> {
    let url = resolve_location(location)?;
    let mut loader = Loader {
        session,
        stack: vec![url.clone()],
    };
    let (raw, text, parts) = loader.read(url.clone(), true).await?;
    let at = |span: std::ops::Range<usize>| line_of(&text, span.start);
    let name = match &raw.name {
        Some(n) if valid_job_name(n.get_ref()) => n.get_ref().clone(),
        Some(n) => {
            return Err(error(
                &url,
                at(n.span()),
                format!(
                    "job name '{}' must be letters, digits, '_', '-' or '.'",
                    n.get_ref()
                ),
            ));
        }
        None => return Err(error(&url, 1, "the job needs a name (name = \"...\")")),
    };
    let _ = raw.description;
    let timezone = match &raw.timezone {
        Some(tz) => tz.get_ref().parse::<chrono_tz::Tz>().map_err(|_| {
            error(
                &url,
                at(tz.span()),
                format!(
                    "unknown time zone '{}' (an IANA name such as 'UTC' or 'Europe/Berlin')",
                    tz.get_ref()
                ),
            )
        })?,
        None => chrono_tz::UTC,
    };
    let schedule = match &raw.schedule {
        Some(s) => {
            let parser = CronParser::builder().seconds(Seconds::Optional).build();
            let cron = parser.parse(s.get_ref()).map_err(|e| {
                error(
                    &url,
                    at(s.span()),
                    format!("bad cron schedule '{}': {e} (5 fields 'min hour day month weekday', or 6 with seconds first)", s.get_ref()),
                )
            })?;
            let schedule = Schedule {
                pattern: s.get_ref().clone(),
                cron,
                timezone,
            };
            if schedule.next_after(Utc::now()).is_none() {
                return Err(error(
                    &url,
                    at(s.span()),
                    format!("schedule '{}' never fires", s.get_ref()),
                ));
            }
            Some(schedule)
        }
        None => None,
    };
    let max_active_runs = match &raw.max_active_runs {
        Some(n) if (1..=1000).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            return Err(error(
                &url,
                at(n.span()),
                format!("max_active_runs must be 1 to 1000, found {}", n.get_ref()),
            ));
        }
        None => 1,
    };
    let catchup = match raw
        .catchup
        .as_ref()
        .map(|c| (c.get_ref().as_str(), c.span()))
    {
        None | Some(("none", _)) => Catchup::None,
        Some(("latest", _)) => Catchup::Latest,
        Some(("all", _)) => Catchup::All,
        Some((other, span)) => {
            return Err(error(
                &url,
                at(span),
                format!("catchup must be 'none', 'latest' or 'all', found '{other}'"),
            ));
        }
    };
    if parts.steps.is_empty() {
        return Err(error(
            &url,
            1,
            "the job has no steps ([[steps]] with sql = \"...\" or file = \"path.sql\")",
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut steps = Vec::new();
    for (step_name, body, p, origin) in parts.steps {
        if !names.insert(step_name.clone()) {
            bail!(
                QuiverError::Config,
                "job file {origin}: two steps are named '{step_name}'"
            );
        }
        let mut o = StepOptions::default();
        for (key, value) in parts.defaults.iter().chain(&p) {
            o.set(key, value)
                .map_err(|e| err!(QuiverError::Config, "job file {origin}: {e}"))?;
        }
        steps.push(Step {
            name: step_name,
            body,
            timeout: o
                .timeout_seconds
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64),
            retries: o.retries,
            retry_delay: Duration::from_secs_f64(o.retry_delay_seconds),
        });
    }
    let job = JobFile {
        name,
        location: url,
        schedule,
        max_active_runs,
        catchup,
        params: parts.params,
        steps,
    };
    // Every `${...}` must resolve: check with placeholder builtins.
    let builtins: BTreeMap<String, String> = BUILTINS
        .iter()
        .map(|b| (b.to_string(), String::new()))
        .collect();
    let values = run_values(&job, &builtins, &BTreeMap::new())
        .map_err(|e| err!(QuiverError::Config, "job file {}: {e}", job.location))?;
    for step in &job.steps {
        let text = step_text(session, step).await?;
        substitute(&text, &values).map_err(|e| {
            err!(
                QuiverError::Config,
                "job file {}: step '{}': {e}",
                job.location,
                step.name
            )
        })?;
        quiver_sql::parse(&substitute(&text, &values).unwrap_or_default()).map_err(|e| {
            err!(
                QuiverError::Config,
                "job file {}: step '{}': {e}",
                job.location,
                step.name
            )
        })?;
    }
    Ok(job)
}

fn valid_job_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The SQL of a step as it is now (files are read again).
pub(crate) async fn step_text(session: &Session, step: &Step) -> Result<String> {
    match &step.body {
        StepBody::Sql(sql) => Ok(sql.clone()),
        StepBody::File(url) => read_text(session, url).await.map_err(|e| {
            err!(
                QuiverError::Config,
                "step '{}': cannot read {url}: {e}",
                step.name
            )
        }),
    }
}

/// The job files of `location`: the file itself, or the `.toml` files directly in a folder.
pub(crate) async fn job_files(session: &Session, location: &str) -> Result<Vec<Url>> {
    let url = resolve_location(location)?;
    if !url.path().ends_with('/') {
        return Ok(vec![url]);
    }
    let store = session.store_for(&url)?;
    let prefix = quiver_engine::store::object_path(&url)?;
    let listing = store
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| QuiverError::store(url.as_str(), e))?;
    let mut files: Vec<Url> = listing
        .objects
        .iter()
        .filter_map(|o| o.location.filename())
        .filter(|f| f.ends_with(".toml"))
        .filter_map(|f| url.join(f).ok())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_parameters() {
        let values: BTreeMap<String, String> = [("a", "1"), ("run_date", "2026-11-27")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            substitute("x${a}/${ run_date }$$5 $b", &values).unwrap(),
            "x1/2026-11-27$5 $b"
        );
        let err = substitute("SELECT ${nope}", &values).unwrap_err();
        assert!(
            err.contains("unknown parameter '${nope}' (known: a, run_date)"),
            "{err}"
        );
        assert!(substitute("${a", &values).unwrap_err().contains("unclosed"));
    }

    async fn load_text(files: &[(&str, &str)]) -> Result<JobFile> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let session = quiver_sql::session(Default::default()).unwrap();
        let path = dir.path().join(files[0].0);
        load(&session, path.to_str().unwrap()).await
    }

    #[tokio::test]
    async fn loads_a_job_with_includes_defaults_and_files() {
        let job = load_text(&[
            (
                "nightly.toml",
                "name = \"nightly\"\nschedule = \"*/5 * * * * *\"\ntimezone = \"Europe/Berlin\"\n\
                 max_active_runs = 2\ncatchup = \"all\"\ninclude = [\"common.toml\"]\n\
                 [params]\nout = \"/tmp/${run_date}\"\nn = 3\n[defaults]\nretries = 2\n\
                 [[steps]]\nname = \"count\"\nsql = \"SELECT ${n}; SELECT '${out}'\"\n\
                 timeout_seconds = 10\n[[steps]]\nfile = \"step.sql\"\nretries = 0\n",
            ),
            (
                "common.toml",
                "[params]\nbase = \"x\"\n[defaults]\nretry_delay_seconds = 1\n[[steps]]\nname = \"setup\"\nsql = \"SELECT '${base}'\"\n",
            ),
            ("step.sql", "SELECT ${n} + 1"),
        ])
        .await
        .unwrap();
        assert_eq!(job.name, "nightly");
        assert_eq!(job.max_active_runs, 2);
        assert_eq!(job.catchup, Catchup::All);
        let names: Vec<_> = job.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["setup", "count", "step-3"]);
        assert_eq!(job.steps[1].retries, 2);
        assert_eq!(job.steps[1].timeout, Some(Duration::from_secs(10)));
        assert_eq!(job.steps[2].retries, 0);
        assert_eq!(job.steps[2].retry_delay, Duration::from_secs(1));
        assert_eq!(job.params["base"], "x");
        let schedule = job.schedule.unwrap();
        let t0 = "2026-11-27T10:00:01Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            schedule.next_after(t0).unwrap().to_rfc3339(),
            "2026-11-27T10:00:05+00:00"
        );
    }

    #[tokio::test]
    async fn bad_job_files_name_the_line_and_reason() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[(
                    "a.toml",
                    "name = \"a\"\n\n[[steps]]\npython = \"train.py\"\n",
                )],
                "line 3: step 'step-1': unknown step type 'python'",
            ),
            (
                &[(
                    "a.toml",
                    "name = \"a\"\n[[steps]]\ntype = \"shell\"\nsql = \"x\"\n",
                )],
                "line 2: step 'step-1': unknown step type 'shell'",
            ),
            (
                &[(
                    "a.toml",
                    "name = \"a\"\nschedule = \"*/x * * * *\"\n[[steps]]\nsql = \"SELECT 1\"\n",
                )],
                "line 2: bad cron schedule '*/x * * * *'",
            ),
            (
                &[(
                    "a.toml",
                    "name = \"a\"\n[[steps]]\nsql = \"SELECT 1\"\n[[steps]]\nfile = \"missing.sql\"\n",
                )],
                "line 4: step 'step-2': file 'missing.sql'",
            ),
            (
                &[
                    (
                        "a.toml",
                        "name = \"a\"\ninclude = [\"b.toml\"]\n[[steps]]\nsql = \"SELECT 1\"\n",
                    ),
                    ("b.toml", "\ninclude = [\"a.toml\"]\n"),
                ],
                "b.toml, line 2: cyclic include: a.toml -> b.toml -> a.toml",
            ),
            (
                &[(
                    "a.toml",
                    "name = \"a\"\ntimezone = \"Mars/Olympus\"\n[[steps]]\nsql = \"SELECT 1\"\n",
                )],
                "line 2: unknown time zone 'Mars/Olympus'",
            ),
            (
                &[("a.toml", "name = \"a\"\nschedul = \"* * * * *\"\n")],
                "line 2: unknown field `schedul`",
            ),
            (
                &[(
                    "a.toml",
                    "name = \"a\"\n[[steps]]\nsql = \"SELECT ${nope}\"\n",
                )],
                "step 'step-1': unknown parameter '${nope}'",
            ),
            (
                &[("a.toml", "name = \"a\"\n[[steps]]\nsql = \"SELEC 1\"\n")],
                "step 'step-1': SQL error",
            ),
            (
                &[(
                    "a.toml",
                    "name = \"a\"\n[[steps]]\nsql = \"SELECT 1\"\nretries = -1\n",
                )],
                "line 2: step 'step-1': retries must be a whole number from 0 to 100",
            ),
        ];
        for (files, expected) in cases {
            let err = load_text(files).await.unwrap_err().to_string();
            assert!(err.contains(expected), "expected '{expected}' in: {err}");
        }
    }
}
