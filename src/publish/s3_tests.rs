//! The S3 code against real servers on loopback: every test runs against each server that is
//! installed (moto_server, s3s-fs), and the fault tests go through `testserver::FaultProxy`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::*;
use crate::artifacts::manifest::{ArtifactKind, Manifest};
use crate::artifacts::md5::md5_file;
use crate::context::Context;
use crate::publish::VerifyStatus;
use crate::publish::s3_catalog::S3Store;
use crate::s3::testserver::{self, Fault, FaultProxy, Server, for_each_server, random_file};
use crate::s3::*;
use crate::store::{Arch, ImageCatalog, ImageRecord, Store};

fn quiet() -> Context {
    Context::new(None, 0, true)
}

struct Files {
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

impl Files {
    /// rootfs: 3 parts of 5 MiB (the tests' part size), initrd: 2 parts, kernel: one PUT.
    fn new() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        Files {
            rootfs: random_file(dir.path(), "image.sqsh", (12 << 20) + 12345, 1),
            kernel: random_file(dir.path(), "vmlinuz", 100_000, 2),
            initrd: random_file(dir.path(), "initrd", (6 << 20) + 7, 3),
            _dir: dir,
        }
    }

    fn artifacts(&self) -> Vec<ArtifactFile<'_>> {
        vec![
            ArtifactFile {
                kind: ArtifactKind::Rootfs,
                path: &self.rootfs,
                md5: None,
            },
            ArtifactFile {
                kind: ArtifactKind::Kernel,
                path: &self.kernel,
                md5: None,
            },
            ArtifactFile {
                kind: ArtifactKind::Initrd,
                path: &self.initrd,
                md5: None,
            },
        ]
    }
}

fn store_at(config: &S3Config, bucket: &str, prefix: &str) -> S3Store {
    let root = S3Url::parse(&format!("s3://{bucket}/{prefix}")).expect("url");
    S3Store::open(config, &root).expect("open")
}

/// Multipart uploads in progress for `key`: listed, or counted on disk where the server cannot
/// list them (s3s-fs).
fn open_uploads(server: &Server, client: &Client, key: &str) -> usize {
    match client.list_multipart_uploads(key) {
        Ok(uploads) => uploads.len(),
        Err(e) if e.status() == Some(501) => {
            server.open_uploads_on_disk().expect("counted on disk")
        }
        Err(e) => panic!("{e}"),
    }
}

fn keys_under(client: &Client, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = client
        .list_objects(prefix)
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    keys
}

#[test]
fn publish_list_verify_import_delete() {
    for_each_server(|server| {
        let (bucket, client) = server.fresh_bucket();
        let files = Files::new();
        let host_a = store_at(&server.config(), &bucket, "site");
        let id = Uuid::new_v4();
        let job = Uuid::new_v4();
        let (record, published) = host_a
            .publish_image(
                id,
                "demo image",
                Arch::X86_64,
                &files.artifacts(),
                Some(job),
                &Resume::on(None),
                &quiet(),
            )
            .expect("publish");

        // The IMS layout, and nothing else besides the record.
        let prefix = format!("site/{id}/");
        assert_eq!(
            keys_under(&client, &prefix),
            ["initrd", "kernel", "manifest.json", "rootfs"]
                .map(|n| format!("{prefix}{n}"))
                .to_vec(),
            "{}",
            server.name
        );
        // Metadata on every artifact.
        let rootfs_md5 = md5_file(&files.rootfs).expect("md5");
        let head = client
            .head_object(&format!("{prefix}rootfs"))
            .expect("head")
            .expect("exists");
        assert_eq!(head.metadata.get("md5sum"), Some(&rootfs_md5));
        assert_eq!(
            head.metadata
                .get("x-shasta-ims-image-name")
                .map(String::as_str),
            Some("demo image")
        );
        assert_eq!(
            head.metadata.get("x-shasta-ims-image-id"),
            Some(&id.to_string())
        );
        assert_eq!(
            head.metadata.get("x-shasta-ims-job-id"),
            Some(&job.to_string())
        );
        assert_eq!(
            head.size,
            std::fs::metadata(&files.rootfs).expect("stat").len()
        );

        // The manifest: our md5s, the server's etags, s3 links.
        let bytes = client
            .get_bytes(&format!("{prefix}manifest.json"))
            .expect("get");
        let manifest = Manifest::parse(&bytes, Path::new("manifest")).expect("parse");
        assert_eq!(manifest, published.manifest);
        let rootfs = manifest.artifact(ArtifactKind::Rootfs).expect("rootfs");
        assert_eq!(rootfs.md5, rootfs_md5);
        assert_eq!(rootfs.link.link_type, "s3");
        assert_eq!(rootfs.link.path, format!("s3://{bucket}/site/{id}/rootfs"));
        assert_eq!(rootfs.link.etag, head.etag);
        assert!(
            rootfs.link.etag.ends_with("-3"),
            "multipart etag {}",
            rootfs.link.etag
        );
        let kernel = manifest.artifact(ArtifactKind::Kernel).expect("kernel");
        assert_eq!(kernel.md5, md5_file(&files.kernel).expect("md5"));
        assert_eq!(
            kernel.link.etag, kernel.md5,
            "single PUT: the etag is the md5"
        );
        // The record points at the manifest, with the manifest's etag.
        let link = record.link.clone().expect("link");
        assert_eq!(link.link_type, "s3");
        assert_eq!(link.path, format!("s3://{bucket}/site/{id}/manifest.json"));
        let manifest_head = client
            .head_object(&format!("{prefix}manifest.json"))
            .expect("head")
            .expect("exists");
        assert_eq!(link.etag, manifest_head.etag);

        // Host B sees what host A published.
        let host_b = store_at(&server.config(), &bucket, "site");
        let listed = host_b.list_images().expect("list");
        assert_eq!(listed, vec![record.clone()]);
        assert_eq!(host_b.get_image(&id.to_string()).expect("get"), record);
        // Another prefix is another catalogue.
        assert!(
            store_at(&server.config(), &bucket, "other")
                .list_images()
                .expect("list")
                .is_empty()
        );

        // Verify: both modes pass.
        for mode in [VerifyMode::Metadata, VerifyMode::Deep] {
            let report = verify_s3_image(&client, &record, mode, &quiet()).expect("verify");
            assert!(report.is_ok(), "{mode:?} {:?}", report.entries);
            assert_eq!(report.entries.len(), 4);
        }

        // Import into a local store: a new image, same bytes, name from the metadata.
        let local_dir = tempfile::tempdir().expect("tempdir");
        let local = Store::open(local_dir.path().join("store")).expect("store");
        let src = S3Url::parse(&format!("s3://{bucket}/site/{id}")).expect("url");
        let imported =
            import_image(&client, &src, &local, None, Arch::X86_64, &quiet()).expect("import");
        assert_eq!(imported.name, "demo image");
        let report =
            crate::publish::verify_image(&local, &imported.id.to_string()).expect("verify");
        assert!(report.is_ok() && report.entries.len() == 4, "{report:?}");
        let local_manifest =
            Manifest::read(Path::new(&imported.link.expect("link").path)).expect("manifest");
        for kind in ArtifactKind::ALL {
            assert_eq!(
                local_manifest.artifact(kind).map(|a| &a.md5),
                manifest.artifact(kind).map(|a| &a.md5),
                "{kind}"
            );
        }
        // The explicit manifest URL works as well.
        let src = S3Url::parse(&format!("s3://{bucket}/site/{id}/manifest.json")).expect("url");
        import_image(
            &client,
            &src,
            &local,
            Some("again"),
            Arch::Aarch64,
            &quiet(),
        )
        .expect("import");

        // Tampering: a replaced kernel (same md5sum metadata, other bytes) is caught by both modes.
        let meta = vec![("md5sum".to_string(), kernel.md5.clone())];
        client
            .put_bytes(
                &format!("{prefix}kernel"),
                b"not the kernel",
                &meta,
                None,
                false,
            )
            .expect("overwrite");
        for mode in [VerifyMode::Metadata, VerifyMode::Deep] {
            let report = verify_s3_image(&client, &record, mode, &quiet()).expect("verify");
            assert_eq!(report.failures(), 1, "{mode:?}");
            assert!(matches!(
                report.entries[2].status,
                VerifyStatus::Mismatch { .. }
            ));
        }
        // An import of a tampered image fails and registers nothing.
        let before = local.list::<ImageRecord>().expect("list").len();
        let err = import_image(&client, &src, &local, None, Arch::X86_64, &quiet())
            .expect_err("tampered");
        assert!(err.to_string().contains("kernel"), "{err}");
        assert_eq!(local.list::<ImageRecord>().expect("list").len(), before);

        // Publishing over an existing image is refused.
        let again = host_a.publish_image(
            id,
            "x",
            Arch::X86_64,
            &files.artifacts(),
            None,
            &Resume::on(None),
            &quiet(),
        );
        let again = again.expect_err("exists").to_string();
        assert!(again.contains("already registered"), "{again}");

        // Delete: record, then artifacts.
        host_b.delete_image(&id.to_string()).expect("delete");
        assert!(
            keys_under(&client, "site/").is_empty(),
            "{:?}",
            keys_under(&client, "site/")
        );
        let err = host_a.get_image(&id.to_string()).expect_err("gone");
        assert!(err.to_string().contains("no image with id"), "{err}");
    });
}

#[test]
fn hosts_publishing_at_once_keep_every_record() {
    for_each_server(|server| {
        let (bucket, _client) = server.fresh_bucket();
        std::thread::scope(|scope| {
            for host in 0..2 {
                let config = server.config();
                let bucket = bucket.clone();
                scope.spawn(move || {
                    let store = store_at(&config, &bucket, "");
                    for i in 0..8 {
                        let record = ImageRecord::new(format!("h{host}-{i}"), Arch::X86_64, None);
                        store.insert_image(&record).expect("insert");
                    }
                });
            }
        });
        let store = store_at(&server.config(), &bucket, "");
        let all = store.list_images().expect("list");
        assert_eq!(all.len(), 16, "{}", server.name);
        // The same record twice: refused, the first one kept.
        let mut dup = all[0].clone();
        dup.name = "overwritten?".into();
        let err = store.insert_image(&dup).expect_err("duplicate");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(
            store.get_image(&dup.id.to_string()).expect("get").name,
            all[0].name
        );
    });
}

#[test]
fn faults_are_ridden_out() {
    for_each_server(|server| {
        let (bucket, _) = server.fresh_bucket();
        let proxy = FaultProxy::start(server.addr);
        let reset_done = Arc::new(AtomicBool::new(false));
        let stall_done = Arc::new(AtomicBool::new(false));
        {
            let (reset_done, stall_done) = (reset_done.clone(), stall_done.clone());
            proxy.set_plan(move |req, n| {
                if req.is_part_upload() && !reset_done.swap(true, Ordering::Relaxed) {
                    return Fault::ResetAfter(1 << 20);
                }
                if req.method == "HEAD" && !stall_done.swap(true, Ordering::Relaxed) {
                    return Fault::Stall(Duration::from_secs(4));
                }
                if n % 4 == 0 {
                    Fault::Status500
                } else {
                    Fault::Pass
                }
            });
        }
        let mut config = server.config_via(&proxy.endpoint());
        config.timeouts.response = Duration::from_millis(1500);
        config.timeouts.idle = Duration::from_millis(1500);
        let store = store_at(&config, &bucket, "");
        let files = Files::new();
        let id = Uuid::new_v4();
        let (record, published) = store
            .publish_image(
                id,
                "faulty",
                Arch::X86_64,
                &files.artifacts(),
                None,
                &Resume::on(None),
                &quiet(),
            )
            .expect("publish through faults");
        assert!(reset_done.load(Ordering::Relaxed) && stall_done.load(Ordering::Relaxed));
        assert!(proxy.counters.faults.load(Ordering::Relaxed) >= 4);
        // Checked directly against the server, not through the proxy.
        let direct = Client::new(&server.config(), &bucket).expect("client");
        let report = verify_s3_image(&direct, &record, VerifyMode::Deep, &quiet()).expect("verify");
        assert!(report.is_ok(), "{:?}", report.entries);
        assert_eq!(
            published
                .manifest
                .artifact(ArtifactKind::Rootfs)
                .map(|a| a.md5.clone()),
            Some(md5_file(&files.rootfs).expect("md5"))
        );
        // Downloads ride out faults too.
        let local_dir = tempfile::tempdir().expect("tempdir");
        let local = Store::open(local_dir.path().join("s")).expect("store");
        let src = S3Url::parse(&format!("s3://{bucket}/{id}")).expect("url");
        let client = Client::new(&config, &bucket).expect("client");
        import_image(&client, &src, &local, None, Arch::X86_64, &quiet())
            .expect("import through faults");
    });
}

#[test]
fn a_failed_publish_leaves_nothing() {
    for_each_server(|server| {
        let (bucket, client) = server.fresh_bucket();
        let proxy = FaultProxy::start(server.addr);
        proxy.set_plan(|req, _| {
            if req.is_part_upload() && req.target.contains("partNumber=2") {
                Fault::Status500
            } else {
                Fault::Pass
            }
        });
        let mut config = server.config_via(&proxy.endpoint());
        config.retry.attempts = 3;
        let store = store_at(&config, &bucket, "p");
        let files = Files::new();
        let id = Uuid::new_v4();
        let err = store
            .publish_image(
                id,
                "doomed",
                Arch::X86_64,
                &files.artifacts(),
                None,
                &Resume::on(None),
                &quiet(),
            )
            .expect_err("must fail");
        let text = err.to_string();
        assert!(
            text.contains("500") && text.contains("after 3 attempts"),
            "{text}"
        );
        assert!(
            text.contains(&format!("s3://{bucket}/p/{id}/rootfs")),
            "{text}"
        );
        assert!(keys_under(&client, "p/").is_empty());
        assert_eq!(open_uploads(server, &client, &format!("p/{id}/rootfs")), 0);
        assert!(
            store_at(&server.config(), &bucket, "p")
                .list_images()
                .expect("list")
                .is_empty()
        );
    });
}

#[test]
fn wrong_credentials_are_a_clear_error() {
    // moto accepts any signature; s3s-fs verifies them.
    let Some(server) = testserver::s3s_fs() else {
        return;
    };
    let (bucket, client) = server.fresh_bucket();
    let mut config = server.config();
    config.credentials = Some(rusty_s3::Credentials::new(testserver::KEY, "wrong-secret"));
    let store = store_at(&config, &bucket, "");
    let files = Files::new();
    let err = store
        .publish_image(
            Uuid::new_v4(),
            "x",
            Arch::X86_64,
            &files.artifacts(),
            None,
            &Resume::on(None),
            &quiet(),
        )
        .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains(&server.endpoint()), "{text}");
    assert!(text.contains(&format!("s3://{bucket}/")), "{text}");
    assert!(
        text.contains("403") && text.contains("credentials"),
        "{text}"
    );
    assert!(keys_under(&client, "").is_empty());
}

/// The publish a child process runs for `a_killed_publish_resumes` (ignored otherwise).
#[test]
#[ignore]
fn child_publish() {
    let (Some(endpoint), Some(bucket), Some(file), Some(id)) = (
        std::env::var_os("IMSCTL_S3_CHILD_ENDPOINT"),
        std::env::var_os("IMSCTL_S3_CHILD_BUCKET"),
        std::env::var_os("IMSCTL_S3_CHILD_FILE"),
        std::env::var_os("IMSCTL_S3_CHILD_ID"),
    ) else {
        return;
    };
    let config = resume_config(endpoint.to_str().expect("utf8"));
    let client = Client::new(&config, bucket.to_str().expect("utf8")).expect("client");
    let id = Uuid::parse_str(id.to_str().expect("utf8")).expect("id");
    let dest = S3Url::parse(&format!("s3://{}", client.bucket())).expect("url");
    let files = [ArtifactFile {
        kind: ArtifactKind::Rootfs,
        path: Path::new(&file),
        md5: None,
    }];
    let state = std::env::var_os("IMSCTL_S3_CHILD_STATE").map(PathBuf::from);
    let _ = publish_s3(
        &client,
        &dest,
        id,
        &files,
        &ImageMeta::default(),
        &Resume::on(state),
        &quiet(),
    );
}

fn resume_config(endpoint: &str) -> S3Config {
    let mut config =
        S3Config::for_endpoint(endpoint, testserver::KEY, testserver::SECRET).expect("config");
    config.part_size = 5 << 20;
    config.concurrency = 2;
    config
}

#[test]
fn a_killed_publish_resumes() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    for_each_server(|server| {
        let (bucket, _) = server.fresh_bucket();
        let proxy = FaultProxy::start(server.addr);
        // Slow parts down so the kill lands mid-upload.
        proxy.set_plan(|req, _| {
            if req.is_part_upload() {
                Fault::Delay(Duration::from_millis(300))
            } else {
                Fault::Pass
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let part = 5u64 << 20;
        let size = 8 * part + 1000; // 9 parts
        let file = random_file(
            dir.path(),
            "rootfs",
            usize::try_from(size).expect("size"),
            7,
        );
        let id = Uuid::new_v4();
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "publish::s3_tests::child_publish",
                "--ignored",
                "--test-threads=1",
            ])
            .env("IMSCTL_S3_CHILD_ENDPOINT", proxy.endpoint())
            .env("IMSCTL_S3_CHILD_BUCKET", &bucket)
            .env("IMSCTL_S3_CHILD_FILE", &file)
            .env("IMSCTL_S3_CHILD_ID", id.to_string())
            .env("IMSCTL_S3_CHILD_STATE", dir.path().join("state"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(60);
        while proxy.counters.parts_ok.load(Ordering::Relaxed) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().expect("kill");
        let _ = child.wait();
        // The proxy may still be passing on what the child had written before it died.
        let settle = Instant::now() + Duration::from_secs(10);
        let mut last = u64::MAX;
        while Instant::now() < settle {
            let now = proxy.counters.body_bytes_up.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(500));
        }
        let finished = proxy.counters.parts_ok.load(Ordering::Relaxed);
        assert!(
            (3..9).contains(&finished),
            "{}: {finished} parts before the kill",
            server.name
        );

        // The rerun: only what is missing goes through the proxy.
        proxy.set_plan(|_, _| Fault::Pass);
        let before = proxy.counters.body_bytes_up.load(Ordering::Relaxed);
        let client = Client::new(&resume_config(&proxy.endpoint()), &bucket).expect("client");
        let dest = S3Url::parse(&format!("s3://{bucket}")).expect("url");
        let files = [ArtifactFile {
            kind: ArtifactKind::Rootfs,
            path: &file,
            md5: None,
        }];
        // s3s-fs cannot list uploads in progress: the state file the child wrote names it.
        // On moto the rerun finds it with ListMultipartUploads: its upload state file goes,
        // the lease token (the same store's claim on the id) stays.
        let state = dir.path().join("state");
        if server.name != "s3s-fs" {
            for entry in std::fs::read_dir(&state).expect("state dir").flatten() {
                if !entry.file_name().to_string_lossy().starts_with("lease-") {
                    std::fs::remove_file(entry.path()).expect("forget the upload");
                }
            }
        }
        let state = Some(state);
        let published = publish_s3(
            &client,
            &dest,
            id,
            &files,
            &ImageMeta::default(),
            &Resume::on(state),
            &quiet(),
        )
        .expect("resumed publish");
        let sent = proxy.counters.body_bytes_up.load(Ordering::Relaxed) - before;
        let stats = &published.objects[0].stats;
        assert!(stats.resumed_upload, "{stats:?}");
        assert!(
            stats.parts_reused as u64 >= finished,
            "{stats:?} after {finished}"
        );
        // Only the parts not finished (plus the small manifest) were sent again.
        assert!(
            sent <= size - finished * part + 4096,
            "{}: sent {sent} of {size}",
            server.name
        );
        assert_eq!(published.objects[0].md5, md5_file(&file).expect("md5"));
        let direct = Client::new(&server.config(), &bucket).expect("client");
        let got = md5_of_object(&direct, &format!("{id}/rootfs"), &AtomicU64::new(0)).expect("md5");
        assert_eq!(
            (got.size, got.md5),
            (size, published.objects[0].md5.clone())
        );
        assert_eq!(open_uploads(server, &direct, &format!("{id}/rootfs")), 0);
    });
}

#[test]
fn ranged_download_matches_and_hashes() {
    for_each_server(|server| {
        let (_, client) = server.fresh_bucket();
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, len) in [0usize, 1, (5 << 20) - 1, 5 << 20, (11 << 20) + 3]
            .into_iter()
            .enumerate()
        {
            let src = random_file(dir.path(), &format!("src{i}"), len, 10 + i as u64);
            let key = format!("obj{i}");
            let progress = AtomicU64::new(0);
            let up = upload_file(&client, &key, &src, &UploadOptions::default(), &progress)
                .expect("upload");
            assert_eq!(progress.load(Ordering::Relaxed), len as u64);
            let dest = dir.path().join(format!("dst{i}"));
            let progress = AtomicU64::new(0);
            let got = download_file(&client, &key, len as u64, &dest, &progress).expect("download");
            assert_eq!(got.md5, up.md5, "{} len {len}", server.name);
            assert_eq!(
                std::fs::read(&dest).expect("read"),
                std::fs::read(&src).expect("read")
            );
            assert_eq!(progress.load(Ordering::Relaxed), len as u64);
        }
        // A missing object: a 404 error naming it, and no file left behind.
        let dest = dir.path().join("missing");
        let err =
            download_file(&client, "nope", 10, &dest, &AtomicU64::new(0)).expect_err("missing");
        assert!(
            err.is_not_found() && err.to_string().contains("/nope"),
            "{err}"
        );
        assert!(!dest.exists());
    });
}

#[test]
fn local_catalogue_with_s3_artifacts() {
    for_each_server(|server| {
        let (bucket, client) = server.fresh_bucket();
        let files = Files::new();
        let local_dir = tempfile::tempdir().expect("tempdir");
        let local = Store::open(local_dir.path().join("store")).expect("store");
        let dest = S3Url::parse(&format!("s3://{bucket}/boot")).expect("url");
        let id = Uuid::new_v4();
        let meta = ImageMeta {
            name: Some("custom".into()),
            job_id: None,
        };
        let published = publish_s3(
            &client,
            &dest,
            id,
            &files.artifacts(),
            &meta,
            &Resume::on(None),
            &quiet(),
        )
        .expect("publish");
        // The customize result lists the three artifacts and the manifest.
        let listed = published.ims_image_artifacts();
        assert_eq!(listed.len(), 4);
        assert_eq!(listed[3].artifact_type, "application/json");
        assert_eq!(
            listed[3].link.path,
            format!("s3://{bucket}/boot/{id}/manifest.json")
        );
        let record = crate::publish::s3_catalog::register_published(
            &local,
            &client,
            &published,
            "custom",
            Arch::X86_64,
        )
        .expect("register");
        let stored: ImageRecord = local.get_by_id(id).expect("get");
        assert_eq!(stored, record);
        let report =
            verify_s3_image(&client, &stored, VerifyMode::Metadata, &quiet()).expect("verify");
        assert!(report.is_ok(), "{:?}", report.entries);
        // A second registration of the same id fails and deletes nothing: the objects belong
        // to the registered image (the lease went with the first registration).
        let before = keys_under(&client, "boot/");
        assert_eq!(before.len(), 4, "the IMS layout only: {before:?}");
        let err = crate::publish::s3_catalog::register_published(
            &local,
            &client,
            &published,
            "custom",
            Arch::X86_64,
        )
        .expect_err("duplicate");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(keys_under(&client, "boot/"), before);
        let report = verify_s3_image(&client, &stored, VerifyMode::Deep, &quiet()).expect("verify");
        assert!(report.is_ok(), "{:?}", report.entries);
    });
}

/// Pack an image of `files` pseudo-random files of `len` bytes (incompressible, so the image
/// spans several 5 MiB parts) at `path`; `during` runs after the last file is queued and before
/// the writer finishes, with the writer's settled offset.
fn pack_random_image(path: &Path, files: u64, len: usize, during: impl FnOnce(Settled)) {
    use crate::squashfs::writer::{Writer, WriterOptions};
    use crate::squashfs::{EntrySink, Meta};
    let opts = WriterOptions {
        mkfs_time: 1_700_000_000,
        ..WriterOptions::default()
    };
    let mut writer = Writer::create(path, opts).expect("create image");
    let meta = |mode| Meta {
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        xattrs: Vec::new(),
    };
    writer.set_root_meta(meta(0o755)).expect("root");
    for i in 0..files {
        let mut data = vec![0u8; len];
        fastrand::Rng::with_seed(100 + i).fill(&mut data);
        writer
            .add_file(format!("f{i}").as_bytes(), meta(0o644), &mut &data[..])
            .expect("add file");
    }
    during(writer.settled());
    writer.finish().expect("finish image");
}

/// Wait (bounded) until `done` holds.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_streamed_rootfs_is_the_packed_file() {
    for_each_server(|server| {
        let (_bucket, client) = server.fresh_bucket();
        let dir = tempfile::tempdir().expect("tempdir");
        // The same tree packed without streaming: the reference bytes.
        let reference = dir.path().join("reference.sqsh");
        pack_random_image(&reference, 4, 4 << 20, |_| {});
        let streamed = dir.path().join("streamed.sqsh");
        let id = Uuid::new_v4();
        let dest = S3Url::parse("s3://unused/img")
            .expect("url")
            .with_key("img");
        let meta = ImageMeta {
            name: Some("streamed".into()),
            job_id: None,
        };
        let mut publication =
            Publication::begin(&client, &dest, id, &meta, &Resume::on(None)).expect("begin");
        let sent = Arc::new(AtomicU64::new(0));
        let mut upload = None;
        pack_random_image(&streamed, 4, 4 << 20, |settled| {
            let stream = publication
                .stream(
                    ArtifactKind::Rootfs,
                    &streamed,
                    settled,
                    crate::squashfs::writer::HEADER_MAX,
                    sent.clone(),
                )
                .expect("start streaming");
            // 16 MiB of data settle before the tables: parts 2 and 3 can go before finish.
            eventually("a part sent while packing", || {
                stream.parts_sent_early() >= 2
            });
            upload = Some(stream);
        });
        let upload = upload.expect("stream started");
        assert!(upload.parts_sent_early() >= 2);
        publication
            .add_streamed(ArtifactKind::Rootfs, upload)
            .expect("finish the stream");
        let published = publication.finish().expect("manifest");

        let bytes = std::fs::read(&streamed).expect("read image");
        assert_eq!(
            bytes,
            std::fs::read(&reference).expect("read reference"),
            "streaming changes nothing in the image"
        );
        let key = format!("img/{id}/rootfs");
        let object = client.get_bytes(&key).expect("get");
        assert_eq!(object.len(), bytes.len());
        assert!(
            object == bytes,
            "the object is the packed file, byte for byte"
        );
        let md5 = md5_file(&streamed).expect("md5");
        let info = client.head_object(&key).expect("head").expect("exists");
        assert_eq!(info.metadata.get(multipart::MD5SUM_META), Some(&md5));
        assert_eq!(
            info.metadata.get(crate::publish::s3::META_IMAGE_ID),
            Some(&id.to_string())
        );
        assert_eq!(
            info.metadata
                .get(crate::publish::s3::META_IMAGE_NAME)
                .map(String::as_str),
            Some("streamed")
        );
        let rootfs = published
            .manifest
            .artifact(ArtifactKind::Rootfs)
            .expect("rootfs in the manifest");
        assert_eq!(rootfs.md5, md5);
        assert_eq!(rootfs.link.etag, info.etag);
        assert_eq!(sent.load(Ordering::Relaxed), bytes.len() as u64);
        assert_eq!(open_uploads(server, &client, &key), 0);
    });
}

#[test]
fn a_failed_stream_aborts_and_leaves_nothing() {
    for_each_server(|server| {
        let (_bucket, client) = server.fresh_bucket();
        let proxy = FaultProxy::start(server.addr);
        // Part 3 always fails: the stream fails while the image is still being packed.
        proxy.set_plan(|req, _| {
            if req.is_part_upload() && req.target.contains("partNumber=3&") {
                Fault::Status500
            } else {
                Fault::Pass
            }
        });
        let mut config = server.config_via(&proxy.endpoint());
        config.retry.attempts = 2;
        let failing = Client::new(&config, client.bucket()).expect("client");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("image.sqsh");
        let id = Uuid::new_v4();
        let dest = S3Url::parse("s3://unused/f").expect("url").with_key("f");
        let mut publication = Publication::begin(
            &failing,
            &dest,
            id,
            &ImageMeta::default(),
            &Resume::on(None),
        )
        .expect("begin");
        let mut upload = None;
        pack_random_image(&path, 4, 4 << 20, |settled| {
            let stream = publication
                .stream(
                    ArtifactKind::Rootfs,
                    &path,
                    settled,
                    crate::squashfs::writer::HEADER_MAX,
                    Arc::new(AtomicU64::new(0)),
                )
                .expect("start streaming");
            eventually("part 2 sent", || stream.parts_sent_early() >= 1);
            upload = Some(stream);
        });
        let err = publication
            .add_streamed(ArtifactKind::Rootfs, upload.expect("started"))
            .expect_err("part 3 cannot be sent");
        let text = err.to_string();
        assert!(
            text.contains("500") && text.contains("UploadPart"),
            "{text}"
        );
        drop(publication);
        let key = format!("f/{id}/rootfs");
        assert_eq!(
            open_uploads(server, &client, &key),
            0,
            "the upload is aborted"
        );
        assert!(keys_under(&client, "f/").is_empty(), "nothing published");

        // The writer failing instead: the stream is dropped unfinished, and aborts too.
        let publication =
            Publication::begin(&client, &dest, id, &ImageMeta::default(), &Resume::off())
                .expect("begin");
        pack_random_image(&path, 3, 4 << 20, |settled| {
            let stream = publication
                .stream(
                    ArtifactKind::Rootfs,
                    &path,
                    settled,
                    crate::squashfs::writer::HEADER_MAX,
                    Arc::new(AtomicU64::new(0)),
                )
                .expect("start streaming");
            eventually("part 2 sent", || stream.parts_sent_early() >= 1);
            drop(stream);
        });
        drop(publication);
        assert_eq!(open_uploads(server, &client, &key), 0, "dropped: aborted");
        assert!(keys_under(&client, "f/").is_empty());
    });
}
