//! `quiver`: run SQL on Quiver's embedded engine (`quiver sql`), from a file or a shell; look
//! into experiments (`quiver experiment`); serve models (`quiver serve`); run batch jobs
//! (`quiver job`) and schedule them (`quiver driver --jobs`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quiver_engine::SessionOptions;

mod experiment;
mod jobs;
mod run;
mod serve_cli;

/// Quiver: a dataflow engine for deep-learning pipelines.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about)]
struct Cli {
    /// Where Quiver keeps models, experiments and logs (a URL or a local path).
    #[arg(
        long,
        global = true,
        env = "QUIVER_STORE",
        default_value = "./quiver-data"
    )]
    store: String,
    /// Parallel partitions per query (default: the number of cores).
    #[arg(long, global = true, env = "QUIVER_PARTITIONS")]
    partitions: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run SQL statements (separated by `;`), from the argument, a file, or an interactive shell.
    Sql {
        /// The statements to run; without them (and without -f) an interactive shell starts.
        statements: Option<String>,
        /// Run the statements in this file.
        #[arg(short, long, conflicts_with = "statements")]
        file: Option<PathBuf>,
        /// Rows shown per result in table format (the rest are counted).
        #[arg(long, default_value_t = 40)]
        max_rows: usize,
        /// How results are printed.
        #[arg(long, value_enum, default_value_t = run::Format::Table)]
        format: run::Format,
    },
    /// Serve registered models over TensorFlow Serving's gRPC and REST APIs.
    Serve(Box<serve_cli::ServeArgs>),
    /// Batch jobs: run a job file now, check it, list jobs and runs, follow a run's log, cancel.
    Job {
        #[command(subcommand)]
        command: jobs::JobCommand,
        /// How tables are printed.
        #[arg(long, global = true, value_enum, default_value_t = run::Format::Table)]
        format: run::Format,
    },
    /// The driver: runs the job files at --jobs on their schedules until Ctrl-C or SIGTERM.
    Driver {
        /// A job file, or a folder (local or in a store) of `*.toml` job files.
        #[arg(long)]
        jobs: String,
        /// How often schedules are checked, in milliseconds.
        #[arg(long, default_value_t = 250)]
        tick_ms: u64,
        /// How often the job files are read again (new, changed and removed files), in seconds.
        #[arg(long, default_value_t = 10.0)]
        reload_seconds: f64,
    },
    /// Experiments in the store: list them, show their trials, follow a trial's log.
    Experiment {
        #[command(subcommand)]
        command: experiment::ExperimentCommand,
        /// How tables are printed.
        #[arg(long, global = true, value_enum, default_value_t = run::Format::Table)]
        format: run::Format,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = SessionOptions {
        default_store: cli.store.clone(),
        target_partitions: cli.partitions,
        ..Default::default()
    };
    let result = match cli.command {
        Command::Sql {
            statements,
            file,
            max_rows,
            format,
        } => run::sql_command(options, statements, file, run::Output { format, max_rows }).await,
        Command::Serve(args) => serve_cli::serve_command(options, *args).await,
        Command::Job { command, format } => {
            let output = run::Output {
                format,
                max_rows: usize::MAX,
            };
            jobs::job_command(options, command, output).await
        }
        Command::Driver {
            jobs,
            tick_ms,
            reload_seconds,
        } => {
            jobs::scheduler::drive(
                options,
                &jobs,
                std::time::Duration::from_millis(tick_ms.max(10)),
                std::time::Duration::from_secs_f64(reload_seconds.max(0.1)),
            )
            .await
        }
        Command::Experiment { command, format } => match quiver_sql::session(options) {
            Ok(session) => {
                let output = run::Output {
                    format,
                    max_rows: usize::MAX,
                };
                experiment::experiment_command(&session, command, output).await
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
