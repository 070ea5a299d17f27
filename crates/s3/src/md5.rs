//! MD5 of artifacts, computed by us (a server's etag is not an md5: reference/ims-formats.md).
//! Streaming with large buffers; the copy variant hashes while it copies, reading the data once.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use md5::{Digest, Md5};

use crate::{Error, Result};

const BUFFER: usize = 1 << 20;

/// Lower-case hex MD5 of everything `reader` yields.
pub fn md5_reader(mut reader: impl Read, what: &Path) -> Result<String> {
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; BUFFER];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", what, e)),
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex MD5 of a file.
pub fn md5_file(path: &Path) -> Result<String> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    md5_reader(file, path)
}

/// Lower-case hex MD5 of a file and the MD5 of each of its `part_size` parts, in one read: what
/// a multipart upload needs (the object's md5sum before it starts, each part's Content-MD5).
pub fn md5_file_with_parts(path: &Path, part_size: u64) -> Result<(String, Vec<[u8; 16]>)> {
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let part_size = part_size.max(1);
    let mut whole = Md5::new();
    let mut part = Md5::new();
    let mut in_part = 0u64;
    let mut parts = Vec::new();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        };
        whole.update(&buf[..n]);
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take =
                usize::try_from((part_size - in_part).min(rest.len() as u64)).unwrap_or(rest.len());
            part.update(&rest[..take]);
            in_part += take as u64;
            rest = &rest[take..];
            if in_part == part_size {
                parts.push(std::mem::take(&mut part).finalize().into());
                in_part = 0;
            }
        }
    }
    if in_part > 0 {
        parts.push(part.finalize().into());
    }
    Ok((hex(&whole.finalize()), parts))
}

/// Copy `src` into `dst` (an open file), returning the MD5 of the bytes copied.
pub fn copy_with_md5(src: &Path, dst: &mut File, dst_path: &Path) -> Result<String> {
    let mut input = File::open(src).map_err(|e| Error::io("open", src, e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", src, e)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|e| Error::io("write", dst_path, e))?;
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hexadecimal, as md5sum prints it.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").expect("write");
        assert_eq!(
            md5_file(&empty).expect("md5"),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        let fox = dir.path().join("fox");
        std::fs::write(&fox, b"The quick brown fox jumps over the lazy dog").expect("write");
        assert_eq!(
            md5_file(&fox).expect("md5"),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
    }

    #[test]
    fn parts_are_hashed_in_the_same_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let data: Vec<u8> = (0..(BUFFER * 3 + 777))
            .map(|i| (i * 13 % 253) as u8)
            .collect();
        std::fs::write(&src, &data).expect("write");
        for part_size in [1000u64, BUFFER as u64, BUFFER as u64 + 1, 5 << 20] {
            let (whole, parts) = md5_file_with_parts(&src, part_size).expect("md5");
            assert_eq!(whole, md5_file(&src).expect("md5"));
            let expected: Vec<[u8; 16]> = data
                .chunks(part_size as usize)
                .map(|c| Md5::digest(c).into())
                .collect();
            assert_eq!(parts, expected, "part size {part_size}");
        }
    }

    #[test]
    fn copy_hashes_what_it_copies_across_buffer_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let data: Vec<u8> = (0..(BUFFER * 2 + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&src, &data).expect("write");
        let dst_path = dir.path().join("dst");
        let mut dst = File::create(&dst_path).expect("create");
        let sum = copy_with_md5(&src, &mut dst, &dst_path).expect("copy");
        drop(dst);
        assert_eq!(std::fs::read(&dst_path).expect("read"), data);
        assert_eq!(sum, md5_file(&src).expect("md5"));
        // Cross-check with coreutils when present.
        if let Ok(out) = std::process::Command::new("md5sum").arg(&src).output() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(text.split_whitespace().next(), Some(sum.as_str()));
        }
    }

    #[test]
    fn missing_file_is_named() {
        let err = md5_file(Path::new("/nonexistent/kernel")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/kernel"), "{err}");
    }
}
