//! Whether a rollout is stable, still progressing, waiting for capacity or failed: a pure
//! judgement over one observation of the service and its targets.

use crate::model::{RolloutState, Service, TargetHealth};

/// What one observation says about a rollout towards `target_td` with `target_count` tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Stable,
    Progressing {
        running: i32,
        desired: i32,
        pending: i32,
        deployments: usize,
        detail: String,
    },
    /// Tasks cannot be placed for lack of capacity; not a reason to roll the image back.
    WaitingForCapacity {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

/// Judges a rollout. `targets` is the health of every target in the service's target groups,
/// `None` when the service has none.
pub fn assess(
    service: &Service,
    target_td: &str,
    target_count: i32,
    targets: Option<&[TargetHealth]>,
) -> Progress {
    let Some(primary) = service.primary() else {
        return Progress::Progressing {
            running: service.running_count,
            desired: target_count,
            pending: service.pending_count,
            deployments: service.deployments.len(),
            detail: "no PRIMARY deployment yet".into(),
        };
    };

    // ECS's circuit breaker rolls back by making the previous revision PRIMARY again: the
    // service may well settle, but not on what we asked for.
    if primary.task_definition != target_td {
        return Progress::Failed {
            reason: format!(
                "the PRIMARY deployment runs {} instead of {} (rolled back by ECS)",
                short_arn(&primary.task_definition),
                short_arn(target_td)
            ),
        };
    }
    if primary.rollout_state == Some(RolloutState::Failed) {
        let why = primary
            .rollout_state_reason
            .clone()
            .unwrap_or_else(|| "no reason given".into());
        return Progress::Failed {
            reason: format!("deployment failed: {why}"),
        };
    }

    let unhealthy = targets
        .unwrap_or_default()
        .iter()
        .filter(|t| t.state != "healthy" && t.state != "draining")
        .count();
    let settled = service.deployments.len() == 1
        && primary.running_count == target_count
        && service.desired_count == target_count
        && service.running_count == target_count
        && primary.rollout_state != Some(RolloutState::InProgress);
    let targets_ok = unhealthy == 0 && targets.is_none_or(|t| healthy(t) >= target_count as usize);
    if settled && targets_ok {
        return Progress::Stable;
    }

    if primary.pending_count > 0 || primary.running_count < target_count {
        if let Some(event) = placement_failure(service) {
            return Progress::WaitingForCapacity { reason: event };
        }
    }

    let detail = if settled {
        format!("{unhealthy} target(s) not healthy yet")
    } else {
        format!(
            "rollout {}",
            primary.rollout_state.map_or("unknown", state_name)
        )
    };
    Progress::Progressing {
        running: primary.running_count,
        desired: target_count,
        pending: primary.pending_count,
        deployments: service.deployments.len(),
        detail,
    }
}

fn healthy(targets: &[TargetHealth]) -> usize {
    targets.iter().filter(|t| t.state == "healthy").count()
}

fn state_name(state: RolloutState) -> &'static str {
    match state {
        RolloutState::InProgress => "in progress",
        RolloutState::Completed => "completed",
        RolloutState::Failed => "failed",
    }
}

/// The newest service event, if it says a task could not be placed.
fn placement_failure(service: &Service) -> Option<String> {
    let newest = service.events.first()?;
    let placement = newest.message.contains("unable to place a task");
    placement.then(|| newest.message.clone())
}

/// `family:revision` from a task definition ARN, for messages.
pub fn short_arn(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Deployment, DeploymentStatus, ServiceEvent};

    fn deployment(
        status: DeploymentStatus,
        td: &str,
        running: i32,
        state: RolloutState,
    ) -> Deployment {
        Deployment {
            id: format!("ecs-svc/{td}"),
            status,
            task_definition: td.into(),
            desired_count: running,
            running_count: running,
            pending_count: 0,
            failed_tasks: 0,
            rollout_state: Some(state),
            rollout_state_reason: None,
        }
    }

    fn service(deployments: Vec<Deployment>, desired: i32) -> Service {
        let running = deployments.iter().map(|d| d.running_count).sum();
        Service {
            arn: "arn:svc".into(),
            name: "s".into(),
            cluster: "c".into(),
            status: "ACTIVE".into(),
            desired_count: desired,
            running_count: running,
            pending_count: 0,
            task_definition: deployments[0].task_definition.clone(),
            deployments,
            events: vec![],
            target_group_arns: vec![],
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn one_completed_deployment_at_count_is_stable() {
        let s = service(
            vec![deployment(
                DeploymentStatus::Primary,
                "td:2",
                3,
                RolloutState::Completed,
            )],
            3,
        );
        assert_eq!(assess(&s, "td:2", 3, None), Progress::Stable);
    }

    #[test]
    fn two_deployments_are_still_progressing() {
        let s = service(
            vec![
                deployment(
                    DeploymentStatus::Primary,
                    "td:2",
                    2,
                    RolloutState::InProgress,
                ),
                deployment(DeploymentStatus::Active, "td:1", 1, RolloutState::Completed),
            ],
            3,
        );
        assert!(matches!(
            assess(&s, "td:2", 3, None),
            Progress::Progressing { deployments: 2, .. }
        ));
    }

    #[test]
    fn a_circuit_breaker_rollback_is_a_failure_not_a_success() {
        let s = service(
            vec![deployment(
                DeploymentStatus::Primary,
                "td:1",
                3,
                RolloutState::Completed,
            )],
            3,
        );
        assert!(matches!(
            assess(&s, "td:2", 3, None),
            Progress::Failed { .. }
        ));
    }

    #[test]
    fn unhealthy_targets_keep_a_settled_service_from_being_stable() {
        let s = service(
            vec![deployment(
                DeploymentStatus::Primary,
                "td:2",
                1,
                RolloutState::Completed,
            )],
            1,
        );
        let targets = [TargetHealth {
            id: "10.0.0.1".into(),
            port: Some(8080),
            state: "unhealthy".into(),
        }];
        assert!(matches!(
            assess(&s, "td:2", 1, Some(&targets)),
            Progress::Progressing { .. }
        ));
    }

    #[test]
    fn pending_tasks_with_a_placement_event_wait_for_capacity() {
        let mut d = deployment(
            DeploymentStatus::Primary,
            "td:2",
            1,
            RolloutState::InProgress,
        );
        d.pending_count = 1;
        let mut s = service(vec![d], 2);
        s.events.push(ServiceEvent {
            id: "e".into(),
            created_at: 0,
            message: "(service s) was unable to place a task because no container instance met all of its requirements.".into(),
        });
        assert!(matches!(
            assess(&s, "td:2", 2, None),
            Progress::WaitingForCapacity { .. }
        ));
    }
}
