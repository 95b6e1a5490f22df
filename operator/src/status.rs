//! Status and events: what a reconcile found, as `status` of GostServices and GostChains and as
//! Kubernetes events. Pure functions, so that "no change, no write" is decided here and tested.

use std::collections::{BTreeMap, BTreeSet};

use gost_api::v1alpha1::{
    CONDITION_INJECTED, CONDITION_READY, CONDITION_RENDERED, GostChain, GostChainStatus,
    GostService, GostServiceStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::render::{Problem, Reason};

/// `Rendered=True` reason.
pub const REASON_RENDERED: &str = "Rendered";
/// `Ready=True` reason of a GostService.
pub const REASON_READY: &str = "Ready";
/// `Ready=False`: some services were left out (the `Rendered` condition says which and why).
pub const REASON_RENDER_PROBLEMS: &str = "RenderProblems";
/// `Ready=False`: the gateway Deployment has fewer available replicas than asked for.
pub const REASON_GATEWAY_UNAVAILABLE: &str = "GatewayUnavailable";
/// `Injected=True` reason.
pub const REASON_INJECTED: &str = "Injected";
/// `Injected` is `Unknown`: the pods have not been listed (an API error, or the namespaces'
/// labels not read yet).
pub const REASON_PODS_NOT_LISTED: &str = "PodsNotListed";
/// `Injected=False` and `Ready=False`: pods it selects opted in to injection but run without
/// the sidecar; also the reason of the Warning event when more do.
pub const REASON_PODS_WITHOUT_SIDECAR: &str = "PodsWithoutSidecar";
/// How many of the pods without the sidecar a message names (the count says how many more):
/// enough to find the workload, few enough to read.
pub const NAMED_PODS: usize = 5;
/// `Ready=True` reason of a GostChain.
pub const REASON_VALID: &str = "Valid";
/// The API refuses a condition message over 32768 bytes.
pub const MAX_CONDITION_MESSAGE_LEN: usize = 32 * 1024;
/// events.k8s.io/v1 refuses an event whose note is over 1024 bytes.
pub const MAX_EVENT_NOTE_LEN: usize = 1024;

/// `text` when it fits in `max` bytes, else cut at a character boundary so that it fits with
/// `marker` appended.
pub fn truncate(mut text: String, max: usize, marker: &str) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub(marker.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(marker);
    text
}

/// `head` and then as many of `items` (joined by `separator`) as fit in `max` bytes together
/// with a closing `… and N more`; an item that does not fit whole is not listed.
pub fn list_within(head: &str, items: &[String], separator: &str, max: usize) -> String {
    let mut out = head.to_string();
    for (i, item) in items.iter().enumerate() {
        let left = items.len() - i - 1;
        let sep = if i == 0 { "" } else { separator };
        // Room for this item and, when items are still left after it, the closing count.
        let tail = if left == 0 {
            0
        } else {
            format!("{separator}… and {left} more").len()
        };
        if out.len() + sep.len() + item.len() + tail > max {
            let more = format!("{sep}… and {} more", items.len() - i);
            return truncate(out, max.saturating_sub(more.len()), "") + &more;
        }
        out.push_str(sep);
        out.push_str(item);
    }
    out
}

/// The state of a gateway Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayState {
    /// The Deployment's name.
    pub name: String,
    /// Replicas asked for.
    pub desired: i32,
    /// Replicas available (0 when the Deployment does not exist yet).
    pub available: i32,
}

/// What a reconcile observed of one GostService.
#[derive(Clone, Debug, Default)]
pub struct ServiceObservation {
    /// Problems of the GostService, deduplicated, in the order found.
    pub problems: Vec<Problem>,
    /// Workloads (`Kind/name` of the pods' owner) with a pod whose config its selector
    /// matched.
    pub matched: BTreeSet<String>,
    /// Its gateway, when it has one.
    pub gateway: Option<GatewayState>,
    /// Services that did not render but are kept as last rendered, by service name: where
    /// (workloads, the gateway) they keep running.
    pub kept: BTreeMap<String, BTreeSet<String>>,
    /// What rendered but will likely not work ([`crate::render::Rendered::warnings`]),
    /// deduplicated, in the order found. They leave `Rendered` and `Ready` as they are and are
    /// listed in the `Rendered` message, after the problems.
    pub warnings: Vec<Problem>,
    /// The pods it selects that opt in to injection but run without the sidecar, by name;
    /// `None` when they could not be listed (the status then keeps what it said).
    pub without_sidecar: Option<BTreeSet<String>>,
}

impl ServiceObservation {
    /// The problems, then the warnings: what the `Rendered` message lists and what events
    /// are recorded for.
    pub fn reported(&self) -> Vec<Problem> {
        self.problems
            .iter()
            .chain(&self.warnings)
            .cloned()
            .collect()
    }
}

/// The problems as one message: `Reason: message` each, separated by `; `, as many as fit in
/// a condition message.
pub fn problems_message(problems: &[Problem]) -> String {
    let one = |p: &Problem, max: usize| {
        truncate(
            format!("{}: {}", p.reason.as_str(), p.message),
            max,
            CUT_MARKER,
        )
    };
    if let [only] = problems {
        return one(only, MAX_CONDITION_MESSAGE_LEN);
    }
    // Each one cut to half the limit, so that at least the first is always listed.
    let items: Vec<String> = problems
        .iter()
        .map(|p| one(p, MAX_CONDITION_MESSAGE_LEN / 2))
        .collect();
    list_within("", &items, "; ", MAX_CONDITION_MESSAGE_LEN)
}

/// Ends a message cut to fit the API's limit.
const CUT_MARKER: &str = "… (cut)";

/// `new`, with the `lastTransitionTime` of the condition of the same type in `old` when its
/// status did not flip.
pub fn carry_transition(old: &[Condition], mut new: Condition) -> Condition {
    if let Some(prev) = old.iter().find(|c| c.type_ == new.type_)
        && prev.status == new.status
    {
        new.last_transition_time = prev.last_transition_time.clone();
    }
    new
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: truncate(message, MAX_CONDITION_MESSAGE_LEN, CUT_MARKER),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The status of `gs` given what was observed; `now` is used only for conditions that flip.
pub fn gost_service_status(
    gs: &GostService,
    obs: &ServiceObservation,
    now: &Time,
) -> GostServiceStatus {
    let generation = gs.metadata.generation;
    let old = gs
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let services = gs.spec.services.len();
    let rendered = match obs.problems.first() {
        None => {
            let mut message = format!(
                "all {services} service(s) rendered; {} workload(s) matched",
                obs.matched.len()
            );
            if !obs.warnings.is_empty() {
                message.push_str(&format!(
                    "; {} warning(s): {}",
                    obs.warnings.len(),
                    problems_message(&obs.warnings)
                ));
            }
            condition(
                CONDITION_RENDERED,
                true,
                REASON_RENDERED,
                message,
                generation,
                now,
            )
        }
        Some(first) => condition(
            CONDITION_RENDERED,
            false,
            first.reason.as_str(),
            problems_message(&obs.reported()),
            generation,
            now,
        ),
    };
    let (injected, without_sidecar) = match &obs.without_sidecar {
        Some(pods) => (
            injected_condition(gs, pods, generation, now),
            Some(i32::try_from(pods.len()).unwrap_or(i32::MAX)),
        ),
        // Not listed this time: what the status said stands; never listed, it is not known.
        None => (
            old.iter()
                .find(|c| c.type_ == CONDITION_INJECTED)
                .cloned()
                .unwrap_or_else(|| Condition {
                    status: "Unknown".to_string(),
                    reason: REASON_PODS_NOT_LISTED.to_string(),
                    ..condition(
                        CONDITION_INJECTED,
                        false,
                        REASON_PODS_NOT_LISTED,
                        "the pods it selects have not been listed yet".to_string(),
                        generation,
                        now,
                    )
                }),
            gs.status.as_ref().and_then(|s| s.pods_without_sidecar),
        ),
    };
    let ready = if !obs.problems.is_empty() {
        let n = obs.problems.len();
        let message = if obs
            .problems
            .iter()
            .all(|p| p.reason == Reason::ConfigNotWritten)
        {
            // Everything rendered: it is the write that failed.
            "the config of a workload it serves is not written, so that workload's new pods start without the sidecar; see the Rendered condition".to_string()
        } else if obs.kept.is_empty() {
            format!("{n} problem(s) left services or the gateway out; see the Rendered condition")
        } else {
            let kept: Vec<String> = obs
                .kept
                .iter()
                .map(|(svc, at)| {
                    let at: Vec<&str> = at.iter().map(String::as_str).collect();
                    format!("{svc:?} (in {})", at.join(", "))
                })
                .collect();
            list_within(
                &format!(
                    "{n} problem(s) left services or the gateway out of new configs; see the Rendered condition. Where they ran before, these services keep running as last rendered until fixed or removed: "
                ),
                &kept,
                ", ",
                MAX_CONDITION_MESSAGE_LEN,
            )
        };
        condition(
            CONDITION_READY,
            false,
            REASON_RENDER_PROBLEMS,
            message,
            generation,
            now,
        )
    } else if injected.status == "False" {
        condition(
            CONDITION_READY,
            false,
            REASON_PODS_WITHOUT_SIDECAR,
            format!(
                "{} pod(s) it selects run without the gost sidecar, so their traffic bypasses these services; see the Injected condition",
                without_sidecar.unwrap_or_default()
            ),
            generation,
            now,
        )
    } else if let Some(gw) = obs.gateway.as_ref().filter(|g| g.available < g.desired) {
        condition(
            CONDITION_READY,
            false,
            REASON_GATEWAY_UNAVAILABLE,
            format!(
                "gateway Deployment {:?} has {} of {} replicas available",
                gw.name, gw.available, gw.desired
            ),
            generation,
            now,
        )
    } else {
        let gateway = match &obs.gateway {
            Some(gw) => format!("; gateway {:?} available", gw.name),
            None => String::new(),
        };
        condition(
            CONDITION_READY,
            true,
            REASON_READY,
            format!("rendered for {} workload(s){gateway}", obs.matched.len()),
            generation,
            now,
        )
    };
    GostServiceStatus {
        observed_generation: generation,
        services: i32::try_from(services).ok(),
        matched_workloads: i32::try_from(obs.matched.len()).ok(),
        pods_without_sidecar: without_sidecar,
        conditions: vec![
            carry_transition(old, rendered),
            carry_transition(old, ready),
            carry_transition(old, injected),
        ],
    }
}

/// `pods` (sorted, as a set is) as `a, b, c, … and N more`, at most [`NAMED_PODS`] named.
fn some_pods(pods: &BTreeSet<String>) -> String {
    let mut out: Vec<&str> = pods.iter().take(NAMED_PODS).map(String::as_str).collect();
    let more = pods.len().saturating_sub(NAMED_PODS);
    let more = format!("… and {more} more");
    if pods.len() > NAMED_PODS {
        out.push(&more);
    }
    out.join(", ")
}

/// The `Injected` condition of `gs`, whose selected and opted-in `pods` run without the
/// sidecar.
fn injected_condition(
    gs: &GostService,
    pods: &BTreeSet<String>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    if pods.is_empty() {
        let message = if gs.spec.selector.is_some() {
            "every pod it selects that opts in to injection runs the gost sidecar"
        } else {
            "it has no selector: it runs in its gateway only"
        };
        return condition(
            CONDITION_INJECTED,
            true,
            REASON_INJECTED,
            message.to_string(),
            generation,
            now,
        );
    }
    condition(
        CONDITION_INJECTED,
        false,
        REASON_PODS_WITHOUT_SIDECAR,
        format!(
            "{} pod(s) it selects opted in to injection but run without the gost sidecar, so their traffic bypasses these services: {}. The webhook did not inject them when they were created: it was unreachable or too slow (its failurePolicy is Ignore), it could not write their config Secret (the admission warning and the operator's log say why, e.g. a ResourceQuota on Secrets), or the pods were created before their namespace or pod opted in, or before the operator ran. Once the cause is fixed, re-create them: `kubectl rollout restart` their Deployment, StatefulSet or DaemonSet, or delete the pods",
            pods.len(),
            some_pods(pods)
        ),
        generation,
        now,
    )
}

/// The status of `gc`: `Ready` unless rendering it found `problem`; its `warnings` (it
/// renders, but will likely not work) are listed in the `Ready` message.
pub fn gost_chain_status(
    gc: &GostChain,
    problem: Option<&Problem>,
    warnings: &[Problem],
    now: &Time,
) -> GostChainStatus {
    let generation = gc.metadata.generation;
    let old = gc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let ready = match problem {
        None => {
            let mut message = "every referenced Secret and key is present".to_string();
            if !warnings.is_empty() {
                message.push_str(&format!(
                    "; {} warning(s): {}",
                    warnings.len(),
                    problems_message(warnings)
                ));
            }
            condition(
                CONDITION_READY,
                true,
                REASON_VALID,
                message,
                generation,
                now,
            )
        }
        Some(p) => condition(
            CONDITION_READY,
            false,
            p.reason.as_str(),
            p.message.clone(),
            generation,
            now,
        ),
    };
    GostChainStatus {
        observed_generation: generation,
        hops: i32::try_from(gc.spec.hops.len()).ok(),
        conditions: vec![carry_transition(old, ready)],
    }
}

/// An event to record on a GostService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    /// Warning (a problem) or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// The note.
    pub note: String,
}

/// What the previous reconcile saw of a GostService, to record events on changes only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The problem messages.
    pub problems: BTreeSet<String>,
    /// The matched workloads.
    pub matched: BTreeSet<String>,
    /// The selected pods that run without the sidecar; `None` when not known.
    pub without_sidecar: Option<BTreeSet<String>>,
}

/// The events for a GostService going from `before` to `now`: a Warning per problem (or
/// warning: `problems` holds both) that was not there before, a Normal `Rendered` when the matched workloads changed. When the operator
/// has no memory of the GostService (it just started), `before` is reconstructed from its
/// status so that a restart does not repeat every event.
pub fn events(
    before: Option<&Seen>,
    old_status: Option<&GostServiceStatus>,
    now: &Seen,
    problems: &[Problem],
) -> Vec<EventSpec> {
    let mut out = Vec::new();
    let old_message = old_status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_RENDERED))
        .map(|c| c.message.as_str())
        .unwrap_or_default();
    let mut warned = BTreeSet::new();
    for p in problems {
        let known = match before {
            Some(seen) => seen.problems.contains(&p.message),
            None => old_message.contains(&p.message),
        };
        if !known && warned.insert(p.message.clone()) {
            out.push(EventSpec {
                warning: true,
                reason: p.reason.as_str().to_string(),
                note: truncate(p.message.clone(), MAX_EVENT_NOTE_LEN, CUT_MARKER),
            });
        }
    }
    let matched_changed = match before {
        Some(seen) => seen.matched != now.matched,
        None => {
            old_status.and_then(|s| s.matched_workloads).unwrap_or(0)
                != i32::try_from(now.matched.len()).unwrap_or(i32::MAX)
        }
    };
    if let Some(pods) = &now.without_sidecar {
        out.extend(injection_event(before, old_status, pods));
    }
    if matched_changed {
        out.push(EventSpec {
            warning: false,
            reason: REASON_RENDERED.to_string(),
            note: list_within(
                &format!("rendered for {} workload(s): ", now.matched.len()),
                &now.matched.iter().cloned().collect::<Vec<_>>(),
                ", ",
                MAX_EVENT_NOTE_LEN,
            ),
        });
    }
    out
}

/// A Warning when pods run without the sidecar that did not before, a Normal event when none
/// does any more. Without a memory of those pods (the operator just started, or could not list
/// them so far), only the count in the status is known: a higher count warns, and a zero after
/// a count says it is over.
fn injection_event(
    before: Option<&Seen>,
    old_status: Option<&GostServiceStatus>,
    pods: &BTreeSet<String>,
) -> Option<EventSpec> {
    let (new, was_any) = match before.and_then(|s| s.without_sidecar.as_ref()) {
        Some(seen) => (pods.difference(seen).count(), !seen.is_empty()),
        None => {
            let old = old_status
                .and_then(|s| s.pods_without_sidecar)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0);
            (pods.len().saturating_sub(old), old > 0)
        }
    };
    if new > 0 {
        let note = format!(
            "{new} more pod(s) it selects run without the gost sidecar ({} in all: {}); once the cause is fixed, re-create them (see the Injected condition)",
            pods.len(),
            some_pods(pods)
        );
        return Some(EventSpec {
            warning: true,
            reason: REASON_PODS_WITHOUT_SIDECAR.to_string(),
            note: truncate(note, MAX_EVENT_NOTE_LEN, CUT_MARKER),
        });
    }
    (pods.is_empty() && was_any).then(|| EventSpec {
        warning: false,
        reason: REASON_INJECTED.to_string(),
        note: "every pod it selects that opts in to injection runs the gost sidecar again"
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Reason;
    use k8s_openapi::jiff::Timestamp;

    fn time(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn problem(reason: Reason, message: &str) -> Problem {
        Problem {
            gost_service: "web".into(),
            service: Some("proxy".into()),
            gost_chain: None,
            reason,
            message: message.into(),
        }
    }

    fn gs() -> GostService {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gost.rs/v1alpha1", "kind": "GostService",
            "metadata": {"name": "web", "generation": 3},
            "spec": {"selector": {}, "services": [{"name": "proxy", "addr": ":8000"}]}
        }))
        .unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut gs = gs();
        let ok = ServiceObservation::default();
        let first = gost_service_status(&gs, &ok, &time(100));
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!(first.conditions[0].status, "True");
        gs.status = Some(first.clone());
        assert_eq!(
            gost_service_status(&gs, &ok, &time(200)),
            first,
            "no change"
        );

        let bad = ServiceObservation {
            problems: vec![
                problem(Reason::ChainNotFound, "no GostChain named \"x\""),
                problem(Reason::SecretNotFound, "no Secret"),
            ],
            ..ServiceObservation::default()
        };
        let second = gost_service_status(&gs, &bad, &time(300));
        let rendered = &second.conditions[0];
        assert_eq!(
            (rendered.status.as_str(), rendered.reason.as_str()),
            ("False", "ChainNotFound")
        );
        assert_eq!(
            rendered.message,
            "ChainNotFound: no GostChain named \"x\"; SecretNotFound: no Secret"
        );
        assert_eq!(rendered.last_transition_time, time(300));
        assert_eq!(second.conditions[1].reason, REASON_RENDER_PROBLEMS);
        assert_eq!(
            second.conditions[1].message,
            "2 problem(s) left services or the gateway out; see the Rendered condition"
        );

        // Services kept as last rendered are named with where they keep running.
        let kept = ServiceObservation {
            kept: [(
                "proxy".to_string(),
                [
                    "ReplicaSet/web-1".to_string(),
                    "gateway Deployment/gw".to_string(),
                ]
                .into(),
            )]
            .into(),
            ..bad
        };
        let third = gost_service_status(&gs, &kept, &time(400));
        assert_eq!(third.conditions[1].status, "False");
        assert_eq!(
            third.conditions[1].message,
            "2 problem(s) left services or the gateway out of new configs; see the Rendered condition. Where they ran before, these services keep running as last rendered until fixed or removed: \"proxy\" (in ReplicaSet/web-1, gateway Deployment/gw)"
        );
    }

    #[test]
    fn warnings_are_listed_and_leave_the_conditions_as_they_are() {
        let gs = gs();
        let warned = ServiceObservation {
            warnings: vec![problem(Reason::TrailingNewline, "key \"password\" ends")],
            matched: ["ReplicaSet/web-1".to_string()].into(),
            ..ServiceObservation::default()
        };
        let s = gost_service_status(&gs, &warned, &time(1));
        let (rendered, ready) = (&s.conditions[0], &s.conditions[1]);
        assert_eq!(
            (rendered.status.as_str(), rendered.reason.as_str()),
            ("True", REASON_RENDERED)
        );
        assert_eq!(
            rendered.message,
            "all 1 service(s) rendered; 1 workload(s) matched; 1 warning(s): TrailingNewline: key \"password\" ends"
        );
        assert_eq!(ready.status, "True");

        // After the problems, when there are some.
        let both = ServiceObservation {
            problems: vec![problem(Reason::ChainNotFound, "no chain")],
            ..warned.clone()
        };
        let s = gost_service_status(&gs, &both, &time(1));
        assert_eq!(
            s.conditions[0].message,
            "ChainNotFound: no chain; TrailingNewline: key \"password\" ends"
        );
        assert_eq!(s.conditions[0].reason, "ChainNotFound");

        // A Warning event, once; after a restart, known from the status.
        let now = Seen {
            problems: ["key \"password\" ends".to_string()].into(),
            matched: warned.matched.clone(),
            without_sidecar: None,
        };
        let ev = events(
            Some(&Seen {
                matched: warned.matched.clone(),
                ..Seen::default()
            }),
            None,
            &now,
            &warned.reported(),
        );
        assert_eq!(ev.len(), 1);
        assert!(ev[0].warning && ev[0].reason == "TrailingNewline");
        assert!(events(Some(&now), None, &now, &warned.reported()).is_empty());
        let mut gs = gs;
        gs.status = Some(gost_service_status(&gs, &warned, &time(1)));
        assert!(events(None, gs.status.as_ref(), &now, &warned.reported()).is_empty());
    }

    #[test]
    fn pods_without_the_sidecar_are_counted_named_and_not_ready() {
        let mut gs = gs();
        let pods: BTreeSet<String> = (1..=7).map(|i| format!("web-{i}")).collect();
        let obs = ServiceObservation {
            without_sidecar: Some(pods.clone()),
            gateway: Some(GatewayState {
                name: "gost-gw-web".into(),
                desired: 2,
                available: 1,
            }),
            ..ServiceObservation::default()
        };
        let s = gost_service_status(&gs, &obs, &time(1));
        assert_eq!(s.pods_without_sidecar, Some(7));
        let injected = s
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_INJECTED)
            .unwrap();
        assert_eq!(
            (injected.status.as_str(), injected.reason.as_str()),
            ("False", REASON_PODS_WITHOUT_SIDECAR)
        );
        assert!(
            injected.message.contains(
                "run without the gost sidecar, so their traffic bypasses these services: web-1, web-2, web-3, web-4, web-5, … and 2 more."
            ),
            "{}",
            injected.message
        );
        // Before the gateway: it needs the user, the gateway usually only time.
        assert_eq!(s.conditions[1].reason, REASON_PODS_WITHOUT_SIDECAR);
        assert_eq!(
            s.conditions[1].message,
            "7 pod(s) it selects run without the gost sidecar, so their traffic bypasses these services; see the Injected condition"
        );
        // A render problem comes first; the Injected condition still says it.
        let both = ServiceObservation {
            problems: vec![problem(Reason::ChainNotFound, "no chain")],
            ..obs.clone()
        };
        let s = gost_service_status(&gs, &both, &time(1));
        assert_eq!(s.conditions[1].reason, REASON_RENDER_PROBLEMS);
        assert_eq!(s.conditions[2].status, "False");

        // Not listed this time (an API error): what the status said stands.
        gs.status = Some(gost_service_status(&gs, &obs, &time(1)));
        let unknown = ServiceObservation {
            without_sidecar: None,
            ..obs.clone()
        };
        let s = gost_service_status(&gs, &unknown, &time(2));
        assert_eq!(s, gost_service_status(&gs, &obs, &time(2)));

        // Replaced: Injected and Ready again.
        let s = gost_service_status(
            &gs,
            &ServiceObservation {
                without_sidecar: Some(BTreeSet::new()),
                ..ServiceObservation::default()
            },
            &time(3),
        );
        assert_eq!(s.pods_without_sidecar, Some(0));
        assert_eq!(
            (
                s.conditions[1].status.as_str(),
                s.conditions[2].status.as_str()
            ),
            ("True", "True")
        );
        assert_eq!(s.conditions[2].last_transition_time, time(3));
    }

    #[test]
    fn a_warning_when_more_pods_run_without_the_sidecar_and_a_note_when_none_does() {
        let seen = |pods: &[&str]| Seen {
            without_sidecar: Some(pods.iter().map(|p| p.to_string()).collect()),
            ..Seen::default()
        };
        let reasons = |ev: Vec<EventSpec>| -> Vec<(bool, String)> {
            ev.into_iter().map(|e| (e.warning, e.reason)).collect()
        };
        let warning = vec![(true, REASON_PODS_WITHOUT_SIDECAR.to_string())];
        let ev = events(Some(&seen(&[])), None, &seen(&["a"]), &[]);
        assert_eq!(
            ev[0].note,
            "1 more pod(s) it selects run without the gost sidecar (1 in all: a); once the cause is fixed, re-create them (see the Injected condition)"
        );
        assert_eq!(reasons(ev), warning);
        assert!(events(Some(&seen(&["a"])), None, &seen(&["a"]), &[]).is_empty());
        // One replaced, one more without: new pods warn.
        assert_eq!(
            reasons(events(Some(&seen(&["a"])), None, &seen(&["b"]), &[])),
            warning
        );
        assert!(events(Some(&seen(&["a", "b"])), None, &seen(&["b"]), &[]).is_empty());
        assert_eq!(
            reasons(events(Some(&seen(&["b"])), None, &seen(&[]), &[])),
            [(false, REASON_INJECTED.to_string())]
        );
        // Not known now: nothing said. Not known before: the status says what was.
        assert!(events(Some(&seen(&["a"])), None, &Seen::default(), &[]).is_empty());
        assert_eq!(
            reasons(events(Some(&Seen::default()), None, &seen(&["a"]), &[])),
            warning
        );
        // After a restart, the count in the status is what was said.
        let status = |n: i32| GostServiceStatus {
            pods_without_sidecar: Some(n),
            ..GostServiceStatus::default()
        };
        assert!(events(None, Some(&status(2)), &seen(&["a", "b"]), &[]).is_empty());
        assert_eq!(
            reasons(events(None, Some(&status(1)), &seen(&["a", "b"]), &[])),
            warning
        );
        assert_eq!(
            reasons(events(None, Some(&status(1)), &seen(&[]), &[])),
            [(false, REASON_INJECTED.to_string())]
        );
        assert!(events(None, None, &seen(&[]), &[]).is_empty());
    }

    #[test]
    fn ready_waits_for_the_gateway_but_not_for_pods() {
        let gs = gs();
        let obs = ServiceObservation {
            gateway: Some(GatewayState {
                name: "gost-gw-web".into(),
                desired: 2,
                available: 1,
            }),
            ..ServiceObservation::default()
        };
        let s = gost_service_status(&gs, &obs, &time(1));
        assert_eq!(s.conditions[1].reason, REASON_GATEWAY_UNAVAILABLE);
        assert!(s.conditions[1].message.contains("1 of 2"));
        let s = gost_service_status(&gs, &ServiceObservation::default(), &time(1));
        assert_eq!(s.conditions[1].status, "True");
        assert_eq!(s.matched_workloads, Some(0));
    }

    #[test]
    fn events_only_on_change() {
        let p = vec![problem(Reason::ChainNotFound, "chain x missing")];
        let seen = Seen {
            problems: ["chain x missing".to_string()].into(),
            matched: ["a".to_string()].into(),
            without_sidecar: None,
        };
        assert!(events(Some(&seen), None, &seen, &p).is_empty());
        let fresh = events(Some(&Seen::default()), None, &seen, &p);
        assert_eq!(fresh.len(), 2);
        assert!(fresh[0].warning && fresh[0].reason == "ChainNotFound");
        assert!(!fresh[1].warning && fresh[1].note.contains("1 workload(s): a"));
        // After a restart: reconstructed from the status, so nothing is repeated.
        let mut gs = gs();
        gs.status = Some(gost_service_status(
            &gs,
            &ServiceObservation {
                problems: p.clone(),
                matched: seen.matched.clone(),
                ..ServiceObservation::default()
            },
            &time(1),
        ));
        assert!(events(None, gs.status.as_ref(), &seen, &p).is_empty());
    }

    #[test]
    fn long_messages_are_cut() {
        let many: Vec<Problem> = (0..2000)
            .map(|i| {
                problem(
                    Reason::PortConflict,
                    &format!("port {i} is taken by someone"),
                )
            })
            .collect();
        let m = problems_message(&many);
        assert!(m.len() <= MAX_CONDITION_MESSAGE_LEN, "{}", m.len());
        assert!(m.starts_with("PortConflict: port 0 is taken by someone; "));
        let more: usize = m
            .rsplit("; … and ")
            .next()
            .and_then(|t| t.strip_suffix(" more"))
            .and_then(|n| n.parse().ok())
            .expect("ends with the count of the problems left out");
        assert_eq!(m.matches("PortConflict: ").count() + more, 2000);
    }

    /// events.k8s.io/v1 refuses a note over 1024 bytes; the API a condition message over 32768.
    const API_NOTE_LIMIT: usize = 1024;
    const API_MESSAGE_LIMIT: usize = 32768;

    #[test]
    fn event_notes_fit_the_api_limit() {
        let now = Seen {
            problems: BTreeSet::new(),
            matched: (0..30)
                .map(|i| format!("statefulset/checkout-service-{i:02}-ééé"))
                .collect(),
            without_sidecar: None,
        };
        let long = problem(
            Reason::ChainNotFound,
            &format!(
                "no GostChain named \"x\" (GostChains here: {})",
                (0..200)
                    .map(|i| format!("chain-ü-{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let ev = events(Some(&Seen::default()), None, &now, &[long]);
        assert_eq!(ev.len(), 2);
        for e in &ev {
            assert!(
                e.note.len() <= API_NOTE_LIMIT,
                "{} bytes: {}",
                e.note.len(),
                e.note
            );
        }
        let rendered = &ev[1].note;
        assert!(
            rendered
                .starts_with("rendered for 30 workload(s): statefulset/checkout-service-00-ééé, ")
                && rendered.contains(" and ")
                && rendered.ends_with(" more"),
            "{rendered}"
        );
        let listed = rendered.matches("checkout-service-").count();
        let more: usize = rendered
            .rsplit(" and ")
            .next()
            .and_then(|t| t.strip_suffix(" more"))
            .and_then(|n| n.parse().ok())
            .expect("a count of the names left out");
        assert_eq!(listed + more, 30, "{rendered}");
        assert!(
            ev[0].note.starts_with("no GostChain named \"x\""),
            "{}",
            ev[0].note
        );
    }

    #[test]
    fn condition_messages_fit_the_api_limit() {
        let huge = format!("Secret \"{}\" does not exist", "é".repeat(40_000));
        let gs = gs();
        let obs = ServiceObservation {
            problems: vec![problem(Reason::SecretNotFound, &huge)],
            ..ServiceObservation::default()
        };
        let status = gost_service_status(&gs, &obs, &time(1));
        for c in &status.conditions {
            assert!(c.message.len() <= API_MESSAGE_LIMIT, "{}", c.message.len());
        }
        let gc: GostChain = serde_json::from_value(serde_json::json!({
            "apiVersion": "gost.rs/v1alpha1", "kind": "GostChain",
            "metadata": {"name": "c", "generation": 1},
            "spec": {"hops": [{"name": "h", "nodes": [{"name": "n", "addr": "a:1"}]}]}
        }))
        .unwrap();
        let p = problem(Reason::SecretNotFound, &huge);
        let status = gost_chain_status(&gc, Some(&p), &[], &time(1));
        let message = &status.conditions[0].message;
        assert!(message.len() <= API_MESSAGE_LIMIT, "{}", message.len());
        assert!(message.starts_with("Secret \"éé"), "cut at a char boundary");
    }
}
