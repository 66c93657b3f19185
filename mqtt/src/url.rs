//! Broker addresses: `mqtt://[user[:password]@]host[:port]` (default port 1883) and
//! `mqtts://…` (TLS, default port 8883). IPv6 hosts are written in brackets.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("broker URL {0:?} must start with mqtt:// or mqtts://")]
    Scheme(String),
    #[error("broker URL {0:?} has no host")]
    NoHost(String),
    #[error("broker URL {0:?} has an invalid port")]
    Port(String),
    #[error("broker URL {0:?} must not have a path")]
    Path(String),
}

#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl BrokerUrl {
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(UrlError::Scheme(text.to_string()));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(UrlError::Path(text.to_string()));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(info.to_string()), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::NoHost(text.to_string()))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(text.to_string()));
        }
        let port = match port {
            Some(p) => p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| UrlError::Port(text.to_string()))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
            username,
            password,
        })
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Shows the URL without its password, so it can be logged.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://")?;
        if let Some(user) = &self.username {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_tls_credentials_and_ipv6() {
        let u = BrokerUrl::parse("mqtt://127.0.0.1").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 1883));
        let u = BrokerUrl::parse("mqtts://broker.example.com/").unwrap();
        assert_eq!((u.tls, u.port), (true, 8883));
        let u = BrokerUrl::parse("mqtt://mgr:p@ss:w@host:1999").unwrap();
        assert_eq!(u.username.as_deref(), Some("mgr"));
        assert_eq!(u.password.as_deref(), Some("p@ss:w"));
        let u = BrokerUrl::parse("mqtt://[::1]:2000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 2000));
        assert_eq!(u.to_string(), "mqtt://[::1]:2000");
    }

    #[test]
    fn display_hides_the_password() {
        let u = BrokerUrl::parse("mqtt://a:secret@h:1").unwrap();
        assert_eq!(u.to_string(), "mqtt://a@h:1");
        assert!(!format!("{u:?}").contains("secret"));
    }

    #[test]
    fn refuses_bad_urls() {
        assert!(matches!(
            BrokerUrl::parse("http://h"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://"),
            Err(UrlError::NoHost(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://h:0"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://h:99999"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://h:1/x"),
            Err(UrlError::Path(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://[::1"),
            Err(UrlError::NoHost(_))
        ));
    }
}
