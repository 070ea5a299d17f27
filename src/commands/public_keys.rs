//! `imsctl public-keys create|list|describe|delete` (as `cray ims public-keys`).

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::cli::PublicKeysCommand;
use imsctl::output::{render_list, render_one};
use imsctl::store::{Error, PublicKeyRecord, RecordKind, Store};

pub fn run(store: &Store, cmd: &PublicKeysCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let text = match cmd {
        PublicKeysCommand::Create(args) => {
            let key = read_public_key_file(&args.public_key)?;
            let record = PublicKeyRecord::new(&args.name, key);
            store.insert(&record)?;
            render_one(&record, args.format.format)?
        }
        PublicKeysCommand::List(args) => {
            render_list(&store.list::<PublicKeyRecord>()?, args.format)?
        }
        PublicKeysCommand::Describe(args) => {
            render_one(&store.get::<PublicKeyRecord>(&args.id)?, args.format.format)?
        }
        PublicKeysCommand::Delete(args) => {
            store.remove::<PublicKeyRecord>(Store::parse_id(RecordKind::PublicKey, &args.id)?)?;
            String::new()
        }
    };
    out.write_all(text.as_bytes())
        .context("failed to write the output")?;
    Ok(())
}

/// Read an OpenSSH public key file: exactly one key line `TYPE BASE64 [COMMENT]` whose base64
/// blob starts with the same type name. Returns the line, trimmed. Errors name the file.
pub fn read_public_key_file(path: &Path) -> imsctl::store::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io("read the public key file", path, e))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let invalid = |why: String| {
        Error::Invalid(format!(
            "{}: not an OpenSSH public key: {why}",
            path.display()
        ))
    };
    let line = match lines.as_slice() {
        [line] => *line,
        [] => return Err(invalid("the file is empty".into())),
        many => {
            return Err(invalid(format!(
                "{} keys in one file; give one",
                many.len()
            )));
        }
    };
    imsctl::ssh::keys::parse_public_key_line(line).map_err(invalid)?;
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{FormatArg, IdArg, IdFormatArgs, OutputFormat, PublicKeyCreateArgs};

    /// A real ed25519 public key (ssh-keygen output).
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKH6Cx5KoFqamOL4Fn7bbSst/1VANbPjryAiv0ds1FMq user@host";

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn accepts_real_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "id.pub", &format!("{ED25519}\n"));
        assert_eq!(read_public_key_file(&path).expect("valid"), ED25519);
        // Cross-check with ssh-keygen when installed: every key it makes is accepted.
        for kind in ["rsa", "ecdsa", "ed25519"] {
            let key = dir.path().join(format!("k-{kind}"));
            let made = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-C", "test key", "-f"])
                .arg(&key)
                .status();
            let Ok(status) = made else {
                imsctl_testkit::not_run!("ssh-keygen not installed: cross-check skipped");
                return;
            };
            assert!(status.success());
            let line = read_public_key_file(&key.with_extension("pub")).expect(kind);
            assert!(line.ends_with("test key"), "{line}");
            // The private key is refused, and the message names the file.
            let err = read_public_key_file(&key)
                .expect_err("private key")
                .to_string();
            assert!(err.contains(&key.display().to_string()), "{err}");
        }
    }

    #[test]
    fn refuses_bad_files_naming_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("empty.pub", ""),
            ("two.pub", &*format!("{ED25519}\n{ED25519}\n")),
            ("type.pub", "ssh-foo AAAA x"),
            ("nob64.pub", "ssh-ed25519"),
            ("badb64.pub", "ssh-ed25519 AAAA!!!!"),
            // Valid base64 of an rsa blob under an ed25519 label.
            (
                "mismatch.pub",
                "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ== x",
            ),
        ];
        for (name, text) in cases {
            let path = write(dir.path(), name, text);
            let err = read_public_key_file(&path).expect_err(name).to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
        let err = read_public_key_file(&dir.path().join("none.pub"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("none.pub"), "{err}");
    }

    #[test]
    fn create_list_describe_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("store");
        let key_file = write(dir.path(), "id.pub", ED25519);
        let mut out = Vec::new();
        let create = PublicKeysCommand::Create(PublicKeyCreateArgs {
            name: "username public key".into(),
            public_key: key_file,
            format: FormatArg {
                format: OutputFormat::Json,
            },
        });
        run(&store, &create, &mut out).expect("create");
        let created: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(created["public_key"], ED25519);
        assert_eq!(created["name"], "username public key");
        let id = created["id"].as_str().expect("id").to_string();

        let mut out = Vec::new();
        run(
            &store,
            &PublicKeysCommand::List(FormatArg::default()),
            &mut out,
        )
        .expect("list");
        let listed: toml::Table =
            toml::from_str(std::str::from_utf8(&out).expect("utf8")).expect("toml");
        let results = listed["results"].as_array().expect("results");
        assert_eq!(results.len(), 1);
        assert_eq!(results[0]["id"].as_str(), Some(id.as_str()));

        let mut out = Vec::new();
        let describe = PublicKeysCommand::Describe(IdFormatArgs {
            id: id.clone(),
            format: FormatArg::default(),
        });
        run(&store, &describe, &mut out).expect("describe");
        assert!(
            std::str::from_utf8(&out)
                .expect("utf8")
                .starts_with("public_key = \"ssh-ed25519 ")
        );

        run(
            &store,
            &PublicKeysCommand::Delete(IdArg { id: id.clone() }),
            &mut Vec::new(),
        )
        .expect("delete");
        let err = run(&store, &describe, &mut Vec::new()).expect_err("deleted");
        assert_eq!(format!("{err:#}"), format!("no public key with id {id}"));
        let err = run(
            &store,
            &PublicKeysCommand::Delete(IdArg { id: "nope".into() }),
            &mut Vec::new(),
        )
        .expect_err("bad id");
        assert_eq!(
            err.to_string(),
            "invalid public key id \"nope\": not a UUID"
        );
    }
}
