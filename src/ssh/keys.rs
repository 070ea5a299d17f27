//! Keys of a job's SSH server: its own host key (one per job, kept in the job's work dir so that
//! a restarted server keeps its identity) and the one client key it accepts (the job's public-key
//! record, as IMS puts it in the job container's authorized_keys).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context as _, Result};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding};
use russh::keys::{PrivateKey, PublicKey};

/// The job's host key at `path`, created (mode 0600) the first time.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey> {
    if path.exists() {
        return PrivateKey::read_openssh_file(path)
            .with_context(|| format!("failed to read host key {}", path.display()));
    }
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("failed to read random bytes from /dev/urandom")?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let pem = key
        .to_openssh(LineEnding::LF)
        .context("failed to encode the host key")?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("failed to create host key {}", tmp.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write host key {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("failed to rename {} to {}", tmp.display(), path.display()))?;
    Ok(key)
}

/// Parse a public-key record's `public_key` ("ssh-rsa AAAA… comment", as in authorized_keys).
pub fn parse_authorized_key(text: &str) -> Result<PublicKey> {
    let line = text.trim();
    parse_public_key_line(line).map_err(|why| {
        let shown: String = line.chars().take(40).collect();
        anyhow::anyhow!(
            "the public key record does not hold an OpenSSH public key ('{shown}…'): {why}"
        )
    })
}

/// The one parser of OpenSSH public key lines (`TYPE BASE64 [COMMENT]`): what `public-keys
/// create` accepts is exactly what the server can check a login against.
pub fn parse_public_key_line(line: &str) -> std::result::Result<PublicKey, String> {
    PublicKey::from_openssh(line.trim()).map_err(|e| e.to_string())
}

/// Whether `offered` is the accepted key (same algorithm and key material; comments differ).
pub fn same_key(offered: &PublicKey, accepted: &PublicKey) -> bool {
    offered.key_data() == accepted.key_data()
}

/// "SHA256:…", as ssh-keygen -l and ssh's host-key prompts print it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCl50gK4l9uupxC2KHxMpTNxPTJbnwEdWy1jst5W5LqJx9fdTrc9uNJ33HAq+WIOhPVGbLm2N4GX1WTUQ4+wVOSmmBBJnlu/l5rmO9lEGT6U8lKG8dA9c7qhguGHy7M7WBgdW/gWA16gwE/u8Qc2fycFERRKmFucL/Er9wA0/Qvz7/U59yO+HOtk5hvEz/AUkvaaoY0IVBfdNBCl59CIdZHxDzgXlXzd9PAlrXZNO8jDD3jyFAOvMMRG7py78zj2NUngvsWYoBcV3FcREZJU529uJ0Au8Vn9DRADyB4QQS2o+fa6hG9i2SzfY8L6vAVvSE7A2ILAsVruw1Zeiec2IWt";

    #[test]
    fn host_key_is_created_private_and_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ssh/host_ed25519_key");
        let first = load_or_create_host_key(&path).expect("create");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_host_key(&path).expect("reload");
        assert_eq!(
            fingerprint(first.public_key()),
            fingerprint(again.public_key())
        );
    }

    #[test]
    fn the_seed_key_parses_and_matches_itself_whatever_its_comment() {
        let a = parse_authorized_key(&format!("{RSA} user@host\n")).expect("parse");
        let b = parse_authorized_key(RSA).expect("parse");
        assert!(same_key(&a, &b));
        assert!(fingerprint(&a).starts_with("SHA256:"));
        let other = load_or_create_host_key(&tempfile::tempdir().expect("t").path().join("k"))
            .expect("key");
        assert!(!same_key(other.public_key(), &a));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = parse_authorized_key("not a key").expect_err("garbage");
        assert!(format!("{err:#}").contains("does not hold an OpenSSH public key"));
    }
}
