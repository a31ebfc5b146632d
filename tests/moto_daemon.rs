//! The built `ecs-reconciler` binary end to end over HTTP, against moto run by
//! `tests/moto/launcher.py`, which moves ECS deployments along as ECS does (plain moto leaves
//! every deployment IN_PROGRESS forever) and fails deployments of images containing "broken"
//! with a circuit-breaker rollback.
//!
//! Each test owns its launcher and its daemon; both are killed when the test ends, pass or fail.

// These tests wait on real child processes (moto, the daemon), in wall-clock time.
#![allow(clippy::disallowed_methods)]

#[path = "support/moto.rs"]
mod moto;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use ecs_reconciler::cloud::aws::AwsCloud;
use ecs_reconciler::cloud::Cloud;
use ecs_reconciler::model::{Service, ServiceUpdate};
use moto::{Moto, BACKEND_CLUSTER, BACKEND_FAMILY, BACKEND_SERVICE, REGION};
use serde_json::{json, Value};

const REPO: &str = "123456789012.dkr.ecr.ap-southeast-2.amazonaws.com/filot-backend";
/// Deployments of an image containing this fail in the launcher.
const BROKEN: &str = "broken";
const TAG_LAST_GOOD_TD: &str = "ecs-reconciler/last-good-task-definition";
const TAG_LAST_GOOD_COUNT: &str = "ecs-reconciler/last-good-desired-count";
const TAG_QUARANTINE: &str = "ecs-reconciler/quarantine";
/// The service as the metrics and `/status` name it.
const RESOURCE: &str = "filot-backend-cluster/filot-backend-service";
const DESIRED: i32 = 3;

/// `apply` polls a rollout every 10s; a rollback needs two polls, plus the binary's start.
const APPLY_TIMEOUT: Duration = Duration::from_secs(90);
const PLAN_TIMEOUT: Duration = Duration::from_secs(30);
/// One adapter call against the launcher.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const DAEMON_INTERVAL: &str = "2s";

fn image(tag: &str) -> String {
    format!("{REPO}:{tag}")
}

/// The manifest: the backend service only, Fargate.
fn manifest(image: &str) -> String {
    format!(
        "apiVersion: ecs-reconciler/v1
region: {REGION}
clusters:
  {BACKEND_CLUSTER}:
    services:
      {BACKEND_SERVICE}:
        desiredCount: {DESIRED}
        taskDefinition:
          family: {BACKEND_FAMILY}
        images:
          api: {image}
        # No targetGroups: moto registers no targets in a target group, so a service behind one
        # could never prove its targets healthy here.
        rollout:
          timeout: 2m
"
    )
}

/// A launcher seeded with the backend service on `image("2.3.0")`, settled, and a manifest that
/// asks for exactly that.
struct World {
    moto: Moto,
    runtime: tokio::runtime::Runtime,
    cloud: AwsCloud,
    dir: tempfile::TempDir,
}

impl World {
    fn start() -> World {
        let moto = Moto::start_with_launcher(BROKEN);
        moto.seed(&json!({
            "clusters": [BACKEND_CLUSTER],
            "task_definitions": [moto::backend_task_definition(&image("2.3.0"))],
            "services": [{
                "cluster": BACKEND_CLUSTER, "name": BACKEND_SERVICE,
                "task_definition": BACKEND_FAMILY, "desired_count": DESIRED,
                "launch_type": "FARGATE"
            }]
        }));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the adapter");
        let cloud = runtime.block_on(moto.cloud());
        let dir = tempfile::tempdir().expect("a temp dir for the manifest");
        let world = World {
            moto,
            runtime,
            cloud,
            dir,
        };
        world.write_manifest(&manifest(&image("2.3.0")));

        // moto creates the service with a deployment the launcher completes a moment later; a
        // controller that finds it unsettled records no last known good state.
        world.wait_for(
            "the seeded service to settle",
            Duration::from_secs(30),
            || {
                let s = world.service();
                (s.deployments.len() == 1 && s.running_count == DESIRED).then_some(())
            },
        );
        world
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("manifest.yaml")
    }

    /// Replaces the manifest the way git and editors do: write a temp file, rename it over.
    fn write_manifest(&self, text: &str) {
        let temp = self.dir.path().join(".manifest.yaml.tmp");
        std::fs::write(&temp, text).expect("the temp manifest is written");
        std::fs::rename(&temp, self.manifest_path()).expect("the manifest is replaced");
    }

    /// Runs a call of the adapter against the launcher.
    fn call<T>(&self, what: &str, fut: impl std::future::Future<Output = T>) -> T {
        self.runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await })
            .unwrap_or_else(|_| {
                panic!(
                    "{what} took longer than {CALL_TIMEOUT:?}: the launcher has probably stopped \
                     answering (a request stuck holding its lock?). Its log:\n{}",
                    self.moto.log_tail()
                )
            })
    }

    fn service(&self) -> Service {
        let names = [BACKEND_SERVICE.to_string()];
        let mut lookup = self
            .call(
                "DescribeServices",
                self.cloud.describe_services(BACKEND_CLUSTER, &names),
            )
            .expect("the backend service can be described");
        assert_eq!(lookup.found.len(), 1, "{lookup:?}");
        lookup.found.remove(0)
    }

    /// The image of the `api` container of a task definition revision.
    fn image_of(&self, task_definition: &str) -> String {
        let td = self
            .call(
                "DescribeTaskDefinition",
                self.cloud.describe_task_definition(task_definition),
            )
            .expect("the revision can be described");
        td.spec
            .container_definitions
            .iter()
            .find(|c| c.name == "api")
            .map(|c| c.image.clone())
            .expect("the revision has an api container")
    }

    /// Polls `check` until it returns something; panics after `limit` with the launcher's log.
    fn wait_for<T>(&self, what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {what}: the launcher probably stopped advancing \
                 deployments. Its log:\n{}",
                self.moto.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs one `ecs-reconciler` command to its end, killing it after `limit`.
    fn cli(&self, args: &[&str], limit: Duration) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ecs-reconciler"));
        command
            .args(args)
            .arg("-f")
            .arg(self.manifest_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.moto.configure(&mut command);
        let mut child = command.spawn().expect("the ecs-reconciler binary runs");
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait_exit(&mut child, limit).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ecs-reconciler {args:?} did not finish within {limit:?}: a rollout probably \
                 never became stable. Launcher log:\n{}",
                self.moto.log_tail()
            )
        });
        Output {
            status,
            stdout: stdout.join().unwrap_or_default().into_bytes(),
            stderr: stderr.join().unwrap_or_default().into_bytes(),
        }
    }

    /// Starts `ecs-reconciler run` and waits until `/readyz` answers 200.
    fn daemon(&self) -> Daemon {
        let log = tempfile::NamedTempFile::new().expect("a temp file for the daemon's log");
        let path = log.path().to_path_buf();
        self.daemon_logging_to(path, Some(log))
    }

    /// Starts `ecs-reconciler run` with its output going to `log_path`.
    fn daemon_logging_to(
        &self,
        log_path: PathBuf,
        log_file: Option<tempfile::NamedTempFile>,
    ) -> Daemon {
        let log = std::fs::File::create(&log_path).expect("the daemon's log file is created");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_ecs-reconciler"));
        command
            .arg("run")
            .arg("-f")
            .arg(self.manifest_path())
            .args(["--interval", DAEMON_INTERVAL, "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .expect("the daemon's log file handle clones"),
            )
            .stderr(log);
        self.moto.configure(&mut command);
        let child = command.spawn().expect("the ecs-reconciler binary runs");
        let mut daemon = Daemon {
            child,
            log: log_path,
            _log_file: log_file,
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("the daemon exited with {status}:\n{}", daemon.log());
            }
            if daemon.get("/readyz").is_some_and(|(code, _)| code == 200) {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz did not answer 200 within 30s: the first reconcile pass probably did not \
                 finish (or --listen could not bind). Daemon log:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// An `ecs-reconciler run` process; killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
    /// Removes a temporary log file when the daemon is dropped.
    _log_file: Option<tempfile::NamedTempFile>,
    addr: SocketAddr,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Status and body of a GET, `None` when the daemon does not answer.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        // HTTP/1.0: the body comes whole, not chunked, and the connection closes after it.
        let request = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let code = head.split(' ').nth(1)?.parse().ok()?;
        Some((code, body.to_string()))
    }

    fn metrics(&self) -> String {
        match self.get("/metrics") {
            Some((200, body)) => body,
            other => panic!("/metrics answered {other:?}. Daemon log:\n{}", self.log()),
        }
    }

    fn status(&self) -> Value {
        match self.get("/status") {
            Some((200, body)) => serde_json::from_str(&body).expect("/status is JSON"),
            other => panic!("/status answered {other:?}. Daemon log:\n{}", self.log()),
        }
    }

    /// Polls the metrics until `check` accepts them.
    fn wait_for_metrics(&self, what: &str, limit: Duration, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.metrics();
            if check(&text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {what}: the daemon probably did not reconcile (watch its \
                 log). Metrics:\n{text}\nDaemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "kill -TERM failed: {sent}");
        wait_exit(&mut self.child, limit).unwrap_or_else(|| {
            panic!(
                "the daemon did not exit within {limit:?} of SIGTERM: draining in-flight \
                 reconciles probably hangs. Daemon log:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("failed to wait for a child process: {e}"),
        }
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut out);
        }
        out
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The value of the one sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let all = labels.iter().all(|(k, v)| {
                let wanted = format!("{k}=\"{v}\"");
                label_text.split(',').any(|pair| pair == wanted)
            });
            all.then(|| value.trim().parse().ok()).flatten()
        })
}

fn drift(text: &str, field: &str) -> Option<f64> {
    sample(
        text,
        "ecs_reconciler_drift",
        &[
            ("kind", "service"),
            ("resource", RESOURCE),
            ("field", field),
        ],
    )
}

fn state(text: &str, state: &str) -> Option<f64> {
    sample(
        text,
        "ecs_reconciler_resource_state",
        &[
            ("kind", "service"),
            ("resource", RESOURCE),
            ("state", state),
        ],
    )
}

fn show(output: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn revision(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

#[test]
fn apply_rolls_out_a_new_image_and_records_it_as_last_good() {
    let world = World::start();
    world.write_manifest(&manifest(&image("2.4.0")));

    let out = world.cli(&["apply"], APPLY_TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "apply converges:\n{}",
        show(&out)
    );

    let service = world.service();
    assert_eq!(
        revision(&service.task_definition),
        format!("{BACKEND_FAMILY}:2"),
        "a new revision was registered and deployed"
    );
    assert_eq!(world.image_of(&service.task_definition), image("2.4.0"));
    assert_eq!(service.deployments.len(), 1, "{:?}", service.deployments);
    assert_eq!(service.running_count, DESIRED);
    assert_eq!(
        service.tags.get(TAG_LAST_GOOD_TD),
        Some(&service.task_definition),
        "the stable revision is recorded as last good: {:?}",
        service.tags
    );
    assert_eq!(
        service.tags.get(TAG_LAST_GOOD_COUNT).map(String::as_str),
        Some("3")
    );
}

#[test]
fn daemon_corrects_a_count_changed_behind_its_back_and_stops_on_sigterm() {
    let world = World::start();
    let mut daemon = world.daemon();
    daemon.wait_for_metrics(
        "the service to be reported in sync",
        Duration::from_secs(30),
        |m| state(m, "in_sync") == Some(1.0),
    );

    // Someone scales the service by hand.
    let update = ServiceUpdate {
        desired_count: Some(5),
        ..ServiceUpdate::default()
    };
    world
        .call(
            "UpdateService",
            world
                .cloud
                .update_service(BACKEND_CLUSTER, BACKEND_SERVICE, &update),
        )
        .expect("the count can be changed behind the daemon's back");
    assert_eq!(world.service().desired_count, 5);

    // A resync every 2s notices and writes the count back; its rollout takes a few seconds.
    world.wait_for(
        "the daemon to put desiredCount back to 3",
        Duration::from_secs(20),
        || (world.service().desired_count == DESIRED).then_some(()),
    );
    daemon.wait_for_metrics(
        "the desiredCount drift to return to 0 and the service to be in sync",
        Duration::from_secs(30),
        |m| drift(m, "desiredCount") == Some(0.0) && state(m, "in_sync") == Some(1.0),
    );

    let metrics = daemon.metrics();
    let changes = sample(
        &metrics,
        "ecs_reconciler_changes_total",
        &[("kind", "service"), ("action", "update_service")],
    );
    assert!(
        changes.is_some_and(|c| c >= 1.0),
        "the daemon, not someone else, wrote the count back: {changes:?}\n{metrics}"
    );
    let describes = sample(
        &metrics,
        "ecs_reconciler_aws_requests_total",
        &[
            ("service", "ecs"),
            ("operation", "DescribeServices"),
            ("outcome", "ok"),
        ],
    );
    assert!(describes.is_some_and(|c| c >= 1.0), "{metrics}");
    assert_eq!(
        sample(&metrics, "ecs_reconciler_manifest_valid", &[]),
        Some(1.0),
        "{metrics}"
    );

    // /status is a copy of the records the daemon refreshes every second, so it may lag.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = daemon.status();
        let resources = status["resources"]
            .as_array()
            .expect("/status lists resources");
        let backend = resources
            .iter()
            .find(|r| r["resource"] == RESOURCE)
            .unwrap_or_else(|| panic!("/status lists the backend service: {status}"));
        assert_eq!(backend["kind"], "service", "{status}");
        if backend["state"] == "in_sync" {
            assert_eq!(backend["driftedFields"], json!([]), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/status still does not say in_sync 10s after the metrics did: the status document \
             is probably no longer refreshed. {status}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let exit = daemon.terminate(Duration::from_secs(20));
    assert!(
        exit.success(),
        "SIGTERM stops the daemon cleanly, got {exit}:\n{}",
        daemon.log()
    );
}

#[test]
fn a_broken_image_is_rolled_back_and_its_drift_stays_visible() {
    let world = World::start();
    let good = world.service().task_definition;
    world.write_manifest(&manifest(&image(&format!("2.4.0-{BROKEN}"))));

    let out = world.cli(&["apply"], APPLY_TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(3),
        "apply reports a rollback:\n{}",
        show(&out)
    );

    let service = world.service();
    assert_eq!(
        service.task_definition, good,
        "the service runs the last good revision again"
    );
    assert_eq!(world.image_of(&service.task_definition), image("2.3.0"));
    assert_eq!(service.tags.get(TAG_LAST_GOOD_TD), Some(&good));
    let quarantine = service.tags.get(TAG_QUARANTINE);
    assert!(
        quarantine.is_some_and(|q| q != "-"),
        "the failed manifest state is quarantined: {:?}",
        service.tags
    );

    // Quarantine stops the change from being applied again, not from being seen.
    let out = world.cli(&["plan", "--output", "json"], PLAN_TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(2),
        "plan shows changes pending:\n{}",
        show(&out)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan --output json is JSON");
    let changes = plan["resources"][0]["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("the service has changes: {plan}"));
    let image_change = changes
        .iter()
        .find(|c| {
            c["field"]
                .as_str()
                .is_some_and(|f| f.ends_with("[api].image"))
        })
        .unwrap_or_else(|| panic!("the image drift is shown: {plan}"));
    assert_eq!(image_change["observed"], image("2.3.0"), "{plan}");
    assert_eq!(
        image_change["desired"],
        image(&format!("2.4.0-{BROKEN}")),
        "{plan}"
    );
}

#[test]
fn daemon_follows_manifest_edits_and_ignores_an_invalid_one() {
    let world = World::start();
    let daemon = world.daemon();
    daemon.wait_for_metrics(
        "the service to be reported in sync",
        Duration::from_secs(30),
        |m| state(m, "in_sync") == Some(1.0),
    );

    world.write_manifest(&manifest(&image("2.5.0")));
    let rolled_out = world.wait_for(
        "the daemon to roll out the image from the edited manifest",
        Duration::from_secs(30),
        || {
            let service = world.service();
            let image_now = world.image_of(&service.task_definition);
            (image_now == image("2.5.0")).then_some(service.task_definition)
        },
    );
    daemon.wait_for_metrics(
        "the new revision to be proven stable",
        Duration::from_secs(30),
        |m| state(m, "in_sync") == Some(1.0) && drift(m, "taskDefinition") != Some(1.0),
    );

    // A new image with a count that is not a number: none of it may be applied.
    let invalid = manifest(&image("2.6.0"))
        .replace(&format!("desiredCount: {DESIRED}"), "desiredCount: three");
    world.write_manifest(&invalid);
    daemon.wait_for_metrics(
        "ecs_reconciler_manifest_valid to drop to 0",
        Duration::from_secs(15),
        |m| sample(m, "ecs_reconciler_manifest_valid", &[]) == Some(0.0),
    );
    assert!(
        daemon.log().contains("manifest is invalid"),
        "the daemon logs the invalid manifest:\n{}",
        daemon.log()
    );

    // Nothing should happen, so the only way to see it is to give it time: three resyncs.
    std::thread::sleep(Duration::from_secs(6));
    let service = world.service();
    assert_eq!(
        service.task_definition, rolled_out,
        "nothing was rolled out"
    );
    assert_eq!(service.desired_count, DESIRED);
    let metrics = daemon.metrics();
    assert_eq!(
        sample(&metrics, "ecs_reconciler_manifest_valid", &[]),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(state(&metrics, "in_sync"), Some(1.0), "{metrics}");
}

#[test]
fn an_invalid_manifest_is_reported_once_even_with_the_log_beside_it() {
    let world = World::start();
    let daemon = world.daemon_logging_to(world.dir.path().join("daemon.log"), None);
    daemon.wait_for_metrics(
        "the service to be reported in sync",
        Duration::from_secs(30),
        |m| state(m, "in_sync") == Some(1.0),
    );

    let invalid = manifest(&image("2.6.0"))
        .replace(&format!("desiredCount: {DESIRED}"), "desiredCount: three");
    world.write_manifest(&invalid);
    daemon.wait_for_metrics(
        "ecs_reconciler_manifest_valid to drop to 0",
        Duration::from_secs(15),
        |m| sample(m, "ecs_reconciler_manifest_valid", &[]) == Some(0.0),
    );

    // Logging the error writes the log, which is a change in the watched directory, which
    // reloads the manifest and logs the error again: give that loop a few rounds.
    std::thread::sleep(Duration::from_secs(5));
    let log = daemon.log();
    let reports = log.matches("manifest is invalid").count();
    assert!(
        reports <= 2,
        "one edit, {reports} reports of the same invalid manifest:\n{log}"
    );
}
