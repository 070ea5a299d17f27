//! What a job's SSH server offers: the algorithm set of ssh-audit's hardening guides and
//! OpenSSH 9.9+'s defaults, as far as russh implements it, and public-key authentication only.
//!
//! - Key exchange: mlkem768x25519-sha256 (post-quantum hybrid, OpenSSH 10's default), then
//!   curve25519-sha256 (and its @libssh.org name) for clients before OpenSSH 9.9. No finite-
//!   field Diffie-Hellman (group14 is 2048-bit; all of them are what DHEat makes expensive), no
//!   NIST curves, nothing SHA-1. (russh has no sntrup761x25519.)
//! - Host key: the job's ssh-ed25519.
//! - Ciphers: chacha20-poly1305, AES-GCM, AES-CTR. MACs: encrypt-then-MAC SHA-2 only (the GCM
//!   and chacha20 ciphers carry their own). Strict key exchange (Terrapin) is on.
//! - Compression: none or zlib@openssh.com, which starts after authentication (sshd has not
//!   offered pre-authentication zlib since 7.4).
//! - User keys: signatures of ssh-ed25519, ECDSA and RSA with SHA-2, as OpenSSH's
//!   PubkeyAcceptedAlgorithms; not RSA with SHA-1 (ssh-rsa), refused since OpenSSH 8.8.

use std::borrow::Cow;
use std::time::Duration;

use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey};
use russh::server::Config;
use russh::{MethodKind, MethodSet, Preferred, cipher, compression, kex, mac};

const KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    // Pseudo-algorithms: RFC 8308 extensions (server-sig-algs) and strict key exchange.
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

const MACS: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];

const COMPRESSION: &[compression::Name] = &[compression::NONE, compression::ZLIB_LEGACY];

/// Host-key algorithms (only those of the keys the server has are offered) and the
/// signature algorithms accepted from users (sent as server-sig-algs).
const KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// Authentication attempts per connection [MaxAuthTries].
const MAX_AUTH_TRIES: usize = 6;

pub fn preferred() -> Preferred {
    Preferred {
        kex: Cow::Borrowed(KEX),
        key: Cow::Borrowed(KEYS),
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Borrowed(CIPHERS),
        mac: Cow::Borrowed(MACS),
        compression: Cow::Borrowed(COMPRESSION),
    }
}

/// The only authentication method offered, and listed after a refusal.
pub fn methods() -> MethodSet {
    MethodSet::from(&[MethodKind::PublicKey][..])
}

/// Whether a user's signature of this algorithm is accepted.
pub fn accepts_signature(algorithm: &Algorithm) -> bool {
    KEYS.contains(algorithm)
}

/// The russh configuration of a job's server.
pub fn server_config(host_key: PrivateKey) -> Config {
    Config {
        keys: vec![host_key],
        methods: methods(),
        preferred: preferred(),
        max_auth_attempts: MAX_AUTH_TRIES,
        // The login grace time bounds a connection until it authenticates (see
        // `throttle::Limits`); after that a session may stay idle, as with sshd.
        inactivity_timeout: None,
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_weak_is_offered() {
        let p = preferred();
        let names = |v: Vec<&str>| v.join(",");
        let kex = names(p.kex.iter().map(AsRef::as_ref).collect());
        assert!(!kex.contains("diffie-hellman"), "{kex}");
        assert!(!kex.contains("nistp"), "{kex}");
        assert!(kex.starts_with("mlkem768x25519-sha256,curve25519-sha256"));
        assert!(
            p.mac
                .iter()
                .all(|m| m.as_ref().ends_with("-etm@openssh.com"))
        );
        assert!(p.cipher.iter().all(|c| !c.as_ref().contains("cbc")));
        assert!(!p.compression.iter().any(|c| c.as_ref() == "zlib"));
        assert!(!accepts_signature(&Algorithm::Rsa { hash: None }));
        assert!(accepts_signature(&Algorithm::Rsa {
            hash: Some(HashAlg::Sha256)
        }));
        assert!(accepts_signature(&Algorithm::Ed25519));
    }

    #[test]
    fn only_publickey_is_listed() {
        let listed: Vec<MethodKind> = methods().iter().copied().collect();
        assert_eq!(listed, vec![MethodKind::PublicKey]);
    }
}
