//! The [`Session`]: a DataFusion `SessionContext` with Quiver's object stores, progress counters
//! and default store. Quiver's functions and formats are registered on it by `quiver-sql`.

use std::sync::Arc;

use datafusion::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::dataframe::DataFrame;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use url::Url;

use crate::error::{QuiverError, Result};
use crate::progress::Progress;
use crate::store::{S3Options, StoreRegistry, object_path, resolve_location, store_url};

/// How to build a [`Session`].
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Where Quiver keeps its own data (models, experiments): a URL or a local path.
    pub default_store: String,
    /// Parallel partitions per query; the number of cores when `None`.
    pub target_partitions: Option<usize>,
    /// Rows per batch; DataFusion's default when `None`.
    pub batch_size: Option<usize>,
    /// S3 settings on top of the `AWS_*` environment variables.
    pub s3: S3Options,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            default_store: "./quiver-data".into(),
            target_partitions: None,
            batch_size: None,
            s3: S3Options::default(),
        }
    }
}

/// Receives the log lines of long-running work (a training run's epochs, for example).
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Quiver's settings that travel with a query's tasks to the executors (`quiver.*`).
///
/// Written out rather than with DataFusion's `extensions_options!`, whose entries lack the
/// `quiver.` prefix, so that Ballista (which ships a session's settings as its entries) could
/// not set them again on the scheduler and the executors.
#[derive(Debug, Clone, Default)]
pub struct QuiverConfig {
    /// The statement the query belongs to: executors file what they record for the client
    /// (skipped images) under it.
    pub statement_id: String,
}

impl ConfigExtension for QuiverConfig {
    const PREFIX: &'static str = "quiver";
}

impl ExtensionOptions for QuiverConfig {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> datafusion::error::Result<()> {
        match key {
            "statement_id" => {
                self.statement_id = value.to_string();
                Ok(())
            }
            other => datafusion::common::config_err!("unknown setting 'quiver.{other}'"),
        }
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: "quiver.statement_id".into(),
            value: Some(self.statement_id.clone()),
            description: "the statement a query belongs to (set by the client)",
        }]
    }
}

/// `config` with [`QuiverConfig`]: a session's, the scheduler's and an executor's config all
/// need it, or the `quiver.*` settings are dropped on the way to the executors.
pub fn with_quiver_config(config: SessionConfig) -> SessionConfig {
    config.with_option_extension(QuiverConfig::default())
}

/// The statement a query with `options` belongs to (empty before [`Session::begin_statement`]).
pub fn statement_id(options: &ConfigOptions) -> &str {
    options
        .extensions
        .get::<QuiverConfig>()
        .map_or("", |c| c.statement_id.as_str())
}

/// A Quiver session: runs SQL and DataFrame queries over any registered store.
#[derive(Clone)]
pub struct Session {
    ctx: SessionContext,
    default_store: Url,
    progress: Arc<Progress>,
    log: Option<LogSink>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.ctx.session_id())
            .field("default_store", &self.default_store.as_str())
            .finish()
    }
}

impl Session {
    /// A session with only DataFusion's own functions; use `quiver_sql::session` for one with
    /// all of Quiver's functions and formats.
    pub fn try_new(options: SessionOptions) -> Result<Self> {
        Self::try_new_with(options, Ok)
    }

    /// A session whose DataFusion state is passed through `upgrade` before use: a cluster
    /// client swaps in its distributed query planner this way.
    pub fn try_new_with(
        options: SessionOptions,
        upgrade: impl FnOnce(SessionState) -> datafusion::error::Result<SessionState>,
    ) -> Result<Self> {
        let mut default_store = resolve_location(&options.default_store)?;
        if !default_store.path().ends_with('/') {
            let path = format!("{}/", default_store.path());
            default_store.set_path(&path);
        }
        let progress = Arc::new(Progress::default());
        let mut config = with_quiver_config(SessionConfig::new())
            .with_information_schema(true)
            .with_extension(Arc::clone(&progress));
        if let Some(n) = options.target_partitions {
            if n == 0 {
                return Err(QuiverError::Config(
                    "target_partitions must be at least 1".into(),
                ));
            }
            config = config.with_target_partitions(n);
        }
        if let Some(n) = options.batch_size {
            config = config.with_batch_size(n);
        }
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::new(StoreRegistry::new(options.s3)))
            .build_arc()?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        Ok(Self {
            ctx: SessionContext::new_with_state(upgrade(state)?),
            default_store,
            progress,
            log: None,
        })
    }

    /// This session with its log lines sent to `sink` instead of stderr (progress bars are
    /// hidden then).
    pub fn with_log(mut self, sink: LogSink) -> Self {
        self.log = Some(sink);
        self
    }

    /// Where log lines go, when not to stderr.
    pub fn log_sink(&self) -> Option<&LogSink> {
        self.log.as_ref()
    }

    /// Writes one log line to the sink, or to stderr.
    pub fn log(&self, line: &str) {
        match &self.log {
            Some(sink) => sink(line),
            None => eprintln!("{line}"),
        }
    }

    /// The DataFusion context, for registering tables and functions.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The URL of the default store, with a trailing slash.
    pub fn default_store(&self) -> &Url {
        &self.default_store
    }

    /// The progress counters of this session.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Starts a statement: what the queries planned from now on record for it (skipped images,
    /// on this process and on executors) is filed under the id this returns.
    pub fn begin_statement(&self) -> String {
        let id = crate::time::unique_id();
        let state = self.ctx.state_ref();
        let mut state = state.write();
        state
            .config_mut()
            .options_mut()
            .extensions
            .get_mut::<QuiverConfig>()
            .expect("every session has QuiverConfig")
            .statement_id
            .clone_from(&id);
        id
    }

    /// Plans one SQL statement (DDL and COPY run at once, queries when collected).
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        Ok(self.ctx.sql(sql).await?)
    }

    /// The object store for `url`.
    pub fn store_for(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        Ok(self.ctx.runtime_env().object_store(store_url(url))?)
    }

    /// A folder (`models/`, `experiments/`) of the default store: its store, its path in that
    /// store and its URL.
    pub fn default_folder(
        &self,
        folder: &str,
    ) -> Result<(Arc<dyn ObjectStore>, object_store::path::Path, Url)> {
        let url = self
            .default_store
            .join(folder)
            .map_err(|e| QuiverError::Location {
                location: format!("{}{folder}", self.default_store),
                reason: e.to_string(),
            })?;
        let store = self.store_for(&url)?;
        let path = object_path(&url)?;
        Ok((store, path, url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ballista ships a session's settings as `entries()` and sets them again with `set`: the
    /// statement id must survive that trip.
    #[test]
    fn the_statement_id_survives_being_shipped_as_settings() {
        let session = Session::try_new(SessionOptions::default()).unwrap();
        let id = session.begin_statement();
        let sent = session.context().state().config().options().entries();
        let mut received = with_quiver_config(SessionConfig::new());
        for entry in sent {
            if let Some(value) = entry.value {
                let _ = received.options_mut().set(&entry.key, &value);
            }
        }
        assert_eq!(statement_id(received.options()), id);
    }

    #[tokio::test]
    async fn runs_sql_and_resolves_the_default_store() {
        let session = Session::try_new(SessionOptions {
            default_store: "memory://quiver/".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(session.default_store().as_str(), "memory://quiver/");
        let batches = session
            .sql("SELECT 1 + 1 AS two")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches[0].num_rows(), 1);
        session.store_for(session.default_store()).unwrap();
        let err = Session::try_new(SessionOptions {
            target_partitions: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("target_partitions"));
    }
}
