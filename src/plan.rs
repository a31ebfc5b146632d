//! A plan: the changes between the manifest and live state, rendered for people (grouped by
//! resource, coloured on a terminal) or as stable JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::diff::{ResourceDiff, ResourceKind};
use crate::manifest::Manifest;
use crate::observe::Snapshot;

/// Version of the JSON output; bumped only on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// Exit codes shared by `plan` (like `terraform plan -detailed-exitcode`).
pub const EXIT_IN_SYNC: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_CHANGES: i32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InSync,
    Drifted,
    Missing,
    Error,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePlan {
    pub kind: ResourceKind,
    pub resource: String,
    pub status: Status,
    pub changes: Vec<Change>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub field: String,
    pub desired: Value,
    pub observed: Value,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub format_version: u32,
    pub manifest: String,
    pub in_sync: bool,
    pub resources: Vec<ResourcePlan>,
    /// API calls made to produce this plan, by operation.
    pub aws_calls: BTreeMap<String, u64>,
    pub aws_calls_total: u64,
}

impl Plan {
    pub fn new(
        manifest: &Manifest,
        snapshot: &Snapshot,
        calls: BTreeMap<&'static str, u64>,
    ) -> Self {
        let mut resources: Vec<ResourcePlan> =
            snapshot.diff(manifest).iter().map(resource_plan).collect();
        for (resource, err) in &snapshot.errors {
            let kind = if resource.contains('/') {
                ResourceKind::Service
            } else {
                ResourceKind::AutoScalingGroup
            };
            resources.push(ResourcePlan {
                kind,
                resource: resource.clone(),
                status: Status::Error,
                changes: vec![],
                error: Some(err.to_string()),
            });
        }
        resources.sort_by(|a, b| (a.kind, &a.resource).cmp(&(b.kind, &b.resource)));
        let in_sync = resources.iter().all(|r| r.status == Status::InSync);
        Plan {
            format_version: FORMAT_VERSION,
            manifest: manifest.path.display().to_string(),
            in_sync,
            resources,
            aws_calls_total: calls.values().sum(),
            aws_calls: calls.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        if self.resources.iter().any(|r| r.status == Status::Error) {
            EXIT_ERROR
        } else if self.in_sync {
            EXIT_IN_SYNC
        } else {
            EXIT_CHANGES
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The plan for a person: drifted resources with their fields, then a one-line summary.
    pub fn to_text(&self, color: bool) -> String {
        let paint = |code: &str, s: &str| {
            if color {
                format!("\x1b[{code}m{s}\x1b[0m")
            } else {
                s.to_string()
            }
        };
        let mut out = String::new();
        for r in &self.resources {
            let label = format!("{} {}", r.kind.as_str(), r.resource);
            match r.status {
                Status::InSync => {}
                Status::Missing => {
                    let _ = writeln!(
                        out,
                        "{} {label}: missing (not created; create it outside ecs-reconciler)",
                        paint("31", "!")
                    );
                }
                Status::Error => {
                    let _ = writeln!(
                        out,
                        "{} {label}: {}",
                        paint("31", "x"),
                        r.error.as_deref().unwrap_or("error")
                    );
                }
                Status::Drifted => {
                    let _ = writeln!(out, "{} {label}", paint("33", "~"));
                    for c in &r.changes {
                        let _ = writeln!(
                            out,
                            "    {}: {} -> {}",
                            c.field,
                            paint("31", &show(&c.observed)),
                            paint("32", &show(&c.desired))
                        );
                    }
                }
            }
        }
        let count = |s: Status| self.resources.iter().filter(|r| r.status == s).count();
        let _ = writeln!(
            out,
            "{} resources: {} in sync, {} to change, {} missing, {} unreadable.",
            self.resources.len(),
            count(Status::InSync),
            count(Status::Drifted),
            count(Status::Missing),
            count(Status::Error),
        );
        out
    }
}

fn resource_plan(diff: &ResourceDiff) -> ResourcePlan {
    let status = if diff.missing {
        Status::Missing
    } else if diff.in_sync() {
        Status::InSync
    } else {
        Status::Drifted
    };
    ResourcePlan {
        kind: diff.kind,
        resource: diff.resource.clone(),
        status,
        changes: diff
            .changes()
            .map(|f| Change {
                field: f.field.clone(),
                desired: f.desired.clone(),
                observed: f.observed.clone(),
            })
            .collect(),
        error: None,
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "(unset)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
