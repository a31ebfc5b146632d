//! ecs-reconciler keeps Amazon ECS services and the Auto Scaling Groups that give them capacity
//! in line with a declarative manifest.
//!
//! The pieces, from the outside in:
//! - [`manifest`]: the desired state, parsed and validated with file/line errors.
//! - [`cloud`]: the [`cloud::Cloud`] trait, the only seam to a cloud; [`cloud::aws`] implements it
//!   over the AWS SDK and [`sim`] implements it as an in-process simulated cloud.
//! - [`observe`]: batched, cached reads that turn a manifest into an observed snapshot.
//! - [`diff`]: a pure function from (desired, observed) to the changes, field by field.
//! - [`plan`]: renders changes for people and machines.
//! - [`reconcile`]: the controller loop that applies changes, proves rollouts stable and rolls
//!   back those that are not.

pub mod cloud;
pub mod diff;
pub mod http;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod sim;
pub mod taskdef;
