//! Reading message bodies: a bounds-checked cursor and the one error type every decoder of
//! the wire formats returns (control messages, trust statements).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::addr::Hostname;
use crate::identity::NodeKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message body truncated")]
    Truncated,
    #[error("trailing bytes after the message body")]
    Trailing,
    #[error("unknown message type {0:#04x}")]
    UnknownKind(u8),
    #[error("bad endpoint encoding")]
    BadEndpoint,
    #[error("list longer than allowed")]
    TooMany,
    #[error("bad field value")]
    BadValue,
}

/// A cursor over a body; every read checks length first.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| DecodeError::Truncated)?;
        Ok(u64::from_be_bytes(b))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Truncated)
    }

    pub(crate) fn key(&mut self) -> Result<NodeKey, DecodeError> {
        let b: [u8; 32] = self
            .take(32)?
            .try_into()
            .map_err(|_| DecodeError::Truncated)?;
        Ok(NodeKey(b))
    }

    /// A hostname (length byte, then the name); `None` for length 0.
    pub(crate) fn name(&mut self) -> Result<Option<Hostname>, DecodeError> {
        let len = usize::from(self.u8()?);
        if len == 0 {
            return Ok(None);
        }
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::BadValue)?;
        text.parse().map(Some).map_err(|_| DecodeError::BadValue)
    }

    pub(crate) fn endpoint(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => {
                let b: [u8; 4] = self
                    .take(4)?
                    .try_into()
                    .map_err(|_| DecodeError::Truncated)?;
                IpAddr::V4(Ipv4Addr::from(b))
            }
            6 => {
                let b: [u8; 16] = self
                    .take(16)?
                    .try_into()
                    .map_err(|_| DecodeError::Truncated)?;
                // An IPv4-mapped address is the IPv4 one (as `put_endpoint` writes it), and
                // is checked as such: `::ffff:0.0.0.0` is unspecified, `::ffff:224.0.0.1`
                // multicast.
                IpAddr::V6(Ipv6Addr::from(b)).to_canonical()
            }
            _ => return Err(DecodeError::BadEndpoint),
        };
        let port = self.u16()?;
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if port == 0 || ip.is_unspecified() || ip.is_multicast() || broadcast {
            return Err(DecodeError::BadEndpoint);
        }
        Ok(SocketAddr::new(ip, port))
    }

    pub(crate) fn list<T>(
        &mut self,
        cap: usize,
        item: fn(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = usize::from(self.u8()?);
        if n > cap {
            return Err(DecodeError::TooMany);
        }
        (0..n).map(|_| item(self)).collect()
    }
}
