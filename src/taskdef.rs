//! The task definition as plain data: the RegisterTaskDefinition document we read from files,
//! build from AWS output, compare in the diff and register again.
//!
//! Only the fields listed here are understood. A file that sets anything else is rejected by
//! name, so a field is never silently dropped between the file and AWS.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A RegisterTaskDefinition request body, in the JSON shape AWS documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskDefinitionSpec {
    pub family: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    /// awsvpc, bridge, host or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// FARGATE, EC2 or EXTERNAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_compatibilities: Option<Vec<String>>,
    /// Task-level CPU units as ECS writes them ("1024").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Task-level memory in MiB as ECS writes it ("2048").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_platform: Option<RuntimePlatform>,
    pub container_definitions: Vec<ContainerDefinition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_constraints: Option<Vec<PlacementConstraint>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimePlatform {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_system_family: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDefinition {
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub essential: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<PortMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Vec<KeyValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<Secret>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_configuration: Option<LogConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// GPU and inference accelerator requirements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_requirements: Option<Vec<ResourceRequirement>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_points: Option<Vec<MountPoint>>,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    pub container_port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
    /// tcp (the default) or udp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    pub name: String,
    pub value: String,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    pub name: String,
    /// Secrets Manager or SSM Parameter Store reference.
    pub value_from: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfiguration {
    pub log_driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i32>,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequirement {
    /// GPU or InferenceAccelerator.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MountPoint {
    pub source_volume: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct PlacementConstraint {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

impl TaskDefinitionSpec {
    pub fn container(&self, name: &str) -> Option<&ContainerDefinition> {
        self.container_definitions.iter().find(|c| c.name == name)
    }

    /// GPUs the task reserves, summed over its containers.
    pub fn gpus(&self) -> u32 {
        self.container_definitions
            .iter()
            .flat_map(|c| c.resource_requirements.iter().flatten())
            .filter(|r| r.kind == "GPU")
            .filter_map(|r| r.value.parse::<u32>().ok())
            .sum()
    }

    /// CPU units the task reserves: the task-level value, else the sum over containers.
    pub fn cpu_units(&self) -> u32 {
        if let Some(cpu) = self.cpu.as_deref().and_then(|c| c.parse().ok()) {
            return cpu;
        }
        self.container_definitions
            .iter()
            .filter_map(|c| c.cpu)
            .map(|c| c.max(0) as u32)
            .sum()
    }

    /// Memory in MiB the task reserves: the task-level value, else the sum over containers.
    pub fn memory_mib(&self) -> u32 {
        if let Some(mem) = self.memory.as_deref().and_then(|m| m.parse().ok()) {
            return mem;
        }
        self.container_definitions
            .iter()
            .filter_map(|c| c.memory.or(c.memory_reservation))
            .map(|m| m.max(0) as u32)
            .sum()
    }

    /// This spec with each named container's image replaced.
    pub fn with_images(mut self, images: &BTreeMap<String, String>) -> Self {
        for container in &mut self.container_definitions {
            if let Some(image) = images.get(&container.name) {
                container.image.clone_from(image);
            }
        }
        self
    }

    /// The spec with what AWS adds or reorders taken out, so that a definition registered from
    /// a file compares equal to what AWS returns for it.
    pub fn normalized(&self) -> Self {
        let mut spec = self.clone();
        let awsvpc = spec.network_mode.as_deref() == Some("awsvpc");
        if let Some(compat) = &mut spec.requires_compatibilities {
            compat.sort();
        }
        for c in &mut spec.container_definitions {
            if c.essential.is_none() {
                c.essential = Some(true);
            }
            if let Some(ports) = &mut c.port_mappings {
                for p in ports.iter_mut() {
                    if p.protocol.is_none() {
                        p.protocol = Some("tcp".into());
                    }
                    if awsvpc && p.host_port.is_none() {
                        p.host_port = Some(p.container_port);
                    }
                }
                ports.sort();
            }
            if let Some(env) = &mut c.environment {
                env.sort();
            }
            if let Some(secrets) = &mut c.secrets {
                secrets.sort();
            }
            if let Some(reqs) = &mut c.resource_requirements {
                reqs.sort();
            }
            if let Some(mounts) = &mut c.mount_points {
                mounts.sort();
            }
            // ECS fills in the health check's timings when a definition leaves them out.
            if let Some(hc) = &mut c.health_check {
                hc.interval.get_or_insert(30);
                hc.timeout.get_or_insert(5);
                hc.retries.get_or_insert(3);
            }
        }
        spec.container_definitions
            .sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(volumes) = &mut spec.volumes {
            volumes.sort();
        }
        if let Some(pc) = &mut spec.placement_constraints {
            pc.sort();
        }
        spec
    }
}
