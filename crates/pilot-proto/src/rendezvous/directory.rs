//! Who is who: the hostname each key holds, and which key is behind a 48-bit address, and the
//! `Lookup` that asks about them.
//!
//! A key is known while it holds a hostname or has a registration in memory. Names outlive
//! the registration's expiry (a node that is offline for a day keeps its name) and are held
//! until the key has not registered for the name TTL (`Config::name_ttl`), then released: a
//! reinstalled box (a new key) can have its name back. Holds expire from an ordered set of
//! deadlines, so nothing scans every name. A node can also release its name at once
//! (`ReleaseName`), and an operator free one. Addresses are a 48-bit hash, so two
//! keys may share one; the key that was known first keeps answering for it, so a key ground
//! to collide with a known node's address cannot take over its lookups.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::control::Request;
use super::rate::Rate;
use super::writes::{self, Pending, StoreOp, Written};
use super::{Refusal, Server, StoreError, Transmit, LOOKUP_RATE, SUBMIT_RATE};
use crate::addr::{Hostname, NodeAddr};
use crate::identity::NodeKey;
use crate::wire::control::{Found, Message, Query, RefusalCode};

/// `Lookup`s per second from senders that are not registered, all together: they have no
/// entry to keep a bucket in, and keys cost nothing to make.
const STRANGER_LOOKUP_RATE: Rate = Rate {
    per_sec: 50,
    burst: 100,
};

#[derive(Debug, Default)]
pub(super) struct Directory {
    names: BTreeMap<Hostname, NodeKey>,
    keys: BTreeMap<NodeKey, Known>,
    /// Keys per address, in the order they became known (nearly always one).
    by_address: BTreeMap<NodeAddr, Vec<NodeKey>>,
    /// (when the name expires, its holder), so the next expiry is the first element.
    holds: BTreeSet<(Instant, NodeKey)>,
}

#[derive(Debug, Default)]
struct Known {
    name: Option<Hostname>,
    /// When `name` is released unless the key registers again.
    held_until: Option<Instant>,
    registered: bool,
}

impl Directory {
    /// The key holding `name`.
    /// Hostnames held.
    pub fn names(&self) -> usize {
        self.names.len()
    }

    pub fn holder(&self, name: &Hostname) -> Option<NodeKey> {
        self.names.get(name).copied()
    }

    /// The hostname `key` holds.
    pub fn name_of(&self, key: &NodeKey) -> Option<&Hostname> {
        self.keys.get(key)?.name.as_ref()
    }

    /// The key answering for `address`.
    pub fn at_address(&self, address: NodeAddr) -> Option<NodeKey> {
        self.by_address.get(&address)?.first().copied()
    }

    pub fn knows(&self, key: &NodeKey) -> bool {
        self.keys.contains_key(key)
    }

    /// Gives `key` the hostname `name`, releasing the one it held; `None` releases it. The
    /// caller has checked that no other key holds `name`.
    pub fn set_name(&mut self, key: NodeKey, name: Option<Hostname>) {
        if let Some(name) = &name {
            debug_assert!(self.holder(name).is_none_or(|k| k == key), "{name} taken");
            self.names.insert(name.clone(), key);
        }
        let mut hold = None;
        let released = self.update(key, |known| {
            if known.name.is_some() && name.is_none() {
                hold = known.held_until.take();
            }
            let old = std::mem::replace(&mut known.name, name);
            old.filter(|old| Some(old) != known.name.as_ref())
        });
        if let Some(until) = hold {
            self.holds.remove(&(until, key));
        }
        if let Some(released) = released {
            self.names.remove(&released);
        }
    }

    /// Holds `key`'s hostname, if it has one, until `until` (replacing an earlier deadline).
    pub fn hold(&mut self, key: NodeKey, until: Instant) {
        let Some(known) = self.keys.get_mut(&key).filter(|k| k.name.is_some()) else {
            return;
        };
        if let Some(old) = known.held_until.replace(until) {
            self.holds.remove(&(old, key));
        }
        self.holds.insert((until, key));
    }

    /// Releases every hostname whose hold ended by `now`; returns them with their holders.
    pub fn expire_names(&mut self, now: Instant) -> Vec<(NodeKey, Hostname)> {
        let mut gone = Vec::new();
        while let Some(&(until, key)) = self.holds.first() {
            if until > now {
                break;
            }
            self.holds.pop_first();
            if let Some(known) = self.keys.get_mut(&key) {
                known.held_until = None;
            }
            if let Some(name) = self.name_of(&key).cloned() {
                self.set_name(key, None);
                gone.push((key, name));
            }
        }
        gone
    }

    /// When the next hostname hold ends.
    pub fn next_name_expiry(&self) -> Option<Instant> {
        self.holds.first().map(|(t, _)| *t)
    }

    /// Whether `key` has a registration in memory.
    pub fn set_registered(&mut self, key: NodeKey, registered: bool) {
        self.update(key, |known| {
            known.registered = registered;
            None::<()>
        });
    }

    /// Runs `change` on what is known of `key` (new if unknown), then keeps the address index
    /// in step; returns what `change` returned.
    fn update<T>(
        &mut self,
        key: NodeKey,
        change: impl FnOnce(&mut Known) -> Option<T>,
    ) -> Option<T> {
        let new = !self.keys.contains_key(&key);
        let known = self.keys.entry(key).or_default();
        let result = change(known);
        let empty = known.name.is_none() && !known.registered;
        let address = key.address();
        if empty {
            self.keys.remove(&key);
            if let Some(keys) = self.by_address.get_mut(&address) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.by_address.remove(&address);
                }
            }
        } else if new {
            self.by_address.entry(address).or_default().push(key);
        }
        result
    }
}

impl Server {
    /// Answers `Lookup`: the key with a hostname or address, or the hostname of a key.
    pub(super) fn lookup<'a>(
        &mut self,
        req: Request,
        query: Query,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        let allowed = match self.registry.fresh_mut(&req.sender, now) {
            Some(entry) => entry.buckets.lookups.take(LOOKUP_RATE, 1, now),
            None => self.stranger_lookups.take(STRANGER_LOOKUP_RATE, 1, now),
        };
        if !allowed {
            self.counters.refuse(Refusal::RateLimited);
            return self.refusal_reply(req, RefusalCode::RateLimited, now, out);
        }
        let key = match &query {
            Query::Name(name) => self.directory.holder(name),
            Query::Address(address) => self.directory.at_address(*address),
            Query::Key(key) => self.directory.knows(key).then_some(*key),
        };
        let found = key.map(|key| Found {
            key,
            hostname: self.directory.name_of(&key).cloned(),
        });
        // Not in memory, and other servers share the store: a node may have registered there.
        let ask_store = found.is_none()
            && self.config.heartbeat.is_some()
            && !matches!(query, Query::Address(_));
        if !ask_store {
            let reply = self.looked_up(req, Ok(found))?;
            return self.reply(req, &reply, now, out);
        }
        match self.write(StoreOp::LookUp(query, self.names_held_since(now))) {
            Written::Now(result) => {
                let reply = self.looked_up(req, writes::found_of(result))?;
                self.reply(req, &reply, now, out)
            }
            Written::Queued(ticket) => {
                self.wait_for(ticket, Pending::LookUp { req });
                None
            }
        }
    }

    /// A lookup's answer. When the store could not be asked there is none (the node asks
    /// again): "not found" is said only of what is known not to exist.
    pub(super) fn looked_up(
        &mut self,
        req: Request,
        found: Result<Option<Found>, StoreError>,
    ) -> Option<Message> {
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                self.store_error(&e);
                return None;
            }
        };
        self.counters.lookups += 1;
        Some(Message::LookupReply {
            echo: req.nonce,
            found,
        })
    }
}

impl Server {
    /// Answers `ReleaseName`: frees the sender's hostname at once, durably, if it holds that
    /// name; anyone else's name is left alone (the answer says the sender did not hold it).
    pub(super) fn release_name<'a>(
        &mut self,
        req: Request,
        name: Hostname,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        if let Err(code) = self.admit_request(req, |b| &mut b.submits, SUBMIT_RATE, now) {
            return self.refusal_reply(req, code, now, out);
        }
        let held = self.directory.name_of(&req.sender) == Some(&name);
        if !held {
            let reply = Message::NameReleased {
                echo: req.nonce,
                held,
            };
            return self.reply(req, &reply, now, out);
        }
        // Acknowledged only once stored: a crash right after must not bring it back.
        match self.write(StoreOp::ReleaseName(name.clone())) {
            Written::Now(result) => {
                let reply = self.name_released(req, name, result.map(drop))?;
                self.reply(req, &reply, now, out)
            }
            Written::Queued(ticket) => {
                self.wait_for(ticket, Pending::NameRelease { req, name });
                None
            }
        }
    }

    /// A node's release of its hostname is written (or not): the name is free, and the answer
    /// to send; none when the write failed (the node retries).
    pub(super) fn name_released(
        &mut self,
        req: Request,
        name: Hostname,
        result: Result<(), StoreError>,
    ) -> Option<Message> {
        if let Err(e) = result {
            self.store_error(&e);
            self.counters.refuse(Refusal::StoreFailed);
            return None;
        }
        self.store_ok();
        // A registration may have renamed it meanwhile; only the released name goes.
        if self.directory.name_of(&req.sender) == Some(&name) {
            self.directory.set_name(req.sender, None);
        }
        tracing::info!(node = %req.sender, "hostname {name} released by its holder");
        Some(Message::NameReleased {
            echo: req.nonce,
            held: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Hostname {
        s.parse().unwrap()
    }

    #[test]
    fn names_and_addresses_follow_their_keys() {
        let (a, b) = (NodeKey([1; 32]), NodeKey([2; 32]));
        let mut d = Directory::default();
        d.set_name(a, Some(name("alice")));
        d.set_registered(b, true);
        assert_eq!(d.holder(&name("alice")), Some(a));
        assert_eq!(d.at_address(a.address()), Some(a));
        assert_eq!(d.at_address(b.address()), Some(b));
        // Renaming releases the old name.
        d.set_name(a, Some(name("alicia")));
        assert_eq!(d.holder(&name("alice")), None);
        assert_eq!(d.name_of(&a), Some(&name("alicia")));
        // Known while it has a name or a registration; forgotten when it has neither.
        d.set_registered(b, false);
        assert!(!d.knows(&b));
        assert_eq!(d.at_address(b.address()), None);
        d.set_name(a, None);
        assert_eq!(d.holder(&name("alicia")), None);
        assert!(!d.knows(&a));
        assert!(d.by_address.is_empty() && d.names.is_empty());
    }

    #[test]
    fn names_are_released_when_their_hold_ends() {
        let (a, b, c) = (NodeKey([1; 32]), NodeKey([2; 32]), NodeKey([3; 32]));
        let t0 = Instant::now();
        let at = |s| t0 + std::time::Duration::from_secs(s);
        let mut d = Directory::default();
        d.set_name(a, Some(name("alice")));
        d.set_name(b, Some(name("bob")));
        d.hold(a, at(10));
        d.hold(b, at(20));
        d.hold(c, at(5)); // no name: nothing to hold
        assert_eq!(d.next_name_expiry(), Some(at(10)));
        // A new registration moves the deadline.
        d.hold(a, at(30));
        assert_eq!(d.next_name_expiry(), Some(at(20)));
        assert!(d.expire_names(at(19)).is_empty());
        assert_eq!(d.expire_names(at(20)), vec![(b, name("bob"))]);
        assert_eq!(d.holder(&name("bob")), None);
        assert!(!d.knows(&b));
        // Releasing by hand drops the deadline too.
        d.set_name(a, None);
        assert_eq!(d.next_name_expiry(), None);
        assert!(d.expire_names(at(100)).is_empty());
    }
}
