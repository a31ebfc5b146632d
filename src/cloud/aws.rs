//! The AWS SDK adapter behind [`Cloud`]: batches, counts and classifies every call at this edge.
//
// SDK types never leave this file: everything above it sees `crate::model` and `crate::taskdef`.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_sdk_ecs::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionInput;
use aws_sdk_ecs::types as ecs;
use futures::future::try_join_all;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{CallCounter, Cloud, CloudError, CloudResult, ErrorKind};
use crate::model::{
    AsgInstance, AsgUpdate, AutoScalingGroup, ContainerInstance, Deployment, DeploymentStatus,
    RolloutState, Service, ServiceEvent, ServiceLookup, ServiceUpdate, TargetGroup, TargetHealth,
    TaskDefinition,
};
use crate::taskdef::{
    ContainerDefinition, HealthCheck, KeyValue, LogConfiguration, MountPoint, PlacementConstraint,
    PortMapping, ResourceRequirement, RuntimePlatform, Secret, TaskDefinitionSpec, Volume,
};

/// DescribeServices takes at most 10 services per call.
const SERVICES_PER_CALL: usize = 10;
/// Kept at the default page size so one call returns every group it names.
const ASGS_PER_CALL: usize = 50;
const TARGET_GROUPS_PER_CALL: usize = 20;
/// DescribeContainerInstances takes at most 100 instances per call.
const CONTAINER_INSTANCES_PER_CALL: usize = 100;
/// UpdateContainerInstancesState takes at most 10 instances per call.
const INSTANCE_STATE_UPDATES_PER_CALL: usize = 10;

/// [`Cloud`] over ECS, EC2 Auto Scaling and ELBv2.
#[derive(Debug, Clone)]
pub struct AwsCloud {
    ecs: aws_sdk_ecs::Client,
    autoscaling: aws_sdk_autoscaling::Client,
    elbv2: aws_sdk_elasticloadbalancingv2::Client,
    calls: CallCounter,
}

impl AwsCloud {
    /// Loads credentials, region and endpoint (`AWS_ENDPOINT_URL` included) the standard way,
    /// with the timeouts and retries of [`AwsCloud::config_loader`].
    pub async fn from_env(region: Option<String>) -> AwsCloud {
        let config = Self::config_loader(region).load().await;
        Self::new(&config)
    }

    /// The standard config loader with this adapter's timeouts and retries, for callers (tests)
    /// that want to override more before loading.
    pub fn config_loader(region: Option<String>) -> ConfigLoader {
        // Before behavior version 2026-11-17 the SDK has no read timeout at all, and from it on
        // the default is 5 minutes: either way one unresponsive endpoint would stall a reconcile
        // pass for minutes. Bound each attempt and the whole operation, retries included.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(5));
        // Pinned rather than `latest()` so that an SDK upgrade cannot change retry or timeout
        // behavior without a code change.
        let loader = aws_config::defaults(BehaviorVersion::v2026_11_17())
            .timeout_config(timeouts)
            .retry_config(retries);
        match region {
            Some(region) => loader.region(Region::new(region)),
            None => loader,
        }
    }

    pub fn new(config: &SdkConfig) -> AwsCloud {
        AwsCloud {
            ecs: aws_sdk_ecs::Client::new(config),
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            elbv2: aws_sdk_elasticloadbalancingv2::Client::new(config),
            calls: CallCounter::default(),
        }
    }

    /// Sends one request: classifies its error, counts it and logs it.
    async fn call<T, E>(
        &self,
        operation: &'static str,
        request: impl Future<Output = Result<T, SdkError<E>>>,
    ) -> CloudResult<T>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let result = request.await.map_err(|e| classify(operation, &e));
        self.calls.record_result(operation, &result);
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(_) => debug!(operation, outcome = "ok", elapsed_ms, "aws call"),
            Err(e) => debug!(
                operation,
                outcome = e.kind.as_str(),
                elapsed_ms,
                error = %e.message,
                "aws call"
            ),
        }
        result
    }

    async fn describe_services_batch(
        &self,
        cluster: &str,
        names: &[String],
    ) -> CloudResult<ServiceLookup> {
        let out = self
            .call(
                "ecs:DescribeServices",
                self.ecs
                    .describe_services()
                    .cluster(cluster)
                    .set_services(Some(names.to_vec()))
                    .include(ecs::ServiceField::Tags)
                    .send(),
            )
            .await?;
        lookup_from_sdk(cluster, names, out.services(), out.failures())
    }

    /// All pages of DescribeAutoScalingGroups for up to [`ASGS_PER_CALL`] names.
    async fn describe_asg_batch(&self, names: &[String]) -> CloudResult<Vec<AutoScalingGroup>> {
        let mut groups = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .call(
                    "autoscaling:DescribeAutoScalingGroups",
                    self.autoscaling
                        .describe_auto_scaling_groups()
                        .set_auto_scaling_group_names(Some(names.to_vec()))
                        .max_records(ASGS_PER_CALL as i32)
                        .set_next_token(token.take())
                        .send(),
                )
                .await?;
            groups.extend(out.auto_scaling_groups().iter().map(asg_from_sdk));
            match out.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(groups),
            }
        }
    }

    async fn describe_target_groups_by_name(
        &self,
        names: &[String],
    ) -> CloudResult<Vec<TargetGroup>> {
        let out = self
            .call(
                "elbv2:DescribeTargetGroups",
                self.elbv2
                    .describe_target_groups()
                    .set_names(Some(names.to_vec()))
                    .send(),
            )
            .await?;
        Ok(out
            .target_groups()
            .iter()
            .map(|tg| TargetGroup {
                name: tg.target_group_name.clone().unwrap_or_default(),
                arn: tg.target_group_arn.clone().unwrap_or_default(),
            })
            .collect())
    }

    async fn describe_target_group_batch(&self, names: &[String]) -> CloudResult<Vec<TargetGroup>> {
        match self.describe_target_groups_by_name(names).await {
            Err(e) if e.kind == ErrorKind::NotFound && names.len() > 1 => {
                // ELBv2 fails the whole call when any one name is missing, without saying which.
                debug!(names = ?names, "target group batch had a missing name; asking one by one");
                let mut found = Vec::new();
                for name in names {
                    match self
                        .describe_target_groups_by_name(std::slice::from_ref(name))
                        .await
                    {
                        Ok(groups) => found.extend(groups),
                        Err(e) if e.kind == ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(found)
            }
            Err(e) if e.kind == ErrorKind::NotFound => Ok(Vec::new()),
            other => other,
        }
    }

    async fn describe_container_instance_batch(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> CloudResult<Vec<ContainerInstance>> {
        let out = self
            .call(
                "ecs:DescribeContainerInstances",
                self.ecs
                    .describe_container_instances()
                    .cluster(cluster)
                    .set_container_instances(Some(arns.to_vec()))
                    .send(),
            )
            .await?;
        // An instance that deregistered between the list and this call is simply gone.
        Ok(out
            .container_instances()
            .iter()
            .map(container_instance_from_sdk)
            .collect())
    }
}

#[async_trait]
impl Cloud for AwsCloud {
    async fn describe_services(
        &self,
        cluster: &str,
        names: &[String],
    ) -> CloudResult<ServiceLookup> {
        let names = dedup(names);
        let batches = try_join_all(
            names
                .chunks(SERVICES_PER_CALL)
                .map(|b| self.describe_services_batch(cluster, b)),
        )
        .await?;
        let mut lookup = ServiceLookup::default();
        for batch in batches {
            lookup.found.extend(batch.found);
            lookup.missing.extend(batch.missing);
        }
        Ok(lookup)
    }

    async fn describe_task_definition(&self, arn_or_family: &str) -> CloudResult<TaskDefinition> {
        const OP: &str = "ecs:DescribeTaskDefinition";
        let out = self
            .call(
                OP,
                self.ecs
                    .describe_task_definition()
                    .task_definition(arn_or_family)
                    .send(),
            )
            .await?;
        let td = out.task_definition.ok_or_else(|| {
            CloudError::new(
                ErrorKind::Other,
                OP,
                format!("no task definition in the response for {arn_or_family}"),
            )
        })?;
        Ok(task_definition_from_sdk(&td))
    }

    async fn list_task_definitions(&self, family: &str, limit: usize) -> CloudResult<Vec<String>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // familyPrefix is a prefix ("api" also lists "api-worker"), so keep paging until `limit`
        // revisions of exactly this family are in hand.
        let mut revisions: Vec<(i32, String)> = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .call(
                    "ecs:ListTaskDefinitions",
                    self.ecs
                        .list_task_definitions()
                        .family_prefix(family)
                        .status(ecs::TaskDefinitionStatus::Active)
                        .sort(ecs::SortOrder::Desc)
                        .max_results(limit.min(100) as i32)
                        .set_next_token(token.take())
                        .send(),
                )
                .await?;
            for arn in out.task_definition_arns() {
                if let Some((f, revision)) = family_and_revision(arn) {
                    if f == family {
                        revisions.push((revision, arn.clone()));
                    }
                }
            }
            match out.next_token {
                Some(next) if !next.is_empty() && revisions.len() < limit => token = Some(next),
                _ => break,
            }
        }
        // Sorted here as well because not every ECS implementation honours `sort` (moto does not).
        revisions.sort_by_key(|(revision, _)| std::cmp::Reverse(*revision));
        Ok(revisions
            .into_iter()
            .take(limit)
            .map(|(_, arn)| arn)
            .collect())
    }

    async fn register_task_definition(
        &self,
        spec: &TaskDefinitionSpec,
    ) -> CloudResult<TaskDefinition> {
        const OP: &str = "ecs:RegisterTaskDefinition";
        let input = register_input(spec).map_err(|e| {
            CloudError::new(
                ErrorKind::Invalid,
                OP,
                format!("failed to build the request: {e}"),
            )
        })?;
        let out = self
            .call(
                OP,
                self.ecs
                    .register_task_definition()
                    .set_family(input.family)
                    .set_task_role_arn(input.task_role_arn)
                    .set_execution_role_arn(input.execution_role_arn)
                    .set_network_mode(input.network_mode)
                    .set_requires_compatibilities(input.requires_compatibilities)
                    .set_cpu(input.cpu)
                    .set_memory(input.memory)
                    .set_runtime_platform(input.runtime_platform)
                    .set_container_definitions(input.container_definitions)
                    .set_volumes(input.volumes)
                    .set_placement_constraints(input.placement_constraints)
                    .send(),
            )
            .await?;
        let td = out.task_definition.ok_or_else(|| {
            CloudError::new(ErrorKind::Other, OP, "no task definition in the response")
        })?;
        let registered = task_definition_from_sdk(&td);
        info!(
            family = %registered.spec.family,
            arn = %registered.arn,
            revision = registered.revision,
            "registered task definition"
        );
        Ok(registered)
    }

    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        update: &ServiceUpdate,
    ) -> CloudResult<()> {
        if update.task_definition.is_none()
            && update.desired_count.is_none()
            && !update.force_new_deployment
        {
            return Ok(());
        }
        let mut request = self
            .ecs
            .update_service()
            .cluster(cluster)
            .service(service)
            .set_task_definition(update.task_definition.clone())
            .set_desired_count(update.desired_count);
        if update.force_new_deployment {
            request = request.force_new_deployment(true);
        }
        // UpdateService's request future is large enough to be worth keeping off the stack.
        Box::pin(self.call("ecs:UpdateService", request.send())).await?;
        info!(
            cluster,
            service,
            task_definition = ?update.task_definition,
            desired_count = ?update.desired_count,
            force_new_deployment = update.force_new_deployment,
            "updated service"
        );
        Ok(())
    }

    async fn tag_resource(&self, arn: &str, tags: &BTreeMap<String, String>) -> CloudResult<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let sdk_tags = tags
            .iter()
            .map(|(k, v)| ecs::Tag::builder().key(k).value(v).build());
        self.call(
            "ecs:TagResource",
            self.ecs
                .tag_resource()
                .resource_arn(arn)
                .set_tags(Some(sdk_tags.collect()))
                .send(),
        )
        .await?;
        info!(arn, tags = ?tags, "tagged resource");
        Ok(())
    }

    async fn describe_auto_scaling_groups(
        &self,
        names: &[String],
    ) -> CloudResult<Vec<AutoScalingGroup>> {
        let names = dedup(names);
        let batches = try_join_all(
            names
                .chunks(ASGS_PER_CALL)
                .map(|b| self.describe_asg_batch(b)),
        )
        .await?;
        Ok(batches.into_iter().flatten().collect())
    }

    async fn update_auto_scaling_group(&self, name: &str, update: &AsgUpdate) -> CloudResult<()> {
        if update.min_size.is_none()
            && update.max_size.is_none()
            && update.desired_capacity.is_none()
        {
            return Ok(());
        }
        self.call(
            "autoscaling:UpdateAutoScalingGroup",
            self.autoscaling
                .update_auto_scaling_group()
                .auto_scaling_group_name(name)
                .set_min_size(update.min_size)
                .set_max_size(update.max_size)
                .set_desired_capacity(update.desired_capacity)
                .send(),
        )
        .await?;
        info!(
            asg = name,
            min_size = ?update.min_size,
            max_size = ?update.max_size,
            desired_capacity = ?update.desired_capacity,
            "updated auto scaling group"
        );
        Ok(())
    }

    async fn terminate_instance_decrementing(&self, instance_id: &str) -> CloudResult<()> {
        self.call(
            "autoscaling:TerminateInstanceInAutoScalingGroup",
            self.autoscaling
                .terminate_instance_in_auto_scaling_group()
                .instance_id(instance_id)
                .should_decrement_desired_capacity(true)
                .send(),
        )
        .await?;
        info!(
            instance_id,
            "terminated instance and decremented desired capacity"
        );
        Ok(())
    }

    async fn list_container_instances(&self, cluster: &str) -> CloudResult<Vec<ContainerInstance>> {
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .call(
                    "ecs:ListContainerInstances",
                    self.ecs
                        .list_container_instances()
                        .cluster(cluster)
                        .max_results(CONTAINER_INSTANCES_PER_CALL as i32)
                        .set_next_token(token.take())
                        .send(),
                )
                .await?;
            arns.extend(out.container_instance_arns().iter().cloned());
            match out.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        let batches = try_join_all(
            arns.chunks(CONTAINER_INSTANCES_PER_CALL)
                .map(|b| self.describe_container_instance_batch(cluster, b)),
        )
        .await?;
        Ok(batches.into_iter().flatten().collect())
    }

    async fn update_container_instances_state(
        &self,
        cluster: &str,
        arns: &[String],
        status: &str,
    ) -> CloudResult<()> {
        const OP: &str = "ecs:UpdateContainerInstancesState";
        for batch in arns.chunks(INSTANCE_STATE_UPDATES_PER_CALL) {
            let out = self
                .call(
                    OP,
                    self.ecs
                        .update_container_instances_state()
                        .cluster(cluster)
                        .set_container_instances(Some(batch.to_vec()))
                        .status(ecs::ContainerInstanceStatus::from(status))
                        .send(),
                )
                .await?;
            if let Some(failure) = out.failures().first() {
                return Err(CloudError::new(
                    ErrorKind::Other,
                    OP,
                    describe_failure(failure),
                ));
            }
            info!(cluster, instances = ?batch, status, "updated container instance state");
        }
        Ok(())
    }

    async fn describe_target_groups(&self, names: &[String]) -> CloudResult<Vec<TargetGroup>> {
        let names = dedup(names);
        let batches = try_join_all(
            names
                .chunks(TARGET_GROUPS_PER_CALL)
                .map(|b| self.describe_target_group_batch(b)),
        )
        .await?;
        Ok(batches.into_iter().flatten().collect())
    }

    async fn describe_target_health(
        &self,
        target_group_arn: &str,
    ) -> CloudResult<Vec<TargetHealth>> {
        let out = self
            .call(
                "elbv2:DescribeTargetHealth",
                self.elbv2
                    .describe_target_health()
                    .target_group_arn(target_group_arn)
                    .send(),
            )
            .await?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .map(|d| TargetHealth {
                id: d
                    .target
                    .as_ref()
                    .and_then(|t| t.id.clone())
                    .unwrap_or_default(),
                port: d.target.as_ref().and_then(|t| t.port),
                state: d
                    .target_health
                    .as_ref()
                    .and_then(|h| h.state.as_ref())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            })
            .collect())
    }

    fn calls(&self) -> &CallCounter {
        &self.calls
    }
}

// ---------------------------------------------------------------------------------------------
// Error classification

fn classify<E>(operation: &'static str, err: &SdkError<E>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let kind = match err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => ErrorKind::Transient,
        // A user error is a bad endpoint or client setup, which the next attempt will hit too.
        SdkError::DispatchFailure(f) if f.is_user() => ErrorKind::Other,
        SdkError::DispatchFailure(_) => ErrorKind::Transient,
        SdkError::ServiceError(_) => error_kind(
            err.code(),
            err.message(),
            err.raw_response().map(|r| r.status().as_u16()),
        ),
        SdkError::ConstructionFailure(_) => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    };
    let message = match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(err).to_string(),
    };
    CloudError::new(kind, operation, message)
}

const THROTTLED_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
];

const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "MissingAuthenticationToken",
];

const TRANSIENT_CODES: &[&str] = &[
    "ServerException",
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    // Auto Scaling: another change to the group is still in flight.
    "ResourceContention",
    "ScalingActivityInProgress",
];

const INVALID_CODES: &[&str] = &[
    "InvalidParameterException",
    "InvalidParameterValue",
    "InvalidParameterValueException",
    "InvalidParameterCombination",
    "ValidationError",
    "ValidationException",
    "ClientException",
    "MissingParameter",
    "InvalidConfigurationRequest",
    "UnsupportedFeatureException",
    "PlatformUnknownException",
    "PlatformTaskDefinitionIncompatibilityException",
];

/// The kind of a service error, from its code, message and HTTP status.
fn error_kind(code: Option<&str>, message: Option<&str>, status: Option<u16>) -> ErrorKind {
    let code = code.unwrap_or_default();
    let message = message.unwrap_or_default().to_ascii_lowercase();
    if THROTTLED_CODES.contains(&code) {
        return ErrorKind::Throttled;
    }
    if ACCESS_DENIED_CODES.contains(&code) {
        return ErrorKind::AccessDenied;
    }
    // ECS names them ServiceNotFoundException, ELBv2 TargetGroupNotFound, EC2 InvalidX.NotFound.
    // An INACTIVE service counts as missing everywhere else, so ServiceNotActive does too.
    if code.ends_with("NotFoundException")
        || code.ends_with("NotFound")
        || code == "ServiceNotActiveException"
    {
        return ErrorKind::NotFound;
    }
    if TRANSIENT_CODES.contains(&code) {
        return ErrorKind::Transient;
    }
    if INVALID_CODES.contains(&code) {
        // Several services report a missing resource only in a generic validation error:
        // Auto Scaling "AutoScalingGroup name not found", ECS "Unable to describe task
        // definition." for an unknown family or revision.
        if message.contains("not found")
            || message.contains("does not exist")
            || message.contains("unable to describe task definition")
        {
            return ErrorKind::NotFound;
        }
        return ErrorKind::Invalid;
    }
    match status {
        Some(429) => ErrorKind::Throttled,
        Some(401 | 403) => ErrorKind::AccessDenied,
        Some(404) => ErrorKind::NotFound,
        Some(s) if s >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions: services, groups, instances

fn dedup(names: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect()
}

fn describe_failure(failure: &ecs::Failure) -> String {
    format!(
        "{}: {}{}",
        failure.arn().unwrap_or("(no arn)"),
        failure.reason().unwrap_or("(no reason)"),
        failure
            .detail()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    )
}

/// One DescribeServices answer as a lookup of the names asked for: INACTIVE services, MISSING
/// failures and names ECS did not mention at all are missing.
fn lookup_from_sdk(
    cluster: &str,
    requested: &[String],
    services: &[ecs::Service],
    failures: &[ecs::Failure],
) -> CloudResult<ServiceLookup> {
    if let Some(failure) = failures.iter().find(|f| f.reason() != Some("MISSING")) {
        return Err(CloudError::new(
            ErrorKind::Other,
            "ecs:DescribeServices",
            describe_failure(failure),
        ));
    }
    let mut lookup = ServiceLookup::default();
    let mut seen = HashSet::new();
    for svc in services {
        if svc.status() == Some("INACTIVE") {
            continue;
        }
        let service = service_from_sdk(cluster, svc);
        seen.insert(service.name.clone());
        seen.insert(service.arn.clone());
        lookup.found.push(service);
    }
    lookup.missing = requested
        .iter()
        .filter(|n| !seen.contains(*n))
        .cloned()
        .collect();
    Ok(lookup)
}

fn last_segment(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

fn service_from_sdk(cluster: &str, s: &ecs::Service) -> Service {
    Service {
        arn: s.service_arn.clone().unwrap_or_default(),
        name: s.service_name.clone().unwrap_or_default(),
        cluster: s
            .cluster_arn
            .as_deref()
            .map(last_segment)
            .unwrap_or(cluster)
            .to_string(),
        status: s.status.clone().unwrap_or_default(),
        desired_count: s.desired_count,
        running_count: s.running_count,
        pending_count: s.pending_count,
        task_definition: s.task_definition.clone().unwrap_or_default(),
        deployments: s
            .deployments()
            .iter()
            .filter_map(deployment_from_sdk)
            .collect(),
        events: s
            .events()
            .iter()
            .map(|e| ServiceEvent {
                id: e.id.clone().unwrap_or_default(),
                created_at: e.created_at.map(|t| t.secs()).unwrap_or_default(),
                message: e.message.clone().unwrap_or_default(),
            })
            .collect(),
        target_group_arns: s
            .load_balancers()
            .iter()
            .filter_map(|lb| lb.target_group_arn.clone())
            .collect(),
        tags: s
            .tags()
            .iter()
            .filter_map(|t| Some((t.key.clone()?, t.value.clone().unwrap_or_default())))
            .collect(),
    }
}

fn deployment_from_sdk(d: &ecs::Deployment) -> Option<Deployment> {
    let status = match d.status.as_deref() {
        Some("PRIMARY") => DeploymentStatus::Primary,
        Some("ACTIVE") => DeploymentStatus::Active,
        Some("INACTIVE") => DeploymentStatus::Inactive,
        other => {
            warn!(deployment = ?d.id, status = ?other, "skipping deployment with unknown status");
            return None;
        }
    };
    let rollout_state = match d.rollout_state.as_ref() {
        Some(ecs::DeploymentRolloutState::InProgress) => Some(RolloutState::InProgress),
        Some(ecs::DeploymentRolloutState::Completed) => Some(RolloutState::Completed),
        Some(ecs::DeploymentRolloutState::Failed) => Some(RolloutState::Failed),
        _ => None,
    };
    Some(Deployment {
        id: d.id.clone().unwrap_or_default(),
        status,
        task_definition: d.task_definition.clone().unwrap_or_default(),
        desired_count: d.desired_count,
        running_count: d.running_count,
        pending_count: d.pending_count,
        failed_tasks: d.failed_tasks,
        rollout_state,
        rollout_state_reason: d.rollout_state_reason.clone(),
    })
}

fn asg_from_sdk(g: &aws_sdk_autoscaling::types::AutoScalingGroup) -> AutoScalingGroup {
    AutoScalingGroup {
        name: g.auto_scaling_group_name.clone().unwrap_or_default(),
        min_size: g.min_size.unwrap_or_default(),
        max_size: g.max_size.unwrap_or_default(),
        desired_capacity: g.desired_capacity.unwrap_or_default(),
        instances: g
            .instances()
            .iter()
            .map(|i| AsgInstance {
                instance_id: i.instance_id.clone().unwrap_or_default(),
                lifecycle_state: i
                    .lifecycle_state
                    .as_ref()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                health_status: i.health_status.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

fn container_instance_from_sdk(ci: &ecs::ContainerInstance) -> ContainerInstance {
    ContainerInstance {
        arn: ci.container_instance_arn.clone().unwrap_or_default(),
        ec2_instance_id: ci.ec2_instance_id.clone().unwrap_or_default(),
        status: ci.status.clone().unwrap_or_default(),
        running_tasks_count: ci.running_tasks_count,
        pending_tasks_count: ci.pending_tasks_count,
        remaining_gpus: remaining_gpus(ci.remaining_resources()),
    }
}

/// ECS reports GPUs as a STRINGSET of the free GPU IDs; an INTEGER count is accepted too.
fn remaining_gpus(resources: &[ecs::Resource]) -> u32 {
    let Some(gpu) = resources.iter().find(|r| r.name() == Some("GPU")) else {
        return 0;
    };
    match &gpu.string_set_value {
        Some(ids) => u32::try_from(ids.len()).unwrap_or(u32::MAX),
        None => u32::try_from(gpu.integer_value).unwrap_or(0),
    }
}

/// `arn:...:task-definition/family:7` as ("family", 7).
fn family_and_revision(arn: &str) -> Option<(&str, i32)> {
    let (family, revision) = last_segment(arn).rsplit_once(':')?;
    Some((family, revision.parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Conversions: task definitions

/// `None` for an absent or empty list: ECS returns `[]` for lists a definition never set.
fn non_empty<T>(v: Option<Vec<T>>) -> Option<Vec<T>> {
    v.filter(|v| !v.is_empty())
}

/// The RegisterTaskDefinition request for a spec.
pub fn register_input(
    spec: &TaskDefinitionSpec,
) -> Result<RegisterTaskDefinitionInput, BuildError> {
    let containers = spec
        .container_definitions
        .iter()
        .map(container_to_sdk)
        .collect::<Result<Vec<_>, _>>()?;
    RegisterTaskDefinitionInput::builder()
        .family(&spec.family)
        .set_task_role_arn(spec.task_role_arn.clone())
        .set_execution_role_arn(spec.execution_role_arn.clone())
        .set_network_mode(spec.network_mode.as_deref().map(ecs::NetworkMode::from))
        .set_requires_compatibilities(spec.requires_compatibilities.as_ref().map(|v| {
            v.iter()
                .map(|c| ecs::Compatibility::from(c.as_str()))
                .collect()
        }))
        .set_cpu(spec.cpu.clone())
        .set_memory(spec.memory.clone())
        .set_runtime_platform(spec.runtime_platform.as_ref().map(|p| {
            ecs::RuntimePlatform::builder()
                .set_cpu_architecture(
                    p.cpu_architecture
                        .as_deref()
                        .map(ecs::CpuArchitecture::from),
                )
                .set_operating_system_family(
                    p.operating_system_family
                        .as_deref()
                        .map(ecs::OsFamily::from),
                )
                .build()
        }))
        .set_container_definitions(Some(containers))
        .set_volumes(spec.volumes.as_ref().map(|vs| {
            vs.iter()
                .map(|v| {
                    ecs::Volume::builder()
                        .name(&v.name)
                        .set_host(
                            v.host_path.as_ref().map(|p| {
                                ecs::HostVolumeProperties::builder().source_path(p).build()
                            }),
                        )
                        .build()
                })
                .collect()
        }))
        .set_placement_constraints(spec.placement_constraints.as_ref().map(|pcs| {
            pcs.iter()
                .map(|pc| {
                    ecs::TaskDefinitionPlacementConstraint::builder()
                        .r#type(ecs::TaskDefinitionPlacementConstraintType::from(
                            pc.kind.as_str(),
                        ))
                        .set_expression(pc.expression.clone())
                        .build()
                })
                .collect()
        }))
        .build()
}

fn container_to_sdk(c: &ContainerDefinition) -> Result<ecs::ContainerDefinition, BuildError> {
    let secrets = c
        .secrets
        .as_ref()
        .map(|ss| {
            ss.iter()
                .map(|s| {
                    ecs::Secret::builder()
                        .name(&s.name)
                        .value_from(&s.value_from)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let log_configuration = c
        .log_configuration
        .as_ref()
        .map(|l| {
            ecs::LogConfiguration::builder()
                .log_driver(ecs::LogDriver::from(l.log_driver.as_str()))
                .set_options(l.options.as_ref().map(|o| o.clone().into_iter().collect()))
                .build()
        })
        .transpose()?;
    let health_check = c
        .health_check
        .as_ref()
        .map(|h| {
            ecs::HealthCheck::builder()
                .set_command(Some(h.command.clone()))
                .set_interval(h.interval)
                .set_timeout(h.timeout)
                .set_retries(h.retries)
                .set_start_period(h.start_period)
                .build()
        })
        .transpose()?;
    let resource_requirements = c
        .resource_requirements
        .as_ref()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    ecs::ResourceRequirement::builder()
                        .r#type(ecs::ResourceType::from(r.kind.as_str()))
                        .value(&r.value)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok(ecs::ContainerDefinition::builder()
        .name(&c.name)
        .set_image(Some(c.image.clone()).filter(|i| !i.is_empty()))
        .set_cpu(c.cpu)
        .set_memory(c.memory)
        .set_memory_reservation(c.memory_reservation)
        .set_essential(c.essential)
        .set_command(c.command.clone())
        .set_entry_point(c.entry_point.clone())
        .set_working_directory(c.working_directory.clone())
        .set_user(c.user.clone())
        .set_port_mappings(c.port_mappings.as_ref().map(|ps| {
            ps.iter()
                .map(|p| {
                    ecs::PortMapping::builder()
                        .container_port(p.container_port)
                        .set_host_port(p.host_port)
                        .set_protocol(p.protocol.as_deref().map(ecs::TransportProtocol::from))
                        .set_name(p.name.clone())
                        .set_app_protocol(
                            p.app_protocol
                                .as_deref()
                                .map(ecs::ApplicationProtocol::from),
                        )
                        .build()
                })
                .collect()
        }))
        .set_environment(c.environment.as_ref().map(|env| {
            env.iter()
                .map(|kv| {
                    ecs::KeyValuePair::builder()
                        .name(&kv.name)
                        .value(&kv.value)
                        .build()
                })
                .collect()
        }))
        .set_secrets(secrets)
        .set_log_configuration(log_configuration)
        .set_health_check(health_check)
        .set_resource_requirements(resource_requirements)
        .set_stop_timeout(c.stop_timeout)
        .set_mount_points(c.mount_points.as_ref().map(|ms| {
            ms.iter()
                .map(|m| {
                    ecs::MountPoint::builder()
                        .source_volume(&m.source_volume)
                        .container_path(&m.container_path)
                        .set_read_only(m.read_only)
                        .build()
                })
                .collect()
        }))
        .build())
}

/// A registered revision as the model sees it.
pub fn task_definition_from_sdk(td: &ecs::TaskDefinition) -> TaskDefinition {
    TaskDefinition {
        arn: td.task_definition_arn.clone().unwrap_or_default(),
        revision: td.revision,
        status: td
            .status
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        spec: spec_from_sdk(td),
        unmodelled: unsupported_fields(td),
    }
}

/// The spec a DescribeTaskDefinition answer was registered from, with what ECS fills in for
/// unset fields (container `cpu: 0`, empty lists, `hostPort: 0`) mapped back to unset.
pub fn spec_from_sdk(td: &ecs::TaskDefinition) -> TaskDefinitionSpec {
    TaskDefinitionSpec {
        family: td.family.clone().unwrap_or_default(),
        task_role_arn: td.task_role_arn.clone(),
        execution_role_arn: td.execution_role_arn.clone(),
        network_mode: td.network_mode.as_ref().map(|m| m.as_str().to_string()),
        requires_compatibilities: non_empty(
            td.requires_compatibilities
                .as_ref()
                .map(|v| v.iter().map(|c| c.as_str().to_string()).collect()),
        ),
        cpu: td.cpu.clone(),
        memory: td.memory.clone(),
        runtime_platform: td.runtime_platform.as_ref().map(|p| RuntimePlatform {
            cpu_architecture: p.cpu_architecture.as_ref().map(|a| a.as_str().to_string()),
            operating_system_family: p
                .operating_system_family
                .as_ref()
                .map(|f| f.as_str().to_string()),
        }),
        container_definitions: td
            .container_definitions()
            .iter()
            .map(container_from_sdk)
            .collect(),
        volumes: non_empty(td.volumes.as_ref().map(|vs| {
            vs.iter()
                .map(|v| Volume {
                    name: v.name.clone().unwrap_or_default(),
                    host_path: v.host.as_ref().and_then(|h| h.source_path.clone()),
                })
                .collect()
        })),
        placement_constraints: non_empty(td.placement_constraints.as_ref().map(|pcs| {
            pcs.iter()
                .map(|pc| PlacementConstraint {
                    kind: pc
                        .r#type
                        .as_ref()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    expression: pc.expression.clone(),
                })
                .collect()
        })),
    }
}

fn container_from_sdk(c: &ecs::ContainerDefinition) -> ContainerDefinition {
    ContainerDefinition {
        name: c.name.clone().unwrap_or_default(),
        image: c.image.clone().unwrap_or_default(),
        // ECS reports an unset container cpu as 0, which also means "no reservation".
        cpu: Some(c.cpu).filter(|&cpu| cpu != 0),
        memory: c.memory,
        memory_reservation: c.memory_reservation,
        essential: c.essential,
        command: non_empty(c.command.clone()),
        entry_point: non_empty(c.entry_point.clone()),
        working_directory: c.working_directory.clone(),
        user: c.user.clone(),
        port_mappings: non_empty(c.port_mappings.as_ref().map(|ps| {
            ps.iter()
                .map(|p| PortMapping {
                    container_port: p.container_port.unwrap_or_default(),
                    // 0 is how ECS reports "dynamic host port" for an unset bridge hostPort.
                    host_port: p.host_port.filter(|&h| h != 0),
                    protocol: p.protocol.as_ref().map(|t| t.as_str().to_string()),
                    name: p.name.clone(),
                    app_protocol: p.app_protocol.as_ref().map(|a| a.as_str().to_string()),
                })
                .collect()
        })),
        environment: non_empty(c.environment.as_ref().map(|env| {
            env.iter()
                .map(|kv| KeyValue {
                    name: kv.name.clone().unwrap_or_default(),
                    value: kv.value.clone().unwrap_or_default(),
                })
                .collect()
        })),
        secrets: non_empty(c.secrets.as_ref().map(|ss| {
            ss.iter()
                .map(|s| Secret {
                    name: s.name.clone(),
                    value_from: s.value_from.clone(),
                })
                .collect()
        })),
        log_configuration: c.log_configuration.as_ref().map(|l| LogConfiguration {
            log_driver: l.log_driver.as_str().to_string(),
            options: l
                .options
                .as_ref()
                .filter(|o| !o.is_empty())
                .map(|o| o.clone().into_iter().collect()),
        }),
        health_check: c.health_check.as_ref().map(|h| HealthCheck {
            command: h.command.clone(),
            interval: h.interval,
            timeout: h.timeout,
            retries: h.retries,
            start_period: h.start_period,
        }),
        resource_requirements: non_empty(c.resource_requirements.as_ref().map(|rs| {
            rs.iter()
                .map(|r| ResourceRequirement {
                    kind: r.r#type.as_str().to_string(),
                    value: r.value.clone(),
                })
                .collect()
        })),
        stop_timeout: c.stop_timeout,
        mount_points: non_empty(c.mount_points.as_ref().map(|ms| {
            ms.iter()
                .map(|m| MountPoint {
                    source_volume: m.source_volume.clone().unwrap_or_default(),
                    container_path: m.container_path.clone().unwrap_or_default(),
                    read_only: m.read_only,
                })
                .collect()
        })),
    }
}

/// Fields set on a registered revision that [`TaskDefinitionSpec`] cannot carry: registering a
/// new revision from its spec would drop them.
fn unsupported_fields(td: &ecs::TaskDefinition) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |set: bool, field: String| {
        if set {
            out.push(field);
        }
    };
    check(td.pid_mode.is_some(), "pidMode".into());
    check(td.ipc_mode.is_some(), "ipcMode".into());
    check(
        td.proxy_configuration.is_some(),
        "proxyConfiguration".into(),
    );
    check(td.ephemeral_storage.is_some(), "ephemeralStorage".into());
    check(
        !td.inference_accelerators().is_empty(),
        "inferenceAccelerators".into(),
    );
    for v in td.volumes() {
        let other = v.docker_volume_configuration.is_some()
            || v.efs_volume_configuration.is_some()
            || v.fsx_windows_file_server_volume_configuration.is_some();
        check(other, format!("volumes[{}]", v.name().unwrap_or_default()));
    }
    for c in td.container_definitions() {
        let name = c.name().unwrap_or_default();
        let fields: [(&str, bool); 14] = [
            ("repositoryCredentials", c.repository_credentials.is_some()),
            ("links", !c.links().is_empty()),
            ("environmentFiles", !c.environment_files().is_empty()),
            ("volumesFrom", !c.volumes_from().is_empty()),
            ("linuxParameters", c.linux_parameters.is_some()),
            ("dependsOn", !c.depends_on().is_empty()),
            ("startTimeout", c.start_timeout.is_some()),
            ("hostname", c.hostname.is_some()),
            ("privileged", c.privileged == Some(true)),
            (
                "readonlyRootFilesystem",
                c.readonly_root_filesystem == Some(true),
            ),
            (
                "dockerLabels",
                c.docker_labels.as_ref().is_some_and(|l| !l.is_empty()),
            ),
            ("ulimits", !c.ulimits().is_empty()),
            ("systemControls", !c.system_controls().is_empty()),
            ("firelensConfiguration", c.firelens_configuration.is_some()),
        ];
        for (field, set) in fields {
            check(set, format!("containerDefinitions[{name}].{field}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::DateTime;

    fn gpu_worker_spec() -> TaskDefinitionSpec {
        let json = serde_json::json!({
            "family": "filot-ocr-gpu-worker",
            "taskRoleArn": "arn:aws:iam::123456789012:role/filot-ocr-task",
            "executionRoleArn": "arn:aws:iam::123456789012:role/ecsTaskExecutionRole",
            "networkMode": "bridge",
            "requiresCompatibilities": ["EC2"],
            "cpu": "4096",
            "memory": "15360",
            "containerDefinitions": [
                {
                    "name": "ocr",
                    "image": "123456789012.dkr.ecr.ap-southeast-2.amazonaws.com/filot-ocr:1.4.2",
                    "cpu": 3584,
                    "memory": 14336,
                    "essential": true,
                    "portMappings": [{"containerPort": 8080, "protocol": "tcp"}],
                    "environment": [
                        {"name": "OCR_MODEL", "value": "paddle-v4"},
                        {"name": "CUDA_VISIBLE_DEVICES", "value": "0"}
                    ],
                    "secrets": [{
                        "name": "DATABASE_URL",
                        "valueFrom":
                            "arn:aws:secretsmanager:ap-southeast-2:123456789012:secret:filot/db"
                    }],
                    "healthCheck": {
                        "command": ["CMD-SHELL", "curl -f http://localhost:8080/health || exit 1"],
                        "interval": 30,
                        "timeout": 5,
                        "retries": 3,
                        "startPeriod": 120
                    },
                    "logConfiguration": {
                        "logDriver": "awslogs",
                        "options": {
                            "awslogs-group": "/ecs/filot-ocr-gpu-worker",
                            "awslogs-region": "ap-southeast-2",
                            "awslogs-stream-prefix": "ocr"
                        }
                    },
                    "resourceRequirements": [{"type": "GPU", "value": "1"}],
                    "stopTimeout": 60
                },
                {
                    "name": "log-router",
                    "image": "public.ecr.aws/aws-observability/aws-for-fluent-bit:stable",
                    "memoryReservation": 64,
                    "essential": false
                }
            ]
        });
        serde_json::from_value(json).expect("the test spec is a valid task definition")
    }

    /// What DescribeTaskDefinition returns for a registered request: the request's fields plus
    /// read-only ones and the defaults ECS fills in.
    fn as_aws_returns(input: RegisterTaskDefinitionInput) -> ecs::TaskDefinition {
        let containers = input
            .container_definitions
            .unwrap_or_default()
            .into_iter()
            .map(|mut c| {
                // Absent cpu comes back as 0 (the SDK field is a plain i32 already), absent
                // lists as [], essential as true, ports with protocol and hostPort 0 (bridge).
                c.environment.get_or_insert_with(Vec::new);
                c.mount_points.get_or_insert_with(Vec::new);
                c.volumes_from.get_or_insert_with(Vec::new);
                c.essential.get_or_insert(true);
                for p in c.port_mappings.iter_mut().flatten() {
                    p.host_port.get_or_insert(0);
                    p.protocol.get_or_insert(ecs::TransportProtocol::Tcp);
                }
                c
            })
            .collect();
        let family = input.family.unwrap_or_default();
        ecs::TaskDefinition::builder()
            .task_definition_arn(format!(
                "arn:aws:ecs:ap-southeast-2:123456789012:task-definition/{family}:7"
            ))
            .family(family)
            .revision(7)
            .status(ecs::TaskDefinitionStatus::Active)
            .compatibilities(ecs::Compatibility::Ec2)
            .requires_attributes(
                ecs::Attribute::builder()
                    .name("com.amazonaws.ecs.capability.logging-driver.awslogs")
                    .build()
                    .expect("attribute has a name"),
            )
            .registered_at(DateTime::from_secs(1_760_000_000))
            .registered_by("arn:aws:iam::123456789012:user/deployer")
            .set_task_role_arn(input.task_role_arn)
            .set_execution_role_arn(input.execution_role_arn)
            .set_network_mode(input.network_mode)
            .set_requires_compatibilities(input.requires_compatibilities)
            .set_cpu(input.cpu)
            .set_memory(input.memory)
            .set_runtime_platform(input.runtime_platform)
            .set_container_definitions(Some(containers))
            .set_volumes(Some(input.volumes.unwrap_or_default()))
            .set_placement_constraints(Some(input.placement_constraints.unwrap_or_default()))
            .build()
    }

    #[test]
    fn gpu_task_definition_round_trips_through_sdk_types() {
        let spec = gpu_worker_spec();
        let input = register_input(&spec).expect("spec converts to a request");

        // The request carries ECS's own types: task cpu/memory as strings, container cpu as an
        // integer, GPU as a resource requirement.
        assert_eq!(input.cpu.as_deref(), Some("4096"));
        assert_eq!(input.memory.as_deref(), Some("15360"));
        assert_eq!(input.network_mode, Some(ecs::NetworkMode::Bridge));
        assert_eq!(
            input.requires_compatibilities,
            Some(vec![ecs::Compatibility::Ec2])
        );
        let containers = input
            .container_definitions
            .as_deref()
            .expect("containers are set");
        let ocr = &containers[0];
        assert_eq!(ocr.cpu, 3584);
        assert_eq!(ocr.memory, Some(14336));
        let gpu = &ocr.resource_requirements()[0];
        assert_eq!(
            (gpu.r#type.clone(), gpu.value.as_str()),
            (ecs::ResourceType::Gpu, "1")
        );
        assert_eq!(ocr.port_mappings()[0].container_port, Some(8080));
        assert_eq!(ocr.secrets()[0].name, "DATABASE_URL");
        let log = ocr
            .log_configuration
            .as_ref()
            .expect("log configuration is set");
        assert_eq!(log.log_driver, ecs::LogDriver::Awslogs);
        let health = ocr.health_check.as_ref().expect("health check is set");
        assert!(health.command[1].contains("/health"));
        assert_eq!(
            containers[1].cpu, 0,
            "unset container cpu is sent as ECS's default 0"
        );

        let returned = as_aws_returns(input);
        let described = task_definition_from_sdk(&returned);
        assert_eq!(described.revision, 7);
        assert_eq!(described.status, "ACTIVE");
        assert_eq!(described.spec.normalized(), spec.normalized());
        assert!(
            unsupported_fields(&returned).is_empty(),
            "{:?}",
            unsupported_fields(&returned)
        );
    }

    #[test]
    fn unset_fields_are_not_invented_on_the_way_back() {
        let spec: TaskDefinitionSpec = serde_json::from_value(serde_json::json!({
            "family": "filot-backend-task",
            "networkMode": "awsvpc",
            "containerDefinitions": [{"name": "api", "image": "filot/backend:1",
                                      "portMappings": [{"containerPort": 8080}]}]
        }))
        .expect("valid spec");
        let back = spec_from_sdk(&as_aws_returns(register_input(&spec).expect("converts")));
        let api = &back.container_definitions[0];
        assert_eq!(api.cpu, None);
        assert_eq!(api.environment, None);
        assert_eq!(api.mount_points, None);
        assert_eq!(back.volumes, None);
        assert_eq!(back.placement_constraints, None);
        assert_eq!(back.normalized(), spec.normalized());
    }

    #[test]
    fn unmodelled_fields_are_reported() {
        let td = ecs::TaskDefinition::builder()
            .container_definitions(
                ecs::ContainerDefinition::builder()
                    .name("api")
                    .links("db")
                    .privileged(true)
                    .build(),
            )
            .pid_mode(ecs::PidMode::Host)
            .build();
        assert_eq!(
            unsupported_fields(&td),
            vec![
                "pidMode",
                "containerDefinitions[api].links",
                "containerDefinitions[api].privileged"
            ]
        );
    }

    #[test]
    fn error_kinds_follow_codes_then_status() {
        let cases = [
            (
                Some("ThrottlingException"),
                None,
                Some(400),
                ErrorKind::Throttled,
            ),
            (Some("Throttling"), None, Some(400), ErrorKind::Throttled),
            (
                Some("RequestLimitExceeded"),
                None,
                Some(503),
                ErrorKind::Throttled,
            ),
            (
                Some("AccessDeniedException"),
                None,
                Some(400),
                ErrorKind::AccessDenied,
            ),
            (
                Some("UnauthorizedOperation"),
                None,
                Some(403),
                ErrorKind::AccessDenied,
            ),
            (
                Some("ExpiredToken"),
                None,
                Some(400),
                ErrorKind::AccessDenied,
            ),
            (
                Some("ClusterNotFoundException"),
                None,
                Some(400),
                ErrorKind::NotFound,
            ),
            (
                Some("ServiceNotFoundException"),
                None,
                Some(400),
                ErrorKind::NotFound,
            ),
            (
                Some("TargetGroupNotFound"),
                None,
                Some(400),
                ErrorKind::NotFound,
            ),
            (
                Some("InvalidInstanceID.NotFound"),
                None,
                Some(400),
                ErrorKind::NotFound,
            ),
            (
                Some("ServiceNotActiveException"),
                None,
                Some(400),
                ErrorKind::NotFound,
            ),
            (
                Some("ValidationError"),
                Some("AutoScalingGroup name not found - null"),
                Some(400),
                ErrorKind::NotFound,
            ),
            (
                Some("ClientException"),
                Some("Unable to describe task definition."),
                Some(400),
                ErrorKind::NotFound,
            ),
            (
                Some("ValidationError"),
                Some("MinSize must be <= MaxSize"),
                None,
                ErrorKind::Invalid,
            ),
            (
                Some("InvalidParameterException"),
                None,
                Some(400),
                ErrorKind::Invalid,
            ),
            (
                Some("ServerException"),
                None,
                Some(500),
                ErrorKind::Transient,
            ),
            (None, None, Some(502), ErrorKind::Transient),
            (None, None, Some(429), ErrorKind::Throttled),
            (Some("SomethingNew"), None, Some(400), ErrorKind::Other),
        ];
        for (code, message, status, expected) in cases {
            assert_eq!(
                error_kind(code, message, status),
                expected,
                "{code:?} {message:?}"
            );
        }
    }

    #[test]
    fn gpus_come_from_the_remaining_gpu_resource() {
        let ids = ecs::Resource::builder()
            .name("GPU")
            .r#type("STRINGSET")
            .string_set_value("GPU-aaaa")
            .string_set_value("GPU-bbbb")
            .build();
        let count = ecs::Resource::builder()
            .name("GPU")
            .r#type("INTEGER")
            .integer_value(3)
            .build();
        let cpu = ecs::Resource::builder()
            .name("CPU")
            .integer_value(4096)
            .build();
        assert_eq!(remaining_gpus(&[cpu.clone(), ids]), 2);
        assert_eq!(remaining_gpus(&[count]), 3);
        assert_eq!(remaining_gpus(&[cpu]), 0);
    }

    #[test]
    fn services_map_deployments_events_and_missing_names() {
        let active = ecs::Service::builder()
            .service_name("filot-backend-service")
            .service_arn(
                "arn:aws:ecs:ap-southeast-2:1:service/filot-backend-cluster/filot-backend-service",
            )
            .cluster_arn("arn:aws:ecs:ap-southeast-2:1:cluster/filot-backend-cluster")
            .status("ACTIVE")
            .desired_count(3)
            .deployments(
                ecs::Deployment::builder()
                    .id("ecs-svc/2")
                    .status("PRIMARY")
                    .desired_count(3)
                    .failed_tasks(2)
                    .rollout_state(ecs::DeploymentRolloutState::Failed)
                    .rollout_state_reason("tasks failed to start")
                    .build(),
            )
            .events(
                ecs::ServiceEvent::builder()
                    .id("e1")
                    .created_at(DateTime::from_secs(1_700_000_123))
                    .message("has reached a steady state.")
                    .build(),
            )
            .load_balancers(
                ecs::LoadBalancer::builder()
                    .target_group_arn("arn:tg")
                    .build(),
            )
            .tags(ecs::Tag::builder().key("app").value("filot").build())
            .build();
        let inactive = ecs::Service::builder()
            .service_name("old")
            .status("INACTIVE")
            .build();
        let failure = ecs::Failure::builder()
            .arn("arn:x:service/gone")
            .reason("MISSING")
            .build();
        let requested = ["filot-backend-service", "old", "gone", "unmentioned"].map(String::from);

        let lookup = lookup_from_sdk(
            "filot-backend-cluster",
            &requested,
            &[active, inactive],
            &[failure],
        )
        .expect("only MISSING failures");
        assert_eq!(lookup.missing, ["old", "gone", "unmentioned"]);
        let svc = &lookup.found[0];
        assert_eq!(svc.cluster, "filot-backend-cluster");
        assert_eq!(svc.tags.get("app").map(String::as_str), Some("filot"));
        assert_eq!(svc.target_group_arns, ["arn:tg"]);
        assert_eq!(svc.events[0].created_at, 1_700_000_123);
        let primary = svc.primary().expect("a primary deployment");
        assert_eq!(primary.failed_tasks, 2);
        assert_eq!(primary.rollout_state, Some(RolloutState::Failed));

        let other = ecs::Failure::builder()
            .arn("arn:x")
            .reason("ACCESS_DENIED")
            .build();
        assert!(lookup_from_sdk("c", &requested, &[], &[other]).is_err());
    }

    #[test]
    fn family_and_revision_parse_arns() {
        assert_eq!(
            family_and_revision(
                "arn:aws:ecs:ap-southeast-2:1:task-definition/filot-backend-task:12"
            ),
            Some(("filot-backend-task", 12))
        );
        assert_eq!(family_and_revision("not-an-arn"), None);
    }
}
