//! Many hosts, one bucket, real servers: the same image published from two stores at once (on
//! servers that honour conditional writes and behind a proxy that strips them), what a lost
//! lease may delete, early rejections, outages, retry budget and connection reuse.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::*;
use crate::artifacts::manifest::ArtifactKind;
use crate::artifacts::md5::md5_file;
use crate::context::Context;
use crate::publish::s3_catalog::S3Store;
use crate::s3::guard::{self, lease_key, read_lease};
use crate::s3::testserver::{self, Fault, FaultProxy, REJECT_REGION, Relay, Server, random_file};
use crate::s3::*;
use crate::store::{Arch, ImageCatalog, ImageRecord, Store};

fn quiet() -> Context {
    Context::new(None, 0, true)
}

/// A local store holding one image (rootfs of `rootfs_len` bytes, a kernel), and its id.
fn local_image(dir: &Path, rootfs_len: usize) -> (Store, Uuid) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let rootfs = random_file(&src, "rootfs", rootfs_len, 11);
    let kernel = random_file(&src, "kernel", 50_000, 12);
    let store = Store::open(dir.join("A")).expect("store");
    let record = store
        .register_image("shared", Arch::X86_64, &rootfs, Some(&kernel), None)
        .expect("register");
    (store, record.id)
}

/// `cp -a A B`: a second build host with the same image.
fn copy_store(from: &Path, to: &Path) -> Store {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
    Store::open(to).expect("store B")
}

fn resume_in(store: &Store) -> Resume {
    Resume::on(Some(store.work_root().join("s3-uploads")))
}

fn store_at(config: &S3Config, bucket: &str, prefix: &str) -> S3Store {
    let root = S3Url::parse(&format!("s3://{bucket}/{prefix}")).expect("url");
    S3Store::open(config, &root).expect("open")
}

/// The repro: import into store A, `cp -a A B`, publish the same id from both at once,
/// then verify. Returns whether the image ends registered and verifiable, with both runs
/// having succeeded or failed cleanly (naming the other run).
fn publish_twice_at_once(config: &S3Config, direct: &Client, bucket: &str, run: usize) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, id) = local_image(dir.path(), (6 << 20) + 1000);
    let b = copy_store(a.root(), &dir.path().join("B"));
    let prefix = format!("run{run}");
    let outcomes: Vec<anyhow::Result<ImageRecord>> = std::thread::scope(|scope| {
        let handles: Vec<_> = [&a, &b]
            .into_iter()
            .map(|local| {
                let target = store_at(config, bucket, &prefix);
                scope.spawn(move || {
                    target.publish_from_local(local, &id.to_string(), &resume_in(local), &quiet())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    let mut ok = 0;
    for outcome in &outcomes {
        match outcome {
            Ok(record) => {
                assert_eq!(record.id, id);
                ok += 1;
            }
            Err(e) => {
                let text = format!("{e:#}");
                assert!(
                    text.contains("being published") && text.contains("another run"),
                    "run {run}: not a clean refusal: {text}"
                );
            }
        }
    }
    let catalogue = store_at(&direct.config().clone(), bucket, &prefix);
    let Ok(record) = catalogue.get_image(&id.to_string()) else {
        eprintln!("run {run}: no record ({ok} succeeded)");
        return false;
    };
    let report = verify_s3_image(direct, &record, VerifyMode::Deep, &quiet()).expect("verify");
    let lease_left = direct
        .head_object(&lease_key(catalogue.root(), id))
        .expect("head lease")
        .is_some();
    if !report.is_ok() || ok == 0 || lease_left {
        eprintln!(
            "run {run}: {ok} succeeded, lease left: {lease_left}, verify: {:?}",
            report.entries
        );
        return false;
    }
    true
}

#[test]
fn the_same_image_published_from_two_stores_at_once_stays_registered() {
    let Some(moto) = testserver::moto() else {
        return;
    };
    let (bucket, direct) = moto.fresh_bucket();
    let stripped = FaultProxy::without_conditional_writes(moto.addr);
    let config = moto.config_via(&stripped.endpoint());
    let probe_root = S3Url::parse(&format!("s3://{bucket}/probe")).expect("url");
    assert!(
        guard::conditional_writes(&direct, &probe_root).expect("probe"),
        "moto honours If-None-Match"
    );
    let via_proxy = Client::new(&config, &bucket).expect("client");
    assert!(
        !guard::conditional_writes(&via_proxy, &probe_root).expect("probe"),
        "the proxy strips it"
    );
    let runs = 20;
    let good = (0..runs)
        .filter(|&run| publish_twice_at_once(&config, &direct, &bucket, run))
        .count();
    eprintln!(
        "without conditional writes: {good} of {runs} runs left a registered, verifiable image"
    );
    assert_eq!(good, runs);
    // And where the server honours them.
    let good = (0..5)
        .filter(|&run| publish_twice_at_once(&moto.config(), &direct, &bucket, 100 + run))
        .count();
    assert_eq!(good, 5);
}

#[test]
fn a_run_that_lost_its_lease_deletes_nothing() {
    for server in testserver::servers() {
        for strip in [false, true] {
            let (bucket, direct) = server.fresh_bucket();
            let proxy = match strip {
                true => FaultProxy::without_conditional_writes(server.addr),
                false => FaultProxy::start(server.addr),
            };
            let client = Client::new(&server.config_via(&proxy.endpoint()), &bucket).expect("c");
            let dest = S3Url::parse(&format!("s3://{bucket}")).expect("url");
            let dir = tempfile::tempdir().expect("tempdir");
            let rootfs = random_file(dir.path(), "rootfs", 100_000, 1);
            let id = Uuid::new_v4();
            let mut publication =
                Publication::begin(&client, &dest, id, &ImageMeta::default(), &Resume::off())
                    .expect("begin");
            let file = ArtifactFile {
                kind: ArtifactKind::Rootfs,
                path: &rootfs,
                md5: None,
            };
            publication.upload(&file, &quiet()).expect("upload");
            // Another writer takes the id over (a stalled run's claim landing late).
            let key = lease_key(&dest, id);
            let mut other = read_lease(&direct, &key).expect("read").expect("lease");
            other.token = "someone-else".into();
            let body = serde_json::to_vec(&other).expect("json");
            direct
                .put_bytes(&key, &body, &[], None, false)
                .expect("overwrite the lease");
            let err = publication.finish().expect_err("lost the lease");
            assert!(
                err.to_string().contains("took over its lease"),
                "{}: {err}",
                server.name
            );
            // Neither the rootfs (the other writer's now) nor the other's lease was deleted.
            assert!(
                direct
                    .head_object(&format!("{id}/rootfs"))
                    .expect("head")
                    .is_some(),
                "{} strip={strip}",
                server.name
            );
            assert!(direct.head_object(&key).expect("head").is_some());
        }
    }
}

#[test]
fn two_publishes_from_the_same_store_one_fails_naming_the_other() {
    let Some(server) = testserver::moto() else {
        return;
    };
    let (bucket, direct) = server.fresh_bucket();
    let dir = tempfile::tempdir().expect("tempdir");
    let (local, id) = local_image(dir.path(), (12 << 20) + 5);
    let proxy = FaultProxy::start(server.addr);
    // Slow parts: the two runs overlap.
    proxy.set_plan(|req, _| match req.is_part_upload() {
        true => Fault::Delay(Duration::from_millis(200)),
        false => Fault::Pass,
    });
    let config = server.config_via(&proxy.endpoint());
    let outcomes: Vec<anyhow::Result<ImageRecord>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let target = store_at(&config, &bucket, "");
                let local = &local;
                scope.spawn(move || {
                    target.publish_from_local(local, &id.to_string(), &resume_in(local), &quiet())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    assert!(failures.len() <= 1, "{failures:?}");
    for text in &failures {
        assert!(
            text.contains("another imsctl process of this store") && text.contains("pid"),
            "{text}"
        );
    }
    let record = store_at(&server.config(), &bucket, "")
        .get_image(&id.to_string())
        .expect("registered");
    let report = verify_s3_image(&direct, &record, VerifyMode::Deep, &quiet()).expect("verify");
    assert!(report.is_ok(), "{:?}", report.entries);
}

/// How long `f` took, and its error text.
fn timed_error<T>(f: impl FnOnce() -> anyhow::Result<T>) -> (Duration, String) {
    let start = Instant::now();
    let err = match f() {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    };
    (start.elapsed(), err)
}

#[test]
fn early_rejections_fail_at_once_with_the_servers_code() {
    let Some(moto) = testserver::moto() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // The rootfs fits in one PUT: the case a server refuses before reading the body.
    let (local, id) = local_image(dir.path(), 4 << 20);
    let publish = |config: &S3Config, bucket: &str| {
        store_at(config, bucket, "").publish_from_local(
            &local,
            &id.to_string(),
            &Resume::off(),
            &quiet(),
        )
    };
    let mut config = moto.config();
    config.retry.budget = Duration::from_secs(30);
    config.retry.attempts = u32::MAX;

    let missing = format!("missing-{}", Uuid::new_v4().simple());
    let (took, err) = timed_error(|| publish(&config, &missing));
    eprintln!("missing bucket: {took:?}: {err}");
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A read-only key: the proxy refuses every write of the rootfs before reading it, and
    // hangs up (what Garage does); the first attempt's send breaks, the second asks first.
    let (bucket, _) = moto.fresh_bucket();
    let proxy = FaultProxy::start(moto.addr);
    proxy.set_plan(
        |req, _| match req.method == "PUT" && req.target.contains("/rootfs") {
            true => Fault::Reject(403, "AccessDenied"),
            false => Fault::Pass,
        },
    );
    let mut via = moto.config_via(&proxy.endpoint());
    via.retry = config.retry;
    let (took, err) = timed_error(|| publish(&via, &bucket));
    eprintln!("read-only key: {took:?}: {err}");
    assert!(err.contains("403 AccessDenied"), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Nothing of the image stays, nor its lease.
    let direct = Client::new(&moto.config(), &bucket).expect("client");
    let left: Vec<String> = direct
        .list_objects("")
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A wrong region: the server names the right one.
    proxy.set_plan(|_, _| Fault::Reject(400, "AuthorizationHeaderMalformed"));
    let (took, err) = timed_error(|| publish(&via, &bucket));
    eprintln!("wrong region: {took:?}: {err}");
    assert!(err.contains("AuthorizationHeaderMalformed"), "{err}");
    assert!(err.contains(&format!("region {REJECT_REGION}")), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn an_unknown_host_fails_without_retrying() {
    let mut config =
        S3Config::for_endpoint("http://no-such-host.invalid:9000", "k", "s").expect("config");
    config.retry.budget = Duration::from_secs(30);
    let client = Client::new(&config, "bucket").expect("client");
    let start = Instant::now();
    let err = client.head_object("x").expect_err("no such host");
    let text = err.to_string();
    eprintln!("unknown host: {:?}: {text}", start.elapsed());
    assert!(!text.contains("attempts"), "retried: {text}");
    assert!(text.contains("no-such-host.invalid"), "{text}");
}

#[test]
fn retries_stop_when_the_budget_is_spent() {
    // Nothing listens there: every attempt is refused at once.
    let endpoint = format!("http://127.0.0.1:{}", testserver::free_port());
    let mut config = S3Config::for_endpoint(&endpoint, "k", "s").expect("config");
    config.retry.budget = Duration::from_secs(2);
    let client = Client::new(&config, "bucket").expect("client");
    let start = Instant::now();
    let err = client.head_object("x").expect_err("refused");
    let took = start.elapsed();
    let text = err.to_string();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(text.contains("attempts over 2."), "{text}");
}

/// Run `during` while an outage of `length` starts once `after()` says so: s3s-fs is really
/// stopped and started again (its data is on disk); moto (whose data would be lost) sits behind
/// `relay`, which goes down instead. Returns `during`'s result and when the outage began.
fn with_outage<T: Send>(
    server: &mut Server,
    relay: Option<&Relay>,
    after: impl Fn() -> bool + Sync,
    length: Duration,
    during: impl FnOnce() -> T + Send,
) -> (T, Duration) {
    let start = Instant::now();
    std::thread::scope(|scope| {
        let outage = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !after() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let at = start.elapsed();
            match relay {
                Some(relay) => {
                    relay.outage(length);
                    std::thread::sleep(length);
                }
                None => assert!(server.restart_after(length), "restart"),
            }
            at
        });
        let result = during();
        let at = outage.join().expect("outage");
        (result, at)
    })
}

/// A proxy that slows requests matching `slow` by 150 ms, in front of `relay` or the server.
fn slowed(
    server: &Server,
    relay: Option<&Relay>,
    slow: fn(&testserver::RequestInfo) -> bool,
) -> FaultProxy {
    let upstream = relay.map(|r| r.addr).unwrap_or(server.addr);
    let proxy = FaultProxy::start(upstream);
    proxy.set_plan(move |req, _| match slow(req) {
        true => Fault::Delay(Duration::from_millis(150)),
        false => Fault::Pass,
    });
    proxy
}

#[test]
fn a_ten_second_outage_during_a_multipart_publish_and_an_import_is_ridden_out() {
    for mut server in testserver::servers() {
        let name = server.name;
        let (bucket, _) = server.fresh_bucket();
        let dir = tempfile::tempdir().expect("tempdir");
        let (local, id) = local_image(dir.path(), (40 << 20) + 77);
        let outage = Duration::from_secs(10);
        let relay = (name != "s3s-fs").then(|| Relay::start(server.addr));

        // Publish: the server goes away after two parts and comes back 10 s later.
        let proxy = slowed(&server, relay.as_ref(), |req| req.is_part_upload());
        let config = testserver_config(&proxy.endpoint());
        let ((result, took), at) = with_outage(
            &mut server,
            relay.as_ref(),
            || proxy.counters.parts_ok.load(Ordering::Relaxed) >= 2,
            outage,
            || {
                let started = Instant::now();
                let result = store_at(&config, &bucket, "").publish_from_local(
                    &local,
                    &id.to_string(),
                    &resume_in(&local),
                    &quiet(),
                );
                (result, started.elapsed())
            },
        );
        let record = result.unwrap_or_else(|e| panic!("{name}: publish through the outage: {e:#}"));
        eprintln!(
            "{name}: publish of 40 MiB with a 10 s outage {at:?} in: {took:?} ({} parts sent)",
            proxy.counters.parts_ok.load(Ordering::Relaxed)
        );
        assert!(took >= outage, "{name}: the outage did not hit the publish");
        let direct = Client::new(&server.config(), &bucket).expect("client");
        let report = verify_s3_image(&direct, &record, VerifyMode::Deep, &quiet()).expect("v");
        assert!(report.is_ok(), "{name}: {:?}", report.entries);

        // Import: the server goes away 300 ms in, while ranges are being read.
        let proxy = slowed(&server, relay.as_ref(), |req| req.method == "GET");
        let config = testserver_config(&proxy.endpoint());
        let into = Store::open(dir.path().join("I")).expect("store");
        let start = Instant::now();
        let ((result, took), at) = with_outage(
            &mut server,
            relay.as_ref(),
            || start.elapsed() >= Duration::from_millis(300),
            outage,
            || {
                let client = Client::new(&config, &bucket).expect("client");
                let src = S3Url::parse(&format!("s3://{bucket}/{id}")).expect("url");
                let result = import_image(&client, &src, &into, None, Arch::X86_64, &quiet());
                (result, start.elapsed())
            },
        );
        let imported = result.unwrap_or_else(|e| panic!("{name}: import through the outage: {e}"));
        eprintln!("{name}: import of 40 MiB with a 10 s outage {at:?} in: {took:?}");
        assert!(took >= outage, "{name}: the outage did not hit the import");
        let report = crate::publish::verify_image(&into, &imported.id.to_string()).expect("v");
        assert!(report.is_ok(), "{name}: {report:?}");
        let rootfs = local
            .image_artifacts_dir(id)
            .join(ArtifactKind::Rootfs.file_name());
        let got = into
            .image_artifacts_dir(imported.id)
            .join(ArtifactKind::Rootfs.file_name());
        assert_eq!(
            md5_file(&rootfs).expect("md5"),
            md5_file(&got).expect("md5")
        );
    }
}

fn testserver_config(endpoint: &str) -> S3Config {
    let mut config =
        S3Config::for_endpoint(endpoint, testserver::KEY, testserver::SECRET).expect("config");
    config.part_size = 5 << 20;
    config.concurrency = 4;
    config.lease_settle = Duration::from_millis(300);
    config.retry.max_delay = Duration::from_millis(500);
    config
}

#[test]
fn a_download_reuses_its_connections() {
    for server in testserver::servers() {
        let (bucket, client) = server.fresh_bucket();
        let dir = tempfile::tempdir().expect("tempdir");
        let len = (40 << 20) + 3;
        let file = random_file(dir.path(), "object", len, 5);
        let options = UploadOptions::default();
        upload_file(&client, "object", &file, &options, &AtomicU64::new(0)).expect("upload");
        let relay = Relay::start(server.addr);
        let config = server.config_via(&relay.endpoint());
        let via = Client::new(&config, &bucket).expect("client");
        let dest = dir.path().join("copy");
        let got =
            download_file(&via, "object", len as u64, &dest, &AtomicU64::new(0)).expect("download");
        assert_eq!(got.md5, md5_file(&file).expect("md5"));
        let ranges = (len as u64).div_ceil(config.part_size);
        let connections = relay.connections.load(Ordering::Relaxed);
        eprintln!(
            "{}: {ranges} ranges over {connections} connections",
            server.name
        );
        if server.name == "moto" {
            // Werkzeug answers every request with `Connection: close`.
            continue;
        }
        assert!(
            connections <= config.concurrency as u64,
            "{}: {connections} connections for {ranges} ranges",
            server.name
        );
    }
}

#[test]
fn orphans_are_republished_deleted_and_repaired() {
    let Some(server) = testserver::moto() else {
        return;
    };
    let (bucket, direct) = server.fresh_bucket();
    let catalogue = store_at(&server.config(), &bucket, "site");
    let dir = tempfile::tempdir().expect("tempdir");
    let (local, kept) = local_image(dir.path(), 100_000);
    catalogue
        .publish_from_local(&local, &kept.to_string(), &Resume::off(), &quiet())
        .expect("publish");
    let rootfs = random_file(dir.path(), "orphan-rootfs", 100_000, 3);
    let files = [ArtifactFile {
        kind: ArtifactKind::Rootfs,
        path: &rootfs,
        md5: None,
    }];
    // A run that died after its manifest and before its record: objects and lease stay.
    let orphan_with_lease = |id: Uuid| {
        let registry = crate::publish::s3::Registry::Bucket {
            record_key: format!("site/records/images/{id}.json"),
        };
        let published = crate::publish::s3::publish_s3_to(
            &direct,
            catalogue.root(),
            id,
            &files,
            &ImageMeta::default(),
            &Resume::off(),
            &registry,
            &quiet(),
        )
        .expect("publish without a record");
        std::mem::forget(published);
    };
    let keys_of = |id: Uuid| -> Vec<String> {
        direct
            .list_objects(&format!("site/{id}/"))
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect()
    };

    // Republishing over an orphan manifest (its run's lease gone) replaces it.
    let id = Uuid::new_v4();
    orphan_with_lease(id);
    direct
        .delete_object(&lease_key(catalogue.root(), id))
        .expect("drop the lease");
    catalogue
        .publish_image(
            id,
            "again",
            Arch::X86_64,
            &files,
            None,
            &Resume::off(),
            &quiet(),
        )
        .expect("republish over an orphan");
    assert_eq!(
        catalogue.get_image(&id.to_string()).expect("get").name,
        "again"
    );

    // `images delete ID` of an orphan: refused while its lease is there, then done.
    let orphan = Uuid::new_v4();
    orphan_with_lease(orphan);
    let err = catalogue
        .delete_orphan(&orphan.to_string())
        .expect_err("lease held");
    assert!(err.to_string().contains("is being published"), "{err}");

    // An abandoned multipart upload of another id, without a lease.
    let abandoned = Uuid::new_v4();
    let key = format!("site/{abandoned}/rootfs");
    let upload = direct
        .create_multipart(&key, &[], crate::s3::client::PartChecksums::None)
        .expect("create");
    direct
        .upload_part(&key, &upload, 1, &[7u8; 1000])
        .expect("part");

    // Repair leaves what a live run may own (a fresh lease), then, told no run is alive,
    // removes the orphan, its lease and the upload, and nothing of the registered images.
    let actions = catalogue
        .repair(Duration::from_secs(3600), false)
        .expect("repair");
    assert!(
        actions.iter().all(|a| !a.contains(&orphan.to_string())),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a.contains(&upload)),
        "the abandoned upload: {actions:?}"
    );
    let dry = catalogue.repair(Duration::ZERO, true).expect("dry run");
    assert!(!keys_of(orphan).is_empty(), "a dry run removes nothing");
    let actions = catalogue.repair(Duration::ZERO, false).expect("repair");
    // The same actions, but for the lease's age, which the clock may have moved on.
    let without_age = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|a| a.split(", started ").next().unwrap_or(a).to_string())
            .collect()
    };
    assert_eq!(without_age(&dry), without_age(&actions));
    assert!(keys_of(orphan).is_empty(), "{actions:?}");
    assert!(
        direct
            .head_object(&lease_key(catalogue.root(), orphan))
            .expect("head")
            .is_none()
    );
    assert!(
        direct
            .list_multipart_uploads_under("site/")
            .expect("list")
            .is_empty()
    );
    for registered in [kept, id] {
        let record = catalogue.get_image(&registered.to_string()).expect("kept");
        let report = verify_s3_image(&direct, &record, VerifyMode::Deep, &quiet()).expect("v");
        assert!(report.is_ok(), "{:?}", report.entries);
    }
    assert!(
        catalogue
            .repair(Duration::ZERO, false)
            .expect("again")
            .is_empty()
    );

    // `images delete ID` of an orphan without a lease removes its objects.
    let late = Uuid::new_v4();
    orphan_with_lease(late);
    direct
        .delete_object(&lease_key(catalogue.root(), late))
        .expect("drop the lease");
    let removed = catalogue.delete_orphan(&late.to_string()).expect("delete");
    assert!(removed[0].ends_with("manifest.json"), "{removed:?}");
    assert!(keys_of(late).is_empty());
}
