//! Transport tests against real local servers (moto, s3s-fs): copies in parts, part checksums.

use std::sync::atomic::AtomicU64;

use crate::md5::md5_file;
use crate::testserver::{for_each_server, random_file};
use crate::*;

#[test]
fn metadata_is_replaced_by_a_copy_in_parts_above_the_single_copy_limit() {
    for_each_server(|server| {
        let (_bucket, client) = server.fresh_bucket();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = random_file(dir.path(), "big", (11 << 20) + 5, 9);
        let key = "copy/big";
        let counter = AtomicU64::new(0);
        upload_file(&client, key, &file, &UploadOptions::default(), &counter).expect("upload");
        let metadata = vec![
            ("md5sum".to_string(), "0123".to_string()),
            ("x-shasta-ims-image-id".to_string(), "abc".to_string()),
        ];
        // A 5 MiB limit forces the multipart copy: 3 parts of 5 MiB.
        stream::set_metadata(&client, key, (11 << 20) + 5, &metadata, 5 << 20)
            .expect("copy in parts");
        let info = client.head_object(key).expect("head").expect("exists");
        assert_eq!(
            info.metadata.get("md5sum").map(String::as_str),
            Some("0123")
        );
        assert_eq!(info.size, (11 << 20) + 5);
        let bytes = client.get_bytes(key).expect("get");
        assert!(
            bytes == std::fs::read(&file).expect("read"),
            "same bytes after the copy"
        );
    });
}

/// A multipart upload declares CRC32 checksums and every part carries its CRC32: the upload
/// completes (the CompleteMultipartUpload body lists them) into the same bytes, and a part whose
/// CRC32 is not that of its bytes is refused by a server that checks them.
#[test]
fn multipart_parts_carry_their_crc32() {
    use crate::client::PartChecksums;
    use crate::multipart::crc32_of;
    use ::md5::Digest;
    assert_eq!(
        crc32_of(b"123456789"),
        0xCBF4_3926,
        "the CRC-32 check value"
    );
    for_each_server(|server| {
        let (_, client) = server.fresh_bucket();
        let dir = tempfile::tempdir().expect("tempdir");
        let src = random_file(dir.path(), "src", (11 << 20) + 3, 77);
        let options = UploadOptions::default();
        let up = upload_file(&client, "obj", &src, &options, &AtomicU64::new(0)).expect("upload");
        assert_eq!(up.stats.checksums, PartChecksums::Crc32, "{}", server.name);
        assert_eq!(up.stats.parts, 3);
        let dest = dir.path().join("dst");
        let got = download_file(&client, "obj", up.size, &dest, &AtomicU64::new(0)).expect("get");
        assert_eq!(got.md5, md5_file(&src).expect("md5"));

        let id = client
            .create_multipart("bad", &[], PartChecksums::Crc32)
            .expect("create");
        let body = vec![9u8; 1000];
        let md5: [u8; 16] = ::md5::Md5::digest(&body).into();
        let wrong = crc32_of(&body) ^ 1;
        match client.upload_part_hashed("bad", &id, 1, &body, &md5, Some(wrong)) {
            Err(e) => assert_eq!(e.status(), Some(400), "{}: {e}", server.name),
            Ok(_) => eprintln!(
                "note: {} accepts a part whose CRC32 is wrong: it does not check CRC32s (the \
                 Content-MD5 every part carries is what a checking server verifies)",
                server.name
            ),
        }
        let _ = client.abort_multipart("bad", &id);
    });
}
