//! The controller: a scheduler that merges triggers (periodic resync, manifest changes, SIGHUP)
//! into per-resource reconciles, runs at most N at once and never one resource twice at once,
//! and the `apply` and `run` entry points built on it.
//!
//! Each reconcile ([`service::reconcile`], [`capacity::reconcile`]) observes one resource,
//! diffs it, writes only on real drift, and returns an [`Action`]: when to look again.

mod capacity;
pub mod rollout;
mod service;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument};

use crate::cloud::{Cloud, CloudError, ErrorKind};
use crate::diff::{ResourceDiff, ResourceKind};
use crate::http::{Health, HttpState};
use crate::manifest::{self, Manifest};
use crate::metrics::Metrics;
use crate::observe::{Observer, Snapshot};

/// Exit codes of `apply`.
pub const EXIT_CONVERGED: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_ROLLED_BACK: i32 = 3;

/// How often a rollout in progress is looked at.
const ROLLOUT_POLL: Duration = Duration::from_secs(10);
/// A snapshot from a resync serves the reconciles it triggers for this long; after that a
/// reconcile reads its resource afresh.
const SNAPSHOT_FRESH: Duration = Duration::from_secs(5);
/// Triggers for the same resource closer together than this run once.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// `apply` gives up on a resource after this many failed reconciles in a row.
const APPLY_MAX_ERRORS: u32 = 5;

#[derive(Debug, Clone)]
pub struct Settings {
    pub dry_run: bool,
    pub concurrency: usize,
    pub interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dry_run: false,
            concurrency: 4,
            interval: Duration::from_secs(30),
        }
    }
}

/// A resource the controller manages: `cluster/service` or an Auto Scaling Group name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    pub kind: ResourceKind,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look again after this long: a rollout or a scale-in is in motion.
    Requeue(Duration),
    /// Nothing in motion: the next trigger (resync, manifest change, SIGHUP) looks again.
    AwaitChange,
}

/// The state a resource is in, as `/status` and `ecs_reconciler_resource_state` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    InSync,
    Drifted,
    Progressing,
    RolledBack,
    Quarantined,
    Error,
    Missing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::InSync => "in_sync",
            State::Drifted => "drifted",
            State::Progressing => "progressing",
            State::RolledBack => "rolled_back",
            State::Quarantined => "quarantined",
            State::Error => "error",
            State::Missing => "missing",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("failed to read live state: {0}")]
    Observe(#[source] CloudError),
    #[error("failed to apply a change: {0}")]
    Apply(#[source] CloudError),
}

impl ReconcileError {
    fn kind(&self) -> ErrorKind {
        match self {
            ReconcileError::Observe(e) | ReconcileError::Apply(e) => e.kind,
        }
    }
}

/// A rollout this controller started and watches until it is stable.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub task_definition: String,
    pub desired_count: i32,
    /// The manifest state (fingerprint) that asked for it.
    pub fingerprint: String,
    pub rollback: bool,
    #[serde(skip)]
    pub started: Instant,
    #[serde(skip)]
    pub deadline: Instant,
}

/// What the controller remembers of one resource between reconciles.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub state: State,
    pub drifted_fields: Vec<String>,
    pub detail: Option<String>,
    pub last_applied: Option<serde_json::Value>,
    pub last_error: Option<String>,
    /// The manifest fingerprint that failed and is not applied again until it changes.
    pub quarantine: Option<String>,
    pub rollout: Option<Rollout>,
    /// Container instances (ARN, EC2 id) this controller set DRAINING for a scale-in.
    pub draining: Vec<(String, String)>,
    #[serde(skip)]
    pub errors_in_row: u32,
    /// The kind of the last failed reconcile's error, while errors continue.
    #[serde(skip)]
    pub error_kind: Option<ErrorKind>,
    #[serde(skip)]
    pub reconciled: bool,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            state: State::Drifted,
            drifted_fields: Vec::new(),
            detail: None,
            last_applied: None,
            last_error: None,
            quarantine: None,
            rollout: None,
            draining: Vec::new(),
            errors_in_row: 0,
            error_kind: None,
            reconciled: false,
        }
    }
}

/// Shared context of every reconcile.
pub struct Controller {
    observer: Observer,
    settings: Settings,
    manifest: RwLock<Arc<Manifest>>,
    records: Mutex<BTreeMap<ObjectRef, Record>>,
    snapshot: Mutex<Option<(Instant, Arc<Snapshot>)>>,
    /// Target group name -> ARN; target groups are looked up once.
    target_groups: Mutex<HashMap<String, String>>,
    /// While throttled, the whole controller waits before each reconcile.
    throttled_until: Mutex<Option<Instant>>,
    /// The last invalid manifest's errors, so the same problem is logged once.
    last_invalid: Mutex<Option<String>>,
    metrics: Metrics,
}

impl Controller {
    pub fn new(
        cloud: Arc<dyn Cloud>,
        manifest: Manifest,
        settings: Settings,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            observer: Observer::new(cloud),
            settings,
            manifest: RwLock::new(Arc::new(manifest)),
            records: Mutex::default(),
            snapshot: Mutex::default(),
            target_groups: Mutex::default(),
            throttled_until: Mutex::default(),
            last_invalid: Mutex::default(),
            metrics,
        })
    }

    pub fn manifest(&self) -> Arc<Manifest> {
        self.manifest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn cloud(&self) -> &Arc<dyn Cloud> {
        self.observer.cloud()
    }

    /// Every resource the current manifest names.
    pub fn objects(&self) -> Vec<ObjectRef> {
        let manifest = self.manifest();
        let groups = manifest
            .auto_scaling_groups()
            .map(|(_, name, _)| ObjectRef {
                kind: ResourceKind::AutoScalingGroup,
                name: name.to_string(),
            });
        let services = manifest.services().map(|(c, s, _)| ObjectRef {
            kind: ResourceKind::Service,
            name: crate::observe::service_key(c, s),
        });
        groups.chain(services).collect()
    }

    /// Replaces the manifest; resources it no longer names are forgotten.
    pub fn set_manifest(&self, manifest: Manifest) {
        *self.manifest.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(manifest);
        let keep = self.objects();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        for record in records.values_mut() {
            record.reconciled = false;
        }
        records.retain(|obj, _| {
            let kept = keep.contains(obj);
            if !kept {
                self.metrics.forget_resource(obj.kind.as_str(), &obj.name);
            }
            kept
        });
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn record(&self, obj: &ObjectRef) -> Record {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(obj)
            .cloned()
            .unwrap_or_default()
    }

    fn update_record(&self, obj: &ObjectRef, f: impl FnOnce(&mut Record)) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let record = records.entry(obj.clone()).or_default();
        f(record);
        self.metrics
            .set_state(obj.kind.as_str(), &obj.name, record.state.as_str());
    }

    /// Sets the state and drift of a resource in its record and in the metrics.
    fn report(
        &self,
        obj: &ObjectRef,
        state: State,
        diff: Option<&ResourceDiff>,
        detail: Option<String>,
    ) {
        if let Some(diff) = diff {
            let fields: Vec<(String, bool)> = diff
                .fields
                .iter()
                .map(|f| (f.field.clone(), f.drifted))
                .collect();
            self.metrics
                .set_drift(obj.kind.as_str(), &obj.name, &fields);
        }
        self.update_record(obj, |r| {
            r.state = state;
            r.detail = detail;
            r.last_error = None;
            r.errors_in_row = 0;
            r.error_kind = None;
            if let Some(diff) = diff {
                r.drifted_fields = diff.changes().map(|f| f.field.clone()).collect();
            }
        });
    }

    /// A drifted resource that `--dry-run` leaves as it is.
    fn report_dry_run(&self, obj: &ObjectRef, diff: &ResourceDiff) {
        self.report(
            obj,
            State::Drifted,
            Some(diff),
            Some("dry run: not applied".into()),
        );
    }

    /// Observes everything at once, so the reconciles a resync triggers share one batch of reads.
    async fn refresh_snapshot(&self) {
        let manifest = self.manifest();
        let snapshot = self.observer.observe(&manifest).await;
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), Arc::new(snapshot)));
    }

    /// The last snapshot if it is fresh enough to stand for live state.
    fn fresh_snapshot(&self) -> Option<Arc<Snapshot>> {
        let guard = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|(at, _)| at.elapsed() < SNAPSHOT_FRESH)
            .map(|(_, s)| s.clone())
    }

    /// Forgets the snapshot's view of a resource once this controller has written to it.
    fn invalidate_snapshot(&self) {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// One reconcile of one resource, with its span, metrics and error policy.
    pub async fn reconcile(
        self: &Arc<Self>,
        obj: &ObjectRef,
        reason: &'static str,
    ) -> Option<Duration> {
        let throttle = *self
            .throttled_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(until) = throttle.filter(|u| *u > Instant::now()) {
            tokio::time::sleep_until(until).await;
        }

        let span = tracing::info_span!("reconcile", resource = %obj.name, kind = obj.kind.as_str(), reason);
        let started = Instant::now();
        let result = async {
            match obj.kind {
                ResourceKind::Service => service::reconcile(self, obj).await,
                ResourceKind::AutoScalingGroup => capacity::reconcile(self, obj).await,
            }
        }
        .instrument(span.clone())
        .await;
        self.metrics.observe_reconcile(
            obj.kind.as_str(),
            result.is_ok(),
            started.elapsed().as_secs_f64(),
        );
        self.metrics.sync_aws_calls(self.cloud().calls());
        self.update_record(obj, |r| r.reconciled = true);

        if result.is_ok() {
            self.metrics.set_last_success(unix_now());
        }
        match result {
            Ok(Action::Requeue(after)) => Some(after),
            Ok(Action::AwaitChange) => None,
            Err(err) => Some(span.in_scope(|| self.error_policy(obj, &err))),
        }
    }

    /// Decides the backoff after a failed reconcile from the kind of error.
    fn error_policy(&self, obj: &ObjectRef, err: &ReconcileError) -> Duration {
        let kind = err.kind();
        let mut errors = 0;
        self.update_record(obj, |r| {
            r.errors_in_row += 1;
            r.error_kind = Some(kind);
            errors = r.errors_in_row;
            r.last_error = Some(err.to_string());
            // A failed read says nothing about the resource; keep a rollout's state visible.
            if r.rollout.is_none() {
                r.state = State::Error;
            }
        });
        let base = match kind {
            ErrorKind::Throttled => {
                let pause = Duration::from_secs(2u64.saturating_pow(errors.min(6)));
                *self
                    .throttled_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + pause);
                pause
            }
            ErrorKind::Transient | ErrorKind::Other => {
                Duration::from_secs(2u64.saturating_pow(errors.min(8)))
            }
            ErrorKind::AccessDenied => Duration::from_secs(300),
            ErrorKind::NotFound | ErrorKind::Invalid => self.settings.interval,
        };
        let backoff = jitter(base.min(Duration::from_secs(300)));
        match kind {
            ErrorKind::AccessDenied | ErrorKind::Invalid => {
                error!(error = %err, retry_in = ?backoff, "reconcile failed and needs a human")
            }
            _ => warn!(error = %err, retry_in = ?backoff, "reconcile failed; retrying"),
        }
        backoff
    }

    /// Whether every resource has reached an end state for `apply`.
    fn settled(&self) -> bool {
        let objects = self.objects();
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        objects.iter().all(|obj| match records.get(obj) {
            None => false,
            Some(r) if !r.reconciled => false,
            Some(r) => match r.state {
                State::Progressing => false,
                // Throttling and 5xx are worth a few more tries; other errors will not go away
                // by themselves within one `apply`.
                State::Error => match r.error_kind {
                    Some(ErrorKind::Throttled | ErrorKind::Transient) => {
                        r.errors_in_row >= APPLY_MAX_ERRORS
                    }
                    _ => r.rollout.is_none(),
                },
                State::Drifted => self.settings.dry_run || r.quarantine.is_some(),
                _ => r.rollout.is_none(),
            },
        })
    }

    /// The `/status` document.
    pub fn status(&self) -> serde_json::Value {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let resources: Vec<_> = records
            .iter()
            .map(|(obj, r)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(map) = v.as_object_mut() {
                    map.insert("kind".into(), obj.kind.as_str().into());
                    map.insert("resource".into(), obj.name.clone().into());
                }
                v
            })
            .collect();
        serde_json::json!({ "dryRun": self.settings.dry_run, "resources": resources })
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// Why a batch of reconciles was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Resync,
    ManifestChanged,
    Hangup,
}

impl Trigger {
    fn reason(self) -> &'static str {
        match self {
            Trigger::Resync => "resync",
            Trigger::ManifestChanged => "manifest changed",
            Trigger::Hangup => "SIGHUP",
        }
    }
}

/// Runs reconciles as triggers and requeues ask, until `stop` resolves (daemon) or, with
/// `until_settled`, until every resource reached an end state (apply).
pub async fn drive(
    ctl: Arc<Controller>,
    mut triggers: mpsc::Receiver<Trigger>,
    until_settled: bool,
    health: Option<Arc<Health>>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut due: BTreeMap<ObjectRef, (Instant, &'static str)> = BTreeMap::new();
    let mut running = FuturesUnordered::new();
    let mut busy: std::collections::HashSet<ObjectRef> = Default::default();
    let mut first_pass: Option<std::collections::HashSet<ObjectRef>> = None;
    tokio::pin!(stop);

    loop {
        // Start what is due, at most `concurrency` at a time, never one resource twice.
        let now = Instant::now();
        let ready: Vec<ObjectRef> = due
            .iter()
            .filter(|(obj, (at, _))| *at <= now && !busy.contains(*obj))
            .map(|(obj, _)| obj.clone())
            .take(ctl.settings.concurrency.saturating_sub(busy.len()))
            .collect();
        for obj in ready {
            let Some((_, reason)) = due.remove(&obj) else {
                continue;
            };
            busy.insert(obj.clone());
            let ctl = ctl.clone();
            running.push(async move {
                let after = ctl.reconcile(&obj, reason).await;
                (obj, after)
            });
        }
        if let Some(h) = &health {
            h.beat();
        }

        let next_due = due
            .iter()
            .filter(|(obj, _)| !busy.contains(*obj))
            .map(|(_, (at, _))| *at)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = &mut stop => {
                info!(in_flight = busy.len(), "stopping: no new reconciles; waiting for those in flight");
                while running.next().await.is_some() {}
                info!("in-flight reconciles finished; rollouts resume from their service tags on the next start");
                return;
            }
            Some(trigger) = triggers.recv() => {
                debug!(trigger = trigger.reason(), "triggered");
                ctl.refresh_snapshot().await;
                let at = Instant::now() + if trigger == Trigger::Resync { Duration::ZERO } else { DEBOUNCE };
                for obj in ctl.objects() {
                    let entry = due.entry(obj).or_insert((at, trigger.reason()));
                    if entry.0 > at {
                        *entry = (at, trigger.reason());
                    }
                }
                if first_pass.is_none() {
                    first_pass = Some(ctl.objects().into_iter().collect());
                }
            }
            Some((obj, after)) = running.next() => {
                busy.remove(&obj);
                if let Some(pending) = &mut first_pass {
                    pending.remove(&obj);
                    if pending.is_empty() {
                        if let Some(h) = &health {
                            h.set_ready();
                        }
                    }
                }
                if let Some(after) = after.filter(|_| ctl.objects().contains(&obj)) {
                    let at = Instant::now() + after;
                    let entry = due.entry(obj).or_insert((at, "requeue"));
                    if entry.0 > at {
                        *entry = (at, "requeue");
                    }
                }
                if until_settled && running.is_empty() && ctl.settled() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next_due) => {}
        }
    }
}

fn unix_now() -> f64 {
    // The wall clock is only read for this metric's value, never for decisions.
    #[allow(clippy::disallowed_methods)] // the metric is a wall-clock timestamp by definition
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `ecs-reconciler apply`: passes until every resource is stable, rolled back or failed.
/// Returns the exit code.
pub async fn apply(cloud: Arc<dyn Cloud>, manifest: Manifest, settings: Settings) -> i32 {
    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => {
            error!(error = %e, "cannot set up metrics");
            return EXIT_FAILED;
        }
    };
    let ctl = Controller::new(cloud, manifest, settings, metrics);
    let (tx, rx) = mpsc::channel(4);
    let _ = tx.send(Trigger::Resync).await;
    drive(ctl.clone(), rx, true, None, std::future::pending()).await;

    let (mut failed, mut rolled_back, mut pending) = (false, false, false);
    for obj in ctl.objects() {
        let r = ctl.record(&obj);
        let detail = r
            .detail
            .clone()
            .or(r.last_error.clone())
            .unwrap_or_default();
        println!("{obj}: {} {detail}", r.state.as_str());
        match r.state {
            State::InSync => {}
            State::Drifted if ctl.settings.dry_run => pending = true,
            State::RolledBack | State::Quarantined => rolled_back = true,
            _ => failed = true,
        }
    }
    if failed {
        EXIT_FAILED
    } else if rolled_back {
        EXIT_ROLLED_BACK
    } else if pending {
        crate::plan::EXIT_CHANGES
    } else {
        EXIT_CONVERGED
    }
}

/// `ecs-reconciler run`: the daemon. Returns when SIGTERM or SIGINT asks it to stop.
pub async fn run_daemon(
    cloud: Arc<dyn Cloud>,
    path: PathBuf,
    manifest: Manifest,
    settings: Settings,
    listen: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    metrics.set_manifest_valid(true);
    let interval = settings.interval;
    let ctl = Controller::new(cloud, manifest, settings, metrics.clone());
    let health = Arc::new(Health::new(interval.max(Duration::from_secs(30)) * 4));

    let listener = tokio::net::TcpListener::bind(listen).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_state = HttpState {
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let mut http_stop = stop_rx.clone();
    let server = tokio::spawn(crate::http::serve(listener, http_state, async move {
        let _ = http_stop.wait_for(|s| *s).await;
    }));

    let (tx, rx) = mpsc::channel(16);
    let _ = tx.send(Trigger::Resync).await;
    tokio::spawn(resync_timer(tx.clone(), interval));
    let (reload_tx, reload_rx) = mpsc::channel::<Trigger>(4);
    let watch = ManifestWatch::start(&ctl.manifest(), reload_tx.clone());
    tokio::spawn(on_manifest_trigger(
        ctl.clone(),
        path.clone(),
        reload_rx,
        tx.clone(),
        watch,
    ));
    tokio::spawn(publish_status(ctl.clone(), health.clone()));

    let stop = shutdown_signal(reload_tx);
    drive(ctl, rx, false, Some(health), stop).await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    info!("stopped");
    Ok(())
}

/// Sends a resync trigger every `interval`, jittered so that many controllers do not read AWS
/// in step.
pub async fn resync_timer(tx: mpsc::Sender<Trigger>, interval: Duration) {
    loop {
        tokio::time::sleep(jitter(interval)).await;
        if tx.send(Trigger::Resync).await.is_err() {
            return;
        }
    }
}

async fn publish_status(ctl: Arc<Controller>, health: Arc<Health>) {
    loop {
        health.set_status(ctl.status());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Re-reads the manifest on every reload request (a file change or SIGHUP) and triggers a pass
/// when it changed; SIGHUP triggers a full pass even when it did not.
async fn on_manifest_trigger(
    ctl: Arc<Controller>,
    path: PathBuf,
    mut reload_rx: mpsc::Receiver<Trigger>,
    tx: mpsc::Sender<Trigger>,
    mut watch: Option<ManifestWatch>,
) {
    while let Some(first) = reload_rx.recv().await {
        // Editors and git replace files in several steps; let them finish.
        tokio::time::sleep(DEBOUNCE).await;
        let mut hangup = first == Trigger::Hangup;
        while let Ok(more) = reload_rx.try_recv() {
            hangup |= more == Trigger::Hangup;
        }
        let changed = ctl.reload_manifest(&path);
        if changed {
            if let Some(watch) = &mut watch {
                watch.follow(&ctl.manifest());
            }
        }
        if changed || hangup {
            let trigger = if hangup {
                Trigger::Hangup
            } else {
                Trigger::ManifestChanged
            };
            let _ = tx.send(trigger).await;
        }
    }
}

impl Controller {
    /// Loads the manifest at `path` and puts it in force if it is valid and different. An
    /// invalid manifest is logged and ignored: the last good one stays in force. Returns
    /// whether the manifest in force changed.
    pub fn reload_manifest(&self, path: &Path) -> bool {
        match manifest::load(path) {
            Ok(m) => {
                self.metrics.set_manifest_valid(true);
                *self.last_invalid.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if m == *self.manifest() {
                    debug!("manifest unchanged");
                    return false;
                }
                info!(manifest = %path.display(), "manifest changed; reconciling the new one");
                self.set_manifest(m);
                true
            }
            Err(invalid) => {
                self.metrics.set_manifest_valid(false);
                let text = invalid.to_string();
                let mut last = self.last_invalid.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_deref() == Some(text.as_str()) {
                    debug!("manifest is still invalid in the same way");
                } else {
                    error!(error = %text, "manifest is invalid; still reconciling the last good one");
                    *last = Some(text);
                }
                false
            }
        }
    }
}

/// Watches the manifest and the task definition files it names. Git and editors replace files
/// rather than write them in place, so the directories are watched (not recursively) and events
/// are kept only for those files: a log written beside the manifest triggers nothing.
struct ManifestWatch {
    watcher: notify::RecommendedWatcher,
    files: Arc<Mutex<std::collections::HashSet<PathBuf>>>,
    dirs: std::collections::HashSet<PathBuf>,
}

impl ManifestWatch {
    fn start(manifest: &Manifest, reload: mpsc::Sender<Trigger>) -> Option<Self> {
        let files: Arc<Mutex<std::collections::HashSet<PathBuf>>> = Arc::default();
        let relevant = files.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let files = relevant.lock().unwrap_or_else(|p| p.into_inner());
            if event.paths.iter().any(|p| files.contains(p)) {
                // A full channel already holds a reload request; one is enough.
                let _ = reload.try_send(Trigger::ManifestChanged);
            }
        });
        match watcher {
            Ok(watcher) => {
                let mut watch = ManifestWatch {
                    watcher,
                    files,
                    dirs: Default::default(),
                };
                watch.follow(manifest);
                Some(watch)
            }
            Err(e) => {
                warn!(error = %e, "cannot start a file watcher; manifest changes are picked up on SIGHUP only");
                None
            }
        }
    }

    /// Points the watch at the files this manifest consists of.
    fn follow(&mut self, manifest: &Manifest) {
        use notify::Watcher;
        let mut files = std::collections::HashSet::new();
        files.insert(absolute(&manifest.path));
        for (_, _, spec) in manifest.services() {
            if let manifest::TaskDefinitionSource::File { path, .. } = &spec.task_definition {
                files.insert(absolute(path));
            }
        }
        for dir in files.iter().filter_map(|f| f.parent()) {
            if self.dirs.contains(dir) {
                continue;
            }
            match self.watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir.to_path_buf());
                }
                Err(e) => {
                    warn!(error = %e, dir = %dir.display(), "cannot watch a manifest directory; its changes are picked up on SIGHUP only")
                }
            }
        }
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = files;
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once. SIGHUP reloads.
async fn shutdown_signal(reload: mpsc::Sender<Trigger>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the manifest");
                let _ = reload.try_send(Trigger::Hangup);
            }
        }
    }
    info!("shutdown requested; a second SIGTERM or SIGINT exits at once");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        warn!("second signal: exiting now");
        std::process::exit(130);
    });
}
