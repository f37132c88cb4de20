//! The deep store against real backends: a local directory and moto's S3
//! server (through the test kit's proxy, to inject failures).

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_config::ObjectStoreConfig;
use sluice_storage::{DeepStore, Resolver, check_uri, file_uri};
use sluice_testkit::{S3Server, TcpProxy, unique_name};

fn s3_options(endpoint: String) -> ObjectStoreConfig {
    let mut options = ObjectStoreConfig {
        endpoint: Some(endpoint),
        region: Some(sluice_testkit::s3::REGION.into()),
        allow_http: true,
        max_retries: 10,
        retry_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(2),
        ..ObjectStoreConfig::default()
    };
    options.options.insert("aws_access_key_id".into(), sluice_testkit::s3::ACCESS_KEY.into());
    options.options.insert("aws_secret_access_key".into(), sluice_testkit::s3::SECRET_KEY.into());
    options
}

/// Every operation the deep store has, and what each promises.
async fn exercise(resolver: &Resolver, store: &DeepStore, scratch: &std::path::Path) {
    assert!(store.list("t").await.unwrap().is_empty(), "an empty table lists nothing");
    let small = Bytes::from_static(b"a small segment");
    // Larger than one part: a multipart upload.
    let large = Bytes::from((0..20u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let a = store.put("t", &DeepStore::segment_name("t__0__0__x", 1), small.clone()).await.unwrap();
    let b = store.put("t", &DeepStore::segment_name("t__0__1__x", 1), large.clone()).await.unwrap();
    store.put("other", "o.e1.seg", small.clone()).await.unwrap();
    assert_eq!(a, format!("{}/t/t__0__0__x.e1.seg", store.root_uri()));

    let listed = store.list("t").await.unwrap();
    assert_eq!(listed.iter().map(|o| o.uri.as_str()).collect::<Vec<_>>(), vec![a.as_str(), b.as_str()]);
    assert_eq!(listed[1].size, large.len() as u64);
    assert!(listed[0].modified.elapsed().unwrap_or_default() < Duration::from_secs(300));

    for (uri, bytes) in [(&a, &small), (&b, &large)] {
        let dest = scratch.join(unique_name("download"));
        assert_eq!(resolver.download(uri, &dest).await.unwrap(), bytes.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), bytes.to_vec());
    }
    let missing = format!("{}/t/none.e1.seg", store.root_uri());
    let error = resolver.download(&missing, &scratch.join("none")).await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert!(!scratch.join("none").exists(), "a failed download leaves nothing behind");

    store.delete("t", "t__0__0__x.e1.seg").await.unwrap();
    resolver.delete(&b).await.unwrap();
    resolver.delete(&b).await.unwrap(); // already gone: not an error
    assert!(store.list("t").await.unwrap().is_empty());
    assert_eq!(store.list("other").await.unwrap().len(), 1, "other tables are untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(ObjectStoreConfig::default());
    let store = resolver.deep_store(&file_uri(&dir.path().join("deep"))).unwrap();
    exercise(&resolver, &store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_memory() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(ObjectStoreConfig::default());
    let store = resolver.deep_store(&format!("memory://{}/prefix", unique_name("mem"))).unwrap();
    exercise(&resolver, &store, dir.path()).await;
    // Another resolver of the process sees the same memory store.
    let again = Resolver::new(ObjectStoreConfig::default()).deep_store(store.root_uri()).unwrap();
    assert_eq!(again.list("other").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_bucket() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("segments").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(s3_options(s3.endpoint()));
    let store = resolver.deep_store("s3://segments/prod/deep").unwrap();
    exercise(&resolver, &store, dir.path()).await;
}

/// A network partition and lost responses in the middle of uploads and
/// downloads: the store's retries carry them through, and what was written
/// is exactly what was asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_failures_are_retried() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("flaky").unwrap();
    let proxy = TcpProxy::start(s3.addr().parse().unwrap()).await.unwrap();
    let resolver = Resolver::new(s3_options(format!("http://{}", proxy.addr())));
    let store = resolver.deep_store("s3://flaky/deep").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let payload = Bytes::from((0..12u32 << 20).map(|i| (i % 253) as u8).collect::<Vec<u8>>());

    // Partitioned for three seconds while uploading.
    proxy.blackhole();
    let upload = tokio::spawn({
        let store = store.clone();
        let payload = payload.clone();
        async move { store.put("t", "a.e1.seg", payload).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();
    let started = Instant::now();
    // The store's retries ride out most cuts; one it classifies as final
    // (e.g. a request cancelled on a connection that was cut while being
    // set up) reaches the caller as an error naming the object, and the
    // caller's retry — a worker's partition supervisor — writes the same
    // object again, which is idempotent.
    let uri = match upload.await.unwrap() {
        Ok(uri) => uri,
        Err(e) => {
            assert!(e.to_string().contains("a.e1.seg"), "{e}");
            store.put("t", "a.e1.seg", payload.clone()).await.unwrap()
        }
    };
    eprintln!("upload finished {:?} after the partition healed", started.elapsed());

    // Responses lost for a second: requests were applied, the client saw
    // nothing, retried, and got the same object.
    proxy.lose_responses_for(Duration::from_secs(1));
    let again = match store.put("t", "b.e1.seg", payload.clone()).await {
        Ok(uri) => uri,
        Err(_) => store.put("t", "b.e1.seg", payload.clone()).await.unwrap(), // the caller's retry
    };
    let dest = dir.path().join("b");
    proxy.lose_responses_for(Duration::from_secs(1));
    if resolver.download(&again, &dest).await.is_err() {
        assert!(!dest.exists(), "a failed download leaves nothing behind");
        resolver.download(&again, &dest).await.unwrap();
    }
    assert_eq!(std::fs::read(&dest).unwrap(), payload.to_vec());
    resolver.download(&uri, &dir.path().join("a")).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), payload.to_vec());
    assert_eq!(store.list("t").await.unwrap().len(), 2);
}

#[test]
fn uris_and_options_are_checked_before_use() {
    let options = ObjectStoreConfig::default();
    assert!(check_uri("s3://bucket/prefix", &options).is_ok());
    assert!(check_uri("gs://bucket/prefix", &options).is_ok());
    assert!(check_uri("file:///var/segments", &options).is_ok());
    for (uri, says) in [
        ("ftp://host/x", "scheme `ftp`"),
        ("s3:///prefix", "no bucket"),
        ("file://host/x", "with a host"),
        ("not a uri", "relative URL"),
    ] {
        let error = check_uri(uri, &options).unwrap_err().to_string();
        assert!(error.contains(says), "{uri}: {error}");
    }
    let mut typo = ObjectStoreConfig::default();
    typo.options.insert("aws_virtual_hosted_style".into(), "true".into());
    let error = check_uri("s3://bucket/x", &typo).unwrap_err().to_string();
    assert!(error.contains("aws_virtual_hosted_style"), "{error}");
}

/// A write that fails (the table's directory is a file) is an error naming
/// the object — never a panic — and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_local_write_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("deep")).unwrap();
    std::fs::write(dir.path().join("deep").join("t"), b"a file where the table's directory goes").unwrap();
    let store = DeepStore::local(&dir.path().join("deep")).unwrap();
    for size in [10usize, 9 << 20] {
        let error = store.put("t", "a.e1.seg", Bytes::from(vec![7u8; size])).await.unwrap_err().to_string();
        assert!(error.contains("a.e1.seg"), "{error}");
    }
}
