//! The traffic routers of a canary StormService: read back before deciding, set after.

use crate::rollout::Note;
use crate::routers::{self, Target};
use kube::Client;
use storm_shared::StormService;
use storm_shared::status::Reason;
use storm_shared::types::stormservice::{CanaryStrategy, RolloutStrategyType, TrafficRouting};
use tracing::debug;

/// The routers of a canary with `trafficRouting`, pointed at a stable and a canary revision.
pub struct Routing<'a> {
    routing: &'a TrafficRouting,
    target: Target<'a>,
}

impl<'a> Routing<'a> {
    /// The routing of `obj` between revisions `stable` and `canary`, when its canary strategy has
    /// routers and both Services.
    pub fn of(
        obj: &'a StormService,
        ns: &'a str,
        stable: &'a str,
        canary: &'a str,
    ) -> Option<Self> {
        let strategy = obj.spec.rollout_strategy.as_ref()?;
        if strategy.type_ != RolloutStrategyType::Canary {
            return None;
        }
        let c: &CanaryStrategy = strategy.canary.as_ref()?;
        Some(Self {
            routing: c.traffic_routing.as_ref()?,
            target: Target {
                namespace: ns,
                owner: super::revisions::owner(obj),
                stable_service: c.stable_service.as_deref()?,
                canary_service: c.canary_service.as_deref()?,
                stable_revision: stable,
                canary_revision: canary,
            },
        })
    }

    /// The weight the routers report, or why they could not be read.
    pub async fn read(&self, client: &Client) -> Result<Option<i32>, routers::Error> {
        routers::read_weight(client, self.routing, &self.target).await
    }

    /// Sets `weight` unless the routers already report it. At rest too: after a completion or a
    /// reverted template the routers converge to the stable revision at weight 0 (an Istio
    /// DestinationRule's subsets are re-pinned); the caller treats errors at rest as expected
    /// (the user's objects may not exist yet).
    pub async fn set(
        &self,
        client: &Client,
        reported: Option<i32>,
        weight: i32,
    ) -> Result<bool, routers::Error> {
        if reported == Some(weight) {
            return Ok(false);
        }
        routers::set_weight(client, self.routing, &self.target, weight).await?;
        debug!(
            namespace = self.target.namespace,
            weight, "traffic routers set"
        );
        Ok(true)
    }
}

/// A Warning event for a router error.
pub fn error_note(what: &str, e: &routers::Error) -> Note {
    Note {
        warning: true,
        reason: Reason::TrafficRouterError,
        message: format!("{what}: {e}"),
    }
}
