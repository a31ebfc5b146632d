//! ELBv2 target groups: running tasks of a service register as targets, pass or fail health
//! checks, and drain for a while after they stop.

use std::time::Duration;

use crate::model::{TargetGroup, TargetHealth};

use super::ecs::{Health, TaskState};
use super::world::{ip_string, Fail, SimResult, World, ACCOUNT_ID};

/// A target that stopped and is being deregistered.
pub(super) struct Draining {
    ip: u32,
    port: i32,
    until: Duration,
}

pub(super) struct SimTargetGroup {
    pub name: String,
    pub arn: String,
    draining: Vec<Draining>,
}

impl SimTargetGroup {
    pub fn deregister(&mut self, ip: u32, port: i32, until: Duration) {
        self.draining.push(Draining { ip, port, until });
    }
}

impl World {
    /// The ARN of the named target group, created if it does not exist yet.
    pub fn ensure_target_group(&mut self, name: &str) -> String {
        if let Some(group) = self.target_groups.iter().find(|g| g.name == name) {
            return group.arn.clone();
        }
        let suffix = self.hex_id(16);
        let arn = format!(
            "arn:aws:elasticloadbalancing:{}:{ACCOUNT_ID}:targetgroup/{name}/{suffix}",
            self.region
        );
        self.target_groups.push(SimTargetGroup {
            name: name.to_string(),
            arn: arn.clone(),
            draining: Vec::new(),
        });
        arn
    }

    pub fn describe_target_groups(&self, names: &[String]) -> Vec<TargetGroup> {
        self.target_groups
            .iter()
            .filter(|g| names.contains(&g.name))
            .map(|g| TargetGroup {
                name: g.name.clone(),
                arn: g.arn.clone(),
            })
            .collect()
    }

    pub fn describe_target_health(&self, arn: &str) -> SimResult<Vec<TargetHealth>> {
        let group = self
            .target_groups
            .iter()
            .find(|g| g.arn == arn)
            .ok_or_else(|| {
                Fail::not_found(format!(
                    "TargetGroupNotFound: One or more target groups not found: {arn}"
                ))
            })?;
        let mut targets = Vec::new();
        for service in self
            .services
            .values()
            .filter(|s| s.target_groups.iter().any(|a| a == arn))
        {
            for task in service
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::Running)
            {
                let state = match task.health {
                    Health::Initial { .. } => "initial",
                    Health::Unhealthy { .. } => "unhealthy",
                    Health::Healthy | Health::Unchecked => "healthy",
                };
                targets.push(TargetHealth {
                    id: ip_string(task.ip),
                    port: Some(self.task_defs.records[task.td].port),
                    state: state.into(),
                });
            }
        }
        targets.extend(group.draining.iter().map(|d| TargetHealth {
            id: ip_string(d.ip),
            port: Some(d.port),
            state: "draining".into(),
        }));
        Ok(targets)
    }

    /// Target groups by name, for inspection: the health of the named group's targets.
    pub fn target_health_by_name(&self, name: &str) -> Vec<TargetHealth> {
        self.target_groups
            .iter()
            .find(|g| g.name == name)
            .and_then(|g| self.describe_target_health(&g.arn).ok())
            .unwrap_or_default()
    }

    pub fn step_target_groups(&mut self) {
        let now = self.now;
        for group in &mut self.target_groups {
            group.draining.retain(|d| d.until > now);
        }
    }
}
