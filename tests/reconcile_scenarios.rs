//! Scenario tests of the reconcile loop on the simulated cloud, under paused tokio time: a
//! ten-minute rollout takes milliseconds and every run is the same.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ecs_reconciler::cloud::Cloud;
use ecs_reconciler::diff::ResourceKind;
use ecs_reconciler::manifest::{self, Manifest};
use ecs_reconciler::metrics::Metrics;
use ecs_reconciler::reconcile::{self, Controller, ObjectRef, Settings, State, Trigger};
use ecs_reconciler::sim::{Faults, SimCloud, SimConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const BACKEND: &str = "filot-backend-cluster/filot-backend-service";
const GPU: &str = "filot-ocr-gpu-cluster/filot-ocr-gpu-service";
const GPU_ASG: &str = "filot-ocr-gpu-asg";
const REPO: &str = "070017891928.dkr.ecr.ap-southeast-2.amazonaws.com";
const INTERVAL: Duration = Duration::from_secs(30);

struct Desired<'a> {
    backend_image: &'a str,
    backend_count: u32,
    gpu_count: u32,
    asg_desired: u32,
}

const GOOD: Desired<'static> = Desired {
    backend_image: "v1.4.2",
    backend_count: 3,
    gpu_count: 1,
    asg_desired: 1,
};

/// The FiLot manifest with the given tag and counts, in a directory of its own.
fn write_manifest(dir: &Path, d: &Desired<'_>) -> PathBuf {
    let tds = dir.join("task-definitions");
    std::fs::create_dir_all(&tds).expect("create dir");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/filot/task-definitions");
    for name in ["filot-backend-task.json", "filot-ocr-gpu-worker.json"] {
        std::fs::copy(examples.join(name), tds.join(name)).expect("copy task definition");
    }
    let text = format!(
        "apiVersion: ecs-reconciler/v1
region: ap-southeast-2
clusters:
  filot-backend-cluster:
    services:
      filot-backend-service:
        desiredCount: {}
        taskDefinition: {{file: task-definitions/filot-backend-task.json}}
        images: {{filot-backend: {REPO}/filot-backend:{}}}
        targetGroups: [filot-backend-tg]
        rollout: {{timeout: 10m, rollback: true}}
  filot-ocr-gpu-cluster:
    autoScalingGroups:
      {GPU_ASG}: {{minSize: 1, maxSize: 4, desiredCapacity: {}}}
    services:
      filot-ocr-gpu-service:
        desiredCount: {}
        taskDefinition: {{file: task-definitions/filot-ocr-gpu-worker.json}}
        images: {{ocr-worker: {REPO}/filot-ocr-gpu-worker:v2.0.1}}
        rollout: {{timeout: 15m}}
",
        d.backend_count, d.backend_image, d.asg_desired, d.gpu_count
    );
    let path = dir.join("filot.yaml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn load(path: &Path) -> Manifest {
    manifest::load(path).expect("test manifest is valid")
}

fn sim_for(manifest: &Manifest, drift: bool, faults: Faults) -> Arc<SimCloud> {
    let config = SimConfig {
        region: "ap-southeast-2".into(),
        faults,
        ..SimConfig::default()
    };
    Arc::new(SimCloud::with_manifest(config, manifest, drift))
}

/// A cloud in line with the good manifest, with `faults`, and the manifest `next` written
/// beside it: where every scenario that changes something starts.
fn stable_cloud_and_manifest(
    dir: &Path,
    faults: Faults,
    next: &Desired<'_>,
) -> (Arc<SimCloud>, Manifest) {
    let good = load(&write_manifest(dir, &GOOD));
    let sim = sim_for(&good, false, faults);
    (sim, load(&write_manifest(dir, next)))
}

/// A running controller on the simulated cloud.
struct Harness {
    ctl: Arc<Controller>,
    triggers: mpsc::Sender<Trigger>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    timer: JoinHandle<()>,
}

impl Harness {
    async fn start(sim: Arc<SimCloud>, manifest: Manifest, settings: Settings) -> Self {
        let metrics = Metrics::new().expect("metrics registry");
        let ctl = Controller::new(sim, manifest, settings.clone(), metrics);
        let (tx, rx) = mpsc::channel(16);
        tx.send(Trigger::Resync).await.expect("send");
        let timer = tokio::spawn(reconcile::resync_timer(tx.clone(), settings.interval));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(reconcile::drive(ctl.clone(), rx, false, None, async move {
            let _ = stop_rx.await;
        }));
        Harness {
            ctl,
            triggers: tx,
            stop: Some(stop_tx),
            task,
            timer,
        }
    }

    /// Stops as SIGTERM would: no new work, in-flight reconciles finish.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.timer.abort();
        tokio::time::timeout(Duration::from_secs(120), &mut self.task)
            .await
            .expect("in-flight reconciles did not finish within two minutes of a stop")
            .expect("controller task panicked");
    }

    fn state(&self, kind: ResourceKind, name: &str) -> State {
        self.ctl
            .record(&ObjectRef {
                kind,
                name: name.into(),
            })
            .state
    }

    fn service(&self, name: &str) -> State {
        self.state(ResourceKind::Service, name)
    }

    /// Waits (in simulated time) until `done` holds, or fails saying what did not happen.
    async fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&Harness) -> bool) {
        let waited = tokio::time::timeout(limit, async {
            while !done(self) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
        .await;
        if waited.is_err() {
            panic!(
                "{what} did not happen within {limit:?}; status: {:#}",
                self.ctl.status()
            );
        }
    }

    fn all_in_sync(&self) -> bool {
        self.ctl.objects().iter().all(|o| {
            let r = self.ctl.record(o);
            r.state == State::InSync && r.reconciled
        })
    }
}

async fn image_of(sim: &SimCloud, cluster: &str, service: &str) -> String {
    let svc = sim.service(cluster, service).expect("service exists");
    let td = sim
        .describe_task_definition(&svc.task_definition)
        .await
        .expect("task definition");
    td.spec.container_definitions[0].image.clone()
}

/// The image the backend service runs.
async fn backend_image(sim: &SimCloud) -> String {
    image_of(sim, "filot-backend-cluster", "filot-backend-service").await
}

/// The backend image reference with this tag.
fn backend_tag(tag: &str) -> String {
    format!("{REPO}/filot-backend:{tag}")
}

fn settings() -> Settings {
    Settings {
        interval: INTERVAL,
        ..Settings::default()
    }
}

#[tokio::test(start_paused = true)]
async fn the_controller_converges_a_drifted_cloud() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = load(&write_manifest(dir.path(), &GOOD));
    let sim = sim_for(&manifest, true, Faults::default());
    let before = ecs_reconciler::observe::Observer::new(sim.clone())
        .observe(&manifest)
        .await;
    assert!(
        before.diff(&manifest).iter().any(|d| !d.in_sync()),
        "the seeded cloud starts drifted"
    );

    let h = Harness::start(sim.clone(), manifest, settings()).await;
    h.wait_for(
        Duration::from_secs(30 * 60),
        "convergence",
        Harness::all_in_sync,
    )
    .await;

    assert_eq!(backend_image(&sim).await, backend_tag("v1.4.2"));
    let backend = sim
        .service("filot-backend-cluster", "filot-backend-service")
        .expect("backend");
    assert_eq!(
        (
            backend.desired_count,
            backend.running_count,
            backend.deployments.len()
        ),
        (3, 3, 1)
    );
    assert_eq!(
        sim.auto_scaling_group(GPU_ASG)
            .expect("asg")
            .desired_capacity,
        1
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_reports_drift_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = load(&write_manifest(dir.path(), &GOOD));
    let sim = sim_for(&manifest, true, Faults::default());
    let h = Harness::start(
        sim.clone(),
        manifest,
        Settings {
            dry_run: true,
            ..settings()
        },
    )
    .await;
    h.wait_for(Duration::from_secs(120), "drift reported", |h| {
        h.service(BACKEND) == State::Drifted
    })
    .await;
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(
        sim.calls().writes(),
        0,
        "calls: {:?}",
        sim.calls().by_operation()
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn drift_injected_while_running_is_corrected_within_one_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = load(&write_manifest(dir.path(), &GOOD));
    let sim = sim_for(&manifest, false, Faults::default());
    let h = Harness::start(sim.clone(), manifest, settings()).await;
    h.wait_for(Duration::from_secs(120), "first pass", Harness::all_in_sync)
        .await;

    sim.set_service_desired_count("filot-backend-cluster", "filot-backend-service", 7)
        .expect("drift");
    // One interval (with its jitter) to notice; the count write follows at once.
    tokio::time::sleep(INTERVAL.mul_f64(1.2)).await;
    assert_eq!(
        sim.service("filot-backend-cluster", "filot-backend-service")
            .expect("svc")
            .desired_count,
        3
    );
    h.wait_for(
        Duration::from_secs(600),
        "settling back",
        Harness::all_in_sync,
    )
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_crashing_image_is_rolled_back_quarantined_and_retried_only_when_the_manifest_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, next) = stable_cloud_and_manifest(
        dir.path(),
        Faults {
            crash_image: Some("broken".into()),
            ..Faults::default()
        },
        &Desired {
            backend_image: "v1.5.0-broken",
            ..GOOD
        },
    );
    let h = Harness::start(sim.clone(), next, settings()).await;

    h.wait_for(Duration::from_secs(30 * 60), "rollback", |h| {
        h.service(BACKEND) == State::RolledBack
    })
    .await;
    assert_eq!(backend_image(&sim).await, backend_tag("v1.4.2"));
    assert!(h.ctl.metrics().render().contains("ecs_reconciler_rollbacks_total{resource=\"filot-backend-cluster/filot-backend-service\"} 1"));

    // Quarantined: many intervals pass without another write, while the drift stays visible.
    let writes = sim.calls().writes();
    tokio::time::sleep(INTERVAL * 20).await;
    assert_eq!(
        sim.calls().writes(),
        writes,
        "a quarantined state was applied again"
    );
    let record = h.ctl.record(&ObjectRef {
        kind: ResourceKind::Service,
        name: BACKEND.into(),
    });
    assert!(
        record.drifted_fields.iter().any(|f| f.ends_with("image")),
        "{record:?}"
    );
    assert!(h
        .ctl
        .metrics()
        .render()
        .contains("state=\"rolled_back\"} 1"));

    // A new manifest lifts the quarantine.
    let fixed = write_manifest(
        dir.path(),
        &Desired {
            backend_image: "v1.5.1",
            ..GOOD
        },
    );
    assert!(h.ctl.reload_manifest(&fixed));
    h.triggers
        .send(Trigger::ManifestChanged)
        .await
        .expect("trigger");
    h.wait_for(
        Duration::from_secs(30 * 60),
        "the fixed image rolled out",
        Harness::all_in_sync,
    )
    .await;
    assert_eq!(backend_image(&sim).await, backend_tag("v1.5.1"));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_health_check_is_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, next) = stable_cloud_and_manifest(
        dir.path(),
        Faults {
            unhealthy_image: Some("unhealthy".into()),
            ..Faults::default()
        },
        &Desired {
            backend_image: "v1.5.0-unhealthy",
            ..GOOD
        },
    );
    let h = Harness::start(sim.clone(), next, settings()).await;

    h.wait_for(Duration::from_secs(40 * 60), "rollback", |h| {
        h.service(BACKEND) == State::RolledBack
    })
    .await;
    assert_eq!(backend_image(&sim).await, backend_tag("v1.4.2"));
    let healthy = sim
        .target_health("filot-backend-tg")
        .iter()
        .filter(|t| t.state == "healthy")
        .count();
    assert_eq!(healthy, 3);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn gpu_scale_up_waits_for_capacity_and_scale_in_drains_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, next) = stable_cloud_and_manifest(
        dir.path(),
        Faults::default(),
        &Desired {
            gpu_count: 2,
            asg_desired: 2,
            ..GOOD
        },
    );
    let h = Harness::start(sim.clone(), next, settings()).await;

    // Sample the world every simulated second: the service may ask for 2 GPU tasks only once
    // two instances serve the cluster.
    let early = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (sim, early) = (sim.clone(), early.clone());
        tokio::spawn(async move {
            loop {
                let svc = sim
                    .service("filot-ocr-gpu-cluster", "filot-ocr-gpu-service")
                    .expect("svc");
                let active = sim
                    .container_instances("filot-ocr-gpu-cluster")
                    .iter()
                    .filter(|c| c.status == "ACTIVE")
                    .count();
                if svc.desired_count == 2 && active < 2 {
                    early.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    h.wait_for(
        Duration::from_secs(30 * 60),
        "GPU scale-up",
        Harness::all_in_sync,
    )
    .await;
    sampler.abort();
    assert_eq!(
        early.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the service grew before its capacity was registered"
    );
    let svc = sim
        .service("filot-ocr-gpu-cluster", "filot-ocr-gpu-service")
        .expect("svc");
    assert_eq!((svc.desired_count, svc.running_count), (2, 2));
    let group = sim.auto_scaling_group(GPU_ASG).expect("asg");
    assert_eq!(group.desired_capacity, 2);

    // Scale in: the service comes down first, then a drained instance is terminated.
    let down = write_manifest(dir.path(), &GOOD);
    assert!(h.ctl.reload_manifest(&down));
    h.triggers
        .send(Trigger::ManifestChanged)
        .await
        .expect("trigger");
    h.wait_for(
        Duration::from_secs(30 * 60),
        "GPU scale-in",
        Harness::all_in_sync,
    )
    .await;
    assert_eq!(
        sim.auto_scaling_group(GPU_ASG)
            .expect("asg")
            .desired_capacity,
        1
    );
    assert_eq!(
        sim.tasks_killed_by_termination(),
        0,
        "a running task was killed by an instance termination"
    );
    let svc = sim
        .service("filot-ocr-gpu-cluster", "filot-ocr-gpu-service")
        .expect("svc");
    assert_eq!((svc.desired_count, svc.running_count), (1, 1));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn gpu_scale_up_against_a_capacity_shortage_waits_and_does_not_roll_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, next) = stable_cloud_and_manifest(
        dir.path(),
        Faults {
            max_launchable_instances: Some(1),
            ..Faults::default()
        },
        &Desired {
            gpu_count: 2,
            asg_desired: 2,
            ..GOOD
        },
    );
    let h = Harness::start(sim.clone(), next, settings()).await;

    tokio::time::sleep(Duration::from_secs(40 * 60)).await;
    assert_eq!(h.service(GPU), State::Progressing, "{:#}", h.ctl.status());
    let detail = h
        .ctl
        .record(&ObjectRef {
            kind: ResourceKind::Service,
            name: GPU.into(),
        })
        .detail
        .unwrap_or_default();
    assert!(detail.contains("capacity"), "{detail}");
    assert!(
        !h.ctl
            .metrics()
            .render()
            .contains("ecs_reconciler_rollbacks_total{"),
        "rolled back for missing capacity"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn throttling_and_server_errors_slow_the_loop_but_it_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = load(&write_manifest(dir.path(), &GOOD));
    let faults = Faults {
        throttle_rate: 0.2,
        error_rate: 0.1,
        ..Faults::default()
    };
    let sim = sim_for(&manifest, true, faults);
    let h = Harness::start(sim.clone(), manifest, settings()).await;
    h.wait_for(
        Duration::from_secs(60 * 60),
        "convergence despite faults",
        Harness::all_in_sync,
    )
    .await;
    let failed: u64 = sim
        .calls()
        .snapshot()
        .iter()
        .filter(|((_, o), _)| *o != "ok")
        .map(|(_, n)| n)
        .sum();
    assert!(failed > 0, "the faults never fired");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_controller_resumes_the_rollout_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = load(&write_manifest(dir.path(), &GOOD));
    let sim = sim_for(&good, false, Faults::default());
    let next = load(&write_manifest(
        dir.path(),
        &Desired {
            backend_image: "v1.4.3",
            ..GOOD
        },
    ));

    let first = Harness::start(sim.clone(), next.clone(), settings()).await;
    first
        .wait_for(Duration::from_secs(120), "rollout start", |h| {
            h.service(BACKEND) == State::Progressing
        })
        .await;
    first.stop().await;
    let tags = sim
        .service("filot-backend-cluster", "filot-backend-service")
        .expect("svc")
        .tags;
    assert!(
        tags.get("ecs-reconciler/rollout").is_some_and(|t| t != "-"),
        "{tags:?}"
    );

    let second = Harness::start(sim.clone(), next, settings()).await;
    second
        .wait_for(
            Duration::from_secs(30 * 60),
            "resumed rollout",
            Harness::all_in_sync,
        )
        .await;
    let ops = sim.calls().by_operation();
    assert_eq!(ops.get("ecs:RegisterTaskDefinition"), Some(&1), "{ops:?}");
    let backend_updates = ops.get("ecs:UpdateService").copied().unwrap_or(0);
    assert_eq!(
        backend_updates, 1,
        "the restarted controller applied the change again: {ops:?}"
    );
    second.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_controller_killed_mid_rollout_rolls_back_to_the_recorded_last_good_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = load(&write_manifest(dir.path(), &GOOD));
    let faults = Faults {
        crash_image: Some("broken".into()),
        ..Faults::default()
    };
    let sim = sim_for(&good, false, faults);
    let last_good = sim
        .service("filot-backend-cluster", "filot-backend-service")
        .expect("svc")
        .task_definition;
    let bad = load(&write_manifest(
        dir.path(),
        &Desired {
            backend_image: "v1.5.0-broken",
            ..GOOD
        },
    ));

    let first = Harness::start(sim.clone(), bad.clone(), settings()).await;
    first
        .wait_for(Duration::from_secs(120), "rollout start", |h| {
            h.service(BACKEND) == State::Progressing
        })
        .await;
    first.stop().await;

    let second = Harness::start(sim.clone(), bad, settings()).await;
    second
        .wait_for(Duration::from_secs(30 * 60), "rollback", |h| {
            h.service(BACKEND) == State::RolledBack
        })
        .await;
    let svc = sim
        .service("filot-backend-cluster", "filot-backend-service")
        .expect("svc");
    assert_eq!(svc.task_definition, last_good);
    second.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_invalid_manifest_mid_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_manifest(dir.path(), &GOOD);
    let manifest = load(&path);
    let sim = sim_for(&manifest, false, Faults::default());
    let h = Harness::start(sim.clone(), manifest.clone(), settings()).await;
    h.wait_for(Duration::from_secs(120), "first pass", Harness::all_in_sync)
        .await;

    std::fs::write(&path, "apiVersion: ecs-reconciler/v1\nclusters:\n  c:\n    services:\n      s: {desiredCount: -4}\n")
        .expect("write");
    let writes = sim.calls().writes();
    assert!(
        !h.ctl.reload_manifest(&path),
        "an invalid manifest was put in force"
    );
    assert_eq!(*h.ctl.manifest(), manifest);
    assert!(h
        .ctl
        .metrics()
        .render()
        .contains("ecs_reconciler_manifest_valid 0"));
    tokio::time::sleep(INTERVAL * 5).await;
    assert_eq!(sim.calls().writes(), writes);
    assert!(h.all_in_sync());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_steady_state_pass_reads_in_batches_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = load(&write_manifest(dir.path(), &GOOD));
    let sim = sim_for(&manifest, false, Faults::default());
    let h = Harness::start(sim.clone(), manifest, settings()).await;
    h.wait_for(Duration::from_secs(120), "first pass", Harness::all_in_sync)
        .await;
    tokio::time::sleep(INTERVAL * 2).await;

    let before = sim.calls().total();
    let writes = sim.calls().writes();
    tokio::time::sleep(INTERVAL * 10).await;
    let per_pass = (sim.calls().total() - before) as f64 / 10.0;
    assert_eq!(sim.calls().writes(), writes);
    // Two clusters' DescribeServices and one DescribeAutoScalingGroups; nothing per service.
    assert!(
        per_pass <= 4.0,
        "{per_pass} calls per pass: {:?}",
        sim.calls().by_operation()
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_manifest_fixed_during_a_failing_rollout_is_rolled_out_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, next) = stable_cloud_and_manifest(
        dir.path(),
        Faults {
            crash_image: Some("broken".into()),
            ..Faults::default()
        },
        &Desired {
            backend_image: "v1.5.0-broken",
            ..GOOD
        },
    );
    let h = Harness::start(sim.clone(), next, settings()).await;
    h.wait_for(Duration::from_secs(120), "rollout start", |h| {
        h.service(BACKEND) == State::Progressing
    })
    .await;

    let fixed = write_manifest(
        dir.path(),
        &Desired {
            backend_image: "v1.5.1",
            ..GOOD
        },
    );
    assert!(h.ctl.reload_manifest(&fixed));
    h.triggers
        .send(Trigger::ManifestChanged)
        .await
        .expect("trigger");
    h.wait_for(
        Duration::from_secs(30 * 60),
        "the fix rolled out",
        Harness::all_in_sync,
    )
    .await;

    assert_eq!(backend_image(&sim).await, backend_tag("v1.5.1"));
    assert!(
        !h.ctl
            .metrics()
            .render()
            .contains("ecs_reconciler_rollbacks_total{"),
        "rolled back a superseded rollout"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn apply_exits_0_once_converged_and_3_after_a_rollback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = load(&write_manifest(dir.path(), &GOOD));
    let faults = Faults {
        crash_image: Some("broken".into()),
        ..Faults::default()
    };
    let sim = sim_for(&good, true, faults);

    let converged = tokio::time::timeout(
        Duration::from_secs(3600),
        reconcile::apply(sim.clone(), good.clone(), settings()),
    )
    .await
    .expect("apply did not finish within an hour: a resource never reached an end state");
    assert_eq!(converged, reconcile::EXIT_CONVERGED);

    let bad = load(&write_manifest(
        dir.path(),
        &Desired {
            backend_image: "v1.5.0-broken",
            ..GOOD
        },
    ));
    let rolled_back = tokio::time::timeout(
        Duration::from_secs(3600),
        reconcile::apply(sim.clone(), bad, settings()),
    )
    .await
    .expect("apply did not finish within an hour: the rollback never settled");
    assert_eq!(rolled_back, reconcile::EXIT_ROLLED_BACK);
    assert_eq!(backend_image(&sim).await, backend_tag("v1.4.2"));
}

#[tokio::test(start_paused = true)]
async fn access_denied_on_one_operation_keeps_the_daemon_running_and_the_other_resources_converging(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = load(&write_manifest(dir.path(), &GOOD));
    let denied = Faults {
        denied_operations: ["ecs:UpdateService".to_string()].into_iter().collect(),
        ..Faults::default()
    };
    let sim = sim_for(&manifest, true, denied);
    let h = Harness::start(sim.clone(), manifest, settings()).await;

    h.wait_for(
        Duration::from_secs(600),
        "the denied services reported and the group converged",
        |h| {
            h.service(BACKEND) == State::Error
                && h.service(GPU) == State::Error
                && h.state(ResourceKind::AutoScalingGroup, GPU_ASG) == State::InSync
        },
    )
    .await;
    let record = h.ctl.record(&ObjectRef {
        kind: ResourceKind::Service,
        name: BACKEND.into(),
    });
    assert!(
        record
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("access_denied")),
        "{record:?}"
    );

    // Once the policy is fixed, the next retry applies the change.
    sim.set_faults(Faults::default());
    h.wait_for(
        Duration::from_secs(30 * 60),
        "convergence after the fix",
        Harness::all_in_sync,
    )
    .await;
    assert_eq!(backend_image(&sim).await, backend_tag("v1.4.2"));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_recorded_rollout_that_never_reached_ecs_is_applied_afresh_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = load(&write_manifest(dir.path(), &GOOD));
    let denied = Faults {
        denied_operations: ["ecs:UpdateService".to_string()].into_iter().collect(),
        ..Faults::default()
    };
    let sim = sim_for(&good, false, denied);
    let next = load(&write_manifest(
        dir.path(),
        &Desired {
            backend_image: "v1.4.3",
            ..GOOD
        },
    ));

    let first = Harness::start(sim.clone(), next.clone(), settings()).await;
    first
        .wait_for(Duration::from_secs(120), "the denied update", |h| {
            h.service(BACKEND) == State::Error
        })
        .await;
    first.stop().await;
    let tags = sim
        .service("filot-backend-cluster", "filot-backend-service")
        .expect("svc")
        .tags;
    assert!(
        tags.get("ecs-reconciler/rollout").is_some_and(|t| t != "-"),
        "the intent was recorded: {tags:?}"
    );

    sim.set_faults(Faults::default());
    let second = Harness::start(sim.clone(), next, settings()).await;
    second
        .wait_for(
            Duration::from_secs(30 * 60),
            "the change applied afresh",
            Harness::all_in_sync,
        )
        .await;
    assert_eq!(backend_image(&sim).await, backend_tag("v1.4.3"));
    assert!(!second
        .ctl
        .metrics()
        .render()
        .contains("ecs_reconciler_rollbacks_total{"));
    second.stop().await;
}
