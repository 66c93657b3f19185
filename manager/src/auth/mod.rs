//! Who may do what on the manager (liveman's `[auth]`).
//!
//! - [`policy`]: the right each route needs.
//! - [`jwt`]: HS256 tokens with live777's `{id, exp, mode}` claims.
//! - [`password`]: account passwords, plain or argon2.
//! - [`limit`]: login attempts per source address and from all together, and how many
//!   passwords are checked at once.
//!
//! Static tokens and accounts have every right; a JWT has the rights of its `mode` bits on the
//! stream its `id` names (or all streams with `*`). Denials are 401 (no or bad credentials)
//! or 403 (these credentials may not do this), each with a one-line reason.

pub mod jwt;
mod limit;
pub mod password;
pub mod policy;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;

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
    #[error("too many failed logins from all addresses; try again in {0} s")]
    LimitedForEveryone(u64),
    #[error("another login is being checked; try again in a second")]
    Busy,
}

impl LoginError {
    /// Seconds to wait before trying again (`Retry-After`), when waiting helps.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Wrong => None,
            Self::Limited(secs) | Self::LimitedForEveryone(secs) => Some(*secs),
            Self::Busy => Some(1),
        }
    }
}

pub struct Auth {
    enabled: bool,
    tokens: Vec<String>,
    key: jwt::Key,
    accounts: Arc<[Account]>,
    login_ttl_secs: u64,
    /// Held only to count or refund an attempt, never across a password check.
    limiter: Mutex<limit::LoginLimiter>,
    /// Passwords checked at once ([`limit::CHECKS_AT_ONCE`]).
    checks: Arc<Semaphore>,
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
            // Logins still work; their tokens last as long as this process, and hold only on
            // this manager (managers behind one load balancer must share a secret).
            None => {
                if !cfg.accounts.is_empty() {
                    tracing::warn!(
                        "[auth] accounts without [auth] secret: tokens from /api/login end with this process and hold on no other manager"
                    );
                }
                verge_protocol::secret::random_secret()
            }
        };
        Ok(Self {
            enabled: !cfg.tokens.is_empty() || cfg.secret.is_some() || !cfg.accounts.is_empty(),
            tokens: cfg.tokens.clone(),
            key: jwt::Key::new(secret.as_bytes()),
            accounts: cfg.accounts.clone().into(),
            login_ttl_secs: cfg.login_ttl_secs.unwrap_or(LOGIN_TTL_SECS).max(1),
            limiter: Mutex::new(limit::LoginLimiter::default()),
            checks: Arc::new(Semaphore::new(limit::CHECKS_AT_ONCE)),
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
            is_static |= verge_protocol::secret::secrets_equal(known, token);
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

    /// An admin JWT for `username` if `password` is theirs. The check runs on a blocking
    /// thread, at most [`limit::CHECKS_AT_ONCE`] at a time: a login that finds them busy, or
    /// its source or everyone out of attempts, is refused without one.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        from: IpAddr,
        now_ms: u64,
    ) -> Result<(String, Claims), LoginError> {
        let check = self
            .checks
            .clone()
            .try_acquire_owned()
            .map_err(|_| LoginError::Busy)?;
        let attempt = self.limiter().attempt(from, now_ms);
        match attempt {
            Ok(()) => {}
            Err(limit::Exhausted::Source(secs)) => return Err(LoginError::Limited(secs)),
            Err(limit::Exhausted::Everyone { wait, first }) => {
                if first {
                    tracing::warn!(
                        burst = limit::GLOBAL_BURST,
                        refill_secs = limit::GLOBAL_REFILL_SECS,
                        "too many failed logins from all addresses: each is refused until the \
                         budget refills (said again only after it has refilled entirely)"
                    );
                }
                return Err(LoginError::LimitedForEveryone(wait));
            }
        }
        let accounts = self.accounts.clone();
        let (username, password) = (username.to_string(), password.to_string());
        // The permit goes with the check: a caller that gives up does not free it early.
        let found = tokio::task::spawn_blocking(move || {
            let _check = check;
            // Every account is checked so the time does not tell which usernames exist.
            let mut found = false;
            for account in accounts.iter() {
                let user = verge_protocol::secret::secrets_equal(&account.username, &username);
                let pass = password::matches(&account.password, &password);
                found |= user && pass;
            }
            found
        })
        .await
        .unwrap_or(false);
        if !found {
            return Err(LoginError::Wrong);
        }
        self.limiter().succeeded(from, now_ms);
        let claims = Claims {
            id: ANY.into(),
            exp: now_ms / 1000 + self.login_ttl_secs,
            mode: READ | WRITE | ADMIN,
        };
        Ok((self.key.sign(&claims), claims))
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, limit::LoginLimiter> {
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
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

    #[tokio::test]
    async fn accounts_log_in_and_failures_are_limited() {
        let hashed = password::hash("ops-pass").unwrap();
        let a = auth(&format!(
            "[[accounts]]\nusername = \"live777\"\npassword = \"live777\"\n\
             [[accounts]]\nusername = \"ops\"\npassword = \"{hashed}\""
        ));
        assert!(a.enabled() && a.has_accounts());
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(a.login("ops", "ops-pass", ip, 5_000).await.is_ok());
        assert_eq!(
            a.login("ops", "live777", ip, 5_000).await,
            Err(LoginError::Wrong)
        );
        assert_eq!(
            a.login("live777", "ops-pass", ip, 5_000).await,
            Err(LoginError::Wrong)
        );
        let (token, claims) = a.login("live777", "live777", ip, 5_000).await.unwrap();
        assert_eq!(claims.exp, 5 + LOGIN_TTL_SECS);
        assert_eq!(a.authenticate(Some(&token), 5), Ok(Grant::all()));
        for _ in 0..limit::BURST {
            assert_eq!(
                a.login("live777", "x", ip, 6_000).await,
                Err(LoginError::Wrong)
            );
        }
        assert!(matches!(
            a.login("live777", "live777", ip, 6_000).await,
            Err(LoginError::Limited(_))
        ));
        let elsewhere: IpAddr = "198.51.100.8".parse().unwrap();
        assert!(
            a.login("live777", "live777", elsewhere, 6_000)
                .await
                .is_ok()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_login_while_a_password_is_being_checked_is_refused_at_once() {
        let a = Arc::new(auth(&format!(
            "[[accounts]]\nusername = \"ops\"\npassword = \"{}\"",
            password::hash("ops-pass").unwrap()
        )));
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let first = tokio::spawn({
            let a = a.clone();
            async move { a.login("ops", "wrong", ip, 0).await }
        });
        // The first check holds the only permit until its hash is done.
        let waiting = std::time::Instant::now();
        while a.checks.available_permits() > 0 {
            assert!(waiting.elapsed() < std::time::Duration::from_secs(5));
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let second = a
            .login("ops", "ops-pass", "198.51.100.8".parse().unwrap(), 0)
            .await;
        assert_eq!(second, Err(LoginError::Busy));
        assert_eq!(LoginError::Busy.retry_after(), Some(1));
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        assert_eq!(first.await.unwrap(), Err(LoginError::Wrong));
        assert!(
            a.login("ops", "ops-pass", ip, 0).await.is_ok(),
            "the permit is back"
        );
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
