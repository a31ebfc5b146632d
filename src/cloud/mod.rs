//! The one seam between the controller and a cloud: the [`Cloud`] trait, the error kinds every
//! adapter classifies its failures into, and the per-operation call counter.
//!
//! Two adapters implement it: [`aws::AwsCloud`] over the AWS SDK, and the in-process
//! simulator in `crate::sim`. Everything above this module sees only `crate::model` types.

pub mod aws;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::model::{
    AsgUpdate, AutoScalingGroup, ContainerInstance, ServiceLookup, ServiceUpdate, TargetGroup,
    TargetHealth, TaskDefinition,
};
use crate::taskdef::TaskDefinitionSpec;

/// Why a cloud call failed, as the loop's error policy needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    Throttled,
    AccessDenied,
    /// 5xx, timeouts, dropped connections: worth retrying soon.
    Transient,
    /// The request itself was rejected (bad parameter): retrying the same request will not help.
    Invalid,
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Throttled => "throttled",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::Transient => "transient",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("failed to call {operation} ({}): {message}", kind.as_str())]
pub struct CloudError {
    pub kind: ErrorKind,
    /// The API operation, e.g. `ecs:DescribeServices`.
    pub operation: &'static str,
    pub message: String,
}

impl CloudError {
    pub fn new(kind: ErrorKind, operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            operation,
            message: message.into(),
        }
    }
}

pub type CloudResult<T> = Result<T, CloudError>;

/// Every read and write the controller makes. Implementations do their own batching (for
/// example 10 services per DescribeServices call) and count each real API call in
/// [`Cloud::calls`].
#[async_trait]
pub trait Cloud: Send + Sync {
    /// Services of one cluster by name.
    async fn describe_services(
        &self,
        cluster: &str,
        names: &[String],
    ) -> CloudResult<ServiceLookup>;

    /// A task definition by ARN, or `family` for its latest ACTIVE revision.
    async fn describe_task_definition(&self, arn_or_family: &str) -> CloudResult<TaskDefinition>;

    /// ACTIVE revisions of a family, newest first, at most `limit` of them.
    async fn list_task_definitions(&self, family: &str, limit: usize) -> CloudResult<Vec<String>>;

    async fn register_task_definition(
        &self,
        spec: &TaskDefinitionSpec,
    ) -> CloudResult<TaskDefinition>;

    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        update: &ServiceUpdate,
    ) -> CloudResult<()>;

    /// Replaces the given tag keys on a resource, leaving other tags alone.
    async fn tag_resource(&self, arn: &str, tags: &BTreeMap<String, String>) -> CloudResult<()>;

    /// Groups by name; names that do not exist are simply absent from the result.
    async fn describe_auto_scaling_groups(
        &self,
        names: &[String],
    ) -> CloudResult<Vec<AutoScalingGroup>>;

    async fn update_auto_scaling_group(&self, name: &str, update: &AsgUpdate) -> CloudResult<()>;

    /// Terminates one instance and lowers the group's desired capacity by one.
    async fn terminate_instance_decrementing(&self, instance_id: &str) -> CloudResult<()>;

    async fn list_container_instances(&self, cluster: &str) -> CloudResult<Vec<ContainerInstance>>;

    /// Sets container instances to DRAINING (or back to ACTIVE).
    async fn update_container_instances_state(
        &self,
        cluster: &str,
        arns: &[String],
        status: &str,
    ) -> CloudResult<()>;

    /// Target groups by name; names that do not exist are absent from the result.
    async fn describe_target_groups(&self, names: &[String]) -> CloudResult<Vec<TargetGroup>>;

    async fn describe_target_health(
        &self,
        target_group_arn: &str,
    ) -> CloudResult<Vec<TargetHealth>>;

    /// The counter this adapter records its API calls in.
    fn calls(&self) -> &CallCounter;
}

/// Counts API calls by operation and outcome, for `plan --output json`, debug logs, metrics and
/// tests that hold the controller to a minimum number of calls.
#[derive(Debug, Clone, Default)]
pub struct CallCounter {
    inner: Arc<Mutex<BTreeMap<(&'static str, &'static str), u64>>>,
}

impl CallCounter {
    /// Records one call; `outcome` is "ok" or an [`ErrorKind`] name.
    pub fn record(&self, operation: &'static str, outcome: &'static str) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((operation, outcome)).or_default() += 1;
    }

    pub fn record_result<T>(&self, operation: &'static str, result: &CloudResult<T>) {
        match result {
            Ok(_) => self.record(operation, "ok"),
            Err(e) => self.record(operation, e.kind.as_str()),
        }
    }

    /// Calls per operation, all outcomes together.
    pub fn by_operation(&self) -> BTreeMap<&'static str, u64> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = BTreeMap::new();
        for ((op, _), n) in map.iter() {
            *out.entry(*op).or_default() += n;
        }
        out
    }

    /// Calls per (operation, outcome).
    pub fn snapshot(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn total(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Write calls only: the operations that change something.
    pub fn writes(&self) -> u64 {
        self.by_operation()
            .iter()
            .filter(|(op, _)| is_write(op))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Whether an operation name (`service:Operation`) changes state.
pub fn is_write(operation: &str) -> bool {
    let name = operation.rsplit(':').next().unwrap_or(operation);
    [
        "Register",
        "Update",
        "Tag",
        "Terminate",
        "Set",
        "Create",
        "Delete",
        "Deregister",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}
