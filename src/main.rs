//! The `ecs-reconciler` command line: parses flags into ready-to-use settings, picks the cloud
//! (AWS or the built-in simulator) and hands over to the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use ecs_reconciler::cloud::aws::AwsCloud;
use ecs_reconciler::cloud::Cloud;
use ecs_reconciler::manifest::{self, Manifest};
use ecs_reconciler::observe::Observer;
use ecs_reconciler::plan::{Plan, EXIT_ERROR};
use ecs_reconciler::reconcile::{self, Settings};
use ecs_reconciler::sim::{FromManifest, Scenario, SimCloud};

#[derive(Parser)]
#[command(
    name = "ecs-reconciler",
    version,
    about = "Keeps Amazon ECS services and their capacity in line with a manifest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text for a terminal, json for CloudWatch.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Print the manifest's JSON Schema.
    Schema,
    /// Check a manifest's syntax, types and meaning. Exit 0 valid, 1 invalid.
    Validate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Show what differs between the manifest and live state. Exit 0 in sync, 2 changes, 1 error.
    Plan {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        #[command(flatten)]
        cloud: CloudArgs,
    },
    /// Apply the manifest once and wait until every rollout is stable, rolled back or failed.
    /// Exit 0 converged, 3 rolled back, 1 error.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        cloud: CloudArgs,
        #[command(flatten)]
        loop_args: LoopArgs,
    },
    /// Run the controller: reconcile continuously, serve metrics and status.
    Run {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        cloud: CloudArgs,
        #[command(flatten)]
        loop_args: LoopArgs,
        /// Periodic resync interval (jittered).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Address for /metrics, /healthz, /readyz and /status.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Args)]
struct CloudArgs {
    /// Which cloud to talk to: real AWS (credential chain, AWS_ENDPOINT_URL for emulators) or
    /// the built-in simulator, which touches no network.
    #[arg(long, value_enum, default_value_t = CloudKind::Aws)]
    cloud: CloudKind,
    /// Scenario for the simulator: starting state, timings and faults.
    #[arg(long)]
    sim_scenario: Option<PathBuf>,
    /// Run the simulator's clock this many times faster than real time.
    #[arg(long)]
    sim_speed: Option<f64>,
}

#[derive(Args)]
struct LoopArgs {
    /// Observe, diff and report only: no write calls.
    #[arg(long)]
    dry_run: bool,
    /// Resources reconciled at the same time.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

impl LoopArgs {
    fn settings(&self, interval: Duration) -> Settings {
        Settings {
            dry_run: self.dry_run,
            concurrency: self.concurrency.max(1),
            interval,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum CloudKind {
    Aws,
    Sim,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR as u8);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR as u8)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Schema => {
            print!("{}", manifest::schema_json());
            Ok(0)
        }
        Command::Validate { file } => match manifest::load(&file) {
            Ok(m) => {
                let services = m.services().count();
                let groups = m.auto_scaling_groups().count();
                println!(
                    "{}: valid ({services} services, {groups} auto scaling groups)",
                    file.display()
                );
                Ok(0)
            }
            Err(invalid) => {
                eprintln!("{invalid}");
                Ok(1)
            }
        },
        Command::Plan {
            file,
            output,
            cloud,
        } => {
            let manifest = load_manifest(&file)?;
            let cloud = make_cloud(&cloud, &manifest).await?;
            let observer = Observer::new(cloud.clone());
            let snapshot = observer.observe(&manifest).await;
            let calls = cloud.calls().by_operation();
            tracing::debug!(?calls, "aws calls for this plan");
            let plan = Plan::new(&manifest, &snapshot, calls);
            match output {
                Output::Json => println!("{}", plan.to_json()),
                Output::Text => print!("{}", plan.to_text(std::io::stdout().is_terminal())),
            }
            Ok(plan.exit_code())
        }
        Command::Apply {
            file,
            cloud,
            loop_args,
        } => {
            let manifest = load_manifest(&file)?;
            let cloud = make_cloud(&cloud, &manifest).await?;
            let settings = loop_args.settings(Settings::default().interval);
            Ok(reconcile::apply(cloud, manifest, settings).await)
        }
        Command::Run {
            file,
            cloud,
            loop_args,
            interval,
            listen,
        } => {
            let manifest = load_manifest(&file)?;
            let cloud = make_cloud(&cloud, &manifest).await?;
            let settings = loop_args.settings(interval);
            reconcile::run_daemon(cloud, file, manifest, settings, listen).await?;
            Ok(0)
        }
    }
}

fn load_manifest(file: &Path) -> anyhow::Result<Manifest> {
    manifest::load(file).map_err(anyhow::Error::new)
}

async fn make_cloud(args: &CloudArgs, manifest: &Manifest) -> anyhow::Result<Arc<dyn Cloud>> {
    match args.cloud {
        CloudKind::Aws => Ok(Arc::new(AwsCloud::from_env(manifest.region.clone()).await)),
        CloudKind::Sim => {
            let mut scenario = match &args.sim_scenario {
                Some(path) => Scenario::load(path)
                    .with_context(|| format!("failed to load scenario {}", path.display()))?,
                // Without a scenario the demo starts drifted, so there is something to correct.
                None => Scenario {
                    from_manifest: Some(FromManifest { drift: true }),
                    ..Scenario::default()
                },
            };
            if let Some(speed) = args.sim_speed {
                scenario.speed = Some(speed);
            }
            let sim = SimCloud::from_scenario(&scenario, Some(manifest))
                .context("failed to build the simulated cloud")?;
            Ok(Arc::new(sim))
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ECS_RECONCILER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
