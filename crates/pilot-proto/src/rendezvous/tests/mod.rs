//! The sans-IO server driven with hand-sealed datagrams, a fake clock and a memory store.

mod addresses;
mod amplification;
mod cluster;
mod delivery;
mod introductions;
mod memory;
mod names;
mod queued;
mod registrations;
mod streams;
mod trust;

use crate::wire::control::{write_relay, Message, NatKind, RefusalCode, RELAY_FROM, RELAY_TO};
use crate::wire::envelope::{open, seal};

use super::testing::*;
use super::*;
