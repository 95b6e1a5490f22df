//! Checking client credentials.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use gost_api::{AuthConfig, Config, HandlerConfig};
use subtle::ConstantTimeEq;

/// The users a handler accepts.
///
/// As in GOST, a user whose configured password is empty is accepted with any password, and an
/// authenticator with no users rejects everyone. Passwords are compared in constant time, and a
/// wrong user name costs the same comparison as a wrong password.
#[derive(Clone, Default)]
pub struct Authenticator {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Authenticator {
    /// An authenticator accepting exactly these users.
    pub fn new<'a>(users: impl IntoIterator<Item = &'a AuthConfig>) -> Self {
        Authenticator {
            users: users
                .into_iter()
                .map(|a| (a.username.clone(), a.password.clone()))
                .collect(),
        }
    }

    /// The authenticator a handler configuration asks for: its `auth` user plus the users of
    /// the named `auther`/`authers`; `None` when the handler requires no authentication.
    pub fn for_handler(handler: &HandlerConfig, config: &Config) -> Option<Self> {
        let names: Vec<&String> = handler.auther.iter().chain(&handler.authers).collect();
        if handler.auth.is_none() && names.is_empty() {
            return None;
        }
        let from_authers = config
            .authers
            .iter()
            .filter(|a| names.contains(&&a.name))
            .flat_map(|a| &a.auths);
        Some(Authenticator::new(handler.auth.iter().chain(from_authers)))
    }

    /// As [`Authenticator::check`], for a client at `client`: after
    /// [`MAX_AUTH_FAILURES`] failures within [`AUTH_FAILURE_WINDOW`] its attempts are refused
    /// without looking at them until the window ends, so that passwords cannot be guessed at
    /// line speed.
    pub fn check_from(&self, client: IpAddr, username: &str, password: &str) -> bool {
        let client = client.to_canonical();
        if FAILURES.blocked(client, Instant::now()) {
            return false;
        }
        let accepted = self.check(username, password);
        if !accepted {
            FAILURES.record(client, Instant::now());
        }
        accepted
    }

    /// True when `username` exists and `password` matches it.
    pub fn check(&self, username: &str, password: &str) -> bool {
        match self.users.get(username) {
            Some(expected) if expected.is_empty() => true,
            Some(expected) => bool::from(expected.as_bytes().ct_eq(password.as_bytes())),
            None => {
                // Same work as a real comparison, so timing does not reveal which users exist.
                let _ = password.as_bytes().ct_eq(password.as_bytes());
                false
            }
        }
    }
}

/// Failed authentications one client address may make within [`AUTH_FAILURE_WINDOW`] before
/// its further attempts are refused unchecked: enough for a person mistyping, far too few for
/// guessing.
pub const MAX_AUTH_FAILURES: u32 = 10;

/// The window over which failures are counted, and how long a client stays refused.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Client addresses tracked at once; when full, expired entries are dropped, and if none has
/// expired, new addresses are not tracked (a flood from many addresses is not stopped here, but
/// it cannot grow the table either).
const MAX_TRACKED_CLIENTS: usize = 16_384;

/// Recent failures per client address, for every service of the process.
static FAILURES: LazyLock<FailureTable> = LazyLock::new(FailureTable::default);

#[derive(Default)]
struct FailureTable(Mutex<HashMap<IpAddr, (Instant, u32)>>);

impl FailureTable {
    fn blocked(&self, client: IpAddr, now: Instant) -> bool {
        let table = self.0.lock().expect("auth failure table");
        table.get(&client).is_some_and(|(since, count)| {
            now.duration_since(*since) < AUTH_FAILURE_WINDOW && *count >= MAX_AUTH_FAILURES
        })
    }

    fn record(&self, client: IpAddr, now: Instant) {
        let mut table = self.0.lock().expect("auth failure table");
        if table.len() >= MAX_TRACKED_CLIENTS && !table.contains_key(&client) {
            table.retain(|_, (since, _)| now.duration_since(*since) < AUTH_FAILURE_WINDOW);
            if table.len() >= MAX_TRACKED_CLIENTS {
                return;
            }
        }
        let entry = table.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= AUTH_FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 == MAX_AUTH_FAILURES {
            tracing::warn!(
                client = %client, failures = entry.1, window_s = AUTH_FAILURE_WINDOW.as_secs(),
                "too many failed authentications; refusing this address until the window ends"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str, p: &str) -> AuthConfig {
        AuthConfig {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn checks_users_as_gost_does() {
        let users = [user("user", "pass"), user("open", "")];
        let auth = Authenticator::new(&users);
        assert!(auth.check("user", "pass"));
        assert!(!auth.check("user", "pas"));
        assert!(!auth.check("user", "passs"));
        assert!(!auth.check("nobody", "pass"));
        assert!(auth.check("open", "anything"));
        assert!(!Authenticator::new(&[]).check("", ""));
    }

    #[test]
    fn debug_output_has_no_credentials() {
        let users = [user("user", "secret")];
        let text = format!("{:?}", Authenticator::new(&users));
        assert!(
            !text.contains("secret") && !text.contains("user\""),
            "{text}"
        );
    }

    #[test]
    fn repeated_failures_block_the_address_for_the_window() {
        let table = FailureTable::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..MAX_AUTH_FAILURES - 1 {
            table.record(a, t0);
        }
        assert!(!table.blocked(a, t0));
        table.record(a, t0);
        assert!(table.blocked(a, t0));
        assert!(!table.blocked(b, t0), "other addresses are not affected");
        assert!(
            !table.blocked(a, t0 + AUTH_FAILURE_WINDOW),
            "the block ends with the window"
        );
        table.record(a, t0 + AUTH_FAILURE_WINDOW);
        assert!(
            !table.blocked(a, t0 + AUTH_FAILURE_WINDOW),
            "a new window starts from zero"
        );
    }

    #[test]
    fn blocked_clients_are_refused_even_with_the_right_password() {
        let auth = Authenticator::new(&[AuthConfig {
            username: "user".into(),
            password: "pass".into(),
        }]);
        let client: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(auth.check_from(client, "user", "pass"));
        for _ in 0..MAX_AUTH_FAILURES {
            assert!(!auth.check_from(client, "user", "guess"));
        }
        assert!(!auth.check_from(client, "user", "pass"));
        let other: IpAddr = "198.51.100.10".parse().unwrap();
        assert!(auth.check_from(other, "user", "pass"));
    }
}
