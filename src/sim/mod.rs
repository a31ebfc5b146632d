//! An in-process simulated AWS: ECS, EC2 Auto Scaling and ELBv2 as the reconciler depends on
//! them, behind the same [`Cloud`] trait as the AWS adapter.
//!
//! The world moves only when looked at: every call first steps it in fixed ticks up to the
//! current `tokio::time::Instant` (scaled by [`SimConfig::speed`]), so its state depends only on
//! the clock, the seed and the calls made. Under paused tokio time a ten-minute rollout takes
//! milliseconds. State lives in one `World` behind a mutex that is never held across an await.
//!
//! - `world`: the state, the clock and the tick.
//! - `ecs`: services, deployments, tasks, placement, the circuit breaker, service events.
//! - `taskdefs`: task definition revisions.
//! - `autoscaling`: groups, instances and the container instances they register as.
//! - `elb`: target groups and target health.
//! - `faults`: what the simulator breaks on purpose.
//! - `scenario`: scenario files and seeding from a manifest.

mod autoscaling;
mod ecs;
mod elb;
mod faults;
mod scenario;
mod taskdefs;
mod world;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::cloud::{CallCounter, Cloud, CloudError, CloudResult};
use crate::manifest::Manifest;
use crate::model::{
    AsgUpdate, AutoScalingGroup, ContainerInstance, Service, ServiceLookup, ServiceUpdate,
    TargetGroup, TargetHealth, TaskDefinition,
};
use crate::taskdef::TaskDefinitionSpec;

pub use autoscaling::InstanceType;
pub use ecs::SimTaskInfo;
pub use faults::{image_matches, Faults};
pub use scenario::{FromManifest, Scenario, ScenarioError};
pub use world::SimCounters;

use world::{Fail, SimResult, World};

pub const DEFAULT_REGION: &str = "us-east-1";
/// How long [`SimCloud::settle`] waits, in simulated time, for the world to come to rest.
const SETTLE_LIMIT: Duration = Duration::from_secs(30 * 60);

/// How long things take in the simulated world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    /// From placement (PENDING) to RUNNING.
    pub task_start: Duration,
    /// From launch to InService.
    pub launch: Duration,
    /// From RUNNING until the target group has a verdict on the task.
    pub health_check: Duration,
    /// How long a stopped task's target shows as draining.
    pub deregistration: Duration,
    /// How long a terminating instance is still listed by its group.
    pub termination: Duration,
    /// How long a deployment runs settled (alone, at its desired count, healthy) before ECS
    /// marks it COMPLETED.
    pub completion: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            task_start: Duration::from_secs(20),
            launch: Duration::from_secs(60),
            health_check: Duration::from_secs(30),
            deregistration: Duration::from_secs(10),
            termination: Duration::from_secs(10),
            completion: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of every random draw: the same seed, clock and calls give the same world.
    pub seed: u64,
    /// Simulated seconds per real second. Keep 1 under paused tokio time; raise it for a demo
    /// that should show a ten-minute rollout in a minute.
    pub speed: f64,
    pub region: String,
    /// The step the world moves in.
    pub tick: Duration,
    pub timings: Timings,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            speed: 1.0,
            region: DEFAULT_REGION.into(),
            tick: Duration::from_secs(1),
            timings: Timings::default(),
            faults: Faults::default(),
        }
    }
}

/// Errors of the out-of-band helpers that change the world behind the controller's back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SimError {
    #[error("failed to find {kind} {name} in the simulated world")]
    NotFound { kind: &'static str, name: String },
    #[error("failed to {step}: {message}")]
    Rejected { step: &'static str, message: String },
}

impl SimError {
    fn rejected(step: &'static str) -> impl FnOnce(Fail) -> SimError {
        move |fail| SimError::Rejected {
            step,
            message: fail.message,
        }
    }
}

/// The simulated cloud. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct SimCloud {
    world: Mutex<World>,
    calls: CallCounter,
    start: Instant,
    speed: f64,
    tick: Duration,
}

impl SimCloud {
    /// An empty world: no clusters, groups or services.
    pub fn new(config: SimConfig) -> Self {
        let speed = if config.speed.is_finite() && config.speed > 0.0 {
            config.speed
        } else {
            tracing::warn!(
                speed = config.speed,
                "simulator speed must be above zero, using 1"
            );
            1.0
        };
        let tick = if config.tick.is_zero() {
            Duration::from_secs(1)
        } else {
            config.tick
        };
        let world = World::new(
            config.seed,
            config.region,
            tick,
            config.timings,
            config.faults,
        );
        SimCloud {
            world: Mutex::new(world),
            calls: CallCounter::default(),
            start: Instant::now(),
            speed,
            tick,
        }
    }

    /// A world with every resource the manifest names, already stable, with default settings.
    /// With `drift`, it starts out of line with the manifest: older image tags, other desired
    /// counts, smaller groups.
    pub fn seed_from_manifest(manifest: &Manifest, drift: bool) -> Self {
        let region = manifest
            .region
            .clone()
            .unwrap_or_else(|| DEFAULT_REGION.into());
        Self::with_manifest(
            SimConfig {
                region,
                ..SimConfig::default()
            },
            manifest,
            drift,
        )
    }

    /// [`SimCloud::seed_from_manifest`] with explicit settings. A service the simulator cannot
    /// register (an invalid task definition file) is left out with a warning.
    pub fn with_manifest(config: SimConfig, manifest: &Manifest, drift: bool) -> Self {
        let sim = Self::new(config);
        let skipped = scenario::SeedPlan::from_manifest(manifest, drift).seed(&mut sim.world());
        for problem in skipped {
            tracing::warn!(%problem, "simulator left a service out");
        }
        sim
    }

    /// A world as a scenario file describes it, seeded from `manifest` when the scenario says
    /// `fromManifest`.
    pub fn from_scenario(
        scenario: &Scenario,
        manifest: Option<&Manifest>,
    ) -> Result<Self, ScenarioError> {
        let region = scenario
            .region
            .clone()
            .or_else(|| manifest.and_then(|m| m.region.clone()))
            .unwrap_or_else(|| DEFAULT_REGION.into());
        let config = scenario.config(region)?;
        let plan = scenario.plan(manifest)?;
        let sim = Self::new(config);
        let skipped = plan.seed(&mut sim.world());
        if skipped.is_empty() {
            Ok(sim)
        } else {
            Err(ScenarioError::Invalid(skipped.join("; ")))
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Simulated time since the world began, by the clock (not yet stepped).
    fn clock(&self) -> Duration {
        let real = Instant::now().saturating_duration_since(self.start);
        if self.speed == 1.0 {
            real
        } else {
            real.mul_f64(self.speed)
        }
    }

    /// The world, stepped up to the clock.
    fn current(&self) -> MutexGuard<'_, World> {
        let mut world = self.world();
        world.advance_to(self.clock());
        world
    }

    /// One API call: latency, then a draw for throttling and errors, then the operation on the
    /// world as of now. Every outcome is counted.
    async fn call<T, F>(&self, operation: &'static str, f: F) -> CloudResult<T>
    where
        F: FnOnce(&mut World) -> SimResult<T> + Send,
    {
        let latency = self.world().faults.latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let result = {
            let mut guard = self.current();
            let world = &mut *guard;
            match world.faults.roll(operation, &mut world.fault_rng) {
                Some((kind, message)) => Err(CloudError::new(kind, operation, message)),
                None => {
                    f(world).map_err(|fail| CloudError::new(fail.kind, operation, fail.message))
                }
            }
        };
        self.calls.record_result(operation, &result);
        result
    }

    /// Steps the world up to the current time.
    pub fn advance_to_now(&self) {
        drop(self.current());
    }

    /// Lets simulated time pass until nothing is in motion (every service steady, every group
    /// at its desired capacity with all instances in service). Returns false if that has not
    /// happened after 30 simulated minutes, e.g. while a crash loop or a capacity shortage lasts.
    pub async fn settle(&self) -> bool {
        let deadline = self.elapsed() + SETTLE_LIMIT;
        loop {
            {
                let world = self.current();
                if world.is_at_rest() {
                    return true;
                }
                if world.now >= deadline {
                    return false;
                }
            }
            tokio::time::sleep(self.tick.div_f64(self.speed)).await;
        }
    }

    /// Simulated time since the world began, as far as it has been stepped.
    pub fn elapsed(&self) -> Duration {
        self.current().now
    }

    pub fn faults(&self) -> Faults {
        self.world().faults.clone()
    }

    /// Replaces the faults from now on. Image faults apply to tasks started afterwards.
    pub fn set_faults(&self, faults: Faults) {
        self.current().faults = faults;
    }

    /// Changes a service's desired count out of band, as drift a person causes.
    pub fn set_service_desired_count(
        &self,
        cluster: &str,
        service: &str,
        desired: i32,
    ) -> Result<(), SimError> {
        let update = ServiceUpdate {
            desired_count: Some(desired),
            ..ServiceUpdate::default()
        };
        self.change_service(cluster, service, &update)
    }

    /// Registers a new revision of the service's task definition with one container's image
    /// changed and deploys it, as a hand-made deployment would. Returns the new ARN.
    pub fn set_service_task_definition_image(
        &self,
        cluster: &str,
        service: &str,
        container: &str,
        image: &str,
    ) -> Result<String, SimError> {
        let mut world = self.current();
        let current = world
            .services
            .get(&(cluster.to_string(), service.to_string()))
            .map(|s| s.to_model(&world.task_defs).task_definition)
            .ok_or_else(|| SimError::NotFound {
                kind: "service",
                name: format!("{cluster}/{service}"),
            })?;
        let idx = world
            .task_defs
            .resolve(&current)
            .ok_or_else(|| SimError::NotFound {
                kind: "task definition",
                name: current.clone(),
            })?;
        let mut spec = world.task_defs.records[idx].spec.clone();
        let target = spec
            .container_definitions
            .iter_mut()
            .find(|c| c.name == container)
            .ok_or_else(|| SimError::NotFound {
                kind: "container",
                name: container.to_string(),
            })?;
        target.image = image.to_string();
        let region = world.region.clone();
        let new = world
            .task_defs
            .register(&region, &spec)
            .map_err(SimError::rejected("register task definition"))?;
        let arn = world.task_defs.records[new].arn.clone();
        let update = ServiceUpdate {
            task_definition: Some(arn.clone()),
            ..ServiceUpdate::default()
        };
        world
            .update_service(cluster, service, &update)
            .map_err(SimError::rejected("update service"))?;
        Ok(arn)
    }

    /// Sets a group's capacity out of band; AWS's checks still apply.
    pub fn set_asg_capacity(
        &self,
        name: &str,
        min: i32,
        max: i32,
        desired: i32,
    ) -> Result<(), SimError> {
        let mut world = self.current();
        if !world.asgs.contains_key(name) {
            return Err(SimError::NotFound {
                kind: "auto scaling group",
                name: name.to_string(),
            });
        }
        world
            .set_asg_capacity(name, min, max, desired)
            .map_err(SimError::rejected("set group capacity"))
    }

    /// Marks a revision INACTIVE, as DeregisterTaskDefinition does.
    pub fn deregister_task_definition(&self, arn: &str) -> Result<(), SimError> {
        let mut world = self.current();
        let idx = world
            .task_defs
            .resolve(arn)
            .ok_or_else(|| SimError::NotFound {
                kind: "task definition",
                name: arn.to_string(),
            })?;
        world.task_defs.records[idx].active = false;
        Ok(())
    }

    fn change_service(
        &self,
        cluster: &str,
        service: &str,
        update: &ServiceUpdate,
    ) -> Result<(), SimError> {
        let mut world = self.current();
        if !world
            .services
            .contains_key(&(cluster.to_string(), service.to_string()))
        {
            return Err(SimError::NotFound {
                kind: "service",
                name: format!("{cluster}/{service}"),
            });
        }
        world
            .update_service(cluster, service, update)
            .map_err(SimError::rejected("update service"))
    }

    /// The service as DescribeServices would show it, without counting a call or faults.
    pub fn service(&self, cluster: &str, name: &str) -> Option<Service> {
        let world = self.current();
        let service = world
            .services
            .get(&(cluster.to_string(), name.to_string()))?;
        Some(service.to_model(&world.task_defs))
    }

    /// The service's tasks, oldest first.
    pub fn tasks(&self, cluster: &str, service: &str) -> Vec<SimTaskInfo> {
        let world = self.current();
        world
            .services
            .get(&(cluster.to_string(), service.to_string()))
            .map(|s| s.task_infos(&world.task_defs, &world.instances))
            .unwrap_or_default()
    }

    pub fn auto_scaling_group(&self, name: &str) -> Option<AutoScalingGroup> {
        self.current().auto_scaling_group(name)
    }

    pub fn container_instances(&self, cluster: &str) -> Vec<ContainerInstance> {
        self.current()
            .list_container_instances(cluster)
            .unwrap_or_default()
    }

    /// Targets of the named target group.
    pub fn target_health(&self, target_group: &str) -> Vec<TargetHealth> {
        self.current().target_health_by_name(target_group)
    }

    pub fn counters(&self) -> SimCounters {
        self.current().counters
    }

    /// Tasks that died because their instance was terminated under them: what a careful
    /// scale-in (drain first, then terminate that instance) keeps at zero.
    pub fn tasks_killed_by_termination(&self) -> u64 {
        self.counters().tasks_killed_by_termination
    }
}

/// AWS batch sizes: DescribeServices takes 10 names, UpdateContainerInstancesState 10 ARNs,
/// DescribeAutoScalingGroups and DescribeContainerInstances 100, DescribeTargetGroups 20 here.
const DESCRIBE_SERVICES_BATCH: usize = 10;
const CONTAINER_STATE_BATCH: usize = 10;
const AUTO_SCALING_BATCH: usize = 100;
const CONTAINER_INSTANCES_PAGE: usize = 100;
const TASK_DEFINITIONS_PAGE: usize = 100;
const TARGET_GROUPS_BATCH: usize = 20;

#[async_trait]
impl Cloud for SimCloud {
    async fn describe_services(
        &self,
        cluster: &str,
        names: &[String],
    ) -> CloudResult<ServiceLookup> {
        let mut lookup = ServiceLookup::default();
        for batch in names.chunks(DESCRIBE_SERVICES_BATCH) {
            let part = self
                .call("ecs:DescribeServices", |w| {
                    w.describe_services(cluster, batch)
                })
                .await?;
            lookup.found.extend(part.found);
            lookup.missing.extend(part.missing);
        }
        Ok(lookup)
    }

    async fn describe_task_definition(&self, arn_or_family: &str) -> CloudResult<TaskDefinition> {
        self.call("ecs:DescribeTaskDefinition", |w| {
            let idx = w.task_defs.resolve(arn_or_family).ok_or_else(|| {
                Fail::not_found(format!(
                    "ClientException: Unable to describe task definition {arn_or_family}."
                ))
            })?;
            Ok(w.task_defs.to_model(idx))
        })
        .await
    }

    async fn list_task_definitions(&self, family: &str, limit: usize) -> CloudResult<Vec<String>> {
        let mut arns: Vec<String> = Vec::new();
        loop {
            let offset = arns.len();
            let want = (limit - offset).min(TASK_DEFINITIONS_PAGE);
            let page = self
                .call("ecs:ListTaskDefinitions", |w| {
                    Ok(w.task_defs
                        .list_active(family)
                        .skip(offset)
                        .take(want)
                        .map(|r| r.arn.clone())
                        .collect::<Vec<_>>())
                })
                .await?;
            let full = page.len() == TASK_DEFINITIONS_PAGE;
            arns.extend(page);
            if !full || arns.len() >= limit {
                return Ok(arns);
            }
        }
    }

    async fn register_task_definition(
        &self,
        spec: &TaskDefinitionSpec,
    ) -> CloudResult<TaskDefinition> {
        self.call("ecs:RegisterTaskDefinition", |w| {
            let idx = w.task_defs.register(&w.region, spec)?;
            Ok(w.task_defs.to_model(idx))
        })
        .await
    }

    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        update: &ServiceUpdate,
    ) -> CloudResult<()> {
        self.call("ecs:UpdateService", |w| {
            w.update_service(cluster, service, update)
        })
        .await
    }

    async fn tag_resource(&self, arn: &str, tags: &BTreeMap<String, String>) -> CloudResult<()> {
        self.call("ecs:TagResource", |w| w.tag_resource(arn, tags))
            .await
    }

    async fn describe_auto_scaling_groups(
        &self,
        names: &[String],
    ) -> CloudResult<Vec<AutoScalingGroup>> {
        let mut groups = Vec::new();
        for batch in names.chunks(AUTO_SCALING_BATCH) {
            let part = self
                .call("autoscaling:DescribeAutoScalingGroups", |w| {
                    Ok(w.describe_auto_scaling_groups(batch))
                })
                .await?;
            groups.extend(part);
        }
        Ok(groups)
    }

    async fn update_auto_scaling_group(&self, name: &str, update: &AsgUpdate) -> CloudResult<()> {
        self.call("autoscaling:UpdateAutoScalingGroup", |w| {
            w.update_auto_scaling_group(name, update)
        })
        .await
    }

    async fn terminate_instance_decrementing(&self, instance_id: &str) -> CloudResult<()> {
        self.call("autoscaling:TerminateInstanceInAutoScalingGroup", |w| {
            w.terminate_instance_decrementing(instance_id)
        })
        .await
    }

    async fn list_container_instances(&self, cluster: &str) -> CloudResult<Vec<ContainerInstance>> {
        // The snapshot is taken by the first page; the other pages and the describe batches
        // are counted and can fail like the real calls.
        let instances = self
            .call("ecs:ListContainerInstances", |w| {
                w.list_container_instances(cluster)
            })
            .await?;
        let pages = instances.len().div_ceil(CONTAINER_INSTANCES_PAGE);
        for _ in 1..pages {
            self.call("ecs:ListContainerInstances", |_| Ok(())).await?;
        }
        for _ in 0..pages {
            self.call("ecs:DescribeContainerInstances", |_| Ok(()))
                .await?;
        }
        Ok(instances)
    }

    async fn update_container_instances_state(
        &self,
        cluster: &str,
        arns: &[String],
        status: &str,
    ) -> CloudResult<()> {
        for batch in arns.chunks(CONTAINER_STATE_BATCH) {
            self.call("ecs:UpdateContainerInstancesState", |w| {
                w.update_container_instances_state(cluster, batch, status)
            })
            .await?;
        }
        Ok(())
    }

    async fn describe_target_groups(&self, names: &[String]) -> CloudResult<Vec<TargetGroup>> {
        let mut groups = Vec::new();
        for batch in names.chunks(TARGET_GROUPS_BATCH) {
            let part = self
                .call("elbv2:DescribeTargetGroups", |w| {
                    Ok(w.describe_target_groups(batch))
                })
                .await?;
            groups.extend(part);
        }
        Ok(groups)
    }

    async fn describe_target_health(
        &self,
        target_group_arn: &str,
    ) -> CloudResult<Vec<TargetHealth>> {
        self.call("elbv2:DescribeTargetHealth", |w| {
            w.describe_target_health(target_group_arn)
        })
        .await
    }

    fn calls(&self) -> &CallCounter {
        &self.calls
    }
}
