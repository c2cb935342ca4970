//! The API gateway's limits on a real server: a user over its rate waits, then gets 429 with
//! Retry-After; another user and the administrator are not affected; oversized request heads
//! and bodies are refused.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use infraos_client::Method;
use support::*;

const CONFIG: &str = "apiLimits:\n  userRate: 2\n  userBurst: 2\n  queueWait: 100ms\n  maxHeaderBytes: 8192\nmaxBodyBytes: 4096\n";

#[tokio::test]
async fn a_user_over_its_rate_gets_429_others_do_not() {
    let server = TestServer::start_with_config(CONFIG).await;
    let admin = server.client();
    let (greedy, calm) = (
        mint_token(&admin, "greedy", None).await,
        mint_token(&admin, "calm", None).await,
    );
    let path = "/apis/infraos.io/v1/resourceclasses";
    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let (code, headers, body) = admin
            .raw_with_headers(Method::GET, path, &[], Vec::new(), Some(&greedy))
            .await
            .unwrap();
        if code == 429 {
            assert!(
                body["message"].as_str().unwrap().contains("user:greedy"),
                "{body}"
            );
            retry_after = headers
                .iter()
                .find(|(k, _)| k == "retry-after")
                .map(|(_, v)| v.clone());
        }
        codes.push(code);
    }
    assert!(
        codes.contains(&429),
        "8 requests at once exceed 2/s: {codes:?}"
    );
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)),
        "429 says when to come back: {retry_after:?}"
    );
    let (code, _, _) = admin
        .raw_with_headers(Method::GET, path, &[], Vec::new(), Some(&calm))
        .await
        .unwrap();
    assert_eq!(code, 200, "another user has its own budget");
    for _ in 0..20 {
        let (code, _, _) = admin
            .raw_with_headers(Method::GET, path, &[], Vec::new(), None)
            .await
            .unwrap();
        assert_eq!(code, 200, "the administrator is exempt");
    }

    // An oversized head is refused before it is parsed; so is an oversized body.
    let big = "x".repeat(16 * 1024);
    match admin
        .raw_with_headers(Method::GET, path, &[("x-padding", big)], Vec::new(), None)
        .await
    {
        Ok((code, _, _)) => assert_eq!(code, 431),
        // HTTP/2 may reset the stream instead: refused either way.
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let (code, _, body) = admin
        .raw_with_headers(
            Method::POST,
            "/apis/infraos.io/v1/tenants",
            &[("content-type", "application/json".into())],
            vec![b' '; 8192],
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 413, "{body}");
}
