//! What each fuzz target does with its input, written once and compiled twice: by the fuzz
//! crate (`fuzz/`, for cargo-fuzz) and by the integration tests (`tests/it/fuzz.rs`), which
//! replay the inputs the fuzzer found (`testdata/fuzz/regressions/`) and the seed corpus.
//!
//! Each function takes the raw input and drives the library the way a user's file reaches it.
//! A clean refusal is an `Err` with the library's message; a panic, an abort or unbounded
//! memory is the bug a fuzzer looks for. Where the library's own output must read back (an
//! image our writer made, a record the store writes), a failure to do so is a panic here, so
//! the fuzzer reports it too.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Cursor, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use imsctl::archive::{TarOptions, decompressing, tar_into};
use imsctl::artifacts::Manifest;
use imsctl::output::{python_json, render_one};
use imsctl::squashfs::from_image::copy_image_into;
use imsctl::squashfs::listing::{Names, list_with};
use imsctl::squashfs::reader::{Image, InodeKind};
use imsctl::squashfs::writer::{Writer, WriterOptions};
use imsctl::squashfs::{Algorithm, EntrySink, Meta, Special};
use imsctl::store::records::Record;
use imsctl::store::{
    ImageRecord, JobRecord, PublicKeyRecord, StoreConfig, Timestamp, parse_record,
};

/// File content read per image at most: a sparse file may legitimately stand for terabytes of
/// zeros, and reading them all says nothing more about the parser than reading the first MiBs.
const CONTENT_BUDGET: u64 = 64 << 20;
/// Inodes looked up through the export table at most.
const EXPORT_LOOKUPS: u32 = 256;

/// A file that lives in memory only (memfd), reachable by a path for the APIs that open one.
/// Closed, and gone, when dropped: nothing is left behind, whatever the fuzzer kills.
pub struct Scratch {
    file: File,
    path: PathBuf,
}

impl Scratch {
    pub fn new(contents: &[u8]) -> Scratch {
        let name = c"imsctl-fuzz";
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: fd is a new descriptor that nothing else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(contents).expect("write to memfd");
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Scratch { file, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A sink that keeps nothing: reads each file's content (within [`CONTENT_BUDGET`]), as
/// `imsctl convert` and `extract` read it, and checks each symlink target and xattr is there.
struct Discard {
    content_left: u64,
}

impl Discard {
    fn check_meta(meta: &Meta) {
        for x in &meta.xattrs {
            assert!(!x.name.is_empty(), "an xattr with an empty name came back");
        }
    }
}

impl EntrySink for Discard {
    fn set_root_meta(&mut self, meta: Meta) -> imsctl::squashfs::Result<()> {
        Self::check_meta(&meta);
        Ok(())
    }
    fn add_dir(&mut self, _path: &[u8], meta: Meta) -> imsctl::squashfs::Result<()> {
        Self::check_meta(&meta);
        Ok(())
    }
    fn add_file(
        &mut self,
        path: &[u8],
        meta: Meta,
        data: &mut dyn Read,
    ) -> imsctl::squashfs::Result<()> {
        Self::check_meta(&meta);
        let copied = io::copy(&mut data.take(self.content_left), &mut io::sink())
            .map_err(|e| imsctl::squashfs::Error::bad_entry(path, e.to_string()))?;
        self.content_left -= copied;
        Ok(())
    }
    fn add_symlink(
        &mut self,
        _path: &[u8],
        meta: Meta,
        target: &[u8],
    ) -> imsctl::squashfs::Result<()> {
        Self::check_meta(&meta);
        assert!(
            !target.is_empty(),
            "a symlink with an empty target came back"
        );
        Ok(())
    }
    fn add_special(
        &mut self,
        _path: &[u8],
        meta: Meta,
        _kind: Special,
    ) -> imsctl::squashfs::Result<()> {
        Self::check_meta(&meta);
        Ok(())
    }
    fn add_hardlink(&mut self, _path: &[u8], _target: &[u8]) -> imsctl::squashfs::Result<()> {
        Ok(())
    }
}

/// Target `squashfs_reader`: what `imsctl ls`, `extract` and `convert` do with an image, minus
/// the writing: open it, list every entry, read every file, symlink and xattr, and look inodes
/// up through the export table and the directory indexes.
pub fn squashfs_image(bytes: &[u8]) -> Result<(), String> {
    let scratch = Scratch::new(bytes);
    read_image(scratch.path())
}

/// Everything [`squashfs_image`] does, on an image file already in place.
pub fn read_image(path: &Path) -> Result<(), String> {
    let image = Image::open(path).map_err(|e| e.to_string())?;
    list_with(&image, &mut io::sink(), Names::Escaped).map_err(|e| e.to_string())?;
    let mut sink = Discard {
        content_left: CONTENT_BUDGET,
    };
    copy_image_into(&image, &mut sink).map_err(|e| e.to_string())?;
    image
        .walk(&mut |_, inode| {
            if let InodeKind::Dir(_) = inode.kind {
                image.dir_index(inode)?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    if image.has_export_table() {
        let count = image.superblock().inode_count.min(EXPORT_LOOKUPS);
        for number in 1..=count {
            image.inode_by_number(number).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Writer settings for the tar target: small blocks (more block and fragment paths from small
/// inputs), the fastest level, one compression thread.
fn small_writer_options() -> WriterOptions {
    let mut opts = WriterOptions::new(Algorithm::Gzip, Some(1), 4096).expect("valid options");
    opts.threads = 1;
    opts
}

/// Target `tar_source`: what `imsctl convert x.tar y.sqsh` (and `images import`) do: sniff the
/// compression, convert the tar stream into a SquashFS image in one pass; then the image must
/// read back whole, since the writer accepted every entry.
pub fn tar_to_squashfs(bytes: &[u8]) -> Result<(), String> {
    let input = Cursor::new(bytes.to_vec());
    let mut tar = decompressing(input, Path::new("fuzz.tar")).map_err(|e| e.to_string())?;
    let out = Scratch::new(&[]);
    let mut writer =
        Writer::create(out.path(), small_writer_options()).map_err(|e| e.to_string())?;
    tar_into(&mut tar, &mut writer, &TarOptions::default()).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    if let Err(e) = read_image(out.path()) {
        panic!("the image written from an accepted tar does not read back: {e}");
    }
    Ok(())
}

/// The kinds of text the records target feeds, chosen by the input's first byte.
#[derive(Clone, Copy, Debug)]
pub enum RecordInput {
    Image,
    Job,
    PublicKey,
    Manifest,
    Timestamp,
    StoreConfig,
}

impl RecordInput {
    pub const ALL: [RecordInput; 6] = [
        RecordInput::Image,
        RecordInput::Job,
        RecordInput::PublicKey,
        RecordInput::Manifest,
        RecordInput::Timestamp,
        RecordInput::StoreConfig,
    ];

    /// The byte that selects this kind in a records input.
    pub fn tag(self) -> u8 {
        self as u8
    }
}

/// Target `records`: the first byte picks what the rest is: a JSON image, job or public-key
/// record as the store reads it, a manifest.json, an IMS timestamp, or the store's config.toml.
pub fn records(input: &[u8]) -> Result<(), String> {
    let Some((&tag, text)) = input.split_first() else {
        return Ok(());
    };
    match RecordInput::ALL[usize::from(tag) % RecordInput::ALL.len()] {
        RecordInput::Image => record::<ImageRecord>(text),
        RecordInput::Job => record::<JobRecord>(text),
        RecordInput::PublicKey => record::<PublicKeyRecord>(text),
        RecordInput::Manifest => manifest(text),
        RecordInput::Timestamp => timestamp(text),
        RecordInput::StoreConfig => store_config(text),
    }
}

/// A record as the store reads it (`<id>.json`, the id taken from the record itself so that
/// the name check passes); then what the store writes back (`update`) must read back equal, and
/// rendering it for `describe` (JSON and TOML) must not panic.
fn record<R: Record + PartialEq + std::fmt::Debug>(text: &[u8]) -> Result<(), String> {
    let id = serde_json::from_slice::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("id")?.as_str()?.parse().ok())
        .unwrap_or_default();
    let path = Path::new("/store/records/fuzz.json");
    let parsed: R = parse_record(path, text, id).map_err(|e| e.to_string())?;
    // What Store::write_record writes.
    let mut written = serde_json::to_vec_pretty(&parsed).expect("a record read serializes");
    written.push(b'\n');
    let again: R = match parse_record(path, &written, parsed.id()) {
        Ok(r) => r,
        Err(e) => panic!(
            "a record the store wrote does not read back: {e}\n{}",
            String::from_utf8_lossy(&written)
        ),
    };
    assert_eq!(parsed, again, "a record changed through a write and a read");
    let _ = render_one(&parsed, imsctl::output::OutputFormat::Json);
    let _ = render_one(&parsed, imsctl::output::OutputFormat::Toml);
    Ok(())
}

/// manifest.json as `images verify` and the publish path read it; what we would write back
/// (IMS's Python-style JSON) must read back equal.
fn manifest(text: &[u8]) -> Result<(), String> {
    let path = Path::new("/store/artifacts/x/manifest.json");
    let parsed = Manifest::parse(text, path).map_err(|e| e.to_string())?;
    let json = parsed.to_json().expect("a manifest read serializes");
    match Manifest::parse(json.as_bytes(), path) {
        Ok(again) => assert_eq!(
            parsed, again,
            "a manifest changed through a write and a read"
        ),
        Err(e) => panic!("a manifest we wrote does not read back: {e}\n{json}"),
    }
    Ok(())
}

/// An IMS `created` time; what we print for it must parse back to the same time.
fn timestamp(text: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(text).map_err(|e| e.to_string())?;
    let t = Timestamp::parse(text).map_err(|e| e.to_string())?;
    let printed = t.to_string();
    match Timestamp::parse(&printed) {
        Ok(again) => assert_eq!(
            t, again,
            "{text:?} printed as {printed:?} reads back different"
        ),
        Err(e) => panic!("{text:?} printed as {printed:?} does not read back: {e}"),
    }
    let _ = t.manifest_format();
    let _ = python_json(&t);
    Ok(())
}

/// `<store>/config.toml` as `Store::config` reads it.
fn store_config(text: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(text).map_err(|e| e.to_string())?;
    toml::from_str::<StoreConfig>(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
