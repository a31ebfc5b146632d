//! Scenario files: the seed, timings, faults and starting state of a simulated run, in YAML;
//! and the seed plan that turns a manifest (drifted or not) plus a scenario into a world.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::manifest::{Manifest, TaskDefinitionSource};
use crate::taskdef::{ContainerDefinition, PortMapping, ResourceRequirement, TaskDefinitionSpec};

use super::autoscaling::InstanceType;
use super::faults::Faults;
use super::world::{World, ACCOUNT_ID};
use super::{SimConfig, Timings};

/// Scenario files larger than this are refused before parsing.
const MAX_SCENARIO_BYTES: u64 = 1024 * 1024;
/// The desired count of a service whose manifest leaves the count to an autoscaler.
const UNMANAGED_DESIRED_COUNT: i32 = 2;
/// What a service's containers listen on, and where targets register.
const SERVICE_PORT: i32 = 8080;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("failed to read scenario {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse scenario")]
    Parse(#[source] serde_saphyr::Error),
    #[error("failed to load scenario: {0}")]
    Invalid(String),
    #[error(
        "failed to seed the simulator: the scenario sets fromManifest but no manifest was given"
    )]
    ManifestMissing,
}

/// A simulated run: how the world starts and what goes wrong in it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    /// Seed of every random draw. Default 1.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Simulated seconds per real second. Default 1.
    #[serde(default)]
    pub speed: Option<f64>,
    /// Region in ARNs. Default: the manifest's, else us-east-1.
    #[serde(default)]
    pub region: Option<String>,
    /// The step the world moves in, e.g. `1s`.
    #[serde(default)]
    pub tick: Option<String>,
    #[serde(default)]
    pub timings: ScenarioTimings,
    #[serde(default)]
    pub faults: ScenarioFaults,
    /// Create everything the manifest names, before `clusters` adds or overrides.
    #[serde(default)]
    pub from_manifest: Option<FromManifest>,
    /// Services and groups to create, or fields to override on those seeded from the manifest.
    #[serde(default)]
    pub clusters: BTreeMap<String, ScenarioCluster>,
}

/// Durations like `20s` or `1m 30s`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioTimings {
    #[serde(default)]
    pub task_start: Option<String>,
    #[serde(default)]
    pub launch: Option<String>,
    #[serde(default)]
    pub health_check: Option<String>,
    #[serde(default)]
    pub deregistration: Option<String>,
    #[serde(default)]
    pub termination: Option<String>,
    #[serde(default)]
    pub completion: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioFaults {
    #[serde(default)]
    pub crash_image: Option<String>,
    #[serde(default)]
    pub unhealthy_image: Option<String>,
    #[serde(default)]
    pub max_launchable_instances: Option<u32>,
    #[serde(default)]
    pub max_launchable_instances_by_group: BTreeMap<String, u32>,
    #[serde(default)]
    pub throttle_rate: Option<f64>,
    #[serde(default)]
    pub error_rate: Option<f64>,
    #[serde(default)]
    pub latency: Option<String>,
    /// Operations that fail with access denied, e.g. `[ecs:UpdateService]`.
    #[serde(default)]
    pub denied_operations: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromManifest {
    /// Start out of line with the manifest: older image tags, other desired counts, smaller
    /// groups.
    #[serde(default)]
    pub drift: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioCluster {
    #[serde(default)]
    pub services: BTreeMap<String, ScenarioService>,
    #[serde(default)]
    pub auto_scaling_groups: BTreeMap<String, ScenarioAsg>,
}

/// A service to create, or the fields to change on one seeded from the manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioService {
    /// Task definition family. Default: the service name.
    #[serde(default)]
    pub family: Option<String>,
    /// Container name to image.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    #[serde(default)]
    pub desired_count: Option<u32>,
    /// Run on Fargate instead of the cluster's instances. Default: Fargate unless the task
    /// needs GPUs.
    #[serde(default)]
    pub fargate: Option<bool>,
    /// Task CPU units.
    #[serde(default)]
    pub cpu: Option<u32>,
    /// Task memory in MiB.
    #[serde(default)]
    pub memory: Option<u32>,
    /// GPUs for the first container.
    #[serde(default)]
    pub gpus: Option<u32>,
    #[serde(default)]
    pub target_groups: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioAsg {
    #[serde(default)]
    pub min_size: Option<u32>,
    #[serde(default)]
    pub max_size: Option<u32>,
    #[serde(default)]
    pub desired_capacity: Option<u32>,
    /// Default g5.xlarge.
    #[serde(default)]
    pub instance_type: Option<String>,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let read = |source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::Invalid(format!(
                "{} is {size} bytes; scenarios are limited to {MAX_SCENARIO_BYTES}",
                path.display()
            )));
        }
        Self::parse(&std::fs::read_to_string(path).map_err(read)?)
    }

    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        serde_saphyr::from_str(text).map_err(ScenarioError::Parse)
    }

    /// The simulator settings this scenario asks for.
    pub fn config(&self, region: String) -> Result<SimConfig, ScenarioError> {
        let defaults = Timings::default();
        let t = &self.timings;
        let timings = Timings {
            task_start: duration("timings.taskStart", &t.task_start, defaults.task_start)?,
            launch: duration("timings.launch", &t.launch, defaults.launch)?,
            health_check: duration(
                "timings.healthCheck",
                &t.health_check,
                defaults.health_check,
            )?,
            deregistration: duration(
                "timings.deregistration",
                &t.deregistration,
                defaults.deregistration,
            )?,
            termination: duration("timings.termination", &t.termination, defaults.termination)?,
            completion: duration("timings.completion", &t.completion, defaults.completion)?,
        };
        let f = &self.faults;
        let faults = Faults {
            crash_image: f.crash_image.clone(),
            unhealthy_image: f.unhealthy_image.clone(),
            max_launchable_instances: f.max_launchable_instances,
            max_launchable_instances_by_group: f.max_launchable_instances_by_group.clone(),
            throttle_rate: rate("faults.throttleRate", f.throttle_rate)?,
            error_rate: rate("faults.errorRate", f.error_rate)?,
            latency: duration("faults.latency", &f.latency, Duration::ZERO)?,
            denied_operations: f.denied_operations.iter().cloned().collect(),
        };
        let speed = self.speed.unwrap_or(1.0);
        if !(speed.is_finite() && speed > 0.0) {
            return Err(ScenarioError::Invalid(format!(
                "speed must be above zero, got {speed}"
            )));
        }
        let tick = duration("tick", &self.tick, Duration::from_secs(1))?;
        if tick.is_zero() {
            return Err(ScenarioError::Invalid(
                "tick must be longer than zero".into(),
            ));
        }
        Ok(SimConfig {
            seed: self.seed.unwrap_or(1),
            speed,
            region,
            tick,
            timings,
            faults,
        })
    }

    /// What to create: the manifest's resources if asked for, then the scenario's own.
    pub(super) fn plan(&self, manifest: Option<&Manifest>) -> Result<SeedPlan, ScenarioError> {
        let mut plan = match &self.from_manifest {
            Some(from) => {
                SeedPlan::from_manifest(manifest.ok_or(ScenarioError::ManifestMissing)?, from.drift)
            }
            None => SeedPlan::default(),
        };
        for (cluster, spec) in &self.clusters {
            plan.clusters.insert(cluster.clone());
            for (name, asg) in &spec.auto_scaling_groups {
                plan.override_asg(cluster, name, asg)?;
            }
            for (name, service) in &spec.services {
                plan.override_service(cluster, name, service)?;
            }
        }
        Ok(plan)
    }
}

fn duration(
    field: &str,
    value: &Option<String>,
    default: Duration,
) -> Result<Duration, ScenarioError> {
    match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            ScenarioError::Invalid(format!(
                "{field}: {text:?} is not a duration like 20s or 1m: {e}"
            ))
        }),
    }
}

fn rate(field: &str, value: Option<f64>) -> Result<f64, ScenarioError> {
    let value = value.unwrap_or(0.0);
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ScenarioError::Invalid(format!(
            "{field} must be between 0 and 1, got {value}"
        )))
    }
}

pub(super) struct SeedAsg {
    cluster: String,
    min: i32,
    max: i32,
    desired: i32,
    instance_type: InstanceType,
}

pub(super) struct SeedService {
    spec: TaskDefinitionSpec,
    desired: i32,
    fargate: Option<bool>,
    target_groups: Vec<String>,
}

/// Everything to create, settled before anything is created so that scenario overrides apply
/// field by field to what the manifest implies.
#[derive(Default)]
pub(super) struct SeedPlan {
    clusters: BTreeSet<String>,
    asgs: BTreeMap<String, SeedAsg>,
    services: BTreeMap<(String, String), SeedService>,
}

impl SeedPlan {
    pub fn from_manifest(manifest: &Manifest, drift: bool) -> Self {
        let mut plan = SeedPlan::default();
        plan.clusters.extend(manifest.clusters.keys().cloned());
        for (cluster, name, spec) in manifest.auto_scaling_groups() {
            let desired = spec.desired_capacity.or(spec.min_size).unwrap_or(1);
            let min = spec.min_size.unwrap_or(0).min(desired);
            let max = spec.max_size.unwrap_or(desired.max(1) * 2).max(desired);
            let (min, max, desired) = if drift {
                shrink(min, max, desired)
            } else {
                (min, max, desired)
            };
            let seed = SeedAsg {
                cluster: cluster.to_string(),
                min,
                max,
                desired,
                instance_type: InstanceType::default(),
            };
            plan.asgs.insert(name.to_string(), seed);
        }
        for (cluster, name, spec) in manifest.services() {
            let mut task_definition = match &spec.task_definition {
                TaskDefinitionSource::File { spec: file, .. } => {
                    file.clone().with_images(&spec.images)
                }
                TaskDefinitionSource::Family(family) => family_spec(family, &spec.images),
            };
            if drift {
                for container in &mut task_definition.container_definitions {
                    container.image = older_image(&container.image);
                }
            }
            let desired = match spec.desired_count {
                Some(n) if drift => {
                    if n > 0 {
                        n - 1
                    } else {
                        1
                    }
                }
                Some(n) => n,
                None => UNMANAGED_DESIRED_COUNT,
            };
            let seed = SeedService {
                spec: task_definition,
                desired,
                fargate: None,
                target_groups: spec.target_groups.clone(),
            };
            plan.services
                .insert((cluster.to_string(), name.to_string()), seed);
        }
        plan
    }

    fn override_asg(
        &mut self,
        cluster: &str,
        name: &str,
        over: &ScenarioAsg,
    ) -> Result<(), ScenarioError> {
        let path = format!("clusters.{cluster}.autoScalingGroups.{name}");
        let count = |v: Option<u32>| v.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        let instance_type = match &over.instance_type {
            Some(kind) => Some(InstanceType::named(kind).ok_or_else(|| {
                let known: Vec<_> = InstanceType::known_names().collect();
                ScenarioError::Invalid(format!(
                    "{path}.instanceType: unknown type {kind:?} (known: {})",
                    known.join(", ")
                ))
            })?),
            None => None,
        };
        let seed = self.asgs.entry(name.to_string()).or_insert_with(|| {
            let desired = count(over.desired_capacity.or(over.min_size)).unwrap_or(1);
            SeedAsg {
                cluster: cluster.to_string(),
                min: 0,
                max: desired.max(1) * 2,
                desired,
                instance_type: InstanceType::default(),
            }
        });
        seed.cluster = cluster.to_string();
        seed.min = count(over.min_size).unwrap_or(seed.min);
        seed.max = count(over.max_size).unwrap_or(seed.max);
        seed.desired = count(over.desired_capacity).unwrap_or(seed.desired);
        if let Some(kind) = instance_type {
            seed.instance_type = kind;
        }
        if !(seed.min <= seed.desired && seed.desired <= seed.max) {
            return Err(ScenarioError::Invalid(format!(
                "{path}: need minSize {} <= desiredCapacity {} <= maxSize {}",
                seed.min, seed.desired, seed.max
            )));
        }
        Ok(())
    }

    fn override_service(
        &mut self,
        cluster: &str,
        name: &str,
        over: &ScenarioService,
    ) -> Result<(), ScenarioError> {
        let key = (cluster.to_string(), name.to_string());
        let seed = self.services.entry(key).or_insert_with(|| SeedService {
            spec: family_spec(over.family.as_deref().unwrap_or(name), &over.images),
            desired: UNMANAGED_DESIRED_COUNT,
            fargate: None,
            target_groups: Vec::new(),
        });
        let spec = &mut seed.spec;
        if let Some(family) = &over.family {
            spec.family.clone_from(family);
        }
        for (container, image) in &over.images {
            let target = spec
                .container_definitions
                .iter_mut()
                .find(|c| c.name == *container);
            let target = target.ok_or_else(|| {
                ScenarioError::Invalid(format!(
                    "clusters.{cluster}.services.{name}.images: the task definition has no \
                     container {container:?}"
                ))
            })?;
            target.image.clone_from(image);
        }
        if let Some(cpu) = over.cpu {
            spec.cpu = Some(cpu.to_string());
        }
        if let Some(memory) = over.memory {
            spec.memory = Some(memory.to_string());
        }
        if let Some(gpus) = over.gpus {
            if let Some(first) = spec.container_definitions.first_mut() {
                let requirements = first.resource_requirements.get_or_insert_with(Vec::new);
                requirements.retain(|r| r.kind != "GPU");
                if gpus > 0 {
                    requirements.push(ResourceRequirement {
                        kind: "GPU".into(),
                        value: gpus.to_string(),
                    });
                }
            }
        }
        if let Some(n) = over.desired_count {
            seed.desired = i32::try_from(n).unwrap_or(i32::MAX);
        }
        if let Some(groups) = &over.target_groups {
            seed.target_groups.clone_from(groups);
        }
        // Fargate has no GPUs, so adding one moves the task to the cluster's instances unless
        // the scenario says otherwise. Compatibilities change only when asked, so a manifest's
        // task definition file is not drifted by accident.
        let fargate = match over.fargate {
            Some(fargate) => Some(fargate),
            None if over.gpus.is_some_and(|g| g > 0) => Some(false),
            None => None,
        };
        if let Some(fargate) = fargate {
            seed.fargate = Some(fargate);
            let compat = if fargate { "FARGATE" } else { "EC2" };
            seed.spec.requires_compatibilities = Some(vec![compat.into()]);
        }
        Ok(())
    }

    /// Creates the planned world. Returns the services it had to leave out, and why.
    pub fn seed(self, world: &mut World) -> Vec<String> {
        for cluster in &self.clusters {
            world.ensure_cluster(cluster);
        }
        for (name, asg) in self.asgs {
            world.seed_auto_scaling_group(
                &name,
                Some(&asg.cluster),
                (asg.min, asg.max, asg.desired),
                asg.instance_type,
            );
        }
        let mut skipped = Vec::new();
        for ((cluster, name), service) in self.services {
            let region = world.region.clone();
            let td = match world.task_defs.register(&region, &service.spec) {
                Ok(td) => td,
                Err(fail) => {
                    skipped.push(format!("service {cluster}/{name}: {}", fail.message));
                    continue;
                }
            };
            let record = &world.task_defs.records[td];
            let has_instances = world
                .asgs
                .values()
                .any(|a| a.cluster.as_deref() == Some(cluster.as_str()));
            // Without instances to run on, a task definition that allows Fargate runs there.
            let fargate = service
                .fargate
                .unwrap_or(record.requires_fargate || (!record.requires_ec2 && !has_instances));
            let target_groups = service
                .target_groups
                .iter()
                .map(|g| world.ensure_target_group(g))
                .collect();
            world.seed_service(&cluster, &name, td, service.desired, fargate, target_groups);
        }
        skipped
    }
}

/// A group one instance smaller than asked, still valid.
fn shrink(min: i32, max: i32, desired: i32) -> (i32, i32, i32) {
    if desired > 0 {
        (min.min(desired - 1), max, desired - 1)
    } else {
        (min, (max - 1).max(desired), desired)
    }
}

/// A plausible revision of a family the manifest builds on: Fargate, awsvpc, one container per
/// image, the first listening on 8080.
fn family_spec(family: &str, images: &BTreeMap<String, String>) -> TaskDefinitionSpec {
    let mut containers: Vec<ContainerDefinition> = images
        .iter()
        .map(|(name, image)| ContainerDefinition {
            name: name.clone(),
            image: image.clone(),
            essential: Some(true),
            ..ContainerDefinition::default()
        })
        .collect();
    if containers.is_empty() {
        containers.push(ContainerDefinition {
            name: "app".into(),
            image: format!("{ACCOUNT_ID}.dkr.ecr.us-east-1.amazonaws.com/{family}:1.0.0"),
            essential: Some(true),
            ..ContainerDefinition::default()
        });
    }
    containers[0].port_mappings = Some(vec![PortMapping {
        container_port: SERVICE_PORT,
        ..PortMapping::default()
    }]);
    TaskDefinitionSpec {
        family: family.to_string(),
        network_mode: Some("awsvpc".into()),
        requires_compatibilities: Some(vec!["FARGATE".into()]),
        cpu: Some("512".into()),
        memory: Some("1024".into()),
        container_definitions: containers,
        ..TaskDefinitionSpec::default()
    }
}

/// The image one release back: the last number in the tag lowered by one (`v1.4.2` becomes
/// `v1.4.1`), else `-prev` appended to the tag; a digest gets its last digit changed.
fn older_image(image: &str) -> String {
    if let Some((name, digest)) = image.split_once('@') {
        let mut digest = digest.to_string();
        let last = digest.pop();
        digest.push(if last == Some('0') { '1' } else { '0' });
        return format!("{name}@{digest}");
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(colon) => {
            let (base, tag) = image.split_at(name_start + colon + 1);
            format!("{base}{}", older_tag(tag))
        }
        None => format!("{image}:prev"),
    }
}

fn older_tag(tag: &str) -> String {
    let bytes = tag.as_bytes();
    if let Some(end) = bytes.iter().rposition(u8::is_ascii_digit) {
        let start = bytes[..end]
            .iter()
            .rposition(|b| !b.is_ascii_digit())
            .map_or(0, |i| i + 1);
        if let Ok(n) = tag[start..=end].parse::<u64>() {
            if n > 0 {
                return format!("{}{}{}", &tag[..start], n - 1, &tag[end + 1..]);
            }
        }
    }
    format!("{tag}-prev")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_lowers_the_last_number_of_a_tag_or_marks_it_prev() {
        assert_eq!(older_image("repo/app:v1.4.2"), "repo/app:v1.4.1");
        assert_eq!(
            older_image("registry:5000/app:v2.10"),
            "registry:5000/app:v2.9"
        );
        assert_eq!(older_image("repo/app:v1.0"), "repo/app:v1.0-prev");
        assert_eq!(older_image("repo/app:latest"), "repo/app:latest-prev");
        assert_eq!(older_image("repo/app@sha256:abc0"), "repo/app@sha256:abc1");
    }

    #[test]
    fn a_shrunk_group_stays_valid() {
        assert_eq!(shrink(2, 4, 2), (1, 4, 1));
        assert_eq!(shrink(0, 3, 0), (0, 2, 0));
        assert_eq!(shrink(0, 0, 0), (0, 0, 0));
    }

    #[test]
    fn a_scenario_with_an_unknown_field_is_rejected() {
        let err = Scenario::parse("seed: 1\nfautls: {}\n").expect_err("typo in a field name");
        let cause = std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(cause.contains("fautls"), "{err}: {cause}");
    }

    #[test]
    fn a_scenario_reads_durations_rates_and_faults() {
        let scenario = Scenario::parse(
            "seed: 42\nspeed: 10\ntimings: {taskStart: 5s, launch: 2m}\n\
             faults: {crashImage: ':broken', throttleRate: 0.1, latency: 50ms}\n",
        )
        .expect("valid scenario");
        let config = scenario.config("eu-west-1".into()).expect("valid settings");
        assert_eq!(config.seed, 42);
        assert_eq!(config.speed, 10.0);
        assert_eq!(config.timings.task_start, Duration::from_secs(5));
        assert_eq!(config.timings.launch, Duration::from_secs(120));
        assert_eq!(config.faults.crash_image.as_deref(), Some(":broken"));
        assert_eq!(config.faults.latency, Duration::from_millis(50));
        assert_eq!(config.faults.throttle_rate, 0.1);
    }
}
