use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sluice_testkit::{wait_until, wait_until_blocking};

#[tokio::test]
async fn wait_until_returns_once_the_predicate_holds() {
    let calls = AtomicU32::new(0);
    wait_until("the third call", Duration::from_secs(5), || async { calls.fetch_add(1, Ordering::SeqCst) >= 2 })
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn wait_until_fails_with_what_it_waited_for() {
    let error = wait_until_blocking("pigs fly", Duration::from_millis(120), || false).unwrap_err();
    assert!(error.to_string().contains("waiting until pigs fly"), "{error}");
}
