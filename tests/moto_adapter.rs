//! `AwsCloud` against a real `moto_server` over HTTP: batching, call counts, errors, round trips.

#[path = "support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use ecs_reconciler::cloud::aws::AwsCloud;
use ecs_reconciler::cloud::{Cloud, ErrorKind};
use ecs_reconciler::model::{AsgUpdate, DeploymentStatus, RolloutState, ServiceUpdate};
use ecs_reconciler::taskdef::TaskDefinitionSpec;
use moto::{Moto, BACKEND_CLUSTER, BACKEND_SERVICE, BACKEND_TG, GPU_ASG, GPU_CLUSTER, GPU_FAMILY};

/// Every cloud call in these tests goes through this, so a wedged server fails the test instead
/// of hanging it.
async fn within<T>(moto: &Moto, what: &str, fut: impl Future<Output = T>) -> T {
    const LIMIT: Duration = Duration::from_secs(60);
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!(
            "{what} took longer than {LIMIT:?}: moto_server at {} has probably stopped answering \
             (or the SDK keeps retrying a refused connection). Last moto log lines:\n{}",
            moto.endpoint(),
            moto.log_tail()
        ),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn describe_services_batches_ten_per_call_and_reports_missing_names() {
    let moto = Moto::start();
    let mut topology = moto::filot_topology();
    for i in 0..22 {
        moto::add_backend_service(&mut topology, &format!("filot-extra-{i:02}"), false);
    }
    moto::add_backend_service(&mut topology, "filot-retired", true);
    moto.seed(&topology);
    let cloud = moto.cloud().await;

    // 25 names: 22 extra + the backend service exist, one was deleted, one never existed.
    let mut asked: Vec<String> = (0..22).map(|i| format!("filot-extra-{i:02}")).collect();
    asked.insert(7, BACKEND_SERVICE.to_string());
    asked.push("filot-retired".into());
    asked.push("filot-does-not-exist".into());
    assert_eq!(asked.len(), 25);
    let lookup = within(
        &moto,
        "describe_services",
        cloud.describe_services(BACKEND_CLUSTER, &asked),
    )
    .await
    .expect("describe_services works against moto");

    assert_eq!(
        cloud.calls().by_operation().get("ecs:DescribeServices"),
        Some(&3)
    );
    assert_eq!(cloud.calls().total(), 3, "{:?}", cloud.calls().snapshot());
    assert_eq!(lookup.found.len(), 23);
    assert_eq!(
        lookup.missing,
        ["filot-retired", "filot-does-not-exist"],
        "INACTIVE counts as missing"
    );

    let backend = lookup
        .found
        .iter()
        .find(|s| s.name == BACKEND_SERVICE)
        .expect("backend found");
    assert_eq!(backend.cluster, BACKEND_CLUSTER);
    assert_eq!(backend.desired_count, 3);
    assert_eq!(
        backend.tags.get("managed-by").map(String::as_str),
        Some("ecs-reconciler"),
        "include=TAGS"
    );
    assert_eq!(backend.target_group_arns.len(), 1);
    assert!(backend
        .task_definition
        .ends_with("task-definition/filot-backend-task:1"));
    let primary = backend.primary().expect("a PRIMARY deployment");
    assert_eq!(primary.status, DeploymentStatus::Primary);
    // moto never completes a deployment.
    assert_eq!(primary.rollout_state, Some(RolloutState::InProgress));
}

#[tokio::test]
async fn auto_scaling_group_reads_with_instances_and_scales() {
    let moto = Moto::start();
    let seeded = moto.seed(&moto::filot_topology());
    let cloud = moto.cloud().await;
    let seeded_ids = &seeded.auto_scaling_groups[GPU_ASG];

    let groups = within(
        &moto,
        "describe_auto_scaling_groups",
        cloud.describe_auto_scaling_groups(&names(&[GPU_ASG, "no-such-asg"])),
    )
    .await
    .expect("describe_auto_scaling_groups works");
    assert_eq!(
        cloud
            .calls()
            .by_operation()
            .get("autoscaling:DescribeAutoScalingGroups"),
        Some(&1)
    );
    assert_eq!(groups.len(), 1, "a missing name is simply absent");
    let group = &groups[0];
    assert_eq!(
        (group.min_size, group.max_size, group.desired_capacity),
        (1, 4, 1)
    );
    let ids: Vec<&str> = group
        .instances
        .iter()
        .map(|i| i.instance_id.as_str())
        .collect();
    assert_eq!(
        ids,
        seeded_ids.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(group.instances[0].lifecycle_state, "InService");
    assert_eq!(group.instances[0].health_status, "Healthy");

    let container_instances = within(
        &moto,
        "list_container_instances",
        cloud.list_container_instances(GPU_CLUSTER),
    )
    .await
    .expect("list_container_instances works");
    assert_eq!(container_instances.len(), 1);
    assert_eq!(&container_instances[0].ec2_instance_id, &seeded_ids[0]);
    assert_eq!(container_instances[0].status, "ACTIVE");
    // moto registers no GPU resource on container instances, so none remain.
    assert_eq!(container_instances[0].remaining_gpus, 0);

    let scale_up = AsgUpdate {
        desired_capacity: Some(2),
        ..AsgUpdate::default()
    };
    within(
        &moto,
        "update_auto_scaling_group",
        cloud.update_auto_scaling_group(GPU_ASG, &scale_up),
    )
    .await
    .expect("update_auto_scaling_group works");
    let group = within(
        &moto,
        "re-read",
        cloud.describe_auto_scaling_groups(&names(&[GPU_ASG])),
    )
    .await
    .expect("re-read works")
    .remove(0);
    assert_eq!((group.desired_capacity, group.instances.len()), (2, 2));

    let victim = group.instances[0].instance_id.clone();
    within(
        &moto,
        "terminate",
        cloud.terminate_instance_decrementing(&victim),
    )
    .await
    .expect("terminate_instance_decrementing works");
    let group = within(
        &moto,
        "re-read",
        cloud.describe_auto_scaling_groups(&names(&[GPU_ASG])),
    )
    .await
    .expect("re-read works")
    .remove(0);
    assert_eq!(
        group.desired_capacity, 1,
        "ShouldDecrementDesiredCapacity was sent"
    );
    assert!(group.instances.iter().all(|i| i.instance_id != victim));
    assert_eq!(cloud.calls().writes(), 2);
}

#[tokio::test]
async fn target_group_lookup_survives_a_missing_name() {
    let moto = Moto::start();
    let seeded = moto.seed(&moto::filot_topology());
    let cloud = moto.cloud().await;

    let groups = within(
        &moto,
        "describe_target_groups",
        cloud.describe_target_groups(&names(&[BACKEND_TG, "filot-missing-tg"])),
    )
    .await
    .expect("a missing name does not fail the lookup");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, BACKEND_TG);
    assert_eq!(groups[0].arn, seeded.target_groups[BACKEND_TG]);

    // The batch fails as a whole (TargetGroupNotFound), then each name is asked alone.
    let snapshot = cloud.calls().snapshot();
    assert_eq!(
        snapshot.get(&("elbv2:DescribeTargetGroups", "not_found")),
        Some(&2),
        "{snapshot:?}"
    );
    assert_eq!(
        snapshot.get(&("elbv2:DescribeTargetGroups", "ok")),
        Some(&1),
        "{snapshot:?}"
    );

    let health = within(
        &moto,
        "describe_target_health",
        cloud.describe_target_health(&groups[0].arn),
    )
    .await
    .expect("describe_target_health works");
    assert!(
        health.is_empty(),
        "nothing is registered in moto's target group: {health:?}"
    );
}

#[tokio::test]
async fn registered_task_definition_describes_back_to_the_same_spec() {
    let moto = Moto::start();
    moto.seed(&moto::filot_topology());
    let cloud = moto.cloud().await;
    let spec: TaskDefinitionSpec =
        serde_json::from_value(moto::gpu_worker_task_definition("filot-ocr:1.5.0"))
            .expect("the GPU worker is a valid spec");

    let registered = within(&moto, "register", cloud.register_task_definition(&spec))
        .await
        .expect("register_task_definition works");
    assert_eq!(registered.revision, 2, "the seed registered revision 1");
    assert_eq!(registered.status, "ACTIVE");
    assert_eq!(registered.spec.normalized(), spec.normalized());

    let described = within(
        &moto,
        "describe",
        cloud.describe_task_definition(&registered.arn),
    )
    .await
    .expect("describe_task_definition works");
    assert_eq!(described.spec.normalized(), spec.normalized());
    assert_eq!(described.spec.gpus(), 1);
    assert_eq!(described.spec.container_definitions[0].cpu, Some(3584));

    let latest = within(
        &moto,
        "describe by family",
        cloud.describe_task_definition(GPU_FAMILY),
    )
    .await
    .expect("describe by family works");
    assert_eq!(latest.arn, registered.arn);

    // A family whose name starts with the other's must not show up in its listing.
    let mut canary = spec.clone();
    canary.family = format!("{GPU_FAMILY}-canary");
    within(
        &moto,
        "register canary",
        cloud.register_task_definition(&canary),
    )
    .await
    .expect("register canary works");
    let listed = within(&moto, "list", cloud.list_task_definitions(GPU_FAMILY, 5))
        .await
        .expect("list_task_definitions works");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0], registered.arn, "newest first");
    assert!(listed[1].ends_with(&format!("{GPU_FAMILY}:1")));
    let one = within(
        &moto,
        "list one",
        cloud.list_task_definitions(GPU_FAMILY, 1),
    )
    .await
    .expect("list_task_definitions works");
    assert_eq!(one, std::slice::from_ref(&registered.arn));
}

#[tokio::test]
async fn update_service_and_tags_are_written() {
    let moto = Moto::start();
    moto.seed(&moto::filot_topology());
    let cloud = moto.cloud().await;

    let update = ServiceUpdate {
        desired_count: Some(5),
        ..ServiceUpdate::default()
    };
    within(
        &moto,
        "update_service",
        cloud.update_service(BACKEND_CLUSTER, BACKEND_SERVICE, &update),
    )
    .await
    .expect("update_service works");
    let lookup = within(
        &moto,
        "describe_services",
        cloud.describe_services(BACKEND_CLUSTER, &names(&[BACKEND_SERVICE])),
    )
    .await
    .expect("describe_services works");
    let service = &lookup.found[0];
    assert_eq!(service.desired_count, 5);

    let tags = BTreeMap::from([("owner".to_string(), "platform".to_string())]);
    within(
        &moto,
        "tag_resource",
        cloud.tag_resource(&service.arn, &tags),
    )
    .await
    .expect("tag_resource works");
    let lookup = within(
        &moto,
        "describe_services",
        cloud.describe_services(BACKEND_CLUSTER, &names(&[BACKEND_SERVICE])),
    )
    .await
    .expect("describe_services works");
    let service = &lookup.found[0];
    assert_eq!(
        service.tags.get("owner").map(String::as_str),
        Some("platform")
    );
    assert_eq!(
        service.tags.get("app").map(String::as_str),
        Some("filot"),
        "other tags kept"
    );

    // An update with nothing in it is not sent at all.
    within(
        &moto,
        "empty update",
        cloud.update_service(BACKEND_CLUSTER, BACKEND_SERVICE, &ServiceUpdate::default()),
    )
    .await
    .expect("an empty update is a no-op");
    assert_eq!(cloud.calls().writes(), 2, "{:?}", cloud.calls().snapshot());
}

#[tokio::test]
async fn missing_resources_classify_as_not_found() {
    let moto = Moto::start();
    moto.seed(&moto::filot_topology());
    let cloud = moto.cloud().await;

    // ECS (and moto) answer ClusterNotFoundException for a cluster that does not exist.
    let err = within(
        &moto,
        "describe_services on a missing cluster",
        cloud.describe_services("no-such-cluster", &names(&["api"])),
    )
    .await
    .expect_err("a missing cluster is an error, not an empty lookup");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert_eq!(err.operation, "ecs:DescribeServices");
    assert!(err.message.contains("ClusterNotFoundException"), "{err}");

    // ServiceNotFoundException.
    let update = ServiceUpdate {
        desired_count: Some(1),
        ..ServiceUpdate::default()
    };
    let err = within(
        &moto,
        "update missing service",
        cloud.update_service(BACKEND_CLUSTER, "ghost", &update),
    )
    .await
    .expect_err("updating a missing service fails");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");

    // ECS answers ClientException "Unable to describe task definition." for an unknown family.
    let err = within(
        &moto,
        "describe missing family",
        cloud.describe_task_definition("ghost-family"),
    )
    .await
    .expect_err("describing a missing family fails");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");

    // Auto Scaling answers ValidationError "AutoScalingGroup name not found".
    let update = AsgUpdate {
        max_size: Some(2),
        ..AsgUpdate::default()
    };
    let err = within(
        &moto,
        "update missing asg",
        cloud.update_auto_scaling_group("ghost-asg", &update),
    )
    .await
    .expect_err("updating a missing group fails");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");

    let snapshot = cloud.calls().snapshot();
    assert_eq!(
        snapshot.get(&("ecs:DescribeServices", "not_found")),
        Some(&1),
        "{snapshot:?}"
    );
    assert_eq!(
        cloud.calls().total(),
        4,
        "not-found errors are not retried: {snapshot:?}"
    );
}

/// Set in the environment of the child process that [`from_env_finds_moto_through_the_environment`]
/// starts.
const CHILD_MARKER: &str = "MOTO_ADAPTER_FROM_ENV_CHILD";

#[tokio::test]
async fn from_env_finds_moto_through_the_environment() {
    let moto = Moto::start();
    moto.seed(&moto::filot_topology());

    // Environment variables are process-wide, so the check runs in a child process of this test
    // binary with exactly the environment an `ecs-reconciler` process would be given.
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"));
    child
        .args(["--exact", "from_env_child", "--ignored", "--nocapture"])
        .env(CHILD_MARKER, "1");
    moto.configure(&mut child);
    // The child bounds its own wait, so this blocking task ends even if moto does not answer.
    let out = within(
        &moto,
        "the from_env child process",
        tokio::task::spawn_blocking(move || child.output()),
    )
    .await
    .expect("the child process task completes")
    .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Only does something when started by [`from_env_finds_moto_through_the_environment`].
#[tokio::test]
#[ignore = "run as a child process by from_env_finds_moto_through_the_environment"]
async fn from_env_child() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        return;
    }
    let cloud = AwsCloud::from_env(None).await;
    let lookup = tokio::time::timeout(
        Duration::from_secs(60),
        cloud.describe_services(BACKEND_CLUSTER, &names(&[BACKEND_SERVICE])),
    )
    .await
    .expect("from_env should reach moto quickly; AWS_ENDPOINT_URL was probably not honoured")
    .expect("describe_services works through from_env");
    assert_eq!(lookup.found.len(), 1);
}
