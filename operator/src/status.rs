//! Status and events: what a reconcile found, as `status` of GostServices and GostChains and as
//! Kubernetes events. Pure functions, so that "no change, no write" is decided here and tested.

use std::collections::{BTreeMap, BTreeSet};

use gost_api::v1alpha1::{
    CONDITION_READY, CONDITION_RENDERED, GostChain, GostChainStatus, GostService, GostServiceStatus,
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
        conditions: vec![
            carry_transition(old, rendered),
            carry_transition(old, ready),
        ],
    }
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
