//! The traffic routers of a canary StormService: read back before deciding, set after.

use crate::rollout::Note;
use crate::routers::{self, Target};
use kube::Client;
use storm_shared::StormService;
use storm_shared::types::stormservice::{CanaryStrategy, RolloutStrategyType, TrafficRouting};
use tracing::debug;

/// Event reason of a router that could not be read or written.
pub const ROUTER_ERROR: &str = "TrafficRouterError";

/// The routers of a canary with `trafficRouting`, and the Services they route between.
pub struct Routing<'a> {
    routing: &'a TrafficRouting,
    stable_service: &'a str,
    canary_service: &'a str,
}

impl<'a> Routing<'a> {
    /// The routing of `obj`, when its canary strategy has routers and both Services.
    pub fn of(obj: &'a StormService) -> Option<Self> {
        let strategy = obj.spec.rollout_strategy.as_ref()?;
        if strategy.type_ != RolloutStrategyType::Canary {
            return None;
        }
        let canary: &CanaryStrategy = strategy.canary.as_ref()?;
        Some(Self {
            routing: canary.traffic_routing.as_ref()?,
            stable_service: canary.stable_service.as_deref()?,
            canary_service: canary.canary_service.as_deref()?,
        })
    }

    fn target<'b>(
        &'b self,
        obj: &StormService,
        ns: &'b str,
        stable: &'b str,
        canary: &'b str,
    ) -> Target<'b> {
        Target {
            namespace: ns,
            owner: super::owner(obj),
            stable_service: self.stable_service,
            canary_service: self.canary_service,
            stable_revision: stable,
            canary_revision: canary,
        }
    }

    /// The weight the routers report, or why they could not be read.
    pub async fn read(
        &self,
        client: &Client,
        obj: &StormService,
        ns: &str,
        stable: &str,
        canary: &str,
    ) -> Result<Option<i32>, routers::Error> {
        let target = self.target(obj, ns, stable, canary);
        routers::read_weight(client, self.routing, &target).await
    }

    /// Sets `weight` unless the routers already report it. At rest too: after a completion or a
    /// reverted template the routers converge to the stable revision at weight 0 (an Istio
    /// DestinationRule's subsets are re-pinned); the caller treats errors at rest as expected
    /// (the user's objects may not exist yet).
    #[allow(clippy::too_many_arguments)]
    pub async fn set(
        &self,
        client: &Client,
        obj: &StormService,
        ns: &str,
        stable: &str,
        canary: &str,
        reported: Option<i32>,
        weight: i32,
    ) -> Result<bool, routers::Error> {
        if reported == Some(weight) {
            return Ok(false);
        }
        let target = self.target(obj, ns, stable, canary);
        routers::set_weight(client, self.routing, &target, weight).await?;
        debug!(namespace = ns, weight, "traffic routers set");
        Ok(true)
    }
}

/// A Warning event for a router error.
pub fn error_note(what: &str, e: &routers::Error) -> Note {
    Note {
        warning: true,
        reason: ROUTER_ERROR.into(),
        message: format!("{what}: {e}"),
    }
}
