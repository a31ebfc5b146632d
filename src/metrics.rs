//! Prometheus metrics: drift, resource state, reconciles, changes, rollouts and AWS calls.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::cloud::CallCounter;

/// Every value `ecs_reconciler_resource_state` takes for its `state` label.
pub const RESOURCE_STATES: [&str; 7] = [
    "in_sync",
    "drifted",
    "progressing",
    "rolled_back",
    "quarantined",
    "error",
    "missing",
];

/// Reconcile passes over one resource take from milliseconds (no drift) to a minute (throttled
/// retries), not the whole rollout.
const RECONCILE_BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A rollout lasts from a few seconds (nothing to drain) to the one-hour stability deadline.
const ROLLOUT_BUCKETS: [f64; 11] = [
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("failed to create metric {name}: {source}")]
    Create {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    #[error("failed to register metric {name}: {source}")]
    Register {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
}

/// Creates a collector and registers it, naming the metric in either error.
fn register<C>(
    registry: &Registry,
    name: &'static str,
    created: prometheus::Result<C>,
) -> Result<C, MetricsError>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let collector = created.map_err(|source| MetricsError::Create { name, source })?;
    registry
        .register(Box::new(collector.clone()))
        .map_err(|source| MetricsError::Register { name, source })?;
    Ok(collector)
}

/// The controller's metrics, in a registry of their own. Cloning shares the same series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    drift: IntGaugeVec,
    resource_state: IntGaugeVec,
    reconciles: IntCounterVec,
    reconcile_duration: HistogramVec,
    changes: IntCounterVec,
    rollbacks: IntCounterVec,
    rollout_duration: HistogramVec,
    aws_requests: IntCounterVec,
    manifest_valid: IntGauge,
    last_success: Gauge,
    /// The managed fields last reported per (kind, resource), so fields that leave the manifest
    /// lose their drift series instead of reporting a stale value forever.
    known_fields: Mutex<BTreeMap<(String, String), BTreeSet<String>>>,
    /// The [`CallCounter`] totals at the last sync, so each sync adds only what is new.
    aws_seen: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();

        let drift = register(
            &registry,
            "ecs_reconciler_drift",
            IntGaugeVec::new(
                Opts::new(
                    "ecs_reconciler_drift",
                    "Whether one managed field of a resource differs from the manifest: 1 drifted, \
                     0 in sync. One series per field the manifest manages; a field the manifest \
                     stops managing loses its series.",
                ),
                &["kind", "resource", "field"],
            ),
        )?;
        let resource_state = register(
            &registry,
            "ecs_reconciler_resource_state",
            IntGaugeVec::new(
                Opts::new(
                    "ecs_reconciler_resource_state",
                    "The state of each managed resource: 1 for its current state, 0 for the \
                     others. States: in_sync, drifted, progressing (a rollout is being proven \
                     stable), rolled_back, quarantined (changes stopped until a person acts), \
                     error (the last reconcile failed), missing (in the manifest but not in the \
                     cloud).",
                ),
                &["kind", "resource", "state"],
            ),
        )?;
        let reconciles = register(
            &registry,
            "ecs_reconciler_reconciles_total",
            IntCounterVec::new(
                Opts::new(
                    "ecs_reconciler_reconciles_total",
                    "Reconciles of one resource, by resource kind and result (ok or error). The \
                     error rate is rate(result=\"error\") over rate of all results.",
                ),
                &["kind", "result"],
            ),
        )?;
        let reconcile_duration = register(
            &registry,
            "ecs_reconciler_reconcile_duration_seconds",
            HistogramVec::new(
                HistogramOpts::new(
                    "ecs_reconciler_reconcile_duration_seconds",
                    "Time to reconcile one resource (observe, diff, apply), by resource kind. \
                     Waiting for a rollout to become stable is not included.",
                )
                .buckets(RECONCILE_BUCKETS.to_vec()),
                &["kind"],
            ),
        )?;
        let changes = register(
            &registry,
            "ecs_reconciler_changes_total",
            IntCounterVec::new(
                Opts::new(
                    "ecs_reconciler_changes_total",
                    "Changes the controller made in the cloud, by resource kind and action \
                     (register_task_definition, update_service, update_auto_scaling_group, \
                     drain_instances, terminate_instance, rollback, tag_service). Nonzero in \
                     steady state means something keeps undoing the manifest.",
                ),
                &["kind", "action"],
            ),
        )?;
        let rollbacks = register(
            &registry,
            "ecs_reconciler_rollbacks_total",
            IntCounterVec::new(
                Opts::new(
                    "ecs_reconciler_rollbacks_total",
                    "Rollouts that did not become stable and were rolled back to the last good \
                     task definition, by resource.",
                ),
                &["resource"],
            ),
        )?;
        let rollout_duration = register(
            &registry,
            "ecs_reconciler_rollout_duration_seconds",
            HistogramVec::new(
                HistogramOpts::new(
                    "ecs_reconciler_rollout_duration_seconds",
                    "Time from applying a change to a service until its rollout was proven stable \
                     or rolled back, by resource.",
                )
                .buckets(ROLLOUT_BUCKETS.to_vec()),
                &["resource"],
            ),
        )?;
        let aws_requests = register(
            &registry,
            "ecs_reconciler_aws_requests_total",
            IntCounterVec::new(
                Opts::new(
                    "ecs_reconciler_aws_requests_total",
                    "AWS API calls, by service (ecs, autoscaling, elasticloadbalancing), operation \
                     (DescribeServices, ...) and outcome (ok, throttled, not_found, access_denied, \
                     transient, invalid, other). Watch outcome=\"throttled\" for API rate limits.",
                ),
                &["service", "operation", "outcome"],
            ),
        )?;
        let manifest_valid = register(
            &registry,
            "ecs_reconciler_manifest_valid",
            IntGauge::new(
                "ecs_reconciler_manifest_valid",
                "Whether the manifest last read from disk is valid: 1 valid, 0 invalid. While 0 \
                 the controller keeps reconciling against the last valid manifest.",
            ),
        )?;
        let last_success = register(
            &registry,
            "ecs_reconciler_last_success_timestamp_seconds",
            Gauge::new(
                "ecs_reconciler_last_success_timestamp_seconds",
                "Unix time of the last reconcile that succeeded. Alert on time() minus this \
                 value; a single failing resource shows in \
                 ecs_reconciler_resource_state{state=\"error\"}.",
            ),
        )?;

        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                drift,
                resource_state,
                reconciles,
                reconcile_duration,
                changes,
                rollbacks,
                rollout_duration,
                aws_requests,
                manifest_valid,
                last_success,
                known_fields: Mutex::new(BTreeMap::new()),
                aws_seen: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// Sets the drift of every managed field of one resource, `(field, drifted)`, and removes the
    /// series of fields reported before but absent now.
    pub fn set_drift(&self, kind: &str, resource: &str, fields: &[(String, bool)]) {
        let m = &self.inner;
        for (field, drifted) in fields {
            m.drift
                .with_label_values(&[kind, resource, field.as_str()])
                .set(i64::from(*drifted));
        }

        let current: BTreeSet<String> = fields.iter().map(|(field, _)| field.clone()).collect();
        let mut known = m.known_fields.lock().unwrap_or_else(|p| p.into_inner());
        let previous = known.insert((kind.to_owned(), resource.to_owned()), current.clone());
        for gone in previous.unwrap_or_default().difference(&current) {
            // A series that was never created is as good as removed.
            let _ = m
                .drift
                .remove_label_values(&[kind, resource, gone.as_str()]);
        }
    }

    /// Marks `state` (one of [`RESOURCE_STATES`]) as the resource's current state.
    pub fn set_state(&self, kind: &str, resource: &str, state: &str) {
        if !RESOURCE_STATES.contains(&state) {
            tracing::error!(
                kind,
                resource,
                state,
                "unknown resource state, state metric left unchanged; this is a bug"
            );
            return;
        }
        for candidate in RESOURCE_STATES {
            self.inner
                .resource_state
                .with_label_values(&[kind, resource, candidate])
                .set(i64::from(candidate == state));
        }
    }

    /// Removes every series of a resource that has left the manifest: its drift, its state, and
    /// its rollback and rollout series.
    pub fn forget_resource(&self, kind: &str, resource: &str) {
        let m = &self.inner;
        let fields = m
            .known_fields
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(kind.to_owned(), resource.to_owned()))
            .unwrap_or_default();
        // Removing a series that does not exist fails harmlessly; the goal is its absence.
        for field in &fields {
            let _ = m
                .drift
                .remove_label_values(&[kind, resource, field.as_str()]);
        }
        for state in RESOURCE_STATES {
            let _ = m
                .resource_state
                .remove_label_values(&[kind, resource, state]);
        }
        let _ = m.rollbacks.remove_label_values(&[resource]);
        let _ = m.rollout_duration.remove_label_values(&[resource]);
    }

    pub fn observe_reconcile(&self, kind: &str, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.inner
            .reconciles
            .with_label_values(&[kind, result])
            .inc();
        self.inner
            .reconcile_duration
            .with_label_values(&[kind])
            .observe(seconds);
    }

    pub fn count_change(&self, kind: &str, action: &str) {
        self.inner.changes.with_label_values(&[kind, action]).inc();
    }

    pub fn count_rollback(&self, resource: &str) {
        self.inner.rollbacks.with_label_values(&[resource]).inc();
    }

    pub fn observe_rollout(&self, resource: &str, seconds: f64) {
        self.inner
            .rollout_duration
            .with_label_values(&[resource])
            .observe(seconds);
    }

    /// Brings `ecs_reconciler_aws_requests_total` up to the cumulative totals of `calls`.
    pub fn sync_aws_calls(&self, calls: &CallCounter) {
        let snapshot = calls.snapshot();
        let mut seen = self
            .inner
            .aws_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for ((operation, outcome), total) in snapshot {
            let last = seen.insert((operation, outcome), total).unwrap_or(0);
            // A total below the last one means a fresh counter (a new adapter): all of it is new.
            let delta = if total >= last { total - last } else { total };
            if delta == 0 {
                continue;
            }
            let (service, op) = operation.split_once(':').unwrap_or(("unknown", operation));
            self.inner
                .aws_requests
                .with_label_values(&[service, op, outcome])
                .inc_by(delta);
        }
    }

    pub fn set_manifest_valid(&self, valid: bool) {
        self.inner.manifest_valid.set(i64::from(valid));
    }

    pub fn set_last_success(&self, unix_seconds: f64) {
        self.inner.last_success.set(unix_seconds);
    }

    /// Every series in the Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let families = self.inner.registry.gather();
        let mut out = String::new();
        if let Err(error) = TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!(%error, "failed to encode metrics, serving what was encoded");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the one sample of `name` whose labels include all of `labels`.
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                continue;
            }
            let pairs: Vec<(&str, &str)> = series_labels
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            if labels.iter().all(|want| pairs.contains(want)) {
                assert!(
                    found.is_none(),
                    "more than one sample of {name} matches {labels:?}"
                );
                found = Some(value.parse().expect("sample value is a number"));
            }
        }
        found
    }

    fn fields(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(f, d)| (f.to_string(), *d)).collect()
    }

    #[test]
    fn drift_series_of_a_field_no_longer_managed_is_removed() {
        let metrics = Metrics::new().expect("static metric definitions register");
        metrics.set_drift(
            "service",
            "prod/web",
            &fields(&[("desiredCount", true), ("taskDefinition", false)]),
        );
        let text = metrics.render();
        let drift = |field| {
            sample(
                &text,
                "ecs_reconciler_drift",
                &[("resource", "prod/web"), ("field", field)],
            )
        };
        assert_eq!(drift("desiredCount"), Some(1.0));
        assert_eq!(drift("taskDefinition"), Some(0.0));

        metrics.set_drift("service", "prod/web", &fields(&[("taskDefinition", true)]));
        let text = metrics.render();
        let drift = |field| {
            sample(
                &text,
                "ecs_reconciler_drift",
                &[("resource", "prod/web"), ("field", field)],
            )
        };
        assert_eq!(drift("desiredCount"), None);
        assert_eq!(drift("taskDefinition"), Some(1.0));
    }

    #[test]
    fn drift_of_one_resource_leaves_other_resources_alone() {
        let metrics = Metrics::new().expect("static metric definitions register");
        metrics.set_drift("service", "prod/web", &fields(&[("desiredCount", true)]));
        metrics.set_drift("service", "prod/api", &fields(&[("desiredCount", false)]));
        metrics.set_drift("service", "prod/web", &[]);

        let text = metrics.render();
        assert_eq!(
            sample(&text, "ecs_reconciler_drift", &[("resource", "prod/web")]),
            None
        );
        assert_eq!(
            sample(&text, "ecs_reconciler_drift", &[("resource", "prod/api")]),
            Some(0.0)
        );
    }

    #[test]
    fn state_has_exactly_one_state_set_to_one() {
        let metrics = Metrics::new().expect("static metric definitions register");
        metrics.set_state("service", "prod/web", "progressing");
        metrics.set_state("service", "prod/web", "rolled_back");

        let text = metrics.render();
        let values: Vec<(&str, f64)> = RESOURCE_STATES
            .iter()
            .map(|state| {
                let labels = [("resource", "prod/web"), ("state", *state)];
                (
                    *state,
                    sample(&text, "ecs_reconciler_resource_state", &labels)
                        .expect("state series exists"),
                )
            })
            .collect();
        let ones: Vec<&str> = values
            .iter()
            .filter(|(_, v)| *v == 1.0)
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(ones, ["rolled_back"]);
        assert!(values.iter().all(|(_, v)| *v == 0.0 || *v == 1.0));
    }

    #[test]
    fn an_unknown_state_leaves_the_state_unchanged() {
        let metrics = Metrics::new().expect("static metric definitions register");
        metrics.set_state("service", "prod/web", "in_sync");
        metrics.set_state("service", "prod/web", "sideways");

        let text = metrics.render();
        let labels = [("resource", "prod/web"), ("state", "in_sync")];
        assert_eq!(
            sample(&text, "ecs_reconciler_resource_state", &labels),
            Some(1.0)
        );
        assert!(!text.contains("sideways"));
    }

    #[test]
    fn forgetting_a_resource_removes_all_its_series() {
        let metrics = Metrics::new().expect("static metric definitions register");
        metrics.set_drift("service", "prod/web", &fields(&[("desiredCount", true)]));
        metrics.set_state("service", "prod/web", "drifted");
        metrics.count_rollback("prod/web");
        metrics.observe_rollout("prod/web", 42.0);
        metrics.set_state("service", "prod/api", "in_sync");

        metrics.forget_resource("service", "prod/web");

        let text = metrics.render();
        assert!(
            !text.contains("prod/web"),
            "series of prod/web left:\n{text}"
        );
        assert!(text.contains("prod/api"));
    }

    #[test]
    fn aws_sync_adds_only_the_calls_made_since_the_last_sync() {
        let metrics = Metrics::new().expect("static metric definitions register");
        let calls = CallCounter::default();
        calls.record("ecs:DescribeServices", "ok");
        calls.record("ecs:DescribeServices", "ok");
        calls.record("autoscaling:DescribeAutoScalingGroups", "throttled");
        metrics.sync_aws_calls(&calls);
        metrics.sync_aws_calls(&calls);

        let text = metrics.render();
        let describe = [
            ("service", "ecs"),
            ("operation", "DescribeServices"),
            ("outcome", "ok"),
        ];
        let asg = [
            ("service", "autoscaling"),
            ("operation", "DescribeAutoScalingGroups"),
            ("outcome", "throttled"),
        ];
        assert_eq!(
            sample(&text, "ecs_reconciler_aws_requests_total", &describe),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "ecs_reconciler_aws_requests_total", &asg),
            Some(1.0)
        );

        calls.record("ecs:DescribeServices", "ok");
        metrics.sync_aws_calls(&calls);

        let text = metrics.render();
        assert_eq!(
            sample(&text, "ecs_reconciler_aws_requests_total", &describe),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "ecs_reconciler_aws_requests_total", &asg),
            Some(1.0)
        );
    }

    #[test]
    fn render_contains_every_series_after_one_use_each() {
        let metrics = Metrics::new().expect("static metric definitions register");
        let calls = CallCounter::default();
        calls.record("ecs:UpdateService", "ok");

        metrics.set_drift("service", "prod/web", &fields(&[("desiredCount", true)]));
        metrics.set_state("service", "prod/web", "drifted");
        metrics.observe_reconcile("service", true, 0.2);
        metrics.count_change("service", "update_service");
        metrics.count_rollback("prod/web");
        metrics.observe_rollout("prod/web", 120.0);
        metrics.sync_aws_calls(&calls);
        metrics.set_manifest_valid(true);
        metrics.set_last_success(1_700_000_000.0);

        let text = metrics.render();
        for name in [
            "ecs_reconciler_drift",
            "ecs_reconciler_resource_state",
            "ecs_reconciler_reconciles_total",
            "ecs_reconciler_reconcile_duration_seconds",
            "ecs_reconciler_changes_total",
            "ecs_reconciler_rollbacks_total",
            "ecs_reconciler_rollout_duration_seconds",
            "ecs_reconciler_aws_requests_total",
            "ecs_reconciler_manifest_valid",
            "ecs_reconciler_last_success_timestamp_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from:\n{text}"
            );
        }
        assert_eq!(
            sample(&text, "ecs_reconciler_manifest_valid", &[]),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "ecs_reconciler_last_success_timestamp_seconds", &[]),
            Some(1_700_000_000.0)
        );
        let reconcile_count = sample(
            &text,
            "ecs_reconciler_reconcile_duration_seconds_count",
            &[("kind", "service")],
        );
        assert_eq!(reconcile_count, Some(1.0));
    }

    #[test]
    fn clones_share_the_same_series() {
        let metrics = Metrics::new().expect("static metric definitions register");
        metrics
            .clone()
            .count_change("autoscaling_group", "update_auto_scaling_group");

        let labels = [
            ("kind", "autoscaling_group"),
            ("action", "update_auto_scaling_group"),
        ];
        assert_eq!(
            sample(&metrics.render(), "ecs_reconciler_changes_total", &labels),
            Some(1.0)
        );
    }
}
