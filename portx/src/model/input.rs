//! What feeds the model: one type for every source, the live kernel (ring buffer,
//! sock_diag, sysctl files) and a recording. `portx top`, `portx record` and
//! `portx report` all feed a [`Model`] through [`Model::feed`], so live and replayed
//! views cannot disagree.

use serde::{Deserialize, Serialize};

use super::{BaselineSocket, Model, NetnsConfig, Tuple};
use crate::events::TraceEvent;

/// One input of the model, in the order it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A decoded (and owner-joined) event from the BPF programs.
    Event(TraceEvent),
    /// A namespace's sockets at one time: the start-up sock_diag dump, or the model's
    /// own state written at the start of a recording file.
    State(NetnsState),
    /// A namespace's settings, re-read (written when they change).
    Settings { netns: u32, config: NetnsConfig },
    /// The kernel's timewait sockets of a namespace (the drift check), dumped from
    /// `started_ns`: `(tuple, remaining ms)`; `fin_wait2`, those of them still in
    /// FIN_WAIT2 (their peer has not closed), which no new connection may take over.
    TimeWait {
        netns: u32,
        tuples: Vec<(Tuple, u32)>,
        started_ns: u64,
        fin_wait2: Vec<Tuple>,
    },
    /// Sockets of a namespace's start-up baseline that the kernel no longer has, by
    /// 4-tuple (the drift check; see [`super::baseline_without_close`]).
    BaselineGone { netns: u32, tuples: Vec<Tuple> },
    /// A namespace nothing reaches any more (no process in it, no `ip netns` name):
    /// the prober has let go of it, and the model forgets it
    /// ([`super::Model::forget_netns`]).
    NetnsGone { netns: u32 },
}

/// A namespace's sockets and settings at `at_ns` (boot-time clock).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetnsState {
    pub netns: u32,
    pub config: NetnsConfig,
    pub at_ns: u64,
    pub sockets: Vec<BaselineSocket>,
}

impl Input {
    /// The input's time on the boot-time clock, where it has one.
    pub fn ts_ns(&self) -> Option<u64> {
        match self {
            Self::Event(e) => Some(e.ts_ns),
            Self::State(s) => Some(s.at_ns),
            Self::Settings { .. } | Self::BaselineGone { .. } | Self::NetnsGone { .. } => None,
            Self::TimeWait { started_ns, .. } => Some(*started_ns),
        }
    }
}

impl Model {
    /// Applies one input. A state for a namespace the model already knows is taken as
    /// a resynchronisation only where the caller says so (see [`Model::load_state`]);
    /// here it is loaded as a baseline, which is what a fresh model wants.
    pub fn feed(&mut self, input: &Input) {
        match input {
            Input::Event(e) => self.apply(e),
            Input::State(s) => self.load_state(s),
            Input::Settings { netns, config } => self.set_netns_config(*netns, config.clone()),
            Input::TimeWait {
                netns,
                tuples,
                started_ns,
                fin_wait2,
            } => {
                self.reconcile_timewait(*netns, tuples, *started_ns, fin_wait2);
            }
            Input::BaselineGone { netns, tuples } => {
                self.forget_baseline(*netns, tuples);
            }
            Input::NetnsGone { netns } => self.forget_netns(*netns),
        }
    }

    /// Loads a namespace's state: its settings, then its sockets as a baseline.
    pub fn load_state(&mut self, s: &NetnsState) {
        self.set_netns_config(s.netns, s.config.clone());
        self.load_baseline(s.netns, &s.sockets, s.at_ns);
    }
}
