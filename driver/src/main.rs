//! `quiver`: run SQL on Quiver's embedded engine or a cluster (`quiver sql [--cluster]`), from a
//! file or a shell; look into experiments (`quiver experiment`); serve models (`quiver serve`);
//! run batch jobs (`quiver job`); run a cluster's driver (`quiver driver --listen`, which also
//! schedules batch jobs with `--jobs`) and executors (`quiver executor`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quiver_engine::SessionOptions;

mod cluster_cli;
mod console_cli;
mod experiment;
mod jobs;
mod options_page;
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
    /// The cluster file (TOML with [driver], [executor], [client] and [tls] sections); flags and
    /// environment variables override it.
    #[arg(long, global = true, env = "QUIVER_CONFIG")]
    config: Option<PathBuf>,
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
        /// Run the queries on the cluster of the driver at this address (`host:port`).
        #[arg(long, env = "QUIVER_CLUSTER")]
        cluster: Option<String>,
        #[command(flatten)]
        tls: cluster_cli::TlsArgs,
    },
    /// Serve registered models over TensorFlow Serving's gRPC and REST APIs.
    Serve(Box<serve_cli::ServeArgs>),
    /// The web console over the store (--store): models with their training curves,
    /// evaluation and lineage, until Ctrl-C or SIGTERM.
    Console(console_cli::ConsoleArgs),
    /// Batch jobs: run a job file now, check it, list jobs and runs, follow a run's log, cancel.
    Job {
        #[command(subcommand)]
        command: jobs::JobCommand,
        /// How tables are printed.
        #[arg(long, global = true, value_enum, default_value_t = run::Format::Table)]
        format: run::Format,
    },
    /// The driver: serves a cluster (--listen) and runs the job files at --jobs on their
    /// schedules, until Ctrl-C or SIGTERM.
    Driver {
        #[command(flatten)]
        cluster: cluster_cli::DriverArgs,
        /// A job file, or a folder (local or in a store) of `*.toml` job files.
        #[arg(long)]
        jobs: Option<String>,
        /// How often schedules are checked, in milliseconds.
        #[arg(long, default_value_t = 250)]
        tick_ms: u64,
        /// How often the job files are read again (new, changed and removed files), in seconds.
        #[arg(long, default_value_t = 10.0)]
        reload_seconds: f64,
    },
    /// An executor: joins a driver's cluster and runs its tasks until Ctrl-C or SIGTERM.
    Executor(cluster_cli::ExecutorArgs),
    /// Experiments in the store: list them, show their trials, follow a trial's log.
    Experiment {
        #[command(subcommand)]
        command: experiment::ExperimentCommand,
        /// How tables are printed.
        #[arg(long, global = true, value_enum, default_value_t = run::Format::Table)]
        format: run::Format,
    },
    /// Every option of CREATE MODEL, CREATE EXPERIMENT and job-file steps: name, accepted
    /// values, default and meaning (the page docs/options.md).
    Options,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = quiver_engine::fault::check_environment() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let file = match cluster_cli::ClusterFile::load(cli.config.as_deref()) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = SessionOptions {
        default_store: cli.store.clone(),
        target_partitions: cli.partitions,
        ..Default::default()
    };
    let result = match cli.command {
        Command::Sql {
            statements,
            file: sql_file,
            max_rows,
            format,
            cluster,
            tls,
        } => {
            let session = match (cluster.as_deref().or(file.client_cluster()), tls.tls(&file)) {
                (_, Err(e)) => Err(e),
                (Some(driver), Ok(tls)) => {
                    quiver_sql::cluster::connect(options, driver, tls.as_ref())
                }
                (None, Ok(_)) => quiver_sql::session(options),
            };
            match session {
                Ok(session) => {
                    let output = run::Output { format, max_rows };
                    run::sql_command(&session, statements, sql_file, output).await
                }
                Err(e) => Err(e),
            }
        }
        Command::Serve(args) => serve_cli::serve_command(options, *args).await,
        Command::Console(args) => console_cli::console_command(options, args).await,
        Command::Job { command, format } => {
            let output = run::Output {
                format,
                max_rows: usize::MAX,
            };
            jobs::job_command(options, command, output).await
        }
        Command::Driver {
            cluster,
            jobs,
            tick_ms,
            reload_seconds,
        } => {
            quiver_engine::logging::init();
            let jobs = jobs.map(|jobs| {
                let options = options.clone();
                async move {
                    jobs::scheduler::drive(
                        options,
                        &jobs,
                        std::time::Duration::from_millis(tick_ms.max(10)),
                        std::time::Duration::from_secs_f64(reload_seconds.max(0.1)),
                    )
                    .await
                }
            });
            match (cluster.options(&file, &options), jobs) {
                (Err(e), _) => Err(e),
                (Ok(None), None) => Err(quiver_engine::QuiverError::Config(
                    "quiver driver needs --listen (a cluster), --jobs (batch jobs), or both".into(),
                )),
                (Ok(None), Some(jobs)) => jobs.await,
                (Ok(Some(driver)), None) => quiver_driver::cluster::run_driver(driver).await,
                (Ok(Some(driver)), Some(jobs)) => {
                    let (served, ran) =
                        tokio::join!(quiver_driver::cluster::run_driver(driver), jobs);
                    served.and(ran)
                }
            }
        }
        Command::Executor(args) => {
            quiver_engine::logging::init();
            match args.options(&file, &options) {
                Ok(executor) => quiver_executor::run_executor(executor).await,
                Err(e) => Err(e),
            }
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
        Command::Options => {
            print!("{}", options_page::page());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
