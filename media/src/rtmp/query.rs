//! What a client writes after `?` in `connect`'s app or in a stream name: where encoders put
//! credentials (`rtmp://host/live?token=…/key` makes the app `live?token=…`; OBS's key field
//! holds `{key}?token=…`).
//!
//! The [`Session`](super::session::Session) cuts the query off both, once, as it reads the
//! command: the app and the names it reports (and echoes in status descriptions) are names
//! only. The queries travel in a [`Query`], whose `Debug` shows parameter names and none of
//! their values, so a token reaches neither a log line nor an encoder's screen by way of a name.

use std::fmt;

/// A query as sent (`x=1&token=…`): `&`-separated `name=value` pairs, values as they came
/// (percent-encoded, if the client encoded them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Query(String);

impl Query {
    /// `text` cut at its first `?`: the name before it and the query after.
    pub fn split_off(text: &str) -> (&str, Query) {
        match text.split_once('?') {
            Some((name, query)) => (name, Query(query.to_string())),
            None => (text, Query::default()),
        }
    }

    /// The value of the first parameter called `name`, as sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs()
            .find_map(|(key, value)| (key == name).then_some(value))
    }

    /// This query's parameters, then `other`'s: where a name appears in both, this one's wins.
    pub fn then(self, other: &Query) -> Query {
        match (self.0.is_empty(), other.0.is_empty()) {
            (_, true) => self,
            (true, false) => other.clone(),
            (false, false) => Query(format!("{}&{}", self.0, other.0)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
    }
}

/// Names only: `Query[x, token]`.
impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Query")?;
        f.debug_list()
            .entries(self.pairs().map(|(name, _)| name))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_cut_at_the_first_question_mark() {
        let (name, query) = Query::split_off("live?x=1&token=a?b=c");
        assert_eq!(name, "live");
        assert_eq!(query.get("token"), Some("a?b=c"));
        assert_eq!(query.get("x"), Some("1"));
        assert_eq!(query.get("y"), None);
        let (name, query) = Query::split_off("cam");
        assert_eq!((name, query.is_empty()), ("cam", true));
        let (name, query) = Query::split_off("?token=t");
        assert_eq!((name, query.get("token")), ("", Some("t")));
    }

    #[test]
    fn the_first_query_wins_where_both_name_a_parameter() {
        let (_, name) = Query::split_off("k?token=from-name");
        let (_, app) = Query::split_off("live?token=from-app&x=1");
        let both = name.clone().then(&app);
        assert_eq!(both.get("token"), Some("from-name"));
        assert_eq!(both.get("x"), Some("1"));
        assert_eq!(Query::default().then(&app).get("token"), Some("from-app"));
        assert_eq!(name.clone().then(&Query::default()), name);
    }

    #[test]
    fn debug_shows_names_and_no_values() {
        let (_, query) = Query::split_off("live?token=eyJsecret&x=1&flag");
        let shown = format!("{query:?}");
        assert_eq!(shown, r#"Query["token", "x", "flag"]"#);
        assert!(!shown.contains("eyJsecret"));
    }
}
