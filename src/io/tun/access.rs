//! Why the kernel refused us a TUN, worked out from facts rather than from the errno alone.
//!
//! open("/dev/net/tun") fails with EACCES when the device node's mode (or ACL) forbids the
//! daemon's user, and TUNSETIFF fails with EPERM without CAP_NET_ADMIN; a device cgroup (a
//! container, systemd's `DevicePolicy=`) refuses the open with EPERM too. CAP_NET_ADMIN does
//! not override a file's mode, so an unprivileged service user holding it still meets a 0600
//! device (minimal images, containers, systems without udev). The message must name the
//! cause that is really there, and never blame a capability the process holds.

use std::ffi::CString;
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The TUN clone device every TUN is created through.
pub const CLONE_DEVICE: &str = "/dev/net/tun";

/// Bit of CAP_NET_ADMIN in the capability sets (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// The facts behind a refused TUN: who the daemon runs as, what it holds, what the device
/// allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The effective user, as `name (uid N)`.
    pub user: String,
    /// The bare user name for commands (`setfacl -m u:NAME:rw`), or the uid if unnamed.
    pub user_arg: String,
    /// Whether CAP_NET_ADMIN is in the effective set.
    pub net_admin: bool,
    /// The device as `ls -l` shows it (`crw------- root:root`), if it could be inspected.
    pub device: Option<String>,
    /// Whether the device's mode and ACL let the effective user open it read-write.
    pub device_open: bool,
}

/// What the user has to change, derived from a [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The device node's mode or ACL forbids the user (whatever its capabilities).
    DeviceMode,
    /// The device opens but creating an interface needs CAP_NET_ADMIN, which is missing.
    NoNetAdmin,
    /// Mode and capability are fine, so a device policy (cgroup) refused the open.
    DevicePolicy,
}

impl Refusal {
    /// Reads the facts of this process and of [`CLONE_DEVICE`] at the moment of the error.
    pub fn inspect() -> Refusal {
        let uid = nix::unistd::geteuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name);
        let user = match &name {
            Some(name) => format!("{name} (uid {uid})"),
            None => format!("uid {uid}"),
        };
        Refusal {
            user,
            user_arg: name.unwrap_or_else(|| uid.to_string()),
            net_admin: holds_net_admin(),
            device: describe_device(CLONE_DEVICE),
            device_open: may_open(CLONE_DEVICE),
        }
    }

    pub fn cause(&self) -> Cause {
        if !self.device_open {
            Cause::DeviceMode
        } else if !self.net_admin {
            Cause::NoNetAdmin
        } else {
            Cause::DevicePolicy
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = &self.user;
        write!(f, "{CLONE_DEVICE}: permission denied — ")?;
        match self.cause() {
            Cause::DeviceMode => {
                let device = self.device.as_deref().unwrap_or("not inspectable");
                let arg = &self.user_arg;
                write!(
                    f,
                    "the device is {device} and pilotd runs as user {user}, who may not open \
                     it"
                )?;
                if self.net_admin {
                    write!(
                        f,
                        " (pilotd holds CAP_NET_ADMIN, but no capability it holds overrides a \
                         device's mode)"
                    )?;
                }
                write!(
                    f,
                    ". Fix: `sudo setfacl -m u:{arg}:rw {CLONE_DEVICE}` (this user only; the pilot \
                     package grants its user `pilot` so at boot and at every start), or `sudo \
                     chmod 0666 {CLONE_DEVICE}` (Debian's default: the device grants nothing \
                     without CAP_NET_ADMIN), or run as root, or use `pilotd up --userspace`"
                )?;
                if !self.net_admin {
                    write!(
                        f,
                        "; pilotd also lacks CAP_NET_ADMIN, which creating the interface needs \
                         (grant it, e.g. AmbientCapabilities=CAP_NET_ADMIN, or run as root)"
                    )?;
                }
                Ok(())
            }
            Cause::NoNetAdmin => write!(
                f,
                "creating a TUN needs CAP_NET_ADMIN, which pilotd (user {user}) does not hold: \
                 run as root (e.g. `sudo pilotd up`), grant CAP_NET_ADMIN \
                 (AmbientCapabilities=CAP_NET_ADMIN in a unit, or `setcap cap_net_admin+ep`), or \
                 use `pilotd up --userspace`"
            ),
            Cause::DevicePolicy => write!(
                f,
                "its mode lets user {user} open it and pilotd holds CAP_NET_ADMIN, so a device \
                 policy refused it: a container's device cgroup or systemd's \
                 DevicePolicy=/DeviceAllow= must allow {CLONE_DEVICE} (character device 10:200) \
                 read-write"
            ),
        }
    }
}

/// CAP_NET_ADMIN in this thread's effective set, from capget(2).
fn holds_net_admin() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header and the two data words the v3 ABI writes.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    rc == 0 && data[0].effective & (1 << CAP_NET_ADMIN) != 0
}

/// `crw-rw----+ root:root`: type, permission bits, `+` for an ACL, owner and group names.
fn describe_device(path: &str) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let kind = if meta.file_type().is_char_device() {
        'c'
    } else {
        '?'
    };
    let mode = meta.mode();
    let bits: String = (0..9)
        .map(|i| {
            let on = mode & (0o400 >> i) != 0;
            match (on, i % 3) {
                (false, _) => '-',
                (true, 0) => 'r',
                (true, 1) => 'w',
                (true, _) => 'x',
            }
        })
        .collect();
    let acl = if has_acl(path) { "+" } else { "" };
    let owner = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    Some(format!("{kind}{bits}{acl} {owner}:{group}"))
}

/// Whether the path carries a POSIX access ACL (the `+` of `ls -l`).
fn has_acl(path: &str) -> bool {
    let (Ok(path), Ok(name)) = (CString::new(path), CString::new("system.posix_acl_access")) else {
        return false;
    };
    // SAFETY: NUL-terminated strings; a null buffer of size 0 only asks for the length.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    n > 0
}

/// Whether the effective user may open `path` read-write by its mode and ACL (and by
/// CAP_DAC_OVERRIDE, which root has): faccessat with AT_EACCESS asks exactly that.
fn may_open(path: &str) -> bool {
    let Ok(path) = CString::new(path) else {
        return false;
    };
    // SAFETY: NUL-terminated path; faccessat only reads it.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::R_OK | libc::W_OK,
            libc::AT_EACCESS,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(net_admin: bool, device_open: bool) -> Refusal {
        Refusal {
            user: "pilot (uid 999)".into(),
            user_arg: "pilot".into(),
            net_admin,
            device: Some("crw------- root:root".into()),
            device_open,
        }
    }

    #[test]
    fn a_forbidding_device_is_named_with_its_mode_owner_and_user_and_the_fix() {
        let msg = refusal(true, false).to_string();
        assert_eq!(refusal(true, false).cause(), Cause::DeviceMode);
        for part in [
            "crw------- root:root",
            "pilot (uid 999)",
            "setfacl -m u:pilot:rw /dev/net/tun",
            "chmod 0666",
            "holds CAP_NET_ADMIN",
        ] {
            assert!(msg.contains(part), "{part:?} missing: {msg}");
        }
        assert!(!msg.contains("lacks CAP_NET_ADMIN"), "{msg}");
    }

    #[test]
    fn a_missing_capability_is_blamed_only_when_it_is_missing() {
        let both = refusal(false, false).to_string();
        assert!(both.contains("crw-------") && both.contains("lacks CAP_NET_ADMIN"));
        let cap = refusal(false, true);
        assert_eq!(cap.cause(), Cause::NoNetAdmin);
        assert!(cap
            .to_string()
            .contains("needs CAP_NET_ADMIN, which pilotd (user pilot"));
        let policy = refusal(true, true);
        assert_eq!(policy.cause(), Cause::DevicePolicy);
        let msg = policy.to_string();
        assert!(
            msg.contains("device policy") && msg.contains("DeviceAllow"),
            "{msg}"
        );
        assert!(
            !msg.contains("does not hold") && !msg.contains("lacks"),
            "{msg}"
        );
    }

    #[test]
    fn describes_a_device_like_ls() {
        // /dev/null exists everywhere: crw-rw-rw- root:root.
        let d = describe_device("/dev/null").unwrap();
        assert!(d.starts_with("crw-rw-rw-"), "{d}");
        assert!(d.ends_with(" root:root"), "{d}");
        assert!(describe_device("/nonexistent/tun").is_none());
        assert!(may_open("/dev/null"));
        assert!(!may_open("/nonexistent/tun"));
    }
}
