//! Reconciling one ECS service: apply drift, watch the rollout until it is stable, roll back to
//! the last known good revision when it is not, and quarantine the failed desired state.
//!
//! The service's own tags are the durable record: last known good revision and count, the
//! rollout in flight and the quarantined manifest state. A restarted controller resumes from them.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::rollout::{self, short_arn, Progress};
use super::{Action, Controller, ObjectRef, ReconcileError, Rollout, State, ROLLOUT_POLL};
use crate::cloud::{CloudError, ErrorKind};
use crate::diff::ResourceDiff;
use crate::manifest::ServiceSpec;
use crate::model::{ServiceUpdate, TargetHealth};
use crate::observe::{service_diff, service_key, ServiceState};
use crate::taskdef::TaskDefinitionSpec;

pub const TAG_LAST_GOOD_TD: &str = "ecs-reconciler/last-good-task-definition";
pub const TAG_LAST_GOOD_COUNT: &str = "ecs-reconciler/last-good-desired-count";
/// `<fingerprint> <task definition ARN> <count> apply|rollback`, or `-` when none is in flight.
pub const TAG_ROLLOUT: &str = "ecs-reconciler/rollout";
/// The fingerprint of a failed manifest state, or `-`.
pub const TAG_QUARANTINE: &str = "ecs-reconciler/quarantine";
const NONE: &str = "-";

/// How many recent revisions of a family are checked for one that already holds the desired
/// content before a new one is registered.
const REUSE_CANDIDATES: usize = 5;
/// How often a rollout held up by capacity is looked at.
const CAPACITY_POLL: Duration = Duration::from_secs(15);

pub(super) async fn reconcile(ctl: &Controller, obj: &ObjectRef) -> Result<Action, ReconcileError> {
    let manifest = ctl.manifest();
    let Some((cluster, name, spec)) = manifest
        .services()
        .find(|(c, s, _)| service_key(c, s) == obj.name)
    else {
        return Ok(Action::AwaitChange);
    };
    // Steady states wait for the next resync, which reads everything in one batch.
    let steady = Action::AwaitChange;

    let Some(state) = observe(ctl, obj, cluster, name, spec).await? else {
        let diff = service_diff(obj.name.clone(), spec, None);
        ctl.report(
            obj,
            State::Missing,
            Some(&diff),
            Some("the service does not exist; create it outside ecs-reconciler".into()),
        );
        return Ok(steady);
    };
    let diff = service_diff(obj.name.clone(), spec, Some(&state));
    let fingerprint = spec.fingerprint();
    resume_from_tags(ctl, obj, spec, &state, &fingerprint);

    if let Some(rollout) = ctl.record(obj).rollout {
        // A manifest that moved on while its rollout was in flight is rolled out at once
        // ("fix forward"); a rollback in flight is always watched to its end.
        if rollout.rollback || rollout.fingerprint == fingerprint {
            return watch_rollout(ctl, obj, spec, &state, &diff, rollout).await;
        }
        info!(
            "manifest changed while a rollout was in flight; the new desired state supersedes it"
        );
        ctl.update_record(obj, |r| r.rollout = None);
    }

    // A quarantined manifest state is not applied again until the manifest changes for this
    // service; its drift stays visible meanwhile.
    let record = ctl.record(obj);
    if let Some(q) = &record.quarantine {
        if *q == fingerprint {
            let end = if record.state == State::RolledBack {
                State::RolledBack
            } else {
                State::Quarantined
            };
            let detail = record.detail.clone();
            ctl.report(obj, end, Some(&diff), detail);
            return Ok(steady);
        }
        info!("manifest changed for a quarantined service; lifting the quarantine");
        ctl.update_record(obj, |r| r.quarantine = None);
        if !ctl.settings.dry_run {
            tag(ctl, &state, &[(TAG_QUARANTINE, NONE.to_string())]).await?;
        }
    }

    if diff.in_sync() {
        record_last_good(ctl, &state).await?;
        ctl.report(obj, State::InSync, Some(&diff), None);
        return Ok(steady);
    }
    if ctl.settings.dry_run {
        ctl.report_dry_run(obj, &diff);
        return Ok(steady);
    }
    if let Some(wait) = capacity_gate(ctl, cluster, spec, &state).await? {
        ctl.report(obj, State::Progressing, Some(&diff), Some(wait));
        return Ok(Action::Requeue(CAPACITY_POLL));
    }
    start_rollout(ctl, obj, spec, &state, &diff, fingerprint).await
}

/// Reads the service: from the resync's snapshot when it is fresh, else with its own call.
async fn observe(
    ctl: &Controller,
    obj: &ObjectRef,
    cluster: &str,
    name: &str,
    spec: &ServiceSpec,
) -> Result<Option<ServiceState>, ReconcileError> {
    if ctl.record(obj).rollout.is_none() {
        if let Some(snapshot) = ctl.fresh_snapshot() {
            if let Some(err) = snapshot.errors.get(&obj.name) {
                return Err(ReconcileError::Observe(err.clone()));
            }
            if let Some(state) = snapshot.services.get(&obj.name) {
                return Ok(Some(state.clone()));
            }
            if snapshot.missing_services.contains(&obj.name) {
                return Ok(None);
            }
        }
    }
    let mut states = match ctl
        .observer
        .observe_services(cluster, &[(name, spec)])
        .await
    {
        Ok(states) => states,
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReconcileError::Observe(e)),
    };
    states
        .pop()
        .unwrap_or(Ok(None))
        .map_err(ReconcileError::Observe)
}

/// After a restart the in-memory record is empty: take the rollout in flight and the quarantine
/// from the service's tags.
fn resume_from_tags(
    ctl: &Controller,
    obj: &ObjectRef,
    spec: &ServiceSpec,
    state: &ServiceState,
    fingerprint: &str,
) {
    let record = ctl.record(obj);
    if record.reconciled {
        return;
    }
    let tags = &state.service.tags;
    let quarantine = tags.get(TAG_QUARANTINE).filter(|q| *q != NONE).cloned();
    // The tag is written before UpdateService; if that call then failed, the recorded rollout
    // never reached ECS and the diff applies it afresh instead.
    let service = &state.service;
    let rollout = tags
        .get(TAG_ROLLOUT)
        .and_then(|t| parse_rollout_tag(t))
        .filter(|(_, td, count, _)| {
            let deployed = service.deployments.iter().any(|d| d.task_definition == *td);
            let scaled = *td == state.running.arn && service.desired_count == *count;
            deployed || scaled
        });
    let spec_timeout = spec.rollout.timeout;
    ctl.update_record(obj, |r| {
        if quarantine.is_some() {
            r.quarantine = quarantine;
        }
        if let Some((fp, td, count, rollback)) = rollout.filter(|_| r.rollout.is_none()) {
            // A rollout for an older manifest state is superseded by the diff instead.
            if fp == fingerprint || rollback {
                info!(
                    task_definition = short_arn(&td),
                    rollback, "resuming the rollout recorded on the service"
                );
                let now = Instant::now();
                r.rollout = Some(Rollout {
                    task_definition: td,
                    desired_count: count,
                    fingerprint: fp,
                    rollback,
                    started: now,
                    deadline: now + spec_timeout,
                });
            }
        }
    });
}

fn parse_rollout_tag(value: &str) -> Option<(String, String, i32, bool)> {
    let mut parts = value.split(' ');
    let fp = parts.next().filter(|p| *p != NONE && !p.is_empty())?;
    let td = parts.next()?;
    let count = parts.next()?.parse().ok()?;
    let rollback = parts.next()? == "rollback";
    Some((fp.to_string(), td.to_string(), count, rollback))
}

fn rollout_tag(r: &Rollout) -> String {
    let kind = if r.rollback { "rollback" } else { "apply" };
    format!(
        "{} {} {} {kind}",
        r.fingerprint, r.task_definition, r.desired_count
    )
}

/// Writes the drifted fields: a task definition revision (reused or registered) and the
/// count, after recording the rollout and the last good state on the service.
async fn start_rollout(
    ctl: &Controller,
    obj: &ObjectRef,
    spec: &ServiceSpec,
    state: &ServiceState,
    diff: &ResourceDiff,
    fingerprint: String,
) -> Result<Action, ReconcileError> {
    let service = &state.service;
    let td_arn = if diff.drifted("taskDefinition") {
        if let Some(base) = state
            .family_latest
            .as_ref()
            .filter(|td| !td.unmodelled.is_empty())
        {
            let why = format!(
                "{} sets fields ecs-reconciler cannot carry ({}); a revision built on it would drop \
                 them, so nothing is registered. Use a `file` source that sets them, or remove them",
                short_arn(&base.arn),
                base.unmodelled.join(", ")
            );
            ctl.report(obj, State::Error, Some(diff), Some(why));
            return Ok(Action::AwaitChange);
        }
        let Some(desired) = &state.desired_td else {
            ctl.report(
                obj,
                State::Error,
                Some(diff),
                Some(format!(
                    "family {} has no ACTIVE revision to build on",
                    spec.task_definition.family()
                )),
            );
            return Ok(Action::AwaitChange);
        };
        Some(resolve_revision(ctl, desired).await?)
    } else {
        None
    };
    let count = spec.desired_count.filter(|_| diff.drifted("desiredCount"));

    let rollout = Rollout {
        task_definition: td_arn.clone().unwrap_or_else(|| state.running.arn.clone()),
        desired_count: count.unwrap_or(service.desired_count),
        fingerprint,
        rollback: false,
        started: Instant::now(),
        deadline: Instant::now() + spec.rollout.timeout,
    };

    // The record goes on the service before the change, so a crash between the two leaves a
    // rollout a restarted controller watches, never a change nobody knows about.
    let mut tags = vec![(TAG_ROLLOUT, rollout_tag(&rollout))];
    if last_good(service).is_none() && service_is_settled(state) {
        tags.push((TAG_LAST_GOOD_TD, state.running.arn.clone()));
        tags.push((TAG_LAST_GOOD_COUNT, service.desired_count.to_string()));
    }
    tag(ctl, state, &tags).await?;

    let update = ServiceUpdate {
        task_definition: td_arn.clone(),
        desired_count: count,
        force_new_deployment: false,
    };
    let why: Vec<_> = diff.changes().map(|f| f.field.as_str()).collect();
    info!(
        cluster = %service.cluster,
        service = %service.name,
        task_definition = td_arn.as_deref().map(short_arn),
        desired_count = count,
        drifted = ?why,
        "updating service"
    );
    ctl.cloud()
        .update_service(&service.cluster, &service.name, &update)
        .await
        .map_err(ReconcileError::Apply)?;
    ctl.metrics.count_change("service", "update_service");
    ctl.invalidate_snapshot();

    let applied = serde_json::json!({ "taskDefinition": rollout.task_definition, "desiredCount": rollout.desired_count });
    ctl.update_record(obj, |r| {
        r.rollout = Some(rollout);
        r.last_applied = Some(applied);
    });
    ctl.report(
        obj,
        State::Progressing,
        Some(diff),
        Some("rollout started".into()),
    );
    Ok(Action::Requeue(ROLLOUT_POLL))
}

/// A revision holding `desired`: the newest of the family that already does, else a new one.
async fn resolve_revision(
    ctl: &Controller,
    desired: &TaskDefinitionSpec,
) -> Result<String, ReconcileError> {
    let candidates = ctl
        .cloud()
        .list_task_definitions(&desired.family, REUSE_CANDIDATES)
        .await
        .map_err(ReconcileError::Observe)?;
    for arn in candidates {
        let td = ctl
            .observer
            .revision(&arn)
            .await
            .map_err(ReconcileError::Observe)?;
        if crate::diff::task_definition_satisfies(desired, &td.spec) {
            info!(
                task_definition = short_arn(&td.arn),
                "reusing a revision that already holds the desired content"
            );
            return Ok(td.arn);
        }
    }
    let td = ctl
        .cloud()
        .register_task_definition(desired)
        .await
        .map_err(ReconcileError::Apply)?;
    info!(
        task_definition = short_arn(&td.arn),
        "registered a task definition revision"
    );
    ctl.metrics
        .count_change("service", "register_task_definition");
    ctl.observer.remember(&td);
    Ok(td.arn)
}

/// Looks at a rollout in flight and decides: done, keep waiting, or fail (and roll back).
async fn watch_rollout(
    ctl: &Controller,
    obj: &ObjectRef,
    spec: &ServiceSpec,
    state: &ServiceState,
    diff: &ResourceDiff,
    rollout: Rollout,
) -> Result<Action, ReconcileError> {
    let targets = target_health(ctl, spec).await?;
    let progress = rollout::assess(
        &state.service,
        &rollout.task_definition,
        rollout.desired_count,
        targets.as_deref(),
    );
    match progress {
        Progress::Stable => finish_rollout(ctl, obj, state, diff, rollout).await,
        Progress::WaitingForCapacity { reason } => {
            // Missing capacity is not a bad image: keep waiting, never roll back for it.
            ctl.report(
                obj,
                State::Progressing,
                Some(diff),
                Some(format!("waiting for capacity: {reason}")),
            );
            Ok(Action::Requeue(CAPACITY_POLL))
        }
        Progress::Progressing {
            running,
            desired,
            pending,
            deployments,
            detail,
        } => {
            if Instant::now() >= rollout.deadline {
                let reason = format!(
                    "not stable after {} ({running}/{desired} running, {pending} pending, {deployments} deployments, {detail})",
                    humantime::format_duration(rollout.deadline - rollout.started)
                );
                return fail_rollout(ctl, obj, spec, state, diff, rollout, reason).await;
            }
            info!(running, desired, pending, deployments, %detail, "rollout in progress");
            let detail = format!(
                "{running}/{desired} running, {pending} pending, {deployments} deployment(s)"
            );
            ctl.report(obj, State::Progressing, Some(diff), Some(detail));
            Ok(Action::Requeue(ROLLOUT_POLL))
        }
        Progress::Failed { reason } => {
            fail_rollout(ctl, obj, spec, state, diff, rollout, reason).await
        }
    }
}

async fn finish_rollout(
    ctl: &Controller,
    obj: &ObjectRef,
    state: &ServiceState,
    diff: &ResourceDiff,
    rollout: Rollout,
) -> Result<Action, ReconcileError> {
    let took = rollout.started.elapsed();
    let mut tags = vec![(TAG_ROLLOUT, NONE.to_string())];
    if !rollout.rollback {
        tags.push((TAG_LAST_GOOD_TD, rollout.task_definition.clone()));
        tags.push((TAG_LAST_GOOD_COUNT, rollout.desired_count.to_string()));
    }
    tag(ctl, state, &tags).await?;
    ctl.update_record(obj, |r| r.rollout = None);

    if rollout.rollback {
        info!(
            task_definition = short_arn(&rollout.task_definition),
            "rollback is stable"
        );
        let detail = ctl
            .record(obj)
            .detail
            .map(|d| d.replace("rolling back: ", "rolled back: "));
        ctl.report(obj, State::RolledBack, Some(diff), detail);
    } else {
        info!(took = ?took, "rollout is stable");
        ctl.metrics.observe_rollout(&obj.name, took.as_secs_f64());
        let end = if diff.in_sync() {
            State::InSync
        } else {
            State::Drifted
        };
        ctl.report(obj, end, Some(diff), None);
    }
    Ok(Action::AwaitChange)
}

/// Quarantines the manifest state that failed and, when allowed, restores the last good one.
async fn fail_rollout(
    ctl: &Controller,
    obj: &ObjectRef,
    spec: &ServiceSpec,
    state: &ServiceState,
    diff: &ResourceDiff,
    rollout: Rollout,
    reason: String,
) -> Result<Action, ReconcileError> {
    let service = &state.service;
    if rollout.rollback {
        warn!(%reason, "rollback did not stabilize; needs a human");
        tag(ctl, state, &[(TAG_ROLLOUT, NONE.to_string())]).await?;
        ctl.update_record(obj, |r| r.rollout = None);
        ctl.report(
            obj,
            State::Error,
            Some(diff),
            Some(format!("rollback failed: {reason}")),
        );
        return Ok(Action::AwaitChange);
    }

    warn!(%reason, "rollout failed; quarantining this manifest state until it changes");
    let last_good = last_good(service);
    let mut tags = vec![(TAG_QUARANTINE, rollout.fingerprint.clone())];
    let restore = match last_good {
        Some((td, count)) if spec.rollout.rollback => Some(Rollout {
            task_definition: td,
            desired_count: count,
            fingerprint: rollout.fingerprint.clone(),
            rollback: true,
            started: Instant::now(),
            deadline: Instant::now() + spec.rollout.timeout,
        }),
        _ => None,
    };
    tags.push((
        TAG_ROLLOUT,
        restore.as_ref().map_or(NONE.to_string(), rollout_tag),
    ));
    tag(ctl, state, &tags).await?;
    ctl.update_record(obj, |r| {
        r.quarantine = Some(rollout.fingerprint.clone());
        r.rollout = None;
    });

    let Some(restore) = restore else {
        let why = if spec.rollout.rollback {
            "no last known good state is recorded"
        } else {
            "rollback is off"
        };
        ctl.report(
            obj,
            State::Quarantined,
            Some(diff),
            Some(format!("rollout failed: {reason}; not rolled back: {why}")),
        );
        return Ok(Action::AwaitChange);
    };

    info!(
        cluster = %service.cluster,
        service = %service.name,
        task_definition = short_arn(&restore.task_definition),
        desired_count = restore.desired_count,
        "rolling back to the last known good state"
    );
    let update = ServiceUpdate {
        task_definition: Some(restore.task_definition.clone()),
        desired_count: spec.desired_count.map(|_| restore.desired_count),
        force_new_deployment: false,
    };
    ctl.cloud()
        .update_service(&service.cluster, &service.name, &update)
        .await
        .map_err(ReconcileError::Apply)?;
    ctl.metrics.count_change("service", "rollback");
    ctl.metrics.count_rollback(&obj.name);
    ctl.invalidate_snapshot();
    ctl.update_record(obj, |r| r.rollout = Some(restore));
    ctl.report(
        obj,
        State::Progressing,
        Some(diff),
        Some(format!("rolling back: {reason}")),
    );
    Ok(Action::Requeue(ROLLOUT_POLL))
}

/// Records the running revision and count as last known good once the service is settled on
/// them, if the tags do not say so already.
async fn record_last_good(ctl: &Controller, state: &ServiceState) -> Result<(), ReconcileError> {
    if ctl.settings.dry_run || !service_is_settled(state) {
        return Ok(());
    }
    let service = &state.service;
    let current = (state.running.arn.clone(), service.desired_count);
    if last_good(service).as_ref() == Some(&current) {
        return Ok(());
    }
    tag(
        ctl,
        state,
        &[
            (TAG_LAST_GOOD_TD, current.0),
            (TAG_LAST_GOOD_COUNT, current.1.to_string()),
        ],
    )
    .await
}

fn service_is_settled(state: &ServiceState) -> bool {
    let s = &state.service;
    s.deployments.len() == 1 && s.running_count == s.desired_count
}

fn last_good(service: &crate::model::Service) -> Option<(String, i32)> {
    let td = service.tags.get(TAG_LAST_GOOD_TD)?;
    let count = service.tags.get(TAG_LAST_GOOD_COUNT)?.parse().ok()?;
    Some((td.clone(), count))
}

async fn tag(
    ctl: &Controller,
    state: &ServiceState,
    tags: &[(&str, String)],
) -> Result<(), ReconcileError> {
    let unchanged = tags
        .iter()
        .all(|(k, v)| state.service.tags.get(*k) == Some(v));
    if unchanged {
        return Ok(());
    }
    let map: BTreeMap<String, String> = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    info!(service = %state.service.name, tags = ?map, "recording rollout state in service tags");
    ctl.cloud()
        .tag_resource(&state.service.arn, &map)
        .await
        .map_err(ReconcileError::Apply)?;
    ctl.metrics.count_change("service", "tag_service");
    ctl.invalidate_snapshot();
    Ok(())
}

/// Health of every target in the service's target groups, `None` when it has none.
async fn target_health(
    ctl: &Controller,
    spec: &ServiceSpec,
) -> Result<Option<Vec<TargetHealth>>, ReconcileError> {
    if spec.target_groups.is_empty() {
        return Ok(None);
    }
    let unknown: Vec<String> = {
        let cache = ctl.target_groups.lock().unwrap_or_else(|p| p.into_inner());
        spec.target_groups
            .iter()
            .filter(|n| !cache.contains_key(*n))
            .cloned()
            .collect()
    };
    if !unknown.is_empty() {
        let found = ctl
            .cloud()
            .describe_target_groups(&unknown)
            .await
            .map_err(ReconcileError::Observe)?;
        let mut cache = ctl.target_groups.lock().unwrap_or_else(|p| p.into_inner());
        for tg in found {
            cache.insert(tg.name, tg.arn);
        }
    }
    let arns: Vec<String> = {
        let cache = ctl.target_groups.lock().unwrap_or_else(|p| p.into_inner());
        spec.target_groups
            .iter()
            .filter_map(|n| cache.get(n).cloned())
            .collect()
    };
    if arns.len() < spec.target_groups.len() {
        return Err(ReconcileError::Observe(CloudError::new(
            ErrorKind::NotFound,
            "elbv2:DescribeTargetGroups",
            format!("target groups {:?} not all found", spec.target_groups),
        )));
    }
    let mut all = Vec::new();
    for arn in arns {
        all.extend(
            ctl.cloud()
                .describe_target_health(&arn)
                .await
                .map_err(ReconcileError::Observe)?,
        );
    }
    Ok(Some(all))
}

/// Before a service in a cluster with managed Auto Scaling Groups grows, the groups must have
/// reached their desired capacity with every instance registered in the cluster. Returns why
/// the service waits, or `None` to go ahead.
async fn capacity_gate(
    ctl: &Controller,
    cluster: &str,
    spec: &ServiceSpec,
    state: &ServiceState,
) -> Result<Option<String>, ReconcileError> {
    let grows = spec
        .desired_count
        .is_some_and(|c| c > state.service.desired_count);
    let manifest = ctl.manifest();
    let groups: Vec<&str> = manifest
        .auto_scaling_groups()
        .filter(|(c, _, _)| *c == cluster)
        .map(|(_, n, _)| n)
        .collect();
    if !grows || groups.is_empty() {
        return Ok(None);
    }
    for group in &groups {
        let obj = ObjectRef {
            kind: crate::diff::ResourceKind::AutoScalingGroup,
            name: group.to_string(),
        };
        let record = ctl.record(&obj);
        if record.state == State::Progressing
            || record.state == State::Drifted && !record.reconciled
        {
            return Ok(Some(format!(
                "waiting for capacity: auto scaling group {group} is {}",
                record.state.as_str()
            )));
        }
    }
    Ok(None)
}
