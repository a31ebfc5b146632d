//! Batched, cached reads: turns a manifest into an observed snapshot of everything it names.
//!
//! Services are read 10 per DescribeServices call per cluster, Auto Scaling Groups all in one
//! call, and task definition revisions once per ARN for the life of the [`Observer`] (they are
//! immutable). "Latest ACTIVE revision of a family" can change, so it is asked again once its
//! answer is older than [`FAMILY_TTL`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use tokio::sync::OnceCell;
use tokio::time::{Duration, Instant};

use crate::cloud::{Cloud, CloudError, CloudResult, ErrorKind};
use crate::diff::{self, ObservedService, ResourceDiff};
use crate::manifest::{Manifest, ServiceSpec, TaskDefinitionSource};
use crate::model::{AutoScalingGroup, Service, TaskDefinition};
use crate::taskdef::TaskDefinitionSpec;

/// How long the answer to "latest ACTIVE revision of this family" is trusted. A revision
/// registered outside the controller is noticed within this time; this controller's own
/// registrations are seen at once.
pub const FAMILY_TTL: Duration = Duration::from_secs(300);

/// What the cloud holds for one service the manifest names.
#[derive(Debug, Clone)]
pub struct ServiceState {
    pub service: Service,
    /// The revision the service runs.
    pub running: TaskDefinition,
    /// What the manifest asks for, resolved against its base; `None` when a family has no
    /// ACTIVE revision.
    pub desired_td: Option<TaskDefinitionSpec>,
    /// The latest ACTIVE revision of the family, for `family` sources.
    pub family_latest: Option<TaskDefinition>,
}

/// What one observation found: per resource its state, its absence, or the error that hid it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Keyed by `cluster/service`.
    pub services: BTreeMap<String, ServiceState>,
    pub missing_services: Vec<String>,
    pub auto_scaling_groups: BTreeMap<String, AutoScalingGroup>,
    /// Resources that could not be read, keyed like the others.
    pub errors: BTreeMap<String, CloudError>,
}

impl Snapshot {
    /// Every resource's diff against the manifest; resources that could not be read are left out
    /// (they are in `errors`).
    pub fn diff(&self, manifest: &Manifest) -> Vec<ResourceDiff> {
        let mut out = Vec::new();
        for (_, name, spec) in manifest.auto_scaling_groups() {
            if self.errors.contains_key(name) {
                continue;
            }
            out.push(diff::auto_scaling_group(
                name,
                spec,
                self.auto_scaling_groups.get(name),
            ));
        }
        for (cluster, name, spec) in manifest.services() {
            let key = service_key(cluster, name);
            if self.errors.contains_key(&key) {
                continue;
            }
            out.push(service_diff(key.clone(), spec, self.services.get(&key)));
        }
        out
    }
}

/// The diff of one service from its observed state (`None` = missing).
pub fn service_diff(key: String, spec: &ServiceSpec, state: Option<&ServiceState>) -> ResourceDiff {
    match state {
        None => diff::service(key, spec, None, None),
        Some(s) => diff::service(
            key,
            spec,
            s.desired_td.as_ref(),
            Some(ObservedService {
                service: &s.service,
                running: &s.running,
            }),
        ),
    }
}

pub fn service_key(cluster: &str, service: &str) -> String {
    format!("{cluster}/{service}")
}

/// The revision a service runs: its PRIMARY deployment's.
fn running_arn(service: &Service) -> String {
    service
        .primary()
        .map(|d| d.task_definition.clone())
        .unwrap_or_else(|| service.task_definition.clone())
}

/// Reads live state through a [`Cloud`], caching immutable task definition revisions.
#[derive(Clone)]
pub struct Observer {
    cloud: Arc<dyn Cloud>,
    /// One cell per ARN: concurrent readers of the same revision share one request.
    revisions: Arc<Mutex<HashMap<String, Arc<OnceCell<TaskDefinition>>>>>,
    /// Family -> (latest ACTIVE revision ARN, when it was asked).
    latest: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl Observer {
    pub fn new(cloud: Arc<dyn Cloud>) -> Self {
        Self {
            cloud,
            revisions: Arc::default(),
            latest: Arc::default(),
        }
    }

    pub fn cloud(&self) -> &Arc<dyn Cloud> {
        &self.cloud
    }

    /// Observes everything the manifest names: one batch of reads per cluster and one for all
    /// Auto Scaling Groups, run concurrently.
    pub async fn observe(&self, manifest: &Manifest) -> Snapshot {
        let mut snapshot = Snapshot::default();

        let asg_names: Vec<String> = manifest
            .auto_scaling_groups()
            .map(|(_, n, _)| n.to_string())
            .collect();
        let asgs = async {
            if asg_names.is_empty() {
                return Ok(Vec::new());
            }
            self.cloud.describe_auto_scaling_groups(&asg_names).await
        };
        let clusters = join_all(
            manifest
                .clusters
                .iter()
                .filter(|(_, c)| !c.services.is_empty())
                .map(|(cluster, c)| async move {
                    let specs: Vec<(&str, &ServiceSpec)> =
                        c.services.iter().map(|(n, s)| (n.as_str(), s)).collect();
                    (
                        cluster.as_str(),
                        specs.clone(),
                        self.observe_services(cluster, &specs).await,
                    )
                }),
        );
        let (asgs, clusters) = futures::join!(asgs, clusters);

        match asgs {
            Ok(groups) => {
                for g in groups {
                    snapshot.auto_scaling_groups.insert(g.name.clone(), g);
                }
            }
            Err(e) => {
                for name in asg_names {
                    snapshot.errors.insert(name, e.clone());
                }
            }
        }
        for (cluster, specs, result) in clusters {
            match result {
                Ok(states) => {
                    for ((name, _), state) in specs.iter().zip(states) {
                        let key = service_key(cluster, name);
                        match state {
                            Ok(Some(state)) => {
                                snapshot.services.insert(key, state);
                            }
                            Ok(None) => snapshot.missing_services.push(key),
                            Err(e) => {
                                snapshot.errors.insert(key, e);
                            }
                        }
                    }
                }
                // A cluster that does not exist holds none of its services.
                Err(e) if e.kind == ErrorKind::NotFound => {
                    snapshot
                        .missing_services
                        .extend(specs.iter().map(|(n, _)| service_key(cluster, n)));
                }
                Err(e) => {
                    for (name, _) in specs {
                        snapshot
                            .errors
                            .insert(service_key(cluster, name), e.clone());
                    }
                }
            }
        }
        snapshot
    }

    /// Observes services of one cluster with one batched DescribeServices; the result lines up
    /// with `specs`, `Ok(None)` meaning missing.
    pub async fn observe_services(
        &self,
        cluster: &str,
        specs: &[(&str, &ServiceSpec)],
    ) -> CloudResult<Vec<CloudResult<Option<ServiceState>>>> {
        let names: Vec<String> = specs.iter().map(|(n, _)| n.to_string()).collect();
        let lookup = self.cloud.describe_services(cluster, &names).await?;
        let mut by_name: HashMap<String, Service> = lookup
            .found
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();

        // Each distinct family is asked once up front, so the per-service states below, which
        // run concurrently, find it answered. (Revisions need no such step: readers of the same
        // ARN share one request.)
        let families: std::collections::BTreeSet<&str> = specs
            .iter()
            .filter(|(name, _)| by_name.contains_key(*name))
            .filter_map(|(_, spec)| match &spec.task_definition {
                TaskDefinitionSource::Family(family) => Some(family.as_str()),
                TaskDefinitionSource::File { .. } => None,
            })
            .collect();
        // Failures here are met again, and reported, per service below.
        join_all(families.iter().map(|family| self.latest(family))).await;

        let states = specs.iter().map(|(name, spec)| {
            let service = by_name.remove(*name);
            async move {
                match service {
                    None => Ok(None),
                    Some(service) => self.service_state(service, spec).await.map(Some),
                }
            }
        });
        Ok(join_all(states).await)
    }

    async fn service_state(
        &self,
        service: Service,
        spec: &ServiceSpec,
    ) -> CloudResult<ServiceState> {
        let running_arn = running_arn(&service);
        let running = self.revision(&running_arn).await?;
        let family_latest = match &spec.task_definition {
            TaskDefinitionSource::Family(family) => match self.latest(family).await {
                Ok(td) => Some(td),
                Err(e) if e.kind == ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            },
            TaskDefinitionSource::File { .. } => None,
        };
        let desired_td = diff::desired_task_definition(spec, family_latest.as_ref());
        Ok(ServiceState {
            service,
            running,
            desired_td,
            family_latest,
        })
    }

    /// A revision by ARN, read once: later and concurrent readers get the same answer. A failed
    /// read is not kept, so the next reader asks again.
    pub async fn revision(&self, arn: &str) -> CloudResult<TaskDefinition> {
        let cell = self.cell(arn);
        cell.get_or_try_init(|| self.cloud.describe_task_definition(arn))
            .await
            .cloned()
    }

    fn cell(&self, arn: &str) -> Arc<OnceCell<TaskDefinition>> {
        let mut cells = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        cells.entry(arn.to_string()).or_default().clone()
    }

    /// The latest ACTIVE revision of a family, asked again once the last answer is older than
    /// [`FAMILY_TTL`].
    pub async fn latest(&self, family: &str) -> CloudResult<TaskDefinition> {
        let known = {
            let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            latest
                .get(family)
                .filter(|(_, at)| at.elapsed() < FAMILY_TTL)
                .map(|(arn, _)| arn.clone())
        };
        if let Some(arn) = known {
            return self.revision(&arn).await;
        }
        let arns = self.cloud.list_task_definitions(family, 1).await?;
        match arns.first() {
            Some(arn) => {
                {
                    let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
                    latest.insert(family.to_string(), (arn.clone(), Instant::now()));
                }
                self.revision(arn).await
            }
            None => Err(CloudError::new(
                ErrorKind::NotFound,
                "ecs:ListTaskDefinitions",
                format!("family {family} has no ACTIVE revision"),
            )),
        }
    }

    /// Adds a revision this process registered, so it is never read back; it is also the
    /// family's latest from now on.
    pub fn remember(&self, td: &TaskDefinition) {
        // Already set means already read: the revision is immutable, so both are the same.
        let _ = self.cell(&td.arn).set(td.clone());
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.insert(td.spec.family.clone(), (td.arn.clone(), Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::future::join_all;

    use super::*;
    use crate::sim::{Faults, SimCloud, SimConfig};
    use crate::taskdef::{ContainerDefinition, TaskDefinitionSpec};

    #[tokio::test(start_paused = true)]
    async fn concurrent_readers_of_one_revision_share_one_request() {
        let faults = Faults {
            latency: Duration::from_millis(200),
            ..Faults::default()
        };
        let sim = Arc::new(SimCloud::new(SimConfig {
            faults,
            ..SimConfig::default()
        }));
        let spec = TaskDefinitionSpec {
            family: "web".into(),
            container_definitions: vec![ContainerDefinition {
                name: "web".into(),
                image: "repo/web:v1".into(),
                memory: Some(512),
                ..Default::default()
            }],
            ..Default::default()
        };
        let arn = sim
            .register_task_definition(&spec)
            .await
            .expect("registered")
            .arn;
        let observer = Observer::new(sim.clone());

        let reads = join_all((0..10).map(|_| observer.revision(&arn))).await;
        assert!(reads
            .iter()
            .all(|r| r.as_ref().is_ok_and(|td| td.arn == arn)));
        observer.revision(&arn).await.expect("cached");
        assert_eq!(
            sim.calls().by_operation().get("ecs:DescribeTaskDefinition"),
            Some(&1)
        );
    }
}
