//! Whether the author of a StormService may write the objects it makes the controller write.
//!
//! The review handler stays pure: it names the [`AccessRequest`]s it needs answered and reads the
//! answers from a [`Decisions`]. The server asks the API server (one SubjectAccessReview per
//! request, all at once, within [`SAR_TIMEOUT`]) and hands the answers back. A request without an
//! answer, or whose SubjectAccessReview failed, is refused: admission fails closed.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use storm_shared::ownership::{TrafficKind, VERB};

/// How long the SubjectAccessReviews of one admission review may take together: well inside the
/// webhook configurations' `timeoutSeconds` (5), so a slow API server gives the user our message
/// rather than the API server's "context deadline exceeded".
pub const SAR_TIMEOUT: Duration = Duration::from_secs(2);

/// The requesting user, as the AdmissionReview's `request.userInfo` carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(default)]
pub struct UserInfo {
    /// The user name (`system:serviceaccount:<ns>:<sa>` for a ServiceAccount).
    pub username: String,
    /// The user's UID.
    pub uid: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// Extra attributes from the authenticator (scopes and the like); authorizers may read them.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The group the API server's authorizer allows everything, before RBAC or any webhook
/// authorizer is consulted.
pub const PRIVILEGED_GROUP: &str = "system:masters";

impl UserInfo {
    /// Whether the API server allows this user everything whatever the question: a member of
    /// [`PRIVILEGED_GROUP`]. Asking would answer "allowed"; not asking saves the round trip.
    pub fn unconditionally_allowed(&self) -> bool {
        self.groups.iter().any(|g| g == PRIVILEGED_GROUP)
    }
}

/// One question for the API server: may `user` [`VERB`] object `name` of `kind` in `namespace`?
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AccessRequest {
    /// Who asks.
    pub user: UserInfo,
    /// Namespace of the object (the StormService's).
    pub namespace: String,
    /// Kind of the object.
    pub kind: TrafficKind,
    /// Name of the object.
    pub name: String,
}

impl AccessRequest {
    /// The SubjectAccessReview that asks this question.
    pub fn review(&self) -> SubjectAccessReview {
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(self.user.username.clone()).filter(|u| !u.is_empty()),
                uid: Some(self.user.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(self.user.groups.clone()).filter(|g| !g.is_empty()),
                extra: Some(self.user.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(self.namespace.clone()),
                    verb: Some(VERB.to_string()),
                    group: Some(self.kind.group().to_string()),
                    resource: Some(self.kind.resource().to_string()),
                    name: Some(self.name.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        }
    }
}

/// The API server's answer to one [`AccessRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allowed,
    /// Not allowed; the authorizer's reason, if it gave one.
    Denied(String),
    /// The question could not be asked or answered (timeout, API error): refused.
    Failed(String),
}

/// Answers the review handler reads.
pub trait Decisions {
    /// The answer to `request`, `None` when it was not asked.
    fn decision(&self, request: &AccessRequest) -> Option<Decision>;
}

/// Answers collected for one review.
#[derive(Debug, Default, Clone)]
pub struct Decided(pub BTreeMap<AccessRequest, Decision>);

impl Decisions for Decided {
    fn decision(&self, request: &AccessRequest) -> Option<Decision> {
        self.0.get(request).cloned()
    }
}

/// Nothing asked yet: every request is unanswered.
pub struct Unasked;

impl Decisions for Unasked {
    fn decision(&self, _: &AccessRequest) -> Option<Decision> {
        None
    }
}

/// Asks the API server. Without a client (`--offline`) every answer is [`Decision::Failed`].
#[derive(Clone)]
pub struct Authorizer {
    client: Option<Client>,
    timeout: Duration,
}

impl Authorizer {
    /// Asks through `client`, all of one review's questions within `timeout`.
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self {
            client: Some(client),
            timeout,
        }
    }

    /// Asks nobody: every question fails (`--offline`, where no cluster is reachable).
    pub fn offline() -> Self {
        Self {
            client: None,
            timeout: SAR_TIMEOUT,
        }
    }

    /// The answers to `requests`, asked concurrently.
    pub async fn decide(&self, requests: Vec<AccessRequest>) -> Decided {
        let Some(client) = &self.client else {
            return Decided(
                requests
                    .into_iter()
                    .map(|r| {
                        (
                            r,
                            Decision::Failed(
                                "the webhook runs --offline, without an API server to ask".into(),
                            ),
                        )
                    })
                    .collect(),
            );
        };
        let api: Api<SubjectAccessReview> = Api::all(client.clone());
        let asks = requests.into_iter().map(|request| {
            let api = api.clone();
            async move {
                let asked = tokio::time::timeout(
                    self.timeout,
                    api.create(&PostParams::default(), &request.review()),
                )
                .await;
                let decision = match asked {
                    Ok(Ok(sar)) => match sar.status {
                        Some(s) if s.allowed => Decision::Allowed,
                        Some(s) => {
                            Decision::Denied(s.reason.or(s.evaluation_error).unwrap_or_default())
                        }
                        None => Decision::Failed(
                            "the SubjectAccessReview came back without a status".into(),
                        ),
                    },
                    Ok(Err(e)) => Decision::Failed(format!("SubjectAccessReview failed: {e}")),
                    Err(_) => Decision::Failed(format!(
                        "SubjectAccessReview did not answer within {:?}",
                        self.timeout
                    )),
                };
                if let Decision::Failed(why) = &decision {
                    tracing::warn!(user = %request.user.username, namespace = %request.namespace,
                        kind = request.kind.kind(), name = %request.name, reason = %why,
                        "access check failed; refusing");
                }
                (request, decision)
            }
        });
        Decided(futures::future::join_all(asks).await.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_review_asks_for_patch_on_the_named_object_as_the_user() {
        let request = AccessRequest {
            user: UserInfo {
                username: "system:serviceaccount:t:tenant".into(),
                uid: "u-1".into(),
                groups: vec!["system:serviceaccounts".into()],
                extra: [("scopes".to_string(), vec!["a".to_string()])].into(),
            },
            namespace: "t".into(),
            kind: TrafficKind::HttpRoute,
            name: "web".into(),
        };
        let sar = serde_json::to_value(request.review()).unwrap();
        assert_eq!(
            sar["spec"],
            serde_json::json!({
                "user": "system:serviceaccount:t:tenant",
                "uid": "u-1",
                "groups": ["system:serviceaccounts"],
                "extra": {"scopes": ["a"]},
                "resourceAttributes": {
                    "namespace": "t", "verb": "patch",
                    "group": "gateway.networking.k8s.io", "resource": "httproutes", "name": "web"
                }
            })
        );
    }

    #[tokio::test]
    async fn offline_answers_fail_closed() {
        let request = AccessRequest {
            user: UserInfo::default(),
            namespace: "t".into(),
            kind: TrafficKind::Service,
            name: "s".into(),
        };
        let decided = Authorizer::offline().decide(vec![request.clone()]).await;
        assert!(matches!(
            decided.decision(&request),
            Some(Decision::Failed(_))
        ));
        assert_eq!(Unasked.decision(&request), None);
    }
}
