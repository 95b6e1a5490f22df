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
/// wrong user name costs the same comparison as a wrong password. Several authers are asked
/// in turn, as GOST's group of them is: a user accepted by any of them is accepted.
#[derive(Clone, Default)]
pub struct Authenticator {
    // One set of users per auther (one for an `auth` user).
    users: Vec<HashMap<String, String>>,
    /// Failures one client address may make within [`AUTH_FAILURE_WINDOW`]; 0: no limit.
    failure_limit: u32,
}

/// What [`Authenticator::check_from`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The credentials are right.
    Accepted,
    /// The credentials are wrong.
    Rejected,
    /// The credentials are wrong, and this failure used up the client's allowance: it is
    /// refused unchecked for the rest of the window. Reported once per window, so that a
    /// guesser cannot fill the logs.
    LimitReached,
    /// The client is over its allowance; its credentials were not looked at.
    Refused,
}

impl Verdict {
    /// True for [`Verdict::Accepted`].
    pub fn accepted(self) -> bool {
        self == Verdict::Accepted
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.iter().map(HashMap::len).sum::<usize>())
            .finish()
    }
}

/// The users of each auther `names` names, in that order, as GOST reads them: an entry
/// without a user name is skipped, so no client can log in as it (with any password, when its
/// password is empty too); a user of the file replaces the inline one of the same name.
fn auther_users(config: &Config, names: &[&String]) -> Vec<HashMap<String, String>> {
    names
        .iter()
        .filter_map(|name| config.authers.iter().find(|a| &a.name == *name))
        .map(|a| users_map(a.auths.iter().chain(&a.file_auths)))
        .collect()
}

fn users_map<'a>(users: impl IntoIterator<Item = &'a AuthConfig>) -> HashMap<String, String> {
    users
        .into_iter()
        .filter(|user| !user.username.is_empty())
        .map(|a| (a.username.clone(), a.password.clone()))
        .collect()
}

impl Authenticator {
    /// An authenticator accepting exactly these users.
    pub fn new<'a>(users: impl IntoIterator<Item = &'a AuthConfig>) -> Self {
        let users: HashMap<String, String> = users
            .into_iter()
            .map(|a| (a.username.clone(), a.password.clone()))
            .collect();
        Authenticator {
            users: vec![users],
            failure_limit: DEFAULT_AUTH_FAILURE_LIMIT,
        }
    }

    /// The same users, refusing a client address unchecked after `limit` failures within
    /// [`AUTH_FAILURE_WINDOW`] (the service's `authFailureLimit`); 0 turns the limit off.
    pub fn with_failure_limit(mut self, limit: u32) -> Self {
        self.failure_limit = limit;
        self
    }

    /// The authenticator a handler configuration asks for, as GOST builds it: the users of the
    /// named `auther`/`authers` if it names any, otherwise its `auth` user (GOST ignores `auth`
    /// beside an auther); `None` when the handler requires no authentication.
    pub fn for_handler(handler: &HandlerConfig, config: &Config) -> Option<Self> {
        let names: Vec<&String> = handler.auther.iter().chain(&handler.authers).collect();
        Self::configured(handler.auth.as_ref(), &names, config)
    }

    /// As GOST builds an authenticator from a section with `auth` and authers `names`: the
    /// authers' users if it names any (they replace `auth`), otherwise its `auth` user; `None`
    /// when it has neither.
    pub fn configured(
        auth: Option<&AuthConfig>,
        names: &[&String],
        config: &Config,
    ) -> Option<Self> {
        if names.is_empty() {
            return auth.map(|auth| Authenticator::new([auth]));
        }
        Some(Authenticator {
            users: auther_users(config, names),
            failure_limit: DEFAULT_AUTH_FAILURE_LIMIT,
        })
    }

    /// As [`Authenticator::check`], for a client at `client`: after the failure limit
    /// ([`DEFAULT_AUTH_FAILURE_LIMIT`] unless configured) within [`AUTH_FAILURE_WINDOW`] its
    /// attempts are refused without looking at them until the window ends, so that passwords
    /// cannot be guessed at line speed.
    pub fn check_from(&self, client: IpAddr, username: &str, password: &str) -> Verdict {
        let limit = self.failure_limit;
        if limit == 0 {
            // Off: failures here are not counted against the address either.
            return if self.check(username, password) {
                Verdict::Accepted
            } else {
                Verdict::Rejected
            };
        }
        let client = client.to_canonical();
        if FAILURES.failures(client, Instant::now()) >= limit {
            return Verdict::Refused;
        }
        if self.check(username, password) {
            return Verdict::Accepted;
        }
        match FAILURES.record(client, Instant::now()) {
            n if n == limit => Verdict::LimitReached,
            // Concurrent failures (on this service or another, which share the address's
            // count) reached the limit first; the one that reached it reports it.
            n if n > limit => Verdict::Refused,
            _ => Verdict::Rejected,
        }
    }

    /// True when `username` exists and `password` matches it, in any of the sets of users.
    pub fn check(&self, username: &str, password: &str) -> bool {
        // Every set is asked, so timing does not tell which one knows the user.
        self.users.iter().fold(false, |accepted, users| {
            let matched = match users.get(username) {
                Some(expected) if expected.is_empty() => true,
                Some(expected) => bool::from(expected.as_bytes().ct_eq(password.as_bytes())),
                None => {
                    // Same work as a real comparison, so timing does not reveal which users
                    // exist.
                    let _ = password.as_bytes().ct_eq(password.as_bytes());
                    false
                }
            };
            accepted | matched
        })
    }
}

/// Failed authentications one client address may make within [`AUTH_FAILURE_WINDOW`] before
/// its further attempts are refused unchecked, unless the service's `authFailureLimit` says
/// otherwise: enough for a person mistyping, far too few for guessing.
pub const DEFAULT_AUTH_FAILURE_LIMIT: u32 = 10;

/// Largest `authFailureLimit` accepted: past this the limit no longer slows guessing (a
/// thousand tries a minute per address), so a larger value is more likely a mistake for 0
/// (off) than a wish.
pub const MAX_AUTH_FAILURE_LIMIT: u32 = 1_000;

/// The window over which failures are counted, and how long a client stays refused.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Client addresses tracked at once; when full, expired entries are dropped, and if none has
/// expired, new addresses are not tracked (a flood from many addresses is not stopped here, but
/// it cannot grow the table either).
const MAX_TRACKED_CLIENTS: usize = 16_384;

/// Recent failures per client address, for every service of the process: a guesser moving
/// from one service to the next keeps its count, and each service compares it with its own
/// limit.
static FAILURES: LazyLock<FailureTable> = LazyLock::new(FailureTable::default);

#[derive(Default)]
struct FailureTable(Mutex<HashMap<IpAddr, (Instant, u32)>>);

impl FailureTable {
    /// Failures of `client` in its current window.
    fn failures(&self, client: IpAddr, now: Instant) -> u32 {
        let table = self.0.lock().expect("auth failure table");
        table
            .get(&client)
            .filter(|(since, _)| now.duration_since(*since) < AUTH_FAILURE_WINDOW)
            .map_or(0, |(_, count)| *count)
    }

    /// Counts a failure of `client`; returns its failures in the current window, this one
    /// included (0 when the table is full and `client` is not tracked).
    fn record(&self, client: IpAddr, now: Instant) -> u32 {
        let mut table = self.0.lock().expect("auth failure table");
        if table.len() >= MAX_TRACKED_CLIENTS && !table.contains_key(&client) {
            table.retain(|_, (since, _)| now.duration_since(*since) < AUTH_FAILURE_WINDOW);
            if table.len() >= MAX_TRACKED_CLIENTS {
                return 0;
            }
        }
        let entry = table.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= AUTH_FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str, p: &str) -> AuthConfig {
        AuthConfig {
            username: u.into(),
            password: p.into(),
            file: None,
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
    fn a_named_auther_replaces_the_auth_user_as_in_gost() {
        let config = gost_api::from_str(
            "services:\n- name: a\n  addr: :1\n  handler:\n    type: http\n    auth: {username: inline, password: x}\n    auther: team\n- name: b\n  addr: :2\n  handler:\n    type: http\n    auth: {username: inline, password: x}\nauthers:\n- name: team\n  auths:\n  - {username: member, password: y}\n",
            gost_api::Format::Yaml,
        )
        .unwrap();
        let with_auther = Authenticator::for_handler(&config.services[0].handler, &config).unwrap();
        assert!(with_auther.check("member", "y"));
        assert!(
            !with_auther.check("inline", "x"),
            "GOST ignores auth beside an auther"
        );
        let inline = Authenticator::for_handler(&config.services[1].handler, &config).unwrap();
        assert!(inline.check("inline", "x"));
        assert!(!inline.check("member", "y"));
    }

    #[test]
    fn several_authers_are_asked_in_turn_as_in_gost() {
        // The same user in two authers with two passwords: either is accepted (they were
        // merged, and the last auther's password replaced the first's).
        let config = gost_api::from_str(
            "services:\n- name: a\n  addr: :1\n  handler:\n    type: http\n    authers: [one, two]\nauthers:\n- name: one\n  auths:\n  - {username: shared, password: first}\n  - {username: alice, password: a}\n- name: two\n  auths:\n  - {username: shared, password: second}\n  - {username: bob, password: b}\n",
            gost_api::Format::Yaml,
        )
        .unwrap();
        let auth = Authenticator::for_handler(&config.services[0].handler, &config).unwrap();
        assert!(auth.check("shared", "first"));
        assert!(auth.check("shared", "second"));
        assert!(auth.check("alice", "a"));
        assert!(auth.check("bob", "b"));
        assert!(!auth.check("alice", "b"));
        assert!(!auth.check("shared", "third"));
    }

    #[test]
    fn auther_entries_without_a_user_name_are_skipped_as_in_gost() {
        let config = gost_api::from_str(
            "services:\n- name: a\n  addr: :1\n  handler:\n    type: http\n    auther: team\nauthers:\n- name: team\n  auths:\n  - {username: \"\", password: \"\"}\n  - {username: \"\", password: y}\n  - {username: member, password: z}\n",
            gost_api::Format::Yaml,
        )
        .unwrap();
        let auth = Authenticator::for_handler(&config.services[0].handler, &config).unwrap();
        assert!(auth.check("member", "z"));
        assert!(!auth.check("", "y"));
        assert!(!auth.check("", "anything"));
        assert!(!auth.check("", ""));
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
    fn failures_are_counted_per_address_within_the_window() {
        let table = FailureTable::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for n in 1..=DEFAULT_AUTH_FAILURE_LIMIT {
            assert_eq!(table.record(a, t0), n);
        }
        assert_eq!(table.failures(a, t0), DEFAULT_AUTH_FAILURE_LIMIT);
        assert_eq!(table.failures(b, t0), 0, "other addresses are not affected");
        assert_eq!(
            table.failures(a, t0 + AUTH_FAILURE_WINDOW),
            0,
            "the count ends with the window"
        );
        assert_eq!(
            table.record(a, t0 + AUTH_FAILURE_WINDOW),
            1,
            "a new window starts from zero"
        );
    }

    fn user_pass() -> Authenticator {
        Authenticator::new(&[AuthConfig {
            username: "user".into(),
            password: "pass".into(),
            file: None,
        }])
    }

    #[test]
    fn blocked_clients_are_refused_even_with_the_right_password() {
        let auth = user_pass();
        let client: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(auth.check_from(client, "user", "pass"), Verdict::Accepted);
        for _ in 1..DEFAULT_AUTH_FAILURE_LIMIT {
            assert_eq!(auth.check_from(client, "user", "guess"), Verdict::Rejected);
        }
        assert_eq!(
            auth.check_from(client, "user", "guess"),
            Verdict::LimitReached,
            "the failure that uses up the allowance is reported once"
        );
        assert_eq!(auth.check_from(client, "user", "pass"), Verdict::Refused);
        assert_eq!(auth.check_from(client, "user", "guess"), Verdict::Refused);
        let other: IpAddr = "198.51.100.10".parse().unwrap();
        assert_eq!(auth.check_from(other, "user", "pass"), Verdict::Accepted);
    }

    #[test]
    fn the_failure_limit_is_configurable_and_zero_turns_it_off() {
        let client: IpAddr = "198.51.100.20".parse().unwrap();
        let strict = user_pass().with_failure_limit(2);
        assert_eq!(strict.check_from(client, "user", "x"), Verdict::Rejected);
        assert_eq!(
            strict.check_from(client, "user", "x"),
            Verdict::LimitReached
        );
        assert_eq!(strict.check_from(client, "user", "pass"), Verdict::Refused);

        let open = user_pass().with_failure_limit(0);
        let client: IpAddr = "198.51.100.21".parse().unwrap();
        for _ in 0..3 * DEFAULT_AUTH_FAILURE_LIMIT {
            assert_eq!(open.check_from(client, "user", "x"), Verdict::Rejected);
        }
        assert_eq!(open.check_from(client, "user", "pass"), Verdict::Accepted);
    }
}
