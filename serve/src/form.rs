//! Form values: `name=value&…` of a query string or an `application/x-www-form-urlencoded`
//! body, `+` and `%XX` decoded, and [`FormParams`], both of a request as an axum extractor.
//! LiveGo's control API reads its `room` from either, on the manager and on the box alike.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// `%XX` decoded. A segment that does not decode to UTF-8 is kept as sent: a path judged by
/// the manager's policy then matches no stream a token names.
pub fn percent_decoded(segment: &str) -> String {
    if !segment.contains('%') {
        return segment.to_string();
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_string())
}

/// The `name=value` pairs of `text`, decoded as form values (`+` is a space). A pair without
/// `=` is skipped.
pub fn pairs(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let value = |s: &str| percent_decoded(&s.replace('+', " "));
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(move |(k, v)| (value(k), value(v)))
}

/// A request's form values: the query's, then a form body's. Other bodies are not read as
/// forms. The router's body limit bounds what is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormParams(pub Vec<(String, String)>);

impl FormParams {
    /// The first non-empty value of `name` (an empty one counts as absent, as in LiveGo).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequest<S> for FormParams {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let mut all: Vec<_> = pairs(request.uri().query().unwrap_or_default()).collect();
        let form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if form && let Ok(text) = std::str::from_utf8(&body) {
            all.extend(pairs(text));
        }
        Ok(FormParams(all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn params(uri: &str, content_type: Option<&str>, body: &'static str) -> FormParams {
        let mut request = Request::builder().uri(uri);
        if let Some(t) = content_type {
            request = request.header(header::CONTENT_TYPE, t);
        }
        let request = request.body(axum::body::Body::from(body)).unwrap();
        FormParams::from_request(request, &()).await.unwrap()
    }

    #[tokio::test]
    async fn values_come_from_the_query_and_a_form_body() {
        let form = Some("application/x-www-form-urlencoded");
        let all = params("/control/get?room=c%61m&x=", None, "").await;
        assert_eq!(all.get("room"), Some("cam"));
        assert_eq!(all.get("x"), None, "empty is absent, as in LiveGo");
        let all = params("/control/get", form, "room=door+1&agent=edge-1").await;
        assert_eq!(
            (all.get("room"), all.get("agent")),
            (Some("door 1"), Some("edge-1"))
        );
        let all = params("/control/get?room=a", form, "room=b").await;
        assert_eq!(all.get("room"), Some("a"), "the query's first");
        // A form body is read only as a form.
        let all = params("/control/get", None, "room=cam").await;
        assert_eq!(all.get("room"), None);
    }

    #[test]
    fn percent_decoding_keeps_what_does_not_decode() {
        assert_eq!(percent_decoded("c%61m"), "cam");
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("%zz%4"), "%zz%4");
        assert_eq!(percent_decoded("%C3%A9"), "é");
        assert_eq!(percent_decoded("%ff"), "%ff", "not UTF-8: kept as sent");
        let decoded: Vec<_> = pairs("a=1&b&c=x+y%2By&=e").collect();
        assert_eq!(
            decoded,
            [
                ("a".into(), "1".into()),
                ("c".into(), "x y+y".into()),
                ("".into(), "e".into())
            ]
        );
    }
}
