//! Rendering records for people and scripts: `--format toml` (the default, as `cray ims` has it)
//! and `--format json`.
//!
//! JSON output is stable for scripts: keys sorted, 4-space indent, non-ASCII escaped — byte for
//! byte what Python's `json.dumps(obj, sort_keys=True, indent=4)` prints, the way IMS and
//! ims_python_helper write JSON. A list is a JSON array. Unset optional fields are absent.
//! TOML keeps the field order of IMS's examples; a list is a `[[results]]` array of tables.

use std::io;

use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

/// How records are printed: `--format toml` (the default, as `cray ims` has it) or `json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Toml,
    Json,
}

/// Errors rendering a value (only a record that cannot be expressed at all fails). The cause
/// is part of the message, not also a `source()`: printed once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot render as JSON: {0}")]
    Json(serde_json::Error),
    #[error("cannot render as TOML: {0}")]
    Toml(toml::ser::Error),
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e)
    }
}

impl From<toml::ser::Error> for Error {
    fn from(e: toml::ser::Error) -> Self {
        Error::Toml(e)
    }
}

pub use imsctl_squashfs::names::{escape_bytes, escape_controls};

/// An error as the user reads it: the message and its chain of causes joined by ": ", a
/// cause whose text the message already holds left out (an error type that prints its source
/// itself must not get it printed twice), control characters escaped.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    escape_controls(&text).into_owned()
}

/// JSON exactly as Python's `json.dumps(value, sort_keys=True, indent=4)` writes it (no
/// trailing newline). Used for manifest.json and for every `--format json` output.
pub fn python_json<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    // A Value's maps are BTreeMaps: serialising through it sorts every object's keys
    // (by code point, as Python does).
    let value = serde_json::to_value(value)?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter::new());
    value.serialize(&mut ser)?;
    // Only ASCII is ever written, so this cannot fail; map it anyway rather than panic.
    String::from_utf8(out).map_err(|e| Error::Json(serde_json::Error::io(io::Error::other(e))))
}

/// One record, as `describe` prints it.
pub fn render_one<T: Serialize>(value: &T, format: OutputFormat) -> Result<String, Error> {
    match format {
        OutputFormat::Json => Ok(python_json(value)? + "\n"),
        OutputFormat::Toml => to_toml(value),
    }
}

/// A list of records, as `list` prints it.
pub fn render_list<T: Serialize>(values: &[T], format: OutputFormat) -> Result<String, Error> {
    #[derive(Serialize)]
    struct Results<'a, T> {
        results: &'a [T],
    }
    match format {
        OutputFormat::Json => Ok(python_json(values)? + "\n"),
        OutputFormat::Toml => to_toml(&Results { results: values }),
    }
}

/// TOML in the value's own field order. TOML has no null: a record carrying one (in a field only
/// a newer imsctl knows) is rendered from its JSON form with the nulls dropped, keys then sorted.
fn to_toml<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    match toml::to_string(value) {
        Ok(text) => Ok(text),
        Err(_) => {
            let mut json = serde_json::to_value(value)?;
            drop_nulls(&mut json);
            Ok(toml::to_string(&json)?)
        }
    }
}

fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => {
            items.retain(|v| !v.is_null());
            items.iter_mut().for_each(drop_nulls);
        }
        _ => {}
    }
}

/// serde_json's pretty printer with a 4-space indent that escapes every non-ASCII character (and
/// DEL) as `\uXXXX`, like Python's default `ensure_ascii=True`.
struct PythonFormatter {
    pretty: PrettyFormatter<'static>,
}

impl PythonFormatter {
    fn new() -> Self {
        PythonFormatter {
            pretty: PrettyFormatter::with_indent(b"    "),
        }
    }
}

impl Formatter for PythonFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (at, ch) in fragment.char_indices() {
            if ch.is_ascii() && ch != '\u{7f}' {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..at])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = at + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.begin_array(writer)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.end_array(writer)
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.pretty.begin_array_value(writer, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.end_array_value(writer)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.begin_object(writer)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.end_object(writer)
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.pretty.begin_object_key(writer, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.begin_object_value(writer)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.end_object_value(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_prints_once() {
        let enoent = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let errors: Vec<anyhow::Error> = vec![
            crate::squashfs::Error::io("open", "/x.sqsh", enoent()).into(),
            crate::archive::Error::io("open archive", "/x.tar", enoent()).into(),
            crate::archive::Error::sink(
                b"etc/x",
                crate::squashfs::Error::io("read", "etc/x", enoent()),
            )
            .into(),
            crate::store::Error::io("read", "/store/x", enoent()).into(),
            crate::s3::Error::io("read", "/x", enoent()).into(),
            crate::sandbox::Error::io("mount", "/x", enoent()).into(),
            anyhow::Error::new(enoent()).context("failed to open /x"),
            anyhow::Error::from(crate::squashfs::Error::io("open", "/x.sqsh", enoent()))
                .context("failed to import /x.sqsh"),
        ];
        for e in errors {
            let text = error_text(&e);
            assert_eq!(
                text.matches("No such file or directory (os error 2)")
                    .count(),
                1,
                "{text}"
            );
            // The types no longer hand the cause to the chain as well.
            assert_eq!(format!("{e:#}").matches("(os error 2)").count(), 1, "{e:#}");
        }
    }

    #[test]
    fn sandbox_errors_holding_others_print_each_cause_once() {
        let enoent = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let populate = || crate::sandbox::Error::Populate {
            path: "/work/root".into(),
            source: Box::new(crate::squashfs::Error::io("open", "/base.sqsh", enoent())),
        };
        let text = error_text(&populate().into());
        assert_eq!(
            text,
            "failed to populate image root /work/root: failed to open /base.sqsh: \
             No such file or directory (os error 2)"
        );
        let both = crate::sandbox::Error::Both {
            run: Box::new(populate()),
            cleanup: Box::new(crate::sandbox::Error::io("unmount", "/work/root", enoent())),
        };
        let text = error_text(&both.into());
        assert_eq!(
            text.matches("(os error 2)").count(),
            2,
            "one per failure: {text}"
        );
        assert!(
            text.contains("/base.sqsh") && text.contains("unmount"),
            "{text}"
        );
    }

    #[test]
    fn a_name_with_a_newline_or_escape_is_escaped_in_an_error() {
        let e: anyhow::Error =
            crate::archive::Error::member(b"evil\n\x1b[2Jname", "path escapes the image root")
                .into();
        assert_eq!(
            error_text(&e),
            "tar member 'evil\\n\\x1b[2Jname': path escapes the image root"
        );
    }

    #[test]
    fn the_writer_names_an_entry_once() {
        let e: anyhow::Error = crate::archive::Error::sink(
            b"etc/big",
            crate::squashfs::Error::bad_entry(b"etc/big", "xattr 'user.huge' is too big"),
        )
        .into();
        assert_eq!(
            error_text(&e),
            "cannot add 'etc/big' to the image: xattr 'user.huge' is too big"
        );
    }
    use crate::store::{Arch, ImageRecord, Link, PublicKeyRecord, Timestamp};

    fn image() -> ImageRecord {
        let mut rec = ImageRecord::new(
            "sles_15_image.squashfs",
            Arch::X86_64,
            Some(Link {
                link_type: "s3".into(),
                path: "/4e78/sles_15_image.squashfs".into(),
                etag: String::new(),
            }),
        );
        rec.id = uuid::Uuid::parse_str("4e78488d-4d92-4675-9d83-97adfc17cb19").expect("uuid");
        rec.created = Timestamp::parse("2018-12-04T17:25:52.482514+00:00").expect("time");
        rec
    }

    #[test]
    fn python_json_matches_python_byte_for_byte() {
        // Expected text produced by: python3 -c 'import json; print(json.dumps({"b": [1, {}, []],
        //   "a": "caf\u00e9 \U0001f600 \x7f", "c": {"z": None, "y": True}}, sort_keys=True, indent=4), end="")'
        let value = serde_json::json!({"b": [1, {}, []], "a": "café 😀 \u{7f}", "c": {"z": null, "y": true}});
        let expected = "{\n    \"a\": \"caf\\u00e9 \\ud83d\\ude00 \\u007f\",\n    \"b\": [\n        1,\n        {},\n        []\n    ],\n    \"c\": {\n        \"y\": true,\n        \"z\": null\n    }\n}";
        assert_eq!(python_json(&value).expect("render"), expected);
    }

    #[test]
    fn python_json_agrees_with_python_when_available() {
        let value =
            serde_json::json!({"zeta": "ü\n\t\"q\"", "alpha": [1, 2.5, -3], "m": {"k": false}});
        let ours = python_json(&value).expect("render");
        let script = "import json,sys; print(json.dumps(json.load(sys.stdin), sort_keys=True, indent=4), end='')";
        let child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            imsctl_testkit::not_run!("python3 not installed: cross-check skipped");
            return;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(value.to_string().as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("python3");
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).expect("utf8"), ours);
    }

    #[test]
    fn toml_list_matches_cray_ims_shape() {
        let text = render_list(&[image()], OutputFormat::Toml).expect("render");
        let expected = "[[results]]\ncreated = \"2018-12-04T17:25:52.482514+00:00\"\nid = \"4e78488d-4d92-4675-9d83-97adfc17cb19\"\nname = \"sles_15_image.squashfs\"\narch = \"x86_64\"\n\n[results.link]\ntype = \"s3\"\npath = \"/4e78/sles_15_image.squashfs\"\netag = \"\"\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn toml_public_key_in_ims_order() {
        let mut key = PublicKeyRecord::new("username public key", "ssh-rsa AAAAB3NzaC1yc2EA");
        key.created = Timestamp::parse("2018-11-21T17:19:07.830000+00:00").expect("time");
        let text = render_one(&key, OutputFormat::Toml).expect("render");
        let keys: Vec<&str> = text.lines().filter_map(|l| l.split(" = ").next()).collect();
        assert_eq!(keys, ["public_key", "id", "name", "created"]);
    }

    #[test]
    fn json_list_is_a_sorted_array() {
        let text = render_list(&[image()], OutputFormat::Json).expect("render");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert!(parsed.is_array());
        assert_eq!(parsed[0]["link"]["type"], "s3");
        let created = text.find("\"created\"").expect("created");
        let name = text.find("\"name\"").expect("name");
        let arch = text.find("\"arch\"").expect("arch");
        assert!(arch < created && created < name, "keys not sorted:\n{text}");
        assert_eq!(
            render_list::<ImageRecord>(&[], OutputFormat::Json).expect("empty"),
            "[]\n"
        );
    }

    #[test]
    fn toml_survives_nulls_in_unknown_fields() {
        let mut rec = image();
        rec.extra
            .insert("future".into(), serde_json::json!({"a": null, "b": 1}));
        rec.extra.insert("gone".into(), serde_json::Value::Null);
        let text = render_one(&rec, OutputFormat::Toml).expect("render");
        let back: toml::Table = toml::from_str(&text).expect("valid toml");
        assert_eq!(back["future"]["b"].as_integer(), Some(1));
        assert!(!back.contains_key("gone"));
        assert_eq!(back["name"].as_str(), Some("sles_15_image.squashfs"));
    }

    #[test]
    fn toml_job_with_containers_matches_ims_layout() {
        use crate::store::{JobRecord, JobStatus, RootMode, SshContainer};
        let mut job =
            JobRecord::new_customize(uuid::Uuid::new_v4(), "my_customized_image", Arch::X86_64);
        job.status = JobStatus::WaitingOnUser;
        job.mode = Some(RootMode::Mount);
        job.error_message = Some("none".into());
        let mut info = std::collections::BTreeMap::new();
        info.insert(
            "cluster.local".to_string(),
            serde_json::json!({"host": "h", "port": 22}),
        );
        job.ssh_containers.push(SshContainer {
            status: "pending".into(),
            jail: false,
            name: "customize".into(),
            connection_info: info,
            extra: Default::default(),
        });
        let text = render_one(&job, OutputFormat::Toml).expect("render");
        assert!(
            text.starts_with("status = \"waiting_on_user\"\nenable_debug = false\n"),
            "{text}"
        );
        // Plain values (even the imsctl-only ones declared last) come before the tables.
        let tables = text.find("[[ssh_containers]]").expect("containers");
        assert!(
            text.find("mode = \"mount\"").expect("mode") < tables,
            "{text}"
        );
        assert!(
            text.contains(
                "[[ssh_containers]]\nstatus = \"pending\"\njail = false\nname = \"customize\"\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "[ssh_containers.connection_info.\"cluster.local\"]\nhost = \"h\"\nport = 22\n"
            ),
            "{text}"
        );
        let back: JobRecord = toml::from_str(&text).expect("toml reads back");
        assert_eq!(back, job);
    }
}
