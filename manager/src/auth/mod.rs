//! Who may do what on the manager (liveman's `[auth]`).
//!
//! - [`policy`]: the right each route needs.
//! - [`jwt`]: HS256 tokens with live777's `{id, exp, mode}` claims.
//! - [`password`]: account passwords, plain or argon2.
//! - [`limit`]: failed logins per source address.
//!
//! Static tokens and accounts have every right; a JWT has the rights of its `mode` bits on the
//! stream its `id` names (or all streams with `*`). Denials are 401 (no or bad credentials)
//! or 403 (these credentials may not do this), each with a one-line reason.

pub mod jwt;
mod limit;
pub mod password;
pub mod policy;

use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::{Account, AuthConfig};
pub use jwt::Claims;
pub use policy::Need;

pub const READ: u8 = 4;
pub const WRITE: u8 = 2;
pub const ADMIN: u8 = 1;
pub const ANY: &str = "*";
/// What `POST /api/login` grants, for a day unless `login_ttl_secs` says otherwise.
const LOGIN_TTL_SECS: u64 = 24 * 3600;

/// What the request's credentials allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `*`, or one stream as `app/name`.
    pub id: String,
    pub mode: u8,
}

impl Grant {
    /// Everything: auth off, a static token.
    pub fn all() -> Self {
        Self {
            id: ANY.into(),
            mode: READ | WRITE | ADMIN,
        }
    }

    fn from_claims(claims: Claims) -> Self {
        // live777's ids are bare stream names; Verge's streams live in apps, `live` by default.
        let id = if claims.id == ANY || claims.id.contains('/') {
            claims.id
        } else {
            format!("live/{}", claims.id)
        };
        Self {
            id,
            mode: claims.mode,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.id == ANY && self.mode & ADMIN != 0
    }

    /// May this grant read `stream` (`app/name`)?
    pub fn may_read(&self, stream: &str) -> bool {
        self.is_admin() || (self.mode & READ != 0 && self.covers(stream))
    }

    fn covers(&self, stream: &str) -> bool {
        self.id == ANY || self.id == stream
    }

    /// `Err(reason)` when this grant does not meet `need`.
    pub fn meets(&self, need: &Need) -> Result<(), String> {
        let ok = match need {
            Need::Public => true,
            _ if self.is_admin() => true,
            Need::Read(stream) => self.may_read(stream),
            Need::Write(stream) => self.mode & WRITE != 0 && self.covers(stream),
            Need::ReadSome => self.mode & READ != 0,
            Need::ReadAll => self.mode & READ != 0 && self.id == ANY,
            Need::Admin => false,
        };
        if ok {
            return Ok(());
        }
        Err(match need {
            Need::Read(stream) => format!("this token may not read {stream}"),
            Need::Write(stream) => format!("this token may not publish to {stream}"),
            Need::ReadSome => "this token may not read streams".into(),
            Need::ReadAll => "this needs a read token for every stream (id \"*\")".into(),
            _ => "this needs an admin token".into(),
        })
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// 401: who are you?
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: not with these credentials.
    #[error("{0}")]
    Forbidden(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("[[auth.accounts]] {0:?} is listed twice")]
    DuplicateAccount(String),
    #[error("[[auth.accounts]] {0:?} has an empty username or password")]
    EmptyAccount(String),
    #[error("[[auth.accounts]] {user:?}: its password hash cannot be read: {reason}")]
    BadHash { user: String, reason: String },
    #[error("[auth] tokens has an empty token")]
    EmptyToken,
    #[error("[auth] secret is empty")]
    EmptySecret,
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("wrong username or password")]
    Wrong,
    #[error("too many failed logins from this address; try again in {0} s")]
    Limited(u64),
}

pub struct Auth {
    enabled: bool,
    tokens: Vec<String>,
    key: jwt::Key,
    accounts: Vec<Account>,
    login_ttl_secs: u64,
    limiter: Mutex<limit::LoginLimiter>,
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthConfigError> {
        if cfg.tokens.iter().any(String::is_empty) {
            return Err(AuthConfigError::EmptyToken);
        }
        let mut seen = std::collections::HashSet::new();
        for account in &cfg.accounts {
            if account.username.is_empty() || account.password.is_empty() {
                return Err(AuthConfigError::EmptyAccount(account.username.clone()));
            }
            if !seen.insert(account.username.as_str()) {
                return Err(AuthConfigError::DuplicateAccount(account.username.clone()));
            }
            if let Some(reason) = password::unreadable(&account.password) {
                return Err(AuthConfigError::BadHash {
                    user: account.username.clone(),
                    reason,
                });
            }
        }
        let secret = match &cfg.secret {
            Some(s) if s.is_empty() => return Err(AuthConfigError::EmptySecret),
            Some(s) => s.clone(),
            // Logins still work; their tokens last as long as this process.
            None => verge_protocol::key::random_secret(),
        };
        Ok(Self {
            enabled: !cfg.tokens.is_empty() || cfg.secret.is_some() || !cfg.accounts.is_empty(),
            tokens: cfg.tokens.clone(),
            key: jwt::Key::new(secret.as_bytes()),
            accounts: cfg.accounts.clone(),
            login_ttl_secs: cfg.login_ttl_secs.unwrap_or(LOGIN_TTL_SECS).max(1),
            limiter: Mutex::new(limit::LoginLimiter::default()),
        })
    }

    /// Off: every request has every right.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether accounts can log in (the dashboard shows its login page).
    pub fn has_accounts(&self) -> bool {
        !self.accounts.is_empty()
    }

    /// The grant `token` carries at `now` (Unix seconds).
    pub fn authenticate(&self, token: Option<&str>, now: u64) -> Result<Grant, Denied> {
        if !self.enabled {
            return Ok(Grant::all());
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Denied::Unauthenticated(
                "a token is needed: Authorization: Bearer <token>, or ?token=<token>".into(),
            ));
        };
        // Every static token is compared, in constant time, so timing tells nothing.
        let mut is_static = false;
        for known in &self.tokens {
            is_static |= verge_protocol::key::secrets_equal(known, token);
        }
        if is_static {
            return Ok(Grant::all());
        }
        self.key
            .decode(token, now)
            .map(Grant::from_claims)
            .map_err(|e| Denied::Unauthenticated(format!("token refused: {e}")))
    }

    /// Authenticates and checks `need` in one step.
    pub fn admit(&self, need: &Need, token: Option<&str>, now: u64) -> Result<Grant, Denied> {
        if *need == Need::Public {
            // A public route still learns who is asking, when it can.
            return Ok(self.authenticate(token, now).unwrap_or(Grant {
                id: String::new(),
                mode: 0,
            }));
        }
        let grant = self.authenticate(token, now)?;
        grant.meets(need).map_err(Denied::Forbidden)?;
        Ok(grant)
    }

    /// An admin JWT for `username` if `password` is theirs.
    pub fn login(
        &self,
        username: &str,
        password: &str,
        from: IpAddr,
        now_ms: u64,
    ) -> Result<(String, Claims), LoginError> {
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        limiter.check(from, now_ms).map_err(LoginError::Limited)?;
        // Every account is checked so the time does not tell which usernames exist.
        let mut found = false;
        for account in &self.accounts {
            let user = verge_protocol::key::secrets_equal(&account.username, username);
            let pass = password::matches(&account.password, password);
            found |= user && pass;
        }
        if !found {
            limiter.failed(from, now_ms);
            return Err(LoginError::Wrong);
        }
        limiter.succeeded(from);
        drop(limiter);
        let claims = Claims {
            id: ANY.into(),
            exp: now_ms / 1000 + self.login_ttl_secs,
            mode: READ | WRITE | ADMIN,
        };
        Ok((self.key.sign(&claims), claims))
    }

    /// A token for `claims` (`POST /api/token`).
    pub fn mint(&self, claims: &Claims) -> String {
        self.key.sign(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(toml_text: &str) -> Auth {
        let cfg: AuthConfig = toml::from_str(toml_text).unwrap();
        Auth::new(&cfg).unwrap()
    }

    #[test]
    fn off_by_default_everything_is_allowed() {
        let a = auth("");
        assert!(!a.enabled());
        assert_eq!(a.admit(&Need::Admin, None, 0), Ok(Grant::all()));
    }

    #[test]
    fn tokens_and_jwts_carry_their_rights() {
        let a = auth("tokens = [\"tok\"]\nsecret = \"s\"");
        let now = 1_000;
        assert_eq!(a.admit(&Need::Admin, Some("tok"), now), Ok(Grant::all()));
        assert!(matches!(
            a.admit(&Need::ReadAll, None, now),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            a.admit(&Need::ReadAll, Some("tok2"), now),
            Err(Denied::Unauthenticated(_))
        ));
        let token = |id: &str, mode: u8, exp: u64| {
            a.mint(&Claims {
                id: id.into(),
                exp,
                mode,
            })
        };
        let viewer = token("cam", READ, now + 60);
        let cam = Need::Read("live/cam".into());
        assert!(a.admit(&cam, Some(&viewer), now).is_ok());
        assert!(a.admit(&Need::ReadSome, Some(&viewer), now).is_ok());
        assert_eq!(
            a.admit(&Need::Read("live/other".into()), Some(&viewer), now),
            Err(Denied::Forbidden(
                "this token may not read live/other".into()
            ))
        );
        assert!(matches!(
            a.admit(&Need::ReadAll, Some(&viewer), now),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            a.admit(&Need::Write("live/cam".into()), Some(&viewer), now),
            Err(Denied::Forbidden(_))
        ));
        assert_eq!(
            a.admit(&cam, Some(&token("cam", READ, now)), now),
            Err(Denied::Unauthenticated("token refused: JWT expired".into()))
        );
        let publisher = token("live/cam", WRITE, now + 60);
        assert!(
            a.admit(&Need::Write("live/cam".into()), Some(&publisher), now)
                .is_ok()
        );
        assert!(a.admit(&cam, Some(&publisher), now).is_err());
        let all_reader = token("*", READ, now + 60);
        assert!(a.admit(&Need::ReadAll, Some(&all_reader), now).is_ok());
        assert!(a.admit(&Need::Admin, Some(&all_reader), now).is_err());
        // Admin bits on one stream are not fleet admin.
        assert!(
            a.admit(&Need::Admin, Some(&token("cam", 7, now + 60)), now)
                .is_err()
        );
        assert!(
            a.admit(&Need::Admin, Some(&token("*", ADMIN, now + 60)), now)
                .is_ok()
        );
    }

    #[test]
    fn accounts_log_in_and_failures_are_limited() {
        let hashed = password::hash("ops-pass").unwrap();
        let a = auth(&format!(
            "[[accounts]]\nusername = \"live777\"\npassword = \"live777\"\n\
             [[accounts]]\nusername = \"ops\"\npassword = \"{hashed}\""
        ));
        assert!(a.enabled() && a.has_accounts());
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(a.login("ops", "ops-pass", ip, 5_000).is_ok());
        assert_eq!(a.login("ops", "live777", ip, 5_000), Err(LoginError::Wrong));
        assert_eq!(
            a.login("live777", "ops-pass", ip, 5_000),
            Err(LoginError::Wrong)
        );
        let (token, claims) = a.login("live777", "live777", ip, 5_000).unwrap();
        assert_eq!(claims.exp, 5 + LOGIN_TTL_SECS);
        assert_eq!(a.authenticate(Some(&token), 5), Ok(Grant::all()));
        for _ in 0..limit::BURST {
            assert_eq!(a.login("live777", "x", ip, 6_000), Err(LoginError::Wrong));
        }
        assert!(matches!(
            a.login("live777", "live777", ip, 6_000),
            Err(LoginError::Limited(_))
        ));
        let elsewhere: IpAddr = "198.51.100.8".parse().unwrap();
        assert!(a.login("live777", "live777", elsewhere, 6_000).is_ok());
    }

    #[test]
    fn bad_auth_configs_are_refused_at_start() {
        let refused = |t: &str| {
            let cfg: AuthConfig = toml::from_str(t).unwrap();
            Auth::new(&cfg)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(refused("tokens = [\"\"]").contains("empty token"));
        assert!(refused("secret = \"\"").contains("secret is empty"));
        assert!(
            refused("[[accounts]]\nusername = \"a\"\npassword = \"p\"\n[[accounts]]\nusername = \"a\"\npassword = \"q\"")
                .contains("twice")
        );
        assert!(
            refused("[[accounts]]\nusername = \"a\"\npassword = \"$argon2id$x\"")
                .contains("cannot be read")
        );
    }
}
