//! Measures the controller on the simulated cloud: AWS calls per steady-state pass, the wall
//! time of an hour of simulated operation, and the process's memory afterwards.
//!
//! `cargo bench --bench reconcile` runs the FiLot example and 200 services for an hour of
//! simulated time each; without `--bench` (as `cargo test` runs it) a small smoke version.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ecs_reconciler::cloud::Cloud;
use ecs_reconciler::manifest::{self, Manifest};
use ecs_reconciler::metrics::Metrics;
use ecs_reconciler::reconcile::{self, Controller, Settings, State, Trigger};
use ecs_reconciler::sim::{SimCloud, SimConfig};
use tokio::sync::{mpsc, oneshot};

const INTERVAL: Duration = Duration::from_secs(30);

struct Figures {
    services: usize,
    converged_after: Duration,
    calls_per_pass: f64,
    writes_at_steady_state: u64,
    wall: Duration,
}

fn main() {
    // Test runners list a harness-less target first; it has one test, the smoke run.
    if std::env::args().any(|a| a == "--list") {
        println!("smoke: test");
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let (services, hours) = if full { (200, 1.0) } else { (12, 0.1) };

    let filot =
        manifest::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/filot/filot.yaml"))
            .expect("the FiLot example is valid");
    report("FiLot example", &run(filot, hours));

    let dir = tempfile::tempdir().expect("temp dir");
    let many = many_services(dir.path(), services);
    report(&format!("{services} services"), &run(many, hours));
    println!("memory: {}", memory());
}

fn report(name: &str, f: &Figures) {
    println!(
        "{name}: {} services, converged after {:?} simulated, {:.1} AWS calls per steady-state pass, \
         {} writes at steady state, {:?} wall for the run",
        f.services, f.converged_after, f.calls_per_pass, f.writes_at_steady_state, f.wall
    );
}

/// `n` services by family over clusters of 50, with counts an autoscaler would not touch.
fn many_services(dir: &Path, n: usize) -> Manifest {
    let mut text =
        String::from("apiVersion: ecs-reconciler/v1\nregion: ap-southeast-2\nclusters:\n");
    for i in 0..n {
        if i % 50 == 0 {
            text.push_str(&format!("  cluster-{}:\n    services:\n", i / 50));
        }
        text.push_str(&format!(
            "      svc-{i}:\n        desiredCount: 2\n        taskDefinition: {{family: svc-{i}}}\n        \
             images: {{svc-{i}: registry.example/svc-{i}:v2}}\n"
        ));
    }
    let path = dir.join("many.yaml");
    std::fs::write(&path, text).expect("write manifest");
    manifest::load(&path).expect("generated manifest is valid")
}

fn run(manifest: Manifest, hours: f64) -> Figures {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    #[allow(clippy::disallowed_methods)] // the wall time of a run is the figure measured
    let started = std::time::Instant::now();
    let mut figures = runtime.block_on(simulate(manifest, hours));
    figures.wall = started.elapsed();
    figures
}

async fn simulate(manifest: Manifest, hours: f64) -> Figures {
    let services = manifest.services().count();
    let config = SimConfig {
        region: "ap-southeast-2".into(),
        ..SimConfig::default()
    };
    let sim = Arc::new(SimCloud::with_manifest(config, &manifest, true));
    let settings = Settings {
        interval: INTERVAL,
        concurrency: 8,
        ..Settings::default()
    };
    let ctl = Controller::new(
        sim.clone(),
        manifest,
        settings.clone(),
        Metrics::new().expect("metrics"),
    );

    let (tx, rx) = mpsc::channel(16);
    tx.send(Trigger::Resync).await.expect("send");
    let timer = tokio::spawn(reconcile::resync_timer(tx.clone(), INTERVAL));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let driver = tokio::spawn(reconcile::drive(ctl.clone(), rx, false, None, async move {
        let _ = stop_rx.await;
    }));

    let begin = tokio::time::Instant::now();
    let in_sync = |ctl: &Controller| {
        ctl.objects()
            .iter()
            .all(|o| ctl.record(o).state == State::InSync)
    };
    while !in_sync(&ctl) && begin.elapsed() < Duration::from_secs(3600) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let converged_after = begin.elapsed();

    // Steady state: the rest of the simulated time, counting calls.
    tokio::time::sleep(INTERVAL * 2).await;
    let (calls, writes) = (sim.calls().total(), sim.calls().writes());
    let steady = Duration::from_secs_f64(hours * 3600.0)
        .saturating_sub(begin.elapsed())
        .max(INTERVAL * 10);
    tokio::time::sleep(steady).await;
    let passes = steady.as_secs_f64() / INTERVAL.as_secs_f64();
    let calls_per_pass = (sim.calls().total() - calls) as f64 / passes;
    let writes_at_steady_state = sim.calls().writes() - writes;

    let _ = stop_tx.send(());
    timer.abort();
    let _ = driver.await;
    Figures {
        services,
        converged_after,
        calls_per_pass,
        writes_at_steady_state,
        wall: Duration::ZERO,
    }
}

/// Resident and peak resident memory of this process, from /proc.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    format!("RSS {}, peak RSS {}", field("VmRSS:"), field("VmHWM:"))
}
