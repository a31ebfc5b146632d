//! Observed (live) state as plain data: what the cloud adapters return and the diff reads.
//!
//! These types carry only what the controller decides on. Both the AWS adapter and the
//! simulator produce them, so nothing above the adapter ever sees an SDK type.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::taskdef::TaskDefinitionSpec;

/// A registered task definition revision. Revisions are immutable, so this can be cached by ARN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskDefinition {
    pub arn: String,
    pub revision: i32,
    /// ACTIVE or INACTIVE.
    pub status: String,
    pub spec: TaskDefinitionSpec,
    /// Fields the revision sets that [`TaskDefinitionSpec`] cannot carry. A revision registered
    /// from this one would lose them, so the controller refuses to build on it.
    pub unmodelled: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    Primary,
    Active,
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    InProgress,
    Completed,
    Failed,
}

/// One deployment of a service, as DescribeServices reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    pub id: String,
    pub status: DeploymentStatus,
    pub task_definition: String,
    pub desired_count: i32,
    pub running_count: i32,
    pub pending_count: i32,
    pub failed_tasks: i32,
    pub rollout_state: Option<RolloutState>,
    pub rollout_state_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceEvent {
    pub id: String,
    /// Seconds since the epoch, as ECS stamps the event.
    pub created_at: i64,
    pub message: String,
}

/// An ECS service as DescribeServices reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub arn: String,
    pub name: String,
    pub cluster: String,
    /// ACTIVE, DRAINING or INACTIVE.
    pub status: String,
    pub desired_count: i32,
    pub running_count: i32,
    pub pending_count: i32,
    pub task_definition: String,
    pub deployments: Vec<Deployment>,
    /// Newest first, as ECS orders them.
    pub events: Vec<ServiceEvent>,
    pub target_group_arns: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

impl Service {
    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments
            .iter()
            .find(|d| d.status == DeploymentStatus::Primary)
    }
}

/// What DescribeServices found for a list of names.
#[derive(Debug, Clone, Default)]
pub struct ServiceLookup {
    pub found: Vec<Service>,
    /// Names that are absent or INACTIVE (deleted services linger as INACTIVE for a while).
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsgInstance {
    pub instance_id: String,
    /// Pending, InService, Terminating, ...
    pub lifecycle_state: String,
    /// Healthy or Unhealthy.
    pub health_status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutoScalingGroup {
    pub name: String,
    pub min_size: i32,
    pub max_size: i32,
    pub desired_capacity: i32,
    pub instances: Vec<AsgInstance>,
}

/// An EC2 instance registered with an ECS cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInstance {
    pub arn: String,
    pub ec2_instance_id: String,
    /// ACTIVE, DRAINING, ...
    pub status: String,
    pub running_tasks_count: i32,
    pub pending_tasks_count: i32,
    pub remaining_gpus: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    pub name: String,
    pub arn: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetHealth {
    pub id: String,
    pub port: Option<i32>,
    /// initial, healthy, unhealthy, draining, unused, unavailable.
    pub state: String,
}

/// A change to a service: each `Some` field is written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceUpdate {
    pub task_definition: Option<String>,
    pub desired_count: Option<i32>,
    pub force_new_deployment: bool,
}

/// A change to an Auto Scaling Group: each `Some` field is written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AsgUpdate {
    pub min_size: Option<i32>,
    pub max_size: Option<i32>,
    pub desired_capacity: Option<i32>,
}
