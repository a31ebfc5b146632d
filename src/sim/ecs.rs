//! ECS services as the service scheduler runs them: deployments, tasks and their placement on
//! container instances, the deployment circuit breaker, and the events a service reports.
//!
//! Every service runs with the ECS defaults: rolling updates with minimumHealthyPercent 100 and
//! maximumPercent 200, and the deployment circuit breaker on with rollback. Tasks that fail
//! their target group health checks count toward the circuit breaker as they do in ECS, so an
//! unhealthy image fails its deployment and rolls back just as a crashing one does, only slower.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use crate::model::{
    Deployment, DeploymentStatus, RolloutState, Service, ServiceEvent, ServiceLookup, ServiceUpdate,
};

use super::autoscaling::SimInstance;
use super::taskdefs::{TaskDefRecord, TaskDefs};
use super::world::{epoch_seconds, hex_id, ip_string, Cx, Fail, SimResult, World, ACCOUNT_ID};

/// ECS returns at most this many events, newest first.
const MAX_EVENTS: usize = 100;
/// ECS repeats an "unable to place a task" event for a service at most about once a minute.
const PLACEMENT_EVENT_INTERVAL: Duration = Duration::from_secs(60);
/// How long a target shows as unhealthy before ECS stops its task.
const UNHEALTHY_GRACE: Duration = Duration::from_secs(10);
const MAXIMUM_PERCENT: i32 = 200;
const MINIMUM_HEALTHY_PERCENT: i32 = 100;
/// Drained deployments beyond this many are forgotten even before the primary completes.
const MAX_DEPLOYMENTS: usize = 10;

pub(super) struct SimService {
    pub arn: String,
    pub name: String,
    pub cluster: String,
    pub desired: i32,
    /// Fargate tasks need no container instance; EC2 tasks are placed on one.
    pub fargate: bool,
    /// In creation order; exactly one is primary.
    pub deployments: Vec<SimDeployment>,
    /// In creation order, so the newest task is last.
    pub tasks: Vec<SimTask>,
    /// Newest first.
    pub events: VecDeque<ServiceEvent>,
    pub target_groups: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// Whether the "reached a steady state" event has been posted for the current state.
    pub steady: bool,
    pub last_placement_event: Option<Duration>,
}

pub(super) struct SimDeployment {
    pub seq: u64,
    pub id: String,
    pub primary: bool,
    pub td: usize,
    pub failed: i32,
    pub rollout: RolloutState,
    pub reason: Option<String>,
    /// Since when it has run settled (alone, desired count, healthy), while it does.
    pub settled_since: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TaskState {
    /// No container instance had room yet; ECS reports it as pending.
    Unplaced,
    Pending {
        running_at: Duration,
    },
    Running,
}

impl TaskState {
    /// Which tasks go first when a service scales in: those that never started.
    fn scale_in_rank(self) -> u8 {
        match self {
            TaskState::Unplaced => 0,
            TaskState::Pending { .. } => 1,
            TaskState::Running => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    /// The service has no target group, so a running task counts as healthy.
    Unchecked,
    Initial {
        until: Duration,
    },
    Healthy,
    Unhealthy {
        stop_at: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    Crashed,
    FailedHealthCheck,
    /// Scaled in, replaced by a newer deployment, or moved off a draining instance.
    Surplus,
    HostTerminated,
}

pub(super) struct SimTask {
    pub id: String,
    pub deployment: u64,
    pub td: usize,
    pub state: TaskState,
    /// The instance slot it is placed on (EC2 only).
    pub instance: Option<usize>,
    pub ip: u32,
    pub health: Health,
    /// Decided when the task is created, from the faults in force then.
    pub crashes: bool,
    pub fails_health: bool,
    /// Marked for stopping; the next sweep releases it.
    pub stop: Option<StopReason>,
}

impl SimTask {
    fn is_healthy(&self) -> bool {
        self.state == TaskState::Running
            && matches!(self.health, Health::Unchecked | Health::Healthy)
    }
}

/// A task as [`super::SimCloud::tasks`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTaskInfo {
    pub id: String,
    pub deployment_id: String,
    pub task_definition: String,
    /// PENDING or RUNNING, as ECS reports lastStatus.
    pub last_status: &'static str,
    /// The EC2 instance it runs on; `None` on Fargate or while waiting for room.
    pub ec2_instance_id: Option<String>,
    pub ip: String,
    /// unchecked (no target group), initial, healthy or unhealthy.
    pub health: &'static str,
}

impl SimService {
    pub fn step(&mut self, cx: &mut Cx) {
        self.progress_tasks(cx);
        self.sweep(cx);
        self.check_circuit_breaker(cx);
        self.schedule(cx);
        self.sweep(cx);
        self.check_rollout(cx);
    }

    fn primary(&self) -> Option<&SimDeployment> {
        self.deployments.iter().find(|d| d.primary)
    }

    /// Moves tasks through PENDING, RUNNING and their health checks.
    fn progress_tasks(&mut self, cx: &mut Cx) {
        let Self {
            tasks,
            events,
            name,
            target_groups,
            ..
        } = self;
        let now = cx.now;
        for task in tasks.iter_mut().filter(|t| t.stop.is_none()) {
            match (task.state, task.health) {
                (TaskState::Pending { running_at }, _) if now >= running_at => {
                    if task.crashes {
                        task.stop = Some(StopReason::Crashed);
                        continue;
                    }
                    task.state = TaskState::Running;
                    task.health = if target_groups.is_empty() {
                        Health::Unchecked
                    } else {
                        Health::Initial {
                            until: now + cx.timings.health_check,
                        }
                    };
                }
                (TaskState::Running, Health::Initial { until }) if now >= until => {
                    if !task.fails_health {
                        task.health = Health::Healthy;
                        continue;
                    }
                    task.health = Health::Unhealthy {
                        stop_at: now + UNHEALTHY_GRACE,
                    };
                    let port = cx.task_defs.records[task.td].port;
                    let group = target_groups.first().map_or("", String::as_str);
                    let message = format!(
                        "(service {name}) (task {}) (port {port}) is unhealthy in (target-group \
                         {group}) due to (reason Health checks failed).",
                        task.id
                    );
                    push_event(events, cx.rng, now, message);
                }
                (TaskState::Running, Health::Unhealthy { stop_at }) if now >= stop_at => {
                    task.stop = Some(StopReason::FailedHealthCheck);
                }
                _ => {}
            }
        }
    }

    /// Removes the tasks marked for stopping, returning what they held.
    pub fn sweep(&mut self, cx: &mut Cx) {
        if self.tasks.iter().all(|t| t.stop.is_none()) {
            return;
        }
        let Self {
            tasks,
            deployments,
            events,
            name,
            target_groups,
            ..
        } = self;
        let mut stopped = String::new();
        let mut stopped_count = 0;
        tasks.retain(|task| {
            let Some(reason) = task.stop else {
                return true;
            };
            let record = &cx.task_defs.records[task.td];
            if let Some(Some(instance)) = task.instance.and_then(|slot| cx.instances.get_mut(slot))
            {
                instance.release(record);
            }
            if task.state == TaskState::Running {
                for arn in target_groups.iter() {
                    if let Some(group) = cx.target_groups.iter_mut().find(|g| g.arn == *arn) {
                        group.deregister(task.ip, record.port, cx.now + cx.timings.deregistration);
                    }
                }
            }
            match reason {
                StopReason::Crashed | StopReason::FailedHealthCheck => {
                    if let Some(d) = deployments.iter_mut().find(|d| d.seq == task.deployment) {
                        d.failed += 1;
                    }
                    cx.counters.tasks_failed += 1;
                }
                StopReason::HostTerminated => cx.counters.tasks_killed_by_termination += 1,
                StopReason::Surplus => {}
            }
            if task.state == TaskState::Running && reason != StopReason::Crashed {
                stopped_count += 1;
                let _ = write!(stopped, " (task {})", task.id);
            }
            false
        });
        if stopped_count > 0 {
            let message =
                format!("(service {name}) has stopped {stopped_count} running tasks:{stopped}.");
            push_event(events, cx.rng, cx.now, message);
        }
    }

    /// Fails the primary deployment once enough of its tasks failed, and rolls back to the
    /// deployment before it when there is one.
    fn check_circuit_breaker(&mut self, cx: &mut Cx) {
        let threshold = ((self.desired + 1) / 2).clamp(3, 200);
        let Some(p) = self.deployments.iter().position(|d| d.primary) else {
            return;
        };
        let failed = &mut self.deployments[p];
        if failed.rollout != RolloutState::InProgress || failed.failed < threshold {
            return;
        }
        failed.rollout = RolloutState::Failed;
        failed.reason = Some("ECS deployment circuit breaker: tasks failed to start.".into());
        let message = format!(
            "(service {}) deployment {} deployment failed: tasks failed to start.",
            self.name, failed.id
        );
        let failed_seq = failed.seq;
        push_event(&mut self.events, cx.rng, cx.now, message);
        self.steady = false;

        let previous = self
            .deployments
            .iter()
            .rposition(|d| d.seq != failed_seq && d.rollout != RolloutState::Failed);
        // Without an earlier deployment there is nothing to roll back to: the failed one stays
        // primary and starts nothing more until the service is updated again.
        let Some(previous) = previous else {
            return;
        };
        self.deployments[p].primary = false;
        let restored = &mut self.deployments[previous];
        restored.primary = true;
        restored.rollout = RolloutState::InProgress;
        restored.settled_since = None;
        restored.reason = Some(format!(
            "ECS deployment circuit breaker: rolling back to deploymentId {}.",
            restored.id
        ));
        let message = format!(
            "(service {}) rolling back to deployment {}.",
            self.name, restored.id
        );
        push_event(&mut self.events, cx.rng, cx.now, message);
    }

    /// The service scheduler: starts what the primary deployment lacks within maximumPercent,
    /// and stops what nothing needs any more within minimumHealthyPercent.
    fn schedule(&mut self, cx: &mut Cx) {
        let Some(primary) = self.primary() else {
            return;
        };
        let (primary_seq, primary_td) = (primary.seq, primary.td);
        let can_start = primary.rollout != RolloutState::Failed;
        let desired = self.desired.max(0);
        let max_total = desired * MAXIMUM_PERCENT / 100;
        let min_healthy = (desired * MINIMUM_HEALTHY_PERCENT + 99) / 100;
        // A task counts toward the primary only if it belongs to it and may stay where it is.
        let is_kept = |task: &SimTask, instances: &[Option<SimInstance>]| {
            task.deployment == primary_seq && !on_draining(task, instances)
        };

        let (mut kept, mut total) = (0, 0);
        for task in self.tasks.iter().filter(|t| t.stop.is_none()) {
            total += 1;
            if is_kept(task, cx.instances) {
                kept += 1;
            }
        }

        if kept > desired {
            let mut excess = kept - desired;
            for rank in 0..3 {
                for task in self.tasks.iter_mut().rev() {
                    if excess > 0
                        && task.stop.is_none()
                        && task.state.scale_in_rank() == rank
                        && is_kept(task, cx.instances)
                    {
                        task.stop = Some(StopReason::Surplus);
                        excess -= 1;
                    }
                }
            }
        } else if can_start && kept < desired {
            for _ in 0..(desired - kept).min(max_total - total) {
                let task = new_task(primary_seq, primary_td, cx);
                self.tasks.push(task);
            }
        }
        self.place_waiting(cx);

        // Old deployments go before tasks on draining instances; within each, oldest first.
        let healthy = self
            .tasks
            .iter()
            .filter(|t| t.stop.is_none() && t.is_healthy())
            .count();
        let mut budget = i32::try_from(healthy).unwrap_or(i32::MAX) - min_healthy;
        for old_deployments_pass in [true, false] {
            for task in self.tasks.iter_mut() {
                let old = task.deployment != primary_seq;
                if task.stop.is_some() || old != old_deployments_pass || is_kept(task, cx.instances)
                {
                    continue;
                }
                if !task.is_healthy() {
                    task.stop = Some(StopReason::Surplus);
                } else if budget > 0 {
                    task.stop = Some(StopReason::Surplus);
                    budget -= 1;
                }
            }
        }
    }

    /// Finds room for tasks that have none yet; Fargate always has room.
    pub fn place_waiting(&mut self, cx: &mut Cx) {
        let mut started = String::new();
        let mut started_count = 0;
        let mut unplaced_td = None;
        for task in self.tasks.iter_mut() {
            if task.stop.is_some() || task.state != TaskState::Unplaced {
                continue;
            }
            let record = &cx.task_defs.records[task.td];
            if !self.fargate {
                let Some(slot) = find_instance(&self.cluster, record, cx.instances) else {
                    unplaced_td.get_or_insert(task.td);
                    continue;
                };
                if let Some(Some(instance)) = cx.instances.get_mut(slot) {
                    instance.reserve(record);
                }
                task.instance = Some(slot);
            }
            task.state = TaskState::Pending {
                running_at: cx.now + cx.timings.task_start,
            };
            started_count += 1;
            let _ = write!(started, " (task {})", task.id);
        }
        cx.counters.tasks_started += started_count;
        if started_count > 0 {
            let message = format!(
                "(service {}) has started {started_count} tasks:{started}.",
                self.name
            );
            push_event(&mut self.events, cx.rng, cx.now, message);
        }

        let Some(td) = unplaced_td else {
            return;
        };
        let due = self
            .last_placement_event
            .is_none_or(|at| cx.now.saturating_sub(at) >= PLACEMENT_EVENT_INTERVAL);
        if due {
            let why = placement_failure(&self.cluster, &cx.task_defs.records[td], cx.instances);
            let message = format!(
                "(service {}) was unable to place a task because no container instance met all of \
                 its requirements. {why}",
                self.name
            );
            push_event(&mut self.events, cx.rng, cx.now, message);
            self.last_placement_event = Some(cx.now);
        }
    }

    /// Completes the primary deployment once it alone has run the desired count, all healthy,
    /// for the completion delay; then the old deployments disappear and the service posts that
    /// it reached a steady state.
    pub fn check_rollout(&mut self, cx: &mut Cx) {
        let Some(p) = self.deployments.iter().position(|d| d.primary) else {
            return;
        };
        let primary_seq = self.deployments[p].seq;
        let (mut running, mut pending, mut all_healthy, mut others) = (0, 0, true, false);
        for task in &self.tasks {
            others |= task.deployment != primary_seq;
            if task.state == TaskState::Running {
                running += 1;
                all_healthy &= task.is_healthy();
            } else {
                pending += 1;
            }
        }
        let settled = !others && running == self.desired.max(0) && pending == 0 && all_healthy;

        let primary = &mut self.deployments[p];
        if !settled {
            primary.settled_since = None;
        }
        let since = settled.then(|| *primary.settled_since.get_or_insert(cx.now));
        let baked = since.is_some_and(|since| cx.now - since >= cx.timings.completion);
        if baked && primary.rollout == RolloutState::InProgress {
            primary.rollout = RolloutState::Completed;
            primary.reason = Some(format!("ECS deployment {} completed.", primary.id));
            let message = format!(
                "(service {}) deployment {} deployment completed.",
                self.name, primary.id
            );
            push_event(&mut self.events, cx.rng, cx.now, message);
        }
        let completed = self.deployments[p].rollout == RolloutState::Completed;
        if settled && completed && self.deployments.len() > 1 {
            self.deployments.retain(|d| d.primary);
        }
        // Updates that never complete would pile up drained deployments; ECS keeps a few.
        while self.deployments.len() > MAX_DEPLOYMENTS {
            let tasks = &self.tasks;
            let drained = self
                .deployments
                .iter()
                .position(|d| !d.primary && !tasks.iter().any(|t| t.deployment == d.seq));
            match drained {
                Some(i) => drop(self.deployments.remove(i)),
                None => break,
            }
        }

        let steady = settled && completed;
        if steady && !self.steady {
            let message = format!("(service {}) has reached a steady state.", self.name);
            push_event(&mut self.events, cx.rng, cx.now, message);
        }
        self.steady = steady;
    }

    fn start_deployment(&mut self, seq: u64, id: String, td: usize) {
        for d in &mut self.deployments {
            d.primary = false;
        }
        let reason = Some(format!("ECS deployment {id} in progress."));
        self.deployments.push(SimDeployment {
            seq,
            id,
            primary: true,
            td,
            failed: 0,
            rollout: RolloutState::InProgress,
            reason,
            settled_since: None,
        });
        self.steady = false;
    }

    /// The service as DescribeServices reports it.
    pub fn to_model(&self, task_defs: &TaskDefs) -> Service {
        // PRIMARY first, then the others newest first, as ECS lists them.
        let ordered = self
            .deployments
            .iter()
            .filter(|d| d.primary)
            .chain(self.deployments.iter().rev().filter(|d| !d.primary));
        let mut deployments = Vec::with_capacity(self.deployments.len());
        let (mut service_running, mut service_pending) = (0, 0);
        for d in ordered {
            let (mut running, mut pending) = (0, 0);
            for task in self.tasks.iter().filter(|t| t.deployment == d.seq) {
                if task.state == TaskState::Running {
                    running += 1;
                } else {
                    pending += 1;
                }
            }
            service_running += running;
            service_pending += pending;
            deployments.push(Deployment {
                id: d.id.clone(),
                status: if d.primary {
                    DeploymentStatus::Primary
                } else {
                    DeploymentStatus::Active
                },
                task_definition: task_defs.records[d.td].arn.clone(),
                // ECS lowers an old deployment's desired count as its tasks are replaced.
                desired_count: if d.primary {
                    self.desired
                } else {
                    running + pending
                },
                running_count: running,
                pending_count: pending,
                failed_tasks: d.failed,
                rollout_state: Some(d.rollout),
                rollout_state_reason: d.reason.clone(),
            });
        }
        let task_definition = self
            .primary()
            .map(|d| task_defs.records[d.td].arn.clone())
            .unwrap_or_default();
        Service {
            arn: self.arn.clone(),
            name: self.name.clone(),
            cluster: self.cluster.clone(),
            status: "ACTIVE".into(),
            desired_count: self.desired,
            running_count: service_running,
            pending_count: service_pending,
            task_definition,
            deployments,
            events: self.events.iter().cloned().collect(),
            target_group_arns: self.target_groups.clone(),
            tags: self.tags.clone(),
        }
    }

    pub fn task_infos(
        &self,
        task_defs: &TaskDefs,
        instances: &[Option<SimInstance>],
    ) -> Vec<SimTaskInfo> {
        self.tasks
            .iter()
            .map(|task| SimTaskInfo {
                id: task.id.clone(),
                deployment_id: self
                    .deployments
                    .iter()
                    .find(|d| d.seq == task.deployment)
                    .map(|d| d.id.clone())
                    .unwrap_or_default(),
                task_definition: task_defs.records[task.td].arn.clone(),
                last_status: if task.state == TaskState::Running {
                    "RUNNING"
                } else {
                    "PENDING"
                },
                ec2_instance_id: task
                    .instance
                    .and_then(|slot| instances.get(slot))
                    .and_then(Option::as_ref)
                    .map(|i| i.id.clone()),
                ip: ip_string(task.ip),
                health: match task.health {
                    Health::Unchecked => "unchecked",
                    Health::Initial { .. } => "initial",
                    Health::Healthy => "healthy",
                    Health::Unhealthy { .. } => "unhealthy",
                },
            })
            .collect()
    }
}

fn new_task(deployment: u64, td: usize, cx: &mut Cx) -> SimTask {
    let record = &cx.task_defs.records[td];
    let ip = *cx.next_ip;
    *cx.next_ip = cx.next_ip.wrapping_add(1);
    SimTask {
        id: hex_id(cx.rng, 32),
        deployment,
        td,
        state: TaskState::Unplaced,
        instance: None,
        ip,
        health: Health::Unchecked,
        crashes: cx.faults.crashes(&record.images),
        fails_health: cx.faults.fails_health_checks(&record.images),
        stop: None,
    }
}

fn on_draining(task: &SimTask, instances: &[Option<SimInstance>]) -> bool {
    task.instance
        .and_then(|slot| instances.get(slot))
        .and_then(Option::as_ref)
        .is_some_and(|instance| instance.draining)
}

/// The ACTIVE instance with room and the fewest tasks, so tasks spread across instances.
fn find_instance(
    cluster: &str,
    record: &TaskDefRecord,
    instances: &[Option<SimInstance>],
) -> Option<usize> {
    instances
        .iter()
        .enumerate()
        .filter_map(|(slot, instance)| Some((slot, instance.as_ref()?)))
        .filter(|(_, instance)| instance.accepts_tasks(cluster) && instance.fits(record))
        .min_by_key(|(slot, instance)| (instance.tasks, *slot))
        .map(|(slot, _)| slot)
}

/// Why no instance fits, worded as ECS words it: about the closest matching instance.
fn placement_failure(
    cluster: &str,
    record: &TaskDefRecord,
    instances: &[Option<SimInstance>],
) -> String {
    let closest = instances
        .iter()
        .flatten()
        .filter(|instance| instance.accepts_tasks(cluster))
        .min_by_key(|i| {
            let short = [
                i.free_gpus() < record.gpus,
                i.free_cpu() < record.cpu,
                i.free_memory() < record.memory,
            ];
            let missing = short.iter().filter(|s| **s).count();
            (
                missing,
                Reverse(i.free_gpus()),
                Reverse(i.free_cpu()),
                Reverse(i.free_memory()),
            )
        });
    let Some(instance) = closest else {
        return "Reason: No Container Instances were found in your cluster.".into();
    };
    let what = if instance.free_gpus() < record.gpus {
        "GPU resource"
    } else if instance.free_cpu() < record.cpu {
        "CPU units"
    } else {
        "memory"
    };
    format!(
        "The closest matching (container-instance {}) has insufficient {what} available. For more \
         information, see the Troubleshooting section.",
        instance.container_id.as_deref().unwrap_or_default()
    )
}

fn push_event(
    events: &mut VecDeque<ServiceEvent>,
    rng: &mut fastrand::Rng,
    now: Duration,
    message: String,
) {
    let id = format!(
        "{}-{}-{}-{}-{}",
        hex_id(rng, 8),
        hex_id(rng, 4),
        hex_id(rng, 4),
        hex_id(rng, 4),
        hex_id(rng, 12)
    );
    events.push_front(ServiceEvent {
        id,
        created_at: epoch_seconds(now),
        message,
    });
    events.truncate(MAX_EVENTS);
}

fn deployment_id(rng: &mut fastrand::Rng) -> String {
    format!(
        "ecs-svc/{}",
        rng.u64(1_000_000_000_000_000_000..10_000_000_000_000_000_000)
    )
}

fn service_not_found(name: &str) -> Fail {
    Fail::not_found(format!(
        "ServiceNotFoundException: Service not found: {name}"
    ))
}

impl World {
    /// Creates a service that has been running for a while: one completed deployment, its tasks
    /// running and healthy wherever there was room for them.
    pub fn seed_service(
        &mut self,
        cluster: &str,
        name: &str,
        td: usize,
        desired: i32,
        fargate: bool,
        target_groups: Vec<String>,
    ) {
        self.ensure_cluster(cluster);
        let seq = self.seq();
        let id = deployment_id(&mut self.rng);
        let mut service = SimService {
            arn: format!(
                "arn:aws:ecs:{}:{ACCOUNT_ID}:service/{cluster}/{name}",
                self.region
            ),
            name: name.to_string(),
            cluster: cluster.to_string(),
            desired: desired.max(0),
            fargate,
            deployments: vec![SimDeployment {
                seq,
                failed: 0,
                primary: true,
                td,
                rollout: RolloutState::Completed,
                reason: Some(format!("ECS deployment {id} completed.")),
                settled_since: None,
                id,
            }],
            tasks: Vec::new(),
            events: VecDeque::new(),
            target_groups,
            tags: BTreeMap::new(),
            steady: false,
            last_placement_event: None,
        };
        let (_, mut cx) = self.split();
        for _ in 0..service.desired {
            let task = new_task(seq, td, &mut cx);
            service.tasks.push(task);
        }
        service.place_waiting(&mut cx);
        let checks_health = !service.target_groups.is_empty();
        for task in &mut service.tasks {
            if let TaskState::Pending { .. } = task.state {
                task.state = TaskState::Running;
                task.health = if checks_health {
                    Health::Healthy
                } else {
                    Health::Unchecked
                };
            }
        }
        service.check_rollout(&mut cx);
        self.services
            .insert((cluster.to_string(), name.to_string()), service);
    }

    pub fn describe_services(&self, cluster: &str, names: &[String]) -> SimResult<ServiceLookup> {
        self.require_cluster(cluster)?;
        let mut lookup = ServiceLookup::default();
        for name in names {
            match self.services.get(&(cluster.to_string(), name.clone())) {
                Some(service) => lookup.found.push(service.to_model(&self.task_defs)),
                None => lookup.missing.push(name.clone()),
            }
        }
        Ok(lookup)
    }

    pub fn update_service(
        &mut self,
        cluster: &str,
        name: &str,
        update: &ServiceUpdate,
    ) -> SimResult<()> {
        self.require_cluster(cluster)?;
        let key = (cluster.to_string(), name.to_string());
        let current = self
            .services
            .get(&key)
            .ok_or_else(|| service_not_found(name))?
            .primary()
            .map(|d| d.td);
        if let Some(n) = update.desired_count.filter(|n| *n < 0) {
            return Err(Fail::invalid(format!(
                "InvalidParameterException: desiredCount must be zero or more, got {n}"
            )));
        }
        let target = match &update.task_definition {
            Some(reference) => {
                let idx = self.task_defs.resolve(reference).ok_or_else(|| {
                    Fail::not_found(format!(
                        "ClientException: Unable to describe task definition {reference}."
                    ))
                })?;
                if !self.task_defs.records[idx].active {
                    return Err(Fail::invalid(format!(
                        "ClientException: TaskDefinition is inactive: {reference}"
                    )));
                }
                Some(idx)
            }
            None => current,
        };
        let new_deployment = match target {
            Some(td) if update.force_new_deployment || Some(td) != current => {
                Some((td, self.seq(), deployment_id(&mut self.rng)))
            }
            _ => None,
        };
        let service = self
            .services
            .get_mut(&key)
            .ok_or_else(|| service_not_found(name))?;
        if let Some(n) = update.desired_count {
            service.desired = n;
        }
        if let Some((td, seq, id)) = new_deployment {
            service.start_deployment(seq, id, td);
        }
        Ok(())
    }

    pub fn tag_resource(&mut self, arn: &str, tags: &BTreeMap<String, String>) -> SimResult<()> {
        let merge = |into: &mut BTreeMap<String, String>| {
            into.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        };
        if let Some(service) = self.services.values_mut().find(|s| s.arn == arn) {
            merge(&mut service.tags);
            return Ok(());
        }
        if let Some(cluster) = self.clusters.values_mut().find(|c| c.arn == arn) {
            merge(&mut cluster.tags);
            return Ok(());
        }
        // Revisions accept tags but the simulator does not keep them: nothing reads them back.
        if self.task_defs.records.iter().any(|r| r.arn == arn) {
            return Ok(());
        }
        Err(Fail::not_found(format!(
            "InvalidParameterException: The specified resource could not be found: {arn}"
        )))
    }
}
