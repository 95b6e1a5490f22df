//! Checking client credentials.

use std::collections::HashMap;

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
}
