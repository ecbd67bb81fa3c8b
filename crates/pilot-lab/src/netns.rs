//! Namespaces owned by the process that made them (a test's): deleted on drop. A NAT lab's
//! namespaces instead outlive the command that made them and are found by the lab's name
//! ([`crate::NatLab`]).

use anyhow::{bail, Result};

use crate::sh::{self, ip};

/// A network namespace this process created, loopback up; deleted (with its links) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates it; refuses a name that exists (someone else's: left alone).
    pub fn add(name: &str) -> Result<Netns> {
        if name.is_empty() || name.len() > 15 || name.contains('/') {
            bail!("namespace name '{name}': 1-15 characters, no '/'");
        }
        if sh::netns_exists(name) {
            bail!("network namespace {name} already exists (not ours; leaving it alone)");
        }
        sh::run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ip(name, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Joins this namespace to another with a veth pair: `dev` here with address `addr`
    /// (CIDR), `peer_dev` there with `peer_addr`, both up. Made inside this namespace with its
    /// peer in the other, so nothing appears in the root namespace even for a moment.
    pub fn veth(
        &self,
        dev: &str,
        addr: &str,
        peer: &Netns,
        peer_dev: &str,
        peer_addr: &str,
    ) -> Result<()> {
        ip(
            &self.name,
            &[
                "link", "add", dev, "type", "veth", "peer", "name", peer_dev, "netns", &peer.name,
            ],
        )?;
        for (ns, dev, addr) in [(&self.name, dev, addr), (&peer.name, peer_dev, peer_addr)] {
            ip(ns, &["addr", "add", addr, "dev", dev])?;
            ip(ns, &["link", "set", dev, "up"])?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = sh::run("ip", &["netns", "del", &self.name]) {
            eprintln!("deleting namespace {}: {e:#}", self.name);
        }
    }
}
