//! The simulated world: all its state, its clock, and the fixed tick that moves it forward.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cloud::ErrorKind;

use super::autoscaling::{SimAsg, SimInstance};
use super::ecs::SimService;
use super::elb::SimTargetGroup;
use super::faults::Faults;
use super::taskdefs::TaskDefs;
use super::Timings;

pub(super) const ACCOUNT_ID: &str = "123456789012";
/// 2026-01-01T00:00:00Z: what simulated time zero looks like in event timestamps.
pub(super) const EPOCH_BASE: i64 = 1_767_225_600;

/// Why a simulated call failed, before the caller names the operation.
#[derive(Debug)]
pub(super) struct Fail {
    pub kind: ErrorKind,
    pub message: String,
}

impl Fail {
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::NotFound,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Invalid,
            message: message.into(),
        }
    }
}

pub(super) type SimResult<T> = Result<T, Fail>;

/// Running totals of what happened in the world, for tests and the demo's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Tasks placed and started (PENDING), replacements included.
    pub tasks_started: u64,
    /// Tasks that crashed on start or were stopped for failing health checks.
    pub tasks_failed: u64,
    /// Tasks that died because their instance was terminated under them.
    pub tasks_killed_by_termination: u64,
    pub instances_launched: u64,
    pub instances_terminated: u64,
}

pub(super) struct SimCluster {
    pub arn: String,
    pub tags: BTreeMap<String, String>,
}

pub(super) struct World {
    pub region: String,
    /// Simulated time since the world began.
    pub now: Duration,
    pub tick: Duration,
    pub timings: Timings,
    pub faults: Faults,
    /// Draws ids and everything else inside the world.
    pub rng: fastrand::Rng,
    /// Draws API call faults only, so enabling them does not reshuffle the world.
    pub fault_rng: fastrand::Rng,
    pub clusters: BTreeMap<String, SimCluster>,
    pub task_defs: TaskDefs,
    /// By (cluster, service name).
    pub services: BTreeMap<(String, String), SimService>,
    pub asgs: BTreeMap<String, SimAsg>,
    /// Every instance ever launched, by a slot that is never reused; gone ones are `None`.
    pub instances: Vec<Option<SimInstance>>,
    pub target_groups: Vec<SimTargetGroup>,
    pub counters: SimCounters,
    pub next_ip: u32,
    pub next_seq: u64,
}

/// The parts of the world a service needs while it is stepped, borrowed apart from the
/// services themselves.
pub(super) struct Cx<'a> {
    pub now: Duration,
    pub timings: &'a Timings,
    pub faults: &'a Faults,
    pub task_defs: &'a TaskDefs,
    pub instances: &'a mut [Option<SimInstance>],
    pub target_groups: &'a mut [SimTargetGroup],
    pub rng: &'a mut fastrand::Rng,
    pub counters: &'a mut SimCounters,
    pub next_ip: &'a mut u32,
}

impl World {
    pub fn new(
        seed: u64,
        region: String,
        tick: Duration,
        timings: Timings,
        faults: Faults,
    ) -> Self {
        Self {
            region,
            now: Duration::ZERO,
            tick,
            timings,
            faults,
            rng: fastrand::Rng::with_seed(seed),
            fault_rng: fastrand::Rng::with_seed(seed ^ 0x5eed_fa17_5eed_fa17),
            clusters: BTreeMap::new(),
            task_defs: TaskDefs::default(),
            services: BTreeMap::new(),
            asgs: BTreeMap::new(),
            instances: Vec::new(),
            target_groups: Vec::new(),
            counters: SimCounters::default(),
            // 10.0.1.10 is the first task address: low enough to read, clear of .0 and .1.
            next_ip: 266,
            next_seq: 0,
        }
    }

    /// Steps the world in whole ticks up to `target`; the remainder waits for the next call.
    pub fn advance_to(&mut self, target: Duration) {
        while self.now + self.tick <= target {
            self.now += self.tick;
            self.step();
        }
    }

    fn step(&mut self) {
        // Capacity first, so a task can land on an instance that came into service this tick.
        self.step_auto_scaling();
        let (services, mut cx) = self.split();
        for service in services.values_mut() {
            service.step(&mut cx);
        }
        self.step_target_groups();
    }

    /// The services, and everything else they may touch while stepping.
    pub fn split(&mut self) -> (&mut BTreeMap<(String, String), SimService>, Cx<'_>) {
        let cx = Cx {
            now: self.now,
            timings: &self.timings,
            faults: &self.faults,
            task_defs: &self.task_defs,
            instances: &mut self.instances,
            target_groups: &mut self.target_groups,
            rng: &mut self.rng,
            counters: &mut self.counters,
            next_ip: &mut self.next_ip,
        };
        (&mut self.services, cx)
    }

    pub fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub fn hex_id(&mut self, len: usize) -> String {
        hex_id(&mut self.rng, len)
    }

    pub fn ensure_cluster(&mut self, name: &str) {
        if !self.clusters.contains_key(name) {
            let arn = format!("arn:aws:ecs:{}:{ACCOUNT_ID}:cluster/{name}", self.region);
            self.clusters.insert(
                name.to_string(),
                SimCluster {
                    arn,
                    tags: BTreeMap::new(),
                },
            );
        }
    }

    /// Whether nothing is in motion: every service steady, every group at its desired capacity
    /// with all its instances in service.
    pub fn is_at_rest(&self) -> bool {
        self.services.values().all(|s| s.steady) && self.capacity_at_rest()
    }

    pub fn require_cluster(&self, name: &str) -> SimResult<()> {
        if self.clusters.contains_key(name) {
            Ok(())
        } else {
            Err(Fail::not_found(format!(
                "ClusterNotFoundException: Cluster not found: {name}"
            )))
        }
    }
}

pub(super) fn hex_id(rng: &mut fastrand::Rng, len: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (0..len).map(|_| char::from(HEX[rng.usize(..16)])).collect()
}

/// Seconds since the Unix epoch for a simulated instant.
pub(super) fn epoch_seconds(now: Duration) -> i64 {
    EPOCH_BASE + i64::try_from(now.as_secs()).unwrap_or(i64::MAX - EPOCH_BASE)
}

pub(super) fn ip_string(n: u32) -> String {
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}
