//! The desired state: the manifest file, its JSON Schema, and validation that reports every
//! problem with the file and `line:column` (or the field path where no position is known).
//!
//! Parsing happens in two layers. The `Raw*` types mirror the YAML exactly and carry source
//! positions; [`load`] checks them and resolves them into [`Manifest`], which is plain data with
//! task definition files already read.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::taskdef::TaskDefinitionSpec;

pub const API_VERSION: &str = "ecs-reconciler/v1";

/// Manifests larger than this are refused before parsing.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Task definition files larger than this are refused before parsing.
const MAX_TASK_DEFINITION_BYTES: usize = 1024 * 1024;
const DEFAULT_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);

/// The desired state of ECS services and the Auto Scaling Groups that give them capacity.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "ecs-reconciler manifest")]
pub struct RawManifest {
    /// Must be `ecs-reconciler/v1`.
    #[schemars(with = "String")]
    pub api_version: Spanned<String>,
    /// AWS region. When absent, the standard AWS region chain decides (AWS_REGION, profile, ...).
    #[serde(default)]
    pub region: Option<String>,
    /// ECS clusters by name.
    #[serde(default)]
    pub clusters: BTreeMap<String, RawCluster>,
}

/// An ECS cluster: its services and the EC2 Auto Scaling Groups that give it capacity.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawCluster {
    /// ECS services in this cluster, by service name.
    #[serde(default)]
    pub services: BTreeMap<String, RawService>,
    /// EC2 Auto Scaling Groups that provide container instances to this cluster, by group name.
    /// Their capacity is raised before services that need it and lowered after them.
    #[serde(default)]
    pub auto_scaling_groups: BTreeMap<String, RawAutoScalingGroup>,
}

/// An ECS service. Only the fields set here are managed; everything else is left as it is.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawService {
    /// Number of tasks to run. Leave it out when an autoscaler owns the count.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub desired_count: Option<Spanned<i64>>,
    /// The task definition to build on: exactly one of `family` or `file`.
    #[schemars(with = "RawTaskDefinitionRef")]
    pub task_definition: Spanned<RawTaskDefinitionRef>,
    /// Container name to image reference; each image needs a tag (`:v1.2`) or a digest
    /// (`@sha256:...`). Overrides the image of that container in the task definition.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub images: BTreeMap<String, Spanned<String>>,
    /// Names of the ELBv2 target groups the service registers with. Their targets must be
    /// healthy for a rollout to count as stable.
    #[serde(default)]
    pub target_groups: Vec<String>,
    /// How a change to this service is rolled out.
    #[serde(default)]
    pub rollout: RawRollout,
}

/// Where the service's task definition comes from.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTaskDefinitionRef {
    /// Build on the latest ACTIVE revision of this family.
    #[serde(default)]
    pub family: Option<String>,
    /// A RegisterTaskDefinition JSON document, relative to the manifest. Every field it sets is
    /// managed.
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRollout {
    /// How long a rollout may take to become stable before it counts as failed, e.g. `10m`.
    /// Default 10m.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// Restore the last known good task definition and count when a rollout fails. Default true.
    #[serde(default)]
    pub rollback: Option<bool>,
}

/// Capacity of an EC2 Auto Scaling Group. Each field is optional; absent fields are not managed.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawAutoScalingGroup {
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub min_size: Option<Spanned<i64>>,
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_size: Option<Spanned<i64>>,
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub desired_capacity: Option<Spanned<i64>>,
}

/// A validated manifest with its task definition files read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub path: PathBuf,
    pub region: Option<String>,
    pub clusters: BTreeMap<String, Cluster>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cluster {
    pub services: BTreeMap<String, ServiceSpec>,
    pub auto_scaling_groups: BTreeMap<String, AutoScalingGroupSpec>,
}

/// The desired state of one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    pub desired_count: Option<i32>,
    pub task_definition: TaskDefinitionSource,
    pub images: BTreeMap<String, String>,
    pub target_groups: Vec<String>,
    pub rollout: RolloutSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskDefinitionSource {
    /// The latest ACTIVE revision of the family is the base.
    Family(String),
    /// The document read from the file is the base. The path is left out of the fingerprint:
    /// the same content read from another checkout is the same desired state.
    File {
        #[serde(skip)]
        path: PathBuf,
        spec: Box<TaskDefinitionSpec>,
    },
}

impl TaskDefinitionSource {
    pub fn family(&self) -> &str {
        match self {
            TaskDefinitionSource::Family(f) => f,
            TaskDefinitionSource::File { spec, .. } => &spec.family,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutSpec {
    #[serde(with = "humantime_serde_secs")]
    pub timeout: Duration,
    pub rollback: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoScalingGroupSpec {
    pub min_size: Option<i32>,
    pub max_size: Option<i32>,
    pub desired_capacity: Option<i32>,
}

mod humantime_serde_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

impl ServiceSpec {
    /// A stable fingerprint of this desired state, used to tell whether the manifest changed
    /// for a service (quarantine lifts only then).
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{:016x}", fnv1a(json.as_bytes()))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Manifest {
    /// Every (cluster, service name, spec), in a stable order.
    pub fn services(&self) -> impl Iterator<Item = (&str, &str, &ServiceSpec)> {
        self.clusters.iter().flat_map(|(c, cluster)| {
            cluster
                .services
                .iter()
                .map(move |(s, spec)| (c.as_str(), s.as_str(), spec))
        })
    }

    /// Every (cluster, group name, spec), in a stable order.
    pub fn auto_scaling_groups(&self) -> impl Iterator<Item = (&str, &str, &AutoScalingGroupSpec)> {
        self.clusters.iter().flat_map(|(c, cluster)| {
            cluster
                .auto_scaling_groups
                .iter()
                .map(move |(a, spec)| (c.as_str(), a.as_str(), spec))
        })
    }
}

/// Where a problem is: a position in a file, or a field path when no position is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(col)) = (self.line, self.column) {
            write!(f, ":{line}:{col}")?;
        }
        write!(f, ": ")?;
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every problem found in a manifest.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Invalid {
    pub problems: Vec<Problem>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid manifest ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// The JSON Schema of the manifest, pretty-printed, as `ecs-reconciler schema` prints it.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(RawManifest);
    let mut out = serde_json::to_string_pretty(&schema).unwrap_or_default();
    out.push('\n');
    out
}

/// Reads, parses and validates a manifest file and the task definition files it names.
pub fn load(path: &Path) -> Result<Manifest, Invalid> {
    let problem = |message: String| Invalid {
        problems: vec![Problem {
            file: path.to_path_buf(),
            line: None,
            column: None,
            path: None,
            message,
        }],
    };
    let meta = std::fs::metadata(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    if meta.len() > MAX_MANIFEST_BYTES as u64 {
        return Err(problem(format!(
            "file is {} bytes; manifests are limited to {MAX_MANIFEST_BYTES} bytes",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    parse(path, &text)
}

/// Parses and validates manifest text; `path` names the file in errors and anchors relative
/// task definition paths.
pub fn parse(path: &Path, text: &str) -> Result<Manifest, Invalid> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(Invalid {
            problems: vec![Problem {
                file: path.to_path_buf(),
                line: None,
                column: None,
                path: None,
                message: format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
            }],
        });
    }
    let raw: RawManifest =
        serde_saphyr::from_str_with_options(text, parse_options()).map_err(|e| Invalid {
            problems: vec![syntax_problem(path, text, &e)],
        })?;
    Validator {
        file: path.to_path_buf(),
        problems: Vec::new(),
    }
    .resolve(raw)
}

fn parse_options() -> serde_saphyr::Options {
    // Limits sized for a manifest: far above any real one, far below what an attacker needs.
    let budget = serde_saphyr::Budget {
        max_reader_input_bytes: Some(MAX_MANIFEST_BYTES),
        max_events: 200_000,
        max_aliases: 1_000,
        max_anchors: 1_000,
        max_depth: 64,
        max_documents: 1,
        max_nodes: 100_000,
        max_total_scalar_bytes: MAX_MANIFEST_BYTES,
        ..serde_saphyr::Budget::default()
    };
    serde_saphyr::Options {
        budget: Some(budget),
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::Error,
        alias_limits: serde_saphyr::options::AliasLimits {
            max_total_replayed_events: 10_000,
            max_replay_stack_depth: 16,
            max_alias_expansions_per_anchor: 100,
        },
        strict_booleans: true,
        with_snippet: false,
        ..serde_saphyr::Options::default()
    }
}

fn syntax_problem(file: &Path, text: &str, err: &serde_saphyr::Error) -> Problem {
    let location = err.location().filter(|l| l.line() > 0);
    let mut message = err.to_string();
    // The parser's own message repeats the position; ours is printed in front already.
    if let Some(idx) = message.find(" at line ") {
        message.truncate(idx);
    }
    let mut position = location.map(|l| (l.line(), l.column()));
    // The parser places an unknown field at the start of its mapping; the key itself is more
    // useful, and it is the first `key:` from there on.
    if let (Some((line, _)), Some(key)) = (position, unknown_field(&message)) {
        position = find_key(text, line, key).or(position);
    }
    Problem {
        file: file.to_path_buf(),
        line: position.map(|p| p.0),
        column: position.map(|p| p.1),
        path: None,
        message,
    }
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// The 1-based line and column of the first `key:` at or after `from_line`.
fn find_key(text: &str, from_line: u64, key: &str) -> Option<(u64, u64)> {
    let needle = format!("{key}:");
    text.lines()
        .enumerate()
        .skip(from_line.saturating_sub(1) as usize)
        .find_map(|(i, line)| {
            let col = line.find(&needle)?;
            let before = line[..col].chars().last();
            let starts_key = before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',');
            starts_key.then_some((i as u64 + 1, col as u64 + 1))
        })
}

struct Validator {
    file: PathBuf,
    problems: Vec<Problem>,
}

impl Validator {
    fn at(&mut self, loc: Option<serde_saphyr::Location>, path: &str, message: impl Into<String>) {
        let loc = loc.filter(|l| l.line() > 0);
        self.problems.push(Problem {
            file: self.file.clone(),
            line: loc.map(|l| l.line()),
            column: loc.map(|l| l.column()),
            path: Some(path.to_string()),
            message: message.into(),
        });
    }

    fn count(&mut self, value: &Option<Spanned<i64>>, path: &str) -> Option<i32> {
        let v = value.as_ref()?;
        if v.value < 0 {
            self.at(
                Some(v.referenced),
                path,
                format!("must not be negative, got {}", v.value),
            );
            return None;
        }
        match i32::try_from(v.value) {
            Ok(n) => Some(n),
            Err(_) => {
                self.at(
                    Some(v.referenced),
                    path,
                    format!("{} is too large", v.value),
                );
                None
            }
        }
    }

    fn resolve(mut self, raw: RawManifest) -> Result<Manifest, Invalid> {
        if raw.api_version.value != API_VERSION {
            self.at(
                Some(raw.api_version.referenced),
                "apiVersion",
                format!(
                    "unknown apiVersion {:?}; expected {API_VERSION:?}",
                    raw.api_version.value
                ),
            );
        }
        let base_dir = self
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut clusters = BTreeMap::new();
        for (cname, rc) in raw.clusters {
            let mut cluster = Cluster::default();
            for (aname, ra) in rc.auto_scaling_groups {
                let p = format!("clusters.{cname}.autoScalingGroups.{aname}");
                let spec = self.asg(&p, &ra);
                cluster.auto_scaling_groups.insert(aname, spec);
            }
            for (sname, rs) in rc.services {
                let p = format!("clusters.{cname}.services.{sname}");
                if let Some(spec) = self.service(&p, rs, &base_dir) {
                    cluster.services.insert(sname, spec);
                }
            }
            clusters.insert(cname, cluster);
        }
        if self.problems.is_empty() {
            Ok(Manifest {
                path: self.file,
                region: raw.region,
                clusters,
            })
        } else {
            Err(Invalid {
                problems: self.problems,
            })
        }
    }

    fn asg(&mut self, p: &str, ra: &RawAutoScalingGroup) -> AutoScalingGroupSpec {
        let spec = AutoScalingGroupSpec {
            min_size: self.count(&ra.min_size, &format!("{p}.minSize")),
            max_size: self.count(&ra.max_size, &format!("{p}.maxSize")),
            desired_capacity: self.count(&ra.desired_capacity, &format!("{p}.desiredCapacity")),
        };
        let loc = |s: &Option<Spanned<i64>>| s.as_ref().map(|s| s.referenced);
        if let (Some(min), Some(max)) = (spec.min_size, spec.max_size) {
            if min > max {
                self.at(
                    loc(&ra.min_size),
                    &format!("{p}.minSize"),
                    format!("minSize {min} is above maxSize {max}"),
                );
            }
        }
        if let Some(desired) = spec.desired_capacity {
            let at = loc(&ra.desired_capacity);
            if let Some(min) = spec.min_size.filter(|min| desired < *min) {
                self.at(
                    at,
                    &format!("{p}.desiredCapacity"),
                    format!("desiredCapacity {desired} is below minSize {min}"),
                );
            }
            if let Some(max) = spec.max_size.filter(|max| desired > *max) {
                self.at(
                    at,
                    &format!("{p}.desiredCapacity"),
                    format!("desiredCapacity {desired} is above maxSize {max}"),
                );
            }
        }
        spec
    }

    fn service(&mut self, p: &str, rs: RawService, base_dir: &Path) -> Option<ServiceSpec> {
        let desired_count = self.count(&rs.desired_count, &format!("{p}.desiredCount"));

        let mut images = BTreeMap::new();
        for (container, image) in &rs.images {
            if let Err(why) = check_image(&image.value) {
                self.at(
                    Some(image.referenced),
                    &format!("{p}.images.{container}"),
                    why,
                );
            }
            images.insert(container.clone(), image.value.clone());
        }

        let td_path = format!("{p}.taskDefinition");
        let td_loc = Some(rs.task_definition.referenced);
        let task_definition = match (
            &rs.task_definition.value.family,
            &rs.task_definition.value.file,
        ) {
            (Some(_), Some(_)) => {
                self.at(td_loc, &td_path, "set either family or file, not both");
                None
            }
            (None, None) => {
                self.at(td_loc, &td_path, "set one of family or file");
                None
            }
            (Some(family), None) if family.trim().is_empty() => {
                self.at(td_loc, &format!("{td_path}.family"), "must not be empty");
                None
            }
            (Some(family), None) => Some(TaskDefinitionSource::Family(family.clone())),
            (None, Some(file)) => {
                self.task_definition_file(&format!("{td_path}.file"), td_loc, base_dir, file)
            }
        };

        if let Some(TaskDefinitionSource::File { spec, .. }) = &task_definition {
            for (container, image) in &rs.images {
                if spec.container(container).is_none() {
                    let names: Vec<_> = spec
                        .container_definitions
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect();
                    self.at(
                        Some(image.referenced),
                        &format!("{p}.images.{container}"),
                        format!(
                            "the task definition has no container named {container:?} (it has: {})",
                            names.join(", ")
                        ),
                    );
                }
            }
        }

        let timeout = match &rs.rollout.timeout {
            None => DEFAULT_ROLLOUT_TIMEOUT,
            Some(t) => match humantime::parse_duration(&t.value) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.at(
                        Some(t.referenced),
                        &format!("{p}.rollout.timeout"),
                        "must be longer than zero",
                    );
                    DEFAULT_ROLLOUT_TIMEOUT
                }
                Err(e) => {
                    self.at(
                        Some(t.referenced),
                        &format!("{p}.rollout.timeout"),
                        format!("{:?} is not a duration like 10m or 90s: {e}", t.value),
                    );
                    DEFAULT_ROLLOUT_TIMEOUT
                }
            },
        };

        Some(ServiceSpec {
            desired_count,
            task_definition: task_definition?,
            images,
            target_groups: rs.target_groups,
            rollout: RolloutSpec {
                timeout,
                rollback: rs.rollout.rollback.unwrap_or(true),
            },
        })
    }

    fn task_definition_file(
        &mut self,
        path: &str,
        loc: Option<serde_saphyr::Location>,
        base_dir: &Path,
        file: &str,
    ) -> Option<TaskDefinitionSource> {
        let full = base_dir.join(file);
        let text = match std::fs::metadata(&full) {
            Ok(m) if m.len() > MAX_TASK_DEFINITION_BYTES as u64 => {
                self.at(
                    loc,
                    path,
                    format!(
                        "{} is larger than {MAX_TASK_DEFINITION_BYTES} bytes",
                        full.display()
                    ),
                );
                return None;
            }
            Ok(_) => std::fs::read_to_string(&full),
            Err(e) => Err(e),
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                self.at(
                    loc,
                    path,
                    format!("cannot read task definition file {}: {e}", full.display()),
                );
                return None;
            }
        };
        match serde_json::from_str::<TaskDefinitionSpec>(&text) {
            Ok(spec) => {
                if spec.container_definitions.is_empty() {
                    self.problems.push(Problem {
                        file: full.clone(),
                        line: None,
                        column: None,
                        path: Some("containerDefinitions".into()),
                        message: "a task definition needs at least one container".into(),
                    });
                    return None;
                }
                Some(TaskDefinitionSource::File {
                    path: full,
                    spec: Box::new(spec),
                })
            }
            Err(e) => {
                // The JSON parser knows the position inside the task definition file.
                self.problems.push(Problem {
                    file: full,
                    line: Some(e.line() as u64),
                    column: Some(e.column() as u64),
                    path: None,
                    message: strip_json_position(&e.to_string()),
                });
                None
            }
        }
    }
}

fn strip_json_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(idx) => message[..idx].to_string(),
        None => message.to_string(),
    }
}

/// An image reference needs a tag or a digest: `latest` by default is how rollbacks go wrong.
fn check_image(image: &str) -> Result<(), String> {
    if image.trim().is_empty() {
        return Err("image must not be empty".into());
    }
    if image.contains(char::is_whitespace) {
        return Err(format!("image {image:?} contains white space"));
    }
    if let Some((_, digest)) = image.split_once('@') {
        let ok = digest
            .split_once(':')
            .is_some_and(|(alg, hex)| !alg.is_empty() && !hex.is_empty());
        return if ok {
            Ok(())
        } else {
            Err(format!("image {image:?} has a malformed digest"))
        };
    }
    // A tag is a colon after the last slash; a colon before it is a registry port.
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => Ok(()),
        _ => Err(format!(
            "image {image:?} has no tag or digest; pin a tag (:v1.2.3) or a digest (@sha256:...)"
        )),
    }
}

#[cfg(test)]
mod tests;
