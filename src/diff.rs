//! The diff: a pure function from (desired, observed) to the drift of every managed field.
//!
//! Only fields the manifest sets are compared. What AWS adds on its own (read-only fields,
//! defaults, list order) is normalised away first, so a service deployed from exactly this
//! manifest shows no change.

use serde::Serialize;
use serde_json::Value;

use crate::manifest::{AutoScalingGroupSpec, ServiceSpec};
use crate::model::{AutoScalingGroup, Service, TaskDefinition};
use crate::taskdef::TaskDefinitionSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Service,
    #[serde(rename = "autoscaling_group")]
    AutoScalingGroup,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Service => "service",
            ResourceKind::AutoScalingGroup => "autoscaling_group",
        }
    }
}

/// One managed field, drifted or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldDiff {
    /// `desiredCount`, `taskDefinition.containerDefinitions[web].image`, `minSize`, ...
    pub field: String,
    pub desired: Value,
    /// `null` when the live resource lacks the field.
    pub observed: Value,
    pub drifted: bool,
}

/// The diff of one resource: every managed field, and whether the resource exists at all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceDiff {
    pub kind: ResourceKind,
    /// `cluster/service` for services, the group name for Auto Scaling Groups.
    pub resource: String,
    /// The manifest names it but the cloud lacks it. It is reported, never created.
    pub missing: bool,
    pub fields: Vec<FieldDiff>,
}

impl ResourceDiff {
    pub fn changes(&self) -> impl Iterator<Item = &FieldDiff> {
        self.fields.iter().filter(|f| f.drifted)
    }

    pub fn in_sync(&self) -> bool {
        !self.missing && self.fields.iter().all(|f| !f.drifted)
    }

    pub fn drifted(&self, field_prefix: &str) -> bool {
        self.changes().any(|f| f.field.starts_with(field_prefix))
    }
}

/// What the cloud holds for a service the manifest names.
#[derive(Debug, Clone)]
pub struct ObservedService<'a> {
    pub service: &'a Service,
    /// The revision the service runs (its PRIMARY deployment's task definition).
    pub running: &'a TaskDefinition,
}

/// The task definition the manifest wants, given the base it builds on: the file, or the
/// latest ACTIVE revision of the family. Images from the manifest replace the base's.
pub fn desired_task_definition(
    spec: &ServiceSpec,
    family_latest: Option<&TaskDefinition>,
) -> Option<TaskDefinitionSpec> {
    let base = match &spec.task_definition {
        crate::manifest::TaskDefinitionSource::File { spec: file, .. } => (**file).clone(),
        crate::manifest::TaskDefinitionSource::Family(_) => family_latest?.spec.clone(),
    };
    Some(base.with_images(&spec.images))
}

/// Diffs one service. `desired_td` is `None` when the base could not be found (a family with no
/// ACTIVE revision); the task definition is then reported as drifted against nothing.
pub fn service(
    resource: String,
    spec: &ServiceSpec,
    desired_td: Option<&TaskDefinitionSpec>,
    observed: Option<ObservedService<'_>>,
) -> ResourceDiff {
    let mut fields = Vec::new();
    let Some(observed) = observed else {
        if let Some(count) = spec.desired_count {
            fields.push(field("desiredCount", Value::from(count), Value::Null));
        }
        return ResourceDiff {
            kind: ResourceKind::Service,
            resource,
            missing: true,
            fields,
        };
    };

    if let Some(count) = spec.desired_count {
        fields.push(field(
            "desiredCount",
            Value::from(count),
            Value::from(observed.service.desired_count),
        ));
    }
    match desired_td {
        Some(desired) => task_definition_fields(desired, &observed.running.spec, &mut fields),
        None => fields.push(field(
            "taskDefinition",
            Value::String(format!(
                "{} (no ACTIVE revision found)",
                spec.task_definition.family()
            )),
            Value::String(observed.running.arn.clone()),
        )),
    }
    ResourceDiff {
        kind: ResourceKind::Service,
        resource,
        missing: false,
        fields,
    }
}

/// Diffs one Auto Scaling Group's capacity.
pub fn auto_scaling_group(
    name: &str,
    spec: &AutoScalingGroupSpec,
    observed: Option<&AutoScalingGroup>,
) -> ResourceDiff {
    let pairs = [
        ("minSize", spec.min_size, observed.map(|o| o.min_size)),
        ("maxSize", spec.max_size, observed.map(|o| o.max_size)),
        (
            "desiredCapacity",
            spec.desired_capacity,
            observed.map(|o| o.desired_capacity),
        ),
    ];
    let fields = pairs
        .into_iter()
        .filter_map(|(name, desired, live)| {
            let desired = desired?;
            Some(field(
                name,
                Value::from(desired),
                live.map_or(Value::Null, Value::from),
            ))
        })
        .collect();
    ResourceDiff {
        kind: ResourceKind::AutoScalingGroup,
        resource: name.to_string(),
        missing: observed.is_none(),
        fields,
    }
}

/// Whether a registered revision already holds what `desired` asks for, so it can be reused
/// instead of registering another.
pub fn task_definition_satisfies(desired: &TaskDefinitionSpec, live: &TaskDefinitionSpec) -> bool {
    let mut fields = Vec::new();
    task_definition_fields(desired, live, &mut fields);
    fields.iter().all(|f| !f.drifted)
}

fn field(name: &str, desired: Value, observed: Value) -> FieldDiff {
    let drifted = desired != observed;
    FieldDiff {
        field: name.to_string(),
        desired,
        observed,
        drifted,
    }
}

fn task_definition_fields(
    desired: &TaskDefinitionSpec,
    live: &TaskDefinitionSpec,
    out: &mut Vec<FieldDiff>,
) {
    let desired = serde_json::to_value(desired.normalized()).unwrap_or(Value::Null);
    let live = serde_json::to_value(live.normalized()).unwrap_or(Value::Null);
    compare("taskDefinition", &desired, &live, out);
}

/// Walks the desired JSON and compares each leaf it sets against the live one. Objects recurse
/// by key, container definitions by name; other lists compare whole (they are sorted already).
fn compare(path: &str, desired: &Value, live: &Value, out: &mut Vec<FieldDiff>) {
    match desired {
        Value::Object(map) => {
            for (key, d) in map {
                let l = live.get(key).unwrap_or(&Value::Null);
                compare(&format!("{path}.{key}"), d, l, out);
            }
        }
        Value::Array(items) if path.ends_with("containerDefinitions") => {
            for item in items {
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                let l = live
                    .as_array()
                    .and_then(|ls| {
                        ls.iter()
                            .find(|l| l.get("name").and_then(Value::as_str) == Some(name))
                    })
                    .unwrap_or(&Value::Null);
                compare(&format!("{path}[{name}]"), item, l, out);
            }
        }
        _ => out.push(FieldDiff {
            field: path.to_string(),
            desired: desired.clone(),
            observed: live.clone(),
            drifted: desired != live,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::manifest::{RolloutSpec, TaskDefinitionSource};
    use crate::model::{Deployment, DeploymentStatus, RolloutState};
    use crate::taskdef::{ContainerDefinition, KeyValue, PortMapping, Secret};

    fn td_spec(image: &str) -> TaskDefinitionSpec {
        TaskDefinitionSpec {
            family: "web".into(),
            network_mode: Some("awsvpc".into()),
            cpu: Some("512".into()),
            memory: Some("1024".into()),
            container_definitions: vec![ContainerDefinition {
                name: "web".into(),
                image: image.into(),
                port_mappings: Some(vec![PortMapping {
                    container_port: 8080,
                    ..Default::default()
                }]),
                environment: Some(vec![
                    KeyValue {
                        name: "B".into(),
                        value: "2".into(),
                    },
                    KeyValue {
                        name: "A".into(),
                        value: "1".into(),
                    },
                ]),
                secrets: Some(vec![Secret {
                    name: "DB".into(),
                    value_from: "arn:db".into(),
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The spec as AWS hands it back: defaults filled in, lists reordered, extra fields.
    fn as_aws_returns(spec: &TaskDefinitionSpec) -> TaskDefinitionSpec {
        let mut live = spec.clone();
        let c = &mut live.container_definitions[0];
        c.essential = Some(true);
        c.cpu = Some(0);
        c.port_mappings = Some(vec![PortMapping {
            container_port: 8080,
            host_port: Some(8080),
            protocol: Some("tcp".into()),
            ..Default::default()
        }]);
        if let Some(env) = &mut c.environment {
            env.reverse();
        }
        c.mount_points = Some(vec![]);
        live
    }

    fn service_spec(count: Option<i32>, image: &str) -> ServiceSpec {
        ServiceSpec {
            desired_count: count,
            task_definition: TaskDefinitionSource::File {
                path: PathBuf::from("td.json"),
                spec: Box::new(td_spec("placeholder:1")),
            },
            images: BTreeMap::from([("web".to_string(), image.to_string())]),
            target_groups: vec![],
            rollout: RolloutSpec {
                timeout: Duration::from_secs(600),
                rollback: true,
            },
        }
    }

    fn live_service(count: i32) -> Service {
        Service {
            arn: "arn:svc".into(),
            name: "web".into(),
            cluster: "c".into(),
            status: "ACTIVE".into(),
            desired_count: count,
            running_count: count,
            pending_count: 0,
            task_definition: "arn:td:1".into(),
            deployments: vec![Deployment {
                id: "d".into(),
                status: DeploymentStatus::Primary,
                task_definition: "arn:td:1".into(),
                desired_count: count,
                running_count: count,
                pending_count: 0,
                failed_tasks: 0,
                rollout_state: Some(RolloutState::Completed),
                rollout_state_reason: None,
            }],
            events: vec![],
            target_group_arns: vec![],
            tags: BTreeMap::new(),
        }
    }

    fn running(spec: TaskDefinitionSpec) -> TaskDefinition {
        TaskDefinition {
            arn: "arn:td:1".into(),
            revision: 1,
            status: "ACTIVE".into(),
            spec,
            unmodelled: vec![],
        }
    }

    /// The diff of `spec` against a live service running `td`.
    fn live_diff(
        spec: &ServiceSpec,
        desired: &TaskDefinitionSpec,
        svc: &Service,
        td: &TaskDefinition,
    ) -> ResourceDiff {
        let observed = ObservedService {
            service: svc,
            running: td,
        };
        service("c/web".into(), spec, Some(desired), Some(observed))
    }

    #[test]
    fn a_service_deployed_from_the_manifest_shows_no_change() {
        let spec = service_spec(Some(3), "repo/web:v2");
        let desired = desired_task_definition(&spec, None).expect("file source");
        let td = running(as_aws_returns(&desired));
        let svc = live_service(3);
        let diff = live_diff(&spec, &desired, &svc, &td);
        assert!(diff.in_sync(), "{:#?}", diff.changes().collect::<Vec<_>>());
        assert!(diff
            .fields
            .iter()
            .any(|f| f.field == "taskDefinition.containerDefinitions[web].image"));
    }

    #[test]
    fn an_image_change_is_one_drifted_field() {
        let spec = service_spec(Some(3), "repo/web:v2");
        let desired = desired_task_definition(&spec, None).expect("file source");
        let td = running(as_aws_returns(&td_spec("repo/web:v1")));
        let svc = live_service(3);
        let diff = live_diff(&spec, &desired, &svc, &td);
        let changes: Vec<_> = diff.changes().collect();
        assert_eq!(changes.len(), 1, "{changes:#?}");
        assert_eq!(
            changes[0].field,
            "taskDefinition.containerDefinitions[web].image"
        );
        assert_eq!(changes[0].observed, Value::from("repo/web:v1"));
    }

    #[test]
    fn an_unmanaged_count_is_never_drift() {
        let spec = service_spec(None, "repo/web:v2");
        let desired = desired_task_definition(&spec, None).expect("file source");
        let td = running(desired.clone());
        let svc = live_service(7);
        let diff = live_diff(&spec, &desired, &svc, &td);
        assert!(diff.in_sync());
        assert!(!diff.fields.iter().any(|f| f.field == "desiredCount"));
    }

    #[test]
    fn a_count_change_and_an_env_change_are_reported_by_field() {
        let spec = service_spec(Some(3), "repo/web:v2");
        let desired = desired_task_definition(&spec, None).expect("file source");
        let mut live = as_aws_returns(&desired);
        live.container_definitions[0].environment = Some(vec![KeyValue {
            name: "A".into(),
            value: "1".into(),
        }]);
        let td = running(live);
        let svc = live_service(1);
        let diff = live_diff(&spec, &desired, &svc, &td);
        let fields: Vec<_> = diff.changes().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "desiredCount",
                "taskDefinition.containerDefinitions[web].environment"
            ]
        );
    }

    #[test]
    fn a_missing_service_is_reported_not_diffed() {
        let spec = service_spec(Some(2), "repo/web:v2");
        let diff = service("c/web".into(), &spec, None, None);
        assert!(diff.missing);
        assert!(!diff.in_sync());
    }

    #[test]
    fn asg_diff_compares_only_the_fields_set() {
        let spec = AutoScalingGroupSpec {
            min_size: Some(1),
            max_size: None,
            desired_capacity: Some(2),
        };
        let live = AutoScalingGroup {
            name: "g".into(),
            min_size: 1,
            max_size: 9,
            desired_capacity: 1,
            instances: vec![],
        };
        let diff = auto_scaling_group("g", &spec, Some(&live));
        let fields: Vec<_> = diff.changes().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["desiredCapacity"]);
        assert_eq!(diff.fields.len(), 2);
    }

    #[test]
    fn a_revision_with_equal_content_satisfies_the_desired_one() {
        let desired = td_spec("repo/web:v2");
        assert!(task_definition_satisfies(
            &desired,
            &as_aws_returns(&desired)
        ));
        assert!(!task_definition_satisfies(
            &desired,
            &td_spec("repo/web:v1")
        ));
    }
}
