//! Running statements: splitting, executing one at a time with a live progress line, printing.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use quiver_engine::progress::ProgressSnapshot;
use quiver_engine::{LogSink, Progress, QuiverError, Result, Session, Skipped};

use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use quiver_engine::{bail, err};
use quiver_sql::display::{format_batches, readable};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned text tables.
    Table,
    /// CSV with a header.
    Csv,
    /// One JSON object per row.
    Json,
}

/// Result printing settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// The format.
    pub(crate) format: Format,
    /// Rows shown per result in table format.
    pub(crate) max_rows: usize,
}

impl Output {
    /// Prints `batches` to stdout.
    pub(crate) fn print(&self, batches: &[RecordBatch]) -> std::result::Result<(), ArrowError> {
        let readable = batches
            .iter()
            .map(readable)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut out = std::io::stdout().lock();
        match self.format {
            Format::Table => writeln!(out, "{}", format_batches(batches, self.max_rows)?)?,
            Format::Csv => {
                let mut writer = datafusion::arrow::csv::Writer::new(&mut out);
                for batch in &readable {
                    writer.write(batch)?;
                }
            }
            Format::Json => {
                let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
                writer.write_batches(&readable.iter().collect::<Vec<_>>())?;
                writer.finish()?;
            }
        }
        Ok(())
    }
}

/// `quiver sql`: statements from the argument, a file, or an interactive shell.
pub(crate) async fn sql_command(
    session: &Session,
    statements: Option<String>,
    file: Option<PathBuf>,
    output: Output,
) -> Result<()> {
    match (statements, file) {
        (Some(sql), _) => run_all(session, &sql, output).await,
        (None, Some(path)) => {
            let sql = std::fs::read_to_string(&path).map_err(|e| {
                err!(
                    QuiverError::Config,
                    "cannot read SQL file '{}': {e}",
                    path.display()
                )
            })?;
            run_all(session, &sql, output).await
        }
        (None, None) => shell(session, output).await,
    }
}

/// Makes the future that cancels a statement, when the statement starts.
pub(crate) type CancelFn<'a> = dyn FnMut() -> BoxFuture<'static, ()> + Send + 'a;

/// Runs every statement of `sql` in order, stopping at the first error; Ctrl-C or SIGTERM
/// cancels the running statement.
pub(crate) async fn run_all(session: &Session, sql: &str, output: Output) -> Result<()> {
    let mut on_signal = || -> BoxFuture<'static, ()> {
        match Interrupt::new() {
            Ok(mut interrupt) => Box::pin(async move { interrupt.wait().await }),
            Err(_) => Box::pin(std::future::pending()),
        }
    };
    run_all_until(session, sql, output, &mut on_signal).await
}

/// Runs every statement of `sql` in order, stopping at the first error; a statement fails as
/// cancelled when the future `cancel` made for it resolves (a write it was making is aborted
/// first).
pub(crate) async fn run_all_until(
    session: &Session,
    sql: &str,
    output: Output,
    cancel: &mut CancelFn<'_>,
) -> Result<()> {
    let statements = quiver_sql::parse(sql)?;
    let count = statements.len();
    for (i, statement) in statements.into_iter().enumerate() {
        let text = statement.to_string();
        let started = Instant::now();
        let statement_id = session.begin_statement();
        let before = session.progress().snapshot();
        if session.log_sink().is_some() {
            session.log(&format!("> {}", short(&text)));
        }
        // Training draws its own progress (a bar, and a line per epoch).
        let ticker = (!matches!(statement, quiver_sql::Statement::CreateModel(_))).then(|| {
            Ticker::start(
                Arc::clone(session.progress()),
                before,
                session.log_sink().cloned(),
            )
        });
        let mut cancelled = cancel().shared();
        let result = async {
            let frame = tokio::select! {
                frame = quiver_sql::execute(session, statement) => frame?,
                () = &mut cancelled => {
                    return Err(QuiverError::Cancelled("the statement was cancelled".into()));
                }
            };
            let has_columns = !frame.schema().fields().is_empty();
            Ok((
                has_columns,
                quiver_sql::collect_until(frame, cancelled).await?,
            ))
        }
        .await;
        let mut work = match ticker {
            Some(ticker) => ticker.stop(),
            None => session.progress().snapshot().since(&before),
        };
        let (has_columns, batches) = result.map_err(|e: QuiverError| {
            if count > 1 {
                QuiverError::Statement {
                    index: i + 1,
                    count,
                    text: short(&text),
                    source: Box::new(e),
                }
            } else {
                e
            }
        })?;
        // DDL (CREATE, DROP, SET) has no result columns: only the summary line is shown.
        if has_columns {
            match session.log_sink() {
                Some(sink) => sink(
                    &format_batches(&batches, output.max_rows)
                        .map_err(datafusion::error::DataFusionError::from)?
                        .to_string(),
                ),
                None => output
                    .print(&batches)
                    .map_err(datafusion::error::DataFusionError::from)?,
            }
        }
        // Executors count the images they skip for the statement: all of them are reported.
        let skipped = quiver_sql::take_skipped_images(session, &statement_id).await;
        if let Ok((skipped, _)) = &skipped {
            work.images_skipped = skipped.count;
        }
        session.log(&format!(
            "{} ({:.2}s)",
            summary(&work),
            started.elapsed().as_secs_f64()
        ));
        match skipped {
            Ok((skipped, missing)) => report_skipped(session, &skipped, &missing),
            Err(e) => session.log(&format!("  the skipped images cannot be listed: {e}")),
        }
    }
    Ok(())
}

/// Lists the undecodable images a statement skipped, with their files and reasons, so that
/// they can be fixed or removed; and the executors whose skipped images are unknown.
fn report_skipped(session: &Session, skipped: &Skipped, missing: &[String]) {
    for image in &skipped.images {
        let file = image
            .file
            .as_deref()
            .unwrap_or("(bytes not read by read_images)");
        session.log(&format!("  skipped {file}: {}", image.reason));
    }
    let listed = skipped.images.len() as u64;
    if skipped.count > listed {
        session.log(&format!(
            "  ... and {} more (the first {listed} are listed)",
            skipped.count - listed
        ));
    }
    for executor in missing {
        session.log(&format!(
            "  executor {executor} did not answer: the images it skipped are not listed"
        ));
    }
}

/// Ctrl-C and SIGTERM from the time it is made.
struct Interrupt {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves at the next Ctrl-C or SIGTERM.
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Prints the part of a growing log that was not printed yet.
pub(crate) fn print_new(log: &[u8], printed: &mut usize) -> Result<()> {
    if log.len() > *printed {
        std::io::stdout()
            .write_all(&log[*printed..])
            .and_then(|()| std::io::stdout().flush())
            .map_err(|e| err!(QuiverError::Config, "cannot print the log: {e}"))?;
        *printed = log.len();
    }
    Ok(())
}

fn short(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 120 {
        format!("{}...", one_line.chars().take(117).collect::<String>())
    } else {
        one_line
    }
}

fn summary(w: &ProgressSnapshot) -> String {
    let mut parts = Vec::new();
    if w.files_listed > 0 {
        parts.push(format!("listed {} files", w.files_listed));
    }
    if w.files_read > 0 {
        parts.push(format!(
            "read {} files ({})",
            w.files_read,
            HumanBytes(w.bytes_read)
        ));
    }
    if w.rows_written > 0 || w.files_written > 0 {
        parts.push(format!(
            "wrote {} rows ({}) in {} files",
            w.rows_written,
            HumanBytes(w.bytes_written),
            w.files_written
        ));
    }
    if w.images_skipped > 0 {
        parts.push(format!("skipped {} undecodable images", w.images_skipped));
    }
    if parts.is_empty() {
        "done".into()
    } else {
        parts.join(", ")
    }
}

/// Shows the progress of a running statement: a spinner on a terminal, a line every few
/// seconds in a log (the session's log sink, or stderr when it is not a terminal).
struct Ticker {
    task: tokio::task::JoinHandle<()>,
    progress: Arc<Progress>,
    before: ProgressSnapshot,
    bar: ProgressBar,
}

impl Ticker {
    fn start(progress: Arc<Progress>, before: ProgressSnapshot, log: Option<LogSink>) -> Self {
        let terminal = log.is_none() && std::io::stderr().is_terminal();
        let bar = if terminal {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .expect("valid template"),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        let task = {
            let progress = Arc::clone(&progress);
            let bar = bar.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut last_log = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let work = progress.snapshot().since(&before);
                    if terminal {
                        bar.set_message(summary(&work));
                        bar.tick();
                    } else if last_log.elapsed() >= Duration::from_secs(5) {
                        let line =
                            format!("[{:>4}s] {}", started.elapsed().as_secs(), summary(&work));
                        match &log {
                            Some(sink) => sink(&line),
                            None => eprintln!("{line}"),
                        }
                        last_log = Instant::now();
                    }
                }
            })
        };
        Self {
            task,
            progress,
            before,
            bar,
        }
    }

    fn stop(self) -> ProgressSnapshot {
        self.task.abort();
        self.bar.finish_and_clear();
        self.progress.snapshot().since(&self.before)
    }
}

/// The interactive shell: statements end with `;`, `\q` quits.
async fn shell(session: &Session, output: Output) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| err!(QuiverError::Config, "cannot start the shell: {e}"))?;
    eprintln!("Quiver SQL shell. End statements with ';', \\q to quit.");
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "quiver> "
        } else {
            "   ...> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() && (trimmed == "\\q" || trimmed == "exit" || trimmed == "quit")
                {
                    return Ok(());
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if trimmed.ends_with(';') {
                    let _ = editor.add_history_entry(buffer.trim());
                    if let Err(e) = run_all(session, &buffer, output).await {
                        eprintln!("error: {e}");
                    }
                    buffer.clear();
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => buffer.clear(),
            Err(rustyline::error::ReadlineError::Eof) => return Ok(()),
            Err(e) => bail!(QuiverError::Config, "shell input failed: {e}"),
        }
    }
}
