//! Traffic routers: set the canary's weight on nginx, Istio, SMI and Gateway API objects and read it back.
