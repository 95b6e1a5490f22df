//! Leader election against the in-memory API (kube-fake-client), which keeps resourceVersions
//! and answers a replace with a stale one with 409 Conflict, as the API server does.
//!
//! Short timings (1 s leases, 200 ms retries) keep the suite quick; every wait is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use gost_operator::lease::{LeaderElector, Leadership, LeaseSettings};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::Api;
use kube_fake_client::ClientBuilder;
use kube_fake_client::interceptor::Funcs;
use tokio::sync::oneshot;
use tokio::time::timeout;

const NAMESPACE: &str = "gost-system";
const LEASE: &str = "gost-operator";

/// Short enough for tests, and valid: renew deadline > 1.2 x retry period, lease > deadline.
const FAST: LeaseSettings = LeaseSettings {
    lease_duration: Duration::from_secs(1),
    renew_deadline: Duration::from_millis(600),
    retry_period: Duration::from_millis(200),
};

/// How long a first leader may take on an empty API: the first try succeeds, so this is slack
/// for a loaded machine.
const BECOME_LEADER_WITHIN: Duration = Duration::from_secs(3);

struct Candidate {
    leadership: Leadership,
    stop: oneshot::Sender<()>,
}

impl Candidate {
    fn start(client: &Client, identity: &str, settings: LeaseSettings) -> Self {
        let elector = LeaderElector::new(client.clone(), NAMESPACE, LEASE, identity, settings)
            .expect("valid settings");
        assert_eq!(elector.identity(), identity);
        let (stop, stopped) = oneshot::channel();
        let leadership = elector.run(async move {
            let _ = stopped.await;
        });
        Self { leadership, stop }
    }

    fn is_leader(&self) -> bool {
        *self.leadership.leading.borrow()
    }

    async fn wait_leading(&mut self, value: bool, within: Duration) {
        timeout(
            within,
            self.leadership
                .leading
                .wait_for(|leading| *leading == value),
        )
        .await
        .unwrap_or_else(|_| panic!("leadership did not become {value} within {within:?}"))
        .expect("the elector ended early");
    }

    /// Stops the candidate and waits for its release to finish.
    async fn shut_down(self) -> Leadership {
        let Self {
            mut leadership,
            stop,
        } = self;
        stop.send(()).expect("the elector ended early");
        timeout(Duration::from_secs(3), &mut leadership.task)
            .await
            .expect("the elector did not stop within 3 s")
            .expect("the elector panicked");
        leadership
    }
}

async fn fake_api() -> Client {
    ClientBuilder::new().build().await.expect("in-memory API")
}

async fn lease(client: &Client) -> LeaseSpec {
    Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get(LEASE)
        .await
        .expect("the lease exists")
        .spec
        .expect("the lease has a spec")
}

#[tokio::test]
async fn one_candidate_creates_the_lease_and_leads() {
    let client = fake_api().await;
    let mut first = Candidate::start(&client, "operator-a", FAST);
    first.wait_leading(true, BECOME_LEADER_WITHIN).await;

    let spec = lease(&client).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("operator-a"));
    assert_eq!(spec.lease_duration_seconds, Some(1));
    assert_eq!(spec.lease_transitions, Some(0));
    let acquired = spec.acquire_time.expect("acquireTime").0;
    let renewed = spec.renew_time.expect("renewTime").0;
    assert!(renewed >= acquired);
    assert!(Timestamp::now().duration_since(acquired) < SignedDuration::from_secs(10));

    first.shut_down().await;
}

#[tokio::test]
async fn a_second_candidate_stays_follower_while_the_first_renews_then_takes_over_on_release() {
    // A long lease: the second candidate can only win quickly if the first really releases.
    let settings = LeaseSettings {
        lease_duration: Duration::from_secs(5),
        ..FAST
    };
    let client = fake_api().await;
    let mut first = Candidate::start(&client, "operator-a", settings);
    first.wait_leading(true, BECOME_LEADER_WITHIN).await;
    let first_renewal = lease(&client).await.renew_time.expect("renewTime").0;

    let mut second = Candidate::start(&client, "operator-b", settings);
    // Well past one 1 s lease of the FAST settings and many retries of the second candidate.
    let follower_for = Duration::from_millis(1_500);
    assert!(
        timeout(
            follower_for,
            second.leadership.leading.wait_for(|leading| *leading)
        )
        .await
        .is_err(),
        "the second candidate took a lease that was being renewed"
    );
    assert!(first.is_leader());
    let spec = lease(&client).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("operator-a"));
    assert_eq!(spec.lease_transitions, Some(0));
    assert!(
        spec.renew_time.expect("renewTime").0 > first_renewal,
        "the leader did not renew"
    );

    let mut first = first.shut_down().await;
    assert!(
        !*first.leading.borrow_and_update(),
        "a released leader still reports leading"
    );
    // Within a few retries, far less than the 5 s the lease would otherwise run.
    second.wait_leading(true, Duration::from_secs(2)).await;
    let spec = lease(&client).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("operator-b"));
    assert_eq!(spec.lease_duration_seconds, Some(5));
    assert_eq!(spec.lease_transitions, Some(1));

    second.shut_down().await;
    let spec = lease(&client).await;
    assert_eq!(spec.holder_identity, None, "shutdown clears the holder");
    assert_eq!(spec.lease_duration_seconds, Some(1));
    assert_eq!(
        spec.lease_transitions,
        Some(1),
        "release is not a transition"
    );
}

#[tokio::test]
async fn an_expired_lease_of_a_dead_holder_is_taken_over() {
    let hour_ago = MicroTime(Timestamp::now() - SignedDuration::from_hours(1));
    let dead = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("operator-dead".into()),
            lease_duration_seconds: Some(1),
            acquire_time: Some(hour_ago.clone()),
            renew_time: Some(hour_ago.clone()),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }),
    };
    let client = ClientBuilder::new()
        .with_object(dead)
        .build()
        .await
        .expect("in-memory API");

    let mut candidate = Candidate::start(&client, "operator-b", FAST);
    // Expiry is judged from when the candidate first saw the record (1 s), not from renewTime.
    candidate.wait_leading(true, Duration::from_secs(4)).await;
    let spec = lease(&client).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("operator-b"));
    assert_eq!(spec.lease_transitions, Some(4));
    assert!(spec.acquire_time.expect("acquireTime").0 > hour_ago.0);

    candidate.shut_down().await;
}

#[tokio::test]
async fn a_stale_resource_version_loses_to_the_candidate_that_wrote_first() {
    // A rival writes between this candidate's read and its replace: the replace carries the
    // old resourceVersion, the API answers 409, and the candidate must not claim leadership.
    let raced = Arc::new(AtomicBool::new(false));
    let race = raced.clone();
    let interceptors = Funcs::new().replace(move |ctx| {
        if !race.swap(true, Ordering::SeqCst) {
            let mut rival: Lease = ctx.client.get(ctx.namespace, ctx.name)?;
            let spec = rival.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some("operator-rival".into());
            spec.lease_duration_seconds = Some(3_600);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            ctx.client.update(ctx.namespace, &rival, ctx.params)?;
        }
        Ok(None)
    });
    let released = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            lease_transitions: Some(2),
            ..LeaseSpec::default()
        }),
    };
    let client = ClientBuilder::new()
        .with_object(released)
        .with_interceptor_funcs(interceptors)
        .build()
        .await
        .expect("in-memory API");

    let mut elector = LeaderElector::new(client.clone(), NAMESPACE, LEASE, "operator-a", FAST)
        .expect("valid settings");
    assert!(
        !elector
            .try_acquire_or_renew()
            .await
            .expect("a conflict is not an error"),
        "won with a stale resourceVersion"
    );
    assert!(
        raced.load(Ordering::SeqCst),
        "the rival's write did not happen"
    );
    let spec = lease(&client).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("operator-rival"));
    // The rival's lease is fresh, so the next round does not take it either.
    assert!(!elector.try_acquire_or_renew().await.expect("no API error"));
    assert!(
        !elector.release().await.expect("no API error"),
        "released a lease it does not hold"
    );
}

#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down_within_the_renew_deadline() {
    let failing = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let (fail, count) = (failing.clone(), failures.clone());
    let interceptors = Funcs::new().replace(move |_ctx| {
        if fail.load(Ordering::SeqCst) {
            count.fetch_add(1, Ordering::SeqCst);
            return Err(kube_fake_client::Error::Internal("etcd unavailable".into()));
        }
        Ok(None)
    });
    let client = ClientBuilder::new()
        .with_interceptor_funcs(interceptors)
        .build()
        .await
        .expect("in-memory API");

    let mut leader = Candidate::start(&client, "operator-a", FAST);
    leader.wait_leading(true, BECOME_LEADER_WITHIN).await;
    failing.store(true, Ordering::SeqCst);
    // 600 ms deadline after the last renewal (at most one 200 ms period ago), plus slack.
    leader.wait_leading(false, Duration::from_secs(2)).await;
    assert!(
        failures.load(Ordering::SeqCst) >= 2,
        "stepped down without retrying within the deadline"
    );
    // The lease still names the old leader until it expires; stepping down is about no longer
    // acting, which is what the watch reports.
    assert_eq!(
        lease(&client).await.holder_identity.as_deref(),
        Some("operator-a")
    );

    // Once the API recovers the candidate campaigns again and wins back its own lease.
    failing.store(false, Ordering::SeqCst);
    leader.wait_leading(true, Duration::from_secs(3)).await;
    leader.shut_down().await;
}

#[tokio::test]
async fn at_most_one_of_several_candidates_leads_at_any_time() {
    let client = fake_api().await;
    let candidates: Vec<Candidate> = ["operator-a", "operator-b", "operator-c"]
        .into_iter()
        .map(|identity| Candidate::start(&client, identity, FAST))
        .collect();
    let mut leaders_seen = 0;
    // 2 s of sampling every 20 ms: two leases' worth of renewals and retries.
    for _ in 0..100 {
        let leaders = candidates.iter().filter(|c| c.is_leader()).count();
        assert!(leaders <= 1, "{leaders} candidates lead at once");
        leaders_seen = leaders_seen.max(leaders);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(leaders_seen, 1, "nobody became leader");
    let holder = lease(&client).await.holder_identity.expect("a holder");
    for candidate in candidates {
        candidate.shut_down().await;
    }
    assert!(holder.starts_with("operator-"));
}

#[tokio::test]
async fn bad_arguments_are_refused_with_the_reason() {
    let client = fake_api().await;
    let too_short = LeaseSettings {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(200),
    };
    let error = LeaderElector::new(client.clone(), NAMESPACE, LEASE, "a", too_short)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("must be greater than renew_deadline"),
        "{error}"
    );
    let error = LeaderElector::new(client, NAMESPACE, LEASE, " ", FAST)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("non-empty identity"), "{error}");
}
