//! The stream a node whose network blocks UDP uses to reach the rendezvous: TLS 1.3 over TCP
//! (port 443 by default, where such networks let traffic out), carrying the datagrams UDP
//! would, each as a frame: its length (two bytes, big-endian) and its bytes.
//!
//! TLS here hides the traffic among other TLS and keeps middleboxes out of it; who the
//! rendezvous is, is settled by its Ed25519 key. The server presents that key as a raw public
//! key (RFC 7250: no certificate, no CA) and proves it in the handshake; a node accepts only
//! the key it pinned, so a connection that completes is to the rendezvous it trusts. Inside,
//! every control message is signed as on UDP, and nodes are told apart by those signatures,
//! so the client presents nothing.

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::sync::mpsc;

use ed25519_dalek::SigningKey;

/// Largest frame: a datagram's length fits two bytes.
pub const MAX_FRAME: usize = u16::MAX as usize;
/// The bytes before a frame's datagram.
pub const FRAME_HEADER: usize = 2;

/// DER of an Ed25519 SubjectPublicKeyInfo up to the key (RFC 8410): SEQUENCE, the algorithm
/// id-Ed25519, BIT STRING of 33 bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of an Ed25519 private key in PKCS#8 v1 (RFC 8410) up to the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 public key as TLS carries a raw public key.
fn spki(key: &[u8; 32]) -> Vec<u8> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(key);
    der
}

/// ring, which boringtun already brings. Deprecated for lacking post-quantum key exchange;
/// what crosses this TLS is signed control messages and WireGuard datagrams, which WireGuard
/// itself encrypts (without post-quantum key exchange either), so the outer key exchange
/// protects nothing a quantum adversary could not read at the inner layer anyway.
#[allow(deprecated, reason = "see above")]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rendezvous' side: TLS 1.3 only, its identity key (`signing`) as the raw public key,
/// no client authentication.
pub fn server_config(signing: &SigningKey) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&signing.to_bytes());
    let signer = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))?;
    let key = CertifiedKey::new(
        vec![CertificateDer::from(spki(
            signing.verifying_key().as_bytes(),
        ))],
        signer,
    );
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(Arc::new(
            key,
        ))));
    Ok(Arc::new(config))
}

/// A node's side: TLS 1.3 only, accepting the rendezvous whose key is `pinned` and nothing
/// else. Without a pinned key (a node that never reached its rendezvous and was given none)
/// any Ed25519 key that proves itself in the handshake is accepted: the signed messages
/// inside then decide, as over UDP (trust on first use).
pub fn client_config(pinned: Option<[u8; 32]>) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = PinnedKey {
        spki: pinned.as_ref().map(spki),
        provider: provider(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a node asks for in its ClientHello. The server presents the same key whatever is
/// asked, and the node checks that key, not a name.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("pilot-rendezvous").expect("a valid DNS name")
}

/// Accepts the server's raw public key when it is the pinned one, and its handshake signature
/// when that key made it.
#[derive(Debug)]
struct PinnedKey {
    /// `None`: any Ed25519 key.
    spki: Option<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = end_entity.as_ref();
        let acceptable = match &self.spki {
            Some(pinned) => key == pinned.as_slice(),
            None => key.len() == 44 && key.starts_with(&ED25519_SPKI_PREFIX),
        };
        if intermediates.is_empty() && acceptable {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Appends `datagram` to `out` as one frame. `false` (and nothing appended) when it is larger
/// than a frame holds.
pub fn push_frame(out: &mut Vec<u8>, datagram: &[u8]) -> bool {
    let Ok(len) = u16::try_from(datagram.len()) else {
        return false;
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    true
}

/// Splits back-to-back frames; stops at the first incomplete one (there is none in what a
/// reader hands over).
pub fn frames(bytes: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let (header, tail) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*header));
        let (frame, after) = tail.split_at_checked(len)?;
        rest = after;
        Some(frame)
    })
}

/// Reads one frame into `buf` (at least [`MAX_FRAME`] long) and returns its length; `None`
/// at a clean end of the stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    let mut header = [0u8; FRAME_HEADER];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(u16::from_be_bytes(header));
    let slot = buf
        .get_mut(..len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame buffer too small"))?;
    reader.read_exact(slot).await?;
    Ok(Some(len))
}

/// Writes `bytes` (whole frames) and flushes.
pub async fn write_frames<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Reads one frame, and then the frames already buffered behind it, into one batch of about
/// `limit` bytes at most (one frame may exceed it): what arrived together is handed on
/// together. `None` at a clean end of the stream between frames. Frames are read straight
/// into the batch, which grows only as far as they need: an idle connection holds no frame
/// buffer.
pub async fn read_batch<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    limit: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut batch = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && batch.is_empty() => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        let start = batch.len();
        batch.extend_from_slice(&header);
        batch.resize(
            start + FRAME_HEADER + usize::from(u16::from_be_bytes(header)),
            0,
        );
        reader
            .read_exact(&mut batch[start + FRAME_HEADER..])
            .await?;
        if batch.len() >= limit || reader.buffer().is_empty() {
            return Ok(Some(batch));
        }
    }
}

/// Writes what `queued` brings (whole frames) until it closes or a write fails; what is
/// already queued goes in the same write, up to about `limit` bytes.
pub async fn write_queued<W: AsyncWrite + Unpin>(
    writer: &mut W,
    queued: &mut mpsc::Receiver<Vec<u8>>,
    limit: usize,
) -> io::Result<()> {
    // Grown by the first writes, not up front: an idle connection holds little.
    let mut pending = Vec::new();
    while let Some(frame) = queued.recv().await {
        pending.clear();
        pending.extend_from_slice(&frame);
        while pending.len() < limit {
            match queued.try_recv() {
                Ok(more) => pending.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        write_frames(writer, &pending).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::duplex;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A TLS session over an in-memory pipe between a server with `server_key` and a client
    /// pinning `pinned`; the frames the client sent as the server read them, or the error.
    fn session(server_key: u8, pinned: [u8; 32], frames: &[&[u8]]) -> io::Result<Vec<Vec<u8>>> {
        let server = SigningKey::from_bytes(&[server_key; 32]);
        let acceptor = TlsAcceptor::from(server_config(&server).unwrap());
        let connector = TlsConnector::from(client_config(Some(pinned)).unwrap());
        let mut bytes = Vec::new();
        for f in frames {
            assert!(push_frame(&mut bytes, f));
        }
        rt().block_on(async move {
            let (a, b) = duplex(1 << 16);
            let serve = async move {
                let mut tls = acceptor.accept(b).await?;
                let mut buf = vec![0u8; MAX_FRAME];
                let mut got = Vec::new();
                while let Some(n) = read_frame(&mut tls, &mut buf).await? {
                    got.push(buf[..n].to_vec());
                }
                Ok::<_, io::Error>(got)
            };
            let client = async move {
                let mut tls = connector.connect(server_name(), a).await?;
                write_frames(&mut tls, &bytes).await?;
                tokio::io::AsyncWriteExt::shutdown(&mut tls).await?;
                Ok::<_, io::Error>(())
            };
            let limit = Duration::from_secs(10);
            let (served, sent) = tokio::time::timeout(limit, async { tokio::join!(serve, client) })
                .await
                .expect("the session ends");
            sent?;
            served
        })
    }

    #[test]
    fn a_node_reaches_the_rendezvous_it_pinned_and_frames_cross_intact() {
        let rendezvous = SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes();
        let big = vec![0xab; MAX_FRAME];
        let got = session(7, rendezvous, &[b"register", b"", &big]).unwrap();
        assert_eq!(got, vec![b"register".to_vec(), Vec::new(), big]);
    }

    #[test]
    fn a_server_with_another_key_is_refused_in_the_handshake() {
        let pinned = SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes();
        let err = session(8, pinned, &[b"register"]).unwrap_err();
        assert!(
            err.to_string().contains("certificate") || err.to_string().contains("Certificate"),
            "{err}"
        );
    }

    #[test]
    fn frames_split_back_to_back_and_stop_at_a_truncated_one() {
        let mut bytes = Vec::new();
        push_frame(&mut bytes, b"one");
        push_frame(&mut bytes, b"");
        push_frame(&mut bytes, b"three");
        let mut truncated = bytes.clone();
        truncated.extend_from_slice(&[0, 9, b'x']);
        let want: Vec<&[u8]> = vec![b"one", b"", b"three"];
        assert_eq!(frames(&bytes).collect::<Vec<_>>(), want);
        assert_eq!(frames(&truncated).collect::<Vec<_>>(), want);
    }

    #[test]
    fn frames_larger_than_two_bytes_count_are_not_written() {
        let mut out = Vec::new();
        assert!(!push_frame(&mut out, &vec![0; MAX_FRAME + 1]));
        assert!(out.is_empty());
    }
}
