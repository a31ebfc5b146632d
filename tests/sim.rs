//! The simulator against the behaviour the reconciler relies on, under paused tokio time.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use ecs_reconciler::cloud::{Cloud, CloudResult, ErrorKind};
use ecs_reconciler::model::{
    AsgUpdate, DeploymentStatus, RolloutState, Service, ServiceUpdate, TaskDefinition,
};
use ecs_reconciler::sim::{Faults, Scenario, SimCloud};

fn sim(yaml: &str) -> SimCloud {
    let scenario = Scenario::parse(yaml).expect("the test scenario parses");
    SimCloud::from_scenario(&scenario, None).expect("the test scenario seeds")
}

/// The `services-stable` condition: one deployment, COMPLETED, running the desired count.
fn is_stable(service: &Service) -> bool {
    service.deployments.len() == 1
        && service.running_count == service.desired_count
        && service.pending_count == 0
        && service.primary().is_some_and(|d| {
            d.rollout_state == Some(RolloutState::Completed) && d.running_count == d.desired_count
        })
}

async fn describe(sim: &SimCloud, cluster: &str, name: &str) -> Service {
    let mut lookup = sim
        .describe_services(cluster, &[name.to_string()])
        .await
        .expect("describe without faults");
    assert_eq!(
        lookup.found.len(),
        1,
        "service {cluster}/{name} should exist"
    );
    lookup.found.remove(0)
}

/// Runs a test body under a simulated deadline whose message says what probably went wrong.
async fn within<T>(limit: Duration, what_went_wrong: &str, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} of simulated time: {what_went_wrong}"),
    }
}

/// Polls the service every `every` until `done` holds, checking `invariant` at each poll.
async fn wait_for(
    sim: &SimCloud,
    cluster: &str,
    name: &str,
    every: Duration,
    mut done: impl FnMut(&Service) -> bool,
) -> Service {
    loop {
        let service = describe(sim, cluster, name).await;
        if done(&service) {
            return service;
        }
        tokio::time::sleep(every).await;
    }
}

async fn register_with_image(sim: &SimCloud, family: &str, image: &str) -> TaskDefinition {
    let current = sim
        .describe_task_definition(family)
        .await
        .expect("the family exists");
    let mut spec = current.spec.clone();
    spec.container_definitions[0].image = image.to_string();
    sim.register_task_definition(&spec)
        .await
        .expect("the new revision registers")
}

async fn deploy(sim: &SimCloud, cluster: &str, service: &str, task_definition: &str) {
    let update = ServiceUpdate {
        task_definition: Some(task_definition.to_string()),
        ..ServiceUpdate::default()
    };
    sim.update_service(cluster, service, &update)
        .await
        .expect("the update is accepted");
}

const WEB: &str = "
seed: 7
clusters:
  prod:
    services:
      web: {images: {app: 'repo/web:v1'}, desiredCount: 3, targetGroups: [web-tg]}
";

#[tokio::test(start_paused = true)]
async fn a_new_task_definition_rolls_out_and_the_service_becomes_stable() {
    let sim = sim(WEB);
    assert!(
        is_stable(&describe(&sim, "prod", "web").await),
        "seeded services start stable"
    );
    let target_group = sim
        .describe_target_groups(&["web-tg".into()])
        .await
        .expect("describe");
    let target_group = target_group[0].arn.clone();

    let v2 = register_with_image(&sim, "web", "repo/web:v2").await;
    deploy(&sim, "prod", "web", &v2.arn).await;
    let rolling = describe(&sim, "prod", "web").await;
    assert_eq!(rolling.deployments.len(), 2);
    assert_eq!(rolling.deployments[0].status, DeploymentStatus::Primary);
    assert_eq!(
        rolling.deployments[0].rollout_state,
        Some(RolloutState::InProgress)
    );
    assert_eq!(rolling.deployments[1].status, DeploymentStatus::Active);

    let stable = within(
        Duration::from_secs(600),
        "the rollout never completed",
        async {
            loop {
                let healthy = sim
                    .describe_target_health(&target_group)
                    .await
                    .expect("describe");
                let healthy = healthy.iter().filter(|t| t.state == "healthy").count();
                assert!(
                    healthy >= 3,
                    "minimumHealthyPercent 100 keeps 3 healthy targets, saw {healthy}"
                );
                let service = describe(&sim, "prod", "web").await;
                if is_stable(&service) {
                    return service;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        },
    )
    .await;

    assert_eq!(stable.task_definition, v2.arn);
    assert_eq!(
        stable.events[0].message,
        "(service web) has reached a steady state."
    );
    assert!(stable
        .events
        .iter()
        .any(|e| e.message.ends_with("deployment completed.")));
    assert!(
        stable
            .events
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
    assert!(
        sim.elapsed() < Duration::from_secs(180),
        "took {:?}",
        sim.elapsed()
    );
    assert_eq!(sim.counters().tasks_failed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_crashing_image_trips_the_circuit_breaker_and_ecs_rolls_back() {
    let sim = sim("
seed: 3
faults: {crashImage: ':broken'}
clusters:
  prod:
    services:
      web: {images: {app: 'repo/web:v1'}, desiredCount: 4}
");
    let v1 = describe(&sim, "prod", "web").await.task_definition;
    let broken = register_with_image(&sim, "web", "repo/web:broken").await;
    deploy(&sim, "prod", "web", &broken.arn).await;

    let failed = within(
        Duration::from_secs(300),
        "the circuit breaker never tripped",
        async {
            wait_for(&sim, "prod", "web", Duration::from_secs(1), |s| {
                s.deployments
                    .iter()
                    .any(|d| d.rollout_state == Some(RolloutState::Failed))
            })
            .await
        },
    )
    .await;
    let primary = failed.primary().expect("a primary deployment");
    assert_eq!(
        primary.task_definition, v1,
        "ECS rolls back to the previous deployment"
    );
    let broken_deployment = failed
        .deployments
        .iter()
        .find(|d| d.task_definition == broken.arn)
        .expect("the failed deployment is still listed");
    assert_eq!(broken_deployment.status, DeploymentStatus::Active);
    assert!(
        broken_deployment.failed_tasks >= 3,
        "threshold is min 3 for 4 tasks"
    );
    assert!(failed
        .events
        .iter()
        .any(|e| e.message.contains("deployment failed")));
    assert!(failed
        .events
        .iter()
        .any(|e| e.message.contains("rolling back to deployment")));
    assert_eq!(
        failed.running_count, 4,
        "the old tasks kept running throughout"
    );

    let settled = within(
        Duration::from_secs(300),
        "the rollback never completed",
        async { wait_for(&sim, "prod", "web", Duration::from_secs(5), is_stable).await },
    )
    .await;
    assert_eq!(settled.task_definition, v1);
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_image_never_stabilises_and_rolls_back_after_failing_health_checks() {
    let sim = sim("
faults: {unhealthyImage: ':sick'}
clusters:
  prod:
    services:
      web: {images: {app: 'repo/web:v1'}, desiredCount: 2, targetGroups: [web-tg]}
");
    let sick = register_with_image(&sim, "web", "repo/web:sick").await;
    deploy(&sim, "prod", "web", &sick.arn).await;

    within(
        Duration::from_secs(120),
        "a sick task was never reported unhealthy",
        async {
            while !sim
                .target_health("web-tg")
                .iter()
                .any(|t| t.state == "unhealthy")
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        },
    )
    .await;
    let settled = within(
        Duration::from_secs(900),
        "health check failures never tripped the breaker",
        async {
            wait_for(&sim, "prod", "web", Duration::from_secs(5), |s| {
                is_stable(s) && s.task_definition != sick.arn
            })
            .await
        },
    )
    .await;
    assert!(settled
        .events
        .iter()
        .any(|e| e.message.contains("is unhealthy in (target-group")));
    assert!(sim.counters().tasks_failed >= 3);
}

const GPU: &str = "
clusters:
  ml:
    autoScalingGroups:
      gpu: {minSize: 0, maxSize: 4, desiredCapacity: 1}
    services:
      infer: {images: {model: 'repo/infer:v1'}, desiredCount: 1, gpus: 1, cpu: 1024, memory: 4096}
";

#[tokio::test(start_paused = true)]
async fn gpu_tasks_stay_pending_with_an_insufficient_gpu_event_until_a_gpu_instance_is_in_service()
{
    let sim = sim(GPU);
    let scale = ServiceUpdate {
        desired_count: Some(2),
        ..ServiceUpdate::default()
    };
    sim.update_service("ml", "infer", &scale)
        .await
        .expect("update");
    tokio::time::sleep(Duration::from_secs(90)).await;

    let waiting = describe(&sim, "ml", "infer").await;
    assert_eq!((waiting.running_count, waiting.pending_count), (1, 1));
    let placement: Vec<_> = waiting
        .events
        .iter()
        .filter(|e| e.message.contains("unable to place a task"))
        .collect();
    assert!(
        placement[0]
            .message
            .contains("has insufficient GPU resource available"),
        "{placement:?}"
    );
    assert_eq!(
        placement.len(),
        2,
        "one event per minute, not one per attempt: {placement:?}"
    );
    assert_eq!(
        waiting.deployments[0].rollout_state,
        Some(RolloutState::Completed)
    );

    let grow = AsgUpdate {
        desired_capacity: Some(2),
        ..AsgUpdate::default()
    };
    sim.update_auto_scaling_group("gpu", &grow)
        .await
        .expect("update");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let group = sim.auto_scaling_group("gpu").expect("group");
    assert_eq!(
        group
            .instances
            .iter()
            .filter(|i| i.lifecycle_state == "Pending")
            .count(),
        1
    );
    assert_eq!(
        describe(&sim, "ml", "infer").await.pending_count,
        1,
        "no room until InService"
    );

    let stable = within(
        Duration::from_secs(120),
        "the task never landed on the new instance",
        async { wait_for(&sim, "ml", "infer", Duration::from_secs(5), is_stable).await },
    )
    .await;
    assert_eq!(stable.running_count, 2);
    let instances = sim.list_container_instances("ml").await.expect("list");
    assert!(instances
        .iter()
        .all(|i| i.remaining_gpus == 0 && i.running_tasks_count == 1));
}

#[tokio::test(start_paused = true)]
async fn launches_beyond_the_capacity_cap_stay_pending_until_the_cap_is_lifted() {
    let sim = sim(&format!("faults: {{maxLaunchableInstances: 1}}\n{GPU}"));
    sim.set_asg_capacity("gpu", 0, 4, 2)
        .expect("valid capacity");
    sim.set_service_desired_count("ml", "infer", 2)
        .expect("the service exists");
    tokio::time::sleep(Duration::from_secs(600)).await;
    let group = sim.auto_scaling_group("gpu").expect("group");
    assert_eq!(group.instances.len(), 2);
    assert_eq!(
        group
            .instances
            .iter()
            .filter(|i| i.lifecycle_state == "Pending")
            .count(),
        1
    );
    assert_eq!(describe(&sim, "ml", "infer").await.pending_count, 1);
    assert!(!sim.settle().await, "a capacity shortage never settles");

    sim.set_faults(Faults::default());
    let settled = within(
        Duration::from_secs(300),
        "lifting the cap did not launch the instance",
        sim.settle(),
    )
    .await;
    assert!(settled);
    assert!(is_stable(&describe(&sim, "ml", "infer").await));
}

#[tokio::test(start_paused = true)]
async fn draining_a_container_instance_moves_its_tasks_to_another_instance() {
    let sim = sim("
clusters:
  ml:
    autoScalingGroups:
      gpu: {minSize: 1, maxSize: 4, desiredCapacity: 2}
    services:
      infer: {images: {model: 'repo/infer:v1'}, desiredCount: 1, gpus: 1}
");
    let task = sim.tasks("ml", "infer").remove(0);
    let from = task
        .ec2_instance_id
        .expect("an EC2 task runs on an instance");
    let instances = sim.list_container_instances("ml").await.expect("list");
    let draining = instances
        .iter()
        .find(|i| i.ec2_instance_id == from)
        .expect("registered");
    sim.update_container_instances_state("ml", std::slice::from_ref(&draining.arn), "DRAINING")
        .await
        .expect("drain");

    within(
        Duration::from_secs(300),
        "the task never left the draining instance",
        async {
            loop {
                let service = describe(&sim, "ml", "infer").await;
                assert!(
                    service.running_count >= 1,
                    "the old task stops only after its replacement runs"
                );
                let tasks = sim.tasks("ml", "infer");
                if tasks.len() == 1 && tasks[0].ec2_instance_id.as_deref() != Some(from.as_str()) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        },
    )
    .await;
    let instances = sim.list_container_instances("ml").await.expect("list");
    let drained = instances
        .iter()
        .find(|i| i.ec2_instance_id == from)
        .expect("still registered");
    assert_eq!(
        (drained.status.as_str(), drained.running_tasks_count),
        ("DRAINING", 0)
    );

    sim.terminate_instance_decrementing(&from)
        .await
        .expect("terminate");
    assert_eq!(
        sim.auto_scaling_group("gpu")
            .expect("group")
            .desired_capacity,
        1
    );
    assert_eq!(
        sim.tasks_killed_by_termination(),
        0,
        "draining first kills nothing"
    );
    assert!(
        within(
            Duration::from_secs(300),
            "the world did not settle",
            sim.settle()
        )
        .await
    );
    assert!(is_stable(&describe(&sim, "ml", "infer").await));
}

#[tokio::test(start_paused = true)]
async fn lowering_desired_capacity_kills_the_tasks_on_the_terminated_instance() {
    let sim = sim("
clusters:
  ml:
    autoScalingGroups:
      gpu: {minSize: 0, maxSize: 4, desiredCapacity: 2}
    services:
      infer: {images: {model: 'repo/infer:v1'}, desiredCount: 2, gpus: 1}
");
    let shrink = AsgUpdate {
        desired_capacity: Some(1),
        ..AsgUpdate::default()
    };
    sim.update_auto_scaling_group("gpu", &shrink)
        .await
        .expect("update");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sim.tasks_killed_by_termination(), 1);
    let service = describe(&sim, "ml", "infer").await;
    assert_eq!(
        (service.running_count, service.pending_count),
        (1, 1),
        "ECS tries to replace it"
    );
}

#[tokio::test(start_paused = true)]
async fn throttling_and_server_errors_surface_as_their_error_kinds_and_are_counted() {
    let sim = sim(&format!("faults: {{throttleRate: 1.0}}\n{WEB}"));
    let err = sim
        .describe_services("prod", &["web".into()])
        .await
        .expect_err("always throttled");
    assert_eq!(err.kind, ErrorKind::Throttled);
    assert_eq!(err.operation, "ecs:DescribeServices");
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let err = sim
        .describe_task_definition("web")
        .await
        .expect_err("always failing");
    assert_eq!(err.kind, ErrorKind::Transient);

    let calls = sim.calls().snapshot();
    assert_eq!(calls.get(&("ecs:DescribeServices", "throttled")), Some(&1));
    assert_eq!(
        calls.get(&("ecs:DescribeTaskDefinition", "transient")),
        Some(&1)
    );
}

#[tokio::test(start_paused = true)]
async fn latency_is_added_to_every_call() {
    let sim = sim(&format!("faults: {{latency: 250ms}}\n{WEB}"));
    let before = tokio::time::Instant::now();
    sim.describe_auto_scaling_groups(&["none".into()])
        .await
        .expect("describe");
    assert_eq!(before.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn describing_twenty_five_services_costs_three_calls() {
    let mut yaml = String::from("clusters:\n  big:\n    services:\n");
    for i in 0..25 {
        yaml.push_str(&format!("      svc-{i:02}: {{desiredCount: 1}}\n"));
    }
    let sim = sim(&yaml);
    let names: Vec<String> = (0..25).map(|i| format!("svc-{i:02}")).collect();
    let lookup = sim
        .describe_services("big", &names)
        .await
        .expect("describe");
    assert_eq!(lookup.found.len(), 25);
    assert_eq!(
        sim.calls().by_operation().get("ecs:DescribeServices"),
        Some(&3)
    );
}

#[tokio::test(start_paused = true)]
async fn missing_clusters_task_definitions_and_groups_are_not_found() {
    let sim = sim(WEB);
    let missing_cluster = sim.describe_services("nope", &["web".into()]).await;
    assert_eq!(kind(missing_cluster), ErrorKind::NotFound);
    assert_eq!(
        kind(sim.describe_task_definition("nope").await),
        ErrorKind::NotFound
    );
    let missing_group = sim
        .update_auto_scaling_group("nope", &AsgUpdate::default())
        .await;
    assert_eq!(kind(missing_group), ErrorKind::NotFound);
    let lookup = sim
        .describe_services("prod", &["web".into(), "gone".into()])
        .await;
    assert_eq!(lookup.expect("the cluster exists").missing, ["gone"]);

    let gpu = self::sim(GPU);
    let inverted = AsgUpdate {
        min_size: Some(3),
        max_size: Some(2),
        ..AsgUpdate::default()
    };
    let rejected = gpu.update_auto_scaling_group("gpu", &inverted).await;
    assert_eq!(kind(rejected), ErrorKind::Invalid);
}

fn kind<T>(result: CloudResult<T>) -> ErrorKind {
    result.map(|_| ()).expect_err("the call should fail").kind
}

const MIXED: &str = "
clusters:
  prod:
    services:
      web: {images: {app: 'repo/web:v1'}, desiredCount: 3, targetGroups: [web-tg]}
      api: {images: {app: 'repo/api:v1'}, desiredCount: 2}
  ml:
    autoScalingGroups:
      gpu: {desiredCapacity: 1, maxSize: 3}
    services:
      infer: {images: {model: 'repo/infer:v1'}, desiredCount: 1, gpus: 1}
";

/// A fixed workload with faults on; returns everything observable about its outcome.
async fn workload(seed: u64) -> String {
    let faults = "{crashImage: ':broken', errorRate: 0.2, throttleRate: 0.1}";
    let sim = sim(&format!("seed: {seed}\nfaults: {faults}\n{MIXED}"));
    sim.set_service_task_definition_image("prod", "web", "app", "repo/web:v2")
        .expect("drift");
    sim.set_service_task_definition_image("prod", "api", "app", "repo/api:broken")
        .expect("drift");
    sim.set_service_desired_count("ml", "infer", 2)
        .expect("drift");
    let mut log = Vec::new();
    for step in 0..120 {
        if step == 10 {
            let grow = AsgUpdate {
                desired_capacity: Some(2),
                ..AsgUpdate::default()
            };
            log.push(format!(
                "{:?}",
                sim.update_auto_scaling_group("gpu", &grow).await
            ));
        }
        let prod = sim
            .describe_services("prod", &["web".into(), "api".into()])
            .await;
        log.push(format!("{prod:?}"));
        tokio::time::sleep(Duration::from_secs(7)).await;
    }
    log.push(format!("{:?}", sim.service("ml", "infer")));
    log.push(format!("{:?} {:?}", sim.counters(), sim.calls().snapshot()));
    log.join("\n")
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_outcome() {
    let first = within(Duration::from_secs(3600), "the workload hung", workload(11)).await;
    let again = within(Duration::from_secs(3600), "the workload hung", workload(11)).await;
    assert!(first == again, "two runs with seed 11 differ");
    let other = within(Duration::from_secs(3600), "the workload hung", workload(12)).await;
    assert!(
        first != other,
        "another seed should draw other ids and faults"
    );
}

#[tokio::test(start_paused = true)]
async fn a_drifted_manifest_seed_starts_stable_but_out_of_line() {
    let manifest = ecs_reconciler::manifest::parse(
        Path::new("/virtual/manifest.yaml"),
        "apiVersion: ecs-reconciler/v1
clusters:
  prod:
    autoScalingGroups:
      gpu: {minSize: 1, maxSize: 4, desiredCapacity: 3}
    services:
      web:
        desiredCount: 3
        taskDefinition: {family: web}
        images: {app: 'repo/web:v1.4.2', proxy: 'repo/envoy:1.30'}
        targetGroups: [web-tg]
",
    )
    .expect("valid manifest");
    let sim = SimCloud::seed_from_manifest(&manifest, true);
    let web = describe(&sim, "prod", "web").await;
    assert!(is_stable(&web));
    assert_eq!(web.desired_count, 2);
    let td = sim
        .describe_task_definition(&web.task_definition)
        .await
        .expect("registered");
    let images: Vec<_> = td
        .spec
        .container_definitions
        .iter()
        .map(|c| c.image.as_str())
        .collect();
    assert_eq!(images, ["repo/web:v1.4.1", "repo/envoy:1.29"]);
    assert_eq!(
        sim.auto_scaling_group("gpu")
            .expect("group")
            .desired_capacity,
        2
    );
    assert!(sim
        .target_health("web-tg")
        .iter()
        .all(|t| t.state == "healthy"));

    let exact = SimCloud::seed_from_manifest(&manifest, false);
    assert_eq!(describe(&exact, "prod", "web").await.desired_count, 3);
}

#[tokio::test(start_paused = true)]
async fn a_speed_factor_runs_simulated_time_faster_than_the_clock() {
    let config = ecs_reconciler::sim::SimConfig {
        speed: 10.0,
        ..Default::default()
    };
    let sim = SimCloud::new(config);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(sim.elapsed(), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn the_example_scenarios_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scenarios");
    let manifest = ecs_reconciler::manifest::parse(
        Path::new("/virtual/manifest.yaml"),
        "apiVersion: ecs-reconciler/v1
clusters:
  demo:
    services:
      web: {desiredCount: 2, taskDefinition: {family: web}, images: {app: 'repo/web:v2'}}
",
    )
    .expect("valid manifest");
    for name in ["gpu-shortage.yaml", "bad-image.yaml"] {
        let scenario = Scenario::load(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        SimCloud::from_scenario(&scenario, Some(&manifest))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Scale smoke test: the daemon's hour against 200 services must not crawl or hang.
#[tokio::test(start_paused = true)]
async fn an_hour_of_two_hundred_services_steps_through_and_settles() {
    let mut yaml = String::from("clusters:\n  big:\n    autoScalingGroups:\n");
    yaml.push_str("      gpu: {desiredCapacity: 60, maxSize: 100}\n    services:\n");
    for i in 0..200 {
        let shape = if i % 4 == 0 {
            "desiredCount: 1, gpus: 1"
        } else {
            "desiredCount: 3"
        };
        yaml.push_str(&format!(
            "      svc-{i:03}: {{{shape}, targetGroups: [tg-{i}]}}\n"
        ));
    }
    let sim = sim(&yaml);
    let names: Vec<String> = (0..200).map(|i| format!("svc-{i:03}")).collect();
    within(
        Duration::from_secs(7200),
        "stepping 200 services hung",
        async {
            for step in 0..120 {
                if step % 10 == 0 {
                    for name in names.iter().step_by(7) {
                        let image = format!("repo/app:v{step}");
                        sim.set_service_task_definition_image("big", name, "app", &image)
                            .expect("the service exists");
                    }
                }
                let lookup = sim
                    .describe_services("big", &names)
                    .await
                    .expect("describe");
                assert_eq!(lookup.found.len(), 200);
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            assert!(sim.settle().await, "the last rollouts should complete");
        },
    )
    .await;
    let lookup = sim
        .describe_services("big", &names)
        .await
        .expect("describe");
    assert!(lookup.found.iter().all(is_stable));
    assert_eq!(
        sim.calls().by_operation().get("ecs:DescribeServices"),
        Some(&(121 * 20))
    );
}
