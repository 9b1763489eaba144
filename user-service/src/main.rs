//! `user-service [serve]` runs the gRPC server; `user-service migrate` applies the migrations
//! and exits (the Kubernetes migration Job). Exit codes: 0 ok, 1 runtime failure, 2 bad config.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use user_service::{Application, Config, ConfigError, telemetry};

#[derive(Debug, clap::Parser)]
#[command(
    name = "user-service",
    version,
    about = "The meshgate user service (gRPC)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
    /// Validate the settings (flags, environment, the files a start would use) and exit: 0 with
    /// one line, or 2 naming the bad setting. Connects to nothing.
    #[arg(long, global = true)]
    test: bool,
}

#[derive(Debug, Clone, Copy, clap::Subcommand)]
enum Command {
    /// Serve gRPC and /metrics (the default).
    Serve,
    /// Consume the USERS event stream (audit trail, cache warming); needs NATS_URL. Serves
    /// /metrics and /livez on METRICS_ADDR.
    Worker,
    /// Apply the database migrations and exit.
    Migrate {
        /// Also run the contract migrations on a database adopted from the replaced service
        /// (only once its old server is retired: deploy/CUTOVER.md).
        #[arg(long)]
        contract: bool,
    },
}

const CONFIG_ERROR: u8 = 2;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return report_cli_error(&error),
    };
    if let Err(error) = cli.config.validate() {
        eprintln!("error: {error}");
        return ExitCode::from(CONFIG_ERROR);
    }
    if cli.test {
        return validate_only(&cli);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<ConfigError>() => {
            eprintln!("error: {error}");
            ExitCode::from(CONFIG_ERROR)
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "user-service failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    // Declared first so it drops last: the span exporter's last words still reach stdout.
    let (log_writer, _log_writer_guard) = telemetry::stdout(config.log_queue_lines);
    let _telemetry = telemetry::init(&config.telemetry_settings(), log_writer)
        .context("setting up logging and tracing")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate { contract } => {
            let metrics = std::sync::Arc::new(user_service::metrics::Metrics::new());
            let database = user_service::startup::open_database(&config, metrics)?;
            let applied = if contract {
                database.contract().await
            } else {
                database.migrate().await
            };
            applied.with_context(|| format!("applying the {} migrations", database.backend()))?;
            tracing::info!(backend = database.backend(), "migrations applied");
            database.close().await;
            Ok(())
        }
        Command::Worker => user_service::startup::run_worker(config, shutdown_signal()).await,
        Command::Serve => {
            let application = Application::build(config).await?;
            tracing::info!(
                grpc_addr = %application.grpc_addr(),
                metrics_addr = %application.metrics_addr(),
                "user-service listening"
            );
            application.run_until_stopped(shutdown_signal()).await
        }
    }
}

/// `--test`: what a start would check before touching the network, then one line.
fn validate_only(cli: &Cli) -> ExitCode {
    if let Err(error) = cli.config.check_files() {
        eprintln!("error: {error}");
        return ExitCode::from(CONFIG_ERROR);
    }
    if matches!(cli.command, Some(Command::Worker)) && cli.config.nats_url.is_none() {
        eprintln!("error: invalid NATS_URL (--nats-url): the worker needs a broker");
        return ExitCode::from(CONFIG_ERROR);
    }
    let mode = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => "serve",
        Command::Worker => "worker",
        Command::Migrate { contract: false } => "migrate",
        Command::Migrate { contract: true } => "migrate --contract",
    };
    let database = if cli.config.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let cache = if cli.config.redis_url.is_some() {
        "redis"
    } else {
        "in-process"
    };
    println!("config ok: {mode}, database {database}, cache {cache}");
    ExitCode::SUCCESS
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Help and version print as usual; a bad flag or env value becomes one line naming the
/// setting (flag and environment variable) and exit code 2.
fn report_cli_error(error: &clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let rendered = error.render().to_string();
    let first_line = rendered
        .lines()
        .next()
        .unwrap_or("error: invalid arguments");
    let env = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => Cli::command()
            .get_arguments()
            .find(|candidate| {
                candidate
                    .get_long()
                    .is_some_and(|long| arg.starts_with(&format!("--{long}")))
            })
            .and_then(|candidate| candidate.get_env())
            .map(|env| env.to_string_lossy().into_owned()),
        _ => None,
    };
    match env {
        Some(env) => eprintln!("{first_line} [env: {env}]"),
        None => eprintln!("{first_line}"),
    }
    ExitCode::from(CONFIG_ERROR)
}
