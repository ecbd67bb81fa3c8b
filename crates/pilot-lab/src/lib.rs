//! Pilot's lab: a small internet of network namespaces with nftables NAT routers, for the
//! tests (`tests/lab` builds its nodes on it), the demo and the benchmark, and the `natlab`
//! command people run (`natlab up NAME --nat1 prc --nat2 sym`, `check`, `exec`, `flush`,
//! `down`).
//!
//! - [`topology`]: the hosts, addresses and router kinds, as data.
//! - [`natlab`]: bringing a lab up (rolled back on failure) and down, and the verbs on one.
//! - [`check`]: measuring that a lab behaves as its options say.
//! - [`netns`]: namespaces a test owns (deleted on drop), joined by veth pairs.
//! - [`prereq`]: whether a test that needs root and system tools can run (fails under CI).
//! - [`postgres`]: throwaway PostgreSQL clusters on a Unix socket, for the stores' tests.
//!
//! The routers' rulesets (`files/*.nft`) and the helper programs (`files/probe.py`, a STUN-like
//! probe; `files/delay.py`, the delayer this kernel needs for lack of netem) are real files,
//! built into the library and written into a lab's state dir when it uses them.
//!
//! Everything needs root, iproute2, nftables and python3; `--delay` needs iptables, `check`
//! ping (iputils-ping).

pub mod check;
pub mod natlab;
pub mod netns;
pub mod postgres;
pub mod prereq;
pub mod sh;
pub mod topology;

pub use check::{check, Verdict};
pub use natlab::NatLab;
pub use netns::Netns;
pub use topology::{Delay, Host, Loss, NatKind, Options, Router, V6Kind};
