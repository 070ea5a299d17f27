//! A SquashFS image as a source for the writer (`imsctl convert x.sqsh y.sqsh`): every entry
//! is handed to an `EntrySink` in directory order, file content streamed block by block.

use std::collections::HashMap;

use super::format::MetaRef;
use super::reader::{Image, InodeKind};
use super::{EntrySink, Result};

/// Feed every entry of `image` to `sink`: the root's metadata first, then each path in
/// directory order. Further names of an inode become hardlinks to its first path.
pub fn copy_image_into(image: &Image, sink: &mut dyn EntrySink) -> Result<()> {
    let mut first_path: HashMap<MetaRef, Vec<u8>> = HashMap::new();
    image.walk(&mut |path, inode| {
        if path.is_empty() {
            return sink.set_root_meta(inode.meta.clone());
        }
        if !inode.is_dir() {
            if let Some(first) = first_path.get(&inode.reference) {
                return sink.add_hardlink(path, first);
            }
            first_path.insert(inode.reference, path.to_vec());
        }
        let meta = inode.meta.clone();
        match &inode.kind {
            InodeKind::Dir(_) => sink.add_dir(path, meta),
            InodeKind::File(_) => sink.add_file(path, meta, &mut image.file_reader(inode)?),
            InodeKind::Symlink(target) => sink.add_symlink(path, meta, target),
            InodeKind::Special(kind) => sink.add_special(path, meta, *kind),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Read;

    use super::*;
    use crate::reader::testutil::Fixture;
    use crate::{Error, Meta, Special};

    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Dir,
        File(Vec<u8>),
        Symlink(Vec<u8>),
        Special(Special),
        Hardlink(Vec<u8>),
    }

    #[derive(Default)]
    struct Recorder {
        root: Option<Meta>,
        entries: Vec<(Vec<u8>, Option<Meta>, Got)>,
        fail_on: Option<Vec<u8>>,
    }

    impl Recorder {
        fn push(&mut self, path: &[u8], meta: Option<Meta>, got: Got) -> Result<()> {
            if self.fail_on.as_deref() == Some(path) {
                return Err(Error::bad_entry(path, "sink refused it"));
            }
            self.entries.push((path.to_vec(), meta, got));
            Ok(())
        }
    }

    impl EntrySink for Recorder {
        fn set_root_meta(&mut self, meta: Meta) -> Result<()> {
            self.root = Some(meta);
            Ok(())
        }
        fn add_dir(&mut self, path: &[u8], meta: Meta) -> Result<()> {
            self.push(path, Some(meta), Got::Dir)
        }
        fn add_file(&mut self, path: &[u8], meta: Meta, data: &mut dyn Read) -> Result<()> {
            let mut v = Vec::new();
            data.read_to_end(&mut v)
                .map_err(|e| Error::io("read", "image", e))?;
            self.push(path, Some(meta), Got::File(v))
        }
        fn add_symlink(&mut self, path: &[u8], meta: Meta, target: &[u8]) -> Result<()> {
            self.push(path, Some(meta), Got::Symlink(target.to_vec()))
        }
        fn add_special(&mut self, path: &[u8], meta: Meta, kind: Special) -> Result<()> {
            self.push(path, Some(meta), Got::Special(kind))
        }
        fn add_hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
            self.push(path, None, Got::Hardlink(target.to_vec()))
        }
    }

    #[test]
    fn every_entry_reaches_the_sink_in_directory_order() {
        let fx = Fixture::new(100);
        let image = Image::open(&fx.image("img", &["-comp", "xz"])).unwrap();
        let mut rec = Recorder::default();
        copy_image_into(&image, &mut rec).unwrap();
        let root = rec.root.expect("root meta set");
        assert_eq!(root.mtime, 1_500_000_000);
        let paths: Vec<_> = rec.entries.iter().map(|e| e.0.clone()).collect();
        let mut walked = Vec::new();
        image
            .walk(&mut |p, _| {
                if !p.is_empty() {
                    walked.push(p.to_vec());
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(paths, walked, "directory order");
        let get = |p: &[u8]| rec.entries.iter().find(|e| e.0 == p).unwrap();
        assert_eq!(get(b"sub/hard2").2, Got::Hardlink(b"hard1".to_vec()));
        assert_eq!(get(b"sub/deeper/hard3").2, Got::Hardlink(b"hard1".to_vec()));
        assert_eq!(get(b"rel-link").2, Got::Symlink(b"one".to_vec()));
        assert_eq!(get(b"fifo").2, Got::Special(Special::Fifo));
        for name in ["multi-block", "sparse", "noise", "empty", "one"] {
            let Got::File(content) = &get(name.as_bytes()).2 else {
                panic!("{name} is a file")
            };
            assert!(content == &fs::read(fx.tree.join(name)).unwrap(), "{name}");
        }
        let xf = get(b"xattr-file").1.as_ref().unwrap();
        assert!(
            xf.xattrs
                .iter()
                .any(|x| x.name == b"user.comment" && x.value == b"hello")
        );
        if crate::reader::testutil::is_root() {
            assert_eq!(
                get(b"null").2,
                Got::Special(Special::CharDevice { major: 1, minor: 3 })
            );
            assert_eq!(
                get(b"nvme").2,
                Got::Special(Special::BlockDevice {
                    major: 259,
                    minor: 65536
                })
            );
            let one = get(b"one").1.as_ref().unwrap();
            assert_eq!((one.uid, one.gid), (1234, 5678));
            assert_eq!(get(b"setuid").1.as_ref().unwrap().mode, 0o4755);
        }
    }

    #[test]
    fn sink_errors_stop_the_copy() {
        let fx = Fixture::new(5);
        let image = Image::open(&fx.image("img", &[])).unwrap();
        let mut rec = Recorder {
            fail_on: Some(b"one".to_vec()),
            ..Default::default()
        };
        let err = copy_image_into(&image, &mut rec).unwrap_err().to_string();
        assert!(err.contains("sink refused it"), "{err}");
    }
}
