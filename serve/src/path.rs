//! The stream a path names: `{name}` in the default app `live`, or `{app}/{name}`. Routes
//! that come in both forms share one handler, which takes a [`StreamPath`] (or a
//! [`SessionPath`] for `…/{stream}/{session}`).

use axum::extract::{FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

/// The app a stream named without one is in.
pub const DEFAULT_APP: &str = "live";

/// The stream of a `…/{name}` or `…/{app}/{name}` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPath {
    pub app: String,
    pub name: String,
}

impl StreamPath {
    /// `{app}/{name}`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.app, self.name)
    }

    fn from_params(mut params: Vec<String>) -> Option<Self> {
        let name = params.pop()?;
        let app = match params.pop() {
            Some(app) => app,
            None => DEFAULT_APP.to_owned(),
        };
        params.is_empty().then_some(Self { app, name })
    }
}

/// The session of a `…/{name}/{session}` or `…/{app}/{name}/{session}` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPath {
    pub stream: StreamPath,
    pub session: String,
}

async fn params<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<Vec<String>, Response> {
    Path::<Vec<String>>::from_request_parts(parts, state)
        .await
        .map(|Path(params)| params)
        .map_err(IntoResponse::into_response)
}

fn not_a_stream_path() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the route does not name a stream\n",
    )
        .into_response()
}

impl<S: Send + Sync> FromRequestParts<S> for StreamPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Self::from_params(params(parts, state).await?).ok_or_else(not_a_stream_path)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessionPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let mut params = params(parts, state).await?;
        let session = params.pop().ok_or_else(not_a_stream_path)?;
        let stream = StreamPath::from_params(params).ok_or_else(not_a_stream_path)?;
        Ok(Self { stream, session })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_in_the_default_app() {
        let path = StreamPath::from_params(vec!["cam".into()]).unwrap();
        assert_eq!(path.id(), "live/cam");
        let path = StreamPath::from_params(vec!["tv".into(), "cam".into()]).unwrap();
        assert_eq!(path.id(), "tv/cam");
        assert_eq!(StreamPath::from_params(vec![]), None);
        assert_eq!(
            StreamPath::from_params(vec!["a".into(), "b".into(), "c".into()]),
            None
        );
    }
}
