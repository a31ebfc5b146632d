//! Injected faults: images that crash or fail health checks, capacity shortages, and API calls
//! that are throttled, fail or are slow, all drawn from the simulator's seeded RNG.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cloud::ErrorKind;

/// What the simulator breaks on purpose. Set it at construction or mid-run with
/// [`super::SimCloud::set_faults`]; image faults apply to tasks started after the change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Tasks with an image matching this pattern stop right after they start and count as
    /// failed. A pattern with `*` or `?` is a glob over the whole image, otherwise a substring.
    pub crash_image: Option<String>,
    /// Tasks with an image matching this pattern start but fail their target group health
    /// checks, so ECS stops and replaces them (only services with target groups check health).
    pub unhealthy_image: Option<String>,
    /// At most this many instances in service or booting across all groups; launches beyond it
    /// stay Pending until the cap allows them, as during an insufficient capacity shortage.
    pub max_launchable_instances: Option<u32>,
    /// The same cap per Auto Scaling Group, by group name.
    pub max_launchable_instances_by_group: BTreeMap<String, u32>,
    /// Share of API calls (0..=1) that fail with [`ErrorKind::Throttled`].
    pub throttle_rate: f64,
    /// Share of API calls (0..=1) that fail with a 5xx, [`ErrorKind::Transient`].
    pub error_rate: f64,
    /// Added to every API call before it reaches the simulated cloud.
    pub latency: Duration,
    /// Operations (`ecs:UpdateService`, ...) that fail with [`ErrorKind::AccessDenied`], as
    /// with an IAM policy that lacks them.
    pub denied_operations: std::collections::BTreeSet<String>,
}

impl Faults {
    /// Whether a task running these images crashes on start.
    pub(super) fn crashes(&self, images: &[String]) -> bool {
        matches_any(self.crash_image.as_deref(), images)
    }

    /// Whether a task running these images fails its health checks.
    pub(super) fn fails_health_checks(&self, images: &[String]) -> bool {
        matches_any(self.unhealthy_image.as_deref(), images)
    }

    /// Draws this call's fate. Rates of zero draw nothing, so a run without API faults keeps the
    /// same random sequence however many calls it makes.
    pub(super) fn roll(
        &self,
        operation: &str,
        rng: &mut fastrand::Rng,
    ) -> Option<(ErrorKind, &'static str)> {
        if self.denied_operations.contains(operation) {
            return Some((
                ErrorKind::AccessDenied,
                "AccessDeniedException: the caller is not authorized to perform this operation",
            ));
        }
        if self.throttle_rate > 0.0 && rng.f64() < self.throttle_rate {
            return Some((ErrorKind::Throttled, "ThrottlingException: Rate exceeded"));
        }
        if self.error_rate > 0.0 && rng.f64() < self.error_rate {
            return Some((
                ErrorKind::Transient,
                "ServiceUnavailableException: the service is unavailable, try again later",
            ));
        }
        None
    }
}

fn matches_any(pattern: Option<&str>, images: &[String]) -> bool {
    pattern.is_some_and(|p| images.iter().any(|image| image_matches(p, image)))
}

/// Matches an image against a fault pattern: a glob when it has `*` or `?`, else a substring.
pub fn image_matches(pattern: &str, image: &str) -> bool {
    if pattern.contains(['*', '?']) {
        glob(pattern.as_bytes(), image.as_bytes())
    } else {
        image.contains(pattern)
    }
}

/// Glob matching with `*` and `?`, backtracking only to the last star so it stays linear-ish.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            last_star = Some((p, t));
            p += 1;
        } else if let Some((star, matched)) = last_star {
            p = star + 1;
            t = matched + 1;
            last_star = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_pattern_matches_as_a_substring() {
        assert!(image_matches(":broken", "repo/app:broken"));
        assert!(!image_matches(":broken", "repo/app:v1"));
    }

    #[test]
    fn a_pattern_with_wildcards_matches_the_whole_image() {
        assert!(image_matches("*:bad-*", "repo/app:bad-42"));
        assert!(!image_matches("app:bad-*", "repo/app:bad-42"));
        assert!(image_matches("repo/app:v?", "repo/app:v7"));
        assert!(image_matches("*", ""));
    }
}
