//! Reconciling an Auto Scaling Group's capacity. Scale-out is one write, then a wait until the
//! new instances are registered in the cluster. Scale-in never lets the group pick victims:
//! chosen instances are drained first and terminated one by one once their tasks have moved.

use std::time::Duration;

use tracing::info;

use super::{Action, Controller, ObjectRef, ReconcileError, State};
use crate::diff::{self, ResourceDiff, ResourceKind};
use crate::manifest::AutoScalingGroupSpec;
use crate::model::{AsgUpdate, AutoScalingGroup, ContainerInstance};

const CAPACITY_POLL: Duration = Duration::from_secs(10);

pub(super) async fn reconcile(ctl: &Controller, obj: &ObjectRef) -> Result<Action, ReconcileError> {
    let manifest = ctl.manifest();
    let Some((cluster, name, spec)) = manifest
        .auto_scaling_groups()
        .find(|(_, n, _)| *n == obj.name)
    else {
        return Ok(Action::AwaitChange);
    };
    // Steady states wait for the next resync, which reads everything in one batch.
    let steady = Action::AwaitChange;

    let Some(group) = observe(ctl, name).await? else {
        let diff = diff::auto_scaling_group(name, spec, None);
        ctl.report(
            obj,
            State::Missing,
            Some(&diff),
            Some("the group does not exist; create it outside ecs-reconciler".into()),
        );
        return Ok(steady);
    };
    let diff = diff::auto_scaling_group(name, spec, Some(&group));
    let draining = ctl.record(obj).draining;

    if diff.in_sync() && draining.is_empty() {
        // Written capacity is not usable capacity until the instances serve the cluster.
        if let Some(wait) = launching(ctl, cluster, &group).await? {
            ctl.report(obj, State::Progressing, Some(&diff), Some(wait));
            return Ok(Action::Requeue(CAPACITY_POLL));
        }
        ctl.report(obj, State::InSync, Some(&diff), None);
        return Ok(steady);
    }
    if ctl.settings.dry_run {
        ctl.report_dry_run(obj, &diff);
        return Ok(steady);
    }

    let target_desired = spec.desired_capacity.unwrap_or(group.desired_capacity);
    if target_desired < group.desired_capacity || !draining.is_empty() {
        return scale_in(ctl, obj, cluster, spec, &group, &diff, target_desired).await;
    }

    let update = AsgUpdate {
        min_size: spec.min_size.filter(|m| *m != group.min_size),
        max_size: spec.max_size.filter(|m| *m != group.max_size),
        desired_capacity: spec
            .desired_capacity
            .filter(|d| *d != group.desired_capacity),
    };
    write(ctl, name, &update, &diff).await?;
    ctl.report(
        obj,
        State::Progressing,
        Some(&diff),
        Some("capacity updated; waiting for instances".into()),
    );
    Ok(Action::Requeue(CAPACITY_POLL))
}

async fn observe(ctl: &Controller, name: &str) -> Result<Option<AutoScalingGroup>, ReconcileError> {
    if let Some(snapshot) = ctl.fresh_snapshot() {
        if let Some(err) = snapshot.errors.get(name) {
            return Err(ReconcileError::Observe(err.clone()));
        }
        if let Some(group) = snapshot.auto_scaling_groups.get(name) {
            return Ok(Some(group.clone()));
        }
    }
    let groups = ctl
        .cloud()
        .describe_auto_scaling_groups(&[name.to_string()])
        .await
        .map_err(ReconcileError::Observe)?;
    Ok(groups.into_iter().find(|g| g.name == name))
}

async fn write(
    ctl: &Controller,
    name: &str,
    update: &AsgUpdate,
    diff: &ResourceDiff,
) -> Result<(), ReconcileError> {
    if *update == AsgUpdate::default() {
        return Ok(());
    }
    let why: Vec<_> = diff.changes().map(|f| f.field.as_str()).collect();
    info!(group = name, ?update, drifted = ?why, "updating auto scaling group");
    ctl.cloud()
        .update_auto_scaling_group(name, update)
        .await
        .map_err(ReconcileError::Apply)?;
    ctl.metrics
        .count_change("autoscaling_group", "update_auto_scaling_group");
    let obj = ObjectRef {
        kind: ResourceKind::AutoScalingGroup,
        name: name.to_string(),
    };
    let applied = serde_json::to_value(update).ok();
    ctl.update_record(&obj, |r| r.last_applied = applied);
    ctl.invalidate_snapshot();
    Ok(())
}

/// Why the group's capacity is not usable yet: instances still launching or not yet
/// registered as container instances. `None` when all of them serve the cluster.
async fn launching(
    ctl: &Controller,
    cluster: &str,
    group: &AutoScalingGroup,
) -> Result<Option<String>, ReconcileError> {
    let in_service = group
        .instances
        .iter()
        .filter(|i| i.lifecycle_state == "InService")
        .count();
    if in_service < group.desired_capacity as usize {
        return Ok(Some(format!(
            "{in_service}/{} instances in service",
            group.desired_capacity
        )));
    }
    let previous = ctl.record(&ObjectRef {
        kind: ResourceKind::AutoScalingGroup,
        name: group.name.clone(),
    });
    // Registration is checked only right after a change, not on every steady-state pass.
    if previous.state != State::Progressing {
        return Ok(None);
    }
    let registered = registered_instances(ctl, cluster, group).await?;
    if registered.len() < in_service {
        return Ok(Some(format!(
            "{}/{in_service} instances registered with cluster {cluster}",
            registered.len()
        )));
    }
    Ok(None)
}

async fn registered_instances(
    ctl: &Controller,
    cluster: &str,
    group: &AutoScalingGroup,
) -> Result<Vec<ContainerInstance>, ReconcileError> {
    let all = ctl
        .cloud()
        .list_container_instances(cluster)
        .await
        .map_err(ReconcileError::Observe)?;
    Ok(all
        .into_iter()
        .filter(|ci| {
            group
                .instances
                .iter()
                .any(|i| i.instance_id == ci.ec2_instance_id)
        })
        .collect())
}

/// Scale-in in three steps over several passes: lower services first (they are in the same
/// cluster), drain chosen instances, terminate each drained instance with a decrement.
async fn scale_in(
    ctl: &Controller,
    obj: &ObjectRef,
    cluster: &str,
    spec: &AutoScalingGroupSpec,
    group: &AutoScalingGroup,
    diff: &ResourceDiff,
    target_desired: i32,
) -> Result<Action, ReconcileError> {
    if let Some(service) = services_still_shrinking(ctl, cluster) {
        ctl.report(
            obj,
            State::Progressing,
            Some(diff),
            Some(format!("waiting for service {service} to scale in first")),
        );
        return Ok(Action::Requeue(CAPACITY_POLL));
    }

    // The minimum must allow the smaller group before any instance goes.
    if let Some(min) = spec.min_size.filter(|m| *m < group.min_size) {
        write(
            ctl,
            &group.name,
            &AsgUpdate {
                min_size: Some(min),
                ..AsgUpdate::default()
            },
            diff,
        )
        .await?;
    }

    let instances = registered_instances(ctl, cluster, group).await?;
    let mut draining = ctl.record(obj).draining;
    // Instances that are gone from the group have been terminated.
    draining.retain(|(_, ec2)| group.instances.iter().any(|i| i.instance_id == *ec2));

    if draining.is_empty() {
        let excess = (group.desired_capacity - target_desired).max(0) as usize;
        if excess > 0 {
            // Fewest tasks first: the least work to move.
            let mut candidates: Vec<&ContainerInstance> = instances
                .iter()
                .filter(|ci| ci.status == "ACTIVE")
                .collect();
            candidates.sort_by_key(|ci| {
                (
                    ci.running_tasks_count + ci.pending_tasks_count,
                    ci.ec2_instance_id.clone(),
                )
            });
            let chosen: Vec<(String, String)> = candidates
                .iter()
                .take(excess)
                .map(|ci| (ci.arn.clone(), ci.ec2_instance_id.clone()))
                .collect();
            if !chosen.is_empty() {
                let arns: Vec<String> = chosen.iter().map(|(a, _)| a.clone()).collect();
                info!(group = %group.name, instances = ?chosen.iter().map(|(_, e)| e).collect::<Vec<_>>(), "draining instances before scale-in");
                ctl.cloud()
                    .update_container_instances_state(cluster, &arns, "DRAINING")
                    .await
                    .map_err(ReconcileError::Apply)?;
                ctl.metrics
                    .count_change("autoscaling_group", "drain_instances");
                draining = chosen;
            }
        }
    }

    // Terminate each drained instance once its tasks have moved elsewhere.
    let mut still = Vec::new();
    for (arn, ec2) in draining {
        let ci = instances.iter().find(|ci| ci.arn == arn);
        let busy = ci.map_or(0, |ci| ci.running_tasks_count + ci.pending_tasks_count);
        if busy > 0 {
            still.push((arn, ec2));
            continue;
        }
        info!(group = %group.name, instance = %ec2, "terminating drained instance with decrement");
        ctl.cloud()
            .terminate_instance_decrementing(&ec2)
            .await
            .map_err(ReconcileError::Apply)?;
        ctl.metrics
            .count_change("autoscaling_group", "terminate_instance");
        ctl.invalidate_snapshot();
    }

    let done = still.is_empty();
    let detail = if done {
        "drained instances terminated".to_string()
    } else {
        format!("{} instance(s) draining", still.len())
    };
    ctl.update_record(obj, |r| r.draining = still);
    if done {
        // Max and desired may now be written without the group choosing a victim.
        let update = AsgUpdate {
            max_size: spec.max_size.filter(|m| *m != group.max_size),
            ..AsgUpdate::default()
        };
        write(ctl, &group.name, &update, diff).await?;
    }
    ctl.report(obj, State::Progressing, Some(diff), Some(detail));
    Ok(Action::Requeue(CAPACITY_POLL))
}

/// A managed service in the cluster whose count is still coming down, if any.
/// A quarantined service whose count is still drifted holds the scale-in until the manifest
/// changes; the group reports it as the service it waits for.
fn services_still_shrinking(ctl: &Controller, cluster: &str) -> Option<String> {
    let manifest = ctl.manifest();
    for (c, name, _) in manifest.services() {
        if c != cluster {
            continue;
        }
        let obj = ObjectRef {
            kind: ResourceKind::Service,
            name: format!("{c}/{name}"),
        };
        let record = ctl.record(&obj);
        let lowering =
            record.drifted_fields.iter().any(|f| f == "desiredCount") || record.rollout.is_some();
        if lowering || !record.reconciled {
            return Some(name.to_string());
        }
    }
    None
}
