//! EC2 Auto Scaling as the simulator runs it: groups that launch and terminate instances, and
//! the ECS container instances those instances register as once they are in service.

use std::time::Duration;

use crate::model::{AsgInstance, AsgUpdate, AutoScalingGroup, ContainerInstance};

use super::taskdefs::TaskDefRecord;
use super::world::{Fail, SimResult, World, ACCOUNT_ID};

/// What ECS can place on one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceType {
    pub name: String,
    pub cpu_units: u32,
    pub memory_mib: u32,
    pub gpus: u32,
}

/// Instance types the simulator knows: (name, CPU units, MiB, GPUs).
const KNOWN_TYPES: &[(&str, u32, u32, u32)] = &[
    ("g5.xlarge", 4096, 16384, 1),
    ("g5.2xlarge", 8192, 32768, 1),
    ("g5.4xlarge", 16384, 65536, 1),
    ("g5.12xlarge", 49152, 196_608, 4),
    ("g4dn.xlarge", 4096, 16384, 1),
    ("g4dn.12xlarge", 49152, 196_608, 4),
    ("p3.2xlarge", 8192, 62464, 1),
    ("m5.large", 2048, 8192, 0),
    ("m5.xlarge", 4096, 16384, 0),
    ("m5.2xlarge", 8192, 32768, 0),
    ("c5.xlarge", 4096, 8192, 0),
    ("t3.medium", 2048, 4096, 0),
];

impl InstanceType {
    pub fn named(name: &str) -> Option<Self> {
        KNOWN_TYPES
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|&(name, cpu_units, memory_mib, gpus)| InstanceType {
                name: name.to_string(),
                cpu_units,
                memory_mib,
                gpus,
            })
    }

    pub fn known_names() -> impl Iterator<Item = &'static str> {
        KNOWN_TYPES.iter().map(|(name, ..)| *name)
    }
}

impl Default for InstanceType {
    /// g5.xlarge: one GPU, 4 vCPUs, 16 GiB.
    fn default() -> Self {
        InstanceType {
            name: "g5.xlarge".into(),
            cpu_units: 4096,
            memory_mib: 16384,
            gpus: 1,
        }
    }
}

pub(super) struct SimAsg {
    /// The cluster its instances join; a group without one just runs instances.
    pub cluster: Option<String>,
    pub min_size: i32,
    pub max_size: i32,
    pub desired: i32,
    pub instance_type: InstanceType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// `None` while a capacity shortage holds the launch back.
    Pending {
        ready_at: Option<Duration>,
    },
    InService,
    Terminating {
        gone_at: Duration,
    },
}

pub(super) struct SimInstance {
    pub id: String,
    pub group: String,
    pub cluster: Option<String>,
    pub lifecycle: Lifecycle,
    /// The container instance ARN and its short id, while registered with the cluster.
    pub container_arn: Option<String>,
    pub container_id: Option<String>,
    pub draining: bool,
    pub cpu: u32,
    pub memory: u32,
    pub gpus: u32,
    pub used_cpu: u32,
    pub used_memory: u32,
    pub used_gpus: u32,
    /// Tasks placed on it, pending or running.
    pub tasks: u32,
}

impl SimInstance {
    /// Whether ECS may place a new task of this cluster here.
    pub fn accepts_tasks(&self, cluster: &str) -> bool {
        self.container_arn.is_some()
            && !self.draining
            && self.lifecycle == Lifecycle::InService
            && self.cluster.as_deref() == Some(cluster)
    }

    pub fn free_cpu(&self) -> u32 {
        self.cpu.saturating_sub(self.used_cpu)
    }

    pub fn free_memory(&self) -> u32 {
        self.memory.saturating_sub(self.used_memory)
    }

    pub fn free_gpus(&self) -> u32 {
        self.gpus.saturating_sub(self.used_gpus)
    }

    pub fn fits(&self, task: &TaskDefRecord) -> bool {
        self.free_cpu() >= task.cpu
            && self.free_memory() >= task.memory
            && self.free_gpus() >= task.gpus
    }

    pub fn reserve(&mut self, task: &TaskDefRecord) {
        self.used_cpu += task.cpu;
        self.used_memory += task.memory;
        self.used_gpus += task.gpus;
        self.tasks += 1;
    }

    pub fn release(&mut self, task: &TaskDefRecord) {
        self.used_cpu = self.used_cpu.saturating_sub(task.cpu);
        self.used_memory = self.used_memory.saturating_sub(task.memory);
        self.used_gpus = self.used_gpus.saturating_sub(task.gpus);
        self.tasks = self.tasks.saturating_sub(1);
    }

    fn is_live(&self) -> bool {
        !matches!(self.lifecycle, Lifecycle::Terminating { .. })
    }

    /// Whether it holds real capacity, which is what a capacity shortage limits.
    fn is_launched(&self) -> bool {
        matches!(
            self.lifecycle,
            Lifecycle::InService | Lifecycle::Pending { ready_at: Some(_) }
        )
    }

    fn lifecycle_state(&self) -> &'static str {
        match self.lifecycle {
            Lifecycle::Pending { .. } => "Pending",
            Lifecycle::InService => "InService",
            Lifecycle::Terminating { .. } => "Terminating",
        }
    }
}

fn group_not_found(name: &str) -> Fail {
    Fail::not_found(format!(
        "ValidationError: AutoScalingGroup name not found - {name}"
    ))
}

/// The capacity an update leaves, checked as AWS checks it. As in AWS, a new min or max that
/// leaves the current desired capacity outside the bounds moves desired with it, unless the
/// update sets desired itself.
fn next_capacity(current: (i32, i32, i32), update: &AsgUpdate) -> SimResult<(i32, i32, i32)> {
    let min = update.min_size.unwrap_or(current.0);
    let max = update.max_size.unwrap_or(current.1);
    if min < 0 || max < 0 || update.desired_capacity.is_some_and(|d| d < 0) {
        return Err(Fail::invalid("ValidationError: sizes must be zero or more"));
    }
    if min > max {
        return Err(Fail::invalid(format!(
            "ValidationError: Max bound, {max}, must be greater than or equal to min bound, {min}"
        )));
    }
    let desired = match update.desired_capacity {
        Some(desired) => desired,
        None => current.2.clamp(min, max),
    };
    if desired < min || desired > max {
        return Err(Fail::invalid(format!(
            "ValidationError: Desired capacity:{desired} must be between the specified min \
             size:{min} and max size:{max}"
        )));
    }
    Ok((min, max, desired))
}

impl World {
    /// Creates a group whose instances are already in service and registered.
    pub fn seed_auto_scaling_group(
        &mut self,
        name: &str,
        cluster: Option<&str>,
        (min_size, max_size, desired): (i32, i32, i32),
        instance_type: InstanceType,
    ) {
        if let Some(cluster) = cluster {
            self.ensure_cluster(cluster);
        }
        let asg = SimAsg {
            cluster: cluster.map(str::to_string),
            min_size,
            max_size,
            desired,
            instance_type,
        };
        self.asgs.insert(name.to_string(), asg);
        for _ in 0..desired {
            if let Some(slot) = self.launch(name) {
                self.come_into_service(slot);
            }
        }
    }

    /// Moves groups toward their desired capacity and instances through their lifecycle.
    pub fn step_auto_scaling(&mut self) {
        // Vec::new does not allocate, so a quiet tick costs nothing here.
        let mut changes: Vec<(String, i32)> = Vec::new();
        for (name, asg) in &self.asgs {
            let live = self
                .instances
                .iter()
                .flatten()
                .filter(|i| i.group == *name && i.is_live())
                .count();
            let live = i32::try_from(live).unwrap_or(i32::MAX);
            if live != asg.desired {
                changes.push((name.clone(), asg.desired - live));
            }
        }
        for (group, delta) in changes {
            for _ in 0..delta {
                self.launch(&group);
            }
            for _ in delta..0 {
                if let Some(slot) = self.scale_in_victim(&group) {
                    self.terminate(slot);
                }
            }
        }

        let now = self.now;
        let mut launched = self
            .instances
            .iter()
            .flatten()
            .filter(|i| i.is_launched())
            .count();
        for slot in 0..self.instances.len() {
            let Some(instance) = &self.instances[slot] else {
                continue;
            };
            match instance.lifecycle {
                Lifecycle::Pending { ready_at: None }
                    if self.launch_allowed(&instance.group, launched) =>
                {
                    launched += 1;
                    let ready_at = Some(now + self.timings.launch);
                    if let Some(instance) = self.instances[slot].as_mut() {
                        instance.lifecycle = Lifecycle::Pending { ready_at };
                    }
                }
                Lifecycle::Pending { ready_at: Some(at) } if now >= at => {
                    self.come_into_service(slot)
                }
                Lifecycle::Terminating { gone_at } if now >= gone_at => self.instances[slot] = None,
                _ => {}
            }
        }
    }

    /// Whether every group runs exactly its desired capacity, all of it in service.
    pub fn capacity_at_rest(&self) -> bool {
        let all_in_service = self
            .instances
            .iter()
            .flatten()
            .all(|i| i.lifecycle == Lifecycle::InService);
        all_in_service
            && self.asgs.iter().all(|(name, asg)| {
                let live = self
                    .instances
                    .iter()
                    .flatten()
                    .filter(|i| i.group == *name)
                    .count();
                usize::try_from(asg.desired).is_ok_and(|desired| desired == live)
            })
    }

    /// Whether a capacity shortage lets one more instance of `group` launch.
    fn launch_allowed(&self, group: &str, launched_everywhere: usize) -> bool {
        let global = self.faults.max_launchable_instances;
        let by_group = self
            .faults
            .max_launchable_instances_by_group
            .get(group)
            .copied();
        if global.is_some_and(|cap| launched_everywhere >= cap as usize) {
            return false;
        }
        by_group.is_none_or(|cap| {
            let in_group = self
                .instances
                .iter()
                .flatten()
                .filter(|i| i.group == group && i.is_launched())
                .count();
            in_group < cap as usize
        })
    }

    /// Adds a Pending instance to the group and returns its slot.
    fn launch(&mut self, group: &str) -> Option<usize> {
        let asg = self.asgs.get(group)?;
        let (cluster, kind) = (asg.cluster.clone(), asg.instance_type.clone());
        let id = format!("i-0{}", self.hex_id(16));
        self.instances.push(Some(SimInstance {
            id,
            group: group.to_string(),
            cluster,
            lifecycle: Lifecycle::Pending { ready_at: None },
            container_arn: None,
            container_id: None,
            draining: false,
            cpu: kind.cpu_units,
            memory: kind.memory_mib,
            gpus: kind.gpus,
            used_cpu: 0,
            used_memory: 0,
            used_gpus: 0,
            tasks: 0,
        }));
        self.counters.instances_launched += 1;
        Some(self.instances.len() - 1)
    }

    /// InService, and registered with the group's cluster as an ACTIVE container instance.
    fn come_into_service(&mut self, slot: usize) {
        let container_id = self.hex_id(32);
        let region = self.region.clone();
        let Some(instance) = self.instances.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        instance.lifecycle = Lifecycle::InService;
        if let Some(cluster) = &instance.cluster {
            instance.container_arn = Some(format!(
                "arn:aws:ecs:{region}:{ACCOUNT_ID}:container-instance/{cluster}/{container_id}"
            ));
            instance.container_id = Some(container_id);
        }
    }

    /// The instance a scale-in takes: one still booting if any, else the newest. AWS weighs
    /// zones and launch templates first; any fixed choice serves the simulator.
    fn scale_in_victim(&self, group: &str) -> Option<usize> {
        self.instances
            .iter()
            .enumerate()
            .filter_map(|(slot, instance)| Some((slot, instance.as_ref()?)))
            .filter(|(_, i)| i.group == group && i.is_live())
            .max_by_key(|(slot, i)| (matches!(i.lifecycle, Lifecycle::Pending { .. }), *slot))
            .map(|(slot, _)| slot)
    }

    /// Starts terminating an instance; its container instance deregisters and the tasks on it
    /// die at once, as they do when EC2 shuts the host down.
    fn terminate(&mut self, slot: usize) {
        let gone_at = self.now + self.timings.termination;
        let Some(instance) = self.instances.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        instance.lifecycle = Lifecycle::Terminating { gone_at };
        instance.container_arn = None;
        instance.container_id = None;
        let cluster = instance.cluster.clone();
        self.counters.instances_terminated += 1;
        let Some(cluster) = cluster else {
            return;
        };
        let (services, mut cx) = self.split();
        for service in services.values_mut().filter(|s| s.cluster == cluster) {
            let mut hit = false;
            for task in service
                .tasks
                .iter_mut()
                .filter(|t| t.instance == Some(slot) && t.stop.is_none())
            {
                task.stop = Some(super::ecs::StopReason::HostTerminated);
                hit = true;
            }
            if hit {
                service.sweep(&mut cx);
            }
        }
    }

    pub fn describe_auto_scaling_groups(&self, names: &[String]) -> Vec<AutoScalingGroup> {
        let mut out = Vec::new();
        for name in names {
            if out.iter().any(|g: &AutoScalingGroup| g.name == *name) {
                continue;
            }
            if let Some(group) = self.auto_scaling_group(name) {
                out.push(group);
            }
        }
        out
    }

    pub fn auto_scaling_group(&self, name: &str) -> Option<AutoScalingGroup> {
        let asg = self.asgs.get(name)?;
        let instances = self
            .instances
            .iter()
            .flatten()
            .filter(|i| i.group == name)
            .map(|i| AsgInstance {
                instance_id: i.id.clone(),
                lifecycle_state: i.lifecycle_state().into(),
                health_status: "Healthy".into(),
            })
            .collect();
        Some(AutoScalingGroup {
            name: name.to_string(),
            min_size: asg.min_size,
            max_size: asg.max_size,
            desired_capacity: asg.desired,
            instances,
        })
    }

    pub fn update_auto_scaling_group(&mut self, name: &str, update: &AsgUpdate) -> SimResult<()> {
        let asg = self
            .asgs
            .get_mut(name)
            .ok_or_else(|| group_not_found(name))?;
        let (min, max, desired) = next_capacity((asg.min_size, asg.max_size, asg.desired), update)?;
        asg.min_size = min;
        asg.max_size = max;
        asg.desired = desired;
        Ok(())
    }

    pub fn terminate_instance_decrementing(&mut self, instance_id: &str) -> SimResult<()> {
        let slot = self
            .instances
            .iter()
            .position(|i| {
                i.as_ref()
                    .is_some_and(|i| i.id == instance_id && i.is_live())
            })
            .ok_or_else(|| {
                Fail::not_found(format!(
                    "ValidationError: Instance Id not found - No managed instance found for \
                     instance ID: {instance_id}"
                ))
            })?;
        let group = self.instances[slot]
            .as_ref()
            .map(|i| i.group.clone())
            .unwrap_or_default();
        let asg = self
            .asgs
            .get_mut(&group)
            .ok_or_else(|| group_not_found(&group))?;
        if asg.desired - 1 < asg.min_size {
            return Err(Fail::invalid(format!(
                "ValidationError: Currently, desiredSize equals minSize ({}). Terminating instance \
                 without replacement will violate group's min size constraint. Either set \
                 shouldDecrementDesiredCapacity flag to false or lower group's min size.",
                asg.min_size
            )));
        }
        asg.desired -= 1;
        self.terminate(slot);
        Ok(())
    }

    pub fn list_container_instances(&self, cluster: &str) -> SimResult<Vec<ContainerInstance>> {
        self.require_cluster(cluster)?;
        let mut counts = vec![(0, 0); self.instances.len()];
        for service in self.services.values().filter(|s| s.cluster == cluster) {
            for task in &service.tasks {
                let Some(count) = task.instance.and_then(|slot| counts.get_mut(slot)) else {
                    continue;
                };
                if task.state == super::ecs::TaskState::Running {
                    count.0 += 1;
                } else {
                    count.1 += 1;
                }
            }
        }
        let registered = self.instances.iter().enumerate().filter_map(|(slot, i)| {
            let i = i.as_ref()?;
            let arn = i.container_arn.as_ref()?;
            (i.cluster.as_deref() == Some(cluster)).then_some((slot, i, arn))
        });
        Ok(registered
            .map(|(slot, i, arn)| ContainerInstance {
                arn: arn.clone(),
                ec2_instance_id: i.id.clone(),
                status: if i.draining { "DRAINING" } else { "ACTIVE" }.into(),
                running_tasks_count: counts[slot].0,
                pending_tasks_count: counts[slot].1,
                remaining_gpus: i.free_gpus(),
            })
            .collect())
    }

    /// Sets container instances DRAINING or ACTIVE. Known ARNs change even when others are
    /// missing; the missing ones are reported as NotFound.
    pub fn update_container_instances_state(
        &mut self,
        cluster: &str,
        arns: &[String],
        status: &str,
    ) -> SimResult<()> {
        self.require_cluster(cluster)?;
        let draining = match status {
            "DRAINING" => true,
            "ACTIVE" => false,
            other => {
                return Err(Fail::invalid(format!(
                    "InvalidParameterException: Container instance status must be ACTIVE or \
                     DRAINING, got {other}"
                )))
            }
        };
        let mut missing = Vec::new();
        for arn in arns {
            let found = self.instances.iter_mut().flatten().find(|i| {
                i.cluster.as_deref() == Some(cluster)
                    && i.container_arn.as_deref() == Some(arn.as_str())
            });
            match found {
                Some(instance) => instance.draining = draining,
                None => missing.push(arn.as_str()),
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Fail::not_found(format!(
                "MISSING container instances: {}",
                missing.join(", ")
            )))
        }
    }

    /// Out-of-band capacity change, as a person at the console makes it.
    pub fn set_asg_capacity(
        &mut self,
        name: &str,
        min: i32,
        max: i32,
        desired: i32,
    ) -> SimResult<()> {
        let update = AsgUpdate {
            min_size: Some(min),
            max_size: Some(max),
            desired_capacity: Some(desired),
        };
        self.update_auto_scaling_group(name, &update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_min_above_desired_raises_desired_as_aws_does() {
        let update = AsgUpdate {
            min_size: Some(3),
            ..AsgUpdate::default()
        };
        let next = next_capacity((1, 5, 2), &update).expect("valid update");
        assert_eq!(next, (3, 5, 3));
    }

    #[test]
    fn desired_outside_min_and_max_is_rejected() {
        let update = AsgUpdate {
            desired_capacity: Some(6),
            ..AsgUpdate::default()
        };
        let err = next_capacity((1, 5, 2), &update).expect_err("6 is above max 5");
        assert!(
            err.message.starts_with("ValidationError"),
            "{}",
            err.message
        );
    }
}
