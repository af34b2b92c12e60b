//! Runs every `.slt` file under `tests/slt/` against a fresh embedded Quiver session, or, when
//! `QUIVER_SLT_CLUSTER` names a driver (`host:port`), against that cluster (engine name
//! `quiver-cluster` for `skipif`/`onlyif`; its default store is the file's scratch folder, which
//! every process shares, since `memory://` stores are per process).
//! Variables: `${DATA}` is `tests/data`, `${SCRATCH}` a fresh folder per file; files that use
//! them start with `control substitution on`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use quiver_engine::bail;
use quiver_engine::{Session, SessionOptions};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

struct QuiverDb {
    session: Session,
    engine: &'static str,
}

#[derive(Debug)]
struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

fn column_type(dt: &DataType) -> DefaultColumnType {
    if dt.is_integer() {
        DefaultColumnType::Integer
    } else if dt.is_floating() {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

#[async_trait]
impl AsyncDB for QuiverDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let err = |e: DataFusionError| DbError(e.to_string());
        let mut statements = quiver_sql::parse(sql).map_err(|e| DbError(e.to_string()))?;
        if statements.len() != 1 {
            bail!(DbError, "expected one statement, got {}", statements.len());
        }
        let frame = quiver_sql::execute(&self.session, statements.remove(0))
            .await
            .map_err(|e| DbError(e.to_string()))?;
        let schema = frame.schema().inner().clone();
        let batches = frame.collect().await.map_err(err)?;
        // DDL has no output columns; queries, EXPLAIN and COPY (its row count) have some.
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(
                batches.iter().map(|b| b.num_rows() as u64).sum(),
            ));
        }
        let types = schema
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &batches {
            let batch = quiver_sql::display::readable(batch).map_err(|e| DbError(e.to_string()))?;
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DbError(e.to_string()))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| {
                            // Plans end lines with spaces; the .slt files do not.
                            let s = f.value(row).to_string();
                            let s = s.lines().map(str::trim_end).collect::<Vec<_>>().join("\n");
                            if s.is_empty() {
                                "(empty)".to_string()
                            } else {
                                s
                            }
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        self.engine
    }
}

fn slt_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/slt exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::main]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let cluster = std::env::var("QUIVER_SLT_CLUSTER")
        .ok()
        .filter(|c| !c.is_empty());
    if let Some(driver) = &cluster {
        println!("slt: running on the cluster at {driver}");
    }
    let mut failures = Vec::new();
    let mut passed = 0;
    for file in slt_files(&root.join("slt")) {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let scratch = tempfile::tempdir().expect("scratch dir");
        let store = scratch.path().join("store").display().to_string();
        let cluster = cluster.clone();
        let mut runner = Runner::new(move || {
            let cluster = cluster.clone();
            let store = store.clone();
            async move {
                let engine = if cluster.is_some() {
                    "quiver-cluster"
                } else {
                    "quiver-embedded"
                };
                let session = match cluster {
                    Some(driver) => quiver_sql::cluster::connect(
                        SessionOptions {
                            default_store: store,
                            target_partitions: Some(2),
                            ..Default::default()
                        },
                        &driver,
                        None,
                    ),
                    None => quiver_sql::session(SessionOptions {
                        default_store: "memory://quiver/".into(),
                        target_partitions: Some(2),
                        ..Default::default()
                    }),
                }
                .map_err(|e| DbError(e.to_string()))?;
                Ok(QuiverDb { session, engine })
            }
        });
        runner.set_var("DATA".into(), root.join("data").display().to_string());
        runner.set_var("SCRATCH".into(), scratch.path().display().to_string());
        match runner.run_file_async(&file).await {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED\n{e}");
                failures.push(name);
            }
        }
    }
    println!("\nslt: {passed} passed, {} failed", failures.len());
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
