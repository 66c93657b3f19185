//! The WHEP and WHIP paths, as the agent's port and the manager's proxy both serve them:
//! [`routes`] adds the whole table to a router, given the handlers. Every path comes in a
//! `{name}` and an `{app}/{name}` form; the handlers read either with
//! [`StreamPath`](crate::path::StreamPath) / [`SessionPath`](crate::path::SessionPath).

use axum::routing::MethodRouter;
use axum::{Extension, Router};
use verge_protocol::whep::SessionRole;

/// The handlers of the WHEP and WHIP paths.
pub struct Handlers<S> {
    /// `POST /whep/{stream}` (and its preflight).
    pub whep_offer: MethodRouter<S>,
    /// `POST /whip/{stream}` (and its preflight).
    pub whip_offer: MethodRouter<S>,
    /// `PATCH|DELETE /session/{stream}/{session}` and `/whip-session/{stream}/{session}` (and
    /// their preflight): the request carries the [`SessionRole`] as an `Extension`.
    pub session: MethodRouter<S>,
}

/// `router` with the WHEP and WHIP paths, each in its `{name}` and `{app}/{name}` form.
pub fn routes<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    handlers: Handlers<S>,
) -> Router<S> {
    let Handlers {
        whep_offer,
        whip_offer,
        session,
    } = handlers;
    let viewer = session.clone().layer(Extension(SessionRole::Viewer));
    let publisher = session.layer(Extension(SessionRole::Publisher));
    router
        .route("/whep/{name}", whep_offer.clone())
        .route("/whep/{app}/{name}", whep_offer)
        .route("/session/{name}/{session}", viewer.clone())
        .route("/session/{app}/{name}/{session}", viewer)
        .route("/whip/{name}", whip_offer.clone())
        .route("/whip/{app}/{name}", whip_offer)
        .route("/whip-session/{name}/{session}", publisher.clone())
        .route("/whip-session/{app}/{name}/{session}", publisher)
}
