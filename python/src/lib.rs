//! `quiver._quiver`, the Python module behind the `quiver` package: a session over the same
//! engine as the CLI (`Session.sql` runs every statement `quiver sql` takes), and lazy
//! DataFrames whose results reach Python through the Arrow C stream interface, batch by batch.
//!
//! Python waits for the engine with the GIL released, and Ctrl-C (KeyboardInterrupt) cancels
//! the work it waits for.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ffi_stream::FFI_ArrowArrayStream;
use arrow::pyarrow::ToPyArrow;
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyList};
use quiver_engine::{QuiverError as EngineError, Session as EngineSession, SessionOptions};
use quiver_sql::SessionExt;

create_exception!(
    quiver,
    QuiverError,
    PyException,
    "An error of the engine; its message names the file, row, column or option."
);
create_exception!(
    quiver,
    SqlError,
    QuiverError,
    "A statement that cannot be planned or run (unknown table or column, bad SQL, bad data)."
);
create_exception!(
    quiver,
    StoreError,
    QuiverError,
    "A location or object store that cannot be reached, read or written."
);
create_exception!(
    quiver,
    ConfigError,
    QuiverError,
    "A setting or option with a bad value."
);

/// The engine's error as the Python exception of its kind.
fn py_error(e: impl Into<EngineError>) -> PyErr {
    let e: EngineError = e.into();
    let message = e.to_string();
    match e {
        EngineError::Config(_) => ConfigError::new_err(message),
        EngineError::Location { .. } | EngineError::Store { .. } | EngineError::Io(_) => {
            StoreError::new_err(message)
        }
        EngineError::DataFusion(_) | EngineError::Statement { .. } => SqlError::new_err(message),
        _ => QuiverError::new_err(message),
    }
}

/// The engine's runtime, shared by every session of the process.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("quiver")
            .build()
            .expect("the tokio runtime starts")
    })
}

/// How often a wait looks for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

/// Runs `work` on the engine's runtime with the GIL released; a pending KeyboardInterrupt
/// (Ctrl-C) drops it, which cancels it, and is raised.
fn wait<F>(py: Python<'_>, work: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    py.detach(|| {
        runtime().block_on(async {
            tokio::pin!(work);
            loop {
                tokio::select! {
                    done = &mut work => return Ok(done),
                    () = tokio::time::sleep(SIGNAL_CHECK) => {
                        Python::attach(|py| py.check_signals())?;
                    }
                }
            }
        })
    })
}

/// A connection to Quiver: the embedded engine over a default store (models, experiments,
/// jobs and their runs live there).
#[pyclass(module = "quiver", frozen)]
struct Session {
    inner: EngineSession,
}

#[pymethods]
impl Session {
    /// A session over `store` (a local folder or a URL such as `s3://bucket/prefix/`;
    /// `./quiver-data` by default), `target_partitions` partitions per query (the number of
    /// cores by default) and `batch_size` rows per batch.
    #[new]
    #[pyo3(signature = (store=None, target_partitions=None, batch_size=None))]
    fn new(
        store: Option<String>,
        target_partitions: Option<usize>,
        batch_size: Option<usize>,
    ) -> PyResult<Self> {
        let mut options = SessionOptions::default();
        if let Some(store) = store {
            options.default_store = store;
        }
        options.target_partitions = target_partitions;
        options.batch_size = batch_size;
        // Registering the object stores and functions needs the runtime.
        let _guard = runtime().enter();
        let inner = quiver_sql::session(options).map_err(py_error)?;
        Ok(Self { inner })
    }

    /// The default store's URL.
    #[getter]
    fn store(&self) -> String {
        self.inner.default_store().to_string()
    }

    /// Runs `query`, one statement or several separated by `;` (queries, COPY, CREATE MODEL,
    /// experiments, ...), every statement but the last to its end; the last one's result as a
    /// DataFrame, which runs when its rows are asked for.
    fn sql(&self, py: Python<'_>, query: &str) -> PyResult<DataFrame> {
        let session = self.inner.clone();
        let query = query.to_string();
        let frame = wait(py, async move {
            let mut statements = quiver_sql::parse(&query)?;
            let last = statements.pop().ok_or_else(|| {
                EngineError::Config("the SQL text has no statement to run".into())
            })?;
            for statement in statements {
                let frame = quiver_sql::execute(&session, statement).await?;
                quiver_sql::collect(frame).await?;
            }
            quiver_sql::execute(&session, last).await
        })?
        .map_err(py_error)?;
        Ok(DataFrame { frame })
    }

    /// The images under `path` (`path`, `label` from the folder, `content`), a random
    /// `sample` fraction of them if given, reproducible with `seed`.
    #[pyo3(signature = (path, sample=None, seed=0))]
    fn read_images(
        &self,
        py: Python<'_>,
        path: &str,
        sample: Option<f64>,
        seed: u64,
    ) -> PyResult<DataFrame> {
        let session = self.inner.clone();
        let path = path.to_string();
        let frame = wait(py, async move {
            match sample {
                Some(ratio) => session.read_images_sample(&path, ratio, seed).await,
                None => session.read_images(&path).await,
            }
        })?
        .map_err(py_error)?;
        Ok(DataFrame { frame })
    }

    fn __repr__(&self) -> String {
        format!("quiver.Session(store={:?})", self.store())
    }
}

/// A lazy query result: nothing runs until its rows are asked for (`to_arrow`, `to_pandas`,
/// iteration, or any reader of the Arrow C stream interface: `pyarrow.table(df)`,
/// `polars.DataFrame(df)`, DuckDB).
#[pyclass(module = "quiver", frozen)]
struct DataFrame {
    frame: datafusion::dataframe::DataFrame,
}

impl DataFrame {
    fn with(
        &self,
        f: impl FnOnce(
            datafusion::dataframe::DataFrame,
        ) -> datafusion::error::Result<datafusion::dataframe::DataFrame>,
    ) -> PyResult<Self> {
        Ok(Self {
            frame: f(self.frame.clone()).map_err(py_error)?,
        })
    }

    /// The result's stream, started.
    fn stream(&self, py: Python<'_>) -> PyResult<SendableRecordBatchStream> {
        let frame = self.frame.clone();
        wait(py, frame.execute_stream())?.map_err(py_error)
    }
}

#[pymethods]
impl DataFrame {
    /// The columns, as a `pyarrow.Schema`.
    #[getter]
    fn schema<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.frame.schema().as_arrow().to_pyarrow(py)
    }

    /// The column names.
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.frame
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// The rows that `predicate` (an SQL expression, `"label = 'hot_dog'"`) keeps.
    fn filter(&self, predicate: &str) -> PyResult<Self> {
        let expr = self.frame.parse_sql_expr(predicate).map_err(py_error)?;
        self.with(|f| f.filter(expr))
    }

    /// The columns `exprs` (SQL expressions, `"image_width(content) AS width"`).
    #[pyo3(signature = (*exprs))]
    fn select(&self, exprs: Vec<String>) -> PyResult<Self> {
        let exprs: Vec<&str> = exprs.iter().map(String::as_str).collect();
        self.with(|f| f.select_exprs(&exprs))
    }

    /// The first `n` rows.
    fn limit(&self, n: usize) -> PyResult<Self> {
        self.with(|f| f.limit(0, Some(n)))
    }

    /// Every row, as a list of `pyarrow.RecordBatch`.
    fn collect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let frame = self.frame.clone();
        let batches = wait(py, quiver_sql::collect(frame))?.map_err(py_error)?;
        let batches = batches
            .iter()
            .map(|b| b.to_pyarrow(py))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, batches)
    }

    /// Every row, as a `pyarrow.Table`.
    fn to_arrow<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let batches = self.collect(py)?;
        let schema = self.schema(py)?;
        py.import("pyarrow")?
            .getattr("Table")?
            .call_method1("from_batches", (batches, schema))
    }

    /// Every row, as a `pandas.DataFrame`.
    fn to_pandas<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.to_arrow(py)?.call_method0("to_pandas")
    }

    /// Every row, as a `polars.DataFrame`.
    fn to_polars<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let table = self.to_arrow(py)?;
        py.import("polars")?.call_method1("from_arrow", (table,))
    }

    /// How many rows there are.
    fn count(&self, py: Python<'_>) -> PyResult<usize> {
        let frame = self.frame.clone();
        wait(py, frame.count())?.map_err(py_error)
    }

    /// The rows as `pyarrow.RecordBatch`es, each as soon as the engine has it.
    fn __iter__(&self, py: Python<'_>) -> PyResult<Batches> {
        Ok(Batches {
            stream: Mutex::new(Some(self.stream(py)?)),
        })
    }

    /// The Arrow C stream interface: a capsule holding an `ArrowArrayStream` of the rows, read
    /// batch by batch as the engine produces them.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // The schema is the result's own; a reader asking for another casts it itself.
        let _ = requested_schema;
        let stream = self.stream(py)?;
        let reader = StreamReader {
            schema: stream.schema(),
            stream,
        };
        let ffi = FFI_ArrowArrayStream::new(Box::new(reader));
        PyCapsule::new_with_value(py, ffi, c"arrow_array_stream")
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let frame = self.frame.clone().limit(0, Some(10)).map_err(py_error)?;
        let batches = wait(py, frame.collect())?.map_err(py_error)?;
        let table = quiver_sql::display::format_batches(&batches, 10)
            .map_err(|e| py_error(datafusion::error::DataFusionError::from(e)))?;
        Ok(table.to_string())
    }
}

/// An iterator over a result's batches.
#[pyclass(module = "quiver")]
struct Batches {
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

#[pymethods]
impl Batches {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(mut stream) = self.stream.lock().expect("stream lock").take() else {
            return Ok(None);
        };
        let next = wait(py, async move {
            let next = stream.next().await;
            (next, stream)
        })?;
        match next {
            (Some(batch), stream) => {
                *self.stream.lock().expect("stream lock") = Some(stream);
                Ok(Some(batch.map_err(py_error)?.to_pyarrow(py)?))
            }
            (None, _) => Ok(None),
        }
    }
}

/// A result's stream as an Arrow `RecordBatchReader`, for the C stream interface: each batch
/// is waited for on the engine's runtime.
struct StreamReader {
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
}

impl Iterator for StreamReader {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = Python::attach(|py| wait(py, self.stream.next()));
        match next {
            Ok(next) => next.map(|r| r.map_err(|e| ArrowError::ExternalError(Box::new(e)))),
            Err(e) => Some(Err(ArrowError::ExternalError(Box::new(e)))),
        }
    }
}

impl RecordBatchReader for StreamReader {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// The module `quiver._quiver`.
#[pymodule]
fn _quiver(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Session>()?;
    m.add_class::<DataFrame>()?;
    m.add_class::<Batches>()?;
    let py = m.py();
    m.add("QuiverError", py.get_type::<QuiverError>())?;
    m.add("SqlError", py.get_type::<SqlError>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
