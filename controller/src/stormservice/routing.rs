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

/// Before a StormService with routers goes: all traffic back on its stable revision, in every
/// routing object that still exists. Objects that are gone, not served or no longer routable are
/// left as they are (nothing of ours is in them to undo, or nothing can be done: the Warning says
/// so); a read or write that failed is an error, tried again with the backoff, and the StormService
/// stays until it succeeds.
pub async fn revert_on_delete(
    client: &Client,
    obj: &StormService,
    ns: &str,
) -> Result<Option<Note>, routers::Error> {
    let Some(stable) = obj
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
    else {
        // Never rolled out: the routers were never moved.
        return Ok(None);
    };
    let Some(r) = Routing::of(obj, ns, stable, stable) else {
        return Ok(None);
    };
    match r.set(client, None, 0).await {
        Ok(_) => Ok(Some(Note {
            warning: false,
            reason: Reason::RoutersReverted,
            message: format!(
                "deleted: all traffic back on stable revision {stable} in the traffic routers"
            ),
        })),
        Err(
            e @ (routers::Error::Missing { .. }
            | routers::Error::NotServed { .. }
            | routers::Error::Unroutable { .. }
            | routers::Error::WeightOutOfRange(_)),
        ) => Ok(Some(error_note(
            "deleted, traffic routers left as they are",
            &e,
        ))),
        Err(e) => Err(e),
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
