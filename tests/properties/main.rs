//! State-machine properties (issue 15, part B): random interleavings through the sans-IO
//! `Node` and rendezvous `Server` over the simulated internet of `tests/sim` — reordering,
//! duplication, loss, replays of captured datagrams from any address, node restarts (with
//! their saved trust state, or without), rendezvous restarts (same store, or an empty one),
//! trust churn through the verbs, and attackers flooding from fresh keys — with the invariants
//! checked on every datagram and packet as it crosses (see `world.rs`, `checks.rs`):
//!
//! 1. a packet reaches node X's TUN from Y only while X's gate for Y is open, it was written
//!    while Y's gate for X was open, and it arrives no later than the untrust window after
//!    Y's gate closed; no packet arrives twice; a node never trusts a peer after its operator
//!    withdrew (until the operator asks again);
//! 2. every message the rendezvous sends is decoded: a `Punch` (a node's endpoints) goes only
//!    to keys the ledger says the node trusts (a reply: its request's signer; queued: every
//!    key registered at the address), `Registered`/`NatProbeReply` name only the address they
//!    go to, a `Deliver` goes to a party of its statement; an attacker never receives a
//!    `Punch`;
//! 3. every relayed frame is between a pair the ledger trusts at that moment (never a pair
//!    mixing an honest node and an attacker), and none reaches an attacker;
//! 4. an honest node's request to the rendezvous (register, NAT probe, connect, submit, ack,
//!    lookup, relay frame — the first copy to arrive; duplicates and replays are others') is
//!    refused only for reasons of its own (`checks::EXCUSED`: not registered, unknown or
//!    untrusted target, its own rate), never for others' traffic;
//! 5. the server's and nodes' state stay within their caps, and a node holds no peer entry,
//!    replay state or ledger entry for anyone but honest nodes.
//!
//! After the churn, a quiet period: the network heals, attackers stop, and every pair's two
//! gates must agree, with packets crossing between each trusted pair.
//!
//! Floods that fill the rendezvous' outbox (`Config::max_outbox`, 300 here; try
//! `PILOT_PROPERTY_FLOOD=900`) are covered by invariant 4: a full outbox is shared by source
//! address, so attackers' statements displace their own, never an honest node's request.
//!
//! boringtun's own timers (handshake retries, rekeying) read the OS clock, not the simulated
//! one, so they never fire here: what the node does on its own (kicking handshakes, recovering
//! a lost session) is what the test sees.
//!
//! Cases are seeded (SplitMix64, `rng.rs`) rather than generated with proptest: the schedule
//! is interleaved with the state machines' own outputs, so a shrunk action list would not
//! replay the same run, while a seed replays it exactly. `PILOT_PROPERTY_CASES=N` runs N cases
//! (seeds 1..=N), `PILOT_PROPERTY_SEED=S` only seed S; a failure names its seed.

#[path = "../sim/net.rs"]
#[allow(dead_code)]
mod net;

mod attacker;
mod checks;
mod rng;
mod world;

use std::time::{Duration, Instant};

use checks::Stats;
use net::ALL_KINDS;
use world::{Faults, World};

/// Cases run by default, and the simulated length of each one's churn.
const DEFAULT_CASES: u64 = 40;
const CHURN: Duration = Duration::from_secs(60);
/// Faults, restarts and attackers off: enough for a revocation stored nowhere yet to reach
/// the rendezvous (resent every 2 s) and nodes to re-register (25 s keepalive).
const QUIET: Duration = Duration::from_secs(40);
const STEP: Duration = Duration::from_millis(100);

#[test]
fn state_machines_keep_their_invariants_under_random_interleavings() {
    let seeds: Vec<u64> = match std::env::var("PILOT_PROPERTY_SEED") {
        Ok(s) => vec![s.parse().expect("PILOT_PROPERTY_SEED is a number")],
        Err(_) => {
            let cases = std::env::var("PILOT_PROPERTY_CASES")
                .map(|s| s.parse().expect("PILOT_PROPERTY_CASES is a number"))
                .unwrap_or(DEFAULT_CASES);
            (1..=cases).collect()
        }
    };
    let started = Instant::now();
    let mut total = Stats::default();
    for &seed in &seeds {
        let result = std::panic::catch_unwind(|| run_case(seed));
        match result {
            Ok(stats) => total.add(&stats),
            Err(e) => {
                eprintln!("property failed: replay with PILOT_PROPERTY_SEED={seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    println!(
        "{} cases ({:?} simulated each) in {:?}: {total:#?}",
        seeds.len(),
        CHURN + QUIET,
        started.elapsed()
    );
    // Not vacuous: what the invariants speak about happened.
    if seeds.len() >= 20 {
        assert!(total.reached_tun > 1000 && total.punches > 0 && total.relayed > 0);
        assert!(total.attacker_registered > 0 && total.replays > 0 && total.verbs > 0);
        assert!(total.node_restarts > 0 && total.lost_state > 0 && total.empty_store > 0);
    }
}

fn run_case(seed: u64) -> Stats {
    let mut pick = rng::Rng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let nodes = 3 + pick.below(3);
    let kinds: Vec<_> = (0..nodes).map(|_| ALL_KINDS[pick.below(4)]).collect();
    let mut world = World::new(seed, &kinds, 1 + pick.below(2));
    let pairs: Vec<(usize, usize)> = (0..nodes)
        .flat_map(|a| (a + 1..nodes).map(move |b| (a, b)))
        .filter(|_| pick.chance(400))
        .collect();
    world.pretrust(&pairs);
    world.faults = Faults {
        drop: pick.below(100) as u32,
        duplicate: pick.below(50) as u32,
        delay: pick.below(300) as u32,
    };
    // How often each attacker acts, per mille of 100 ms steps.
    let flood = std::env::var("PILOT_PROPERTY_FLOOD")
        .map(|s| s.parse().expect("PILOT_PROPERTY_FLOOD is a number"))
        .unwrap_or(150);
    let mut packet = 0u64;
    let end = world.now + CHURN;
    while world.now < end {
        for x in 0..nodes {
            for y in 0..nodes {
                let up = world.is_up(x) && world.is_up(y);
                if x != y && up && world.rng.chance(100) {
                    packet += 1;
                    world.write_packet(x, y, packet);
                }
            }
        }
        if world.rng.chance(40) {
            verb(&mut world);
        }
        if world.rng.chance(4) {
            let i = world.rng.below(nodes);
            let lose = world.rng.chance(333);
            // Mostly a quick restart; sometimes the box is off for a while.
            let downtime = if world.rng.chance(300) {
                Duration::from_secs(5 + world.rng.below(30) as u64)
            } else {
                Duration::from_millis(world.rng.below(1000) as u64)
            };
            world.take_down(i, downtime, lose);
        }
        if world.rng.chance(2) {
            let empty = world.rng.chance(500);
            world.restart_server(empty);
        }
        if world.rng.chance(3) {
            let i = world.rng.below(nodes);
            if let Some(nat) = world.net.hosts[world.honest[i].host].nat {
                world.net.nats[nat].flush();
                world.checks.stats.nat_flushes += 1;
                world.trace(|| format!("node {i}'s NAT forgets its mappings"));
            }
        }
        for a in 0..world.attackers.len() {
            if world.rng.chance(flood) {
                world.attack(a);
            }
        }
        world.run_for(STEP);
    }
    world.faults = Faults::default();
    world.run_for(QUIET);
    converged(&mut world, &mut packet);
    world.checks.stats.clone()
}

/// One trust verb by a random node about another, through the Node API.
fn verb(world: &mut World) {
    let n = world.honest.len();
    let x = world.rng.below(n);
    let y = (x + 1 + world.rng.below(n - 1)) % n;
    if !world.is_up(x) {
        return;
    }
    let (ky, now) = (world.honest[y].key, world.now);
    let now_ms = world.clock.unix_ms(now);
    let asked = world.honest[x]
        .node
        .trust()
        .incoming(now_ms)
        .any(|i| i.request.requester == ky);
    let node = &mut world.honest[x].node;
    let said = match world.rng.below(10) {
        0..=3 => node.handshake(ky, "property", now).map(|_| true),
        4..=6 if asked => node.approve(ky, now).map(|()| true),
        4..=6 => node.handshake(ky, "property", now).map(|_| true),
        7 | 8 => node.untrust(ky, now).map(|()| false),
        _ if asked => node.reject(ky, "no", now).map(|()| false),
        _ => node.untrust(ky, now).map(|()| false),
    };
    world.trace(|| format!("node {x} about node {y}: {said:?}"));
    if let Ok(consent) = said {
        world.checks.consent.insert((x, y), Some(consent));
        world.checks.stats.verbs += 1;
    }
    world.after_node(x);
}

/// After the quiet period: both sides of every pair agree, and trusted pairs talk.
fn converged(world: &mut World, packet: &mut u64) {
    let n = world.honest.len();
    let mut trusted = Vec::new();
    for x in 0..n {
        for y in x + 1..n {
            let (kx, ky) = (world.honest[x].key, world.honest[y].key);
            let xy = world.honest[x].node.is_trusted(&ky);
            let yx = world.honest[y].node.is_trusted(&kx);
            assert_eq!(
                xy, yx,
                "seed {}: after {QUIET:?} of quiet, node {x} trusts node {y}: {xy}, and node {y} \
                 trusts node {x}: {yx}",
                world.seed
            );
            if xy {
                trusted.push((x, y));
            }
        }
    }
    let before = world.checks.stats.reached_tun;
    for &(x, y) in &trusted {
        for _ in 0..10 {
            *packet += 1;
            world.write_packet(x, y, *packet);
            *packet += 1;
            world.write_packet(y, x, *packet);
            world.run_for(Duration::from_millis(200));
        }
    }
    world.run_for(Duration::from_secs(1));
    let arrived = world.checks.stats.reached_tun - before;
    assert!(
        arrived as usize >= trusted.len() * 10,
        "seed {}: only {arrived} of {} packets crossed between trusted pairs {trusted:?} after \
         the quiet\n{}",
        world.seed,
        trusted.len() * 20,
        world.debug()
    );
}
