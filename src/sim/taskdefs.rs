//! Task definition revisions: registration with the checks ECS makes, lookup by ARN, family or
//! `family:revision`, and the defaults AWS fills in when it returns a definition.

use std::collections::BTreeMap;

use crate::model::TaskDefinition;
use crate::taskdef::TaskDefinitionSpec;

use super::world::{Fail, SimResult, ACCOUNT_ID};

/// The port targets register on when no container maps one.
const DEFAULT_PORT: i32 = 8080;

/// One immutable revision, with what the scheduler needs from it worked out once.
pub(super) struct TaskDefRecord {
    pub arn: String,
    pub revision: i32,
    pub active: bool,
    /// The definition as AWS returns it, with its defaults filled in.
    pub spec: TaskDefinitionSpec,
    pub cpu: u32,
    pub memory: u32,
    pub gpus: u32,
    pub requires_fargate: bool,
    pub requires_ec2: bool,
    pub images: Vec<String>,
    /// The port its tasks register with target groups on.
    pub port: i32,
}

#[derive(Default)]
pub(super) struct TaskDefs {
    pub records: Vec<TaskDefRecord>,
    /// Indices into `records` per family, oldest revision first.
    families: BTreeMap<String, Vec<usize>>,
}

impl TaskDefs {
    /// Registers the next revision of the spec's family and returns its index.
    pub fn register(&mut self, region: &str, spec: &TaskDefinitionSpec) -> SimResult<usize> {
        validate(spec).map_err(|m| Fail::invalid(format!("ClientException: {m}")))?;
        let spec = aws_echo(spec);
        let revisions = self.families.entry(spec.family.clone()).or_default();
        let revision = i32::try_from(revisions.len() + 1).unwrap_or(i32::MAX);
        let compat = spec.requires_compatibilities.as_deref().unwrap_or_default();
        let port = spec
            .container_definitions
            .iter()
            .flat_map(|c| c.port_mappings.iter().flatten())
            .map(|p| p.container_port)
            .next()
            .unwrap_or(DEFAULT_PORT);
        let record = TaskDefRecord {
            arn: format!(
                "arn:aws:ecs:{region}:{ACCOUNT_ID}:task-definition/{}:{revision}",
                spec.family
            ),
            revision,
            active: true,
            cpu: spec.cpu_units(),
            memory: spec.memory_mib(),
            gpus: spec.gpus(),
            requires_fargate: compat.iter().any(|c| c == "FARGATE"),
            requires_ec2: compat.iter().any(|c| c == "EC2"),
            images: spec
                .container_definitions
                .iter()
                .map(|c| c.image.clone())
                .collect(),
            port,
            spec,
        };
        let idx = self.records.len();
        self.records.push(record);
        revisions.push(idx);
        Ok(idx)
    }

    /// Finds a revision by ARN or `family:revision` (any status), or the latest ACTIVE revision
    /// of a bare family.
    pub fn resolve(&self, reference: &str) -> Option<usize> {
        let reference = match reference.split_once(":task-definition/") {
            Some((_, rest)) => rest,
            None => reference,
        };
        match reference.rsplit_once(':') {
            Some((family, revision)) => {
                let revision: usize = revision.parse().ok()?;
                self.families
                    .get(family)?
                    .get(revision.checked_sub(1)?)
                    .copied()
            }
            None => self
                .families
                .get(reference)?
                .iter()
                .rev()
                .copied()
                .find(|&i| self.records[i].active),
        }
    }

    /// ACTIVE revisions of a family, newest first.
    pub fn list_active<'a>(&'a self, family: &str) -> impl Iterator<Item = &'a TaskDefRecord> {
        self.families
            .get(family)
            .into_iter()
            .flatten()
            .rev()
            .map(|&i| &self.records[i])
            .filter(|r| r.active)
    }

    pub fn to_model(&self, idx: usize) -> TaskDefinition {
        let record = &self.records[idx];
        TaskDefinition {
            arn: record.arn.clone(),
            revision: record.revision,
            status: if record.active { "ACTIVE" } else { "INACTIVE" }.to_string(),
            spec: record.spec.clone(),
            unmodelled: Vec::new(),
        }
    }
}

/// The checks RegisterTaskDefinition makes that a manifest could trip over.
fn validate(spec: &TaskDefinitionSpec) -> Result<(), String> {
    let family_ok = !spec.family.is_empty()
        && spec.family.len() <= 255
        && spec
            .family
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !family_ok {
        return Err(format!(
            "Family {:?} must be 1 to 255 letters, numbers, hyphens or underscores.",
            spec.family
        ));
    }
    if spec.container_definitions.is_empty() {
        return Err("Container list cannot be empty.".into());
    }
    for (i, c) in spec.container_definitions.iter().enumerate() {
        if c.name.trim().is_empty() {
            return Err("Container.name should not be null or empty.".into());
        }
        if spec.container_definitions[..i]
            .iter()
            .any(|other| other.name == c.name)
        {
            return Err(format!("Duplicate container name {:?}.", c.name));
        }
        if c.image.trim().is_empty() {
            return Err(format!(
                "Container.image should not be null or empty ({}).",
                c.name
            ));
        }
    }
    let fargate = spec
        .requires_compatibilities
        .iter()
        .flatten()
        .any(|c| c == "FARGATE");
    if fargate {
        if spec.network_mode.as_deref() != Some("awsvpc") {
            return Err("Fargate only supports network mode 'awsvpc'.".into());
        }
        if spec.cpu.is_none() || spec.memory.is_none() {
            return Err(
                "Fargate requires that 'cpu' and 'memory' be defined at the task level.".into(),
            );
        }
    }
    if spec.memory.is_none() {
        if let Some(c) = spec
            .container_definitions
            .iter()
            .find(|c| c.memory.is_none() && c.memory_reservation.is_none())
        {
            return Err(format!(
                "Invalid setting for container '{}'. At least one of 'memory' or \
                 'memoryReservation' must be specified.",
                c.name
            ));
        }
    }
    Ok(())
}

/// The spec as DescribeTaskDefinition returns it: AWS fills in defaults but keeps the order.
fn aws_echo(spec: &TaskDefinitionSpec) -> TaskDefinitionSpec {
    let mut spec = spec.clone();
    let awsvpc = spec.network_mode.as_deref() == Some("awsvpc");
    for c in &mut spec.container_definitions {
        c.essential.get_or_insert(true);
        for p in c.port_mappings.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "tcp".into());
            if awsvpc && p.host_port.is_none() {
                p.host_port = Some(p.container_port);
            }
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taskdef::ContainerDefinition;

    fn spec(family: &str, image: &str) -> TaskDefinitionSpec {
        TaskDefinitionSpec {
            family: family.into(),
            network_mode: Some("awsvpc".into()),
            requires_compatibilities: Some(vec!["FARGATE".into()]),
            cpu: Some("256".into()),
            memory: Some("512".into()),
            container_definitions: vec![ContainerDefinition {
                name: "app".into(),
                image: image.into(),
                ..ContainerDefinition::default()
            }],
            ..TaskDefinitionSpec::default()
        }
    }

    #[test]
    fn revisions_resolve_by_arn_family_and_family_revision() {
        let mut defs = TaskDefs::default();
        let first = defs
            .register("us-east-1", &spec("web", "web:1"))
            .expect("valid spec");
        let second = defs
            .register("us-east-1", &spec("web", "web:2"))
            .expect("valid spec");
        assert_eq!(
            defs.records[second].arn,
            "arn:aws:ecs:us-east-1:123456789012:task-definition/web:2"
        );
        assert_eq!(defs.resolve("web"), Some(second));
        assert_eq!(defs.resolve("web:1"), Some(first));
        assert_eq!(defs.resolve(&defs.records[first].arn), Some(first));
        assert_eq!(defs.resolve("web:3"), None);
        assert_eq!(defs.resolve("api"), None);
        defs.records[second].active = false;
        assert_eq!(defs.resolve("web"), Some(first));
        let listed: Vec<_> = defs.list_active("web").map(|r| r.revision).collect();
        assert_eq!(listed, [1]);
    }

    #[test]
    fn the_echoed_definition_normalizes_to_the_registered_one() {
        let mut defs = TaskDefs::default();
        let mut s = spec("web", "web:1");
        s.container_definitions[0].port_mappings = Some(vec![crate::taskdef::PortMapping {
            container_port: 8080,
            ..Default::default()
        }]);
        let idx = defs.register("us-east-1", &s).expect("valid spec");
        let echoed = &defs.records[idx].spec;
        assert_ne!(echoed, &s);
        assert_eq!(echoed.normalized(), s.normalized());
    }

    #[test]
    fn fargate_definitions_without_task_cpu_are_rejected() {
        let mut defs = TaskDefs::default();
        let mut s = spec("web", "web:1");
        s.cpu = None;
        let err = defs
            .register("us-east-1", &s)
            .expect_err("fargate needs task cpu");
        assert!(err.message.contains("cpu"), "{}", err.message);
    }
}
