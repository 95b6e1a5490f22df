//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one reconciles at a time while the others stand by.
//!
//! kube-runtime 4.2 ships no leader election, and the crates that do either target kube 5 or
//! take the lease with a patch that carries no resourceVersion (two candidates can both win), so
//! this follows client-go's `leaderelection` package directly against the Lease API:
//!
//! - a candidate takes the lease when it is absent (create), released (no holder) or expired,
//!   with a replace that carries the resourceVersion it read: a 409 Conflict means another
//!   candidate wrote first and won;
//! - expiry is judged by when this candidate last *saw the record change* on its own monotonic
//!   clock, not by `renewTime`, so the nodes' wall clocks need not agree;
//! - the leader renews every `retry_period` and steps down (reports `false`) when no renewal
//!   has succeeded for `renew_deadline`, which is shorter than `lease_duration` so it stops
//!   before anyone else may take over;
//! - on shutdown the leader releases the lease (no holder, a one-second duration) so a
//!   standby takes over at its next retry rather than after a full `lease_duration`.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a lease stays valid after its last renewal: client-go's default. Standbys wait this
/// long after they last saw the record change before taking over, so it bounds the failover
/// time after a leader dies without releasing.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// How long the leader keeps trying to renew before it gives up and steps down: client-go's
/// default. The 5 s gap to `DEFAULT_LEASE_DURATION` is the margin in which the old leader has
/// already stopped while nobody else may yet take over.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// How often candidates try to acquire and the leader renews: client-go's default; several
/// tries fit in one renew deadline, so one lost request does not cost leadership.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Candidates wait up to this fraction of `retry_period` more between tries (client-go's
/// `JitterFactor`), so replicas started together do not hit the API in lockstep.
pub const RETRY_JITTER_FACTOR: f64 = 1.2;

/// The lease duration written on release (client-go writes the same): the smallest whole number
/// of seconds, so a standby that does not notice the missing holder still waits only a second.
const RELEASED_LEASE_DURATION_SECONDS: i32 = 1;

/// The length of the random suffix that keeps two processes on one host (or two pods with the
/// same hostname outside Kubernetes) from sharing an identity.
const IDENTITY_SUFFIX_LEN: usize = 8;

/// The environment variable a Deployment sets from the downward API (`metadata.name`).
pub const POD_NAME_ENV: &str = "POD_NAME";

/// Timing of the election; see the `DEFAULT_*` constants for what each one bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Written to `leaseDurationSeconds`, so it must be a whole number of seconds.
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }
}

impl LeaseSettings {
    /// The checks client-go makes, plus whole seconds for the lease duration (the API field is
    /// in seconds and rounding would silently change the failover time).
    pub fn validate(&self) -> Result<(), LeaseError> {
        let invalid = |reason: String| Err(LeaseError::InvalidSettings { reason });
        if self.lease_duration.is_zero()
            || self.lease_duration.subsec_nanos() != 0
            || i32::try_from(self.lease_duration.as_secs()).is_err()
        {
            return invalid(format!(
                "lease_duration must be a whole number of seconds, at least 1 (got {:?})",
                self.lease_duration
            ));
        }
        if self.retry_period.is_zero() {
            return invalid("retry_period must be greater than zero".to_string());
        }
        if self.lease_duration <= self.renew_deadline {
            return invalid(format!(
                "lease_duration ({:?}) must be greater than renew_deadline ({:?}), or a standby \
                 may take over while the leader still acts",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.renew_deadline.as_secs_f64()
            <= self.retry_period.as_secs_f64() * RETRY_JITTER_FACTOR
        {
            return invalid(format!(
                "renew_deadline ({:?}) must be greater than retry_period ({:?}) times \
                 {RETRY_JITTER_FACTOR}, or the leader gets no second try before it steps down",
                self.renew_deadline, self.retry_period
            ));
        }
        Ok(())
    }

    fn lease_duration_seconds(&self) -> i32 {
        // validate() has checked that it fits.
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("invalid leader election settings: {reason}")]
    InvalidSettings { reason: String },
    #[error("leader election needs a non-empty {what}")]
    Empty { what: &'static str },
    #[error("Lease {namespace}/{name}: {action} failed: {source}")]
    Api {
        namespace: String,
        name: String,
        action: &'static str,
        // Boxed: kube::Error is large and would make every Result of this module large.
        #[source]
        source: Box<kube::Error>,
    },
}

/// The identity this process campaigns under: the pod name from `POD_NAME` when set (stable in
/// events and `kubectl get lease`), else the hostname with a random suffix.
pub fn default_identity() -> String {
    identity_from(std::env::var(POD_NAME_ENV).ok(), || {
        hostname::get()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

fn identity_from(pod_name: Option<String>, hostname: impl FnOnce() -> String) -> String {
    if let Some(pod_name) = pod_name.filter(|name| !name.trim().is_empty()) {
        return pod_name.trim().to_string();
    }
    let host = hostname();
    let host = if host.is_empty() {
        "gost-operator".to_string()
    } else {
        host
    };
    let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(IDENTITY_SUFFIX_LEN)
        .collect::<String>()
        .to_lowercase();
    format!("{host}-{suffix}")
}

/// One candidate for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    lease_name: String,
    identity: String,
    settings: LeaseSettings,
    /// The resourceVersion of the last record seen and when it was first seen, on the local
    /// monotonic clock: a holder is expired once its record has not changed for its duration.
    observed: Option<(String, Instant)>,
}

/// What `run` hands back: the leadership signal and the task that drives it.
pub struct Leadership {
    /// `true` while this replica is the leader. Goes `false` on step-down and before release;
    /// the sender is dropped when the task ends.
    pub leading: watch::Receiver<bool>,
    /// Ends after shutdown, once the lease is released (or the release has timed out).
    pub task: JoinHandle<()>,
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        settings: LeaseSettings,
    ) -> Result<Self, LeaseError> {
        settings.validate()?;
        for (what, value) in [
            ("namespace", namespace),
            ("lease name", lease_name),
            ("identity", identity),
        ] {
            if value.trim().is_empty() {
                return Err(LeaseError::Empty { what });
            }
        }
        Ok(Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            lease_name: lease_name.to_string(),
            identity: identity.to_string(),
            settings,
            observed: None,
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Campaigns on a spawned task until `shutdown` completes, then releases the lease if this
    /// replica may hold it. Must be called inside a tokio runtime.
    pub fn run<F>(self, shutdown: F) -> Leadership
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (sender, leading) = watch::channel(false);
        let task = tokio::spawn(self.campaign(shutdown, sender));
        Leadership { leading, task }
    }

    async fn campaign<F>(mut self, shutdown: F, leading: watch::Sender<bool>)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::pin!(shutdown);
        // Whether a write of ours may be the current record: only then is there anything to
        // release on shutdown.
        let mut may_hold = false;
        'campaign: loop {
            // Standby: try, then wait a jittered retry period.
            loop {
                let attempt = tokio::select! {
                    biased;
                    () = &mut shutdown => break 'campaign,
                    attempt = self.try_acquire_or_renew() => attempt,
                };
                match attempt {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, "leader election: acquiring failed"),
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break 'campaign,
                    () = tokio::time::sleep(self.jittered_retry_period()) => {}
                }
            }
            may_hold = true;
            tracing::info!(
                identity = %self.identity,
                lease = %self.lease_name,
                "leader election: became leader"
            );
            set(&leading, true);

            // Leader: renew every retry period; step down once nothing has succeeded for the
            // renew deadline. `renewed_at` is taken before the request, so the deadline errs
            // on the early side.
            let mut renewed_at = Instant::now();
            loop {
                let deadline = renewed_at + self.settings.renew_deadline;
                // After a failure, the last try still lands before the deadline.
                let pause = self
                    .settings
                    .retry_period
                    .min(deadline.saturating_duration_since(Instant::now()));
                tokio::select! {
                    biased;
                    () = &mut shutdown => break 'campaign,
                    () = tokio::time::sleep(pause) => {}
                }
                let started = Instant::now();
                let attempt = tokio::select! {
                    biased;
                    () = &mut shutdown => break 'campaign,
                    attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()) => attempt,
                };
                match attempt {
                    Ok(Ok(true)) => {
                        renewed_at = started;
                        continue;
                    }
                    Ok(Ok(false)) => {
                        tracing::warn!(
                            identity = %self.identity,
                            "leader election: the lease was taken over; stepping down"
                        );
                        may_hold = false;
                        break;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "leader election: renewing failed");
                        if Instant::now() < deadline {
                            continue;
                        }
                    }
                    Err(_elapsed) => {}
                }
                tracing::warn!(
                    identity = %self.identity,
                    renew_deadline = ?self.settings.renew_deadline,
                    "leader election: no renewal within the renew deadline; stepping down"
                );
                break;
            }
            set(&leading, false);
        }

        // Report the end of leadership before giving the lease away, so that this replica's
        // work has been told to stop by the time another one may start.
        set(&leading, false);
        if may_hold {
            match tokio::time::timeout(self.settings.renew_deadline, self.release()).await {
                Ok(Ok(true)) => {
                    tracing::info!(identity = %self.identity, "leader election: released the lease")
                }
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "leader election: releasing failed; the lease will expire")
                }
                Err(_elapsed) => {
                    tracing::warn!("leader election: releasing timed out; the lease will expire")
                }
            }
        }
    }

    /// One round of the protocol: `Ok(true)` when this candidate holds the lease afterwards
    /// (created, taken over or renewed), `Ok(false)` when another holder's lease is still valid
    /// or another candidate's write came first.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let now = MicroTime(Timestamp::now());
        let Some(current) = self
            .api
            .get_opt(&self.lease_name)
            .await
            .map_err(|source| self.api_error("get", source))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease_name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.settings.lease_duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(true)
                }
                Err(error) if is_conflict(&error) => Ok(false),
                Err(source) => Err(self.api_error("create", source)),
            };
        };

        self.observe(&current);
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec
            .holder_identity
            .as_deref()
            .filter(|holder| !holder.is_empty());
        let ours = holder == Some(self.identity.as_str());
        if holder.is_some() && !ours && !self.observed_record_expired(&spec) {
            return Ok(false);
        }

        let mut next = current.clone();
        let transitions = spec.lease_transitions.unwrap_or(0);
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.settings.lease_duration_seconds()),
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        // `next` keeps the resourceVersion that was read: the replace is refused with a 409 if
        // anyone wrote in between.
        match self
            .api
            .replace(&self.lease_name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(true)
            }
            Err(error) if is_conflict(&error) => Ok(false),
            Err(source) => Err(self.api_error("replace", source)),
        }
    }

    /// Gives the lease up if this candidate holds it: no holder and a one-second duration, so
    /// a standby takes over at its next try. `Ok(false)` when someone else holds it (nothing
    /// to release).
    pub async fn release(&mut self) -> Result<bool, LeaseError> {
        let Some(current) = self
            .api
            .get_opt(&self.lease_name)
            .await
            .map_err(|source| self.api_error("get", source))?
        else {
            return Ok(false);
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let now = MicroTime(Timestamp::now());
        let mut released = current;
        released.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(RELEASED_LEASE_DURATION_SECONDS),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..spec
        });
        match self
            .api
            .replace(&self.lease_name, &PostParams::default(), &released)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(true)
            }
            // Someone wrote since the read: it is no longer ours to release.
            Err(error) if is_conflict(&error) => Ok(false),
            Err(source) => Err(self.api_error("release", source)),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != version)
        {
            self.observed = Some((version, Instant::now()));
        }
    }

    /// The holder's own duration counts (not ours): replicas may run with different settings
    /// during a rollout.
    fn observed_record_expired(&self, spec: &LeaseSpec) -> bool {
        let seconds = spec
            .lease_duration_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .unwrap_or(self.settings.lease_duration.as_secs());
        self.observed
            .as_ref()
            .is_none_or(|(_, seen_at)| seen_at.elapsed() >= Duration::from_secs(seconds))
    }

    fn jittered_retry_period(&self) -> Duration {
        self.settings
            .retry_period
            .mul_f64(1.0 + fastrand::f64() * RETRY_JITTER_FACTOR)
    }

    fn api_error(&self, action: &'static str, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            namespace: self.namespace.clone(),
            name: self.lease_name.clone(),
            action,
            source: Box::new(source),
        }
    }
}

fn set(leading: &watch::Sender<bool>, value: bool) {
    leading.send_if_modified(|current| std::mem::replace(current, value) != value);
}

/// 409: a create that found the lease already made, or a replace with a stale resourceVersion;
/// either way another candidate wrote first.
fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(lease: u64, renew_ms: u64, retry_ms: u64) -> LeaseSettings {
        LeaseSettings {
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_millis(renew_ms),
            retry_period: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn defaults_are_client_go_s_and_valid() {
        let defaults = LeaseSettings::default();
        assert_eq!(defaults, settings(15, 10_000, 2_000));
        defaults.validate().unwrap();
    }

    #[test]
    fn settings_that_could_split_the_brain_are_refused() {
        let cases = [
            (settings(1, 1_000, 200), "greater than renew_deadline"),
            (settings(1, 200, 200), "times 1.2"),
            (settings(0, 0, 0), "at least 1"),
            (
                settings(5, 1_000, 0),
                "retry_period must be greater than zero",
            ),
            (
                LeaseSettings {
                    lease_duration: Duration::from_millis(1_500),
                    ..settings(1, 600, 200)
                },
                "whole number of seconds",
            ),
        ];
        for (settings, expected) in cases {
            let error = settings.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{settings:?}: {error}");
        }
        settings(1, 600, 200).validate().unwrap();
    }

    #[test]
    fn identity_prefers_the_pod_name() {
        assert_eq!(
            identity_from(Some("gost-operator-7d9c-x2".into()), || unreachable!()),
            "gost-operator-7d9c-x2"
        );
    }

    #[test]
    fn identity_falls_back_to_hostname_with_a_random_suffix() {
        let first = identity_from(Some("  ".into()), || "node-a".into());
        let second = identity_from(None, || "node-a".into());
        for identity in [&first, &second] {
            let suffix = identity.strip_prefix("node-a-").expect(identity);
            assert_eq!(suffix.len(), IDENTITY_SUFFIX_LEN, "{identity}");
            assert!(
                suffix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            );
        }
        assert_ne!(
            first, second,
            "two processes on one host must not share an identity"
        );
        assert!(identity_from(None, String::new).starts_with("gost-operator-"));
    }
}
