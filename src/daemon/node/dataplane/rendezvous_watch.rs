//! Telling the operator when the rendezvous stops registering this node, and when it is back:
//! once each (not per packet, not per retry), with the reason (no answer; answers under
//! another key, both keys shown). `status` and `netcheck` show the reason while it lasts.

use std::mem::{discriminant, Discriminant};
use std::time::{Duration, Instant};

use super::Core;
use crate::node::RendezvousProblem;

/// How often the rendezvous' state is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct RendezvousWatch {
    next_check: Instant,
    /// The kind of problem last logged; `None` while registered (or never failed).
    reported: Option<Discriminant<RendezvousProblem>>,
}

impl RendezvousWatch {
    pub fn new(now: Instant) -> RendezvousWatch {
        RendezvousWatch {
            next_check: now,
            reported: None,
        }
    }
}

impl Core {
    pub(super) fn watch_rendezvous(&mut self, now: Instant) {
        if now < self.rendezvous_watch.next_check {
            return;
        }
        self.rendezvous_watch.next_check = now + CHECK_EVERY;
        let problem = self.node.rendezvous_problem(now);
        let kind = problem.as_ref().map(discriminant);
        if kind == self.rendezvous_watch.reported {
            return;
        }
        let net = self.node.net_status(now);
        let rendezvous = net.rendezvous.unwrap_or_default();
        match &problem {
            Some(problem) => tracing::warn!("rendezvous {rendezvous}: {problem}"),
            None if net.registered => {
                tracing::info!("rendezvous {rendezvous}: registered again")
            }
            None => return,
        }
        self.rendezvous_watch.reported = kind;
    }

    /// Why a verb that needs the rendezvous cannot get an answer, when the rendezvous is the
    /// reason.
    pub(super) fn rendezvous_blame(&self, now: Instant) -> Option<String> {
        let net = self.node.net_status(now);
        let rendezvous = net.rendezvous?;
        if net.registered {
            return None;
        }
        let why = net
            .problem
            .unwrap_or_else(|| "this node is not registered with it (yet)".into());
        Some(format!("the rendezvous {rendezvous} is the problem: {why}"))
    }
}
